//! baton's storage adapters: the domain's [`TaskStore`] and [`AgentStore`] ports over
//! Diesel + diesel-async + deadpool — SQLite (a file, the embedded default, or in
//! memory for embedders' tests: [`SqlStore::in_memory`]) or PostgreSQL (several
//! instances).

mod announce;
mod backend;
mod batches;
mod error;
mod fresh_inputs;
mod group_commit;
mod listen;
mod models;
mod one_statement;
mod queries;
mod schema;
mod sqlite;
mod statement_cache;
mod write_health;

use async_trait::async_trait;
use baton_domain::push::{PushConfig, PushPut};
use baton_domain::webhooks::{AttemptResult, DeliveryView, DueDelivery};
use baton_domain::*;
use chrono::{DateTime, Utc};

pub use backend::{PgOptions, ServingLock, SqliteOptions, SqliteSync};
pub use batches::BatchStats;
pub use error::PersistenceError;
pub use group_commit::WriterStats;

use backend::{DatabaseUrl, PgConn};
use diesel_async::pooled_connection::deadpool::Pool;
use error::from_pool;
use sqlite::SqliteDb;

/// Options for opening a database, per backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreOptions {
    pub sqlite: SqliteOptions,
    pub postgres: PgOptions,
}

/// One connection pool's use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub pool: &'static str,
    pub in_use: usize,
    pub idle: usize,
    pub max: usize,
}

/// The SQL storage adapter, on whichever database its URL names.
pub struct SqlStore {
    db: Db,
    /// Sends turn changes to other instances after they commit (PostgreSQL only).
    announcer: Option<announce::Announcer>,
    /// Whether writes lately failed for want of space (readiness reports it).
    writes: write_health::WriteHealth,
    /// Inputs of turns just started on new tasks, until their play reads them.
    fresh: fresh_inputs::FreshInputs,
}

enum Db {
    Sqlite(SqliteDb),
    Postgres(Pool<PgConn>, PgBatches),
}

/// PostgreSQL's writes that concurrent callers send together (see `batches`).
struct PgBatches {
    new_tasks: batches::Batcher<batches::NewTasks>,
    turn_ends: batches::Batcher<batches::TurnEnds>,
}

impl std::fmt::Debug for SqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &self.backend())
            .finish()
    }
}

impl SqlStore {
    /// Opens the database the URL names (`sqlite://PATH`, a file path, or
    /// `postgres://…`), applies pending migrations, and returns the store with the
    /// names of the migrations run.
    pub async fn open(
        url: &str,
        options: StoreOptions,
    ) -> Result<(SqlStore, Vec<String>), PersistenceError> {
        let applied = SqlStore::migrate(url).await?;
        let (db, announcer) = match DatabaseUrl::parse(url)? {
            DatabaseUrl::Sqlite(url) => (Db::Sqlite(SqliteDb::open(&url, options.sqlite)?), None),
            DatabaseUrl::Postgres(url) => {
                let pool = backend::open_postgres(&url, options.postgres).await?;
                let announcer = announce::Announcer::spawn(pool.clone());
                let batches = PgBatches {
                    new_tasks: batches::Batcher::spawn(pool.clone(), announcer.clone()),
                    turn_ends: batches::Batcher::spawn(pool.clone(), announcer.clone()),
                };
                (Db::Postgres(pool, batches), Some(announcer))
            }
        };
        Ok((
            SqlStore {
                db,
                announcer,
                writes: write_health::WriteHealth::default(),
                fresh: fresh_inputs::FreshInputs::default(),
            },
            applied,
        ))
    }

    /// A migrated SQLite database in memory, for embedders' tests and examples: the
    /// same queries and rules as a file (the conformance suite runs against both),
    /// nothing written to disk, all gone when the store is dropped (or if a failure
    /// ever forces the writer to reopen its connection). Reads and writes share its
    /// one connection.
    pub fn in_memory() -> Result<SqlStore, PersistenceError> {
        Ok(SqlStore {
            db: Db::Sqlite(SqliteDb::in_memory()?),
            announcer: None,
            writes: write_health::WriteHealth::default(),
            fresh: fresh_inputs::FreshInputs::default(),
        })
    }

