//! The turn executor: runs accepted turns in the background, with a bounded number at
//! once, and always ends them.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, error, info, info_span, warn};

use crate::error::ServiceError;
use crate::model::{
    AgentId, FinishTurn, OutputOp, RecordOutput, TaskId, TurnError, TurnId, TurnOutcome, TurnStatus,
};
use crate::ports::{AgentStore, Clock, TaskNotifier, TaskStore};
use crate::runner::{RunnerRegistry, SinkItem, TurnInput, TurnSink};

/// Buffered sink items per turn before the runner waits for the executor.
const SINK_CAPACITY: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorConfig {
    /// Turns played at once by this process; more accepted turns wait for a slot.
    pub max_concurrent_turns: usize,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_concurrent_turns: 64,
        }
    }
}

/// A turn that was claimed and committed, ready to be played.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StartedTurn {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    pub turn_id: TurnId,
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
            .field("runners", &self.inner.runners)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

struct Inner {
    tasks: Arc<dyn TaskStore>,
    agents: Arc<dyn AgentStore>,
    runners: RunnerRegistry,
    notifier: Arc<dyn TaskNotifier>,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    handle: Handle,
    /// Turns handed to this executor and not yet ended (waiting or playing).
    in_flight: watch::Sender<HashMap<TurnId, StartedTurn>>,
}

/// Holds a turn in the in-flight set from hand-over to its end, even if its task panics.
struct InFlight {
    set: watch::Sender<HashMap<TurnId, StartedTurn>>,
    turn: TurnId,
}

impl InFlight {
    fn enter(set: &watch::Sender<HashMap<TurnId, StartedTurn>>, turn: StartedTurn) -> Self {
        set.send_modify(|turns| {
            turns.insert(turn.turn_id, turn);
        });
        InFlight {
            set: set.clone(),
            turn: turn.turn_id,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set.send_modify(|turns| {
            turns.remove(&self.turn);
        });
    }
}

impl TurnExecutor {
    /// An executor that spawns on `handle` (keep it the multi-thread runtime's).
    pub fn new(
        tasks: Arc<dyn TaskStore>,
        agents: Arc<dyn AgentStore>,
        runners: RunnerRegistry,
        notifier: Arc<dyn TaskNotifier>,
        clock: Arc<dyn Clock>,
        config: ExecutorConfig,
        handle: Handle,
    ) -> Self {
        TurnExecutor {
            inner: Arc::new(Inner {
                tasks,
                agents,
                runners,
                notifier,
                clock,
                permits: Arc::new(Semaphore::new(config.max_concurrent_turns.max(1))),
                handle,
                in_flight: watch::channel(HashMap::new()).0,
            }),
        }
    }

    pub fn runners(&self) -> &RunnerRegistry {
        &self.inner.runners
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.inner.clock.as_ref()
    }

    /// Runs `work` to completion on the executor's runtime even if the caller stops
    /// waiting. A client that disconnects drops its request's future; the claim and
    /// its commit, and the hand-over of the turn, must happen anyway.
    pub(crate) async fn detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, ServiceError>> + Send + 'static,
    ) -> Result<T, ServiceError> {
        self.inner
            .handle
            .spawn(work)
            .await
            .map_err(|join| ServiceError::Internal(Box::new(join)))?
    }

    /// Hands a committed turn over to be played in the background.
    pub fn spawn(&self, turn: StartedTurn) {
        let inner = self.inner.clone();
        let in_flight = InFlight::enter(&inner.in_flight, turn);
        let span = info_span!("turn", task_id = %turn.task_id, turn_id = %turn.turn_id);
        self.inner.handle.spawn(
            async move {
                let _in_flight = in_flight;
                inner.execute(turn).await;
            }
            .instrument(span),
        );
    }

    /// Turns handed over and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.borrow().len()
    }

    /// Waits until no turn is in flight or `grace` has passed; returns how many are
    /// still in flight.
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        let mut watcher = self.inner.in_flight.subscribe();
        let _ = tokio::time::timeout(grace, watcher.wait_for(HashMap::is_empty)).await;
        self.in_flight()
    }

    /// Ends every turn this executor still holds as failed with `error`, and returns
    /// how many it ended. Used when stopping: only this process's turns are touched,
    /// never those of another instance. A runner still going afterwards finds its turn
    /// ended, and its late output is discarded.
    pub async fn interrupt_unfinished(&self, error: TurnError) -> usize {
        let turns: Vec<StartedTurn> = self.inner.in_flight.borrow().values().copied().collect();
        let mut ended = 0;
        for turn in turns {
            let finish = FinishTurn {
                task_id: turn.task_id,
                turn_id: turn.turn_id,
                outcome: TurnOutcome::Failed(error.clone()),
                messages: Vec::new(),
                now: self.inner.clock.now(),
            };
            match self.inner.tasks.finish_turn(finish).await {
                Ok(true) => {
                    ended += 1;
                    self.inner.notifier.task_changed(turn.task_id);
                }
                Ok(false) => {}
                Err(err) => {
                    error!(turn_id = %turn.turn_id, error = %err, "could not end an unfinished turn")
                }
            }
        }
        ended
    }
}

