//! The queries on PostgreSQL: the files beside this one, with PostgreSQL's connection
//! and what PostgreSQL does its own way. Several instances write at once, so rows are
//! locked where two writers must take turns, and every change is announced to the
//! other instances with `pg_notify`: a turn's change once its operation is over (see
//! `crate::announce`), a change of an agent or a key inside its transaction (delivered
//! only if it commits).

use baton_domain::{
    AgentId, AgentsChanged, Claim, ClaimError, Ended, FinishTurn, NewTask, StoreError, TaskId,
    TurnHistory, TurnId,
};
use diesel::QueryResult;
use diesel::connection::TransactionDepthChange;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text};
use diesel_async::{
    AnsiTransactionManager, RunQueryDsl, SimpleAsyncConnection, TransactionManager,
};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, try_join, try_join_all};

use crate::error::from_diesel;
use crate::listen::{AGENTS_CHANNEL, CHANNEL, encode, encode_agents};
use crate::models::{
    EventDraft, MessageParts, NewEventRow, NewMessageRow, NewTaskRow, NewTurnRow, micros,
};
use crate::one_statement::OneStatement;
use crate::queries::{TxBody, TxError};
use crate::schema::{
    agents as agents_table, events as events_table, messages as messages_table, tasks,
    turns as turns_table,
};
use crate::statement_cache::CacheBySql;

pub(crate) use crate::backend::PgConn as Conn;
pub(crate) type Db = diesel::pg::Pg;

// Each query file is also a module of `sqlite` (see `crate::queries`).
#[path = "agents.rs"]
mod agents;
#[path = "claims.rs"]
mod claims;
#[path = "events.rs"]
mod events;
#[path = "idempotency.rs"]
mod idempotency;
#[path = "leases.rs"]
mod leases;
#[path = "messages.rs"]
mod messages;
#[path = "push.rs"]
mod push;
#[path = "queue.rs"]
mod queue;
#[path = "readiness.rs"]
mod readiness;
#[path = "reads.rs"]
mod reads;
#[path = "turn_start.rs"]
mod turn_start;
#[path = "turns.rs"]
mod turns;
#[path = "webhooks.rs"]
mod webhooks;

pub(crate) use self::{
    agents::*, claims::*, events::*, idempotency::*, leases::*, push::*, queue::*, readiness::*,
    reads::*, turns::*, webhooks::*,
};

/// Tells other instances to drop what they cached of an agent or a key.
async fn announce_agents(conn: &mut Conn, change: &AgentsChanged) -> QueryResult<()> {
    pg_notify(conn, AGENTS_CHANNEL, encode_agents(change)).await
}

/// `pg_notify` on `channel`, sent on the shared connection (so it can be pipelined
/// with the statements beside it).
fn pg_notify<'c>(
    conn: &'c Conn,
    channel: &'static str,
    payload: String,
) -> BoxFuture<'c, QueryResult<()>> {
    let mut on = conn;
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .execute(&mut on)
        .map(|sent| sent.map(drop))
        .boxed()
}

/// Has other instances told that the task changed, and which turn the change ended
/// (so the instance playing it stops): after the operation, by the store's announcer
/// (`crate::announce`, which says why not inside the transaction); where no operation
/// collects announcements, by a `pg_notify` sent now — pipelined with the statements
/// beside it, and inside the caller's transaction if it has one (delivered only if it
/// commits).
fn announce_change(
    conn: &Conn,
    task: TaskId,
    ended: Option<TurnId>,
) -> BoxFuture<'_, QueryResult<()>> {
    match crate::announce::defer(encode(task, ended)) {
        Ok(()) => futures_util::future::ready(Ok(())).boxed(),
        Err(payload) => pg_notify(conn, CHANNEL, payload),
    }
}

/// Locks the agent's row, so concurrent claims for one agent take turns and cannot
/// both see the last free place.
async fn lock_agent(conn: &mut Conn, agent: AgentId) -> QueryResult<()> {
    agents_table::table
        .find(agent.0)
        .select(agents_table::id)
        .for_update()
        .first::<i64>(conn)
        .await
        .map(drop)
}

/// Locks the task's row, so two answers to one turn's tool calls take turns: the
/// second sees the first, and exactly one of them is the last.
async fn lock_task(conn: &mut Conn, task: i64) -> QueryResult<()> {
    tasks::table
        .find(task)
        .select(tasks::id)
        .for_update()
        .first::<i64>(conn)
        .await
        .map(drop)
}