    /// Applies pending migrations to the database the URL names; returns their names.
    pub async fn migrate(url: &str) -> Result<Vec<String>, PersistenceError> {
        match DatabaseUrl::parse(url)? {
            DatabaseUrl::Sqlite(url) => backend::migrate_sqlite(&url).await,
            DatabaseUrl::Postgres(url) => backend::migrate_postgres(&url).await,
        }
    }

    /// Claims the database for a serving process. The embedded database (SQLite) is
    /// served by one process at a time: a second one would take the first's live
    /// turns for orphans, so it is refused with [`PersistenceError::AlreadyServed`].
    /// The returned lock is held until dropped (or the process ends). PostgreSQL
    /// serves many instances: `None`.
    pub fn lock_for_serving(url: &str) -> Result<Option<ServingLock>, PersistenceError> {
        match DatabaseUrl::parse(url)? {
            DatabaseUrl::Sqlite(url) => backend::lock_sqlite(&url).map(Some),
            DatabaseUrl::Postgres(_) => Ok(None),
        }
    }

    /// Which backend this store runs on: `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.db {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(..) => "postgres",
        }
    }

    /// Whether only one process can use this database at a time (SQLite), so that any
    /// turn marked running at start-up was orphaned by a previous process, whatever its
    /// lease says.
    pub fn is_single_instance(&self) -> bool {
        matches!(self.db, Db::Sqlite(_))
    }

    /// Each connection pool's use right now: name, connections in use, idle, maximum.
    pub fn pool_usage(&self) -> Vec<PoolUsage> {
        fn usage<M: deadpool::managed::Manager>(
            name: &'static str,
            pool: &deadpool::managed::Pool<M>,
        ) -> PoolUsage {
            let status = pool.status();
            PoolUsage {
                pool: name,
                in_use: status.size.saturating_sub(status.available),
                idle: status.available,
                max: status.max_size,
            }
        }
        match &self.db {
            Db::Sqlite(sqlite) => sqlite
                .readers()
                .map(|readers| PoolUsage {
                    pool: "sqlite_readers",
                    in_use: readers.size.saturating_sub(readers.available),
                    idle: readers.available,
                    max: readers.max_size,
                })
                .into_iter()
                .collect(),
            Db::Postgres(pool, _) => vec![usage("postgres", pool)],
        }
    }

    /// What SQLite's writer has done so far: groups committed and the operations in
    /// them (their ratio is the mean group size). `None` on PostgreSQL.
    pub fn writer_stats(&self) -> Option<WriterStats> {
        match &self.db {
            Db::Sqlite(sqlite) => Some(sqlite.writer_stats()),
            Db::Postgres(..) => None,
        }
    }

    /// What PostgreSQL's batches have done so far, per kind of write (`new_tasks`,
    /// `turn_ends`): batches written and the writes in them (their ratio is the mean
    /// batch size). Empty on SQLite.
    pub fn batch_stats(&self) -> Vec<(&'static str, BatchStats)> {
        match &self.db {
            Db::Sqlite(_) => Vec::new(),
            Db::Postgres(_, batches) => vec![
                ("new_tasks", batches.new_tasks.stats()),
                ("turn_ends", batches.turn_ends.stats()),
            ],
        }
    }

    /// Starts feeding turn changes made by other instances into `hub` (PostgreSQL's
    /// LISTEN/NOTIFY). `None` for SQLite, where there are no other instances.
    pub fn relay_changes(&self, hub: LocalNotifier) -> Option<tokio::task::JoinHandle<()>> {
        match &self.db {
            Db::Sqlite(_) => None,
            Db::Postgres(pool, _) => Some(listen::spawn_relay(pool.clone(), hub)),
        }
    }
}

