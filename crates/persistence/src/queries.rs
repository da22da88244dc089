//! Every query baton runs, written once. `define_queries!` expands the same bodies
//! once per backend connection type, so Diesel type-checks each query against each
//! backend: a construct a backend lacks fails to compile instead of failing at run
//! time. The only per-backend inputs are:
//! - the connection type (on SQLite, a write operation's transaction is a savepoint
//!   in the writer's group transaction, see `group_commit`);
//! - how a committed turn change, or a change of an agent or a key, is announced to
//!   other instances (PostgreSQL: `pg_notify` inside the transaction, delivered only
//!   if it commits; SQLite serves one process, which announces changes in-process).

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
            | TxError::Invalid(_) => StoreError::internal("unexpected claim answer"),
        }
    }
}

/// Announces task changes to other instances, per backend: the task, and the turn if
/// the change ended it (so the instance playing it stops).
pub(crate) mod announce {
    use baton_domain::{AgentsChanged, TaskId, TurnId};
    use diesel::QueryResult;
    use diesel::sql_types::Text;
    use diesel_async::RunQueryDsl;

    use crate::backend::{PgConn, SqliteConn};
    use crate::listen::{AGENTS_CHANNEL, CHANNEL, encode, encode_agents};

    pub(crate) async fn sqlite(
        _conn: &mut SqliteConn,
        _task: TaskId,
        _ended: Option<TurnId>,
    ) -> QueryResult<()> {
        Ok(())
    }

    pub(crate) async fn postgres(
        conn: &mut PgConn,
        task: TaskId,
        ended: Option<TurnId>,
    ) -> QueryResult<()> {
        notify(conn, CHANNEL, encode(task, ended)).await
    }

    /// Agents and keys: SQLite's one process changes its cache itself.
    pub(crate) async fn agents_sqlite(
        _conn: &mut SqliteConn,
        _change: &AgentsChanged,
    ) -> QueryResult<()> {
        Ok(())
    }

    /// Agents and keys on PostgreSQL: other instances drop what they cached.
    pub(crate) async fn agents_postgres(
        conn: &mut PgConn,
        change: &AgentsChanged,
    ) -> QueryResult<()> {
        notify(conn, AGENTS_CHANNEL, encode_agents(change)).await
    }

    async fn notify(conn: &mut PgConn, channel: &str, payload: String) -> QueryResult<()> {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<Text, _>(channel)
            .bind::<Text, _>(payload)
            .execute(conn)
            .await
            .map(drop)
    }
}