/// Locks the task's running turn, or the one waiting for tool answers, before the
/// task's row: the order in which the turn's player locks them (it updates its turn,
/// then the task), so an interrupt and the turn's own end never wait on each other.
async fn lock_active_turn(conn: &mut Conn, task: i64) -> QueryResult<()> {
    use crate::queries::{REQUIRES_ACTION, RUNNING};
    use crate::schema::turns;
    turns::table
        .filter(turns::task_id.eq(task))
        .filter(turns::status.eq_any([RUNNING, REQUIRES_ACTION]))
        .select(turns::id)
        .for_update()
        .load::<i64>(conn)
        .await
        .map(drop)
}

/// Inserts an operation's events in one statement (in chunks that keep few statement
/// shapes prepared) and has the change announced ([`announce_change`]).
async fn write_events(
    conn: &mut Conn,
    task: TaskId,
    rows: &[NewEventRow],
    ended: Option<TurnId>,
) -> QueryResult<()> {
    // Futures on a shared reference are pipelined by the connection: each is sent
    // as it is first polled, before the answers to the others are read.
    let shared: &Conn = conn;
    let inserts = rows.chunks(EVENTS_PER_INSERT).map(|chunk| {
        let mut on = shared;
        diesel::insert_into(events_table::table)
            .values(chunk)
            .by_sql()
            .execute(&mut on)
    });
    try_join(try_join_all(inserts), announce_change(shared, task, ended))
        .await
        .map(drop)
}

/// Rows per `INSERT` of events.
const EVENTS_PER_INSERT: usize = 32;

/// The deliveries due at `now`, skipping those another instance is claiming.
async fn due_deliveries(conn: &mut Conn, now: i64, limit: u32) -> QueryResult<Vec<i64>> {
    webhooks::due(now, i64::from(limit))
        .for_update()
        .skip_locked()
        .load(conn)
        .await
}

/// Whether a new task is plain: no idempotency key, no cap on the agent's running
/// turns, no push config, no attachment bytes to keep — nothing to read before
/// writing, so its rows can be written at once ([`create_plain_tasks`]).
pub(crate) fn is_plain(new: &NewTask) -> bool {
    new.idempotency.is_none()
        && new.max_running_per_agent.is_none()
        && new.push.is_none()
        && !messages::keeps_files(&new.message.content)
}

/// Creates a task as `claims::create_task` does; a plain one ([`is_plain`]) as
/// [`create_plain_tasks`] does, in two statements instead of seven.
///
/// Returns with the claim the new turn's input, as a read of it would find it, to be
/// kept until the turn plays (`crate::fresh_inputs`) — unless it is large.
pub(crate) async fn create_task(
    conn: &mut Conn,
    new: &NewTask,
) -> Result<(Claim, Option<TurnHistory>), ClaimError> {
    if !is_plain(new) {
        return Ok((claims::create_task(conn, new).await?, None));
    }
    let mut created = create_plain_tasks(conn, std::slice::from_ref(new))
        .await
        .map_err(|failed| failed.error)?;
    created
        .pop()
        .ok_or_else(|| StoreError::internal("a task created and not returned").into())
}

/// Why writes sent together failed, and whether anything of them may have been kept.
#[derive(Debug)]
pub(crate) struct Failed<E> {
    pub error: E,
    /// The database answered the failure, so none of the writes was kept (their
    /// transaction rolled back): each may be tried alone. Otherwise the connection
    /// failed and whether the last statement committed is unknown.
    pub rolled_back: bool,
}

impl<E: From<StoreError>> Failed<E> {
    fn of(err: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        let rolled_back = !matches!(
            err,
            Error::DatabaseError(
                DatabaseErrorKind::UnableToSendCommand | DatabaseErrorKind::ClosedConnection,
                _
            ) | Error::BrokenTransactionManager
        );
        Failed {
            error: E::from(from_diesel(err)),
            rolled_back,
        }
    }

    /// A failure that kept nothing: before anything was sent, or one that rolled the
    /// transaction back.
    fn kept_nothing(error: E) -> Self {
        Failed {
            error,
            rolled_back: true,
        }
    }
}

