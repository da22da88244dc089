//! The turn executor: runs accepted turns in the background, with a bounded number at
//! once, under leases it renews, and always ends them: completed, failed, timed out,
//! or stopped because the turn was ended elsewhere (a cancel, a sweep).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

use crate::content::Content;
use crate::error::{ServiceError, StoreError};
use crate::model::{
    Agent, AgentId, Ended, ExpiredTurn, FinishTurn, Holder, Lease, LeaseGuard, Message, OutputOp,
    RecordOutput, Role, TakeOver, TaskId, TurnHistory, TurnId, TurnOutcome, TurnPolicy, TurnStatus,
    Usage,
};
use crate::ports::{AgentStore, Clock, TaskNotifier, TaskStore};
use crate::runner::{RunnerRegistry, SinkItem, TurnInput, TurnSink};
use crate::telemetry;

/// Buffered sink items per turn before the runner waits for the executor.
const SINK_CAPACITY: usize = 64;
/// Expired turns handled per store read during a sweep.
const SWEEP_BATCH: u32 = 100;
/// Turns ended per transaction when a sweep ends a page of them, several at once.
const FINISH_CHUNK: usize = 25;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Turns played at once by this process; more accepted turns wait for a slot.
    pub max_concurrent_turns: usize,
    /// This process's name as a lease holder; unique among live instances.
    pub instance_id: String,
    /// How long a lease lasts unless renewed. The executor renews its leases every
    /// third of this, so a turn of a dead instance is found after at most this long.
    pub lease_ttl: Duration,
    /// How long a client has to answer the tool calls a turn asked for; then the turn
    /// fails with `tool_response_timeout`, so an absent client cannot hold its task.
    pub tool_response_timeout: Duration,
}

impl ExecutorConfig {
    pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(20);
    pub const DEFAULT_TOOL_RESPONSE_TIMEOUT: Duration = Duration::from_secs(3600);
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_concurrent_turns: 64,
            instance_id: new_instance_id(),
            lease_ttl: ExecutorConfig::DEFAULT_LEASE_TTL,
            tool_response_timeout: ExecutorConfig::DEFAULT_TOOL_RESPONSE_TIMEOUT,
        }
    }
}

/// A fresh instance id: the process id and a random part, so a restarted process
/// never mistakes its predecessor's leases for its own.
pub fn new_instance_id() -> String {
    format!("{}-{:08x}", std::process::id(), rand::random::<u32>())
}

pub use crate::model::StartedTurn;

/// What a sweep of expired leases did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Turns ended `failed` with `turn_interrupted`.
    pub failed: usize,
    /// Turns taken over and played again here.
    pub retried: usize,
    /// Turns whose tool calls went unanswered, ended `failed` with
    /// `tool_response_timeout`.
    pub unanswered: usize,
    /// Queues whose next turn was started here: their task's turn had ended where
    /// nothing could start it (an instance that was stopping).
    pub queues: usize,
}

/// What ending this process's unfinished turns did (see
/// [`TurnExecutor::end_unfinished`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Ended `failed` with `turn_interrupted` (agents with the `fail` policy).
    pub failed: usize,
    /// Leases released for another instance, or the next start, to retry.
    pub released: usize,
}

/// Runs turns on a runtime it owns a handle to, never on the caller's: actix workers
/// are single-threaded, and a turn must not share a request worker's thread.
#[derive(Clone)]
pub struct TurnExecutor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TurnExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnExecutor")
            .field("instance_id", &self.inner.config.instance_id)
            .field("runners", &self.inner.runners)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// A turn handed to this executor, and the signal that stops playing it.
#[derive(Debug, Clone)]
struct Entry {
    turn: StartedTurn,
    stop: CancellationToken,
}

type InFlightSet = watch::Sender<HashMap<TurnId, Entry>>;

struct Inner {
    tasks: Arc<dyn TaskStore>,
    agents: Arc<dyn AgentStore>,
    runners: RunnerRegistry,
    notifier: Arc<dyn TaskNotifier>,
    clock: Arc<dyn Clock>,
    config: ExecutorConfig,
    permits: Arc<Semaphore>,
    handle: Handle,
    /// Turns handed to this executor and not yet ended (waiting or playing).
    in_flight: InFlightSet,
    /// Set when the process starts stopping: a turn that ends then leaves its task's
    /// queue to a sweep instead of starting the next turn here.
    stopping: std::sync::atomic::AtomicBool,
}

/// Holds a turn in the in-flight set from hand-over to its end, even if its task panics.
struct InFlight {
    set: InFlightSet,
    turn: TurnId,
}

