//! Opening databases: URL parsing, pools, per-connection settings and migrations. The
//! only module that names concrete connection types.

use std::time::Duration;

use deadpool::Runtime;
use diesel::{Connection, SqliteConnection};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::PersistenceError;

pub(crate) type SqliteConn = SyncConnectionWrapper<SqliteConnection>;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

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
    /// Read connections. Writes always go through one connection: SQLite serializes
    /// writers anyway, and queueing them in the pool is fairer than its busy handler.
    pub readers: usize,
    /// How long a request waits for a pooled connection.
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
}

impl DatabaseUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, PersistenceError> {
        let unsupported = || PersistenceError::UnsupportedUrl(url.to_owned());
        if url.starts_with("sqlite:") {
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

pub(crate) struct SqlitePools {
    pub writer: Pool<SqliteConn>,
    pub readers: Pool<SqliteConn>,
}

fn sqlite_pool(
    url: &str,
    opts: SqliteOptions,
    size: usize,
    read_only: bool,
) -> Result<Pool<SqliteConn>, PersistenceError> {
    let synchronous = match opts.synchronous {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    };
    // Pragmas are per connection, so they are set on every new one.
    let pragmas = format!(
        "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous};{}",
        opts.busy_timeout.as_millis(),
        if read_only {
            " PRAGMA query_only = ON;"
        } else {
            ""
        }
    );
    let mut config = ManagerConfig::<SqliteConn>::default();
    config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        let pragmas = pragmas.clone();
        Box::pin(async move {
            let mut conn = SqliteConn::establish(&url).await?;
            conn.batch_execute(&pragmas)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(url, config);
    Pool::builder(manager)
        .max_size(size.max(1))
        .wait_timeout(Some(opts.pool_wait))
        .create_timeout(Some(opts.pool_wait))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|err| PersistenceError::Connect(err.to_string()))
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
            "PRAGMA journal_mode = WAL;",
        )
        .map_err(|err| PersistenceError::Connect(err.to_string()))?;
        let applied = conn
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map_err(|err| PersistenceError::Migrate(err.to_string()))?;
        Ok(applied.iter().map(ToString::to_string).collect())
    })
    .await
    .map_err(|err| PersistenceError::Migrate(err.to_string()))?
}

pub(crate) async fn open_sqlite(
    url: &str,
    opts: SqliteOptions,
) -> Result<SqlitePools, PersistenceError> {
    let pools = SqlitePools {
        writer: sqlite_pool(url, opts, 1, false)?,
        readers: sqlite_pool(url, opts, opts.readers, true)?,
    };
    // Open one connection now so a bad path fails at start-up, not at the first request.
    drop(
        pools
            .writer
            .get()
            .await
            .map_err(|err| PersistenceError::Connect(err.to_string()))?,
    );
    Ok(pools)
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
        for bad in ["", ":memory:", "sqlite://", "mysql://x/y"] {
            let err = DatabaseUrl::parse(bad).unwrap_err();
            assert!(err.to_string().contains("sqlite://PATH"), "{err}");
        }
    }
}
