//! The queries on PostgreSQL: the files beside this one, with PostgreSQL's connection
//! and what PostgreSQL does its own way. Several instances write at once, so rows are
//! locked where two writers must take turns, and every change is announced to the
//! other instances with `pg_notify`: a turn's change once its operation is over (see
//! `crate::announce`), a change of an agent or a key inside its transaction (delivered
//! only if it commits).

use baton_domain::{AgentId, AgentsChanged, TaskId, TurnId};
use diesel::QueryResult;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use futures_util::future::{try_join, try_join_all};

use crate::listen::{AGENTS_CHANNEL, CHANNEL, encode, encode_agents};
use crate::models::NewEventRow;
use crate::schema::{agents as agents_table, events as events_table, tasks};
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
    notify(conn, AGENTS_CHANNEL, encode_agents(change)).await
}

async fn notify(conn: &mut Conn, channel: &str, payload: String) -> QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(channel)
        .bind::<Text, _>(payload)
        .execute(conn)
        .await
        .map(drop)
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
/// shapes prepared) and has other instances told that the task changed, and which
/// turn the change ended (so the instance playing it stops): after the operation, by
/// the store's announcer (`crate::announce`, which says why not inside the
/// transaction); inside the transaction, pipelined with the inserts, where no
/// operation collects announcements.
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
    let Err(payload) = crate::announce::defer(encode(task, ended)) else {
        return try_join_all(inserts).await.map(drop);
    };
    let mut on = shared;
    let notify = diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(&payload)
        .execute(&mut on);
    try_join(try_join_all(inserts), notify).await.map(drop)
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
