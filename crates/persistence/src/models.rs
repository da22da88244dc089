//! Row types and their conversions to and from the domain's types.

use baton_domain::push::{PushAuth, PushConfig};
use baton_domain::webhooks::{AttemptView, DeliveryView, DueDelivery};
use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::error::corrupt;
use crate::schema::*;

pub(crate) fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

pub(crate) fn from_micros(micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros)
        .ok_or_else(|| corrupt(format!("timestamp {micros} out of range")))
}

pub(crate) fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::internal)
}

pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(
    column: &str,
    text: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|err| corrupt(format!("{column}: {err}")))
}

fn parse_enum<T: std::str::FromStr<Err = UnknownVariant>>(
    column: &str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse()
        .map_err(|err: UnknownVariant| corrupt(format!("{column}: {err}")))
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = agents)]
pub(crate) struct AgentRow {
    pub id: i64,
    pub name: String,
    pub runner_kind: String,
    pub runner_config: String,
    pub created_at: i64,
    pub on_interrupt: String,
    pub max_attempts: i64,
    pub turn_timeout_ms: i64,
    pub webhook_url: Option<String>,
    pub webhook_secrets: Option<String>,
    pub on_busy: String,
    pub card: Option<String>,
}

impl AgentRow {
    pub fn into_domain(self) -> Result<Agent, StoreError> {
        Ok(Agent {
            id: AgentId(self.id),
            name: self.name,
            runner: RunnerSpec {
                kind: self.runner_kind,
                config: parse_json("agents.runner_config", &self.runner_config)?,
            },
            policy: TurnPolicy {
                on_interrupt: parse_enum("agents.on_interrupt", &self.on_interrupt)?,
                max_attempts: count("agents.max_attempts", self.max_attempts)?,
                turn_timeout_ms: u64::try_from(self.turn_timeout_ms).map_err(|_| {
                    corrupt(format!("agents.turn_timeout_ms: {}", self.turn_timeout_ms))
                })?,
                on_busy: parse_enum("agents.on_busy", &self.on_busy)?,
            },
            webhook: endpoint(self.webhook_url, self.webhook_secrets),
            card: self
                .card
                .map(|card| parse_json("agents.card", &card))
                .transpose()?,
            created_at: from_micros(self.created_at)?,
        })
    }
}

/// A webhook stored as its URL and secrets columns.
pub(crate) fn endpoint(url: Option<String>, secrets: Option<String>) -> Option<WebhookEndpoint> {
    Some(WebhookEndpoint::from_columns(url?, &secrets?))
}

/// A small positive count stored as BIGINT.
pub(crate) fn count(column: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(format!("{column}: {value}")))
}

#[derive(Debug, Insertable)]
#[diesel(table_name = agents)]
pub(crate) struct NewAgentRow {
    pub name: String,
    pub runner_kind: String,
    pub runner_config: String,
    pub created_at: i64,
    pub on_interrupt: &'static str,
    pub max_attempts: i64,
    pub turn_timeout_ms: i64,
    pub webhook_url: Option<String>,
    pub webhook_secrets: Option<String>,
    pub on_busy: &'static str,
    pub card: Option<String>,
}

