//! The seam where database errors become the domain's [`StoreError`]s. Nothing of
//! Diesel or deadpool crosses it.

use baton_domain::StoreError;
use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Errors opening a database or migrating it.
#[derive(Debug, thiserror::Error)]
pub enum PersistenceError {
    #[error(
        "unsupported database URL {0:?}: use sqlite://PATH (or a plain file path) for the embedded database, or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    #[error("could not open the database: {0}")]
    Connect(String),
    #[error("could not apply migrations: {0}")]
    Migrate(String),
    #[error(
        "another baton server is already serving the SQLite database {database} (it holds {lock}): the embedded database serves one process. Stop that server first, or use PostgreSQL to run several instances. Commands that add agents or keys may run beside it."
    )]
    AlreadyServed { database: String, lock: String },
    #[error("could not take the serving lock {lock}: {why}")]
    Lock { lock: String, why: String },
}

/// A stored value this build cannot read.
pub(crate) fn corrupt(why: String) -> StoreError {
    StoreError::internal(format!("unreadable stored data: {why}"))
}

pub(crate) fn from_diesel(err: DieselError) -> StoreError {
    match &err {
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
            StoreError::Conflict(info.message().to_owned())
        }
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => {
            StoreError::Unavailable("the database connection was closed".to_owned())
        }
        // SQLite's "database is locked" reaches Diesel untyped. Writes go through one
        // writer connection with BEGIN IMMEDIATE, so this is only a residual case
        // (another process holding the file); it is worth a retry, not a 500.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().contains("database is locked") =>
        {
            StoreError::Unavailable("the database is locked by another process".to_owned())
        }
        DieselError::DatabaseError(_, info) if is_unwritable(info.message()) => {
            StoreError::Unwritable(info.message().to_owned())
        }
        _ => StoreError::internal(err),
    }
}

/// Whether PostgreSQL ended the transaction to break a deadlock (SQLSTATE 40P01, which
/// Diesel does not type): it holds no lock any more, and running it again is safe.
pub(crate) fn is_deadlock(err: &DieselError) -> bool {
    matches!(err, DieselError::DatabaseError(_, info) if info.message().contains("deadlock detected"))
}

/// Whether a database's error says it cannot take writes: a full disk (SQLite's
/// SQLITE_FULL, PostgreSQL's `disk_full` and failed file extensions) or a read-only
/// database (SQLITE_READONLY, a read-only PostgreSQL transaction or standby).
fn is_unwritable(message: &str) -> bool {
    [
        "database or disk is full",
        "attempt to write a readonly database",
        "No space left on device",
        "could not extend file",
        "read-only transaction",
    ]
    .iter()
    .any(|sign| message.contains(sign))
}

pub(crate) fn from_pool<E: std::fmt::Display>(err: deadpool::managed::PoolError<E>) -> StoreError {
    use deadpool::managed::PoolError;
    match err {
        PoolError::Timeout(_) => {
            StoreError::Unavailable("timed out waiting for a database connection".to_owned())
        }
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".to_owned()),
        other => StoreError::Unavailable(format!("could not get a database connection: {other}")),
    }
}
