//! A2A push notification configs: where a task's turn ends are pushed to an A2A
//! client, through the same durable, retried outbox as baton's webhooks (see
//! [`crate::webhooks`]). A config belongs to its task and holds for its every turn
//! until deleted; each turn's end is one delivery per config.

use chrono::{DateTime, Utc};

use crate::error::FieldError;
use crate::model::TaskId;
/// The push values a claim carries live with it (`model`); they are named here too,
/// where the rest of push configs is.
pub use crate::model::{NewPush, PushAuth, PushRequest};
use crate::webhooks::DestinationPolicy;

/// At most this many push configs per task.
pub const MAX_PUSH_CONFIGS_PER_TASK: usize = 10;

/// The longest config id, token or credentials taken.
const MAX_FIELD_LEN: usize = 1024;

/// A push config as stored: what the client asked for, with the secrets its
/// deliveries are signed with (Standard Webhooks, besides A2A's own token and
/// `Authorization`).
#[derive(Clone, PartialEq)]
pub struct PushConfig {
    pub id: String,
    pub task_id: TaskId,
    pub url: String,
    /// Sent as `X-A2A-Notification-Token`, for the client to check a push is its.
    pub token: Option<String>,
    pub authentication: Option<PushAuth>,
    /// The agent's webhook secrets, else the server's; empty: not signed.
    pub secrets: Vec<String>,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for PushConfig {
    // Tokens, credentials and secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConfig")
            .field("id", &self.id)
            .field("task_id", &self.task_id)
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field(
                "authentication",
                &self.authentication.as_ref().map(|a| &a.scheme),
            )
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .finish()
    }
}

impl PushConfig {
    /// The headers a push carries besides its signature: A2A's token and
    /// `Authorization` (left out, as A2A's SDK does, when no credentials are given).
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        if let Some(token) = &self.token {
            headers.push(("x-a2a-notification-token".to_owned(), token.clone()));
        }
        if let Some(PushAuth {
            scheme,
            credentials: Some(credentials),
        }) = &self.authentication
        {
            headers.push((
                "authorization".to_owned(),
                format!("{scheme} {credentials}"),
            ));
        }
        headers
    }
}

/// What storing a push config came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushPut {
    Stored,
    /// The agent has no such task.
    TaskNotFound,
    /// The task has [`MAX_PUSH_CONFIGS_PER_TASK`] configs, none of this id.
    Full,
}

/// Checks a push config request, naming fields under `prefix`: the URL as a webhook's
/// is checked, ids and tokens printable and bounded, a scheme an HTTP token and
/// credentials on one line (they become headers).
pub fn check(
    request: &PushRequest,
    policy: &DestinationPolicy,
    prefix: &str,
    errors: &mut Vec<FieldError>,
) {
    if let Err(why) = policy.check_url(&request.url) {
        errors.push(FieldError::new(format!("{prefix}url"), why));
    }
    if let Some(id) = &request.id
        && !(1..=128).contains(&id.len())
    {
        errors.push(FieldError::new(
            format!("{prefix}id"),
            "must be 1 to 128 characters",
        ));
    }
    if let Some(id) = &request.id
        && id.chars().any(char::is_control)
    {
        errors.push(FieldError::new(
            format!("{prefix}id"),
            "must not hold control characters",
        ));
    }
    if let Some(token) = &request.token {
        check_header_value(token, &format!("{prefix}token"), errors);
    }
    if let Some(auth) = &request.authentication {
        let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
        if auth.scheme.is_empty() || !auth.scheme.chars().all(is_token_char) {
            errors.push(FieldError::new(
                format!("{prefix}authentication.scheme"),
                "must be an HTTP authentication scheme (such as Bearer)",
            ));
        }
        if let Some(credentials) = &auth.credentials {
            check_header_value(
                credentials,
                &format!("{prefix}authentication.credentials"),
                errors,
            );
        }
    }
}

fn check_header_value(value: &str, field: &str, errors: &mut Vec<FieldError>) {
    if value.len() > MAX_FIELD_LEN {
        errors.push(FieldError::new(
            field,
            format!("must be at most {MAX_FIELD_LEN} bytes"),
        ));
    } else if !value.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        errors.push(FieldError::new(
            field,
            "must be printable ASCII (it is sent as a header)",
        ));
    }
}

impl NewPush {
    /// The config this makes for `task`, named by the task when the client gave no
    /// id (as A2A's SDK does).
    pub fn for_task(&self, task: TaskId, now: DateTime<Utc>) -> PushConfig {
        let request = self.request.clone();
        PushConfig {
            id: request.id.unwrap_or_else(|| task.0.to_string()),
            task_id: task,
            url: request.url,
            token: request.token,
            authentication: request.authentication,
            secrets: self.secrets.clone(),
            created_at: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> PushRequest {
        PushRequest {
            id: Some("c1".into()),
            url: "https://hooks.example.com/a2a".into(),
            token: Some("tok-s3cr3t".into()),
            authentication: Some(PushAuth {
                scheme: "Bearer".into(),
                credentials: Some("abc".into()),
            }),
        }
    }

    fn refused(request: &PushRequest) -> Vec<String> {
        let mut errors = Vec::new();
        check(request, &DestinationPolicy::default(), "", &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_config_carries_its_token_and_authorization_as_headers() {
        assert!(refused(&request()).is_empty());
        let push = |request| NewPush {
            request,
            secrets: Vec::new(),
        };
        let config = push(request()).for_task(TaskId(4), Utc::now());
        assert_eq!(
            config.headers(),
            vec![
                (
                    "x-a2a-notification-token".to_owned(),
                    "tok-s3cr3t".to_owned()
                ),
                ("authorization".to_owned(), "Bearer abc".to_owned()),
            ]
        );
        let unnamed = PushRequest {
            id: None,
            authentication: Some(PushAuth {
                scheme: "Bearer".into(),
                credentials: None,
            }),
            ..request()
        };
        let config = push(unnamed).for_task(TaskId(4), Utc::now());
        assert_eq!(config.id, "4", "an unnamed config is named by its task");
        assert_eq!(
            config.headers().len(),
            1,
            "no credentials, no Authorization"
        );
        assert!(!format!("{config:?}").contains("s3cr3t"), "{config:?}");
    }

    #[test]
    fn what_would_break_a_header_or_reach_inside_is_refused() {
        let bad = PushRequest {
            id: Some(String::new()),
            url: "http://127.0.0.1/hook".into(),
            token: Some("a\r\nX-Evil: 1".into()),
            authentication: Some(PushAuth {
                scheme: "Bear er".into(),
                credentials: Some("x".repeat(2000)),
            }),
        };
        assert_eq!(
            refused(&bad),
            vec![
                "url",
                "id",
                "token",
                "authentication.scheme",
                "authentication.credentials"
            ]
        );
    }
}
