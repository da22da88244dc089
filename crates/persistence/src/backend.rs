//! Opening databases: URL parsing, the connection types, PostgreSQL's pool, SQLite's
//! serving lock, and migrations. (SQLite's writer and readers are in `sqlite`.)

use std::time::Duration;

use deadpool::Runtime;
use diesel::{Connection, SqliteConnection};
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_async::sync_connection_wrapper::{SpawnBlocking, SyncConnectionWrapper};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use futures_util::future::BoxFuture;

use crate::error::PersistenceError;

/// A SQLite connection whose statements run on the thread that awaits them: a write
/// is sent whole to the writer's thread and a read runs whole where it is asked for,
/// so no statement needs a hop of its own.
pub(crate) type SqliteConn = SyncConnectionWrapper<SqliteConnection, OnCallingThread>;

/// Runs a [`SyncConnectionWrapper`]'s blocking work where it is called.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct OnCallingThread;

impl SpawnBlocking for OnCallingThread {
    fn spawn_blocking<'a, R>(
        &mut self,
        task: impl FnOnce() -> R + Send + 'static,
    ) -> BoxFuture<'a, Result<R, Box<dyn std::error::Error + Send + Sync + 'static>>>
    where
        R: Send + 'static,
    {
        Box::pin(std::future::ready(Ok(task())))
    }

    fn get_runtime() -> Self {
        OnCallingThread
    }
}
pub(crate) type PgConn = AsyncPgConnection;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/postgres");

/// The advisory lock that serializes migrations of instances starting together.
const MIGRATION_LOCK: i64 = 0x6261_746f_6e00; // "baton\0"

/// Settings of a PostgreSQL database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgOptions {
    /// Connections per instance (the LISTEN connection is one more, outside the pool).
    pub pool_size: usize,
    /// How long a request waits for a pooled connection (and a new one to connect).
    pub pool_wait: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: 10,
            pool_wait: Duration::from_secs(10),
        }
    }
}

/// How hard SQLite works to make a commit durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteSync {
    /// Every commit is on disk before it is acknowledged: an accepted message survives
    /// a kill and a power loss. The default.
    #[default]
    Full,
    /// In WAL mode, commits survive a crash of baton but the last ones may be lost on a
    /// power loss or OS crash. Faster; opt in only if that loss is acceptable.
    Normal,
}

/// Settings of the embedded SQLite database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    pub synchronous: SqliteSync,
    /// How long a writer waits for the file lock before giving up.
    pub busy_timeout: Duration,
    /// Read connections. Writes always go through one connection, the writer's
    /// thread: SQLite serializes writers anyway, and one writer can commit many
    /// operations together.
    pub readers: usize,
    /// How long a request waits for a pooled read connection.
    pub pool_wait: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: SqliteSync::Full,
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            pool_wait: Duration::from_secs(10),
        }
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DatabaseUrl {
    Sqlite(String),
    Postgres(String),
}

impl DatabaseUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, PersistenceError> {
        let unsupported = || PersistenceError::UnsupportedUrl(url.to_owned());
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(url.to_owned()))
        } else if url.starts_with("sqlite:") {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            if path.is_empty() || path == ":memory:" {
                return Err(unsupported());
            }
            Ok(DatabaseUrl::Sqlite(url.to_owned()))
        } else if url.contains("://") || url.is_empty() || url == ":memory:" {
            Err(unsupported())
        } else {
            Ok(DatabaseUrl::Sqlite(url.to_owned()))
        }
    }
}

/// The embedded database's one serving process: an exclusive lock on a file beside the
/// database, held for the process's life. The operating system releases it when the
/// process ends in any way (a kill -9 included), so a restart never finds a stale one.
#[derive(Debug)]
pub struct ServingLock {
    _file: std::fs::File,
}

/// The file a SQLite URL names (`sqlite://PATH`, `sqlite:PATH` or a plain path; a
/// query string is not part of it).
fn sqlite_path(url: &str) -> &str {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    path.split_once('?').map_or(path, |(path, _)| path)
}

/// Takes the serving lock of the SQLite database at `url`, or says which server holds it.
pub(crate) fn lock_sqlite(url: &str) -> Result<ServingLock, PersistenceError> {
    let database = sqlite_path(url);
    let lock = format!("{database}.lock");
    let failed = |why: String| PersistenceError::Lock {
        lock: lock.clone(),
        why,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|err| failed(err.to_string()))?;
    match file.try_lock() {
        Ok(()) => Ok(ServingLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(PersistenceError::AlreadyServed {
            database: database.to_owned(),
            lock: lock.clone(),
        }),
        Err(std::fs::TryLockError::Error(err)) => Err(failed(err.to_string())),
    }
}

/// Applies pending migrations and turns on WAL (a property of the file), on a plain
/// synchronous connection in a blocking thread: this works on any runtime flavour,
/// unlike diesel-async's harness, which needs a multi-thread runtime.
pub(crate) async fn migrate_sqlite(url: &str) -> Result<Vec<String>, PersistenceError> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = SqliteConnection::establish(&url)
            .map_err(|err| PersistenceError::Connect(err.to_string()))?;
        diesel::connection::SimpleConnection::batch_execute(
            &mut conn,
            // Waits out another connection's brief lock (a server's writer closing and
            // checkpointing, a command beside it) instead of failing at once.
            "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL;",
        )
        .map_err(|err| PersistenceError::Connect(err.to_string()))?;
        migrate_sqlite_on(&mut conn)
    })
    .await
    .map_err(|err| PersistenceError::Migrate(err.to_string()))?
}