impl InFlight {
    /// Enters the turn, unless this executor already plays it: one process never
    /// plays a turn twice at once. `None` then.
    fn enter(set: &InFlightSet, turn: StartedTurn) -> Option<(Self, CancellationToken)> {
        let stop = CancellationToken::new();
        let entry = Entry {
            turn,
            stop: stop.clone(),
        };
        let entered = set.send_if_modified(|turns| {
            if turns.contains_key(&turn.turn_id) {
                return false;
            }
            turns.insert(turn.turn_id, entry);
            telemetry::turns_in_flight(turns.len());
            true
        });
        if !entered {
            return None;
        }
        telemetry::turn_started();
        let guard = InFlight {
            set: set.clone(),
            turn: turn.turn_id,
        };
        Some((guard, stop))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // `enter` refuses a turn id already held, so the entry is this guard's.
        self.set.send_modify(|turns| {
            turns.remove(&self.turn);
            telemetry::turns_in_flight(turns.len());
        });
    }
}

/// How playing a turn ended: with an outcome to record, or stopped because the turn
/// was ended (or taken) elsewhere, when there is nothing left to record.
enum Played {
    /// With what the runner last reported using, if anything, and the output it
    /// pushed last, not recorded yet: it is stored with the end, in one write.
    Ended(TurnOutcome, Option<Usage>, Vec<OutputOp>),
    Stopped,
}