macro_rules! define_queries {
    ($Conn:ty, $Db:ty, $announce:path, $announce_agents:path, [$($lock_skip_locked:tt)*], [$($lock_row:tt)*]) => {
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
        use crate::statement_cache::CacheBySql;
        use crate::queries::TxError;
        use crate::schema::{
            agents, api_keys, events, files, idempotency_keys, messages, tasks, turns, webhook_attempts,
            webhook_deliveries,
        };
        use baton_domain::webhooks::{
            AttemptResult, DeliveryView, DueDelivery, NextStep, WebhookEndpoint,
        };

        type Conn = $Conn;
        type Db = $Db;

        const RUNNING: &str = "running";
        const REQUIRES_ACTION: &str = "requires_action";

        /// The task's last event `seq` if `agent` owns the task; `None` (never a hint
        /// that it exists) otherwise.
        async fn owned_task(
            conn: &mut Conn,
            agent: AgentId,
            task: TaskId,
        ) -> Result<Option<i64>, TxError> {
            Ok(tasks::table
                .filter(tasks::id.eq(task.0).and(tasks::agent_id.eq(agent.0)))
                .select(tasks::last_seq)
                .first(conn)
                .await
                .optional()?)
        }

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
        /// Appends events to the task's log, handing out the next sequence numbers
        /// from `tasks.last_seq` (the row update also serializes concurrent writers).
        async fn append_events(
            conn: &mut Conn,
            task: i64,
            drafts: Vec<EventDraft>,
            now: i64,
        ) -> Result<(), TxError> {
            if drafts.is_empty() {
                return Ok(());
            }
            let count = drafts.len() as i64;
            let last: i64 = diesel::update(tasks::table.find(task))
                .set(tasks::last_seq.eq(tasks::last_seq + count))
                .returning(tasks::last_seq)
                .by_sql()
                .get_result(conn)
                .await?;
            insert_events(conn, task, last, drafts, now).await
        }

        /// As `append_events`, also marking the task updated at `now`, in the same
        /// statement.
        async fn append_events_touching(
            conn: &mut Conn,
            task: i64,
            drafts: Vec<EventDraft>,
            now: i64,
        ) -> Result<(), TxError> {
            let count = drafts.len() as i64;
            let last: i64 = diesel::update(tasks::table.find(task))
                .set((
                    tasks::last_seq.eq(tasks::last_seq + count),
                    tasks::updated_at.eq(now),
                ))
                .returning(tasks::last_seq)
                .by_sql()
                .get_result(conn)
                .await?;
            insert_events(conn, task, last, drafts, now).await
        }

        /// Inserts the events that take the `seq`s up to `last`.
        async fn insert_events(
            conn: &mut Conn,
            task: i64,
            last: i64,
            drafts: Vec<EventDraft>,
            now: i64,
        ) -> Result<(), TxError> {
            let count = drafts.len() as i64;
            for (seq, draft) in (last - count + 1..).zip(drafts) {
                let row = NewEventRow {
                    task_id: task,
                    seq,
                    turn_id: draft.turn_id.0,
                    kind: draft.kind.as_str(),
                    data: serde_json::to_string(&draft.data).map_err(StoreError::internal)?,
                    created_at: now,
                };
                diesel::insert_into(events::table)
                    .values(&row)
                    .by_sql()
                    .execute(conn)
                    .await?;
            }
            Ok(())
        }

        async fn insert_message(
            conn: &mut Conn,
            task: TaskId,
            turn: TurnId,
            role: Role,
            content: &Content,
            streaming: Option<StreamingStatus>,
            at: DateTime<Utc>,
        ) -> Result<Message, TxError> {
            let content = store_attachments(conn, task, content, at).await?;
            let row = NewMessageRow::new(task, turn, role, &content, streaming, at)?;
            let stored: MessageRow = diesel::insert_into(messages::table)
                .values(&row)
                .returning(MessageRow::as_returning())
                .by_sql()
                .get_result(conn)
                .await?;
            Ok(stored.into_domain()?)
        }

        /// Keeps the bytes of the attachments sent with `content` in `files`; returns the
        /// content as it is stored and shown: each attachment by its file id.
        async fn store_attachments(
            conn: &mut Conn,
            task: TaskId,
            content: &Content,
            at: DateTime<Utc>,
        ) -> Result<Content, TxError> {
            let Content::Text(text) = content else {
                return Ok(content.clone());
            };
            if text.attachments.iter().all(|a| a.data.is_none()) {
                return Ok(content.clone());
            }
            let mut stored = text.clone();
            for attachment in &mut stored.attachments {
                let Some(bytes) = attachment.decoded() else {
                    continue;
                };
                let sha = attachment.stored(0, &bytes).sha256.unwrap_or_default();
                let id: i64 = diesel::insert_into(files::table)
                    .values((
                        files::task_id.eq(task.0),
                        files::filename.eq(&attachment.filename),
                        files::media_type.eq(&attachment.media_type),
                        files::size_bytes.eq(bytes.len() as i64),
                        files::sha256.eq(&sha),
                        files::data.eq(&bytes),
                        files::created_at.eq(micros(at)),
                    ))
                    .returning(files::id)
                    .by_sql()
                    .get_result(conn)
                    .await?;
                *attachment = attachment.stored(id, &bytes);
            }
            Ok(Content::Text(stored))
        }

        /// Starts a turn with its message: the turn (the partial unique index refuses
        /// a second running one), the message, and the `turn_started` event.
        async fn start_turn(
            conn: &mut Conn,
            task: TaskId,
            message: &NewMessage,
            metadata: &Metadata,
            lease: &Lease,
            webhook: Option<&WebhookEndpoint>,
            at: DateTime<Utc>,
        ) -> Result<TurnId, TxError> {
            let row = NewTurnRow {
                task_id: task.0,
                status: RUNNING,
                metadata: metadata_json(metadata)?,
                started_at: micros(at),
                lease_owner: lease.owner.clone(),
                lease_expires_at: micros(lease.expires_at),
                webhook_url: webhook.map(|w| w.url.clone()),
                webhook_secrets: webhook.map(WebhookEndpoint::secrets_column),
            };
            let turn: i64 = diesel::insert_into(turns::table)
                .values(&row)
                .returning(turns::id)
                .by_sql()
                .get_result(conn)
                .await
                .map_err(|err| match err {
                    DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                        TxError::Busy(None)
                    }
                    other => TxError::Db(other),
                })?;
            let turn = TurnId(turn);
            let input =
                insert_message(conn, task, turn, message.role, &message.content, None, at).await?;
            // The task's input as stored: attachments by id, never their bytes (the
            // caller wrote the input as sent; only attachments make it differ).
            if input.content != message.content {
                diesel::update(tasks::table.find(task.0))
                    .set(tasks::input.eq(content_json(&input.content)?))
                    .by_sql()
                    .execute(conn)
                    .await?;
            }
            let started = Turn {
                id: turn,
                task_id: task,
                status: TurnStatus::Running,
                error: None,
                attempt: 1,
                metadata: metadata.clone(),
                started_at: at,
                ended_at: None,
                usage: None,
                respond_by: None,
            };
            let draft = EventDraft {
                turn_id: turn,
                kind: EventKind::TurnStarted,
                data: baton_domain::events::turn_started(&started, &input),
            };
            append_events(conn, task.0, vec![draft], micros(at)).await?;
            $announce(conn, task, None).await?;
            Ok(turn)
        }

        /// The stored answer for a live idempotency key: `Some` to replay it, `None` if
        /// the key is new (an expired record of it is deleted first), `KeyReused` if it
        /// answered another request.
        async fn replay(
            conn: &mut Conn,
            agent: AgentId,
            record: Option<&IdempotencyRecord>,
            now: i64,
        ) -> Result<Option<Accepted>, TxError> {
            let Some(record) = record else {
                return Ok(None);
            };
            let this_key = idempotency_keys::agent_id
                .eq(agent.0)
                .and(idempotency_keys::idempotency_key.eq(&record.key));
            diesel::delete(
                idempotency_keys::table.filter(this_key.and(idempotency_keys::expires_at.le(now))),
            )
            .execute(conn)
            .await?;
            let found: Option<IdempotencyRow> = idempotency_keys::table
                .filter(this_key)
                .select(IdempotencyRow::as_select())
                .first(conn)
                .await
                .optional()?;
            match found {
                None => Ok(None),
                Some(row) if row.request_hash == record.request_hash => {
                    Ok(Some(row.into_accepted()?))
                }
                Some(_) => Err(TxError::KeyReused),
            }
        }

        /// Stores the key with the answer, in the claim's transaction.
        async fn remember(
            conn: &mut Conn,
            record: Option<&IdempotencyRecord>,
            accepted: &Accepted,
        ) -> Result<(), TxError> {
            let Some(record) = record else { return Ok(()) };
            diesel::insert_into(idempotency_keys::table)
                .values(&NewIdempotencyRow::new(record, accepted)?)
                .by_sql()
                .execute(conn)
                .await
                .map_err(|err| match err {
                    DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                        TxError::KeyRace
                    }
                    other => TxError::Db(other),
                })?;
            Ok(())
        }

        /// Refuses a claim when the agent already runs `limit` turns. The agent's row is
        /// locked first (PostgreSQL), so concurrent claims for one agent take turns and
        /// cannot both see the last free place.
        async fn check_capacity(
            conn: &mut Conn,
            agent: AgentId,
            limit: Option<u32>,
        ) -> Result<(), TxError> {
            let Some(limit) = limit else { return Ok(()) };
            let _locked: i64 = agents::table
                .find(agent.0)
                .select(agents::id)
                $($lock_row)*
                .first(conn)
                .await?;
            let running: i64 = turns::table
                .inner_join(tasks::table)
                .filter(tasks::agent_id.eq(agent.0).and(turns::status.eq(RUNNING)))
                .count()
                .get_result(conn)
                .await?;
            if running >= i64::from(limit) {
                return Err(TxError::AtCapacity(limit));
            }
            Ok(())
        }

        /// How many times a claim is tried when it lost a race it can win on a retry
        /// (a claim racing the end of the turn it found busy, a key's first use).
        const CLAIM_TRIES: usize = 3;

        fn contended() -> ClaimError {
            ClaimError::Store(StoreError::Unavailable(
                "the task is heavily contended; try again".to_owned(),
            ))
        }

        pub(crate) async fn create_task(
            conn: &mut Conn,
            new: &NewTask,
        ) -> Result<Claim, ClaimError> {
            let now = micros(new.now);
            let task_row = NewTaskRow {
                agent_id: new.agent_id.0,
                metadata: metadata_json(&new.metadata)?,
                input: content_json(&new.message.content)?,
                created_at: now,
                updated_at: now,
            };
            let record = new.idempotency.as_ref();
            for _ in 0..CLAIM_TRIES {
                let result = conn
                    .transaction(async |conn| {
                        if let Some(first) = replay(conn, new.agent_id, record, now).await? {
                            return Ok(Claim::Replayed(first));
                        }
                        check_capacity(conn, new.agent_id, new.max_running_per_agent).await?;
                        let task: i64 = diesel::insert_into(tasks::table)
                            .values(&task_row)
                            .returning(tasks::id)
                            .by_sql()
                            .get_result(conn)
                            .await?;
                        let task_id = TaskId(task);
                        let turn_id = start_turn(
                            conn,
                            task_id,
                            &new.message,
                            &new.metadata,
                            &new.lease,
                            new.webhook.as_ref(),
                            new.now,
                        )
                        .await?;
                        let accepted = Accepted {
                            task_id,
                            agent_id: new.agent_id,
                            turn_id,
                            accepted_at: new.now,
                            metadata: new.metadata.clone(),
                            status: TaskStatus::Running,
                        };
                        remember(conn, record, &accepted).await?;
                        Ok::<_, TxError>(Claim::Started(accepted))
                    })
                    .await;
                match result {
                    Ok(claim) => return Ok(claim),
                    Err(TxError::KeyReused) => return Err(ClaimError::IdempotencyKeyReused),
                    Err(TxError::AtCapacity(limit)) => {
                        return Err(ClaimError::TooManyRunningTurns(limit));
                    }
                    Err(TxError::KeyRace) => continue,
                    Err(other) => return Err(ClaimError::Store(other.into_store())),
                }
            }
            Err(contended())
        }

        pub(crate) async fn append_and_claim(
            conn: &mut Conn,
            append: &NewAppend,
        ) -> Result<Claim, ClaimError> {
            let now = micros(append.now);
            let task = append.task_id.0;
            let record = append.idempotency.as_ref();
            // A lost race (possible on PostgreSQL, where the unique indexes decide) is
            // answered by naming the winner; if the winner already ended, the task is
            // idle again and the claim is simply retried.
            for _ in 0..CLAIM_TRIES {
                let result = conn
                    .transaction(async |conn| {
                        if owned_task(conn, append.agent_id, append.task_id)
                            .await?
                            .is_none()
                        {
                            return Err(TxError::NotFound);
                        }
                        if let Some(first) = replay(conn, append.agent_id, record, now).await? {
                            return Ok(Claim::Replayed(first));
                        }
                        if let Some(active) = running_turn(conn, task).await? {
                            return Err(TxError::Busy(Some(active)));
                        }
                        if let Some(waiting) = waiting_turn(conn, task).await? {
                            let (requested, answered) = tool_calls_of(conn, waiting).await?;
                            let answer =
                                tools::check_answer(&requested, &answered, &append.message)
                                    .map_err(TxError::Invalid)?;
                            if answer == tools::Answer::Partial {
                                return answer_waiting_turn(conn, append, waiting, record).await;
                            }
                            // The last answer: the waiting turn is done, the next starts.
                            diesel::update(turns::table.find(waiting.0))
                                .set(turns::status.eq(TurnStatus::Completed.as_str()))
                                .by_sql()
                                .execute(conn)
                                .await?;
                        } else {
                            tools::check_not_an_answer(&append.message)
                                .map_err(TxError::Invalid)?;
                        }
                        check_capacity(conn, append.agent_id, append.max_running_per_agent)
                            .await?;
                        diesel::update(tasks::table.find(task))
                            .set((
                                tasks::input.eq(content_json(&append.message.content)?),
                                tasks::updated_at.eq(now),
                            ))
                            .by_sql()
                            .execute(conn)
                            .await?;
                        let turn_id = start_turn(
                            conn,
                            append.task_id,
                            &append.message,
                            &append.metadata,
                            &append.lease,
                            append.webhook.as_ref(),
                            append.now,
                        )
                        .await?;
                        let accepted = Accepted {
                            task_id: append.task_id,
                            agent_id: append.agent_id,
                            turn_id,
                            accepted_at: append.now,
                            metadata: append.metadata.clone(),
                            status: TaskStatus::Running,
                        };
                        remember(conn, record, &accepted).await?;
                        Ok(Claim::Started(accepted))
                    })
                    .await;
                let busy = match result {
                    Ok(claim) => return Ok(claim),
                    Err(TxError::NotFound) => return Err(ClaimError::TaskNotFound),
                    Err(TxError::KeyReused) => return Err(ClaimError::IdempotencyKeyReused),
                    Err(TxError::AtCapacity(limit)) => {
                        return Err(ClaimError::TooManyRunningTurns(limit));
                    }
                    Err(TxError::Invalid(errors)) => return Err(ClaimError::Invalid(errors)),
                    Err(TxError::KeyRace) => continue,
                    Err(TxError::Busy(active)) => active,
                    Err(other) => return Err(ClaimError::Store(other.into_store())),
                };
                // Busy, perhaps with this very request: on PostgreSQL a duplicate sent
                // to another instance at the same moment can find the first's turn
                // (committed after this transaction looked for the key) or be stopped
                // by the unique index while the first commits. The first's key is
                // committed with its turn, so looking again decides: a replay wins
                // over busy.
                let again = replay(conn, append.agent_id, record, now)
                    .await
                    .map_err(|err| match err {
                        TxError::KeyReused => ClaimError::IdempotencyKeyReused,
                        other => ClaimError::Store(other.into_store()),
                    })?;
                if let Some(first) = again {
                    return Ok(Claim::Replayed(first));
                }
                let active = match busy {
                    Some(active) => Some(active),
                    None => running_turn(conn, task)
                        .await
                        .map_err(TxError::into_store)?,
                };
                if let Some(active) = active {
                    return Err(ClaimError::TaskBusy(active));
                }
                // The winner of the race already ended: the task is idle again.
            }
            Err(contended())
        }

        /// The task's latest turn if it waits for tool answers. The task's row is locked
        /// first (PostgreSQL), so two answers to one turn take turns: the second sees
        /// the first, and exactly one of them is the last.
        async fn waiting_turn(conn: &mut Conn, task: i64) -> Result<Option<TurnId>, TxError> {
            let _locked: i64 = tasks::table
                .find(task)
                .select(tasks::id)
                $($lock_row)*
                .first(conn)
                .await?;
            let latest: Option<(i64, String)> = turns::table
                .filter(turns::task_id.eq(task))
                .order(turns::id.desc())
                .select((turns::id, turns::status))
                .first(conn)
                .await
                .optional()?;
            Ok(latest
                .filter(|(_, status)| status == REQUIRES_ACTION)
                .map(|(id, _)| TurnId(id)))
        }

        /// The tool calls a turn asked for, and those answered so far.
        async fn tool_calls_of(
            conn: &mut Conn,
            turn: TurnId,
        ) -> Result<(Vec<String>, Vec<String>), TxError> {
            let rows: Vec<MessageRow> = messages::table
                .filter(messages::turn_id.eq(turn.0))
                .select(MessageRow::as_select())
                .load(conn)
                .await?;
            let contents = rows
                .into_iter()
                .map(|row| row.into_domain().map(|m| m.content))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                tools::requested_calls(&contents),
                tools::answered_calls(&contents),
            ))
        }

        /// Stores an answer to one of the waiting turn's tool calls while others wait.
        async fn answer_waiting_turn(
            conn: &mut Conn,
            append: &NewAppend,
            waiting: TurnId,
            record: Option<&IdempotencyRecord>,
        ) -> Result<Claim, TxError> {
            insert_message(
                conn,
                append.task_id,
                waiting,
                append.message.role,
                &append.message.content,
                None,
                append.now,
            )
            .await?;
            diesel::update(tasks::table.find(append.task_id.0))
                .set(tasks::updated_at.eq(micros(append.now)))
                .by_sql()
                .execute(conn)
                .await?;
            let accepted = Accepted {
                task_id: append.task_id,
                agent_id: append.agent_id,
                turn_id: waiting,
                accepted_at: append.now,
                metadata: append.metadata.clone(),
                status: TaskStatus::RequiresAction,
            };
            remember(conn, record, &accepted).await?;
            Ok(Claim::Started(accepted))
        }

        /// The turn's open streamed text message, if it has one.
        async fn open_text(conn: &mut Conn, turn: TurnId) -> Result<Option<Message>, TxError> {
            let row: Option<MessageRow> = messages::table
                .filter(
                    messages::turn_id
                        .eq(turn.0)
                        .and(messages::streaming_status.eq(StreamingStatus::InProgress.as_str())),
                )
                .select(MessageRow::as_select())
                .first(conn)
                .await
                .optional()?;
            Ok(row.map(MessageRow::into_domain).transpose()?)
        }

        /// Stores a streamed message's text so far, and closes it if `close`.
        async fn save_text(
            conn: &mut Conn,
            message: &mut Message,
            close: bool,
        ) -> Result<(), TxError> {
            if close {
                message.streaming_status = Some(StreamingStatus::Done);
            }
            diesel::update(messages::table.find(message.id.0))
                .set((
                    messages::content.eq(content_json(&message.content)?),
                    messages::streaming_status
                        .eq(message.streaming_status.map(StreamingStatus::as_str)),
                ))
                .by_sql()
                .execute(conn)
                .await?;
            Ok(())
        }

        /// The running turn, if `holder` holds its lease and plays its current attempt.
        fn held_by(
            turn: TurnId,
            holder: &Holder,
        ) -> diesel::dsl::Filter<
            turns::table,
            diesel::dsl::And<
                diesel::dsl::And<
                    diesel::dsl::And<
                        diesel::dsl::Eq<turns::id, i64>,
                        diesel::dsl::Eq<turns::status, &'static str>,
                    >,
                    diesel::dsl::Eq<turns::lease_owner, String>,
                >,
                diesel::dsl::Eq<turns::attempt, i64>,
            >,
        > {
            turns::table.filter(
                turns::id
                    .eq(turn.0)
                    .and(turns::status.eq(RUNNING))
                    .and(turns::lease_owner.eq(holder.owner.clone()))
                    .and(turns::attempt.eq(i64::from(holder.attempt))),
            )
        }

        /// The condition a guard puts on the turn row that is about to end.
        fn guard_filter(
            guard: &LeaseGuard,
        ) -> Box<
            dyn BoxableExpression<
                    turns::table,
                    Db,
                    SqlType = diesel::sql_types::Nullable<diesel::sql_types::Bool>,
                >,
        > {
            match guard {
                LeaseGuard::Anyone => Box::new(
                    turns::status
                        .eq_any([RUNNING, REQUIRES_ACTION])
                        .nullable(),
                ),
                LeaseGuard::Holder(holder) => Box::new(
                    turns::status
                        .eq(RUNNING)
                        .nullable()
                        .and(turns::lease_owner.eq(holder.owner.clone()))
                        .and(turns::attempt.eq(i64::from(holder.attempt)).nullable()),
                ),
                LeaseGuard::ExpiredBy(cutoff) => Box::new(
                    turns::status
                        .eq(RUNNING)
                        .nullable()
                        .and(expired_by(micros(*cutoff))),
                ),
                LeaseGuard::AnswersDueBy(now) => Box::new(
                    turns::status
                        .eq(REQUIRES_ACTION)
                        .and(turns::respond_by.le(micros(*now))),
                ),
            }
        }

        /// A lease that expired at or before `cutoff`, or none at all.
        fn expired_by(
            cutoff: i64,
        ) -> diesel::dsl::Or<
            diesel::dsl::Nullable<diesel::dsl::IsNull<turns::lease_expires_at>>,
            diesel::dsl::LtEq<turns::lease_expires_at, i64>,
        > {
            turns::lease_expires_at
                .is_null()
                .nullable()
                .or(turns::lease_expires_at.le(cutoff))
        }

        pub(crate) async fn record_output(
            conn: &mut Conn,
            output: &RecordOutput,
        ) -> Result<bool, StoreError> {
            let (task, turn, at) = (output.task_id, output.turn_id, output.now);
            conn.transaction(async |conn| {
                let batch = i64::from(output.batch);
                // One statement on the usual path: this play's turn, and a batch it
                // has not recorded yet.
                let next: Option<i64> = diesel::update(
                    held_by(turn, &output.holder).filter(turns::output_batches.lt(batch)),
                )
                .set(turns::output_batches.eq(batch))
                .returning(turns::id)
                .by_sql()
                .get_result(conn)
                .await
                .optional()?;
                if next.is_none() {
                    // Not this play's turn any more — or still its turn, and the batch
                    // was written again after its commit: already recorded.
                    let held: Option<i64> = held_by(turn, &output.holder)
                        .select(turns::id)
                        .first(conn)
                        .await
                        .optional()?;
                    return Ok(held.is_some());
                }
                let drafts = apply_output(conn, task, turn, &output.ops, at, false).await?;
                append_events(conn, task.0, drafts, micros(at)).await?;
                $announce(conn, task, None).await?;
                Ok::<_, TxError>(true)
            })
            .await
            .map_err(TxError::into_store)
        }

        /// Stores a play's output ops — text deltas into the turn's open streamed
        /// message (opened if none is), whole messages — and returns their events.
        /// With `closing`, the open streamed message is closed too (the turn ends).
        async fn apply_output(
            conn: &mut Conn,
            task: TaskId,
            turn: TurnId,
            ops: &[OutputOp],
            at: DateTime<Utc>,
            closing: bool,
        ) -> Result<Vec<EventDraft>, TxError> {
            let mut drafts = Vec::new();
            let mut open = open_text(conn, turn).await?;
            for op in ops {
                match op {
                    OutputOp::TextDelta(delta) => {
                        if open.is_none() {
                            let empty = Content::text("");
                            let opened = insert_message(
                                conn,
                                task,
                                turn,
                                Role::Assistant,
                                &empty,
                                Some(StreamingStatus::InProgress),
                                at,
                            )
                            .await?;
                            open = Some(opened);
                        }
                        if let Some(message) = open.as_mut() {
                            if let Content::Text(text) = &mut message.content {
                                text.content.push_str(delta);
                            }
                            drafts.push(EventDraft {
                                turn_id: turn,
                                kind: EventKind::TextDelta,
                                data: baton_domain::events::text_delta(turn, message.id, delta),
                            });
                        }
                    }
                    OutputOp::Message(content) => {
                        if let Some(mut message) = open.take() {
                            save_text(conn, &mut message, true).await?;
                            drafts.push(message_event(&message));
                        }
                        let whole = insert_message(
                            conn,
                            task,
                            turn,
                            Role::Assistant,
                            content,
                            None,
                            at,
                        )
                        .await?;
                        drafts.push(message_event(&whole));
                    }
                }
            }
            if let Some(mut message) = open {
                save_text(conn, &mut message, closing).await?;
                if closing {
                    drafts.push(message_event(&message));
                }
            }
            Ok(drafts)
        }

        fn message_event(message: &Message) -> EventDraft {
            EventDraft {
                turn_id: message.turn_id,
                kind: EventKind::Message,
                data: baton_domain::events::message(message),
            }
        }

        /// Each task's latest turn and latest agent message, by task id.
        async fn latest_of_many(
            conn: &mut Conn,
            rows: &[TaskRow],
        ) -> Result<(HashMap<i64, TurnRow>, HashMap<i64, MessageRow>), StoreError> {
            let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
            let latest_turns: Vec<Option<i64>> = turns::table
                .filter(turns::task_id.eq_any(&ids))
                .group_by(turns::task_id)
                .select(max(turns::id))
                .load(conn)
                .await
                .map_err(from_diesel)?;
            let latest_turns: Vec<i64> = latest_turns.into_iter().flatten().collect();
            let turns_by_task: HashMap<i64, TurnRow> = turns::table
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
            let messages_by_task: HashMap<i64, MessageRow> = messages::table
                .filter(messages::id.eq_any(&latest_messages))
                .select(MessageRow::as_select())
                .load(conn)
                .await
                .map_err(from_diesel)?
                .into_iter()
                .map(|m| (m.task_id, m))
                .collect();
            Ok((turns_by_task, messages_by_task))
        }

        /// As `latest_of_many`, for one task.
        async fn latest_of_one(
            conn: &mut Conn,
            task: i64,
        ) -> Result<(HashMap<i64, TurnRow>, HashMap<i64, MessageRow>), StoreError> {
            let turn: Option<TurnRow> = turns::table
                .filter(turns::task_id.eq(task))
                .order(turns::id.desc())
                .select(TurnRow::as_select())
                .first(conn)
                .await
                .optional()
                .map_err(from_diesel)?;
            let message: Option<MessageRow> = messages::table
                .filter(
                    messages::task_id
                        .eq(task)
                        .and(messages::role.eq(Role::Assistant.as_str())),
                )
                .order(messages::id.desc())
                .select(MessageRow::as_select())
                .first(conn)
                .await
                .optional()
                .map_err(from_diesel)?;
            Ok((
                turn.map(|turn| (task, turn)).into_iter().collect(),
                message.map(|message| (task, message)).into_iter().collect(),
            ))
        }

        /// Builds views for task rows: each task's latest turn and latest agent message.
        /// One task (a get, a long-poll's wake-up) takes two indexed lookups whose
        /// statements stay prepared; a page takes four statements over its ids.
        async fn task_views(
            conn: &mut Conn,
            rows: Vec<TaskRow>,
        ) -> Result<Vec<TaskView>, StoreError> {
            let (mut turns_by_task, mut messages_by_task) = match rows.as_slice() {
                [] => return Ok(Vec::new()),
                [row] => latest_of_one(conn, row.id).await?,
                _ => latest_of_many(conn, &rows).await?,
            };
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
                if owned_task(conn, agent, task).await?.is_none() {
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
            conn.transaction(async |conn| finish_in(conn, finish).await)
                .await
                .map_err(TxError::into_store)
        }

        pub(crate) async fn finish_turns(
            conn: &mut Conn,
            finishes: &[FinishTurn],
        ) -> Result<Vec<bool>, StoreError> {
            conn.transaction(async |conn| {
                let mut ended = Vec::with_capacity(finishes.len());
                for finish in finishes {
                    ended.push(finish_in(conn, finish).await?);
                }
                Ok::<_, TxError>(ended)
            })
            .await
            .map_err(TxError::into_store)
        }

        /// Ends a turn inside the caller's write transaction (see
        /// `TaskStore::finish_turn`).
        async fn finish_in(conn: &mut Conn, finish: &FinishTurn) -> Result<bool, TxError> {
            let now = micros(finish.now);
            let status = finish.outcome.status();
            let (code, message) = match &finish.outcome {
                TurnOutcome::Failed(err) => (Some(err.code.as_str()), Some(err.message.as_str())),
                TurnOutcome::Completed
                | TurnOutcome::Cancelled
                | TurnOutcome::RequiresAction { .. } => (None, None),
            };
            let (task, turn) = (finish.task_id, finish.turn_id);
            let usage = finish.usage.as_ref().map(crate::models::json).transpose()?;
            let respond_by = match &finish.outcome {
                TurnOutcome::RequiresAction { respond_by } => Some(micros(*respond_by)),
                _ => None,
            };
            // Only a running (or, for a cancel or a timeout, a waiting) turn can
            // end, and only as its guard allows: late output for an ended turn is
            // dropped, a lost lease cannot end a turn.
            let ended = diesel::update(
                turns::table.filter(turns::id.eq(turn.0).and(guard_filter(&finish.guard))),
            )
            .set((
                turns::status.eq(status.as_str()),
                turns::error_code.eq(code),
                turns::error_message.eq(message),
                turns::ended_at.eq(now),
                turns::lease_owner.eq(None::<String>),
                turns::lease_expires_at.eq(None::<i64>),
                turns::usage.eq(usage.as_deref()),
                turns::respond_by.eq(respond_by),
            ))
            .returning((
                TurnRow::as_returning(),
                turns::webhook_url,
                turns::webhook_secrets,
            ))
            .by_sql()
            .get_result::<(TurnRow, Option<String>, Option<String>)>(conn)
            .await
            .optional()?;
            let Some((ended, hook_url, hook_secrets)) = ended else {
                return Ok(false);
            };
            // What the play had not recorded yet is stored with the end; the open
            // streamed message is closed.
            let mut drafts =
                apply_output(conn, task, turn, &finish.output, finish.now, true).await?;
            let output: Vec<Message> = messages::table
                .filter(
                    messages::turn_id
                        .eq(turn.0)
                        .and(messages::role.eq(Role::Assistant.as_str())),
                )
                .order(messages::id.asc())
                .select(MessageRow::as_select())
                .load(conn)
                .await?
                .into_iter()
                .map(MessageRow::into_domain)
                .collect::<Result<_, _>>()?;
            let ended = ended.into_domain()?;
            let (kind, data) = baton_domain::events::turn_ended(&ended, &output);
            drafts.push(EventDraft {
                turn_id: turn,
                kind,
                data,
            });
            let own_hook = endpoint(hook_url, hook_secrets);
            queue_delivery(conn, &ended, own_hook, &output, now).await?;
            append_events_touching(conn, task.0, drafts, now).await?;
            $announce(conn, task, Some(turn)).await?;
            Ok(true)
        }

        /// Writes the delivery of a turn's end to the outbox, to the turn's own webhook
        /// (`own_hook`) or else its agent's default one, if there is either.
        async fn queue_delivery(
            conn: &mut Conn,
            ended: &Turn,
            own_hook: Option<WebhookEndpoint>,
            output: &[Message],
            now: i64,
        ) -> Result<(), TxError> {
            let (agent_id, task_metadata, agent_url, agent_secrets): (
                i64,
                String,
                Option<String>,
                Option<String>,
            ) = tasks::table
                .inner_join(agents::table)
                .filter(tasks::id.eq(ended.task_id.0))
                .select((
                    tasks::agent_id,
                    tasks::metadata,
                    agents::webhook_url,
                    agents::webhook_secrets,
                ))
                .first(conn)
                .await?;
            let Some(endpoint) = own_hook.or(endpoint(agent_url, agent_secrets)) else {
                return Ok(());
            };
            let task_metadata: Metadata = serde_json::from_str(&task_metadata)
                .map_err(|err| crate::error::corrupt(format!("tasks.metadata: {err}")))?;
            let payload = baton_domain::webhooks::payload(ended, agent_id, output, &task_metadata);
            let row = NewDeliveryRow {
                webhook_id: baton_domain::webhooks::new_delivery_id(),
                task_id: ended.task_id.0,
                turn_id: ended.id.0,
                event_type: baton_domain::webhooks::event_type(ended).to_owned(),
                url: endpoint.url.clone(),
                secrets: endpoint.secrets_column(),
                payload: serde_json::to_string(&payload).map_err(StoreError::internal)?,
                status: "pending",
                next_attempt_at: Some(now),
                created_at: now,
            };
            diesel::insert_into(webhook_deliveries::table)
                .values(&row)
                .by_sql()
                .execute(conn)
                .await?;
            Ok(())
        }

        pub(crate) async fn claim_deliveries(
            conn: &mut Conn,
            now: DateTime<Utc>,
            until: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<DueDelivery>, StoreError> {
            let now = micros(now);
            // Every instance polls every second: look before taking the write lock (on
            // SQLite, the single writer) when, as usually, nothing is due.
            let anything_due: Option<i64> = webhook_deliveries::table
                .filter(
                    webhook_deliveries::status
                        .eq("pending")
                        .and(webhook_deliveries::next_attempt_at.le(now)),
                )
                .select(webhook_deliveries::id)
                .first(conn)
                .await
                .optional()
                .map_err(from_diesel)?;
            if anything_due.is_none() {
                return Ok(Vec::new());
            }
            conn.transaction(async |conn| {
                let due: Vec<i64> = webhook_deliveries::table
                    .filter(
                        webhook_deliveries::status
                            .eq("pending")
                            .and(webhook_deliveries::next_attempt_at.le(now))
                            .and(
                                webhook_deliveries::claimed_until
                                    .is_null()
                                    .or(webhook_deliveries::claimed_until.le(now)),
                            ),
                    )
                    .order(webhook_deliveries::next_attempt_at.asc())
                    .limit(i64::from(limit))
                    .select(webhook_deliveries::id)
                    $($lock_skip_locked)*
                    .load(conn)
                    .await?;
                if due.is_empty() {
                    return Ok(Vec::new());
                }
                let claimed: Vec<DeliveryRow> = diesel::update(
                    webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(&due)),
                )
                .set(webhook_deliveries::claimed_until.eq(micros(until)))
                .returning(DeliveryRow::as_returning())
                .get_results(conn)
                .await?;
                Ok::<_, TxError>(
                    claimed
                        .into_iter()
                        .map(DeliveryRow::into_due)
                        .collect::<Result<_, _>>()?,
                )
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn record_attempt(
            conn: &mut Conn,
            attempt: &AttemptResult,
        ) -> Result<bool, StoreError> {
            let (status, next_at) = match attempt.next {
                NextStep::Delivered => ("delivered", None),
                NextStep::RetryAt(at) => ("pending", Some(micros(at))),
                NextStep::GiveUp => ("failed", None),
            };
            conn.transaction(async |conn| {
                let number: Option<i64> = diesel::update(
                    webhook_deliveries::table.filter(
                        webhook_deliveries::id
                            .eq(attempt.delivery_id)
                            .and(webhook_deliveries::status.eq("pending")),
                    ),
                )
                .set((
                    webhook_deliveries::status.eq(status),
                    webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                    webhook_deliveries::next_attempt_at.eq(next_at),
                    webhook_deliveries::claimed_until.eq(None::<i64>),
                ))
                .returning(webhook_deliveries::attempts)
                .by_sql()
                .get_result(conn)
                .await
                .optional()?;
                let Some(number) = number else { return Ok(false) };
                let row = AttemptRow {
                    delivery_id: attempt.delivery_id,
                    attempt: number,
                    started_at: micros(attempt.started_at),
                    status_code: attempt.status_code.map(i64::from),
                    latency_ms: i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
                    error: attempt.error.clone(),
                };
                diesel::insert_into(webhook_attempts::table)
                    .values(&row)
                    .by_sql()
                    .execute(conn)
                    .await?;
                Ok::<_, TxError>(true)
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn list_deliveries(
            conn: &mut Conn,
            agent: AgentId,
            task: TaskId,
        ) -> Result<Option<Vec<DeliveryView>>, StoreError> {
            conn.transaction(async |conn| {
                if owned_task(conn, agent, task).await?.is_none() {
                    return Ok(None);
                }
                let rows: Vec<DeliveryRow> = webhook_deliveries::table
                    .filter(webhook_deliveries::task_id.eq(task.0))
                    .order(webhook_deliveries::id.asc())
                    .select(DeliveryRow::as_select())
                    .load(conn)
                    .await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                let mut attempts: HashMap<i64, Vec<_>> = HashMap::new();
                let attempt_rows: Vec<AttemptRow> = webhook_attempts::table
                    .filter(webhook_attempts::delivery_id.eq_any(&ids))
                    .order((webhook_attempts::delivery_id.asc(), webhook_attempts::attempt.asc()))
                    .select(AttemptRow::as_select())
                    .load(conn)
                    .await?;
                for row in attempt_rows {
                    attempts.entry(row.delivery_id).or_default().push(row.into_view()?);
                }
                let views = rows
                    .into_iter()
                    .map(|row| {
                        let mine = attempts.remove(&row.id).unwrap_or_default();
                        row.into_view(mine)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Ok::<_, TxError>(Some(views))
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn redeliver(
            conn: &mut Conn,
            delivery: i64,
            now: DateTime<Utc>,
        ) -> Result<bool, StoreError> {
            let updated = diesel::update(webhook_deliveries::table.find(delivery))
                .set((
                    webhook_deliveries::status.eq("pending"),
                    webhook_deliveries::round_start.eq(webhook_deliveries::attempts),
                    webhook_deliveries::next_attempt_at.eq(Some(micros(now))),
                    webhook_deliveries::claimed_until.eq(None::<i64>),
                ))
                .execute(conn)
                .await
                .map_err(from_diesel)?;
            Ok(updated > 0)
        }

        #[derive(diesel::QueryableByName)]
        struct AppliedVersion {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            version: Option<String>,
        }

        pub(crate) async fn check_ready(conn: &mut Conn, latest: &str) -> Result<(), StoreError> {
            let applied: AppliedVersion = diesel::sql_query(
                "SELECT MAX(version) AS version FROM __diesel_schema_migrations",
            )
            .get_result(conn)
            .await
            .map_err(from_diesel)?;
            match applied.version {
                Some(version) if version.as_str() >= latest => Ok(()),
                other => Err(StoreError::Unavailable(format!(
                    "the database schema is at migration {} but this build needs {latest}; run `baton migrate`",
                    other.as_deref().unwrap_or("none")
                ))),
            }
        }

        pub(crate) async fn list_events(
            conn: &mut Conn,
            agent: AgentId,
            task: TaskId,
            after: i64,
            limit: u32,
        ) -> Result<Option<EventPage>, StoreError> {
            conn.transaction(async |conn| {
                let Some(last_seq) = owned_task(conn, agent, task).await? else {
                    return Ok(None);
                };
                let first: Option<i64> = events::table
                    .filter(events::task_id.eq(task.0))
                    .select(diesel::dsl::min(events::seq))
                    .first(conn)
                    .await?;
                let rows: Vec<EventRow> = events::table
                    .filter(events::task_id.eq(task.0).and(events::seq.gt(after)))
                    .order(events::seq.asc())
                    .limit(i64::from(limit))
                    .select(EventRow::as_select())
                    .load(conn)
                    .await?;
                let events = rows
                    .into_iter()
                    .map(EventRow::into_domain)
                    .collect::<Result<_, _>>()?;
                Ok::<_, TxError>(Some(EventPage {
                    events,
                    first_kept: first.unwrap_or(last_seq + 1),
                }))
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn prune_events(
            conn: &mut Conn,
            task: TaskId,
            before: i64,
        ) -> Result<u64, StoreError> {
            let deleted = diesel::delete(
                events::table.filter(events::task_id.eq(task.0).and(events::seq.lt(before))),
            )
            .execute(conn)
            .await
            .map_err(from_diesel)?;
            Ok(deleted as u64)
        }

        pub(crate) async fn renew_leases(
            conn: &mut Conn,
            owner: &str,
            turns: &[(TurnId, u32)],
            expires_at: DateTime<Utc>,
        ) -> Result<Vec<TurnId>, StoreError> {
            // One update per attempt number among the turns (a handful at most), so
            // each lease is renewed only for the attempt its holder plays.
            let mut by_attempt: HashMap<u32, Vec<i64>> = HashMap::new();
            for (turn, attempt) in turns {
                by_attempt.entry(*attempt).or_default().push(turn.0);
            }
            conn.transaction(async |conn| {
                let mut renewed = Vec::new();
                for (attempt, ids) in &by_attempt {
                    let these: Vec<i64> = diesel::update(
                        turns::table.filter(
                            turns::id
                                .eq_any(ids)
                                .and(turns::status.eq(RUNNING))
                                .and(turns::lease_owner.eq(owner))
                                .and(turns::attempt.eq(i64::from(*attempt))),
                        ),
                    )
                    .set(turns::lease_expires_at.eq(micros(expires_at)))
                    .returning(turns::id)
                    .get_results(conn)
                    .await?;
                    renewed.extend(these.into_iter().map(TurnId));
                }
                Ok::<_, TxError>(renewed)
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn release_leases(
            conn: &mut Conn,
            owner: &str,
            turns: &[TurnId],
            now: DateTime<Utc>,
        ) -> Result<u64, StoreError> {
            let ids: Vec<i64> = turns.iter().map(|t| t.0).collect();
            let released = diesel::update(
                turns::table.filter(
                    turns::id
                        .eq_any(&ids)
                        .and(turns::status.eq(RUNNING))
                        .and(turns::lease_owner.eq(owner)),
                ),
            )
            .set((
                turns::lease_owner.eq(None::<String>),
                turns::lease_expires_at.eq(micros(now)),
            ))
            .execute(conn)
            .await
            .map_err(from_diesel)?;
            Ok(released as u64)
        }

        pub(crate) async fn get_file(
            conn: &mut Conn,
            agent: AgentId,
            task: TaskId,
            file: i64,
        ) -> Result<Option<StoredFile>, StoreError> {
            let found: Option<(i64, String, String, Vec<u8>)> = files::table
                .inner_join(tasks::table)
                .filter(
                    files::id
                        .eq(file)
                        .and(files::task_id.eq(task.0))
                        .and(tasks::agent_id.eq(agent.0)),
                )
                .select((files::id, files::filename, files::media_type, files::data))
                .first(conn)
                .await
                .optional()
                .map_err(from_diesel)?;
            Ok(found.map(|(id, filename, media_type, data)| StoredFile {
                file_id: id,
                task_id: task,
                filename,
                media_type,
                data,
            }))
        }

        pub(crate) async fn overdue_tool_calls(
            conn: &mut Conn,
            now: DateTime<Utc>,
            limit: u32,
        ) -> Result<Vec<(TaskId, TurnId)>, StoreError> {
            let rows: Vec<(i64, i64)> = turns::table
                .filter(
                    turns::status
                        .eq(REQUIRES_ACTION)
                        .and(turns::respond_by.le(micros(now))),
                )
                .order(turns::respond_by.asc())
                .limit(i64::from(limit))
                .select((turns::task_id, turns::id))
                .load(conn)
                .await
                .map_err(from_diesel)?;
            Ok(rows
                .into_iter()
                .map(|(task, turn)| (TaskId(task), TurnId(turn)))
                .collect())
        }

        pub(crate) async fn expired_turns(
            conn: &mut Conn,
            cutoff: DateTime<Utc>,
            after: Option<TurnId>,
            limit: u32,
        ) -> Result<Vec<ExpiredTurn>, StoreError> {
            let rows: Vec<(i64, i64, i64, i64, Option<String>)> = turns::table
                .inner_join(tasks::table)
                .filter(
                    turns::status
                        .eq(RUNNING)
                        .and(expired_by(micros(cutoff)))
                        .and(turns::id.gt(after.map_or(0, |t| t.0))),
                )
                .order(turns::id.asc())
                .limit(i64::from(limit))
                .select((
                    tasks::agent_id,
                    turns::task_id,
                    turns::id,
                    turns::attempt,
                    turns::lease_owner,
                ))
                .load(conn)
                .await
                .map_err(from_diesel)?;
            rows.into_iter()
                .map(|(agent, task, turn, attempt, owner)| {
                    Ok(ExpiredTurn {
                        agent_id: AgentId(agent),
                        task_id: TaskId(task),
                        turn_id: TurnId(turn),
                        attempt: count("turns.attempt", attempt)?,
                        owner,
                    })
                })
                .collect()
        }

        pub(crate) async fn take_over_turns(
            conn: &mut Conn,
            take: &TakeOver,
        ) -> Result<Vec<(TurnId, u32)>, StoreError> {
            let ids: Vec<i64> = take.turns.iter().map(|turn| turn.0).collect();
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let now = micros(take.now);
            // Set-based, so a sweep of many orphans costs a few statements, not a
            // transaction per turn.
            conn.transaction(async |conn| {
                let taken: Vec<TurnRow> = diesel::update(
                    turns::table.filter(
                        turns::id
                            .eq_any(&ids)
                            .and(turns::status.eq(RUNNING))
                            .and(expired_by(micros(take.expired_by))),
                    ),
                )
                .set((
                    turns::lease_owner.eq(&take.lease.owner),
                    turns::lease_expires_at.eq(micros(take.lease.expires_at)),
                    turns::attempt.eq(turns::attempt + 1),
                    turns::output_batches.eq(0),
                ))
                .returning(TurnRow::as_returning())
                .get_results(conn)
                .await?;
                if taken.is_empty() {
                    return Ok(Vec::new());
                }
                let taken_ids: Vec<i64> = taken.iter().map(|t| t.id).collect();
                // The interrupted attempts' output goes: each new attempt starts over.
                diesel::delete(
                    messages::table.filter(
                        messages::turn_id
                            .eq_any(&taken_ids)
                            .and(messages::role.eq(Role::Assistant.as_str())),
                    ),
                )
                .execute(conn)
                .await?;
                // Each turn's input is its first message.
                let mut inputs: HashMap<i64, MessageRow> = HashMap::new();
                let rows: Vec<MessageRow> = messages::table
                    .filter(messages::turn_id.eq_any(&taken_ids))
                    .order(messages::id.asc())
                    .select(MessageRow::as_select())
                    .load(conn)
                    .await?;
                for row in rows {
                    inputs.entry(row.turn_id).or_insert(row);
                }
                let mut attempts = Vec::with_capacity(taken.len());
                for row in taken {
                    let input = inputs.remove(&row.id).ok_or_else(|| {
                        crate::error::corrupt(format!("turn {} has no input message", row.id))
                    })?;
                    let restarted = row.into_domain()?;
                    let draft = EventDraft {
                        turn_id: restarted.id,
                        kind: EventKind::TurnStarted,
                        data: baton_domain::events::turn_started(&restarted, &input.into_domain()?),
                    };
                    append_events(conn, restarted.task_id.0, vec![draft], now).await?;
                    $announce(conn, restarted.task_id, None).await?;
                    attempts.push((restarted.id, restarted.attempt));
                }
                Ok::<_, TxError>(attempts)
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn purge_idempotency_keys(
            conn: &mut Conn,
            now: DateTime<Utc>,
        ) -> Result<u64, StoreError> {
            let purged = diesel::delete(
                idempotency_keys::table.filter(idempotency_keys::expires_at.le(micros(now))),
            )
            .execute(conn)
            .await
            .map_err(from_diesel)?;
            Ok(purged as u64)
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

        pub(crate) async fn list_agents(
            conn: &mut Conn,
            page: PageRequest,
        ) -> Result<Page<Agent>, StoreError> {
            let mut query = agents::table
                .select(AgentRow::as_select())
                .order(agents::id.asc())
                .limit(i64::from(page.limit) + 1)
                .into_boxed();
            if let Some(after) = page.after {
                query = query.filter(agents::id.gt(after));
            }
            let agents = query
                .load(conn)
                .await
                .map_err(from_diesel)?
                .into_iter()
                .map(AgentRow::into_domain)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Page::from_overfetch(agents, page.limit, |a| a.id.0))
        }

        pub(crate) async fn update_agent(
            conn: &mut Conn,
            id: AgentId,
            update: &AgentUpdate,
        ) -> Result<Option<Agent>, StoreError> {
            conn.transaction(async |conn| {
                let found: Option<AgentRow> = agents::table
                    .find(id.0)
                    .select(AgentRow::as_select())
                    .first(conn)
                    .await
                    .optional()?;
                let Some(row) = found else { return Ok(None) };
                let mut agent = row.into_domain()?;
                if let Some(name) = &update.name {
                    agent.name = name.clone();
                }
                if let Some(runner) = &update.runner {
                    agent.runner = runner.clone();
                }
                if let Some(policy) = update.policy {
                    agent.policy = policy;
                }
                if let Some(webhook) = &update.webhook {
                    agent.webhook = webhook.clone();
                }
                let row = NewAgentRow::from_domain(&NewAgent {
                    name: agent.name.clone(),
                    runner: agent.runner.clone(),
                    policy: agent.policy,
                    webhook: agent.webhook.clone(),
                    created_at: agent.created_at,
                })?;
                diesel::update(agents::table.find(id.0))
                    .set((
                        agents::name.eq(&row.name),
                        agents::runner_kind.eq(&row.runner_kind),
                        agents::runner_config.eq(&row.runner_config),
                        agents::on_interrupt.eq(row.on_interrupt),
                        agents::max_attempts.eq(row.max_attempts),
                        agents::turn_timeout_ms.eq(row.turn_timeout_ms),
                        agents::webhook_url.eq(&row.webhook_url),
                        agents::webhook_secrets.eq(&row.webhook_secrets),
                    ))
                    .execute(conn)
                    .await?;
                $announce_agents(conn, &AgentsChanged::Agent(id)).await?;
                Ok::<_, TxError>(Some(agent))
            })
            .await
            .map_err(TxError::into_store)
        }

        pub(crate) async fn list_api_keys(
            conn: &mut Conn,
            agent: AgentId,
        ) -> Result<Vec<ApiKey>, StoreError> {
            api_keys::table
                .filter(api_keys::agent_id.eq(agent.0))
                .order(api_keys::id.asc())
                .select(ApiKeyRow::as_select())
                .load(conn)
                .await
                .map_err(from_diesel)?
                .into_iter()
                .map(ApiKeyRow::into_domain)
                .collect()
        }

        pub(crate) async fn touch_api_key(
            conn: &mut Conn,
            key: ApiKeyId,
            now: DateTime<Utc>,
        ) -> Result<(), StoreError> {
            diesel::update(api_keys::table.find(key.0))
                .set(api_keys::last_used_at.eq(micros(now)))
                .by_sql()
                .execute(conn)
                .await
                .map_err(from_diesel)?;
            Ok(())
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
            if revoked > 0 {
                $announce_agents(conn, &AgentsChanged::Key(prefix.to_owned()))
                    .await
                    .map_err(from_diesel)?;
            }
            Ok(revoked > 0)
        }
    };
}

/// The queries on SQLite.
pub(crate) mod sqlite {
    define_queries!(
        crate::backend::SqliteConn,
        diesel::sqlite::Sqlite,
        crate::queries::announce::sqlite,
        crate::queries::announce::agents_sqlite,
        // One writer: its group transaction is the lock.
        [],
        []
    );
}

/// The queries on PostgreSQL.
pub(crate) mod postgres {
    define_queries!(
        crate::backend::PgConn,
        diesel::pg::Pg,
        crate::queries::announce::postgres,
        crate::queries::announce::agents_postgres,
        // Concurrent senders on several instances claim disjoint deliveries.
        [.for_update().skip_locked()],
        // Concurrent claims of one agent take turns.
        [.for_update()]
    );
}
