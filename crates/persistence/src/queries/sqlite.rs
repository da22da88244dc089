//! The queries on SQLite: the files beside this one, with SQLite's connection and
//! what SQLite does its own way. One writer thread runs every write (see
//! `group_commit`), so its group transaction is the only lock a write needs, and one
//! process serves the database, so changes are announced in-process, not here.

use baton_domain::{
    AgentId, AgentsChanged, Claim, ClaimError, Ended, FinishTurn, NewTask, StoreError, TaskId,
    TurnHistory, TurnId,
};
use diesel::QueryResult;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::error::from_diesel;
use crate::models::{EventDraft, NewEventRow};
use crate::queries::{TxBody, TxError};
use crate::schema::events as events_table;
use crate::schema::tasks;
use crate::statement_cache::CacheBySql;

pub(crate) use crate::backend::SqliteConn as Conn;
pub(crate) type Db = diesel::sqlite::Sqlite;

// Each query file is also a module of `postgres` (see `crate::queries`).
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

/// An agent or a key changed (SQLite: this process's cache is told by the caller).
async fn announce_agents(_conn: &mut Conn, _change: &AgentsChanged) -> QueryResult<()> {
    Ok(())
}

/// Concurrent claims of one agent take turns: on SQLite, the writer's group
/// transaction already serializes them.
async fn lock_agent(_conn: &mut Conn, _agent: AgentId) -> QueryResult<()> {
    Ok(())
}

/// Concurrent answers to one task's tool calls take turns: on SQLite, the writer's
/// group transaction already serializes them.
async fn lock_task(_conn: &mut Conn, _task: i64) -> QueryResult<()> {
    Ok(())
}

/// An interrupt locks the running turn before the task (PostgreSQL): on SQLite the
/// writer's group transaction already serializes them.
async fn lock_active_turn(_conn: &mut Conn, _task: i64) -> QueryResult<()> {
    Ok(())
}

/// Inserts events one prepared single-row statement each: a statement costs SQLite
/// no round trip, and one shape stays prepared. The change is announced in-process by
/// the caller (one process serves the database).
async fn write_events(
    conn: &mut Conn,
    _task: TaskId,
    rows: &[NewEventRow],
    _ended: Option<TurnId>,
) -> QueryResult<()> {
    for row in rows {
        diesel::insert_into(events_table::table)
            .values(row)
            .by_sql()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// The deliveries due at `now` (one writer: nothing else claims them meanwhile).
async fn due_deliveries(conn: &mut Conn, now: i64, limit: u32) -> QueryResult<Vec<i64>> {
    webhooks::due(now, i64::from(limit)).load(conn).await
}

/// The task with the turn's request metadata, then the history and, if any message
/// has attachments, the files' bytes (see `turns::turn_input`).
pub(crate) async fn load_turn_input(
    conn: &mut Conn,
    task: TaskId,
    turn: TurnId,
) -> Result<Option<TurnHistory>, StoreError> {
    let row = turns::turn_task(task, turn).first(conn).await.optional();
    let Some(row) = row.map_err(from_diesel)? else {
        return Ok(None);
    };
    let rows = turns::task_history(task)
        .load(conn)
        .await
        .map_err(from_diesel)?;
    turns::turn_input(conn, task, row, rows).await
}

/// Runs `body` in a transaction: a savepoint of the writer's group transaction (see
/// `group_commit`).
async fn transaction<R, E, F>(conn: &mut Conn, body: F) -> Result<R, E>
where
    for<'r> F: TxBody<&'r mut Conn, Result<R, E>> + Send,
    E: From<diesel::result::Error> + Send,
    R: Send,
{
    conn.transaction(body).await
}

/// Hands out the next `seq`s of the task's log from `tasks.last_seq` (the row update
/// also serializes concurrent writers; with `touched`, the task is marked updated
/// then), and inserts the events with them. Returns how many messages wait in the
/// task's queue, read by the same update.
async fn append_to_log(
    conn: &mut Conn,
    task: i64,
    drafts: Vec<EventDraft>,
    now: i64,
    ended: Option<TurnId>,
    touched: Option<i64>,
) -> Result<i64, TxError> {
    let count = drafts.len() as i64;
    let (last, queued): (i64, i64) = diesel::update(tasks::table.find(task))
        .set((
            tasks::last_seq.eq(tasks::last_seq + count),
            tasks::updated_at.eq(coalesce(touched, tasks::updated_at)),
        ))
        .returning((tasks::last_seq, tasks::queued))
        .by_sql()
        .get_result(conn)
        .await?;
    events::insert_events(conn, task, last, drafts, now, ended).await?;
    Ok(queued)
}

diesel::define_sql_function! {
    /// Its first argument unless that is null, else its second.
    fn coalesce(value: Nullable<BigInt>, otherwise: BigInt) -> BigInt;
}

/// Ends turns as `turns::finish_turn` ends each, in one transaction: all or none.
pub(crate) async fn finish_turns(
    conn: &mut Conn,
    finishes: &[FinishTurn],
) -> Result<Vec<Option<Ended>>, StoreError> {
    transaction(conn, async |conn| {
        let mut ended = Vec::with_capacity(finishes.len());
        for finish in finishes {
            ended.push(turns::finish_in(conn, finish).await?);
        }
        Ok::<_, TxError>(ended)
    })
    .await
    .map_err(TxError::into_store)
}

/// Creates a task (`claims::create_task`); its turn's input is read back when it plays
/// (in-process on SQLite, so nothing is kept for it).
pub(crate) async fn create_task(
    conn: &mut Conn,
    new: &NewTask,
) -> Result<(Claim, Option<TurnHistory>), ClaimError> {
    Ok((claims::create_task(conn, new).await?, None))
}