impl TurnExecutor {
    /// An executor that spawns on `handle` (keep it the multi-thread runtime's). It
    /// renews the leases of its turns in the background for as long as it exists.
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        agents: Arc<dyn AgentStore>,
        runners: RunnerRegistry,
        notifier: Arc<dyn TaskNotifier>,
        clock: Arc<dyn Clock>,
        config: ExecutorConfig,
        handle: Handle,
    ) -> Self {
        let inner = Arc::new(Inner {
            tasks,
            agents,
            runners,
            notifier,
            clock,
            permits: Arc::new(Semaphore::new(config.max_concurrent_turns.max(1))),
            config,
            handle,
            in_flight: watch::channel(HashMap::new()).0,
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        inner
            .handle
            .spawn(keep_leases(Arc::downgrade(&inner)).instrument(info_span!("leases")));
        TurnExecutor { inner }
    }

    pub fn runners(&self) -> &RunnerRegistry {
        &self.inner.runners
    }

    pub fn config(&self) -> &ExecutorConfig {
        &self.inner.config
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    /// A new lease held by this instance, from now.
    pub(crate) fn new_lease(&self, now: DateTime<Utc>) -> Lease {
        self.inner.lease_from(now)
    }

    /// Runs `work` to completion even if the caller stops waiting. A client that
    /// disconnects drops its request's future; the claim and its commit, and the
    /// hand-over of the turn, must happen anyway. The work runs in the caller's task
    /// (no hop to another thread); if the caller is dropped first, what is left of it
    /// is handed to the executor's runtime and finishes there.
    pub(crate) async fn detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, ServiceError>> + Send + 'static,
    ) -> Result<T, ServiceError> {
        crate::detached::Detached::new(work, &self.inner.handle).await
    }

    /// Hands a committed turn over to be played in the background. A turn this
    /// executor already plays is not played a second time.
    pub fn spawn(&self, turn: StartedTurn) {
        self.inner.spawn(turn);
    }

    /// A hook for the hub's "turn ended": stops playing the turn if this executor
    /// plays it — its runner is dropped and nothing more is recorded. It does not keep
    /// the executor alive.
    pub fn stop_hook(&self) -> crate::notify::TurnEndHook {
        let inner = Arc::downgrade(&self.inner);
        Arc::new(move |turn| {
            if let Some(inner) = inner.upgrade() {
                inner.stop(turn);
            }
        })
    }

    /// Turns handed over and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.borrow().len()
    }

    /// Waits until no turn is in flight or `grace` has passed; returns how many are
    /// still in flight.
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        // Stopping: a turn ending from now on starts no queued turn here.
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let mut watcher = self.inner.in_flight.subscribe();
        let _ = tokio::time::timeout(grace, watcher.wait_for(HashMap::is_empty)).await;
        self.in_flight()
    }

    /// Ends the turns this executor still holds by their agents' policy, and stops
    /// their runners. Used when stopping: only this process's turns are touched,
    /// never another instance's. `fail` agents' turns end `failed` with
    /// `turn_interrupted`; `retry` agents' turns have their leases released, so any
    /// instance's next sweep (or this one's next start) plays them again at once.
    pub async fn end_unfinished(&self) -> ShutdownReport {
        let inner = &self.inner;
        let entries: Vec<Entry> = inner.in_flight.borrow().values().cloned().collect();
        let mut report = ShutdownReport::default();
        let mut release = Vec::new();
        for entry in &entries {
            let turn = entry.turn;
            let policy = inner.policy_of(turn.agent_id).await;
            if policy.on_interrupt == crate::model::OnInterrupt::Retry {
                release.push(turn.turn_id);
                continue;
            }
            let finish = FinishTurn {
                task_id: turn.task_id,
                turn_id: turn.turn_id,
                outcome: interrupted("the server stopped while the turn was running"),
                output: Vec::new(),
                usage: None,
                guard: LeaseGuard::Holder(inner.holder(turn)),
                now: inner.clock.now(),
                // Stopping: the task's queue is left to a sweep.
                next: None,
            };
            match inner.tasks.finish_turn(finish).await {
                Ok(Some(_)) => {
                    report.failed += 1;
                    telemetry::turn_ended(TurnStatus::Failed, "stopped", None);
                    inner.notifier.task_changed(turn.task_id);
                }
                Ok(None) => {}
                Err(err) => {
                    error!(turn_id = %turn.turn_id, error = %err, "could not end an unfinished turn")
                }
            }
        }
        if !release.is_empty() {
            match inner
                .tasks
                .release_leases(&inner.config.instance_id, release, inner.clock.now())
                .await
            {
                Ok(released) => report.released = released as usize,
                Err(err) => {
                    error!(error = %err, "could not release leases; they expire on their own")
                }
            }
        }
        for entry in entries {
            entry.stop.cancel();
        }
        report
    }

    /// Ends or retries, by their agents' policy, running turns whose lease expired at
    /// or before `cutoff`. Every instance sweeps periodically; the conditional updates
    /// in the store let exactly one sweep act on each turn.
    pub async fn sweep(&self, cutoff: DateTime<Utc>) -> Result<SweepReport, StoreError> {
        let inner = &self.inner;
        let mut report = SweepReport::default();
        let mut policies: HashMap<AgentId, TurnPolicy> = HashMap::new();
        // The sweep walks the expired turns once, in id order: a turn it takes over
        // gets a fresh lease and is never met again by the same sweep.
        let mut after = None;
        loop {
            let expired = inner
                .tasks
                .expired_turns(cutoff, after, SWEEP_BATCH)
                .await?;
            let Some(last) = expired.last() else { break };
            after = Some(last.turn_id);
            let full = expired.len() as u32 == SWEEP_BATCH;
            let mut retry = Vec::new();
            let mut fail = Vec::new();
            for turn in expired {
                // A turn this process plays is never swept here, even if its lease ran
                // out while the process could not renew it (paused, or the database
                // was away): the next renewal takes it back, or finds it lost and
                // stops the play. Taking it over would play it twice at once.
                if inner.plays(turn.turn_id) {
                    continue;
                }
                let policy = match policies.get(&turn.agent_id) {
                    Some(policy) => *policy,
                    None => {
                        let policy = inner.policy_of(turn.agent_id).await;
                        policies.insert(turn.agent_id, policy);
                        policy
                    }
                };
                if policy.retries_after(turn.attempt) {
                    retry.push(turn);
                } else {
                    fail.push(turn);
                }
            }
            report.retried += self.retry_expired(retry, cutoff).await?;
            report.failed += inner.fail_expired(fail, cutoff).await?;
            if !full {
                break;
            }
        }
        report.unanswered = self.end_unanswered(cutoff).await?;
        report.queues = self.start_stalled_queues().await?;
        Ok(report)
    }

    /// Takes over these expired turns in one store call and plays each again here.
    async fn retry_expired(
        &self,
        turns: Vec<ExpiredTurn>,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        if turns.is_empty() {
            return Ok(0);
        }
        let inner = &self.inner;
        let now = inner.clock.now();
        let take = TakeOver {
            turns: turns.iter().map(|t| t.turn_id).collect(),
            expired_by: cutoff,
            lease: inner.lease_from(now),
            now,
        };
        let taken: HashMap<TurnId, u32> = inner
            .tasks
            .take_over_turns(take)
            .await?
            .into_iter()
            .collect();
        for turn in turns {
            let Some(&attempt) = taken.get(&turn.turn_id) else {
                continue;
            };
            info!(task_id = %turn.task_id, turn_id = %turn.turn_id, attempt, previous_owner = ?turn.owner, "retrying an interrupted turn");
            inner.notifier.task_changed(turn.task_id);
            self.spawn(StartedTurn {
                agent_id: turn.agent_id,
                task_id: turn.task_id,
                turn_id: turn.turn_id,
                attempt,
            });
        }
        Ok(taken.len())
    }

    /// Starts and plays the next turn of queues nothing else will start.
    async fn start_stalled_queues(&self) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now();
        let Some(lease) = inner.next_lease(now) else {
            return Ok(0);
        };
        let started = inner
            .tasks
            .start_stalled_queues(lease, now, SWEEP_BATCH)
            .await?;
        for turn in &started {
            info!(task_id = %turn.task_id, turn_id = %turn.turn_id, "started a stalled queue's next turn");
            inner.notifier.task_changed(turn.task_id);
            self.spawn(*turn);
        }
        Ok(started.len())
    }

    /// Fails the turns whose tool calls were due at or before `now` and are still
    /// unanswered. (`now` is this instance's clock, also on SQLite's start-up sweep.)
    async fn end_unanswered(&self, cutoff: DateTime<Utc>) -> Result<usize, StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now().min(cutoff);
        let mut ended = 0;
        for (task_id, turn_id) in inner.tasks.overdue_tool_calls(now, SWEEP_BATCH).await? {
            let finish = FinishTurn {
                task_id,
                turn_id,
                outcome: TurnOutcome::failed(
                    "tool_response_timeout",
                    "the client did not answer the turn's tool calls in time",
                ),
                output: Vec::new(),
                usage: None,
                guard: LeaseGuard::AnswersDueBy(now),
                now,
                next: inner.next_lease(now),
            };
            if let Some(end) = inner.tasks.finish_turn(finish).await? {
                telemetry::turn_ended(TurnStatus::Failed, "unanswered", None);
                info!(%task_id, %turn_id, "ended a turn whose tool calls went unanswered");
                inner.ended_here(task_id, end);
                ended += 1;
            }
        }
        Ok(ended)
    }
}

