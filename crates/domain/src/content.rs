//! Typed message content (seed 004's union). On input a plain JSON string is shorthand
//! for plain text.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

/// One message's content, discriminated by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text(TextContent),
    Reasoning(ReasoningContent),
    Data(DataContent),
    ToolRequest(ToolRequestContent),
    ToolResponse(ToolResponseContent),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TextFormat {
    #[default]
    Plain,
    Markdown,
    Code,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TextContent {
    #[serde(default)]
    pub format: TextFormat,
    pub content: String,
    /// Files that come with the text. A client sends each with its bytes (`data`); the
    /// server keeps them apart and shows them with their `file_id`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// A file on a text message: sent with `data` (base64), shown with `file_id`,
/// `size_bytes` and `sha256` (the bytes at `GET /v1/chat/tasks/{task_id}/files/{file_id}`);
/// or sent and shown by `url` alone, a reference baton keeps and never fetches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attachment {
    pub filename: String,
    /// e.g. `image/png`, `application/pdf`.
    pub media_type: String,
    /// The file's bytes, base64: only when a client sends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Instead of `data`: where the file is (`https://…` or `http://…`). Kept as sent,
    /// never fetched by baton; runners pass it on (docs/agents.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Only as the server shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Hex SHA-256 of the bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Attachment {
    /// The bytes a client sent, if `data` is valid base64.
    pub fn decoded(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        let data = self.data.as_deref()?;
        base64::engine::general_purpose::STANDARD.decode(data).ok()
    }

    /// As the server shows it once stored: no bytes, where to find them.
    pub fn stored(&self, file_id: i64, bytes: &[u8]) -> Attachment {
        use sha2::Digest;
        Attachment {
            filename: self.filename.clone(),
            media_type: self.media_type.clone(),
            data: None,
            url: None,
            file_id: Some(file_id),
            size_bytes: Some(bytes.len() as u64),
            sha256: Some(hex(&sha2::Sha256::digest(bytes))),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReasoningContent {
    #[serde(default)]
    pub summary: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataContent {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub data: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolRequestContent {
    pub tool_call_id: String,
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub arguments: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolResponseContent {
    pub tool_call_id: String,
    pub name: String,
    /// Any JSON value.
    #[cfg_attr(feature = "openapi", schema(value_type = Value))]
    pub content: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
}

impl Content {
    /// Plain text content.
    pub fn text(text: impl Into<String>) -> Self {
        Content::Text(TextContent {
            format: TextFormat::Plain,
            content: text.into(),
            attachments: Vec::new(),
        })
    }

    /// The attachments of text content (none for other content).
    pub fn attachments(&self) -> &[Attachment] {
        match self {
            Content::Text(text) => &text.attachments,
            _ => &[],
        }
    }

    /// The content's `type` name.
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Text(_) => "text",
            Content::Reasoning(_) => "reasoning",
            Content::Data(_) => "data",
            Content::ToolRequest(_) => "tool_request",
            Content::ToolResponse(_) => "tool_response",
        }
    }

    /// The text of a text message, if it is one.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Content::Text(text) => Some(&text.content),
            _ => None,
        }
    }

    /// Reads content as clients send it: a plain string is text, an object is typed.
    /// Use with `#[serde(deserialize_with = "Content::deserialize_lenient")]`.
    pub fn deserialize_lenient<'de, D: Deserializer<'de>>(d: D) -> Result<Content, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shorthand {
            Plain(String),
            Typed(Value),
        }
        match Shorthand::deserialize(d)? {
            Shorthand::Plain(text) => Ok(Content::text(text)),
            Shorthand::Typed(value) => {
                Content::deserialize(value).map_err(serde::de::Error::custom)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Deserialize)]
    struct Holder {
        #[serde(deserialize_with = "Content::deserialize_lenient")]
        content: Content,
    }

    #[test]
    fn plain_string_is_plain_text() {
        let h: Holder = serde_json::from_value(json!({"content": "hi"})).unwrap();
        assert_eq!(h.content, Content::text("hi"));
    }

    #[test]
    fn typed_content_round_trips_with_its_type_tag() {
        let value = json!({"type": "tool_request", "tool_call_id": "c1", "name": "search", "arguments": {"q": "x"}});
        let h: Holder = serde_json::from_value(json!({"content": value.clone()})).unwrap();
        assert_eq!(h.content.kind(), "tool_request");
        assert_eq!(serde_json::to_value(&h.content).unwrap(), value);
    }

    #[test]
    fn unknown_fields_and_types_are_rejected() {
        let unknown_field = json!({"content": {"type": "text", "content": "x", "colour": 1}});
        assert!(serde_json::from_value::<Holder>(unknown_field).is_err());
        let unknown_type = json!({"content": {"type": "video", "url": "x"}});
        assert!(serde_json::from_value::<Holder>(unknown_type).is_err());
    }

    #[test]
    fn text_format_defaults_to_plain() {
        let h: Holder =
            serde_json::from_value(json!({"content": {"type": "text", "content": "x"}})).unwrap();
        assert_eq!(h.content, Content::text("x"));
    }
}
