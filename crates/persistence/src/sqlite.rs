//! The embedded database's connections: one writer thread with group commit (see
//! [`crate::group_commit`]) and a pool of read-only connections. A read runs whole on
//! the thread that asks for it, with no hop: in WAL mode a reader never waits for the
//! writer, and a read is a page (at most 100 rows) or one task's rows — though a
//! turn's input is the task's whole history, which a very long conversation makes
//! long. Measured on the benchmark's
//! roundtrip at c=64, this is ~20 % more turns per second than a hop to a blocking
//! thread per read. Every connection gets the same per-connection settings.

use baton_domain::StoreError;
use deadpool::Runtime;
use diesel::connection::SimpleConnection;
use diesel::{Connection, SqliteConnection};
use diesel_async::pooled_connection::deadpool::Pool;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use futures_util::future::BoxFuture;

use crate::backend::{OnCallingThread, SqliteConn, SqliteOptions, SqliteSync};
use crate::error::{PersistenceError, from_pool};
use crate::group_commit::{SqliteWriter, WriterStats, in_transaction, run_now};

/// A SQLite database open for serving.
pub(crate) struct SqliteDb {
    writer: SqliteWriter,
    /// `None` for a database in memory, which lives in its one connection: reads go
    /// to the writer too.
    readers: Option<Pool<SqliteConn>>,
}

/// How much of the database file each connection reads through a memory map rather
/// than a system call per page: the operating system's page cache, shared by every
/// connection, instead of a copy per connection. Without it a read of a large
/// database spends its time in `pread` (measured: history-page p99 at 1,000,000 tasks
/// 2.4× that at 1,000, with the file in the page cache).
const MMAP_BYTES: u64 = 1 << 30;

/// Opens a connection with baton's settings. Pragmas are per connection, so every new
/// one gets them. On the writer, `temp_store = MEMORY` keeps the sub-journal of its
/// per-operation savepoints in memory. By default it spills to a temporary file past
/// 64 KiB and stays there for the rest of the group's transaction: every page an
/// operation first touched then cost two `pwrite`s — 17 times the group's WAL frames
/// (strace; `accept` c=64 +18 % without them, docs/benchmarks.md). Nothing in it has
/// to survive a crash: it only undoes a failed operation inside a transaction, which a
/// crash undoes whole.
fn connect(url: &str, opts: SqliteOptions, read_only: bool) -> Result<SqliteConn, String> {
    let mut conn = SqliteConnection::establish(url).map_err(|err| err.to_string())?;
    configure(&mut conn, opts, read_only)?;
    Ok(SqliteConn::with_runtime(conn, OnCallingThread))
}

fn configure(
    conn: &mut SqliteConnection,
    opts: SqliteOptions,
    read_only: bool,
) -> Result<(), String> {
    let synchronous = match opts.synchronous {
        SqliteSync::Full => "FULL",
        SqliteSync::Normal => "NORMAL",
    };
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON; PRAGMA synchronous = {synchronous}; \
         PRAGMA mmap_size = {MMAP_BYTES};{}",
        opts.busy_timeout.as_millis(),
        if read_only {
            " PRAGMA query_only = ON;"
        } else {
            " PRAGMA temp_store = MEMORY;"
        }
    ))
    .map_err(|err| err.to_string())
}

impl SqliteDb {
    pub(crate) fn open(url: &str, opts: SqliteOptions) -> Result<SqliteDb, PersistenceError> {
        // The writer's connection is opened now, so a bad path fails at start-up, not at
        // the first request.
        let first = connect(url, opts, false).map_err(PersistenceError::Connect)?;
        let reopen = url.to_owned();
        let writer = SqliteWriter::start(first, move || connect(&reopen, opts, false))
            .map_err(|err| PersistenceError::Connect(err.to_string()))?;

        let mut config = ManagerConfig::<SqliteConn>::default();
        // A file does not go away as a server does: no `SELECT 1` before each read.
        config.recycling_method = RecyclingMethod::Fast;
        config.custom_setup = Box::new(move |url| {
            let url = url.to_owned();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || connect(&url, opts, true))
                    .await
                    .map_err(|err| diesel::ConnectionError::BadConnection(err.to_string()))?
                    .map_err(diesel::ConnectionError::BadConnection)
            })
        });
        let manager = AsyncDieselConnectionManager::<SqliteConn>::new_with_config(url, config);
        let readers = Pool::builder(manager)
            .max_size(opts.readers.max(1))
            .wait_timeout(Some(opts.pool_wait))
            .create_timeout(Some(opts.pool_wait))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|err| PersistenceError::Connect(err.to_string()))?;
        Ok(SqliteDb {
            writer,
            readers: Some(readers),
        })
    }

    /// A migrated database in memory, in one connection owned by the writer; gone
    /// when the store is dropped (or if the writer ever had to reopen it).
    pub(crate) fn in_memory() -> Result<SqliteDb, PersistenceError> {
        let open = || -> Result<SqliteConn, String> {
            let mut conn = SqliteConnection::establish(":memory:").map_err(|e| e.to_string())?;
            configure(&mut conn, SqliteOptions::default(), false)?;
            crate::backend::migrate_sqlite_on(&mut conn).map_err(|e| e.to_string())?;
            Ok(SqliteConn::with_runtime(conn, OnCallingThread))
        };
        let first = open().map_err(PersistenceError::Connect)?;
        let writer = SqliteWriter::start(first, open)
            .map_err(|err| PersistenceError::Connect(err.to_string()))?;
        Ok(SqliteDb {
            writer,
            readers: None,
        })
    }

    /// Runs a write operation in the writer's next group.
    pub(crate) async fn write<T, E>(
        &self,
        op: impl for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.writer.write(op).await
    }

    /// Runs a read operation whole, here, on a read-only connection, in one read
    /// transaction: its statements see one snapshot of the database.
    pub(crate) async fn read<T, E>(
        &self,
        op: impl for<'c> FnOnce(&'c mut SqliteConn) -> BoxFuture<'c, Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let Some(readers) = &self.readers else {
            return self.writer.write(op).await;
        };
        let mut conn = readers.get().await.map_err(|err| E::from(from_pool(err)))?;
        run_now(in_transaction(&mut conn, Box::new(op)))
    }

    /// The read pool's state (connections in use, idle, maximum); `None` in memory.
    pub(crate) fn readers(&self) -> Option<deadpool::Status> {
        self.readers.as_ref().map(Pool::status)
    }

    pub(crate) fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }
}