/// The outcome of a turn whose instance stopped playing it.
fn interrupted(why: &str) -> TurnOutcome {
    TurnOutcome::failed("turn_interrupted", format!("{why}; send the message again"))
}

/// Renews this executor's leases every third of their lifetime until the executor is
/// dropped; a turn whose lease could not be renewed was ended or taken elsewhere and
/// is stopped here.
async fn keep_leases(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(inner) => (inner.config.lease_ttl / 3).max(Duration::from_millis(10)),
        None => return,
    };
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        inner.renew_leases().await;
    }
}

impl Inner {
    /// Hands a committed turn over to be played in the background (see
    /// [`TurnExecutor::spawn`]).
    fn spawn(self: &Arc<Self>, turn: StartedTurn) {
        let inner = self.clone();
        let Some((in_flight, stop)) = InFlight::enter(&inner.in_flight, turn) else {
            error!(task_id = %turn.task_id, turn_id = %turn.turn_id, attempt = turn.attempt, "the turn is already playing here; not playing it twice");
            return;
        };
        let span = info_span!("turn", task_id = %turn.task_id, turn_id = %turn.turn_id, attempt = turn.attempt);
        self.handle.spawn(
            async move {
                let _in_flight = in_flight;
                inner.execute(turn, stop).await;
            }
            .instrument(span),
        );
    }

    /// After this process ended a turn of `task`: tells the task's watchers, and plays
    /// the turn the end started from the task's queue, if it started one.
    fn ended_here(self: &Arc<Self>, task: TaskId, ended: Ended) {
        self.notifier.task_changed(task);
        if let Some(next) = ended.next {
            info!(task_id = %next.task_id, turn_id = %next.turn_id, "starting the next queued message's turn");
            self.spawn(next);
        }
    }

