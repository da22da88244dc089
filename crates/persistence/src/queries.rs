//! Every query baton runs, written once, in ordinary files split by concern
//! (`claims`, `turns`, `reads`, `events`, `webhooks`, …). Each file is compiled twice,
//! once as a module of `sqlite` and once of `postgres`, so Diesel type-checks each
//! query against each backend: a construct a backend lacks fails to compile instead of
//! failing at run time. A file names its backend only through `super` — the connection
//! type `Conn` and the few things the backends do differently:
//! - on SQLite, a write operation's transaction is a savepoint in the writer's group
//!   transaction (see `group_commit`); on PostgreSQL, it is a transaction;
//! - how an operation's events are written and the task's change announced to other
//!   instances (`write_events`; PostgreSQL: one multi-row `INSERT`, and a `pg_notify`
//!   sent once the operation is over — `crate::announce`; SQLite: a prepared
//!   single-row `INSERT` each, and one process, which announces changes in-process); a
//!   change of an agent or a key (`announce_agents`: PostgreSQL notifies inside the
//!   transaction);
//! - row locks (PostgreSQL: `FOR UPDATE`, `SKIP LOCKED` for concurrent webhook senders;
//!   SQLite's one writer is its own lock).
//!
//! A read of several statements is not a transaction here: SQLite runs every read
//! operation in a read transaction of its own (one snapshot, `SqliteDb::read`); on
//! PostgreSQL, at READ COMMITTED, a transaction would give its statements no common
//! snapshot, only two more round trips.

use baton_domain::{ActiveTurn, FieldError, StoreError};
use diesel::result::Error as DieselError;

use crate::error::from_diesel;

/// Why a transaction body stopped: a database error, or a domain answer that must
/// roll the transaction back.
#[derive(Debug)]
pub(crate) enum TxError {
    Db(DieselError),
    Store(StoreError),
    NotFound,
    /// Busy; `None` when the database's unique index caught a concurrent claim and the
    /// winner is not visible yet.
    Busy(Option<ActiveTurn>),
    /// The idempotency key was first used for another request.
    KeyReused,
    /// A concurrent first use of the same idempotency key committed first: run the
    /// transaction again, and it replays.
    KeyRace,
    /// The agent runs as many turns as it may.
    AtCapacity(u32),
    /// The task's queue is full.
    QueueFull(u32),
    /// The message does not fit the task's state (see `baton_domain::tools`).
    Invalid(Vec<FieldError>),
}

impl From<DieselError> for TxError {
    fn from(err: DieselError) -> Self {
        TxError::Db(err)
    }
}

impl From<StoreError> for TxError {
    fn from(err: StoreError) -> Self {
        TxError::Store(err)
    }
}

impl TxError {
    pub(crate) fn into_store(self) -> StoreError {
        match self {
            TxError::Db(err) => from_diesel(err),
            TxError::Store(err) => err,
            TxError::NotFound => StoreError::internal("row not found"),
            TxError::Busy(_) => StoreError::internal("unexpected busy answer"),
            TxError::KeyReused
            | TxError::KeyRace
            | TxError::AtCapacity(_)
            | TxError::QueueFull(_)
            | TxError::Invalid(_) => StoreError::internal("unexpected claim answer"),
        }
    }
}

/// A transaction's body: an async closure on the connection whose future is `Send`.
/// This is the shape `diesel_async::AsyncConnection::transaction` takes, named here
/// (diesel-async does not export its own name for it) so that each backend's
/// `transaction` can ask for it.
pub(crate) trait TxBody<C, R>:
    AsyncFnOnce(C) -> R + FnOnce(C) -> <Self as TxBody<C, R>>::Fut
{
    type Fut: Future<Output = R> + Send;
}

impl<F, C, Fut, R> TxBody<C, R> for F
where
    F: AsyncFnOnce(C) -> R + FnOnce(C) -> Fut,
    Fut: Future<Output = R> + Send,
{
    type Fut = Fut;
}

// The query files are modules of both: deliberately, see above.
#[allow(clippy::duplicate_mod)]
pub(crate) mod postgres;
#[allow(clippy::duplicate_mod)]
pub(crate) mod sqlite;

/// A turn that is being played.
pub(crate) const RUNNING: &str = "running";
/// A turn that waits for answers to its tool calls.
pub(crate) const REQUIRES_ACTION: &str = "requires_action";
