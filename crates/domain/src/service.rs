//! The use cases: authenticate a key, accept messages (claim-and-spawn), read tasks and
//! history, and administer agents and keys.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{ClaimError, ServiceError, StoreError};
use crate::executor::{StartedTurn, TurnExecutor};
use crate::feed::{FEED_READ, SharedPage};
use crate::idempotency::{self, IdempotencyConfig, InFlightKeys};
use crate::keys;
/// Where [`TaskService::create_task`] and [`TaskService::append_message`] take their
/// request from (it lives with the entities, which the idempotency rules read too).
pub use crate::model::SubmitMessage;
use crate::model::*;
use crate::notify::{LocalNotifier, TaskWatch};
use crate::page::{History, Page, PageRequest};
use crate::ports::{AgentStore, TaskNotifier, TaskStore, WebhookStore};
use crate::push::{self, NewPush, PushConfig, PushPut, PushRequest};
use crate::stream_tokens;
use crate::validate;
use crate::webhooks::{self, DeliveryView, DestinationPolicy, WebhookEndpoint, WebhookTarget};

/// Who is calling: the agent the presented key is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub agent_id: AgentId,
    pub key_id: ApiKeyId,
}

/// A checked submission with what its claim stores besides the message.
struct Prepared {
    message: NewMessage,
    metadata: Metadata,
    now: chrono::DateTime<chrono::Utc>,
    lease: Lease,
    idempotency: Option<IdempotencyRecord>,
    webhook: Option<WebhookEndpoint>,
    push: Option<NewPush>,
}

/// An agent whose service's request was checked by [`TaskService::authorize_inbox`]:
/// only that check makes one, so a turn's inbox is opened for no one else.
#[derive(Debug, Clone)]
pub struct AuthorizedAgent(Agent);

/// The turn an agent service asks the inbox of, at the attempt it plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxTurn {
    pub task_id: TaskId,
    pub turn_id: TurnId,
    pub attempt: u32,
}

/// What the services need to know about webhooks.
#[derive(Debug, Clone, Default)]
pub struct WebhookSettings {
    /// Which destinations are refused.
    pub destinations: DestinationPolicy,
    /// The server's signing secrets, for a request webhook without a secret whose
    /// agent has no default webhook secret either. Empty: such a request is refused.
    pub signing_secrets: Vec<String>,
}

/// The task API's use cases.
#[derive(Clone)]
pub struct TaskService {
    tasks: Arc<dyn TaskStore>,
    agents: Arc<dyn AgentStore>,
    executor: TurnExecutor,
    hub: LocalNotifier,
    idempotency: IdempotencyConfig,
    keys: InFlightKeys,
    webhooks: WebhookSettings,
    deliveries: Option<Arc<dyn WebhookStore>>,
    limits: SubmitLimits,
}

/// Limits on what one request may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubmitLimits {
    /// A message's content, as JSON, in bytes (its attachments' bytes not counted).
    pub max_message_bytes: usize,
    /// One attachment's bytes (decoded); beyond, the request is a 413.
    pub max_attachment_bytes: usize,
    /// Running turns per agent, across instances; `None`: unlimited.
    pub max_running_turns_per_agent: Option<u32>,
    /// Messages waiting in one task's queue (queued or steering).
    pub max_queued_per_task: u32,
}

impl Default for SubmitLimits {
    fn default() -> Self {
        SubmitLimits {
            max_message_bytes: 256 * 1024,
            max_attachment_bytes: 512 * 1024,
            max_running_turns_per_agent: None,
            max_queued_per_task: 100,
        }
    }
}

/// The longest a long-poll may wait; longer requests wait this long.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for TaskService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskService")
            .field("executor", &self.executor)
            .finish_non_exhaustive()
    }
}