    /// The lease a turn's end starts its task's next queued turn under: none while
    /// this process stops (the queue is then left to a sweep).
    fn next_lease(&self, now: DateTime<Utc>) -> Option<Lease> {
        match self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            true => None,
            false => Some(self.lease_from(now)),
        }
    }

    fn lease_from(&self, now: DateTime<Utc>) -> Lease {
        let ttl = chrono::Duration::from_std(self.config.lease_ttl)
            .unwrap_or(chrono::Duration::seconds(20));
        Lease {
            owner: self.config.instance_id.clone(),
            expires_at: now + ttl,
        }
    }

    /// The right to write `turn` as this executor plays it.
    fn holder(&self, turn: StartedTurn) -> Holder {
        Holder {
            owner: self.config.instance_id.clone(),
            attempt: turn.attempt,
        }
    }

    /// Whether this executor holds the turn (waiting for a slot or playing).
    fn plays(&self, turn: TurnId) -> bool {
        self.in_flight.borrow().contains_key(&turn)
    }

    /// Ends these expired turns `failed` with `turn_interrupted`, in one store call.
    async fn fail_expired(
        self: &Arc<Self>,
        turns: Vec<ExpiredTurn>,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        if turns.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let finishes: Vec<FinishTurn> = turns
            .iter()
            .map(|turn| FinishTurn {
                task_id: turn.task_id,
                turn_id: turn.turn_id,
                outcome: interrupted(&format!(
                    "the instance playing the turn stopped or lost contact before the turn ended (attempt {})",
                    turn.attempt
                )),
                output: Vec::new(),
                usage: None,
                guard: LeaseGuard::ExpiredBy(cutoff),
                now,
                next: self.next_lease(now),
            })
            .collect();
        // A page is ended in a few transactions side by side: on PostgreSQL each turn's
        // end is a handful of round trips, and a pool has connections to spare.
        let mut chunks = tokio::task::JoinSet::new();
        for (n, chunk) in finishes.chunks(FINISH_CHUNK).enumerate() {
            let (tasks, chunk) = (self.tasks.clone(), chunk.to_vec());
            chunks.spawn(async move { (n * FINISH_CHUNK, tasks.finish_turns(chunk).await) });
        }
        let mut ended = vec![None; turns.len()];
        while let Some(joined) = chunks.join_next().await {
            let (start, result) =
                joined.map_err(|join| StoreError::internal(format!("ending turns: {join}")))?;
            for (i, done) in result?.into_iter().enumerate() {
                ended[start + i] = done;
            }
        }
        let mut failed = 0;
        for (turn, ended) in turns.iter().zip(ended) {
            if let Some(end) = ended {
                telemetry::turn_ended(TurnStatus::Failed, "swept", None);
                warn!(task_id = %turn.task_id, turn_id = %turn.turn_id, previous_owner = ?turn.owner, "ended an interrupted turn");
                self.ended_here(turn.task_id, end);
                failed += 1;
            }
        }
        Ok(failed)
    }

    /// Runs a write of a playing turn, trying again with backoff (50 ms doubling to
    /// 1 s) while it fails — a database restarting, a connection cut — for as long as
    /// a lease lasts from the first failure. A write either commits whole or not at
    /// all, and its guard refuses it once the turn was ended or taken elsewhere, so
    /// trying again is safe; past the lease another instance may rightly have taken
    /// the turn over.
    async fn retrying<T, Fut>(
        &self,
        what: &str,
        mut write: impl FnMut() -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let give_up = tokio::time::Instant::now() + self.config.lease_ttl;
        let mut pause = RETRY_FIRST_PAUSE;
        loop {
            match write().await {
                Ok(done) => return Ok(done),
                Err(err) if tokio::time::Instant::now() + pause < give_up => {
                    warn!(error = %err, retry_in_ms = pause.as_millis() as u64, "could not {what}; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX_PAUSE);
                }
                Err(err) => return Err(err),
            }
        }
    }

    fn stop(&self, turn: TurnId) -> bool {
        match self.in_flight.borrow().get(&turn) {
            Some(entry) => {
                entry.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// The agent's turn policy; the default one if it cannot be read (an agent that
    /// vanished, a database that is down).
    async fn policy_of(&self, agent: AgentId) -> TurnPolicy {
        match self.agents.get_agent(agent).await {
            Ok(Some(agent)) => agent.policy,
            Ok(None) => TurnPolicy::default(),
            Err(err) => {
                warn!(agent_id = %agent, error = %err, "could not read the agent's policy; using the default");
                TurnPolicy::default()
            }
        }
    }

    async fn renew_leases(&self) {
        let held: Vec<(TurnId, u32)> = self
            .in_flight
            .borrow()
            .values()
            .map(|entry| (entry.turn.turn_id, entry.turn.attempt))
            .collect();
        if held.is_empty() {
            return;
        }
        let lease = self.lease_from(self.clock.now());
        match self
            .tasks
            .renew_leases(&lease.owner, held.clone(), lease.expires_at)
            .await
        {
            Ok(renewed) => {
                let renewed: std::collections::HashSet<TurnId> = renewed.into_iter().collect();
                for (turn, _) in held.into_iter().filter(|(t, _)| !renewed.contains(t)) {
                    if self.stop(turn) {
                        warn!(turn_id = %turn, "lost the lease of a turn (ended or taken over elsewhere); stopped playing it");
                    }
                }
            }
            // The leases run on; the next tick tries again well before they expire.
            Err(err) => warn!(error = %err, "could not renew turn leases"),
        }
    }

    async fn execute(self: &Arc<Self>, turn: StartedTurn, stop: CancellationToken) {
        // The semaphore is never closed, so acquiring can only wait; a turn ended
        // while it waits is never played.
        let _permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = stop.cancelled() => return,
        };
        let playing = std::time::Instant::now();
        let (outcome, usage, output) = match self.play(turn, &stop).await {
            Played::Ended(outcome, usage, output) => (outcome, usage, output),
            Played::Stopped => {
                info!("the turn was ended elsewhere; stopped playing it");
                return;
            }
        };
        let status = outcome.status();
        let now = self.clock.now();
        if let TurnOutcome::Failed(err) = &outcome {
            warn!(code = %err.code, message = %err.message, "turn failed");
        }
        let finish = FinishTurn {
            task_id: turn.task_id,
            turn_id: turn.turn_id,
            outcome,
            output,
            usage,
            guard: LeaseGuard::Holder(self.holder(turn)),
            now,
            next: self.next_lease(now),
        };
        let ended = self
            .retrying("record the end of the turn", || {
                self.tasks.finish_turn(finish.clone())
            })
            .await;
        match ended {
            Ok(Some(end)) => {
                info!(%status, "turn ended");
                telemetry::turn_ended(status, "played", Some(playing.elapsed()));
                self.ended_here(turn.task_id, end);
            }
            Ok(None) => info!("turn had already ended; its output was discarded"),
            Err(err) => {
                error!(error = %err, "could not record the end of the turn while its lease lasted; a sweep ends it by its agent's policy")
            }
        }
    }

    /// Loads what the turn needs: its agent and the history the runner sees. Every
    /// problem becomes the turn's outcome.
    async fn prepare(&self, turn: StartedTurn) -> Result<(Agent, TurnInput), TurnOutcome> {
        let agent = match self.agents.get_agent(turn.agent_id).await {
            Ok(Some(agent)) => agent,
            Ok(None) => {
                return Err(TurnOutcome::failed(
                    "agent_not_found",
                    format!("agent {} no longer exists", turn.agent_id),
                ));
            }
            Err(err) => {
                return Err(TurnOutcome::failed(
                    "storage_unavailable",
                    format!("could not load the agent: {err}"),
                ));
            }
        };
        let TurnHistory {
            task,
            metadata,
            mut history,
            files,
        } = match self.tasks.load_turn_input(turn.task_id, turn.turn_id).await {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(TurnOutcome::failed(
                    "task_not_found",
                    "the task no longer exists",
                ));
            }
            Err(err) => {
                return Err(TurnOutcome::failed(
                    "storage_unavailable",
                    format!("could not load the history: {err}"),
                ));
            }
        };
        // The runner sees the conversation up to this turn's input, never output of
        // this turn recorded by an earlier attempt.
        history.retain(|m| m.turn_id != turn.turn_id || m.role != Role::Assistant);
        let input = TurnInput {
            agent: agent.clone(),
            task,
            turn_id: turn.turn_id,
            attempt: turn.attempt,
            metadata,
            history,
            files,
        };
        Ok((agent, input))
    }

    /// Plays the turn and returns how it ended. Never fails: every problem becomes the
    /// turn's error.
    async fn play(&self, turn: StartedTurn, stop: &CancellationToken) -> Played {
        let (agent, input) = match self.prepare(turn).await {
            Ok(prepared) => prepared,
            Err(outcome) => return Played::Ended(outcome, None, Vec::new()),
        };
        let Some(runner) = self.runners.get(&agent.runner.kind) else {
            return Played::Ended(
                TurnOutcome::failed(
                    "runner_not_found",
                    format!(
                        "no runner of kind {:?} is registered in this server",
                        agent.runner.kind
                    ),
                ),
                None,
                Vec::new(),
            );
        };
        let timeout = agent.policy.turn_timeout();
        let deadline = tokio::time::Instant::now() + timeout;

        let (mut sink, mut items) = TurnSink::channel(SINK_CAPACITY);
        // An inbox only for a runner that takes messages mid-turn.
        let mut inbox_requests = None;
        if runner.takes_messages(&agent.runner.config) {
            let (inbox, requests) = tokio::sync::mpsc::channel(1);
            sink = sink.with_inbox(inbox);
            inbox_requests = Some(requests);
        }
        // The runner gets its own task so that a panic in it is caught as a JoinError
        // instead of taking the executor (and the turn's ending) down with it.
        let mut run = self
            .handle
            .spawn(async move { runner.run(input, sink).await });
        let mut batch = Coalescer::default();
        let mut flush_at: Option<tokio::time::Instant> = None;
        let joined = loop {
            let flush_now = tokio::select! {
                item = items.recv(), if !items.is_closed() || !items.is_empty() => match item {
                    Some(item) => {
                        flush_at.get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_INTERVAL);
                        batch.push(item)
                    }
                    None => false,
                },
                _ = sleep_until_some(flush_at) => true,
                Some(reply) = recv_some(&mut inbox_requests) => {
                    match self.answer_inbox(turn, &mut items, &mut batch, &mut flush_at).await {
                        Ok(delivered) => {
                            let _ = reply.send(delivered);
                        }
                        Err(played) => {
                            run.abort();
                            return played;
                        }
                    }
                    false
                }
                joined = &mut run => break Some(joined),
                _ = stop.cancelled() => {
                    // Ended elsewhere: whatever the runner still produces is discarded.
                    run.abort();
                    return Played::Stopped;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    // Timed out: the partial output is kept, the runner is dropped.
                    run.abort();
                    break None;
                }
            };
            if flush_now {
                flush_at = None;
                if let Err(played) = self.flush(turn, &mut batch).await {
                    run.abort();
                    return played;
                }
            }
        };
        // Whatever the runner pushed before it returned (or timed out) is recorded
        // with the end, in the same write: a timed-out turn keeps its partial text,
        // and a turn that answered within one flush interval costs one write.
        while let Ok(item) = items.try_recv() {
            batch.push(item);
        }
        let outcome = match joined {
            None => TurnOutcome::failed(
                "turn_timeout",
                format!(
                    "the turn ran longer than the agent's limit of {} ms and was stopped",
                    agent.policy.turn_timeout_ms
                ),
            ),
            // Tool calls for the client: the task waits for their answers.
            Some(Ok(Ok(()))) if batch.asked_for_tools => TurnOutcome::RequiresAction {
                respond_by: self.clock.now() + self.config.tool_response_timeout,
            },
            Some(Ok(Ok(()))) => TurnOutcome::Completed,
            Some(Ok(Err(err))) => TurnOutcome::Failed(crate::model::TurnError {
                code: err.code,
                message: err.message,
            }),
            Some(Err(join)) if join.is_panic() => TurnOutcome::failed(
                "runner_panicked",
                "the agent's runner crashed; the turn was ended",
            ),
            Some(Err(_)) => TurnOutcome::failed(
                "runner_aborted",
                "the agent's runner was stopped before it finished",
            ),
        };
        Played::Ended(outcome, batch.usage, batch.take())
    }

    /// Answers the runner's request for the messages steered into its turn. Most turns
    /// have none: a read says so, and the batch keeps coalescing. Otherwise what the
    /// runner pushed before asking is recorded first (it comes first in the history),
    /// then the messages are delivered. An error means the turn must stop.
    async fn answer_inbox(
        &self,
        turn: StartedTurn,
        items: &mut tokio::sync::mpsc::Receiver<SinkItem>,
        batch: &mut Coalescer,
        flush_at: &mut Option<tokio::time::Instant>,
    ) -> Result<Vec<Message>, Played> {
        if !self.tasks.has_steered(turn.turn_id).await.unwrap_or(true) {
            return Ok(Vec::new());
        }
        while let Ok(item) = items.try_recv() {
            batch.push(item);
        }
        *flush_at = None;
        self.flush(turn, batch).await?;
        self.take_steered(turn).await
    }

    /// Delivers the messages steered into the turn. An error means the turn must stop
    /// (it was ended or taken elsewhere).
    async fn take_steered(&self, turn: StartedTurn) -> Result<Vec<Message>, Played> {
        let taken = self
            .retrying("deliver messages into the turn", || {
                let now = self.clock.now();
                self.tasks.take_steered(
                    turn.agent_id,
                    turn.task_id,
                    turn.turn_id,
                    turn.attempt,
                    now,
                )
            })
            .await;
        match taken {
            Ok(Some(delivered)) => {
                if !delivered.is_empty() {
                    info!(count = delivered.len(), "delivered messages into the turn");
                    self.notifier.task_changed(turn.task_id);
                }
                Ok(delivered)
            }
            Ok(None) => Err(Played::Stopped),
            Err(err) => {
                // The messages stay where they are: queued when the turn ends.
                warn!(error = %err, "could not deliver messages into the turn");
                Ok(Vec::new())
            }
        }
    }

    /// Records the batched output of a running turn. An error means the turn must
    /// stop: its output can no longer be stored (ended with that outcome), or it was
    /// ended or taken elsewhere (stopped; whatever comes after is discarded).
    async fn flush(&self, turn: StartedTurn, batch: &mut Coalescer) -> Result<(), Played> {
        if batch.is_empty() {
            return Ok(());
        }
        let output = RecordOutput {
            task_id: turn.task_id,
            turn_id: turn.turn_id,
            holder: self.holder(turn),
            ops: batch.take(),
            batch: batch.taken,
            now: self.clock.now(),
        };
        let recorded = self
            .retrying("record the turn's output", || {
                self.tasks.record_output(output.clone())
            })
            .await;
        match recorded {
            Ok(true) => {
                self.notifier.task_changed(turn.task_id);
                Ok(())
            }
            Ok(false) => Err(Played::Stopped),
            Err(err) => Err(Played::Ended(
                TurnOutcome::failed(
                    "storage_unavailable",
                    format!("the turn's output could not be stored: {err}"),
                ),
                batch.usage,
                Vec::new(),
            )),
        }
    }
}

