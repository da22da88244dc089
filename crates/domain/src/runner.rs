//! The `TurnRunner` port: what plays the agent's side of a turn, and the sink it
//! streams into.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::content::Content;
use crate::model::{Agent, Message, Metadata, StoredFile, Task, TurnId, Usage};

/// What a runner is given for one turn.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnInput {
    pub agent: Agent,
    pub task: Task,
    pub turn_id: TurnId,
    /// Which play of the turn this is (from 1; a turn taken over after its instance
    /// stopped is played again with the next).
    pub attempt: u32,
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
    inbox: Option<mpsc::Sender<InboxRequest>>,
}

/// A runner's request for the messages steered into its turn: answered with them,
/// now delivered (stored in the history as part of the turn).
pub type InboxRequest = oneshot::Sender<Vec<Message>>;

impl fmt::Debug for TurnSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnSink").finish_non_exhaustive()
    }
}

impl TurnSink {
    /// A sink and the receiving end its owner drains.
    pub fn channel(capacity: usize) -> (TurnSink, mpsc::Receiver<SinkItem>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (
            TurnSink {
                sender,
                inbox: None,
            },
            receiver,
        )
    }

    /// The sink with an inbox: [`TurnSink::take_messages`] asks `requests`.
    pub fn with_inbox(mut self, requests: mpsc::Sender<InboxRequest>) -> Self {
        self.inbox = Some(requests);
        self
    }

    /// The messages sent into this turn (`on_busy: steer`) since the runner last
    /// asked, in order, now delivered: each is in the history as part of this turn,
    /// after whatever the runner pushed before asking, and the task's stream shows a
    /// `message_delivered` event. Ask between steps (a model call, a tool run); a
    /// message not taken when the turn ends is queued for a turn of its own. Without
    /// an inbox (a runner played outside the executor), none.
    pub async fn take_messages(&self) -> Result<Vec<Message>, SinkClosed> {
        let Some(inbox) = &self.inbox else {
            return Ok(Vec::new());
        };
        let (reply, answer) = oneshot::channel();
        inbox.send(reply).await.map_err(|_| SinkClosed)?;
        answer.await.map_err(|_| SinkClosed)
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

    /// Whether turns played with this configuration take messages sent while they
    /// run (`on_busy: steer`, through [`TurnSink::take_messages`] or the runner's own
    /// inbox). A message steered to an agent whose runner does not is queued.
    fn takes_messages(&self, _config: &Value) -> bool {
        false
    }

    /// Checks that a request to the turn inbox endpoint comes from this agent's
    /// service (`headers` and `body` as received). Only runners whose agents call
    /// back (the `http` runner) accept any.
    fn authorize_inbox(
        &self,
        _config: &Value,
        _headers: &[(String, String)],
        _body: &[u8],
    ) -> Result<(), String> {
        Err("this agent's runner has no inbox endpoint".to_owned())
    }

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
