//! The V1 error envelope and the one table of stable error codes.
//!
//! Every error the server answers with — from the service, from parsing, from the
//! framework (unknown route, wrong method, oversized body) and from panics — is
//! rendered here, as
//! `{"error": {"code", "message", "request_id", "fields"?, "active_turn"?}}`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use baton_domain::{ActiveTurn, FieldError, ServiceError};
use serde::Serialize;

/// The header every answer carries its request's id in (an envelope's `request_id`).
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

macro_rules! error_codes {
    ($($variant:ident => ($status:ident, $code:literal, $meaning:literal)),* $(,)?) => {
        /// Every error code the API can answer with, its HTTP status, and what it means
        /// (the OpenAPI document's description of the code).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode { $($variant),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code),* }
            }

            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status),* }
            }

            pub fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning),* }
            }
        }
    };
}

error_codes! {
    MalformedJson => (BAD_REQUEST, "malformed_json", "The body is not JSON."),
    BadRequest => (BAD_REQUEST, "bad_request", "The query string cannot be read."),
    Unauthorized => (UNAUTHORIZED, "unauthorized", "No valid, unrevoked bearer key (or admin token) was sent."),
    NotFound => (NOT_FOUND, "not_found", "Nothing is at this path (or the admin API is disabled, or no such key or delivery exists)."),
    AgentNotFound => (NOT_FOUND, "agent_not_found", "The agent does not exist, or is not the agent of the key."),
    TaskNotFound => (NOT_FOUND, "task_not_found", "The task does not exist for the key's agent."),
    MethodNotAllowed => (METHOD_NOT_ALLOWED, "method_not_allowed", "The path exists but not with this method."),
    JsonTooDeep => (BAD_REQUEST, "json_too_deep", "The body nests deeper than the server's JSON depth limit."),
    TaskBusy => (CONFLICT, "task_busy", "The task is running a turn; `active_turn` names it. Retry when it has ended."),
    TaskNotRunning => (CONFLICT, "task_not_running", "The task has no running turn to cancel."),
    QueueFull => (CONFLICT, "queue_full", "As many messages as a task may queue already wait in it; retry when one has started."),
    QueuedMessageNotFound => (NOT_FOUND, "queued_message_not_found", "The task has no queued message with this id."),
    MessageNotQueued => (CONFLICT, "message_not_queued", "The queued message already started its turn or was delivered: it can no longer be cancelled."),
    TurnEnded => (CONFLICT, "turn_ended", "The turn no longer runs at this attempt: the agent should stop playing it."),
    IdempotencyKeyReused => (UNPROCESSABLE_ENTITY, "idempotency_key_reused", "The Idempotency-Key was first used for a different request."),
    IdempotencyKeyInUse => (CONFLICT, "idempotency_key_in_use", "A request with this Idempotency-Key is still being processed."),
    PayloadTooLarge => (PAYLOAD_TOO_LARGE, "payload_too_large", "The body is larger than the server's body limit."),
    HeadersTooLarge => (REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "The request's headers are larger than the server accepts."),
    RequestTimeout => (REQUEST_TIMEOUT, "request_timeout", "The request (its head, or its body within the server's body timeout) did not arrive in time; send it again."),
    UnsupportedMediaType => (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "The body is not sent as application/json."),
    ValidationFailed => (UNPROCESSABLE_ENTITY, "validation_failed", "A field is missing or invalid; `fields` names each one."),
    RateLimited => (TOO_MANY_REQUESTS, "rate_limited", "The key sent more requests than its rate allows; see Retry-After."),
    TooManyRunningTurns => (TOO_MANY_REQUESTS, "too_many_running_turns", "The agent runs as many turns as the server allows; see Retry-After."),
    InternalError => (INTERNAL_SERVER_ERROR, "internal_error", "An unexpected error; report the request_id to the operator."),
    ServiceUnavailable => (SERVICE_UNAVAILABLE, "service_unavailable", "The database is unreachable or the instance is not ready; retry shortly."),
    ShuttingDown => (SERVICE_UNAVAILABLE, "shutting_down", "This instance is stopping; retry (another instance, or after Retry-After)."),
    StorageUnwritable => (SERVICE_UNAVAILABLE, "storage_unwritable", "The database cannot take writes (its disk is full, or it is read-only); nothing was stored. Retry after Retry-After."),
}

