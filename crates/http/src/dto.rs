//! The JSON shapes of the V1 API.

use baton_domain::{
    Accepted, AcceptedStatus, Content, Message, Metadata, NewMessage, OnBusy, QueueMode,
    QueuedMessage, QueuedStatus, Role, TaskStatus, TaskView, Turn, WebhookTarget,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::encode_cursor;

/// Body of `POST /v1/chat/tasks` and `POST /v1/chat/tasks/{task_id}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
// The example spells the content out: beside the discriminated `Content`, Redocly's
// linter does not accept the plain-string shorthand as an example (it is valid input).
#[schema(example = json!({"agent_id": 1, "message": {"role": "user", "content": {"type": "text", "content": "Hello"}}, "metadata": {"ticket": "T-1"}}))]
pub struct SubmitBody {
    /// The agent of the key: a key can only talk to its own agent.
    pub agent_id: i64,
    pub message: MessageBody,
    /// Any JSON object (without NUL characters), returned unchanged.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
    /// Where to deliver the end of the turn: `{url, secret?}`.
    #[serde(default)]
    pub webhook: Option<WebhookTarget>,
    /// What the message does if a turn of the task runs: `reject` (`409 task_busy`),
    /// `enqueue`, `interrupt` or `steer`. Absent: the agent's `policy.on_busy`
    /// (`reject` unless set). A new task is never busy.
    #[serde(default)]
    pub on_busy: Option<OnBusy>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageBody {
    /// `user` when absent; `tool` to answer a tool call of a `requires_action` task.
    #[serde(default = "user_role")]
    pub role: Role,
    /// A string (plain text), or typed content: `text` or `data` from a user, a
    /// `tool_response` from a tool.
    #[serde(deserialize_with = "Content::deserialize_lenient")]
    #[schema(schema_with = content_input)]
    pub content: Content,
    /// Any JSON object (without NUL characters), stored with the message and shown
    /// with it in the history, events and webhooks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Metadata>,
}

/// What a client may send as content: a plain string is shorthand for plain text.
fn content_input() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{OneOfBuilder, Schema, Type};
    use utoipa::openapi::{ObjectBuilder, Ref};
    let one_of = OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("Plain text.")),
        )
        .item(Ref::from_schema_name(<Content as utoipa::ToSchema>::name()))
        .build();
    Schema::OneOf(one_of)
}

fn user_role() -> Role {
    Role::User
}

impl SubmitBody {
    pub fn into_submit(self) -> baton_domain::SubmitMessage {
        baton_domain::SubmitMessage {
            push: None,
            agent_id: baton_domain::AgentId(self.agent_id),
            message: NewMessage {
                role: self.message.role,
                content: self.message.content,
                metadata: self.message.metadata.unwrap_or_default(),
            },
            metadata: self.metadata.unwrap_or_default(),
            webhook: self.webhook,
            on_busy: self.on_busy,
        }
    }
}

/// The 202 answer to an accepted message: `running` (its turn runs),
/// `requires_action` for a tool answer while other tool calls still wait (`turn_id` is
/// then the waiting turn), `queued` (it waits in the task's queue: `turn_id` is null
/// until its turn starts) or `steering` (it waits to be taken by the running turn
/// `turn_id`).
#[derive(Debug, Serialize, ToSchema)]
pub struct AcceptedBody {
    pub task_id: i64,
    pub agent_id: i64,
    pub turn_id: Option<i64>,
    pub status: AcceptedStatus,
    /// A queued or steering message's id: read it, or cancel it while it waits, at
    /// `/v1/chat/tasks/{task_id}/queue/{queued_message_id}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued_message_id: Option<i64>,
    /// A queued message's place in the queue when it was accepted: 1 is next.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// With `on_busy: interrupt`: the turn this message cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_turn_id: Option<i64>,
    pub accepted_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    /// Where to follow the turn: the task's event stream from just before this turn's
    /// first event (add `&until=final` to close it at the turn's end).
    #[schema(example = "/v1/chat/tasks/1/stream?after=0")]
    pub stream_url: String,
}

impl From<Accepted> for AcceptedBody {
    fn from(a: Accepted) -> Self {
        let stream = format!("/v1/chat/tasks/{}/stream", a.task_id);
        AcceptedBody {
            task_id: a.task_id.0,
            agent_id: a.agent_id.0,
            turn_id: a.turn_id.map(|turn| turn.0),
            status: a.status,
            queued_message_id: a.queued.map(|queued| queued.id.0),
            position: a.queued.and_then(|queued| queued.position),
            interrupted_turn_id: a.interrupted.map(|turn| turn.0),
            accepted_at: a.accepted_at,
            metadata: a.metadata,
            stream_url: match a.stream_after {
                Some(after) => format!("{stream}?after={after}"),
                None => stream,
            },
        }
    }
}

/// A task, with the latest turn and the latest agent message it is derived from.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskBody {
    pub task_id: i64,
    pub agent_id: i64,
    /// The status of the latest turn.
    pub status: TaskStatus,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    pub input: Content,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub latest_turn: Turn,
    pub latest_message: Option<Message>,
    /// How many messages wait in the task's queue (`GET …/queue` lists them).
    pub queued: u32,
}

impl From<TaskView> for TaskBody {
    fn from(v: TaskView) -> Self {
        TaskBody {
            status: v.status(),
            task_id: v.task.id.0,
            agent_id: v.task.agent_id.0,
            metadata: v.task.metadata,
            input: v.task.input,
            created_at: v.task.created_at,
            updated_at: v.task.updated_at,
            latest_turn: v.latest_turn,
            latest_message: v.latest_agent_message,
            queued: v.queued,
        }
    }
}

