//! PostgreSQL's batches: concurrent writes of one kind — new plain tasks, turns' ends —
//! sent to the database together. One task per kind takes whatever writes are queued
//! (up to [`MAX_BATCH`]) and writes them at once: new tasks in one statement, turns'
//! ends in one transaction. A statement's and a transaction's fixed costs (a round trip
//! each, the executor's start and end, a commit and its WAL flush) are then paid once
//! per batch, not once per write.
//!
//! It never waits for more work: a write sent while fewer than [`IN_FLIGHT`] batches
//! are being written goes at once (alone, if nothing else is queued); writes sent
//! while that many are being written wait for one of them and go together. Each
//! caller is answered after its batch committed. A batch the database refused (one
//! write of it failing, say a new task's unknown agent, or a deadlock) kept nothing,
//! and each of its writes is tried again alone, so one write's failure is its own. A
//! batch whose connection failed may or may not have committed: each of its callers
//! gets the error, as a write of its own would have.

use std::fmt::Display;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_domain::{Claim, ClaimError, Ended, FinishTurn, NewTask, StoreError, TurnHistory};
use diesel_async::pooled_connection::deadpool::Pool;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{debug, error};

use crate::announce::{self, Announcer};
use crate::backend::PgConn;
use crate::error::from_pool;
use crate::queries::postgres::{self as q, Failed};

/// At most this many writes go together: bounds the time the first of a batch waits
/// for the last, and the statement's size.
const MAX_BATCH: usize = 64;

/// Batches of one kind being written at once, each on a connection of its own.
const IN_FLIGHT: usize = 3;

/// A kind of write that can go in batches.
pub(crate) trait Kind: Send + Sync + 'static {
    type Input: Send + Sync + 'static;
    type Output: Send + 'static;
    type Error: From<StoreError> + Display + Send + 'static;

    /// One write, as its caller would run it without batches.
    fn alone<'c>(
        conn: &'c mut PgConn,
        input: &'c Self::Input,
    ) -> BoxFuture<'c, Result<Self::Output, Self::Error>>;

    /// Several writes, all kept or none; answers in their order.
    fn together<'c>(
        conn: &'c mut PgConn,
        inputs: &'c [Self::Input],
    ) -> BoxFuture<'c, Together<Self>>;
}

/// What writing a batch together answers: each write's output, or why none was kept.
pub(crate) type Together<K> = Result<Vec<<K as Kind>::Output>, Failed<<K as Kind>::Error>>;

/// New plain tasks (`q::is_plain`): their rows in one statement.
pub(crate) struct NewTasks;

impl Kind for NewTasks {
    type Input = NewTask;
    type Output = (Claim, Option<TurnHistory>);
    type Error = ClaimError;

    fn alone<'c>(
        conn: &'c mut PgConn,
        input: &'c NewTask,
    ) -> BoxFuture<'c, Result<Self::Output, ClaimError>> {
        q::create_task(conn, input).boxed()
    }

    fn together<'c>(conn: &'c mut PgConn, inputs: &'c [NewTask]) -> BoxFuture<'c, Together<Self>> {
        q::create_plain_tasks(conn, inputs).boxed()
    }
}

/// Turns' ends: in one transaction.
pub(crate) struct TurnEnds;

impl Kind for TurnEnds {
    type Input = FinishTurn;
    type Output = Option<Ended>;
    type Error = StoreError;

    fn alone<'c>(
        conn: &'c mut PgConn,
        input: &'c FinishTurn,
    ) -> BoxFuture<'c, Result<Option<Ended>, StoreError>> {
        q::finish_turn(conn, input).boxed()
    }

    fn together<'c>(
        conn: &'c mut PgConn,
        inputs: &'c [FinishTurn],
    ) -> BoxFuture<'c, Together<Self>> {
        q::finish_turns_together(conn, inputs).boxed()
    }
}

