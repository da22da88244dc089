//! Every query baton runs, written once. `define_queries!` expands the same bodies
//! once per backend connection type, so Diesel type-checks each query against each
//! backend: a construct a backend lacks fails to compile instead of failing at run
//! time. The only per-backend inputs are:
//! - the connection type;
//! - how a write transaction begins (SQLite needs `BEGIN IMMEDIATE` so writers queue
//!   behind the busy timeout instead of failing with SQLITE_BUSY);
//! - how a committed turn change is announced to other instances (PostgreSQL:
//!   `pg_notify` inside the transaction, delivered only if it commits; SQLite serves
//!   one process, whose executor announces changes in-process).

use baton_domain::{ActiveTurn, StoreError};
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
        }
    }
}

/// Announces task changes to other instances, per backend.
pub(crate) mod announce {
    use baton_domain::TaskId;
    use diesel::QueryResult;
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;

    use crate::backend::{PgConn, SqliteConn};
    use crate::listen::CHANNEL;

    pub(crate) async fn sqlite(_conn: &mut SqliteConn, _task: TaskId) -> QueryResult<()> {
        Ok(())
    }

    pub(crate) async fn postgres(conn: &mut PgConn, task: TaskId) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(CHANNEL)
            .bind::<Text, _>(task.to_string())
            .execute(conn)
            .await
            .map(drop)
    }
}