impl ErrorCode {
    /// Whether answers with this code carry `Retry-After`.
    pub fn says_when_to_retry(self) -> bool {
        matches!(
            self,
            ErrorCode::TaskBusy
                | ErrorCode::IdempotencyKeyInUse
                | ErrorCode::ServiceUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::StorageUnwritable
                | ErrorCode::RateLimited
                | ErrorCode::TooManyRunningTurns
        )
    }
}

/// `Retry-After` of a `storage_unwritable` answer: an operator has to free space.
const STORAGE_RETRY_AFTER_SECS: u32 = 5;

/// One invalid field in a validation error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    pub field: String,
    pub reason: String,
}

/// The running turn a `task_busy` error names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActiveTurnBody {
    pub turn_id: i64,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// An error answer. `source` is for the log only and never reaches the client.
#[derive(Debug, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub fields: Vec<FieldProblem>,
    /// Boxed: rare, and it keeps every `Result<_, ApiError>` small.
    pub active_turn: Option<Box<ActiveTurnBody>>,
    /// Set when the error is rendered outside the request (after a panic), so that
    /// the response can still carry the request's id.
    pub request_id: Option<Box<str>>,
    /// Seconds for `Retry-After`, when the error says when to come back.
    pub retry_after: Option<u32>,
    /// With `method_not_allowed`: the path's methods, for the `Allow` header.
    pub allow: Option<Box<str>>,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Every error answer: `{"error": {...}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorEnvelope<'a> {
    error: ErrorBody<'a>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    /// Stable and machine-readable; branch on this, not on the message.
    #[schema(schema_with = error_code_schema)]
    code: &'static str,
    /// For people; may change between releases.
    message: &'a str,
    /// Also in the `X-Request-Id` header; quote it when reporting a problem.
    request_id: &'a str,
    /// With `validation_failed`: each invalid field and why.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Vec<FieldProblem>)]
    fields: &'a [FieldProblem],
    /// With `task_busy`: the turn the task is running.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ActiveTurnBody>)]
    active_turn: Option<&'a ActiveTurnBody>,
}

/// The schema of an envelope's `code`: the table above, each code with its meaning —
/// as examples, not an `enum`: the set grows with the server, and a client generated
/// from a closed list would fail on a code added later.
fn error_code_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{ObjectBuilder, Type};
    let table: String = ErrorCode::ALL
        .iter()
        .map(|c| {
            format!(
                "\n- `{}` ({}): {}",
                c.as_str(),
                c.status().as_u16(),
                c.meaning()
            )
        })
        .collect();
    ObjectBuilder::new()
        .schema_type(Type::String)
        .examples(ErrorCode::ALL.iter().map(|c| c.as_str()))
        .description(Some(format!(
            "What went wrong, for a program to act on. Known codes:{table}\n\nThe set may \
             grow: accept a code not listed here and act on the HTTP status."
        )))
        .build()
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            fields: Vec::new(),
            active_turn: None,
            request_id: None,
            retry_after: None,
            allow: None,
            source: None,
        }
    }

    pub fn invalid(fields: Vec<FieldProblem>) -> Self {
        let summary = fields
            .iter()
            .map(|f| format!("{}: {}", f.field, f.reason))
            .collect::<Vec<_>>()
            .join("; ");
        ApiError {
            fields,
            ..ApiError::new(
                ErrorCode::ValidationFailed,
                format!("The request is invalid: {summary}"),
            )
        }
    }

    pub fn invalid_field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::invalid(vec![FieldProblem {
            field: field.into(),
            reason: reason.into(),
        }])
    }

    pub fn internal(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError {
            source: Some(source.into()),
            ..ApiError::new(
                ErrorCode::InternalError,
                "An unexpected error occurred. Report the request_id to the operator.",
            )
        }
    }

    pub fn task_not_found() -> Self {
        ApiError::new(
            ErrorCode::TaskNotFound,
            "No task with this id exists for your agent.",
        )
    }

    /// The envelope's JSON for a given request id.
    pub fn envelope(&self, request_id: &str) -> serde_json::Value {
        serde_json::to_value(ErrorEnvelope {
            error: ErrorBody {
                code: self.code.as_str(),
                message: &self.message,
                request_id,
                fields: &self.fields,
                active_turn: self.active_turn.as_deref(),
            },
        })
        .unwrap_or_else(
            |_| serde_json::json!({"error": {"code": "internal_error", "request_id": request_id}}),
        )
    }

    /// The full response for a given request id.
    pub fn to_response(&self, request_id: &str) -> HttpResponse {
        let mut response = HttpResponse::build(self.code.status());
        if self.code == ErrorCode::Unauthorized {
            response.insert_header((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")));
        }
        if let Some(methods) = &self.allow {
            response.insert_header((header::ALLOW, &**methods));
        }
        if self.code.says_when_to_retry() {
            let seconds = self.retry_after.unwrap_or(1).max(1);
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(self.envelope(request_id))
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    /// Rendered with the request id if the error carries one; otherwise the
    /// request-id middleware renders it again with the id, which only it knows.
    fn error_response(&self) -> HttpResponse {
        let id = self.request_id.as_deref().unwrap_or("");
        let mut response = self.to_response(id);
        if let Some(value) = (!id.is_empty())
            .then(|| HeaderValue::from_str(id).ok())
            .flatten()
        {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }
}

fn fields(errors: Vec<FieldError>) -> Vec<FieldProblem> {
    errors
        .into_iter()
        .map(|e| FieldProblem {
            field: e.field,
            reason: e.reason,
        })
        .collect()
}

fn busy(active: ActiveTurn) -> ApiError {
    ApiError {
        active_turn: Some(Box::new(ActiveTurnBody {
            turn_id: active.turn_id.0,
            started_at: active.started_at,
        })),
        ..ApiError::new(
            ErrorCode::TaskBusy,
            format!(
                "The task is running turn {}. Poll GET on this task until its status leaves \"running\", then send the message again — or send it with \"on_busy\": \"enqueue\" to queue it.",
                active.turn_id
            ),
        )
    }
}

impl From<ServiceError> for ApiError {
    fn from(err: ServiceError) -> Self {
        match err {
            ServiceError::Unauthorized => ApiError::new(
                ErrorCode::Unauthorized,
                "Send a valid, unrevoked API key as 'Authorization: Bearer <key>'.",
            ),
            ServiceError::StreamTokenRefused(why) => ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "The stream token {why}. Mint another with POST /v1/chat/tasks/{{task_id}}/stream-token (it opens that task's stream for {} minutes), or send a key as 'Authorization: Bearer <key>'.",
                    baton_domain::stream_tokens::STREAM_TOKEN_TTL.num_minutes()
                ),
            ),
            ServiceError::AgentNotFound => ApiError::new(
                ErrorCode::AgentNotFound,
                "No such agent for this API key: agent_id must be the agent the key belongs to.",
            ),
            ServiceError::TaskNotFound => ApiError::task_not_found(),
            ServiceError::TaskBusy(active) => busy(active),
            ServiceError::QueueFull(limit) => ApiError::new(
                ErrorCode::QueueFull,
                format!(
                    "{limit} messages already wait in this task's queue, as many as this server allows; retry when one has started."
                ),
            ),
            ServiceError::QueuedMessageNotFound => ApiError::new(
                ErrorCode::QueuedMessageNotFound,
                "This task has no queued message with this id.",
            ),
            ServiceError::NotQueued(message) => ApiError::new(
                ErrorCode::MessageNotQueued,
                format!(
                    "The message is {} already{}: it can no longer be cancelled.",
                    message.status,
                    message
                        .turn_id
                        .map(|turn| format!(" (turn {turn})"))
                        .unwrap_or_default()
                ),
            ),
            // Push configs are A2A's (answered by its binding); the envelope API has
            // none, but says what they mean should one reach it.
            ServiceError::PushConfigNotFound => ApiError::new(
                ErrorCode::NotFound,
                "This task has no push notification config with this id.",
            ),
            ServiceError::TooManyPushConfigs(limit) => ApiError::new(
                ErrorCode::ValidationFailed,
                format!(
                    "The task has {limit} push notification configs already: delete one first."
                ),
            ),
            ServiceError::TurnEnded => ApiError::new(
                ErrorCode::TurnEnded,
                "The turn no longer runs at this attempt (it ended, or was taken over after its instance stopped): stop playing it.",
            ),
            ServiceError::InboxRefused(why) => ApiError::new(
                ErrorCode::Unauthorized,
                format!(
                    "The inbox request is refused: {why}. Sign it with the agent's secret as baton signs turn requests (Standard Webhooks)."
                ),
            ),
            ServiceError::TaskNotRunning(status) => ApiError::new(
                ErrorCode::TaskNotRunning,
                format!("The task has no running turn to cancel: its latest turn is {status}."),
            ),
            ServiceError::TooManyRunningTurns(limit) => ApiError::new(
                ErrorCode::TooManyRunningTurns,
                format!(
                    "Your agent already runs {limit} turns, as many as this server allows; retry when one has ended."
                ),
            ),
            ServiceError::IdempotencyKeyReused => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
                "This Idempotency-Key was first used for a different request. Use a new key for a new request.",
            ),
            ServiceError::IdempotencyKeyInUse => ApiError::new(
                ErrorCode::IdempotencyKeyInUse,
                "A request with this Idempotency-Key is still being processed. Retry after a moment to get its answer.",
            ),
            ServiceError::Validation(errors) => ApiError::invalid(fields(errors)),
            ServiceError::TooLarge(what) => ApiError::new(ErrorCode::PayloadTooLarge, what),
            ServiceError::Unavailable(why) => ApiError {
                source: Some(why.into()),
                ..ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    "The service is temporarily unavailable; retry shortly.",
                )
            },
            ServiceError::StorageUnwritable(why) => ApiError {
                retry_after: Some(STORAGE_RETRY_AFTER_SECS),
                source: Some(why.into()),
                ..ApiError::new(
                    ErrorCode::StorageUnwritable,
                    "The database cannot take writes right now (its disk is full, or it is read-only); nothing was stored. Retry after Retry-After.",
                )
            },
            ServiceError::Internal(source) => ApiError::internal(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_domain::TurnId;
    use chrono::TimeZone;
    use serde_json::json;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {}", code.as_str());
            assert!(
                code.as_str()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }

    #[test]
    fn busy_envelope_names_the_active_turn() {
        let started = chrono::Utc
            .timestamp_opt(1_700_000_000, 0)
            .single()
            .unwrap();
        let err = ApiError::from(ServiceError::TaskBusy(ActiveTurn {
            turn_id: TurnId(9),
            started_at: started,
        }));
        let body = err.envelope("req-1");
        assert_eq!(body["error"]["code"], "task_busy");
        assert_eq!(body["error"]["request_id"], "req-1");
        assert_eq!(
            body["error"]["active_turn"],
            json!({"turn_id": 9, "started_at": "2023-11-14T22:13:20Z"})
        );
        assert!(body["error"].get("fields").is_none());
    }

    #[test]
    fn internal_errors_say_nothing_of_their_cause() {
        let err = ApiError::from(ServiceError::Internal("db password is hunter2".into()));
        let text = err.envelope("r").to_string();
        assert!(!text.contains("hunter2"));
        assert_eq!(err.code.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
