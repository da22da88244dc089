//! A2A's errors, as both bindings name them (the JSON-RPC binding by code, the
//! HTTP+JSON binding by reason, `rest`), and what a method answers.

use baton_domain::{ServiceError, TaskId};
use serde_json::Value;

/// The errors of the JSON-RPC binding, with their codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcCode {
    Parse = -32700,
    InvalidRequest = -32600,
    MethodNotFound = -32601,
    InvalidParams = -32602,
    Internal = -32603,
    TaskNotFound = -32001,
    TaskNotCancelable = -32002,
    UnsupportedOperation = -32004,
    ContentTypeNotSupported = -32005,
    ExtendedAgentCardNotConfigured = -32007,
    VersionNotSupported = -32009,
}

/// A JSON-RPC error answer.
#[derive(Debug)]
pub struct RpcError {
    pub code: RpcCode,
    pub message: String,
}

impl RpcError {
    pub fn new(code: RpcCode, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        RpcError::new(RpcCode::InvalidParams, message)
    }
}

impl From<ServiceError> for RpcError {
    fn from(err: ServiceError) -> Self {
        let message = err.to_string();
        let code = match &err {
            ServiceError::TaskNotFound => RpcCode::TaskNotFound,
            // As A2A's SDK answers a config it does not have.
            ServiceError::PushConfigNotFound => RpcCode::TaskNotFound,
            ServiceError::TooManyPushConfigs(_) => RpcCode::InvalidParams,
            ServiceError::TaskNotRunning(_) => RpcCode::TaskNotCancelable,
            ServiceError::Validation(errors) => {
                let fields: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect();
                return RpcError::invalid(format!("invalid params: {}", fields.join("; ")));
            }
            ServiceError::IdempotencyKeyReused => {
                return RpcError::invalid(
                    "this messageId was sent before with another message: use a new messageId",
                );
            }
            ServiceError::TooLarge(_) => RpcCode::InvalidParams,
            ServiceError::TaskBusy(active) => {
                return RpcError::new(
                    RpcCode::UnsupportedOperation,
                    format!(
                        "the task is running turn {}: send the message when it has ended, or have the agent queue it (policy.on_busy)",
                        active.turn_id
                    ),
                );
            }
            ServiceError::QueueFull(_)
            | ServiceError::TooManyRunningTurns(_)
            | ServiceError::IdempotencyKeyInUse => RpcCode::UnsupportedOperation,
            _ => RpcCode::Internal,
        };
        let message = match code {
            RpcCode::Internal => "internal error".to_owned(),
            _ => message,
        };
        RpcError::new(code, message)
    }
}

/// What the handler answers a request with.
pub type Outcome = Result<Value, RpcError>;

/// A task id as A2A writes it (a string of digits); any other is no task here.
pub fn task_id(raw: &str) -> Result<TaskId, RpcError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(TaskId)
        .ok_or_else(|| RpcError::new(RpcCode::TaskNotFound, format!("no task {raw:?}")))
}
