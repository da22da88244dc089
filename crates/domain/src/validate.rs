//! Validation of what clients submit, done once at the edge of the domain so every
//! storage backend accepts and refuses the same input.

use serde_json::Value;

use crate::content::{Attachment, Content};
use crate::error::FieldError;
use crate::model::{Metadata, NewMessage, Role, TurnPolicy};

/// Longest agent name accepted.
pub const MAX_AGENT_NAME_LEN: usize = 200;

/// Checks a message a client submits: a user's text or data, or a tool's answer (which
/// the claim then checks against the calls the task waits for).
pub fn client_message(message: &NewMessage, errors: &mut Vec<FieldError>) {
    match (message.role, &message.content) {
        (Role::User, Content::Text(text)) if text.content.trim().is_empty() => {
            errors.push(FieldError::new("message.content", "must not be empty"));
        }
        (Role::User, Content::Text(_) | Content::Data(_))
        | (Role::Tool, Content::ToolResponse(_)) => {}
        (Role::User, other) => errors.push(FieldError::new(
            "message.content.type",
            format!("a user message may be text or data, not {}", other.kind()),
        )),
        (Role::Tool, _) => errors.push(FieldError::new(
            "message.content.type",
            "a tool message carries a tool_response",
        )),
        (role, _) => errors.push(FieldError::new(
            "message.role",
            format!("must be \"user\" (or \"tool\" to answer a tool call), not \"{role}\""),
        )),
    }
    if let Ok(value) = serde_json::to_value(&message.content) {
        no_nul("message.content", &value, errors);
    }
}

/// Attachments on one message, at most.
pub const MAX_ATTACHMENTS: usize = 8;

/// Checks the `i`th attachment a client sends; returns its size in bytes (0 if its
/// data is not base64).
pub fn attachment(i: usize, attachment: &Attachment, errors: &mut Vec<FieldError>) -> usize {
    let field = |name: &str| format!("message.content.attachments[{i}].{name}");
    let name = &attachment.filename;
    if name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
    {
        errors.push(FieldError::new(
            field("filename"),
            "must be 1 to 255 characters, without slashes or control characters",
        ));
    }
    let media = &attachment.media_type;
    let valid_media = media.len() <= 255
        && media.split_once('/').is_some_and(|(kind, sub)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
            };
            token(kind) && token(sub)
        });
    if !valid_media {
        errors.push(FieldError::new(
            field("media_type"),
            "must be a media type such as image/png",
        ));
    }
    if attachment.file_id.is_some()
        || attachment.size_bytes.is_some()
        || attachment.sha256.is_some()
    {
        errors.push(FieldError::new(
            field("file_id"),
            "file_id, size_bytes and sha256 are the server's to set: send filename, media_type and data",
        ));
    }
    if let Some(url) = &attachment.url {
        if attachment.data.is_some() {
            errors.push(FieldError::new(
                field("url"),
                "send the file's data or its url, not both",
            ));
        } else if let Err(why) = reference_url(url) {
            errors.push(FieldError::new(field("url"), why));
        }
        return 0;
    }
    match (&attachment.data, attachment.decoded()) {
        (None, _) => {
            errors.push(FieldError::new(
                field("data"),
                "is required: the file's bytes, base64 (or its url)",
            ));
            0
        }
        (Some(_), None) => {
            errors.push(FieldError::new(field("data"), "is not base64"));
            0
        }
        (Some(_), Some(bytes)) => bytes.len(),
    }
}

/// Why a file's `url` cannot be kept, if it cannot: an absolute `http(s)` URL without
/// credentials, at most 2,048 characters. (baton never fetches it, so where it points
/// is the reader's concern.)
fn reference_url(raw: &str) -> Result<(), &'static str> {
    if raw.len() > 2048 {
        return Err("must be at most 2048 characters");
    }
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute URL")?;
    if !matches!(url.scheme(), "https" | "http") || url.host().is_none() {
        return Err("must be an https:// (or http://) URL");
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials");
    }
    Ok(())
}

/// Checks metadata (a request's or a message's), reported as `field`.
pub fn metadata(field: &str, metadata: &Metadata, errors: &mut Vec<FieldError>) {
    for (key, value) in metadata {
        if key.contains('\0') {
            errors.push(FieldError::new(
                field,
                "keys must not contain the NUL character",
            ));
        }
        no_nul(&format!("{field}.{key}"), value, errors);
    }
}

/// PostgreSQL's text and JSON types refuse the NUL character where SQLite stores it;
/// refusing it everywhere keeps both backends answering the same.
fn no_nul(field: &str, value: &Value, errors: &mut Vec<FieldError>) {
    let found = match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(|v| {
            let mut inner = Vec::new();
            no_nul(field, v, &mut inner);
            !inner.is_empty()
        }),
        Value::Object(map) => map.iter().any(|(k, v)| {
            let mut inner = Vec::new();
            no_nul(field, v, &mut inner);
            k.contains('\0') || !inner.is_empty()
        }),
        _ => false,
    };
    if found {
        errors.push(FieldError::new(field, "must not contain the NUL character"));
    }
}

/// Checks an agent's name.
pub fn agent_name(name: &str, errors: &mut Vec<FieldError>) {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        errors.push(FieldError::new("name", "must not be empty"));
    } else if trimmed.chars().count() > MAX_AGENT_NAME_LEN {
        errors.push(FieldError::new(
            "name",
            format!("must be at most {MAX_AGENT_NAME_LEN} characters"),
        ));
    } else if trimmed.contains('\0') {
        errors.push(FieldError::new(
            "name",
            "must not contain the NUL character",
        ));
    }
}

pub fn turn_policy(policy: &TurnPolicy, errors: &mut Vec<FieldError>) {
    if !(1..=TurnPolicy::MAX_ATTEMPTS).contains(&policy.max_attempts) {
        errors.push(FieldError::new(
            "policy.max_attempts",
            format!("must be from 1 to {}", TurnPolicy::MAX_ATTEMPTS),
        ));
    }
    if !(TurnPolicy::MIN_TIMEOUT_MS..=TurnPolicy::MAX_TIMEOUT_MS).contains(&policy.turn_timeout_ms)
    {
        errors.push(FieldError::new(
            "policy.turn_timeout_ms",
            format!(
                "must be from {} ms to {} ms (7 days)",
                TurnPolicy::MIN_TIMEOUT_MS,
                TurnPolicy::MAX_TIMEOUT_MS
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(message: NewMessage) -> Vec<FieldError> {
        let mut errors = Vec::new();
        client_message(&message, &mut errors);
        errors
    }

    #[test]
    fn user_text_is_valid_and_blank_text_is_not() {
        assert!(
            check(NewMessage {
                role: Role::User,
                content: Content::text("hi"),
                metadata: Default::default(),
            })
            .is_empty()
        );
        let errors = check(NewMessage {
            role: Role::User,
            content: Content::text("  "),
            metadata: Default::default(),
        });
        assert_eq!(
            errors,
            vec![FieldError::new("message.content", "must not be empty")]
        );
    }

    #[test]
    fn non_user_roles_and_nul_characters_are_refused() {
        let errors = check(NewMessage {
            role: Role::Assistant,
            content: Content::text("a\0b"),
            metadata: Default::default(),
        });
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["message.role", "message.content"]);
    }

    #[test]
    fn nul_in_nested_metadata_is_refused() {
        let meta = json!({"a": {"b": ["ok", "bad\u{0}"]}});
        let mut errors = Vec::new();
        metadata("metadata", meta.as_object().unwrap(), &mut errors);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].field, "metadata.a");
    }
}
