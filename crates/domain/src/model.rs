//! The entities. A task's status is never stored: it is derived from its turns.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::content::Content;

macro_rules! id_type {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {$(
        #[$doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(value_type = i64))]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    )*};
}

id_type!(
    /// An agent's primary key.
    AgentId,
    /// An API key's primary key (not the secret).
    ApiKeyId,
    /// A task's primary key.
    TaskId,
    /// A turn's primary key.
    TurnId,
    /// A message's primary key.
    MessageId,
    /// The primary key of a message sent to a busy task, queued or steering.
    QueuedMessageId,
);

/// Free-form correlation data, passed through unchanged.
pub type Metadata = Map<String, Value>;

/// Which runner plays an agent, and that runner's own configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(example = json!({"kind": "echo", "config": {}})))]
pub struct RunnerSpec {
    /// The runner's registered name, e.g. `echo`.
    pub kind: String,
    /// The runner's own settings (an object; `{}` when absent).
    #[serde(default = "empty_object")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub config: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub runner: RunnerSpec,
    pub policy: TurnPolicy,
    /// Where this agent's turn ends are delivered when a request names no webhook.
    pub webhook: Option<WebhookEndpoint>,
    /// What its A2A Agent Card says of it (else the defaults).
    pub card: Option<CardConfig>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAgent {
    pub name: String,
    pub runner: RunnerSpec,
    pub policy: TurnPolicy,
    pub webhook: Option<WebhookEndpoint>,
    pub card: Option<CardConfig>,
    pub created_at: DateTime<Utc>,
}

/// Changes to an agent; `None` leaves a field as it is.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentUpdate {
    pub name: Option<String>,
    pub runner: Option<RunnerSpec>,
    pub policy: Option<TurnPolicy>,
    /// `Some(None)` removes the default webhook.
    pub webhook: Option<Option<WebhookEndpoint>>,
    /// `Some(None)` removes the card's config (the defaults again).
    pub card: Option<Option<CardConfig>>,
}

/// How an agent's turns are bounded and what happens to one whose instance died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TurnPolicy {
    /// What to do with a turn whose lease expired (its instance crashed, was killed,
    /// or stopped before the turn ended).
    pub on_interrupt: OnInterrupt,
    /// With `retry`: how many attempts a turn gets in all, the first included.
    pub max_attempts: u32,
    /// A turn playing longer than this ends `failed` with `turn_timeout`.
    pub turn_timeout_ms: u64,
    /// What a message sent while a turn runs does, when its request does not say.
    #[serde(default = "reject")]
    pub on_busy: OnBusy,
}

fn reject() -> OnBusy {
    OnBusy::Reject
}

impl TurnPolicy {
    /// Ten minutes: long enough for a model with tools, short enough that a hung
    /// agent does not hold its task for ever.
    pub const DEFAULT_TIMEOUT_MS: u64 = 10 * 60 * 1000;
    pub const MIN_TIMEOUT_MS: u64 = 100;
    pub const MAX_TIMEOUT_MS: u64 = 7 * 24 * 3600 * 1000;
    pub const MAX_ATTEMPTS: u32 = 10;

    pub fn turn_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.turn_timeout_ms)
    }

    /// Whether a turn interrupted during `attempt` is played again.
    pub fn retries_after(&self, attempt: u32) -> bool {
        self.on_interrupt == OnInterrupt::Retry && attempt < self.max_attempts
    }
}

impl Default for TurnPolicy {
    fn default() -> Self {
        TurnPolicy {
            on_interrupt: OnInterrupt::Fail,
            max_attempts: 3,
            turn_timeout_ms: TurnPolicy::DEFAULT_TIMEOUT_MS,
            on_busy: OnBusy::Reject,
        }
    }
}

