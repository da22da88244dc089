//! baton's domain: the entities (agents, keys, tasks, turns, messages), the ports the
//! adapters implement, and the claim-and-spawn service with its turn executor.
//!
//! This crate names no web framework, database or HTTP client; adapters depend on it,
//! never the reverse.

pub mod a2a;
pub mod agent_cache;
pub mod content;
mod detached;
pub mod error;
pub mod events;
pub mod executor;
pub mod feed;
pub mod idempotency;
pub mod keys;
pub mod model;
pub mod notify;
pub mod page;
pub mod ports;
pub mod push;
pub mod runner;
pub mod service;
pub mod stream_tokens;
pub mod telemetry;
pub mod tools;
pub mod validate;
pub mod webhook_sender;
pub mod webhooks;

pub use agent_cache::{AGENT_CACHE_FRESHNESS, CachedAgents};
pub use content::{Content, TextFormat};
pub use error::{ClaimError, FieldError, ServiceError, StoreError};
pub use executor::{ExecutorConfig, ShutdownReport, SweepReport, TurnExecutor};
pub use feed::{Feed, SharedEvent, SharedPage};
pub use idempotency::IdempotencyConfig;
pub use model::*;
pub use notify::{AgentsChanged, AgentsChangedHook, LocalNotifier, TaskWatch, TurnEndHook};
pub use page::{History, Page, PageRequest};
pub use ports::{
    AgentStore, Clock, SystemClock, TaskNotifier, TaskStore, WebhookStore, WebhookTransport,
};
pub use runner::{RunnerError, RunnerRegistry, SinkClosed, TurnInput, TurnRunner, TurnSink};
pub use service::{
    AdminService, AgentChanges, AuthorizedAgent, CreatedKey, InboxTurn, Principal, SubmitLimits,
    TaskService, WebhookSettings,
};
pub use webhook_sender::{SenderConfig, WebhookSender};
pub use webhooks::{DestinationPolicy, WebhookEndpoint, WebhookTarget};