/// Applies pending migrations on this connection; returns their names.
pub(crate) fn migrate_sqlite_on(
    conn: &mut SqliteConnection,
) -> Result<Vec<String>, PersistenceError> {
    let applied = conn
        .run_pending_migrations(SQLITE_MIGRATIONS)
        .map_err(|err| PersistenceError::Migrate(err.to_string()))?;
    Ok(applied.iter().map(ToString::to_string).collect())
}

pub(crate) fn pg_pool(url: &str, opts: PgOptions) -> Result<Pool<PgConn>, PersistenceError> {
    // No `SELECT 1` before each use (a round trip per request): a connection the
    // server ended is seen closed by its client and replaced by the pool.
    let mut config = ManagerConfig::<PgConn>::default();
    config.recycling_method = RecyclingMethod::Fast;
    let manager = AsyncDieselConnectionManager::<PgConn>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(opts.pool_size.max(1))
        .wait_timeout(Some(opts.pool_wait))
        .create_timeout(Some(opts.pool_wait))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|err| PersistenceError::Connect(err.to_string()))
}

pub(crate) async fn open_postgres(
    url: &str,
    opts: PgOptions,
) -> Result<Pool<PgConn>, PersistenceError> {
    let pool = pg_pool(url, opts)?;
    drop(
        pool.get()
            .await
            .map_err(|err| PersistenceError::Connect(err.to_string()))?,
    );
    Ok(pool)
}

/// Applies pending migrations under an advisory lock, so instances starting together
/// migrate one after the other (the second finds nothing pending). Runs Diesel's sync
/// harness over diesel-async's wrapper in a blocking thread: no libpq, any runtime.
pub(crate) async fn migrate_postgres(url: &str) -> Result<Vec<String>, PersistenceError> {
    use diesel::RunQueryDsl;
    use diesel::sql_types::BigInt;

    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut conn = <AsyncConnectionWrapper<PgConn> as diesel::Connection>::establish(&url)
            .map_err(|err| PersistenceError::Connect(err.to_string()))?;
        let lock = |conn: &mut AsyncConnectionWrapper<PgConn>, sql: &str| {
            diesel::sql_query(sql)
                .bind::<BigInt, _>(MIGRATION_LOCK)
                .execute(conn)
                .map_err(|err| PersistenceError::Migrate(err.to_string()))
        };
        lock(&mut conn, "SELECT pg_advisory_lock($1)")?;
        let applied = conn
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|err| PersistenceError::Migrate(err.to_string()));
        lock(&mut conn, "SELECT pg_advisory_unlock($1)")?;
        applied
    })
    .await
    .map_err(|err| PersistenceError::Migrate(err.to_string()))?
}

/// The version of the newest migration this build carries (both sets have the same
/// names): a database whose newest applied migration is older is not ready.
pub(crate) fn latest_migration() -> String {
    use diesel::migration::MigrationSource;
    MigrationSource::<diesel::sqlite::Sqlite>::migrations(&SQLITE_MIGRATIONS)
        .ok()
        .and_then(|all| all.last().map(|m| m.name().version().to_string()))
        .unwrap_or_default()
}

/// The two migration sets must stay in step: same names, same order.
#[cfg(test)]
pub(crate) fn migration_names() -> (Vec<String>, Vec<String>) {
    use diesel::migration::MigrationSource;
    let names = |source: &EmbeddedMigrations| -> Vec<String> {
        MigrationSource::<diesel::sqlite::Sqlite>::migrations(source)
            .map(|all| all.iter().map(|m| m.name().to_string()).collect())
            .unwrap_or_default()
    };
    (names(&SQLITE_MIGRATIONS), names(&POSTGRES_MIGRATIONS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_sqlite_or_are_refused_with_the_accepted_forms() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://baton.db").unwrap(),
            DatabaseUrl::Sqlite("sqlite://baton.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("data/baton.db").unwrap(),
            DatabaseUrl::Sqlite("data/baton.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db").unwrap(),
            DatabaseUrl::Postgres("postgres://u@h/db".into())
        );
        assert!(matches!(
            DatabaseUrl::parse("postgresql://h/db"),
            Ok(DatabaseUrl::Postgres(_))
        ));
        for bad in ["", ":memory:", "sqlite://", "mysql://x/y"] {
            let err = DatabaseUrl::parse(bad).unwrap_err();
            assert!(err.to_string().contains("sqlite://PATH"), "{err}");
        }
    }

    #[test]
    fn both_migration_sets_have_the_same_migrations_in_the_same_order() {
        let (sqlite, postgres) = migration_names();
        assert!(!sqlite.is_empty());
        assert_eq!(sqlite, postgres);
    }
}