/// An API key as stored: only the hash of its secret, never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub agent_id: AgentId,
    /// The public, non-secret start of the token, shown in listings.
    pub prefix: String,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a request last authenticated with it (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewApiKey {
    pub agent_id: AgentId,
    pub prefix: String,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
}

macro_rules! string_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),* }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),* }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownVariant;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)*
                    other => Err(UnknownVariant(other.to_owned())),
                }
            }
        }
    };
}

/// A stored enum column held a value this build does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown value {0:?}")]
pub struct UnknownVariant(pub String);

string_enum!(
    /// A turn's lifecycle: `running`, then exactly one terminal state — or
    /// `requires_action` when the agent asked the client to run tools, until the
    /// answers start the next turn (the turn is then `completed`) or time runs out
    /// (`failed`, `tool_response_timeout`).
    TurnStatus { Running => "running", RequiresAction => "requires_action", Completed => "completed", Failed => "failed", Cancelled => "cancelled" }
);

string_enum!(
    /// A task's status, derived from its latest turn (the only one that can be running).
    TaskStatus { Running => "running", RequiresAction => "requires_action", Completed => "completed", Failed => "failed", Cancelled => "cancelled" }
);

string_enum!(
    /// What becomes of a turn whose instance stopped holding it: `fail` ends it
    /// `failed` with `turn_interrupted`; `retry` plays it again (for agents that are
    /// safe to re-run), up to the policy's attempts.
    OnInterrupt { Fail => "fail", Retry => "retry" }
);

string_enum!(
    /// Who wrote a message.
    Role { User => "user", Assistant => "assistant", System => "system", Tool => "tool" }
);

string_enum!(
    /// Whether an agent message is still being streamed.
    StreamingStatus { InProgress => "in_progress", Done => "done" }
);

string_enum!(
    /// What an entry of a task's event log reports.
    EventKind {
        TurnStarted => "turn_started",
        TextDelta => "text_delta",
        Message => "message",
        Final => "final",
        Error => "error",
        Cancelled => "cancelled",
        RequiresAction => "requires_action",
        MessageDelivered => "message_delivered",
    }
);

string_enum!(
    /// What a message sent while its task's turn runs does: `reject` answers `409
    /// task_busy` (the default); `enqueue` waits in the task's queue and starts a turn
    /// of its own when the turns before it have ended; `interrupt` cancels the running
    /// turn and starts its own in the same step; `steer` is delivered into the running
    /// turn, if its runner takes messages mid-turn (else, or if the turn ends first,
    /// it is queued as with `enqueue`).
    OnBusy { Reject => "reject", Enqueue => "enqueue", Interrupt => "interrupt", Steer => "steer" }
);

string_enum!(
    /// How a message waiting in a task's queue was sent.
    QueueMode { Enqueue => "enqueue", Steer => "steer" }
);

string_enum!(
    /// Where a message sent to a busy task stands: `queued` (waits for a turn of its
    /// own) or `steering` (waits to be taken by the running turn), then `started` (its
    /// turn started), `delivered` (the running turn took it) or `cancelled`.
    QueuedStatus { Queued => "queued", Steering => "steering", Started => "started", Delivered => "delivered", Cancelled => "cancelled" }
);

string_enum!(
    /// What an accepted message is doing: `running` (it started a turn),
    /// `requires_action` (a tool answer while other tool calls still wait), `queued`
    /// (waits in the task's queue) or `steering` (waits to be taken by the running turn).
    AcceptedStatus { Running => "running", RequiresAction => "requires_action", Queued => "queued", Steering => "steering" }
);

impl QueuedStatus {
    /// Whether the message still waits (and can be cancelled).
    pub fn is_waiting(self) -> bool {
        matches!(self, QueuedStatus::Queued | QueuedStatus::Steering)
    }
}

impl EventKind {
    /// Whether this event ends a turn.
    pub fn ends_turn(self) -> bool {
        matches!(
            self,
            EventKind::Final | EventKind::Error | EventKind::Cancelled | EventKind::RequiresAction
        )
    }
}