/// Runs `$body` with `$conn` bound to a connection of the named role (`writer` or
/// `readers`) and `$q` bound to that backend's queries. The body is expanded once per
/// backend. On SQLite it runs whole on the writer's thread (in its next group commit)
/// or where it is called (a read), and takes its inputs by value (`move`).
macro_rules! on_conn {
    ($store:expr, writer, |$conn:ident, $q:ident| $body:expr) => {
        on_conn!(@run $store, write, true, |$conn, $q| $body)
    };
    ($store:expr, readers, |$conn:ident, $q:ident| $body:expr) => {
        on_conn!(@run $store, read, false, |$conn, $q| $body)
    };
    (@run $store:expr, $sqlite:ident, $write:expr, |$conn:ident, $q:ident| $body:expr) => {{
        let result = match &$store.db {
            Db::Sqlite(sqlite) => {
                sqlite
                    .$sqlite(move |$conn| {
                        Box::pin(async move {
                            use crate::queries::sqlite as $q;
                            $body
                        })
                    })
                    .await
            }
            // One pool: PostgreSQL has no single-writer rule.
            Db::Postgres(pool, _) => {
                let mut object = pool.get().await.map_err(from_pool)?;
                let $conn = &mut *object;
                use crate::queries::postgres as $q;
                announce::collecting($store.announcer.as_ref(), async { $body }).await
            }
        };
        $store.writes.note($write, &result);
        result
    }};
}

#[async_trait]
impl TaskStore for SqlStore {
    async fn create_task(&self, new: NewTask) -> Result<Claim, ClaimError> {
        let (claim, input) = match &self.db {
            Db::Postgres(_, batches) if queries::postgres::is_plain(&new) => {
                let created = batches.new_tasks.write(new).await;
                self.writes.note(true, &created);
                created
            }
            _ => on_conn!(self, writer, |conn, q| q::create_task(conn, &new).await),
        }?;
        if let (Claim::Started(accepted), Some(input)) = (&claim, input)
            && let Some(turn) = accepted.turn_id
        {
            self.fresh.keep(turn, input);
        }
        Ok(claim)
    }

    async fn append_and_claim(&self, append: NewAppend) -> Result<Claim, ClaimError> {
        on_conn!(self, writer, |conn, q| q::append_and_claim(conn, &append)
            .await)
    }

    async fn get_task(&self, agent: AgentId, task: TaskId) -> Result<Option<TaskView>, StoreError> {
        on_conn!(self, readers, |conn, q| q::get_task(conn, agent, task)
            .await)
    }