impl NewAgentRow {
    pub fn from_domain(new: &NewAgent) -> Result<Self, StoreError> {
        Ok(NewAgentRow {
            name: new.name.clone(),
            runner_kind: new.runner.kind.clone(),
            runner_config: json(&new.runner.config)?,
            created_at: micros(new.created_at),
            on_interrupt: new.policy.on_interrupt.as_str(),
            max_attempts: i64::from(new.policy.max_attempts),
            turn_timeout_ms: i64::try_from(new.policy.turn_timeout_ms)
                .map_err(StoreError::internal)?,
            webhook_url: new.webhook.as_ref().map(|w| w.url.clone()),
            webhook_secrets: new.webhook.as_ref().map(WebhookEndpoint::secrets_column),
            on_busy: new.policy.on_busy.as_str(),
            card: new.card.as_ref().map(json).transpose()?,
        })
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub(crate) struct ApiKeyRow {
    pub id: i64,
    pub agent_id: i64,
    pub prefix: String,
    pub secret_hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl ApiKeyRow {
    pub fn into_domain(self) -> Result<ApiKey, StoreError> {
        Ok(ApiKey {
            id: ApiKeyId(self.id),
            agent_id: AgentId(self.agent_id),
            prefix: self.prefix,
            secret_hash: self.secret_hash,
            created_at: from_micros(self.created_at)?,
            revoked_at: self.revoked_at.map(from_micros).transpose()?,
            last_used_at: self.last_used_at.map(from_micros).transpose()?,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = api_keys)]
pub(crate) struct NewApiKeyRow<'a> {
    pub agent_id: i64,
    pub prefix: &'a str,
    pub secret_hash: &'a str,
    pub created_at: i64,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = tasks)]
pub(crate) struct TaskRow {
    pub id: i64,
    pub agent_id: i64,
    pub metadata: String,
    pub input: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub queued: i64,
}

impl TaskRow {
    pub fn into_domain(self) -> Result<Task, StoreError> {
        Ok(Task {
            id: TaskId(self.id),
            agent_id: AgentId(self.agent_id),
            metadata: parse_json("tasks.metadata", &self.metadata)?,
            input: parse_json("tasks.input", &self.input)?,
            created_at: from_micros(self.created_at)?,
            updated_at: from_micros(self.updated_at)?,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = tasks)]
pub(crate) struct NewTaskRow {
    pub agent_id: i64,
    pub metadata: String,
    pub input: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_seq: i64,
}

impl NewTaskRow {
    /// The row as it is stored under `id`, its queue empty.
    pub fn stored(&self, id: i64) -> TaskRow {
        TaskRow {
            id,
            agent_id: self.agent_id,
            metadata: self.metadata.clone(),
            input: self.input.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            queued: 0,
        }
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = turns)]
pub(crate) struct TurnRow {
    pub id: i64,
    pub task_id: i64,
    pub status: String,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub metadata: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub attempt: i64,
    pub usage: Option<String>,
    pub respond_by: Option<i64>,
}

impl TurnRow {
    pub fn into_domain(self) -> Result<Turn, StoreError> {
        let error = match (self.error_code, self.error_message) {
            (Some(code), message) => Some(TurnError {
                code,
                message: message.unwrap_or_default(),
            }),
            (None, _) => None,
        };
        Ok(Turn {
            id: TurnId(self.id),
            task_id: TaskId(self.task_id),
            status: parse_enum("turns.status", &self.status)?,
            error,
            attempt: count("turns.attempt", self.attempt)?,
            metadata: parse_json("turns.metadata", &self.metadata)?,
            started_at: from_micros(self.started_at)?,
            ended_at: self.ended_at.map(from_micros).transpose()?,
            usage: self
                .usage
                .as_deref()
                .map(|raw| parse_json("turns.usage", raw))
                .transpose()?,
            respond_by: self.respond_by.map(from_micros).transpose()?,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = turns)]
pub(crate) struct NewTurnRow {
    pub task_id: i64,
    pub status: &'static str,
    pub metadata: String,
    pub started_at: i64,
    pub lease_owner: String,
    pub lease_expires_at: i64,
    pub webhook_url: Option<String>,
    pub webhook_secrets: Option<String>,
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
pub(crate) struct DeliveryRow {
    pub id: i64,
    pub webhook_id: String,
    pub task_id: i64,
    pub turn_id: i64,
    pub event_type: String,
    pub url: String,
    pub secrets: String,
    pub payload: String,
    pub status: String,
    pub attempts: i64,
    pub round_start: i64,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub headers: Option<String>,
}

impl DeliveryRow {
    pub fn into_due(self) -> Result<DueDelivery, StoreError> {
        Ok(DueDelivery {
            id: self.id,
            webhook_id: self.webhook_id,
            endpoint: WebhookEndpoint::from_columns(self.url, &self.secrets),
            payload: self.payload,
            headers: match self.headers {
                None => Vec::new(),
                Some(json) => serde_json::from_str(&json)
                    .map_err(|err| corrupt(format!("webhook_deliveries.headers: {err}")))?,
            },
            failed_in_round: count(
                "webhook_deliveries.attempts",
                self.attempts - self.round_start,
            )?,
        })
    }

    pub fn into_view(self, attempts: Vec<AttemptView>) -> Result<DeliveryView, StoreError> {
        Ok(DeliveryView {
            delivery_id: self.id,
            webhook_id: self.webhook_id,
            task_id: self.task_id,
            turn_id: self.turn_id,
            event_type: self.event_type,
            url: self.url,
            status: self.status,
            next_attempt_at: self.next_attempt_at.map(from_micros).transpose()?,
            created_at: from_micros(self.created_at)?,
            attempts,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = webhook_deliveries)]
pub(crate) struct NewDeliveryRow {
    pub webhook_id: String,
    pub task_id: i64,
    pub turn_id: i64,
    pub event_type: String,
    pub url: String,
    pub secrets: String,
    pub payload: String,
    pub status: &'static str,
    pub next_attempt_at: Option<i64>,
    pub created_at: i64,
    pub headers: Option<String>,
}

#[derive(Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = webhook_attempts)]
pub(crate) struct AttemptRow {
    pub delivery_id: i64,
    pub attempt: i64,
    pub started_at: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error: Option<String>,
}

impl AttemptRow {
    pub fn into_view(self) -> Result<AttemptView, StoreError> {
        Ok(AttemptView {
            attempt: count("webhook_attempts.attempt", self.attempt)?,
            started_at: from_micros(self.started_at)?,
            status_code: self
                .status_code
                .map(|code| u16::try_from(code).map_err(|_| corrupt(format!("status code {code}"))))
                .transpose()?,
            latency_ms: u64::try_from(self.latency_ms).unwrap_or(0),
            error: self.error,
        })
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = idempotency_keys)]
pub(crate) struct IdempotencyRow {
    pub request_hash: String,
    pub response: String,
}

impl IdempotencyRow {
    pub fn into_accepted(self) -> Result<Accepted, StoreError> {
        parse_json("idempotency_keys.response", &self.response)
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = idempotency_keys)]
pub(crate) struct NewIdempotencyRow {
    pub agent_id: i64,
    pub idempotency_key: String,
    pub request_hash: String,
    pub turn_id: Option<i64>,
    pub response: String,
    pub created_at: i64,
    pub expires_at: i64,
}

impl NewIdempotencyRow {
    pub fn new(record: &IdempotencyRecord, accepted: &Accepted) -> Result<Self, StoreError> {
        Ok(NewIdempotencyRow {
            agent_id: accepted.agent_id.0,
            idempotency_key: record.key.clone(),
            request_hash: record.request_hash.clone(),
            turn_id: accepted.turn_id.map(|turn| turn.0),
            response: json(accepted)?,
            created_at: micros(accepted.accepted_at),
            expires_at: micros(record.expires_at),
        })
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = messages)]
pub(crate) struct MessageRow {
    pub id: i64,
    pub task_id: i64,
    pub turn_id: i64,
    pub role: String,
    pub content: String,
    pub streaming_status: Option<String>,
    pub created_at: i64,
    pub metadata: String,
}

impl MessageRow {
    pub fn into_domain(self) -> Result<Message, StoreError> {
        Ok(Message {
            id: MessageId(self.id),
            task_id: TaskId(self.task_id),
            turn_id: TurnId(self.turn_id),
            role: parse_enum("messages.role", &self.role)?,
            content: parse_json("messages.content", &self.content)?,
            streaming_status: self
                .streaming_status
                .as_deref()
                .map(|s| parse_enum("messages.streaming_status", s))
                .transpose()?,
            created_at: from_micros(self.created_at)?,
            metadata: parse_json("messages.metadata", &self.metadata)?,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = messages)]
pub(crate) struct NewMessageRow {
    pub task_id: i64,
    pub turn_id: i64,
    pub role: &'static str,
    pub content: String,
    pub streaming_status: Option<&'static str>,
    pub created_at: i64,
    pub metadata: String,
}

/// A message to insert: who wrote it, what, and with what metadata.
pub(crate) struct MessageParts<'a> {
    pub role: Role,
    pub content: &'a Content,
    pub metadata: &'a Metadata,
}

impl<'a> MessageParts<'a> {
    /// A message as a client sent it.
    pub fn of(message: &'a NewMessage) -> Self {
        MessageParts {
            role: message.role,
            content: &message.content,
            metadata: &message.metadata,
        }
    }

    /// Output of the agent: no metadata of its own.
    pub fn assistant(content: &'a Content) -> Self {
        static NONE: std::sync::LazyLock<Metadata> = std::sync::LazyLock::new(Metadata::new);
        MessageParts {
            role: Role::Assistant,
            content,
            metadata: &NONE,
        }
    }
}

impl NewMessageRow {
    pub fn new(
        task: TaskId,
        turn: TurnId,
        parts: MessageParts<'_>,
        streaming: Option<StreamingStatus>,
        at: DateTime<Utc>,
    ) -> Result<Self, StoreError> {
        Ok(NewMessageRow {
            task_id: task.0,
            turn_id: turn.0,
            role: parts.role.as_str(),
            content: json(parts.content)?,
            streaming_status: streaming.map(StreamingStatus::as_str),
            created_at: micros(at),
            metadata: json(parts.metadata)?,
        })
    }

    /// The row as it is stored under `id`.
    pub fn stored(&self, id: i64) -> MessageRow {
        MessageRow {
            id,
            task_id: self.task_id,
            turn_id: self.turn_id,
            role: self.role.to_owned(),
            content: self.content.clone(),
            streaming_status: self.streaming_status.map(str::to_owned),
            created_at: self.created_at,
            metadata: self.metadata.clone(),
        }
    }
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = crate::schema::events)]
pub(crate) struct EventRow {
    pub task_id: i64,
    pub seq: i64,
    pub turn_id: i64,
    pub kind: String,
    pub data: String,
    pub created_at: i64,
}

impl EventRow {
    pub fn into_domain(self) -> Result<TaskEvent, StoreError> {
        Ok(TaskEvent {
            task_id: TaskId(self.task_id),
            seq: self.seq,
            turn_id: TurnId(self.turn_id),
            kind: parse_enum("events.kind", &self.kind)?,
            data: parse_json("events.data", &self.data)?,
            created_at: from_micros(self.created_at)?,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = crate::schema::events)]
pub(crate) struct NewEventRow {
    pub task_id: i64,
    pub seq: i64,
    pub turn_id: i64,
    pub kind: &'static str,
    pub data: String,
    pub created_at: i64,
}

/// An event about to be appended: its `seq` is handed out when it is written.
#[derive(Debug)]
pub(crate) struct EventDraft {
    pub turn_id: TurnId,
    pub kind: EventKind,
    pub data: serde_json::Value,
}

pub(crate) fn metadata_json(metadata: &Metadata) -> Result<String, StoreError> {
    json(metadata)
}

pub(crate) fn content_json(content: &Content) -> Result<String, StoreError> {
    json(content)
}

#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = crate::schema::queued_messages)]
pub(crate) struct QueuedRow {
    pub id: i64,
    pub task_id: i64,
    pub mode: String,
    pub status: String,
    pub content: String,
    pub message_metadata: String,
    pub metadata: String,
    pub webhook_url: Option<String>,
    pub webhook_secrets: Option<String>,
    pub created_at: i64,
    pub turn_id: Option<i64>,
    pub message_id: Option<i64>,
    pub ended_at: Option<i64>,
}

impl QueuedRow {
    /// The message as a turn stores it (its attachments already kept as files).
    pub fn message(&self) -> Result<NewMessage, StoreError> {
        Ok(NewMessage {
            role: Role::User,
            content: parse_json("queued_messages.content", &self.content)?,
            metadata: parse_json("queued_messages.message_metadata", &self.message_metadata)?,
        })
    }

    pub fn into_domain(self, position: Option<u32>) -> Result<QueuedMessage, StoreError> {
        Ok(QueuedMessage {
            id: QueuedMessageId(self.id),
            task_id: TaskId(self.task_id),
            mode: parse_enum("queued_messages.mode", &self.mode)?,
            status: parse_enum("queued_messages.status", &self.status)?,
            position,
            message: self.message()?,
            metadata: parse_json("queued_messages.metadata", &self.metadata)?,
            created_at: from_micros(self.created_at)?,
            turn_id: self.turn_id.map(TurnId),
            message_id: self.message_id.map(MessageId),
            ended_at: self.ended_at.map(from_micros).transpose()?,
        })
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = crate::schema::queued_messages)]
pub(crate) struct NewQueuedRow {
    pub task_id: i64,
    pub mode: &'static str,
    pub status: &'static str,
    pub steer_turn_id: Option<i64>,
    pub content: String,
    pub message_metadata: String,
    pub metadata: String,
    pub webhook_url: Option<String>,
    pub webhook_secrets: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = push_configs)]
pub(crate) struct PushConfigRow {
    pub task_id: i64,
    pub config_id: String,
    pub url: String,
    pub token: Option<String>,
    pub auth_scheme: Option<String>,
    pub auth_credentials: Option<String>,
    pub secrets: String,
    pub created_at: i64,
}

impl PushConfigRow {
    pub fn new(config: &PushConfig) -> Self {
        PushConfigRow {
            task_id: config.task_id.0,
            config_id: config.id.clone(),
            url: config.url.clone(),
            token: config.token.clone(),
            auth_scheme: config.authentication.as_ref().map(|a| a.scheme.clone()),
            auth_credentials: config
                .authentication
                .as_ref()
                .and_then(|a| a.credentials.clone()),
            secrets: config.secrets.join(" "),
            created_at: micros(config.created_at),
        }
    }

    pub fn into_domain(self) -> Result<PushConfig, StoreError> {
        Ok(PushConfig {
            id: self.config_id,
            task_id: TaskId(self.task_id),
            url: self.url,
            token: self.token,
            authentication: self.auth_scheme.map(|scheme| PushAuth {
                scheme,
                credentials: self.auth_credentials,
            }),
            secrets: self.secrets.split_whitespace().map(str::to_owned).collect(),
            created_at: from_micros(self.created_at)?,
        })
    }
}