impl TaskService {
    /// `hub` is where this process learns of turn changes (the executor's notifier
    /// publishes into it; on PostgreSQL, so does the relay of other instances'
    /// changes). A turn ended through the hub stops playing in `executor`.
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        agents: Arc<dyn AgentStore>,
        executor: TurnExecutor,
        hub: LocalNotifier,
    ) -> Self {
        hub.on_turn_ended(executor.stop_hook());
        TaskService {
            tasks,
            agents,
            executor,
            hub,
            idempotency: IdempotencyConfig::default(),
            keys: InFlightKeys::default(),
            webhooks: WebhookSettings::default(),
            deliveries: None,
            limits: SubmitLimits::default(),
        }
    }

    pub fn with_limits(mut self, limits: SubmitLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_idempotency(mut self, config: IdempotencyConfig) -> Self {
        self.idempotency = config;
        self
    }

    /// Webhook destinations and secrets, and the outbox deliveries are listed from.
    pub fn with_webhooks(
        mut self,
        settings: WebhookSettings,
        deliveries: Arc<dyn WebhookStore>,
    ) -> Self {
        self.webhooks = settings;
        self.deliveries = Some(deliveries);
        self
    }

    /// The endpoint a request's webhook resolves to: its URL with its own secret, or
    /// the agent's default webhook secrets, or the server's signing secrets.
    async fn resolve_webhook(
        &self,
        agent: AgentId,
        target: Option<WebhookTarget>,
    ) -> Result<Option<WebhookEndpoint>, ServiceError> {
        let Some(target) = target else {
            return Ok(None);
        };
        let secrets = match target.secret {
            Some(secret) => vec![secret],
            None => self.default_secrets(agent).await?,
        };
        if secrets.is_empty() {
            return Err(ServiceError::invalid(
                "webhook.secret",
                "is required: neither the agent's default webhook nor this server has a signing secret",
            ));
        }
        Ok(Some(WebhookEndpoint {
            url: target.url,
            secrets,
        }))
    }

    /// The secrets a delivery of the agent's that names none is signed with (a
    /// request's webhook without a secret, an A2A push): its default webhook's, else
    /// the server's; perhaps none.
    async fn default_secrets(&self, agent: AgentId) -> Result<Vec<String>, ServiceError> {
        let own = self
            .agents
            .get_agent(agent)
            .await?
            .and_then(|a| a.webhook)
            .map(|w| w.secrets)
            .unwrap_or_default();
        Ok(match own.is_empty() {
            true => self.webhooks.signing_secrets.clone(),
            false => own,
        })
    }

    fn outbox(&self) -> Result<&Arc<dyn WebhookStore>, ServiceError> {
        self.deliveries.as_ref().ok_or_else(|| {
            ServiceError::Unavailable("webhooks are not configured on this server".into())
        })
    }

    /// Stores an A2A push config for the task (replacing its config of the same id);
    /// each of the task's turns that ends from now on is pushed to it.
    pub async fn set_push_config(
        &self,
        who: &Principal,
        task: TaskId,
        request: PushRequest,
    ) -> Result<PushConfig, ServiceError> {
        let mut errors = Vec::new();
        push::check(&request, &self.webhooks.destinations, "", &mut errors);
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let new = NewPush {
            request,
            secrets: self.default_secrets(who.agent_id).await?,
        };
        let config = new.for_task(task, self.executor.clock().now());
        match self
            .outbox()?
            .put_push_config(who.agent_id, config.clone())
            .await?
        {
            PushPut::Stored => Ok(config),
            PushPut::TaskNotFound => Err(ServiceError::TaskNotFound),
            PushPut::Full => Err(ServiceError::TooManyPushConfigs(
                push::MAX_PUSH_CONFIGS_PER_TASK,
            )),
        }
    }

    /// The task's push configs, oldest first.
    pub async fn push_configs(
        &self,
        who: &Principal,
        task: TaskId,
    ) -> Result<Vec<PushConfig>, ServiceError> {
        self.outbox()?
            .list_push_configs(who.agent_id, task)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    /// One of the task's push configs.
    pub async fn push_config(
        &self,
        who: &Principal,
        task: TaskId,
        id: &str,
    ) -> Result<PushConfig, ServiceError> {
        self.push_configs(who, task)
            .await?
            .into_iter()
            .find(|config| config.id == id)
            .ok_or(ServiceError::PushConfigNotFound)
    }

    /// Deletes one of the task's push configs; deleting one that is not there is not
    /// an error (the client's wish holds either way).
    pub async fn delete_push_config(
        &self,
        who: &Principal,
        task: TaskId,
        id: &str,
    ) -> Result<(), ServiceError> {
        self.outbox()?
            .delete_push_config(who.agent_id, task, id)
            .await?
            .map(|_| ())
            .ok_or(ServiceError::TaskNotFound)
    }

    /// Whether this instance can serve: its store is reachable and migrated.
    pub async fn check_ready(&self) -> Result<(), ServiceError> {
        Ok(self.tasks.check_ready().await?)
    }

    /// An attachment of one of the caller's tasks, with its bytes.
    pub async fn get_file(
        &self,
        who: &Principal,
        task_id: TaskId,
        file: i64,
    ) -> Result<Option<StoredFile>, ServiceError> {
        Ok(self.tasks.get_file(who.agent_id, task_id, file).await?)
    }

    /// The task's webhook deliveries with their attempts.
    pub async fn list_deliveries(
        &self,
        who: &Principal,
        task_id: TaskId,
    ) -> Result<Vec<DeliveryView>, ServiceError> {
        self.outbox()?
            .list_deliveries(who.agent_id, task_id)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    pub fn executor(&self) -> &TurnExecutor {
        &self.executor
    }

    /// The principal a bearer token stands for. Every request looks the key up (in
    /// the server's [`crate::CachedAgents`]: a revoke through this process is seen by
    /// its next request, one by another process within a second).
    pub async fn authenticate(&self, token: &str) -> Result<Principal, ServiceError> {
        let key = self
            .agents
            .find_api_key(&keys::hash(token))
            .await?
            .ok_or(ServiceError::Unauthorized)?;
        if key.revoked_at.is_some() {
            return Err(ServiceError::Unauthorized);
        }
        // Last use is kept to the minute: one write per key per minute at most.
        let now = self.executor.clock().now();
        if key
            .last_used_at
            .is_none_or(|at| now - at >= chrono::Duration::minutes(1))
            && let Err(err) = self.agents.touch_api_key(key.id, now).await
        {
            tracing::warn!(error = %err, "could not record a key's last use");
        }
        Ok(Principal {
            agent_id: key.agent_id,
            key_id: key.id,
        })
    }

    /// A token that opens `task_id`'s stream for [`stream_tokens::STREAM_TOKEN_TTL`],
    /// made with the caller's key, and when it expires.
    pub async fn mint_stream_token(
        &self,
        who: &Principal,
        task_id: TaskId,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>), ServiceError> {
        self.get_task(who, task_id).await?;
        let key = self
            .agents
            .list_api_keys(who.agent_id)
            .await?
            .into_iter()
            .find(|key| key.id == who.key_id && key.revoked_at.is_none())
            .ok_or(ServiceError::Unauthorized)?;
        Ok(stream_tokens::mint(
            &key,
            task_id,
            self.executor.clock().now(),
        ))
    }

    /// The principal a stream token stands for, on `task_id`'s stream only.
    pub async fn authenticate_stream(
        &self,
        token: &str,
        task_id: TaskId,
    ) -> Result<Principal, ServiceError> {
        let claims = stream_tokens::read(token).map_err(ServiceError::StreamTokenRefused)?;
        let key = self
            .agents
            .list_api_keys(claims.agent_id)
            .await?
            .into_iter()
            .find(|key| key.prefix == claims.key_prefix);
        let key = claims
            .check(task_id, key.as_ref(), self.executor.clock().now())
            .map_err(ServiceError::StreamTokenRefused)?;
        Ok(Principal {
            agent_id: key.agent_id,
            key_id: key.id,
        })
    }

    /// Creates a task with its first message and starts its first turn. With an
    /// idempotency key, a retry of the same request replays the first answer.
    pub async fn create_task(
        &self,
        who: &Principal,
        submit: SubmitMessage,
        key: Option<String>,
    ) -> Result<Claim, ServiceError> {
        let ready = self.prepare(who, submit, key.as_deref(), None).await?;
        let new = NewTask {
            push: ready.push,
            agent_id: who.agent_id,
            message: ready.message,
            metadata: ready.metadata,
            now: ready.now,
            lease: ready.lease,
            idempotency: ready.idempotency,
            webhook: ready.webhook,
            max_running_per_agent: self.limits.max_running_turns_per_agent,
        };
        let tasks = self.tasks.clone();
        self.claim(who, key, async move { tasks.create_task(new).await })
            .await
    }

    /// Appends a message to an idle task and starts its next turn; a task with a
    /// running turn is `TaskBusy` and nothing is stored. Idempotency keys as for
    /// [`TaskService::create_task`].
    pub async fn append_message(
        &self,
        who: &Principal,
        task_id: TaskId,
        submit: SubmitMessage,
        key: Option<String>,
    ) -> Result<Claim, ServiceError> {
        let on_busy = self.on_busy(who, submit.on_busy).await?;
        let ready = self
            .prepare(who, submit, key.as_deref(), Some(task_id))
            .await?;
        let append = NewAppend {
            push: ready.push,
            agent_id: who.agent_id,
            task_id,
            message: ready.message,
            metadata: ready.metadata,
            now: ready.now,
            lease: ready.lease,
            idempotency: ready.idempotency,
            webhook: ready.webhook,
            max_running_per_agent: self.limits.max_running_turns_per_agent,
            on_busy,
            max_queued: self.limits.max_queued_per_task,
        };
        let tasks = self.tasks.clone();
        self.claim(
            who,
            key,
            async move { tasks.append_and_claim(append).await },
        )
        .await
    }

    /// What a message does if its task is busy: as the request says, else as its
    /// agent's policy says — `steer` only if the agent's runner takes messages
    /// mid-turn, else `enqueue`.
    async fn on_busy(
        &self,
        who: &Principal,
        asked: Option<OnBusy>,
    ) -> Result<OnBusy, ServiceError> {
        let agent = self
            .agents
            .get_agent(who.agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)?;
        let on_busy = asked.unwrap_or(agent.policy.on_busy);
        if on_busy != OnBusy::Steer {
            return Ok(on_busy);
        }
        let steerable = self
            .executor
            .runners()
            .get(&agent.runner.kind)
            .is_some_and(|runner| runner.takes_messages(&agent.runner.config));
        Ok(match steerable {
            true => OnBusy::Steer,
            false => OnBusy::Enqueue,
        })
    }

    /// Checks a submission and works out what its claim stores besides the message:
    /// the time, the lease, the idempotency record and the webhook. `task` is the task
    /// appended to, `None` for a new task.
    async fn prepare(
        &self,
        who: &Principal,
        submit: SubmitMessage,
        key: Option<&str>,
        task: Option<TaskId>,
    ) -> Result<Prepared, ServiceError> {
        check_submission(who, &submit, key, &self.webhooks.destinations, &self.limits)?;
        if task.is_none() {
            // A new task has no tool calls to answer.
            crate::tools::check_not_an_answer(&submit.message).map_err(ServiceError::Validation)?;
        }
        let now = self.executor.clock().now();
        let operation = if task.is_some() {
            "append_message"
        } else {
            "create_task"
        };
        let idempotency = self.idempotency_record(key, operation, task, &submit, now);
        let webhook = self.resolve_webhook(who.agent_id, submit.webhook).await?;
        let push = match submit.push {
            Some(request) => Some(NewPush {
                request,
                secrets: self.default_secrets(who.agent_id).await?,
            }),
            None => None,
        };
        Ok(Prepared {
            message: submit.message,
            metadata: submit.metadata,
            now,
            lease: self.executor.new_lease(now),
            idempotency,
            webhook,
            push,
        })
    }

    fn idempotency_record(
        &self,
        key: Option<&str>,
        operation: &str,
        task: Option<TaskId>,
        submit: &SubmitMessage,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<IdempotencyRecord> {
        let ttl = chrono::Duration::from_std(self.idempotency.ttl).unwrap_or(chrono::Duration::MAX);
        key.map(|key| IdempotencyRecord {
            key: key.to_owned(),
            request_hash: idempotency::request_hash(operation, task, submit),
            expires_at: now
                .checked_add_signed(ttl)
                .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC),
        })
    }

    /// Runs a claim to its end even if the caller stops waiting, and hands a started
    /// turn to the executor. A request with an idempotency key first holds the key in
    /// this process, so a concurrent duplicate waits and then replays.
    async fn claim(
        &self,
        who: &Principal,
        key: Option<String>,
        claim: impl Future<Output = Result<Claim, ClaimError>> + Send + 'static,
    ) -> Result<Claim, ServiceError> {
        let hold = match key {
            Some(key) => Some(
                self.keys
                    .hold(who.agent_id, &key, self.idempotency.in_flight_wait)
                    .await?,
            ),
            None => None,
        };
        let executor = self.executor.clone();
        let hub = self.hub.clone();
        self.executor
            .detached(async move {
                let claimed = claim.await?;
                if let Claim::Started(accepted) = &claimed {
                    // An interrupted turn stops playing here at once (elsewhere, when
                    // its instance hears of the end).
                    if let Some(interrupted) = accepted.interrupted {
                        hub.turn_ended(accepted.task_id, interrupted);
                    }
                    // Before the answer: a long-poll or a stream of this task sent
                    // after it sees the change (the new turn, or the answer stored).
                    hub.task_changed(accepted.task_id);
                    // A tool answer that leaves calls unanswered starts no turn, nor
                    // does a queued or steering message.
                    if let (AcceptedStatus::Running, Some(turn_id)) =
                        (accepted.status, accepted.turn_id)
                    {
                        executor.spawn(StartedTurn {
                            agent_id: accepted.agent_id,
                            task_id: accepted.task_id,
                            turn_id,
                            // A claim starts a turn's first attempt.
                            attempt: 1,
                        });
                    }
                }
                drop(hold);
                Ok(claimed)
            })
            .await
    }

    /// Cancels the task's running turn, or the turn waiting for tool answers: it ends
    /// `cancelled` at once (its partial text kept, a `cancelled` event written) and its
    /// runner is stopped wherever it plays. The task's queued messages stay queued: the
    /// first starts its turn. Cancelling a turn that is already
    /// cancelled answers as the first cancel did; a task whose latest turn ended
    /// otherwise is [`ServiceError::TaskNotRunning`].
    pub async fn cancel(&self, who: &Principal, task_id: TaskId) -> Result<TaskView, ServiceError> {
        let view = self.get_task(who, task_id).await?;
        let turn = view.latest_turn.id;
        match view.latest_turn.status {
            TurnStatus::Cancelled => return Ok(view),
            TurnStatus::Running | TurnStatus::RequiresAction => {}
            other => return Err(ServiceError::TaskNotRunning(other)),
        }
        let finish = FinishTurn {
            task_id,
            turn_id: turn,
            outcome: TurnOutcome::Cancelled,
            output: Vec::new(),
            usage: None,
            guard: LeaseGuard::Anyone,
            now: self.executor.clock().now(),
            next: Some(self.executor.new_lease(self.executor.clock().now())),
        };
        let (tasks, hub, executor) = (self.tasks.clone(), self.hub.clone(), self.executor.clone());
        let cancelled = self
            .executor
            .detached(async move {
                let Some(ended) = tasks.finish_turn(finish).await? else {
                    return Ok(false);
                };
                crate::telemetry::turn_ended(TurnStatus::Cancelled, "cancelled", None);
                hub.turn_ended(task_id, turn);
                if let Some(next) = ended.next {
                    executor.spawn(next);
                }
                Ok(true)
            })
            .await?;
        // Cancelled by this request: the task as it is now (running its next queued
        // message's turn, if one waited). Ended otherwise: by a concurrent cancel, the
        // same answer; by its own end, not running.
        let view = self.get_task(who, task_id).await?;
        match view.latest_turn.status {
            _ if cancelled => Ok(view),
            TurnStatus::Cancelled if view.latest_turn.id == turn => Ok(view),
            other => Err(ServiceError::TaskNotRunning(other)),
        }
    }

    /// Sweeps expired leases now and then every `every`, and purges expired
    /// idempotency keys, until the handle is aborted.
    pub fn spawn_maintenance(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let service = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                service.maintain().await;
            }
        })
    }

    /// One round of maintenance (see [`TaskService::spawn_maintenance`]).
    pub async fn maintain(&self) {
        let now = self.executor.clock().now();
        match self.executor.sweep(now).await {
            Ok(report) if report != Default::default() => {
                tracing::warn!(
                    failed = report.failed,
                    retried = report.retried,
                    unanswered = report.unanswered,
                    queues = report.queues,
                    "swept turns whose instance stopped or whose tool calls went unanswered"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "could not sweep expired turn leases"),
        }
        match self.tasks.purge_idempotency_keys(now).await {
            Ok(0) => {}
            Ok(purged) => tracing::debug!(purged, "purged expired idempotency keys"),
            Err(err) => tracing::warn!(error = %err, "could not purge expired idempotency keys"),
        }
    }

    pub async fn get_task(
        &self,
        who: &Principal,
        task_id: TaskId,
    ) -> Result<TaskView, ServiceError> {
        self.tasks
            .get_task(who.agent_id, task_id)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    /// The task once its status is not `running`, or as it is after `wait` (capped at
    /// [`MAX_WAIT`]). Woken by turn changes, never by polling the store: the store is
    /// read once, then once per change of this task — one read for all the task's
    /// long-polls in this process that the change woke.
    pub async fn wait_task(
        &self,
        who: &Principal,
        task_id: TaskId,
        wait: Duration,
    ) -> Result<TaskView, ServiceError> {
        // Watch before reading, so a change between the read and the wait is seen.
        let mut watch = self.hub.watch(task_id);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        // Its own first read: it sees whatever was committed before the request, on
        // any instance, announced here yet or not.
        let mut view = self.get_task(who, task_id).await?;
        loop {
            if view.status() != TaskStatus::Running || wait.is_zero() {
                return Ok(view);
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Ok(view);
            }
            // The task's long-polls woken by one change share one read of it.
            view = watch
                .feed()
                .view(
                    who.agent_id,
                    watch.seen(),
                    || watch.count_now(),
                    self.get_task(who, task_id),
                )
                .await?;
        }
    }

    /// Up to `limit` events of the task after `after`, with the oldest `seq` kept.
    pub async fn events(
        &self,
        who: &Principal,
        task_id: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<EventPage, ServiceError> {
        self.tasks
            .list_events(who.agent_id, task_id, after, limit)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    /// Up to `limit` events after `cursor` for a stream that follows the task with
    /// `watch`, as of the changes the watch has seen. Live events come from the
    /// task's shared feed, which one stream reads from the store per change for every
    /// stream of the task; a stream behind the feed reads its own gap (see
    /// [`crate::feed`]).
    pub async fn stream_events(
        &self,
        who: &Principal,
        watch: &TaskWatch,
        cursor: i64,
        limit: u32,
    ) -> Result<SharedPage, ServiceError> {
        let task_id = watch.task();
        let mut feed = watch.feed().lock().await;
        loop {
            let placed = feed.read_up_to();
            if placed.is_some() && feed.fresh_for(watch.seen()) {
                break;
            }
            // Not placed yet: this stream's own read places the feed, if it reaches
            // the log's end.
            let after = placed.unwrap_or(cursor);
            let count = watch.count_now();
            let page = self.events(who, task_id, after, FEED_READ).await?;
            let full = page.events.len() == FEED_READ as usize;
            feed.take(after, &page, count, full);
            if placed.is_none() {
                return Ok(SharedPage::from(page).limited(limit));
            }
        }
        if let Some(page) = feed.serve(cursor, limit) {
            return Ok(page);
        }
        drop(feed);
        Ok(self.events(who, task_id, cursor, limit).await?.into())
    }

    /// The messages waiting in the task's queue: queued ones in the order they start,
    /// then those steering into the running turn.
    pub async fn list_queue(
        &self,
        who: &Principal,
        task_id: TaskId,
    ) -> Result<Vec<QueuedMessage>, ServiceError> {
        self.tasks
            .list_queue(who.agent_id, task_id)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }

    /// A message sent to the busy task, waiting or not.
    pub async fn get_queued(
        &self,
        who: &Principal,
        task_id: TaskId,
        id: QueuedMessageId,
    ) -> Result<QueuedMessage, ServiceError> {
        match self.tasks.get_queued(who.agent_id, task_id, id).await? {
            Some(found) => Ok(found),
            None => Err(self.queued_not_found(who, task_id).await),
        }
    }

    /// Cancels a waiting message; cancelling one already cancelled answers the same.
    /// One that started its turn, or was delivered, is [`ServiceError::NotQueued`].
    pub async fn cancel_queued(
        &self,
        who: &Principal,
        task_id: TaskId,
        id: QueuedMessageId,
    ) -> Result<QueuedMessage, ServiceError> {
        let now = self.executor.clock().now();
        let tasks = self.tasks.clone();
        let agent = who.agent_id;
        let cancelled = self
            .executor
            .detached(async move { Ok(tasks.cancel_queued(agent, task_id, id, now).await?) })
            .await?;
        match cancelled {
            QueueCancel::Cancelled(message) => {
                self.hub.task_changed(task_id);
                Ok(message)
            }
            QueueCancel::TooLate(message) => Err(ServiceError::NotQueued(Box::new(message))),
            QueueCancel::NotFound => Err(self.queued_not_found(who, task_id).await),
        }
    }

    /// `task_not_found` when the task is not the caller's, else `queued_message_not_found`.
    async fn queued_not_found(&self, who: &Principal, task_id: TaskId) -> ServiceError {
        match self.get_task(who, task_id).await {
            Ok(_) => ServiceError::QueuedMessageNotFound,
            Err(err) => err,
        }
    }

    /// The inbox of a turn whose agent service calls back (the `http` runner): the
    /// messages steered into the turn, delivered now (stored as part of the turn,
    /// with `message_delivered` events). With none waiting, waits up to `wait` (at
    /// most [`MAX_WAIT`]) for one. [`ServiceError::TurnEnded`] once the turn no longer
    /// runs at its attempt (or is not the agent's): the agent should stop.
    pub async fn turn_inbox(
        &self,
        agent: &AuthorizedAgent,
        inbox: InboxTurn,
        wait: Duration,
    ) -> Result<Vec<Message>, ServiceError> {
        let mut watch = self.hub.watch(inbox.task_id);
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        loop {
            let (tasks, now, agent_id) =
                (self.tasks.clone(), self.executor.clock().now(), agent.0.id);
            // A delivery is a write: it finishes even if the agent hangs up.
            let taken = self
                .executor
                .detached(async move {
                    Ok(tasks
                        .take_steered(agent_id, inbox.task_id, inbox.turn_id, inbox.attempt, now)
                        .await?)
                })
                .await?
                .ok_or(ServiceError::TurnEnded)?;
            if !taken.is_empty() {
                self.hub.task_changed(inbox.task_id);
                return Ok(taken);
            }
            if tokio::time::timeout_at(deadline, watch.changed())
                .await
                .is_err()
            {
                return Ok(taken);
            }
        }
    }

    /// The agent of a turn inbox request, if the request (`headers` and `body` as
    /// received) is signed by it: its runner checks the signature.
    pub async fn authorize_inbox(
        &self,
        agent: AgentId,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<AuthorizedAgent, ServiceError> {
        let refused = |why: &str| ServiceError::InboxRefused(why.to_owned());
        let agent = self
            .agents
            .get_agent(agent)
            .await?
            .ok_or_else(|| refused("no such agent"))?;
        let runner = self
            .executor
            .runners()
            .get(&agent.runner.kind)
            .ok_or_else(|| refused("the agent's runner is not registered here"))?;
        runner
            .authorize_inbox(&agent.runner.config, headers, body)
            .map_err(ServiceError::InboxRefused)?;
        Ok(AuthorizedAgent(agent))
    }

    /// Starts watching a task for changes (see [`LocalNotifier::watch`]).
    pub fn watch(&self, task_id: TaskId) -> crate::notify::TaskWatch {
        self.hub.watch(task_id)
    }

    /// The agent the caller's key belongs to.
    pub async fn key_agent(&self, who: &Principal) -> Result<Agent, ServiceError> {
        self.agents
            .get_agent(who.agent_id)
            .await?
            .ok_or(ServiceError::AgentNotFound)
    }

    pub async fn list_tasks(
        &self,
        who: &Principal,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> Result<Page<TaskView>, ServiceError> {
        Ok(self.tasks.list_tasks(who.agent_id, status, page).await?)
    }

    /// A page of the agent's tasks, most recently updated first (A2A's order), after
    /// the previous page's last task (its `updated_at` and id); and whether more
    /// follow.
    pub async fn list_tasks_by_update(
        &self,
        who: &Principal,
        status: Option<TaskStatus>,
        limit: u32,
        after: Option<(chrono::DateTime<chrono::Utc>, TaskId)>,
    ) -> Result<(Vec<TaskView>, bool), ServiceError> {
        let mut views = self
            .tasks
            .list_tasks_by_update(who.agent_id, status, limit, after)
            .await?;
        let more = views.len() > limit as usize;
        views.truncate(limit as usize);
        Ok((views, more))
    }

    pub async fn list_messages(
        &self,
        who: &Principal,
        task_id: TaskId,
        page: PageRequest,
    ) -> Result<History<Message>, ServiceError> {
        self.tasks
            .list_messages(who.agent_id, task_id, page)
            .await?
            .ok_or(ServiceError::TaskNotFound)
    }
}

/// A key acts for exactly one agent: naming another is `agent_not_found`, checked
/// before the body, so a foreign agent's existence is never hinted at.
fn check_submission(
    who: &Principal,
    submit: &SubmitMessage,
    key: Option<&str>,
    destinations: &DestinationPolicy,
    limits: &SubmitLimits,
) -> Result<(), ServiceError> {
    if submit.agent_id != who.agent_id {
        return Err(ServiceError::AgentNotFound);
    }
    let mut errors = Vec::new();
    if let Some(key) = key {
        idempotency::check_key(key, &mut errors);
    }
    if let Some(webhook) = &submit.webhook {
        webhooks::check_target(webhook, destinations, "webhook", &mut errors);
    }
    if let Some(push) = &submit.push {
        push::check(push, destinations, "push.", &mut errors);
    }
    let attachments = submit.message.content.attachments();
    let attached: usize = attachments
        .iter()
        .map(|a| a.data.as_ref().map_or(0, String::len))
        .sum();
    let size = serde_json::to_vec(&submit.message.content)
        .map_or(0, |json| json.len())
        .saturating_sub(attached);
    if size > limits.max_message_bytes {
        errors.push(crate::FieldError::new(
            "message.content",
            format!(
                "is {size} bytes; at most {} are accepted",
                limits.max_message_bytes
            ),
        ));
    }
    validate::client_message(&submit.message, &mut errors);
    validate::metadata("metadata", &submit.metadata, &mut errors);
    validate::metadata("message.metadata", &submit.message.metadata, &mut errors);
    if attachments.len() > validate::MAX_ATTACHMENTS {
        errors.push(crate::FieldError::new(
            "message.content.attachments",
            format!(
                "at most {} attachments per message",
                validate::MAX_ATTACHMENTS
            ),
        ));
    }
    for (i, attachment) in attachments.iter().enumerate() {
        let size = validate::attachment(i, attachment, &mut errors);
        if size > limits.max_attachment_bytes {
            return Err(ServiceError::TooLarge(format!(
                "message.content.attachments[{i}] is {size} bytes; at most {} are accepted",
                limits.max_attachment_bytes
            )));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ServiceError::Validation(errors))
    }
}

/// Changes an administrator asks for; `None` leaves a field as it is, and
/// `webhook: Some(None)` removes the default webhook.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentChanges {
    pub name: Option<String>,
    pub runner: Option<RunnerSpec>,
    pub policy: Option<TurnPolicy>,
    pub webhook: Option<Option<WebhookTarget>>,
    /// `Some(None)` removes the card's config.
    pub card: Option<Option<CardConfig>>,
}

/// A key as created: the token is in this value and nowhere else, ever.
#[derive(Debug, Clone, PartialEq)]
pub struct CreatedKey {
    pub key: ApiKey,
    pub token: String,
}

/// Administration of agents and keys, shared by the CLI and (later) the admin API.
#[derive(Clone)]
pub struct AdminService {
    agents: Arc<dyn AgentStore>,
    executor: TurnExecutor,
    destinations: DestinationPolicy,
    deliveries: Option<Arc<dyn WebhookStore>>,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService").finish_non_exhaustive()
    }
}

impl AdminService {
    pub fn new(agents: Arc<dyn AgentStore>, executor: TurnExecutor) -> Self {
        AdminService {
            agents,
            executor,
            destinations: DestinationPolicy::default(),
            deliveries: None,
        }
    }

    /// Which webhook destinations agents may have, and the outbox redeliveries go to.
    pub fn with_webhooks(
        mut self,
        destinations: DestinationPolicy,
        deliveries: Arc<dyn WebhookStore>,
    ) -> Self {
        self.destinations = destinations;
        self.deliveries = Some(deliveries);
        self
    }

    /// Makes a webhook delivery due again now (a new round of retries).
    pub async fn redeliver(&self, delivery: i64) -> Result<bool, ServiceError> {
        let store = self.deliveries.as_ref().ok_or_else(|| {
            ServiceError::Unavailable("webhooks are not configured on this server".into())
        })?;
        Ok(store
            .redeliver(delivery, self.executor.clock().now())
            .await?)
    }

    /// Creates an agent after checking its name, that its runner kind is registered,
    /// that the runner accepts its configuration, its turn policy and its default
    /// webhook. A default webhook given without a secret gets a new one (in the
    /// returned agent, to be handed to the receiver).
    pub async fn create_agent(
        &self,
        name: &str,
        runner: RunnerSpec,
        policy: TurnPolicy,
        webhook: Option<WebhookTarget>,
        card: Option<CardConfig>,
    ) -> Result<Agent, ServiceError> {
        let mut errors = Vec::new();
        validate::agent_name(name, &mut errors);
        validate::turn_policy(&policy, &mut errors);
        if let Some(card) = &card {
            crate::a2a::check_card(card, &mut errors);
        }
        if let Some(webhook) = &webhook {
            webhooks::check_target(webhook, &self.destinations, "webhook", &mut errors);
        }
        self.check_runner(&runner, &mut errors);
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let new = NewAgent {
            name: name.trim().to_owned(),
            runner,
            policy,
            webhook: webhook.map(|target| WebhookEndpoint {
                url: target.url,
                secrets: vec![target.secret.unwrap_or_else(webhooks::new_secret)],
            }),
            card,
            created_at: self.executor.clock().now(),
        };
        Ok(self.agents.create_agent(new).await?)
    }

    /// That the runner kind is registered and accepts its configuration.
    fn check_runner(&self, runner: &RunnerSpec, errors: &mut Vec<crate::FieldError>) {
        if !runner.config.is_object() {
            errors.push(crate::FieldError::new(
                "runner.config",
                "must be a JSON object (leave it out for the runner's defaults)",
            ));
            return;
        }
        match self.executor.runners().get(&runner.kind) {
            None => {
                let known: Vec<_> = self.executor.runners().kinds().collect();
                errors.push(crate::FieldError::new(
                    "runner.kind",
                    format!(
                        "unknown runner {:?}; this server has: {}",
                        runner.kind,
                        known.join(", ")
                    ),
                ));
            }
            Some(found) => {
                if let Err(why) = found.validate_config(&runner.config) {
                    errors.push(crate::FieldError::new("runner.config", why));
                }
            }
        }
    }

    pub async fn count_agents(&self) -> Result<u64, ServiceError> {
        Ok(self.agents.count_agents().await?)
    }

    pub async fn list_agents(&self, page: PageRequest) -> Result<Page<Agent>, ServiceError> {
        Ok(self.agents.list_agents(page).await?)
    }

    pub async fn get_agent(&self, id: AgentId) -> Result<Agent, ServiceError> {
        self.agents
            .get_agent(id)
            .await?
            .ok_or(ServiceError::AgentNotFound)
    }

    /// Changes an agent, checked as at creation. A new default webhook without a
    /// secret keeps the current one's secrets, or gets a new secret.
    pub async fn update_agent(
        &self,
        id: AgentId,
        changes: AgentChanges,
    ) -> Result<Agent, ServiceError> {
        let current = self.get_agent(id).await?;
        let mut errors = Vec::new();
        if let Some(name) = &changes.name {
            validate::agent_name(name, &mut errors);
        }
        if let Some(policy) = &changes.policy {
            validate::turn_policy(policy, &mut errors);
        }
        if let Some(Some(card)) = &changes.card {
            crate::a2a::check_card(card, &mut errors);
        }
        if let Some(runner) = &changes.runner {
            self.check_runner(runner, &mut errors);
        }
        if let Some(Some(webhook)) = &changes.webhook {
            webhooks::check_target(webhook, &self.destinations, "webhook", &mut errors);
        }
        if !errors.is_empty() {
            return Err(ServiceError::Validation(errors));
        }
        let webhook = changes.webhook.map(|target| {
            target.map(|target| WebhookEndpoint {
                url: target.url,
                secrets: match target.secret {
                    Some(secret) => vec![secret],
                    None => current
                        .webhook
                        .as_ref()
                        .map(|w| w.secrets.clone())
                        .unwrap_or_else(|| vec![webhooks::new_secret()]),
                },
            })
        });
        let update = AgentUpdate {
            name: changes.name.map(|n| n.trim().to_owned()),
            runner: changes.runner,
            policy: changes.policy,
            webhook,
            card: changes.card,
        };
        self.agents
            .update_agent(id, update)
            .await?
            .ok_or(ServiceError::AgentNotFound)
    }

    /// The agent's keys (never their secrets, which are not stored).
    pub async fn list_keys(&self, agent: AgentId) -> Result<Vec<ApiKey>, ServiceError> {
        self.get_agent(agent).await?;
        Ok(self.agents.list_api_keys(agent).await?)
    }

    /// Creates a key for an agent and returns its token, which is not stored.
    pub async fn create_key(&self, agent_id: AgentId) -> Result<CreatedKey, ServiceError> {
        if self.agents.get_agent(agent_id).await?.is_none() {
            return Err(ServiceError::AgentNotFound);
        }
        let generated = keys::generate();
        let new = NewApiKey {
            agent_id,
            prefix: generated.prefix,
            secret_hash: generated.secret_hash,
            created_at: self.executor.clock().now(),
        };
        let key = self
            .agents
            .create_api_key(new)
            .await
            .map_err(|err| match err {
                // A prefix collision among 62^8 is possible only in theory; say so plainly.
                StoreError::Conflict(why) => {
                    ServiceError::Unavailable(format!("key collision, try again: {why}"))
                }
                other => other.into(),
            })?;
        Ok(CreatedKey {
            key,
            token: generated.token,
        })
    }

    /// Revokes a key by its prefix (or its whole token); `false` if no live key matched.
    pub async fn revoke_key(&self, prefix_or_token: &str) -> Result<bool, ServiceError> {
        let prefix = prefix_or_token
            .strip_prefix("bt_")
            .and_then(|rest| rest.split('_').next())
            .unwrap_or(prefix_or_token);
        Ok(self
            .agents
            .revoke_api_key(prefix, self.executor.clock().now())
            .await?)
    }
}

#[cfg(test)]
mod tests;