    async fn list_tasks(
        &self,
        agent: AgentId,
        status: Option<TaskStatus>,
        page: PageRequest,
    ) -> Result<Page<TaskView>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_tasks(
            conn, agent, status, page
        )
        .await)
    }

    async fn list_tasks_by_update(
        &self,
        agent: AgentId,
        status: Option<TaskStatus>,
        limit: u32,
        after: Option<(DateTime<Utc>, TaskId)>,
    ) -> Result<Vec<TaskView>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_tasks_by_update(
            conn, agent, status, limit, after
        )
        .await)
    }

    async fn list_messages(
        &self,
        agent: AgentId,
        task: TaskId,
        page: PageRequest,
    ) -> Result<Option<History<Message>>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_messages(
            conn, agent, task, page
        )
        .await)
    }

    async fn load_turn_input(
        &self,
        task: TaskId,
        turn: TurnId,
    ) -> Result<Option<TurnHistory>, StoreError> {
        if let Some(input) = self.fresh.take(turn)
            && input.task.id == task
        {
            return Ok(Some(input));
        }
        on_conn!(self, readers, |conn, q| q::load_turn_input(
            conn, task, turn
        )
        .await)
    }

    async fn record_output(&self, output: RecordOutput) -> Result<bool, StoreError> {
        on_conn!(self, writer, |conn, q| q::record_output(conn, &output)
            .await)
    }

    async fn list_events(
        &self,
        agent: AgentId,
        task: TaskId,
        after: i64,
        limit: u32,
    ) -> Result<Option<EventPage>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_events(
            conn, agent, task, after, limit
        )
        .await)
    }

    async fn prune_events(&self, task: TaskId, before: i64) -> Result<u64, StoreError> {
        on_conn!(self, writer, |conn, q| q::prune_events(conn, task, before)
            .await)
    }

    async fn finish_turn(&self, finish: FinishTurn) -> Result<Option<Ended>, StoreError> {
        match &self.db {
            Db::Postgres(_, batches) => {
                let ended = batches.turn_ends.write(finish).await;
                self.writes.note(true, &ended);
                ended
            }
            Db::Sqlite(_) => on_conn!(self, writer, |conn, q| q::finish_turn(conn, &finish).await),
        }
    }

    async fn finish_turns(
        &self,
        finishes: Vec<FinishTurn>,
    ) -> Result<Vec<Option<Ended>>, StoreError> {
        on_conn!(self, writer, |conn, q| q::finish_turns(conn, &finishes)
            .await)
    }

    async fn take_steered(
        &self,
        agent: AgentId,
        task: TaskId,
        turn: TurnId,
        attempt: u32,
        now: DateTime<Utc>,
    ) -> Result<Option<Vec<Message>>, StoreError> {
        on_conn!(self, writer, |conn, q| q::take_steered(
            conn, agent, task, turn, attempt, now
        )
        .await)
    }

    async fn has_steered(&self, turn: TurnId) -> Result<bool, StoreError> {
        on_conn!(self, readers, |conn, q| q::has_steered(conn, turn).await)
    }

    async fn list_queue(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<QueuedMessage>>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_queue(conn, agent, task)
            .await)
    }

    async fn get_queued(
        &self,
        agent: AgentId,
        task: TaskId,
        id: QueuedMessageId,
    ) -> Result<Option<QueuedMessage>, StoreError> {
        on_conn!(self, readers, |conn, q| q::get_queued(
            conn, agent, task, id
        )
        .await)
    }

    async fn cancel_queued(
        &self,
        agent: AgentId,
        task: TaskId,
        id: QueuedMessageId,
        now: DateTime<Utc>,
    ) -> Result<QueueCancel, StoreError> {
        on_conn!(self, writer, |conn, q| q::cancel_queued(
            conn, agent, task, id, now
        )
        .await)
    }

    async fn start_stalled_queues(
        &self,
        lease: Lease,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<StartedTurn>, StoreError> {
        on_conn!(self, writer, |conn, q| q::start_stalled_queues(
            conn, &lease, now, limit
        )
        .await)
    }

    async fn renew_leases(
        &self,
        owner: &str,
        turns: Vec<(TurnId, u32)>,
        expires_at: DateTime<Utc>,
    ) -> Result<Vec<TurnId>, StoreError> {
        let owner = owner.to_owned();
        on_conn!(self, writer, |conn, q| q::renew_leases(
            conn, &owner, &turns, expires_at
        )
        .await)
    }

    async fn release_leases(
        &self,
        owner: &str,
        turns: Vec<TurnId>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        on_conn!(self, writer, |conn, q| q::release_leases(
            conn, &owner, &turns, now
        )
        .await)
    }

    async fn get_file(
        &self,
        agent: AgentId,
        task: TaskId,
        file: i64,
    ) -> Result<Option<StoredFile>, StoreError> {
        on_conn!(self, readers, |conn, q| q::get_file(
            conn, agent, task, file
        )
        .await)
    }

    async fn overdue_tool_calls(
        &self,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<(TaskId, TurnId)>, StoreError> {
        on_conn!(self, readers, |conn, q| q::overdue_tool_calls(
            conn, now, limit
        )
        .await)
    }

    async fn expired_turns(
        &self,
        cutoff: DateTime<Utc>,
        after: Option<TurnId>,
        limit: u32,
    ) -> Result<Vec<ExpiredTurn>, StoreError> {
        on_conn!(self, readers, |conn, q| q::expired_turns(
            conn, cutoff, after, limit
        )
        .await)
    }

    async fn take_over_turns(&self, take: TakeOver) -> Result<Vec<(TurnId, u32)>, StoreError> {
        on_conn!(self, writer, |conn, q| q::take_over_turns(conn, &take)
            .await)
    }

    async fn purge_idempotency_keys(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        on_conn!(self, writer, |conn, q| q::purge_idempotency_keys(conn, now)
            .await)
    }

    async fn check_ready(&self) -> Result<(), StoreError> {
        self.writes.check()?;
        let latest = backend::latest_migration();
        on_conn!(self, readers, |conn, q| q::check_ready(conn, &latest).await)
    }
}

#[async_trait]
impl WebhookStore for SqlStore {
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueDelivery>, StoreError> {
        on_conn!(self, writer, |conn, q| q::claim_deliveries(
            conn, now, until, limit
        )
        .await)
    }

    async fn record_attempt(&self, attempt: AttemptResult) -> Result<bool, StoreError> {
        on_conn!(self, writer, |conn, q| q::record_attempt(conn, &attempt)
            .await)
    }

    async fn list_deliveries(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<DeliveryView>>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_deliveries(
            conn, agent, task
        )
        .await)
    }

    async fn redeliver(&self, delivery: i64, now: DateTime<Utc>) -> Result<bool, StoreError> {
        on_conn!(self, writer, |conn, q| q::redeliver(conn, delivery, now)
            .await)
    }

    async fn put_push_config(
        &self,
        agent: AgentId,
        config: PushConfig,
    ) -> Result<PushPut, StoreError> {
        on_conn!(self, writer, |conn, q| q::put_push_config(
            conn, agent, &config
        )
        .await)
    }

    async fn list_push_configs(
        &self,
        agent: AgentId,
        task: TaskId,
    ) -> Result<Option<Vec<PushConfig>>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_push_configs(
            conn, agent, task
        )
        .await)
    }

    async fn delete_push_config(
        &self,
        agent: AgentId,
        task: TaskId,
        id: &str,
    ) -> Result<Option<bool>, StoreError> {
        let id = id.to_owned();
        on_conn!(self, writer, |conn, q| q::delete_push_config(
            conn, agent, task, &id
        )
        .await)
    }
}