struct Job<K: Kind> {
    input: K::Input,
    to: oneshot::Sender<Result<K::Output, K::Error>>,
}

/// What a batcher has done so far: batches written (a write alone is a batch of one)
/// and the writes in them, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchStats {
    pub batches: u64,
    pub writes: u64,
}

#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    writes: AtomicU64,
}

/// The handle writes of kind `K` are sent through. Dropping it ends its task once
/// the writes sent are written.
pub(crate) struct Batcher<K: Kind> {
    sender: mpsc::UnboundedSender<Job<K>>,
    counts: Arc<Counts>,
}

impl<K: Kind> Batcher<K> {
    /// Starts the batcher's task on the current runtime.
    pub(crate) fn spawn(pool: Pool<PgConn>, announcer: Announcer) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run::<K>(pool, announcer, receiver, counts.clone()));
        Batcher { sender, counts }
    }

    pub(crate) fn stats(&self) -> BatchStats {
        BatchStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            writes: self.counts.writes.load(Ordering::Relaxed),
        }
    }

    /// Writes `input` with whatever else is sent meanwhile; answers once it committed.
    pub(crate) async fn write(&self, input: K::Input) -> Result<K::Output, K::Error> {
        let (to, answer) = oneshot::channel();
        self.sender
            .send(Job { input, to })
            .map_err(|_| StoreError::Unavailable("the store is closed".to_owned()))?;
        answer.await.map_err(|_| {
            StoreError::internal("a batched write ended without an answer (see the log)")
        })?
    }
}

async fn run<K: Kind>(
    pool: Pool<PgConn>,
    announcer: Announcer,
    mut receiver: mpsc::UnboundedReceiver<Job<K>>,
    counts: Arc<Counts>,
) {
    let writing = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = receiver.recv().await {
        // Writes queue here while every batch in flight is being written.
        let Ok(permit) = writing.clone().acquire_owned().await else {
            return;
        };
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts
            .writes
            .fetch_add(jobs.len() as u64, Ordering::Relaxed);
        let (pool, announcer) = (pool.clone(), announcer.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut object = match pool.get().await {
                Ok(object) => object,
                Err(err) => {
                    let why = from_pool(err).to_string();
                    for job in jobs {
                        let _ = job
                            .to
                            .send(Err(StoreError::Unavailable(why.clone()).into()));
                    }
                    return;
                }
            };
            let written = announce::collecting(Some(&announcer), write::<K>(&mut object, jobs));
            // A panic drops the batch's answers (its callers get an error), not the
            // task that serves every later batch.
            if AssertUnwindSafe(written).catch_unwind().await.is_err() {
                error!("a batch of writes panicked; its callers were answered with an error");
            }
        });
    }
}

/// Writes the jobs' inputs together (one alone), and answers each.
async fn write<K: Kind>(conn: &mut PgConn, jobs: Vec<Job<K>>) {
    let (inputs, answers): (Vec<K::Input>, Vec<_>) =
        jobs.into_iter().map(|job| (job.input, job.to)).unzip();
    if inputs.len() > 1 {
        match K::together(conn, &inputs).await {
            Ok(outputs) => {
                for (to, output) in answers.into_iter().zip(outputs) {
                    // A caller that stopped waiting no longer needs the answer.
                    let _ = to.send(Ok(output));
                }
                return;
            }
            Err(failed) if failed.rolled_back => {
                let writes = inputs.len();
                debug!(error = %failed.error, writes, "a batch kept nothing: each write goes alone");
            }
            Err(failed) => {
                let why = failed.error.to_string();
                let mut first = Some(failed.error);
                for to in answers {
                    let error = first
                        .take()
                        .unwrap_or_else(|| StoreError::Unavailable(why.clone()).into());
                    let _ = to.send(Err(error));
                }
                return;
            }
        }
    }
    for (input, to) in inputs.iter().zip(answers) {
        let _ = to.send(K::alone(conn, input).await);
    }
}
