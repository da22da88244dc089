//! The task's event log: sequence numbers handed out from `tasks.last_seq`.

use baton_domain::*;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::reads::owned_task;
use super::{Conn, append_to_log, write_events};
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::TxError;
use crate::schema::events;

/// Appends events to the task's log, handing out the next sequence numbers from
/// `tasks.last_seq` (the row update also serializes concurrent writers), and
/// announces the change (`ended`: the turn it ended, if it ended one). With
/// `touched`, the task is marked updated at that time in the same statement. Returns
/// how many messages wait in the task's queue, read by the same statement (`None`
/// when there was nothing to append).
pub(super) async fn append_events(
    conn: &mut Conn,
    task: i64,
    drafts: Vec<EventDraft>,
    now: i64,
    ended: Option<TurnId>,
    touched: Option<i64>,
) -> Result<Option<i64>, TxError> {
    if drafts.is_empty() {
        return Ok(None);
    }
    let queued = append_to_log(conn, task, drafts, now, ended, touched).await?;
    Ok(Some(queued))
}

/// Inserts the events that take the `seq`s up to `last`, and announces the change:
/// every write that changes what a task's watchers see adds to its log.
pub(super) async fn insert_events(
    conn: &mut Conn,
    task: i64,
    last: i64,
    drafts: Vec<EventDraft>,
    now: i64,
    ended: Option<TurnId>,
) -> Result<(), TxError> {
    let rows = event_rows(task, last, drafts, now)?;
    write_events(conn, TaskId(task), &rows, ended).await?;
    Ok(())
}

/// The rows of events that take the `seq`s up to `last`.
pub(super) fn event_rows(
    task: i64,
    last: i64,
    drafts: Vec<EventDraft>,
    now: i64,
) -> Result<Vec<NewEventRow>, StoreError> {
    let count = drafts.len() as i64;
    (last - count + 1..)
        .zip(drafts)
        .map(|(seq, draft)| {
            Ok(NewEventRow {
                task_id: task,
                seq,
                turn_id: draft.turn_id.0,
                kind: draft.kind.as_str(),
                data: event_data(&draft)?,
                created_at: now,
            })
        })
        .collect()
}

/// An event's JSON as the log keeps it.
pub(super) fn event_data(draft: &EventDraft) -> Result<String, StoreError> {
    serde_json::to_string(&draft.data).map_err(StoreError::internal)
}

pub(crate) async fn list_events(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    after: i64,
    limit: u32,
) -> Result<Option<EventPage>, StoreError> {
    async {
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
            last_seq,
        }))
    }
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