/// One entry of a task's append-only event log. `seq` increases strictly per task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub task_id: TaskId,
    pub seq: i64,
    pub turn_id: TurnId,
    pub kind: EventKind,
    /// The event's JSON, built by [`crate::events`].
    pub data: Value,
    pub created_at: DateTime<Utc>,
}

/// A slice of a task's event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<TaskEvent>,
    /// The oldest `seq` still kept; a cursor before `first_kept - 1` has missed
    /// pruned events.
    pub first_kept: i64,
    /// The task's last `seq` (where its log ends), read before the events: a page
    /// that is not full holds every event after the cursor up to it.
    pub last_seq: i64,
}

/// One step of a running turn's output, recorded in order.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputOp {
    /// More text of the turn's open streamed text message (opened if none is).
    TextDelta(String),
    /// A complete message; an open streamed text message is closed first.
    Message(Content),
}

/// Output of a running turn to record, with its events, in one transaction, only
/// while `holder` holds the turn's lease and plays its current attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordOutput {
    pub task_id: TaskId,
    pub turn_id: TurnId,
    pub holder: Holder,
    /// This batch's number in the play, from 1. A batch the store already recorded
    /// (written again because the answer to its commit was lost) is not recorded a
    /// second time.
    pub batch: u32,
    pub ops: Vec<OutputOp>,
    pub now: DateTime<Utc>,
}

impl TurnStatus {
    pub fn is_terminal(self) -> bool {
        self != TurnStatus::Running
    }
}

impl From<TurnStatus> for TaskStatus {
    fn from(status: TurnStatus) -> Self {
        match status {
            TurnStatus::Running => TaskStatus::Running,
            TurnStatus::RequiresAction => TaskStatus::RequiresAction,
            TurnStatus::Completed => TaskStatus::Completed,
            TurnStatus::Failed => TaskStatus::Failed,
            TurnStatus::Cancelled => TaskStatus::Cancelled,
        }
    }
}

/// Why a turn failed: a stable machine-readable code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TurnError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Turn {
    #[serde(rename = "turn_id")]
    pub id: TurnId,
    pub task_id: TaskId,
    pub status: TurnStatus,
    pub error: Option<TurnError>,
    /// 1 for the first play; more when the turn was retried after its instance died.
    pub attempt: u32,
    /// The metadata of the request that started this turn.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Metadata,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// What the model reported using, when the agent's runner reports it.
    pub usage: Option<Usage>,
    /// With `requires_action`: when unanswered tool calls fail the turn.
    pub respond_by: Option<DateTime<Utc>>,
}

/// Tokens a model reported for a turn (the last report of the turn's last attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: TaskId,
    pub agent_id: AgentId,
    pub metadata: Metadata,
    /// The content of the message that started the latest turn.
    pub input: Content,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A task with what its status is derived from.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    pub task: Task,
    pub latest_turn: Turn,
    pub latest_agent_message: Option<Message>,
    /// How many messages wait in the task's queue (queued or steering).
    pub queued: u32,
}

impl TaskView {
    /// The task's status: that of its latest turn. At most one turn per task runs, and
    /// it is always the latest, so "the active turn, else the last outcome" is this.
    pub fn status(&self) -> TaskStatus {
        self.latest_turn.status.into()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Message {
    #[serde(rename = "message_id")]
    pub id: MessageId,
    pub task_id: TaskId,
    pub turn_id: TurnId,
    pub role: Role,
    pub content: Content,
    pub streaming_status: Option<StreamingStatus>,
    pub created_at: DateTime<Utc>,
    /// What its sender attached to it (`{}` if nothing; an agent's messages have none).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub metadata: Metadata,
}

/// An attachment's bytes, as the download answers them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub file_id: i64,
    pub task_id: TaskId,
    pub filename: String,
    pub media_type: String,
    pub data: Vec<u8>,
}

/// A message as a client or a runner submits it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    pub role: Role,
    pub content: Content,
    /// The message's own metadata, stored and shown with it.
    pub metadata: Metadata,
}