/// The next value of `receiver`, or never when there is none.
async fn recv_some<T>(receiver: &mut Option<tokio::sync::mpsc::Receiver<T>>) -> Option<T> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The first pause before a failed write of a playing turn is tried again, and the
/// longest.
const RETRY_FIRST_PAUSE: Duration = Duration::from_millis(50);
const RETRY_MAX_PAUSE: Duration = Duration::from_secs(1);

/// Text that waits at most this long before it is stored and streamed.
const FLUSH_INTERVAL: Duration = Duration::from_millis(25);
/// Or until this much text is waiting.
const FLUSH_BYTES: usize = 4096;

/// Batches what a runner pushes into output for the store: adjacent text deltas merge
/// into one, so a model that streams a token per event does not cost a transaction
/// per token. It never reorders or drops anything: the deltas of a message,
/// concatenated, are the message.
#[derive(Debug, Default)]
pub(crate) struct Coalescer {
    ops: Vec<OutputOp>,
    text_bytes: usize,
    /// The runner's latest report of what it used: recorded when the turn ends.
    usage: Option<Usage>,
    /// Whether the runner asked the client to run tools.
    asked_for_tools: bool,
    /// Batches taken so far: the number of the last one, for the store to recognise
    /// a batch written twice.
    taken: u32,
}

