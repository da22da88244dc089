//! SQLite's one writer, with group commit. A thread owns the write connection; store
//! operations are sent to it whole. It takes whatever operations are queued (up to
//! [`MAX_GROUP`]), runs them in one `BEGIN IMMEDIATE … COMMIT`, each in its own
//! savepoint so a failing one rolls back alone, and answers each caller only once the
//! commit is durable. It never waits for more work: an operation sent to an idle
//! writer is committed on its own at once, and under load many share one `fsync`.
//!
//! Each operation costs one hop (to the writer and back); its statements run on the
//! writer's thread, on a connection whose statements run where they are called
//! ([`OnCallingThread`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use baton_domain::StoreError;
use diesel::connection::AnsiTransactionManager;
use diesel_async::pooled_connection::PoolableConnection;
use diesel_async::{AsyncConnection, TransactionManager};
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tracing::{error, warn};

use crate::backend::SqliteConn;
use crate::error::from_diesel;

/// At most this many operations share one commit: bounds the time the first of a
/// group waits for the last, and the work lost to one failed commit.
const MAX_GROUP: usize = 256;

/// The connection's store operation, run on the writer's thread.
pub(crate) type Op<T, E> =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<T, E>> + Send>;

/// An operation of any result type, as the writer holds it.
trait Job: Send {
    /// Runs the operation in its own savepoint; its answer waits for the commit.
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConn) -> BoxFuture<'c, Box<dyn Answer>>;
    /// Answers without running: the group's transaction could not begin.
    fn refuse(self: Box<Self>, why: &StoreError);
}

struct Pending<T, E> {
    op: Op<T, E>,
    to: oneshot::Sender<Result<T, E>>,
}

impl<T, E> Job for Pending<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    fn run<'c>(self: Box<Self>, conn: &'c mut SqliteConn) -> BoxFuture<'c, Box<dyn Answer>> {
        Box::pin(async move {
            let result = in_transaction(conn, self.op).await;
            Box::new(Reply {
                result,
                to: self.to,
            }) as Box<dyn Answer>
        })
    }

    fn refuse(self: Box<Self>, why: &StoreError) {
        let _ = self.to.send(Err(E::from(copy_of(why))));
    }
}

/// An operation's result, held until its group's commit is known.
trait Answer: Send {
    /// Sends the result, or the commit's failure if the group did not commit: an
    /// operation's answer is never sent before its writes are durable, and never
    /// says it was stored when its group was rolled back.
    fn send(self: Box<Self>, commit: Result<(), &StoreError>);
}

struct Reply<T, E> {
    result: Result<T, E>,
    to: oneshot::Sender<Result<T, E>>,
}

impl<T: Send, E: From<StoreError> + Send> Answer for Reply<T, E> {
    fn send(self: Box<Self>, commit: Result<(), &StoreError>) {
        let result = match commit {
            Ok(()) => self.result,
            Err(failed) => Err(E::from(copy_of(failed))),
        };
        // A caller that stopped waiting no longer needs the answer.
        let _ = self.to.send(result);
    }
}

/// The same error for another caller of a failed group (`StoreError` is not `Clone`:
/// its internal variant holds any error).
fn copy_of(err: &StoreError) -> StoreError {
    match err {
        StoreError::Unavailable(why) => StoreError::Unavailable(why.clone()),
        StoreError::Unwritable(why) => StoreError::Unwritable(why.clone()),
        StoreError::Conflict(why) => StoreError::Conflict(why.clone()),
        StoreError::Internal(why) => StoreError::internal(why.to_string()),
    }
}

/// Counts of the writer's work, for metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriterStats {
    /// Commits (and failed attempts) of groups.
    pub groups: u64,
    /// Operations run in them.
    pub operations: u64,
    /// Operations in the group being written now.
    pub writing: u64,
    /// Operations sent and not yet taken into a group.
    pub waiting: u64,
}

/// The handle operations are sent through. Dropping it ends the thread once the
/// queued operations are written, and waits for that: the connection is closed (and
/// SQLite checkpoints its log into the file) before the store is gone.
pub(crate) struct SqliteWriter {
    jobs: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counts: Arc<Mutex<Counts>>,
    sent: AtomicU64,
}

/// What the writer's thread counts.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    groups: u64,
    operations: u64,
    /// Operations taken into a group, including the one being written.
    taken: u64,
}

impl SqliteWriter {
    /// Starts the writer's thread on `conn`; `reconnect` opens a fresh connection when
    /// a failure leaves this one unusable (a transaction it could not close).
    pub(crate) fn start(
        conn: SqliteConn,
        reconnect: impl Fn() -> Result<SqliteConn, String> + Send + 'static,
    ) -> std::io::Result<SqliteWriter> {
        let (jobs, queue) = mpsc::channel::<Box<dyn Job>>();
        let counts = Arc::new(Mutex::new(Counts::default()));
        let counted = counts.clone();
        let thread = std::thread::Builder::new()
            .name("baton-sqlite-writer".to_owned())
            .spawn(move || write_loop(conn, &queue, &reconnect, &counted))?;
        Ok(SqliteWriter {
            jobs: Some(jobs),
            thread: Some(thread),
            counts,
            sent: AtomicU64::new(0),
        })
    }

