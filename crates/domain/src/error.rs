//! Errors per layer: what a storage adapter may report, what a claim may report, and
//! what the service reports to its callers (the HTTP adapter maps these to envelopes).

use std::error::Error as StdError;

use crate::model::{ActiveTurn, TurnStatus};

/// What a storage adapter may report. Adapters translate their database errors into
/// these at their seam; no database type crosses into the domain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is overloaded right now; retrying may help.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// The database answers but cannot take writes: its disk is full, or it is
    /// read-only. Nothing was written; retrying once space returns succeeds.
    #[error("storage cannot take writes: {0}")]
    Unwritable(String),
    /// A uniqueness rule refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// Stored data this build cannot read, or any other unexpected failure.
    #[error("storage error: {0}")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl StoreError {
    pub fn internal(err: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        StoreError::Internal(err.into())
    }
}

/// What appending a message and claiming the task's next turn may report.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The task does not exist or belongs to another agent (the two are not told apart).
    #[error("task not found")]
    TaskNotFound,
    /// A turn is running; nothing was stored.
    #[error("task is busy with turn {}", .0.turn_id)]
    TaskBusy(ActiveTurn),
    /// The idempotency key was first used for a different request; nothing was stored.
    #[error("idempotency key reused for a different request")]
    IdempotencyKeyReused,
    /// The agent already runs as many turns as it may; nothing was stored.
    #[error("the agent already runs {0} turns")]
    TooManyRunningTurns(u32),
    /// As many messages as a task may queue already wait in it; nothing was stored.
    #[error("the task's queue already holds {0} messages")]
    QueueFull(u32),
    /// The message does not fit the task's state (a tool answer nobody waits for, or
    /// anything but one while tool calls wait); nothing was stored.
    #[error("the message does not fit the task")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One invalid field of a request: where it is and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a stream token ([`crate::stream_tokens`]) does not open a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamTokenRefusal {
    #[error("is not a stream token")]
    Malformed,
    #[error("has expired")]
    Expired,
    #[error("is for another task")]
    OtherTask,
    /// A forged token, or its key was revoked (or never existed).
    #[error("was not made with a valid, unrevoked key")]
    BadKey,
}

/// What the service reports to its callers. Each variant has one stable error code in
/// the HTTP adapter.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("missing, invalid or revoked API key")]
    Unauthorized,
    /// A stream token that does not open this stream.
    #[error("the stream token {0}")]
    StreamTokenRefused(StreamTokenRefusal),
    #[error("agent not found")]
    AgentNotFound,
    #[error("task not found")]
    TaskNotFound,
    #[error("task is busy with turn {}", .0.turn_id)]
    TaskBusy(ActiveTurn),
    /// Cancel found no running turn; the latest turn ended with this status.
    #[error("task is not running (its latest turn is {0})")]
    TaskNotRunning(TurnStatus),
    #[error("idempotency key reused for a different request")]
    IdempotencyKeyReused,
    /// The agent already runs as many turns as the server allows it.
    #[error("the agent already runs {0} turns")]
    TooManyRunningTurns(u32),
    /// As many messages as a task may queue already wait in it.
    #[error("the task's queue already holds {0} messages")]
    QueueFull(u32),
    /// The task has no push config of this id.
    #[error("push notification config not found")]
    PushConfigNotFound,
    /// The task has as many push configs as it may.
    #[error("the task has {0} push notification configs already: delete one first")]
    TooManyPushConfigs(usize),
    /// No such message in the task's queue.
    #[error("queued message not found")]
    QueuedMessageNotFound,
    /// The queued message already started its turn, or was delivered.
    #[error("the message is no longer waiting (it is {})", .0.status)]
    NotQueued(Box<crate::model::QueuedMessage>),
    /// The turn an agent asked the inbox of no longer runs (or runs another attempt).
    #[error("the turn no longer runs at this attempt")]
    TurnEnded,
    /// A turn inbox request that is not signed by the turn's agent.
    #[error("inbox request refused: {0}")]
    InboxRefused(String),
    /// Another request with this idempotency key is still being processed.
    #[error("idempotency key in use by a request still being processed")]
    IdempotencyKeyInUse,
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    /// Part of the request is larger than the server accepts (the message says which).
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The database cannot take writes (a full disk, a read-only database).
    #[error("storage cannot take writes: {0}")]
    StorageUnwritable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn StdError + Send + Sync>),
}

impl ServiceError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::Validation(vec![FieldError::new(field, reason)])
    }
}

impl From<StoreError> for ServiceError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(why) => ServiceError::Unavailable(why),
            StoreError::Unwritable(why) => ServiceError::StorageUnwritable(why),
            other => ServiceError::Internal(Box::new(other)),
        }
    }
}

impl From<ClaimError> for ServiceError {
    fn from(err: ClaimError) -> Self {
        match err {
            ClaimError::TaskNotFound => ServiceError::TaskNotFound,
            ClaimError::TaskBusy(active) => ServiceError::TaskBusy(active),
            ClaimError::IdempotencyKeyReused => ServiceError::IdempotencyKeyReused,
            ClaimError::TooManyRunningTurns(limit) => ServiceError::TooManyRunningTurns(limit),
            ClaimError::QueueFull(limit) => ServiceError::QueueFull(limit),
            ClaimError::Invalid(errors) => ServiceError::Validation(errors),
            ClaimError::Store(store) => store.into(),
        }
    }
}