/// Creates plain tasks ([`is_plain`]), each as `claims::create_task` would, in two
/// statements for all of them: their ids are drawn from the sequences, then their rows
/// — a task, its first turn, its message and the turn's first event each — are written
/// by one statement ([`OneStatement`]), which is its own transaction: all are kept or
/// none.
pub(crate) async fn create_plain_tasks(
    conn: &mut Conn,
    news: &[NewTask],
) -> Result<Vec<(Claim, Option<TurnHistory>)>, Failed<ClaimError>> {
    // At most a batch's worth (`crate::batches`).
    let count = news.len() as i64;
    let ids: Vec<(i64, i64, i64)> = diesel::sql_query(
        "SELECT nextval('tasks_id_seq') AS task, nextval('turns_id_seq') AS turn, \
         nextval('messages_id_seq') AS message FROM generate_series(1, $1)",
    )
    .bind::<BigInt, _>(count)
    .by_sql()
    .load::<NewIds>(conn)
    .await
    .map_err(Failed::of)?
    .into_iter()
    .map(|ids| (ids.task, ids.turn, ids.message))
    .collect();
    if ids.len() != news.len() {
        return Err(Failed::kept_nothing(
            StoreError::internal("fewer ids drawn than tasks").into(),
        ));
    }
    let mut task_rows = Vec::with_capacity(news.len());
    let mut turn_rows = Vec::with_capacity(news.len());
    let mut message_rows = Vec::with_capacity(news.len());
    let mut event_rows = Vec::with_capacity(news.len());
    let mut created = Vec::with_capacity(news.len());
    for (new, &(task, turn, message)) in news.iter().zip(&ids) {
        let rows =
            plain_rows(new, task, turn, message).map_err(|err| Failed::kept_nothing(err.into()))?;
        task_rows.push((tasks::id.eq(task), rows.task));
        turn_rows.push((turns_table::id.eq(turn), rows.turn));
        message_rows.push((messages_table::id.eq(message), rows.message));
        event_rows.extend(rows.events);
        created.push((rows.claim, rows.input));
    }
    OneStatement::new()
        .then(diesel::insert_into(tasks::table).values(task_rows).by_sql())
        .then(
            diesel::insert_into(turns_table::table)
                .values(turn_rows)
                .by_sql(),
        )
        .then(
            diesel::insert_into(messages_table::table)
                .values(message_rows)
                .by_sql(),
        )
        .then(
            diesel::insert_into(events_table::table)
                .values(&event_rows)
                .by_sql(),
        )
        .execute(conn)
        .await
        .map_err(Failed::of)?;
    // After the statement, which committed.
    for (claim, _) in &created {
        if let Claim::Started(accepted) = claim {
            announce_change(conn, accepted.task_id, None)
                .await
                .map_err(|err| Failed {
                    rolled_back: false,
                    ..Failed::of(err)
                })?;
        }
    }
    Ok(created)
}

/// The ids [`create_plain_tasks`] draws for one task.
#[derive(QueryableByName)]
struct NewIds {
    #[diesel(sql_type = BigInt)]
    task: i64,
    #[diesel(sql_type = BigInt)]
    turn: i64,
    #[diesel(sql_type = BigInt)]
    message: i64,
}

/// A plain new task's rows, its claim, and its turn's input (unless large).
struct PlainRows {
    task: NewTaskRow,
    turn: NewTurnRow,
    message: NewMessageRow,
    events: Vec<NewEventRow>,
    claim: Claim,
    input: Option<TurnHistory>,
}

fn plain_rows(new: &NewTask, task: i64, turn: i64, message: i64) -> Result<PlainRows, StoreError> {
    let (task_id, turn_id) = (TaskId(task), TurnId(turn));
    let task_row = claims::task_row(new)?;
    let turn_row = turn_start::turn_row(
        task_id,
        &new.metadata,
        &new.lease,
        new.webhook.as_ref(),
        new.now,
    )?;
    let message_row = NewMessageRow::new(
        task_id,
        turn_id,
        MessageParts::of(&new.message),
        None,
        new.now,
    )?;
    let input = message_row.stored(message).into_domain()?;
    let kept_bytes = message_row.content.len() + task_row.input.len() + 2 * task_row.metadata.len();
    let turn_input = match kept_bytes <= KEPT_INPUT_BYTES {
        true => Some(TurnHistory {
            task: task_row.stored(task).into_domain()?,
            metadata: new.metadata.clone(),
            history: vec![input.clone()],
            files: Vec::new(),
        }),
        false => None,
    };
    let started = turn_start::started(task_id, turn_id, &new.metadata, input, new.now);
    let events = events::event_rows(task, 1, vec![started.event], micros(new.now))?;
    Ok(PlainRows {
        task: task_row,
        turn: turn_row,
        message: message_row,
        events,
        claim: Claim::Started(claims::task_accepted(new, task_id, turn_id)),
        input: turn_input,
    })
}