impl Inner {
    async fn execute(&self, turn: StartedTurn) {
        // The semaphore is never closed, so acquiring can only wait.
        let Ok(_permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let outcome = self.play(turn).await;
        let status = match &outcome {
            TurnOutcome::Completed => TurnStatus::Completed,
            TurnOutcome::Failed(_) => TurnStatus::Failed,
        };
        if let TurnOutcome::Failed(err) = &outcome {
            warn!(code = %err.code, message = %err.message, "turn failed");
        }
        let finish = FinishTurn {
            task_id: turn.task_id,
            turn_id: turn.turn_id,
            outcome,
            messages: Vec::new(),
            now: self.clock.now(),
        };
        match self.tasks.finish_turn(finish).await {
            Ok(true) => {
                info!(%status, "turn ended");
                self.notifier.task_changed(turn.task_id);
            }
            Ok(false) => info!("turn had already ended; its output was discarded"),
            Err(err) => error!(error = %err, "could not record the end of the turn"),
        }
    }

    /// Plays the turn and returns how it ended with what it produced. Never fails:
    /// every problem becomes the turn's error.
    async fn play(&self, turn: StartedTurn) -> TurnOutcome {
        let failed = |code: &str, message: String| {
            TurnOutcome::Failed(TurnError {
                code: code.to_owned(),
                message,
            })
        };
        let agent = match self.agents.get_agent(turn.agent_id).await {
            Ok(Some(agent)) => agent,
            Ok(None) => {
                return failed(
                    "agent_not_found",
                    format!("agent {} no longer exists", turn.agent_id),
                );
            }
            Err(err) => {
                return failed(
                    "storage_unavailable",
                    format!("could not load the agent: {err}"),
                );
            }
        };
        let Some(runner) = self.runners.get(&agent.runner.kind) else {
            return failed(
                "runner_not_found",
                format!(
                    "no runner of kind {:?} is registered in this server",
                    agent.runner.kind
                ),
            );
        };
        let (task, history) = match self.tasks.load_turn_input(turn.task_id).await {
            Ok(Some(found)) => found,
            Ok(None) => return failed("task_not_found", "the task no longer exists".to_owned()),
            Err(err) => {
                return failed(
                    "storage_unavailable",
                    format!("could not load the history: {err}"),
                );
            }
        };
        let input = TurnInput {
            agent,
            task,
            turn_id: turn.turn_id,
            history,
        };

        let (sink, mut items) = TurnSink::channel(SINK_CAPACITY);
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
                joined = &mut run => break joined,
            };
            if flush_now {
                flush_at = None;
                if let Err(outcome) = self.flush(turn, &mut batch).await {
                    run.abort();
                    return outcome;
                }
            }
        };
        // Whatever the runner pushed before it returned is recorded before the end.
        while let Ok(item) = items.try_recv() {
            batch.push(item);
        }
        if let Err(outcome) = self.flush(turn, &mut batch).await {
            return outcome;
        }
        match joined {
            Ok(Ok(())) => TurnOutcome::Completed,
            Ok(Err(err)) => TurnOutcome::Failed(TurnError {
                code: err.code,
                message: err.message,
            }),
            Err(join) if join.is_panic() => TurnOutcome::Failed(TurnError {
                code: "runner_panicked".to_owned(),
                message: "the agent's runner crashed; the turn was ended".to_owned(),
            }),
            Err(_) => TurnOutcome::Failed(TurnError {
                code: "runner_aborted".to_owned(),
                message: "the agent's runner was stopped before it finished".to_owned(),
            }),
        }
    }

    /// Records the batched output of a running turn. An error means the turn must
    /// stop, with this outcome: its output can no longer be stored, or it was ended
    /// elsewhere (whatever comes after is discarded).
    async fn flush(&self, turn: StartedTurn, batch: &mut Coalescer) -> Result<(), TurnOutcome> {
        if batch.is_empty() {
            return Ok(());
        }
        let output = RecordOutput {
            task_id: turn.task_id,
            turn_id: turn.turn_id,
            ops: batch.take(),
            now: self.clock.now(),
        };
        match self.tasks.record_output(output).await {
            Ok(true) => {
                self.notifier.task_changed(turn.task_id);
                Ok(())
            }
            Ok(false) => Err(TurnOutcome::Failed(TurnError {
                code: "turn_ended".to_owned(),
                message: "the turn was ended elsewhere; later output was discarded".to_owned(),
            })),
            Err(err) => Err(TurnOutcome::Failed(TurnError {
                code: "storage_unavailable".to_owned(),
                message: format!("the turn's output could not be stored: {err}"),
            })),
        }
    }
}

/// Waits until `at`, or forever when there is nothing to wait for.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

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
                self.ops.push(OutputOp::Message(content));
                true
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn take(&mut self) -> Vec<OutputOp> {
        self.text_bytes = 0;
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