#[async_trait]
impl AgentStore for SqlStore {
    async fn create_agent(&self, new: NewAgent) -> Result<Agent, StoreError> {
        on_conn!(self, writer, |conn, q| q::create_agent(conn, &new).await)
    }

    async fn get_agent(&self, id: AgentId) -> Result<Option<Agent>, StoreError> {
        on_conn!(self, readers, |conn, q| q::get_agent(conn, id).await)
    }

    async fn count_agents(&self) -> Result<u64, StoreError> {
        on_conn!(self, readers, |conn, q| q::count_agents(conn).await)
    }

    async fn list_agents(&self, page: PageRequest) -> Result<Page<Agent>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_agents(conn, page).await)
    }

    async fn update_agent(
        &self,
        id: AgentId,
        update: AgentUpdate,
    ) -> Result<Option<Agent>, StoreError> {
        on_conn!(self, writer, |conn, q| q::update_agent(conn, id, &update)
            .await)
    }

    async fn list_api_keys(&self, agent: AgentId) -> Result<Vec<ApiKey>, StoreError> {
        on_conn!(self, readers, |conn, q| q::list_api_keys(conn, agent).await)
    }

    async fn touch_api_key(&self, key: ApiKeyId, now: DateTime<Utc>) -> Result<(), StoreError> {
        on_conn!(self, writer, |conn, q| q::touch_api_key(conn, key, now)
            .await)
    }

    async fn create_api_key(&self, new: NewApiKey) -> Result<ApiKey, StoreError> {
        on_conn!(self, writer, |conn, q| q::create_api_key(conn, &new).await)
    }

    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKey>, StoreError> {
        let secret_hash = secret_hash.to_owned();
        on_conn!(self, readers, |conn, q| q::find_api_key(conn, &secret_hash)
            .await)
    }

    async fn revoke_api_key(&self, prefix: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let prefix = prefix.to_owned();
        on_conn!(self, writer, |conn, q| q::revoke_api_key(
            conn, &prefix, now
        )
        .await)
    }
}