/// An instance's hold on a running turn: only the holder plays it, records its output
/// and ends it normally. The holder renews it while the turn runs; once it expires,
/// any instance may end or retry the turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: String,
    pub expires_at: DateTime<Utc>,
}

/// The right to write a running turn: the instance holding its lease and the attempt
/// it plays. Every write of a playing turn checks both (a fencing token), so a play
/// that was superseded — taken over by another instance, or by a later attempt — can
/// never write into the turn again, even from the instance that holds the lease.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder {
    pub owner: String,
    pub attempt: u32,
}

/// An `Idempotency-Key` as stored with the turn it started: the key, the hash of the
/// request that used it first, and when it may be forgotten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub key: String,
    pub request_hash: String,
    pub expires_at: DateTime<Utc>,
}

/// Everything needed to create a task with its first message and first turn.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub agent_id: AgentId,
    pub message: NewMessage,
    pub metadata: Metadata,
    pub now: DateTime<Utc>,
    /// The lease the new turn starts under.
    pub lease: Lease,
    pub idempotency: Option<IdempotencyRecord>,
    /// Where the turn's end is delivered (else the agent's default webhook, if any).
    pub webhook: Option<WebhookEndpoint>,
    /// At most this many running turns for the agent, this one included.
    pub max_running_per_agent: Option<u32>,
    /// An A2A push config stored with the task, so its first turn's end is pushed.
    pub push: Option<NewPush>,
}

/// Everything needed to append a message and claim the task for its next turn.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAppend {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub message: NewMessage,
    pub metadata: Metadata,
    pub now: DateTime<Utc>,
    pub lease: Lease,
    pub idempotency: Option<IdempotencyRecord>,
    pub webhook: Option<WebhookEndpoint>,
    pub max_running_per_agent: Option<u32>,
    /// An A2A push config stored (or replaced) with the message.
    pub push: Option<NewPush>,
    /// What to do if a turn of the task runs (`steer` only if its runner takes
    /// messages mid-turn: the service decides).
    pub on_busy: OnBusy,
    /// At most this many messages wait in one task's queue.
    pub max_queued: u32,
}

/// What a claim did: started a turn, or found that the request's idempotency key had
/// already started one and returned that first answer unchanged.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    Started(Accepted),
    Replayed(Accepted),
}

impl Claim {
    pub fn accepted(&self) -> &Accepted {
        match self {
            Claim::Started(accepted) | Claim::Replayed(accepted) => accepted,
        }
    }
}

/// What a turn is played from: its task, the metadata of the request that started it,
/// and the task's history in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnHistory {
    pub task: Task,
    pub metadata: Metadata,
    pub history: Vec<Message>,
    /// The files attached to the task's messages, with their bytes, by file id.
    pub files: Vec<StoredFile>,
}

/// The answer to an accepted message: the turn it started. Stored as JSON with an
/// idempotency key, so a replay answers exactly what the first request was told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub task_id: TaskId,
    pub agent_id: AgentId,
    /// The turn the message started — or, for a tool answer that leaves other tool
    /// calls unanswered, the turn still waiting for them; for a steering message, the
    /// running turn it waits to be taken by; none for a queued message.
    pub turn_id: Option<TurnId>,
    pub accepted_at: DateTime<Utc>,
    pub metadata: Metadata,
    /// What the message is doing. (Records kept from before this field answer
    /// `running`, which is what they were.)
    #[serde(default = "running")]
    pub status: AcceptedStatus,
    /// The task's last event before this request's turn: its events follow it on the
    /// stream (`?after=`). (Records kept from before this field have none.)
    #[serde(default)]
    pub stream_after: Option<i64>,
    /// A queued or steering message: its id and, while queued, its place (1: next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<QueuedRef>,
    /// With `interrupt`: the turn this message cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<TurnId>,
}