macro_rules! define_queries {
    ($Conn:ty, $begin_write:ident, $announce:path) => {
        use std::collections::HashMap;

        use baton_domain::*;
        use chrono::{DateTime, Utc};
        use diesel::dsl::max;
        use diesel::prelude::*;
        use diesel::result::{DatabaseErrorKind, Error as DieselError};
        #[allow(unused_imports)]
        use diesel_async::{AsyncConnection, RunQueryDsl};

        use crate::error::from_diesel;
        use crate::models::*;
        use crate::queries::TxError;
        use crate::schema::{agents, api_keys, messages, tasks, turns};

        type Conn = $Conn;

        const RUNNING: &str = "running";

        async fn running_turn(conn: &mut Conn, task: i64) -> Result<Option<ActiveTurn>, TxError> {
            let found: Option<(i64, i64)> = turns::table
                .filter(turns::task_id.eq(task).and(turns::status.eq(RUNNING)))
                .select((turns::id, turns::started_at))
                .first(conn)
                .await
                .optional()?;
            match found {
                Some((id, started)) => Ok(Some(ActiveTurn {
                    turn_id: TurnId(id),
                    started_at: from_micros(started)?,
                })),
                None => Ok(None),
            }
        }

        /// Inserts a running turn; the partial unique index refuses a second one.
        async fn insert_turn(
            conn: &mut Conn,
            task: i64,
            metadata: &str,
            now: i64,
        ) -> Result<i64, TxError> {
            let row = NewTurnRow {
                task_id: task,
                status: RUNNING,
                metadata: metadata.to_owned(),
                started_at: now,
            };
            diesel::insert_into(turns::table)
                .values(&row)
                .returning(turns::id)
                .get_result(conn)
                .await
                .map_err(|err| match err {
                    DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                        TxError::Busy(None)
                    }
                    other => TxError::Db(other),
                })
        }

        pub(crate) async fn create_task(
            conn: &mut Conn,
            new: &NewTask,
        ) -> Result<Accepted, StoreError> {
            let now = micros(new.now);
            let metadata = metadata_json(&new.metadata)?;
            let task_row = NewTaskRow {
                agent_id: new.agent_id.0,
                metadata: metadata.clone(),
                input: content_json(&new.message.content)?,
                created_at: now,
                updated_at: now,
            };
            let result = conn
                .$begin_write(async |conn| {
                    let task: i64 = diesel::insert_into(tasks::table)
                        .values(&task_row)
                        .returning(tasks::id)
                        .get_result(conn)
                        .await?;
                    let turn = insert_turn(conn, task, &metadata, now).await?;
                    let message = NewMessageRow::new(
                        TaskId(task),
                        TurnId(turn),
                        new.message.role,
                        &new.message.content,
                        None,
                        new.now,
                    )?;
                    diesel::insert_into(messages::table)
                        .values(&message)
                        .execute(conn)
                        .await?;
                    $announce(conn, TaskId(task)).await?;
                    Ok::<_, TxError>((task, turn))
                })
                .await;
            let (task, turn) = result.map_err(TxError::into_store)?;
            Ok(Accepted {
                task_id: TaskId(task),
                agent_id: new.agent_id,
                turn_id: TurnId(turn),
                accepted_at: new.now,
                metadata: new.metadata.clone(),
            })
        }

        pub(crate) async fn append_and_claim(
            conn: &mut Conn,
            append: &NewAppend,
        ) -> Result<Accepted, ClaimError> {
            let now = micros(append.now);
            let task = append.task_id.0;
            let metadata = metadata_json(&append.metadata)?;
            let input = content_json(&append.message.content)?;
            let message = NewMessageRow::new(
                append.task_id,
                TurnId(0),
                append.message.role,
                &append.message.content,
                None,
                append.now,
            )?;
            // A lost race (possible on PostgreSQL, where the unique index decides) is
            // answered by naming the winner; if the winner already ended, the task is
            // idle again and the claim is simply retried.
            for _ in 0..3 {
                let result = conn
                    .$begin_write(async |conn| {
                        let owned: Option<i64> = tasks::table
                            .filter(
                                tasks::id
                                    .eq(task)
                                    .and(tasks::agent_id.eq(append.agent_id.0)),
                            )
                            .select(tasks::id)
                            .first(conn)
                            .await
                            .optional()?;
                        if owned.is_none() {
                            return Err(TxError::NotFound);
                        }
                        if let Some(active) = running_turn(conn, task).await? {
                            return Err(TxError::Busy(Some(active)));
                        }
                        let turn = insert_turn(conn, task, &metadata, now).await?;
                        let message = NewMessageRow {
                            turn_id: turn,
                            content: message.content.clone(),
                            ..message
                        };
                        diesel::insert_into(messages::table)
                            .values(&message)
                            .execute(conn)
                            .await?;
                        diesel::update(tasks::table.find(task))
                            .set((tasks::input.eq(&input), tasks::updated_at.eq(now)))
                            .execute(conn)
                            .await?;
                        $announce(conn, TaskId(task)).await?;
                        Ok::<_, TxError>(turn)
                    })
                    .await;
                match result {
                    Ok(turn) => {
                        return Ok(Accepted {
                            task_id: append.task_id,
                            agent_id: append.agent_id,
                            turn_id: TurnId(turn),
                            accepted_at: append.now,
                            metadata: append.metadata.clone(),
                        });
                    }
                    Err(TxError::NotFound) => return Err(ClaimError::TaskNotFound),
                    Err(TxError::Busy(Some(active))) => return Err(ClaimError::TaskBusy(active)),
                    Err(TxError::Busy(None)) => {
                        if let Some(active) = running_turn(conn, task)
                            .await
                            .map_err(TxError::into_store)?
                        {
                            return Err(ClaimError::TaskBusy(active));
                        }
                    }
                    Err(other) => return Err(ClaimError::Store(other.into_store())),
                }
            }
            Err(ClaimError::Store(StoreError::Unavailable(
                "the task is heavily contended; try again".to_owned(),
            )))
        }

        /// Builds views for task rows: each task's latest turn and latest agent message.
        async fn task_views(
            conn: &mut Conn,
            rows: Vec<TaskRow>,
        ) -> Result<Vec<TaskView>, StoreError> {
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let latest_turns: Vec<Option<i64>> = turns::table
                .filter(turns::task_id.eq_any(&ids))
                .group_by(turns::task_id)
                .select(max(turns::id))
                .load(conn)
                .await
                .map_err(from_diesel)?;
            let latest_turns: Vec<i64> = latest_turns.into_iter().flatten().collect();
            let mut turns_by_task: HashMap<i64, TurnRow> = turns::table
                .filter(turns::id.eq_any(&latest_turns))
                .select(TurnRow::as_select())
                .load(conn)
                .await
                .map_err(from_diesel)?
                .into_iter()
                .map(|t| (t.task_id, t))
                .collect();
            let latest_messages: Vec<Option<i64>> = messages::table
                .filter(
                    messages::task_id
                        .eq_any(&ids)
                        .and(messages::role.eq(Role::Assistant.as_str())),
                )
                .group_by(messages::task_id)
                .select(max(messages::id))
                .load(conn)
                .await
                .map_err(from_diesel)?;
            let latest_messages: Vec<i64> = latest_messages.into_iter().flatten().collect();
            let mut messages_by_task: HashMap<i64, MessageRow> = messages::table
                .filter(messages::id.eq_any(&latest_messages))
                .select(MessageRow::as_select())
                .load(conn)
                .await
                .map_err(from_diesel)?
                .into_iter()
                .map(|m| (m.task_id, m))
                .collect();
            rows.into_iter()
                .map(|row| {
                    let turn = turns_by_task.remove(&row.id).ok_or_else(|| {
                        crate::error::corrupt(format!("task {} has no turn", row.id))
                    })?;
                    let message = messages_by_task
                        .remove(&row.id)
                        .map(MessageRow::into_domain)
                        .transpose()?;
                    Ok(TaskView {
                        task: row.into_domain()?,
                        latest_turn: turn.into_domain()?,
                        latest_agent_message: message,
                    })
                })
                .collect()
        }

        pub(crate) async fn get_task(
            conn: &mut Conn,
            agent: AgentId,
            task: TaskId,
        ) -> Result<Option<TaskView>, StoreError> {
            conn.transaction(async |conn| {
                let row: Option<TaskRow> = tasks::table
                    .filter(tasks::id.eq(task.0).and(tasks::agent_id.eq(agent.0)))
                    .select(TaskRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let Some(row) = row else { return Ok(None) };
                Ok::<_, TxError>(task_views(conn, vec![row]).await?.pop())
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn list_tasks(
            conn: &mut Conn,
            agent: AgentId,
            page: PageRequest,
        ) -> Result<Page<TaskView>, StoreError> {
            conn.transaction(async |conn| {
                let mut query = tasks::table
                    .filter(tasks::agent_id.eq(agent.0))
                    .select(TaskRow::as_select())
                    .order(tasks::id.desc())
                    .limit(i64::from(page.limit) + 1)
                    .into_boxed();
                if let Some(after) = page.after {
                    query = query.filter(tasks::id.lt(after));
                }
                let rows = query.load(conn).await?;
                let views = task_views(conn, rows).await?;
                Ok::<_, TxError>(Page::from_overfetch(views, page.limit, |v| v.task.id.0))
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn list_messages(
            conn: &mut Conn,
            agent: AgentId,
            task: TaskId,
            page: PageRequest,
        ) -> Result<Option<Page<Message>>, StoreError> {
            conn.transaction(async |conn| {
                let owned: Option<i64> = tasks::table
                    .filter(tasks::id.eq(task.0).and(tasks::agent_id.eq(agent.0)))
                    .select(tasks::id)
                    .first(conn)
                    .await
                    .optional()?;
                if owned.is_none() {
                    return Ok(None);
                }
                let mut query = messages::table
                    .filter(messages::task_id.eq(task.0))
                    .select(MessageRow::as_select())
                    .order(messages::id.asc())
                    .limit(i64::from(page.limit) + 1)
                    .into_boxed();
                if let Some(after) = page.after {
                    query = query.filter(messages::id.gt(after));
                }
                let rows: Vec<MessageRow> = query.load(conn).await?;
                let messages = rows
                    .into_iter()
                    .map(MessageRow::into_domain)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, TxError>(Some(Page::from_overfetch(messages, page.limit, |m| m.id.0)))
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn load_turn_input(
            conn: &mut Conn,
            task: TaskId,
        ) -> Result<Option<(Task, Vec<Message>)>, StoreError> {
            conn.transaction(async |conn| {
                let row: Option<TaskRow> = tasks::table
                    .find(task.0)
                    .select(TaskRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let Some(row) = row else { return Ok(None) };
                let rows: Vec<MessageRow> = messages::table
                    .filter(messages::task_id.eq(task.0))
                    .order(messages::id.asc())
                    .select(MessageRow::as_select())
                    .load(conn)
                    .await?;
                let history = rows
                    .into_iter()
                    .map(MessageRow::into_domain)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, TxError>(Some((row.into_domain()?, history)))
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn finish_turn(
            conn: &mut Conn,
            finish: &FinishTurn,
        ) -> Result<bool, StoreError> {
            let now = micros(finish.now);
            let (status, code, message) = match &finish.outcome {
                TurnOutcome::Completed => (TurnStatus::Completed, None, None),
                TurnOutcome::Failed(err) => (
                    TurnStatus::Failed,
                    Some(err.code.as_str()),
                    Some(err.message.as_str()),
                ),
            };
            let rows = finish
                .messages
                .iter()
                .map(|content| {
                    NewMessageRow::new(
                        finish.task_id,
                        finish.turn_id,
                        Role::Assistant,
                        content,
                        None,
                        finish.now,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            conn.$begin_write(async |conn| {
                // Only a running turn can end: late output for an ended turn is dropped.
                let ended = diesel::update(
                    turns::table.filter(
                        turns::id
                            .eq(finish.turn_id.0)
                            .and(turns::status.eq(RUNNING)),
                    ),
                )
                .set((
                    turns::status.eq(status.as_str()),
                    turns::error_code.eq(code),
                    turns::error_message.eq(message),
                    turns::ended_at.eq(now),
                ))
                .execute(conn)
                .await?;
                if ended == 0 {
                    return Ok(false);
                }
                for row in &rows {
                    diesel::insert_into(messages::table)
                        .values(row)
                        .execute(conn)
                        .await?;
                }
                diesel::update(tasks::table.find(finish.task_id.0))
                    .set(tasks::updated_at.eq(now))
                    .execute(conn)
                    .await?;
                $announce(conn, finish.task_id).await?;
                Ok::<_, TxError>(true)
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn interrupt_running_turns(
            conn: &mut Conn,
            error: &TurnError,
            at: DateTime<Utc>,
        ) -> Result<u64, StoreError> {
            conn.$begin_write(async |conn| {
                let ended: Vec<(i64, i64)> =
                    diesel::update(turns::table.filter(turns::status.eq(RUNNING)))
                        .set((
                            turns::status.eq(TurnStatus::Failed.as_str()),
                            turns::error_code.eq(&error.code),
                            turns::error_message.eq(&error.message),
                            turns::ended_at.eq(micros(at)),
                        ))
                        .returning((turns::id, turns::task_id))
                        .get_results(conn)
                        .await?;
                for (_turn, task) in &ended {
                    $announce(conn, TaskId(*task)).await?;
                }
                Ok::<_, TxError>(ended.len() as u64)
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn create_agent(
            conn: &mut Conn,
            new: &NewAgent,
        ) -> Result<Agent, StoreError> {
            let row = NewAgentRow::from_domain(new)?;
            diesel::insert_into(agents::table)
                .values(&row)
                .returning(AgentRow::as_returning())
                .get_result(conn)
                .await
                .map_err(from_diesel)?
                .into_domain()
        }

        pub(crate) async fn get_agent(
            conn: &mut Conn,
            id: AgentId,
        ) -> Result<Option<Agent>, StoreError> {
            agents::table
                .find(id.0)
                .select(AgentRow::as_select())
                .first(conn)
                .await
                .optional()
                .map_err(from_diesel)?
                .map(AgentRow::into_domain)
                .transpose()
        }

        pub(crate) async fn count_agents(conn: &mut Conn) -> Result<u64, StoreError> {
            let n: i64 = agents::table
                .count()
                .get_result(conn)
                .await
                .map_err(from_diesel)?;
            Ok(n.max(0) as u64)
        }

        pub(crate) async fn create_api_key(
            conn: &mut Conn,
            new: &NewApiKey,
        ) -> Result<ApiKey, StoreError> {
            let row = NewApiKeyRow {
                agent_id: new.agent_id.0,
                prefix: &new.prefix,
                secret_hash: &new.secret_hash,
                created_at: micros(new.created_at),
            };
            diesel::insert_into(api_keys::table)
                .values(&row)
                .returning(ApiKeyRow::as_returning())
                .get_result(conn)
                .await
                .map_err(from_diesel)?
                .into_domain()
        }

        pub(crate) async fn find_api_key(
            conn: &mut Conn,
            secret_hash: &str,
        ) -> Result<Option<ApiKey>, StoreError> {
            api_keys::table
                .filter(api_keys::secret_hash.eq(secret_hash))
                .select(ApiKeyRow::as_select())
                .first(conn)
                .await
                .optional()
                .map_err(from_diesel)?
                .map(ApiKeyRow::into_domain)
                .transpose()
        }

        pub(crate) async fn revoke_api_key(
            conn: &mut Conn,
            prefix: &str,
            at: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            let revoked = diesel::update(
                api_keys::table.filter(
                    api_keys::prefix
                        .eq(prefix)
                        .and(api_keys::revoked_at.is_null()),
                ),
            )
            .set(api_keys::revoked_at.eq(micros(at)))
            .execute(conn)
            .await
            .map_err(from_diesel)?;
            Ok(revoked > 0)
        }
    };
}

/// The queries on SQLite.
pub(crate) mod sqlite {
    define_queries!(
        crate::backend::SqliteConn,
        immediate_transaction,
        crate::queries::announce::sqlite
    );
}

/// The queries on PostgreSQL.
pub(crate) mod postgres {
    define_queries!(
        crate::backend::PgConn,
        transaction,
        crate::queries::announce::postgres
    );
}
