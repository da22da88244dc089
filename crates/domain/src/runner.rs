//! The `TurnRunner` port: what plays the agent's side of a turn, and the sink it
//! streams into.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::content::Content;
use crate::model::{Agent, Message, Metadata, StoredFile, Task, TurnId, Usage};

/// What a runner is given for one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnInput {
    pub agent: Agent,
    pub task: Task,
    pub turn_id: TurnId,
    /// The `metadata` of the request that started this turn, as the client sent it
    /// (per-request parameters for the agent; the task's own is `task.metadata`).
    pub metadata: Metadata,
    /// Every message of the task in order, the one that started this turn last.
    pub history: Vec<Message>,
    /// The files attached to those messages, with their bytes (an attachment names
    /// its file by `file_id`).
    pub files: Vec<StoredFile>,
}

impl TurnInput {
    /// The latest message written by the user (the one that started this turn).
    pub fn last_user_message(&self) -> Option<&Message> {
        self.history
            .iter()
            .rev()
            .find(|m| m.role == crate::model::Role::User)
    }
}

/// Why a runner could not finish a turn; becomes the turn's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RunnerError {
    /// A stable snake_case code, e.g. `model_unavailable`.
    pub code: String,
    pub message: String,
}

impl RunnerError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        RunnerError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// What a runner pushes into its sink.
#[derive(Debug, Clone, PartialEq)]
pub enum SinkItem {
    /// More text of the agent's current streamed text message (one is opened if none is).
    TextDelta(String),
    /// A complete message. A streamed text message still open is closed before it.
    Message(Content),
    /// What the model used so far; the last report is recorded on the turn.
    Usage(Usage),
}

/// The turn has ended (or its executor is gone): stop producing output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the turn no longer accepts output")]
pub struct SinkClosed;

/// Where a runner streams the agent's output. Cheap to clone; bounded, so a runner that
/// produces faster than output is stored waits instead of growing memory.
#[derive(Clone)]
pub struct TurnSink {
    sender: mpsc::Sender<SinkItem>,
}

impl fmt::Debug for TurnSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnSink").finish_non_exhaustive()
    }
}

impl TurnSink {
    /// A sink and the receiving end its owner drains.
    pub fn channel(capacity: usize) -> (TurnSink, mpsc::Receiver<SinkItem>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (TurnSink { sender }, receiver)
    }

    pub async fn text_delta(&self, text: impl Into<String>) -> Result<(), SinkClosed> {
        self.sender
            .send(SinkItem::TextDelta(text.into()))
            .await
            .map_err(|_| SinkClosed)
    }

    pub async fn usage(&self, usage: Usage) -> Result<(), SinkClosed> {
        self.sender
            .send(SinkItem::Usage(usage))
            .await
            .map_err(|_| SinkClosed)
    }

    pub async fn message(&self, content: Content) -> Result<(), SinkClosed> {
        self.sender
            .send(SinkItem::Message(content))
            .await
            .map_err(|_| SinkClosed)
    }
}

/// Plays the agent's side of a turn.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TurnRunner: Send + Sync + 'static {
    /// Checks an agent's runner configuration when the agent is created or changed, so
    /// a bad configuration is refused then rather than failing its first turn.
    fn validate_config(&self, config: &Value) -> Result<(), String>;

    /// Produces the agent's output for one turn into `sink`. Returning `Ok` completes
    /// the turn with what was pushed; `Err` fails it with the error's code and message.
    async fn run(&self, input: TurnInput, sink: TurnSink) -> Result<(), RunnerError>;
}

/// The runners this process knows, by kind name (an agent's `runner.kind`).
#[derive(Clone, Default)]
pub struct RunnerRegistry {
    runners: BTreeMap<String, Arc<dyn TurnRunner>>,
}

impl fmt::Debug for RunnerRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.runners.keys()).finish()
    }
}

impl RunnerRegistry {
    pub fn new() -> Self {
        RunnerRegistry::default()
    }

    /// Registers `runner` under `kind`, replacing any runner of that kind.
    pub fn with(mut self, kind: impl Into<String>, runner: Arc<dyn TurnRunner>) -> Self {
        self.runners.insert(kind.into(), runner);
        self
    }

    /// Adds every runner of `other`, replacing runners of the same kinds.
    pub fn with_all(mut self, other: RunnerRegistry) -> Self {
        self.runners.extend(other.runners);
        self
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn TurnRunner>> {
        self.runners.get(kind).cloned()
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.runners.keys().map(String::as_str)
    }
}