/// A message's place in its task's queue, as the 202 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRef {
    pub id: QueuedMessageId,
    /// 1 for the next to start; none for a steering message.
    pub position: Option<u32>,
}

fn running() -> AcceptedStatus {
    AcceptedStatus::Running
}

/// A message sent to a busy task, waiting or done waiting.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedMessage {
    pub id: QueuedMessageId,
    pub task_id: TaskId,
    pub mode: QueueMode,
    pub status: QueuedStatus,
    /// While queued: 1 for the next to start.
    pub position: Option<u32>,
    /// The message as it will be (or was) stored: attachments by file id.
    pub message: NewMessage,
    /// The metadata of the request that sent it (its turn's).
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
    /// Once started or delivered: the turn, and the message it became in the history.
    pub turn_id: Option<TurnId>,
    pub message_id: Option<MessageId>,
    /// When it started, was delivered or was cancelled.
    pub ended_at: Option<DateTime<Utc>>,
}

/// What cancelling a queued message found.
#[derive(Debug, Clone, PartialEq)]
pub enum QueueCancel {
    /// There is no such message in the agent's task.
    NotFound,
    /// It waited, and is cancelled now — or had been cancelled before.
    Cancelled(QueuedMessage),
    /// It had started its turn, or was delivered, already.
    TooLate(QueuedMessage),
}

/// What ending a turn did besides: the next queued message's turn it started, to be
/// played by whoever ended the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub next: Option<StartedTurn>,
}

/// A turn that was claimed and committed, ready to be played: the attempt is the
/// play's fencing token, checked by every write of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartedTurn {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub turn_id: TurnId,
    pub attempt: u32,
}

/// The running turn that made a task busy, so a client can follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveTurn {
    pub turn_id: TurnId,
    pub started_at: DateTime<Utc>,
}

/// How a turn ended, with what it produced.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnOutcome {
    Completed,
    Failed(TurnError),
    Cancelled,
    /// The agent asked the client to run tools; answers are due by `respond_by`.
    RequiresAction {
        respond_by: DateTime<Utc>,
    },
}

impl TurnOutcome {
    pub fn status(&self) -> TurnStatus {
        match self {
            TurnOutcome::Completed => TurnStatus::Completed,
            TurnOutcome::Failed(_) => TurnStatus::Failed,
            TurnOutcome::Cancelled => TurnStatus::Cancelled,
            TurnOutcome::RequiresAction { .. } => TurnStatus::RequiresAction,
        }
    }

    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        TurnOutcome::Failed(TurnError {
            code: code.to_owned(),
            message: message.into(),
        })
    }
}

/// Who may end a running turn, checked in the transaction that ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseGuard {
    /// Whoever asks (a client's cancel): a running turn, or one waiting for tool
    /// answers.
    Anyone,
    /// Only the lease's holder playing this attempt (the executor playing the turn):
    /// a play that lost the turn to a sweep can never end it a second time.
    Holder(Holder),
    /// Only if the lease expired at or before this time (a sweep).
    ExpiredBy(DateTime<Utc>),
    /// Only a turn waiting for tool answers that were due at or before this time.
    AnswersDueBy(DateTime<Utc>),
}

/// The end of a turn as it is recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct FinishTurn {
    pub task_id: TaskId,
    pub turn_id: TurnId,
    pub outcome: TurnOutcome,
    /// Output the play has not recorded yet — the text and messages of its last
    /// moments — stored with the end in the same transaction, so a quick turn is
    /// recorded and ended in one write.
    pub output: Vec<OutputOp>,
    /// What the runner reported using.
    pub usage: Option<Usage>,
    pub guard: LeaseGuard,
    pub now: DateTime<Utc>,
    /// The lease under which the task's next queued message starts its turn, if one
    /// waits; `None` leaves the queue to a sweep (an instance that is stopping).
    pub next: Option<Lease>,
}