    /// Runs `op` on the writer in the next group; answers once that group committed.
    pub(crate) async fn write<T, E>(
        &self,
        op: impl for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let (to, answer) = oneshot::channel();
        let job = Box::new(Pending {
            op: Box::new(op),
            to,
        });
        let stopped = || {
            E::from(StoreError::Unavailable(
                "the SQLite writer stopped".to_owned(),
            ))
        };
        self.sent.fetch_add(1, Ordering::Relaxed);
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send(job).map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    pub(crate) fn stats(&self) -> WriterStats {
        let counts = self.counts.lock().map(|counts| *counts).unwrap_or_default();
        WriterStats {
            groups: counts.groups,
            operations: counts.operations,
            writing: counts.taken.saturating_sub(counts.operations),
            waiting: self
                .sent
                .load(Ordering::Relaxed)
                .saturating_sub(counts.taken),
        }
    }
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            // A panic on the writer was already logged; nothing is left to do with it.
            let _ = thread.join();
        }
    }
}

/// Runs one operation in a transaction of its own: on the writer, a savepoint of the
/// group's transaction, released if it succeeds, rolled back (its writes undone, the
/// group's others kept) if not; on a reader, a read transaction (one snapshot).
pub(crate) async fn in_transaction<T, E: From<StoreError>>(
    conn: &mut SqliteConn,
    op: Op<T, E>,
) -> Result<T, E> {
    type Transactions = <SqliteConn as AsyncConnection>::TransactionManager;
    Transactions::begin_transaction(conn)
        .await
        .map_err(|err| E::from(from_diesel(err)))?;
    match op(conn).await {
        Ok(value) => {
            Transactions::commit_transaction(conn)
                .await
                .map_err(|err| E::from(from_diesel(err)))?;
            Ok(value)
        }
        Err(err) => {
            // If even the rollback fails, the transaction manager is broken and the
            // group's commit is refused: every operation of the group is answered
            // with that failure.
            let _ = Transactions::rollback_transaction(conn).await;
            Err(err)
        }
    }
}

fn write_loop(
    mut conn: SqliteConn,
    queue: &mpsc::Receiver<Box<dyn Job>>,
    reconnect: &dyn Fn() -> Result<SqliteConn, String>,
    counts: &Mutex<Counts>,
) {
    while let Ok(first) = queue.recv() {
        let mut group = Vec::with_capacity(16);
        group.push(first);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let operations = group.len() as u64;
        if let Ok(mut counts) = counts.lock() {
            counts.taken += operations;
        }
        // Counted before anyone is answered, so a caller that saw its answer sees its
        // group counted.
        let done = || {
            if let Ok(mut counts) = counts.lock() {
                counts.groups += 1;
                counts.operations += operations;
            }
        };
        let written = std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_now(write_group(&mut conn, group, &done))
        }));
        if written.is_err() {
            // The group's answers were dropped: their callers see the writer's failure.
            done();
            error!("an operation panicked on the SQLite writer; its group was abandoned");
        }
        // A panic or a failed commit may have left a transaction open: a connection
        // that cannot be trusted is replaced (closing it rolls back what it held).
        if conn.is_broken() {
            conn = loop {
                match reconnect() {
                    Ok(fresh) => break fresh,
                    Err(why) => {
                        warn!(%why, "reopening the SQLite write connection failed; retrying");
                        std::thread::sleep(std::time::Duration::from_millis(200));
                    }
                }
            };
        }
    }
}

/// Runs a group in one transaction and answers its operations.
async fn write_group(conn: &mut SqliteConn, group: Vec<Box<dyn Job>>, done: &dyn Fn()) {
    let begun = conn
        .spawn_blocking(|inner| {
            AnsiTransactionManager::begin_transaction_sql(inner, "BEGIN IMMEDIATE")
        })
        .await;
    if let Err(err) = begun {
        let failed = from_diesel(err);
        done();
        // Nothing ran: each caller is told why.
        for job in group {
            job.refuse(&failed);
        }
        return;
    }
    let mut answers = Vec::with_capacity(group.len());
    for job in group {
        answers.push(job.run(conn).await);
    }
    type Transactions = <SqliteConn as AsyncConnection>::TransactionManager;
    let committed = Transactions::commit_transaction(conn).await;
    done();
    match committed {
        Ok(()) => {
            for answer in answers {
                answer.send(Ok(()));
            }
        }
        Err(err) => {
            let failed = from_diesel(err);
            if conn.is_broken() {
                let _ = Transactions::rollback_transaction(conn).await;
            }
            for answer in answers {
                answer.send(Err(&failed));
            }
        }
    }
}

/// Polls a future that never waits (every statement runs on the calling thread) to
/// its end.
pub(crate) fn run_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::yield_now();
    }
}
