//! A client's A2A messages and parts as baton's content (what baton sends back is
//! `baton_domain::a2a`).

use baton_domain::a2a::KIND_KEY;
use baton_domain::content::{Attachment, DataContent, TextContent, ToolResponseContent};
use baton_domain::{Content, NewMessage, Role};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A message as a client sends it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InMessage {
    pub message_id: String,
    #[serde(default)]
    pub context_id: Option<String>,
    #[serde(default)]
    pub task_id: Option<String>,
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub parts: Vec<InPart>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// One part: exactly one of `text`, `raw` (base64), `url` or `data`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InPart {
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub raw: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
    #[serde(default)]
    pub filename: Option<String>,
    #[serde(default)]
    pub media_type: Option<String>,
}

/// The baton message a client's A2A message is: text parts (joined by blank lines)
/// with `raw` and `url` parts as attachments (by their bytes, or by reference); or one
/// `data` part (a `tool_response` when its
/// metadata says so, or when it answers a tool call by `tool_call_id`). A message that
/// cannot be one is refused saying why (invalid params).
pub fn to_baton(message: &InMessage) -> Result<NewMessage, String> {
    match message.role.as_deref() {
        None | Some("ROLE_USER") => {}
        Some(other) => {
            return Err(format!("message.role must be ROLE_USER (got {other})"));
        }
    }
    if message.parts.is_empty() {
        return Err("message.parts must hold at least one part".to_owned());
    }
    let metadata = message.metadata.clone().unwrap_or_default();
    let mut texts = Vec::new();
    let mut attachments = Vec::new();
    let mut data = Vec::new();
    for (i, part) in message.parts.iter().enumerate() {
        let kinds = [
            part.text.is_some(),
            part.raw.is_some(),
            part.url.is_some(),
            part.data.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(format!(
                "message.parts[{i}] must have exactly one of text, raw, url and data"
            ));
        }
        if let Some(text) = &part.text {
            texts.push(text.clone());
        } else if let Some(raw) = &part.raw {
            attachments.push(Attachment {
                filename: part.filename.clone().unwrap_or_else(|| format!("part-{i}")),
                media_type: part
                    .media_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                data: Some(raw.clone()),
                url: None,
                file_id: None,
                size_bytes: None,
                sha256: None,
            });
        } else if let Some(url) = &part.url {
            // A file by reference: kept as its URL (baton does not fetch it).
            let named_by_url = url
                .split(['?', '#'])
                .next()
                .and_then(|path| path.rsplit('/').next())
                .filter(|name| !name.is_empty() && !name.contains(':'));
            attachments.push(Attachment {
                filename: part
                    .filename
                    .clone()
                    .or(named_by_url.map(str::to_owned))
                    .unwrap_or_else(|| format!("part-{i}")),
                media_type: part
                    .media_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".to_owned()),
                data: None,
                url: Some(url.clone()),
                file_id: None,
                size_bytes: None,
                sha256: None,
            });
        } else if let Some(value) = &part.data {
            data.push((value, part.metadata.as_ref()));
        }
    }
    let content = match (texts.is_empty(), data.as_slice()) {
        (true, [(value, part_metadata)]) if attachments.is_empty() => {
            data_content(value, *part_metadata)?
        }
        (false, []) => Content::Text(TextContent {
            format: Default::default(),
            content: texts.join("\n\n"),
            attachments,
        }),
        _ => {
            return Err(
                "message.parts must be text parts (with raw or url files), or one data part"
                    .to_owned(),
            );
        }
    };
    let role = match content {
        Content::ToolResponse(_) => Role::Tool,
        _ => Role::User,
    };
    Ok(NewMessage {
        role,
        content,
        metadata,
    })
}

/// A data part: a tool's answer when its metadata says `baton_type: tool_response`,
/// else plain data.
fn data_content(value: &Value, metadata: Option<&Map<String, Value>>) -> Result<Content, String> {
    let kind = metadata
        .and_then(|m| m.get(KIND_KEY))
        .and_then(Value::as_str);
    if kind == Some("tool_response") {
        let answer: ToolResponseContent = serde_json::from_value(value.clone()).map_err(|err| {
            format!("a tool_response data part needs tool_call_id, name and content: {err}")
        })?;
        return Ok(Content::ToolResponse(answer));
    }
    match value {
        Value::Object(object) => Ok(Content::Data(DataContent {
            data: object.clone(),
        })),
        _ => Err("a data part's data must be a JSON object".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(parts: Value) -> InMessage {
        serde_json::from_value(json!({"messageId": "m-1", "role": "ROLE_USER", "parts": parts}))
            .unwrap()
    }

    #[test]
    fn text_parts_join_and_raw_parts_are_attachments() {
        let sent = to_baton(&message(json!([
            {"text": "first"}, {"text": "second"},
            {"raw": "aGk=", "filename": "hi.txt", "mediaType": "text/plain"}
        ])))
        .unwrap();
        let Content::Text(text) = sent.content else {
            panic!("text expected")
        };
        assert_eq!(text.content, "first\n\nsecond");
        assert_eq!(text.attachments[0].filename, "hi.txt");
        assert_eq!(text.attachments[0].data.as_deref(), Some("aGk="));
        assert_eq!(sent.role, Role::User);
    }

    #[test]
    fn a_data_part_is_data_or_a_marked_tool_answer() {
        let data = to_baton(&message(json!([{"data": {"a": 1}}]))).unwrap();
        assert_eq!(
            data.content,
            Content::Data(DataContent {
                data: json!({"a": 1}).as_object().unwrap().clone()
            })
        );
        let answer = to_baton(&message(json!([{
            "data": {"tool_call_id": "c1", "name": "lookup", "content": {"ok": true}},
            "metadata": {KIND_KEY: "tool_response"}
        }])))
        .unwrap();
        assert_eq!(answer.role, Role::Tool);
        assert!(matches!(answer.content, Content::ToolResponse(r) if r.tool_call_id == "c1"));
    }

    #[test]
    fn what_baton_cannot_take_is_refused_saying_why() {
        for (parts, refused) in [
            (json!([]), "at least one part"),
            (json!([{"text": "a", "data": {}}]), "exactly one"),
            (json!([{"data": [1]}]), "JSON object"),
            (json!([{"text": "a"}, {"data": {}}]), "one data part"),
        ] {
            match to_baton(&message(parts)) {
                Err(why) => assert!(why.contains(refused), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        let by_url = to_baton(&message(json!([
            {"text": "see"}, {"url": "https://files.example/a/y.png?v=2", "mediaType": "image/png"}
        ])))
        .unwrap();
        let Content::Text(text) = by_url.content else {
            panic!("text expected")
        };
        let file = &text.attachments[0];
        assert_eq!(
            (file.filename.as_str(), file.media_type.as_str()),
            ("y.png", "image/png"),
            "named by its URL's last segment"
        );
        assert_eq!(
            file.url.as_deref(),
            Some("https://files.example/a/y.png?v=2")
        );
        assert_eq!(file.data, None, "kept by reference, not fetched");
        let agent: InMessage = serde_json::from_value(
            json!({"messageId": "m", "role": "ROLE_AGENT", "parts": [{"text": "x"}]}),
        )
        .unwrap();
        assert!(to_baton(&agent).is_err());
    }
}