/// A running turn whose lease expired: a sweep ends it or plays it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredTurn {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub turn_id: TurnId,
    pub attempt: u32,
    /// The instance that held it (`None` if it was released on purpose).
    pub owner: Option<String>,
}

/// Taking over expired turns to play them again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakeOver {
    pub turns: Vec<TurnId>,
    /// Only those whose lease expired at or before this time.
    pub expired_by: DateTime<Utc>,
    pub lease: Lease,
    pub now: DateTime<Utc>,
}

/// A request to start a task, or to append to one: the target agent, the message, and
/// the metadata to pass through.
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitMessage {
    pub agent_id: AgentId,
    pub message: NewMessage,
    pub metadata: Metadata,
    /// Where to deliver the end of the turn (else the agent's default webhook).
    pub webhook: Option<WebhookTarget>,
    /// What to do if the task is busy (else the agent's `policy.on_busy`).
    pub on_busy: Option<OnBusy>,
    /// An A2A push config to store with the message, for the task's turns to come.
    pub push: Option<PushRequest>,
}

/// Where a turn's end is delivered, as a request or an agent names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookTarget {
    /// `https://…` (plain `http` only where the server allows it), no credentials, and
    /// not an internal address.
    #[cfg_attr(
        feature = "openapi",
        schema(format = "uri", example = "https://example.com/hooks/baton")
    )]
    pub url: String,
    /// A `whsec_…` secret; absent, the agent's default webhook secret or the server's
    /// signing secret is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^whsec_[A-Za-z0-9+/]+={0,2}$"))]
    pub secret: Option<String>,
}

/// A destination with the secrets deliveries are signed with (several while a secret
/// is rotated: each gives one signature).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub url: String,
    pub secrets: Vec<String>,
}

impl std::fmt::Debug for WebhookEndpoint {
    // Secrets never reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookEndpoint")
            .field("url", &self.url)
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .finish()
    }
}

impl WebhookEndpoint {
    /// The secrets as stored: one column, separated by spaces.
    pub fn secrets_column(&self) -> String {
        self.secrets.join(" ")
    }

    pub fn from_columns(url: String, secrets: &str) -> Self {
        WebhookEndpoint {
            url,
            secrets: secrets.split_whitespace().map(str::to_owned).collect(),
        }
    }
}

/// What an agent's A2A Agent Card says of it beyond its name: a description and its
/// skills (the agent's `card`, set by the operator). Without one, the card describes
/// the agent by its runner and offers one `conversation` skill.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CardConfig {
    /// Up to 2,000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Up to 32, each id once.
    #[serde(default)]
    pub skills: Vec<Skill>,
}

/// One skill of an agent, as A2A's `AgentSkill` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Skill {
    /// 1 to 64 characters of `A-Z a-z 0-9 _ . -`.
    pub id: String,
    /// 1 to 200 characters.
    pub name: String,
    /// 1 to 2,000 characters.
    pub description: String,
    /// Up to 16, each 1 to 64 characters.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Up to 16 example prompts, each up to 1,000 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

/// `Authorization: <scheme> <credentials>` on each push.
#[derive(Clone, PartialEq, Eq)]
pub struct PushAuth {
    pub scheme: String,
    pub credentials: Option<String>,
}

impl std::fmt::Debug for PushAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushAuth")
            .field("scheme", &self.scheme)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A push config as a client asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    /// The config's id; the task's id when not given (as A2A's SDK does).
    pub id: Option<String>,
    pub url: String,
    pub token: Option<String>,
    pub authentication: Option<PushAuth>,
}

/// A checked push request with the secrets its pushes are to be signed with, for a
/// task that may not exist yet (a claim stores it with the task it creates).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPush {
    pub request: PushRequest,
    /// The agent's webhook secrets, else the server's; empty: not signed.
    pub secrets: Vec<String>,
}
