//! The ports: what the domain needs from storage, notification and time. The turn
//! runner port lives in [`crate::runner`].
//!
//! Ports are coarse: one method is one atomic step of a use case, and the adapter owns
//! the transaction, so atomicity cannot leak upward.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{ClaimError, StoreError};
use crate::model::*;
use crate::page::{History, Page, PageRequest};
use crate::push::{PushConfig, PushPut};
use crate::webhooks::{AttemptResult, DeliveryView, DueDelivery};

/// Tasks, turns and messages.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait TaskStore: Send + Sync + 'static {
    /// Creates a task, its first message and its first (running) turn under the given
    /// lease in one transaction, and returns only after it is durably committed.
    ///
    /// With an idempotency record, in the same transaction: a live record of the same
    /// agent and key with the same request hash answers [`Claim::Replayed`] with the
    /// stored answer and stores nothing; with another hash,
    /// [`ClaimError::IdempotencyKeyReused`]; otherwise the record is stored with the
    /// new turn, so neither can exist without the other. Concurrent first uses of one
    /// key: exactly one starts a turn, the others replay it.
    async fn create_task(&self, new: NewTask) -> Result<Claim, ClaimError>;

    /// Stores the message and starts the task's next turn in one transaction, if the
    /// task has no running turn. Idempotency records as for `create_task`, checked
    /// before the task's state (a retry of an accepted append replays, never `busy`).
    ///
    /// MUST return [`ClaimError::TaskNotFound`] when the task does not exist or belongs
    /// to another agent; nothing is stored. When a turn runs, by `append.on_busy`:
    /// `reject`: [`ClaimError::TaskBusy`] naming it, nothing stored; `enqueue`: the
    /// message waits at the end of the task's queue (at most `max_queued` wait, else
    /// [`ClaimError::QueueFull`]); `interrupt`: the running turn ends `cancelled` as
    /// [`TaskStore::finish_turn`] would end it, and the message starts the next, in
    /// the same transaction; `steer`: the message waits to be taken by the running
    /// turn ([`TaskStore::take_steered`]). A turn waiting for tool answers takes only
    /// answers: another message is refused (`reject`), queued (`enqueue`, `steer`) or
    /// ends it (`interrupt`). Two concurrent calls for one idle task: exactly one
    /// starts a turn.
    async fn append_and_claim(&self, append: NewAppend) -> Result<Claim, ClaimError>;

    /// The messages steered into the turn that wait for it, now delivered: each stored
    /// in the history as part of the turn, with a `message_delivered` event, in one
    /// transaction. `None`, storing nothing, if the turn no longer runs at `attempt`
    /// (or is not of the agent's task).
    async fn take_steered(
        &self,
        agent: AgentId,
        task: TaskId,
        turn: TurnId,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Message>>, StoreError>;

    /// Whether messages steered into the turn wait to be taken (a read: a runner asks
    /// between its steps, and most turns have none).
    async fn has_steered(&self, turn: TurnId) -> Result<bool, StoreError>;

    /// The messages waiting in the task's queue (queued, then steering), in order;
    /// `None` if the agent does not own the task.
    async fn list_queue(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<QueuedMessage>>, StoreError>;

    /// One message sent to the agent's busy task, waiting or not.
    async fn get_queued(
        &self,
        agent: AgentId,
        task: TaskId,
        id: QueuedMessageId,
    ) -> Result<Option<QueuedMessage>, StoreError>;

    /// Cancels a waiting message: it will never start a turn or be delivered.
    async fn cancel_queued(
        &self,
        agent: AgentId,
        task: TaskId,
        id: QueuedMessageId,
        now: DateTime<Utc>,
    ) -> Result<QueueCancel, StoreError>;

    /// Starts, under `lease`, the next queued message of up to `limit` tasks that have
    /// queued messages and neither a running turn nor one waiting for tool answers (a
    /// queue whose turn ended where nothing could start the next: a stopping
    /// instance). Returns the turns started.
    async fn start_stalled_queues(
        &self,
        lease: Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StartedTurn>, StoreError>;

    /// The task with its latest turn and latest agent message, if the agent owns it.
    async fn get_task(&self, agent: AgentId, task: TaskId) -> Result<Option<TaskView>, StoreError>;

    /// The agent's tasks, newest first; with `status`, only those whose latest turn
    /// has it.
    async fn list_tasks(
        &self,
        agent: AgentId,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> Result<Page<TaskView>, StoreError>;

    /// The agent's tasks as A2A lists them: most recently updated first (ties: the
    /// newest first), up to `limit + 1` (the one more says another page exists),
    /// after `after` — the previous page's last task, by its `updated_at` and id.
    async fn list_tasks_by_update(
        &self,
        agent: AgentId,
        status: Option<TaskStatus>,
        limit: u32,
        after: Option<(DateTime<Utc>, TaskId)>,
    ) -> Result<Vec<TaskView>, StoreError>;

    /// A task's messages, oldest first, with the task's last event id as of the same
    /// read; `None` if the agent does not own the task.
    async fn list_messages(
        &self,
        agent: AgentId,
        task: TaskId,
        page: PageRequest,
    ) -> Result<Option<History<Message>>, StoreError>;

    /// Everything a runner needs to play a turn of the task: the task, the turn's
    /// request metadata and the task's full history in order; `None` if the task has
    /// no such turn.
    async fn load_turn_input(
        &self,
        task: TaskId,
        turn: TurnId,
    ) -> Result<Option<TurnHistory>, StoreError>;

    /// Records output of a running turn and appends its events (`text_delta`,
    /// `message`) in one transaction. Returns `false`, storing nothing, if the turn is
    /// no longer running or its lease is no longer held by `output.holder` playing that
    /// attempt: the runner's output is then discarded.
    async fn record_output(&self, output: RecordOutput) -> Result<bool, StoreError>;

    /// Ends a running turn in one transaction: closes its open streamed message, stores
    /// the given last messages, sets the outcome, ends the lease, appends the ending
    /// event (`final`, `error` or `cancelled`, with the turn's output), and — if the
    /// turn has a webhook, or else its agent a default one — writes the delivery of
    /// the turn's end to the webhook outbox ([`crate::webhooks::payload`]), due now. Returns
    /// `None`, storing nothing, if the turn was no longer running or the guard refused
    /// (so late output can never flip an ended turn, and a turn lost to a sweep is
    /// never ended twice).
    ///
    /// A turn that ends for good (not `requires_action`) hands its task's queue on in
    /// the same transaction: messages still steering into it are queued, and with
    /// `finish.next`, the first queued message starts its turn under that lease (its
    /// `turn_started` event after the ending one), returned in [`Ended::next`] for the
    /// caller to play.
    async fn finish_turn(&self, finish: FinishTurn) -> Result<Option<Ended>, StoreError>;

    /// Ends several turns as [`TaskStore::finish_turn`] would, in one transaction (a
    /// sweep ending many turns at once); returns, in order, what each did.
    async fn finish_turns(
        &self,
        finishes: Vec<FinishTurn>,
    ) -> Result<Vec<Option<Ended>>, StoreError>;

    /// Up to `limit` events of the task with `seq > after`, in order, and the oldest
    /// `seq` still kept; `None` if the agent does not own the task.
    async fn list_events(
        &self,
        agent: AgentId,
        task: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<Option<EventPage>, StoreError>;

    /// Deletes the task's events with `seq < before` (retention); returns how many.
    async fn prune_events(&self, task: TaskId, before: i64) -> Result<u64, StoreError>;

    /// Extends to `expires_at` the leases `owner` holds on these turns, each at the
    /// attempt given with it, if they still run; returns the turns renewed. A turn
    /// left out was ended or taken over, and its play must stop.
    async fn renew_leases(
        &self,
        owner: &str,
        turns: Vec<(TurnId, u32)>,
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<TurnId>, StoreError>;

    /// Gives up `owner`'s leases on these running turns at once (a stopping instance),
    /// so any sweep may end or retry them without waiting for expiry. Returns how many.
    async fn release_leases(
        &self,
        owner: &str,
        turns: Vec<TurnId>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Up to `limit` running turns whose lease expired at or before `cutoff` (or that
    /// have none), with ids above `after`, in id order: a sweep walks them all once,
    /// page by page, whatever it does to each.
    async fn expired_turns(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<TurnId>,
        limit: u32,
    ) -> Result<Vec<ExpiredTurn>, StoreError>;

    /// An attachment of one of the agent's tasks, with its bytes.
    async fn get_file(
        &self,
        agent: AgentId,
        task: TaskId,
        file: i64,
    ) -> Result<Option<StoredFile>, StoreError>;

    /// Up to `limit` turns waiting for tool answers that were due at or before `now`.
    async fn overdue_tool_calls(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TaskId, TurnId)>, StoreError>;

    /// Takes over running turns whose lease expired by `expired_by`, for another
    /// attempt each: the new lease, `attempt + 1`, the agent output of the interrupted
    /// attempt removed, and a `turn_started` event for the new attempt, all in one
    /// transaction. Returns the turns taken with their new attempt numbers; a turn
    /// that ended, or whose lease was renewed or taken meanwhile, is left out and
    /// nothing is stored for it.
    async fn take_over_turns(&self, take: TakeOver) -> Result<Vec<(TurnId, u32)>, StoreError>;

    /// Deletes idempotency records that expired at or before `now`; returns how many.
    async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Whether the store can serve: the database answers and its schema is the one
    /// this build expects (every migration applied). [`StoreError::Unavailable`] says
    /// why not.
    async fn check_ready(&self) -> Result<(), StoreError>;
}

/// The webhook outbox: deliveries written by `TaskStore::finish_turn`, sent by any
/// instance's sender.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WebhookStore: Send + Sync + 'static {
    /// Claims up to `limit` pending deliveries due at `now` and not claimed by a
    /// sender whose claim still runs, for this sender until `until`. Concurrent
    /// senders claim disjoint sets (`FOR UPDATE SKIP LOCKED` on PostgreSQL). A sender
    /// that dies leaves its claim to run out, and the delivery is sent again.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError>;

    /// Records an attempt and what becomes of the delivery, and releases the claim.
    /// `false` (nothing stored) if the delivery is no longer pending.
    async fn record_attempt(&self, attempt: AttemptResult) -> Result<bool, StoreError>;

    /// The task's deliveries with their attempts, oldest first; `None` if the agent
    /// does not own the task.
    async fn list_deliveries(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<DeliveryView>>, StoreError>;

    /// Makes a delivery due again now, starting a new round of the retry schedule
    /// (an operator's redelivery). `false` if there is no such delivery.
    async fn redeliver(&self, delivery: i64, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Stores an A2A push config for the agent's task, replacing the task's config of
    /// the same id.
    async fn put_push_config(
        &self,
        agent: AgentId,
        config: PushConfig,
    ) -> Result<PushPut, StoreError>;

    /// The task's push configs, oldest first; `None` if the agent does not own the
    /// task.
    async fn list_push_configs(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<PushConfig>>, StoreError>;

    /// Deletes a push config: `Some(true)` if it was there, `Some(false)` if not,
    /// `None` if the agent does not own the task.
    async fn delete_push_config(
        &self,
        agent: AgentId,
        task: TaskId,
        id: &str,
    ) -> Result<Option<bool>, StoreError>;
}

/// Sends a signed delivery over the network.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait WebhookTransport: Send + Sync + 'static {
    /// POSTs `body` with `headers` to `url`; the response's status, or why there was
    /// none (refused destination, connection error, timeout).
    async fn post(
        &self,
        url: &str,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Result<u16, String>;
}

/// Agents and their API keys.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait AgentStore: Send + Sync + 'static {
    async fn create_agent(&self, new: NewAgent) -> Result<Agent, StoreError>;
    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError>;
    async fn count_agents(&self) -> Result<u64, StoreError>;
    /// Agents, oldest first.
    async fn list_agents(&self, page: PageRequest) -> Result<Page<Agent>, StoreError>;
    /// Applies the changes; `None` if there is no such agent.
    async fn update_agent(
        &self,
        id: AgentId,
        update: AgentUpdate,
    ) -> Result<Option<Agent>, StoreError>;
    /// The agent's keys, revoked ones included, oldest first.
    async fn list_api_keys(&self, agent: AgentId) -> Result<Vec<ApiKey>, StoreError>;
    /// Records that the key was used at `now`.
    async fn touch_api_key(&self, key: ApiKeyId, now: DateTime<Utc>) -> Result<(), StoreError>;
    /// MUST fail with [`StoreError::Conflict`] if the prefix or hash already exists.
    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey, StoreError>;
    /// The key with this secret hash, revoked or not.
    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError>;
    /// Revokes the key with this prefix; `false` if there is none or it was revoked.
    async fn revoke_api_key(&self, prefix: &str, now: DateTime<Utc>) -> Result<bool, StoreError>;
}

/// Tells whoever waits on a task that it changed: a turn started or ended, or events
/// were appended to its log. A notification means "go and look", never "this is the
/// data": waiters re-read the store.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait TaskNotifier: Send + Sync + 'static {
    fn task_changed(&self, task: TaskId);
}

/// The time, as a port, so tests can fix it.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock, to the microsecond: the precision every store keeps, so a time
/// given in a response equals the one read back later.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        use chrono::SubsecRound;
        Utc::now().trunc_subsecs(6)
    }
}