impl Coalescer {
    /// Adds an item; returns whether the batch should be stored now.
    pub(crate) fn push(&mut self, item: SinkItem) -> bool {
        match item {
            SinkItem::TextDelta(delta) => {
                self.text_bytes += delta.len();
                match self.ops.last_mut() {
                    Some(OutputOp::TextDelta(text)) => text.push_str(&delta),
                    _ => self.ops.push(OutputOp::TextDelta(delta)),
                }
                self.text_bytes >= FLUSH_BYTES
            }
            // A whole message is worth showing at once.
            SinkItem::Message(content) => {
                self.asked_for_tools |= matches!(content, Content::ToolRequest(_));
                self.ops.push(OutputOp::Message(content));
                true
            }
            SinkItem::Usage(usage) => {
                self.usage = Some(usage);
                false
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<OutputOp> {
        self.text_bytes = 0;
        self.taken += 1;
        std::mem::take(&mut self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Content, DataContent};

    #[test]
    fn deltas_merge_in_order_and_a_message_is_a_flush_point() {
        let mut batch = Coalescer::default();
        assert!(!batch.push(SinkItem::TextDelta("hel".into())));
        assert!(!batch.push(SinkItem::TextDelta("lo".into())));
        let data = Content::Data(DataContent {
            data: serde_json::Map::new(),
        });
        assert!(batch.push(SinkItem::Message(data.clone())));
        assert!(!batch.push(SinkItem::TextDelta("bye".into())));
        assert_eq!(
            batch.take(),
            vec![
                OutputOp::TextDelta("hello".into()),
                OutputOp::Message(data),
                OutputOp::TextDelta("bye".into())
            ]
        );
        assert!(batch.is_empty());
    }

    #[test]
    fn enough_waiting_text_is_a_flush_point() {
        let mut batch = Coalescer::default();
        assert!(!batch.push(SinkItem::TextDelta("x".repeat(FLUSH_BYTES - 1))));
        assert!(batch.push(SinkItem::TextDelta("y".into())));
        batch.take();
        assert!(
            !batch.push(SinkItem::TextDelta("z".into())),
            "the count starts again"
        );
    }
}