/// One page of a listing.
#[derive(Debug, Serialize, ToSchema)]
pub struct PageBody<T> {
    pub data: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

impl<T> PageBody<T> {
    pub fn new<U: Into<T>>(page: baton_domain::Page<U>) -> Self {
        PageBody {
            data: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next_after.map(encode_cursor),
        }
    }
}

/// A page of a task's history, and where its event stream continues it.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryBody {
    pub data: Vec<Message>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
    /// The task's last event as of this page: the page shows everything up to it (the
    /// text of a message being streamed included) and nothing after. Open the stream
    /// with `?after=` this (from the last page) to follow on with nothing missing or
    /// repeated.
    #[schema(example = 12)]
    pub last_event_id: i64,
}

impl From<baton_domain::History<Message>> for HistoryBody {
    fn from(history: baton_domain::History<Message>) -> Self {
        let page = PageBody::<Message>::new(history.page);
        HistoryBody {
            data: page.data,
            next_cursor: page.next_cursor,
            last_event_id: history.last_event_id,
        }
    }
}

/// A token that opens one task's event stream without a header, for a browser's
/// `EventSource`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StreamTokenBody {
    /// Put it in the stream's URL as `?token=`; it opens this task's stream only.
    #[schema(example = "bts1.1.Ab3dE6gH.1.1796000000.x5Qm0lN2k1Zr8b3Fv7Wc9Ty4Hj6Lp0Sd2Ag5Ek8Oq1U")]
    pub token: String,
    /// After this the token opens nothing (a stream open then goes on).
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The stream's path with the token: what to give `new EventSource(...)`.
    #[schema(
        example = "/v1/chat/tasks/1/stream?token=bts1.1.Ab3dE6gH.1.1796000000.x5Qm0lN2k1Zr8b3Fv7Wc9Ty4Hj6Lp0Sd2Ag5Ek8Oq1U"
    )]
    pub stream_url: String,
}

/// A listing that is never paged (it is short by nature).
#[derive(Debug, Serialize, ToSchema)]
pub struct DataBody<T> {
    pub data: Vec<T>,
}

/// The answer of a probe.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    pub status: &'static str,
}

/// Body of `GET /v1/chat/agent`: the agent a key belongs to, as its clients may see it
/// (its runner's configuration and webhook stay the operator's).
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"agent_id": 1, "name": "support", "runner_kind": "openai", "on_busy": "reject", "created_at": "2026-12-05T10:00:00Z"}))]
pub struct KeyAgentBody {
    /// What `agent_id` must be in this key's requests.
    pub agent_id: i64,
    pub name: String,
    /// How its turns are played: `echo`, `openai`, `http`, or a kind registered by an
    /// embedding program.
    pub runner_kind: String,
    /// What a message sent while one of its turns runs does, when the request does not
    /// say (`on_busy`).
    pub on_busy: OnBusy,
    pub created_at: DateTime<Utc>,
}

impl From<baton_domain::Agent> for KeyAgentBody {
    fn from(agent: baton_domain::Agent) -> Self {
        KeyAgentBody {
            agent_id: agent.id.0,
            name: agent.name,
            runner_kind: agent.runner.kind,
            on_busy: agent.policy.on_busy,
            created_at: agent.created_at,
        }
    }
}

/// A message sent while its task was busy (`on_busy: enqueue` or `steer`), waiting
/// or done waiting.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedMessageBody {
    pub queued_message_id: i64,
    pub task_id: i64,
    /// How it was sent.
    pub mode: QueueMode,
    /// `queued`, `steering`, then `started`, `delivered` or `cancelled`.
    pub status: QueuedStatus,
    /// While queued: its place, 1 for the next to start.
    pub position: Option<u32>,
    /// The message as it will be stored (attachments by `file_id`).
    pub message: QueuedMessageContent,
    /// The metadata of the request that sent it: its turn's.
    #[schema(value_type = Object)]
    pub metadata: Metadata,
    pub created_at: DateTime<Utc>,
    /// `started`: the turn it started; `delivered`: the turn it went into.
    pub turn_id: Option<i64>,
    /// The message it became in the task's history.
    pub message_id: Option<i64>,
    /// When it started, was delivered or was cancelled.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A queued message's message.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedMessageContent {
    pub role: Role,
    pub content: Content,
    #[schema(value_type = Object)]
    pub metadata: Metadata,
}

impl From<QueuedMessage> for QueuedMessageBody {
    fn from(q: QueuedMessage) -> Self {
        QueuedMessageBody {
            queued_message_id: q.id.0,
            task_id: q.task_id.0,
            mode: q.mode,
            status: q.status,
            position: q.position,
            message: QueuedMessageContent {
                role: q.message.role,
                content: q.message.content,
                metadata: q.message.metadata,
            },
            metadata: q.metadata,
            created_at: q.created_at,
            turn_id: q.turn_id.map(|turn| turn.0),
            message_id: q.message_id.map(|message| message.0),
            ended_at: q.ended_at,
        }
    }
}

/// Body of a turn inbox request (signed by the agent service, Standard Webhooks).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InboxRequestBody {
    /// The attempt the agent plays (the turn request's `inbox.attempt`).
    pub attempt: u32,
    /// With nothing waiting, how long to wait for a message, in milliseconds (at most
    /// 60000; 0 or absent: answer at once).
    #[serde(default)]
    pub wait_ms: u64,
}

/// The messages delivered into the turn by this request, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct InboxBody {
    pub messages: Vec<Message>,
}