/// Ends turns as `turns::finish_turn` ends each, in one transaction: all or none (see
/// [`finish_turns_together`]).
pub(crate) async fn finish_turns(
    conn: &mut Conn,
    finishes: &[FinishTurn],
) -> Result<Vec<Option<Ended>>, StoreError> {
    finish_turns_together(conn, finishes)
        .await
        .map_err(|failed| failed.error)
}

/// Ends turns as `turns::finish_turn` ends each, in one transaction: all or none.
/// Their turns' `UPDATE`s are sent together (one round trip for all), then each end is
/// completed in turn, in the order of their tasks' ids, so that two such transactions
/// (on two instances) lock their tasks' rows in the same order. Answers in
/// `finishes`' order.
pub(crate) async fn finish_turns_together(
    conn: &mut Conn,
    finishes: &[FinishTurn],
) -> Result<Vec<Option<Ended>>, Failed<StoreError>> {
    let mut order: Vec<(usize, &FinishTurn)> = finishes.iter().enumerate().collect();
    order.sort_by_key(|(_, finish)| finish.task_id);
    let ended = transaction(conn, async |conn| {
        let endings = order
            .iter()
            .map(|(_, finish)| turns::Ending::of(finish))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = {
            let shared: &Conn = conn;
            try_join_all(endings.iter().map(|ending| {
                let mut on = shared;
                let row = ending.update().get_result::<turns::EndedRow>(&mut on);
                async { row.await.optional() }
            }))
            .await?
        };
        let mut ended = Vec::with_capacity(order.len());
        for (&(at, finish), row) in order.iter().zip(rows) {
            ended.push((at, turns::finish_ended(conn, finish, row).await?));
        }
        Ok::<_, TxError>(ended)
    })
    .await;
    match ended {
        Ok(mut ended) => {
            ended.sort_by_key(|(at, _)| *at);
            Ok(ended.into_iter().map(|(_, ended)| ended).collect())
        }
        Err(TxError::Db(err)) => Err(Failed::of(err)),
        Err(other) => Err(Failed::kept_nothing(other.into_store())),
    }
}

/// The most a new task's kept input may hold (its message, the task's copy of it and
/// the metadata, as JSON): a larger one is read back when its turn plays, so what
/// `crate::fresh_inputs` keeps stays small.
const KEPT_INPUT_BYTES: usize = 8 * 1024;

/// Tells the connection's transaction manager a transaction began or ended outside it.
fn transaction_depth(conn: &mut Conn, change: TransactionDepthChange) -> QueryResult<()> {
    <AnsiTransactionManager as TransactionManager<Conn>>::transaction_manager_status_mut(conn)
        .transaction_state()?
        .change_transaction_depth(change)
}

/// The task with the turn's request metadata and the history, read in one round trip
/// (the history even if the turn is not found), then, if any message has attachments,
/// the files' bytes (see `turns::turn_input`).
pub(crate) async fn load_turn_input(
    conn: &mut Conn,
    task: TaskId,
    turn: TurnId,
) -> Result<Option<TurnHistory>, StoreError> {
    let read = {
        let (mut on, mut also): (&Conn, &Conn) = (conn, conn);
        let row = turns::turn_task(task, turn).first(&mut on);
        let rows = turns::task_history(task).load(&mut also);
        try_join(async { row.await.optional() }, rows).await
    };
    let (row, rows) = read.map_err(from_diesel)?;
    let Some(row) = row else {
        return Ok(None);
    };
    turns::turn_input(conn, task, row, rows).await
}

/// Runs `body` in a transaction whose `BEGIN` travels with the body's first statement:
/// it is written to the connection at once and its answer is read with that
/// statement's, saving the round trip diesel-async's `transaction` waits for `BEGIN`
/// alone. Commits or rolls back as diesel-async does.
async fn transaction<R, E, F>(conn: &mut Conn, body: F) -> Result<R, E>
where
    for<'r> F: TxBody<&'r mut Conn, Result<R, E>> + Send,
    E: From<diesel::result::Error> + Send,
    R: Send,
{
    begin_ahead(conn)?;
    match body(&mut *conn).await {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).await?;
            Ok(value)
        }
        Err(err) => match AnsiTransactionManager::rollback_transaction(conn).await {
            // The body's error says more than a rollback on a broken connection.
            Ok(()) | Err(diesel::result::Error::BrokenTransactionManager) => Err(err),
            Err(rollback) => Err(rollback.into()),
        },
    }
}

/// Writes `BEGIN` to the connection without waiting for its answer, and tells the
/// transaction manager a transaction is open (so that a caller dropped before the
/// end leaves the connection to be discarded by the pool). The connection reads the
/// answer whether or not anyone waits for it; `BEGIN` itself cannot fail where the
/// statement after it would not.
fn begin_ahead(conn: &mut Conn) -> QueryResult<()> {
    // First polled, the request is queued on the connection, in order before any
    // statement sent after it; the answer is still to come, so this is `None`.
    let sent = SimpleAsyncConnection::batch_execute(&mut &*conn, "BEGIN").now_or_never();
    if let Some(Err(err)) = sent {
        return Err(err);
    }
    transaction_depth(conn, TransactionDepthChange::IncreaseDepth)
}

/// Hands out the next `seq`s of the task's log from `tasks.last_seq` (the row update
/// also serializes concurrent writers; with `touched`, the task is marked updated
/// then) and inserts the events with them, in one statement; the change is announced
/// ([`announce_change`]). Returns how many messages wait in the task's queue.
async fn append_to_log(
    conn: &mut Conn,
    task: i64,
    drafts: Vec<EventDraft>,
    now: i64,
    ended: Option<TurnId>,
    touched: Option<i64>,
) -> Result<i64, TxError> {
    let turns: Vec<i64> = drafts.iter().map(|draft| draft.turn_id.0).collect();
    let kinds: Vec<&str> = drafts.iter().map(|draft| draft.kind.as_str()).collect();
    let data = drafts
        .iter()
        .map(events::event_data)
        .collect::<Result<Vec<_>, _>>()?;
    let shared: &Conn = conn;
    let mut on = shared;
    let append = diesel::sql_query(APPEND_TO_LOG)
        .bind::<BigInt, _>(task)
        .bind::<Array<BigInt>, _>(&turns)
        .bind::<Array<Text>, _>(&kinds)
        .bind::<Array<Text>, _>(&data)
        .bind::<Nullable<BigInt>, _>(touched)
        .bind::<BigInt, _>(now)
        .by_sql()
        .get_result::<Appended>(&mut on);
    let (appended, ()) = try_join(append, announce_change(shared, TaskId(task), ended)).await?;
    Ok(appended.queued)
}

/// See [`append_to_log`]: `$1` the task, `$2`..`$4` the events' turns, kinds and JSON,
/// `$5` when the task was touched (if it was), `$6` now. The insert runs though
/// nothing reads it (PostgreSQL runs every data-modifying `WITH`).
const APPEND_TO_LOG: &str = "\
    WITH task AS ( \
        UPDATE tasks \
        SET last_seq = last_seq + cardinality($2), updated_at = coalesce($5, updated_at) \
        WHERE id = $1 \
        RETURNING last_seq, queued \
    ), logged AS ( \
        INSERT INTO events (task_id, seq, turn_id, kind, data, created_at) \
        SELECT $1, task.last_seq - cardinality($2) + event.n, event.turn_id, event.kind, \
               event.data, $6 \
        FROM task, unnest($2, $3, $4) WITH ORDINALITY AS event (turn_id, kind, data, n) \
    ) \
    SELECT queued FROM task";

/// What [`APPEND_TO_LOG`] answers.
#[derive(QueryableByName)]
struct Appended {
    #[diesel(sql_type = BigInt)]
    queued: i64,
}

#[cfg(test)]
mod tests {
    use diesel::result::{DatabaseErrorKind, Error};

    use super::*;

    fn failed(err: Error) -> bool {
        Failed::<StoreError>::of(err).rolled_back
    }

    #[test]
    fn a_batch_is_written_again_alone_only_when_the_database_answered_its_failure() {
        let answered = |kind| Error::DatabaseError(kind, Box::new("refused".to_owned()));
        assert!(failed(answered(DatabaseErrorKind::ForeignKeyViolation)));
        assert!(failed(answered(DatabaseErrorKind::CheckViolation)));
        assert!(
            failed(answered(DatabaseErrorKind::Unknown)),
            "a deadlock, say"
        );
        assert!(
            !failed(answered(DatabaseErrorKind::UnableToSendCommand)),
            "no answer: it may have committed"
        );
        assert!(!failed(answered(DatabaseErrorKind::ClosedConnection)));
        assert!(!failed(Error::BrokenTransactionManager));
    }
}
