//! Reads of tasks, their messages and files, as a client sees them.

use std::collections::HashMap;

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::dsl::{exists, max, not};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{Conn, Db};
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::TxError;
use crate::schema::{files, messages, tasks, turns};

/// The task's last event `seq` if `agent` owns the task; `None` (never a hint
/// that it exists) otherwise.
pub(super) async fn owned_task(
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

/// Each task's latest turn and latest agent message, by task id.
pub(super) async fn latest_of_many(
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

/// Builds views for task rows: each task's latest turn and latest agent message,
/// in four statements over the rows' ids.
pub(super) async fn task_views(
    conn: &mut Conn,
    rows: Vec<TaskRow>,
) -> Result<Vec<TaskView>, StoreError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (mut turns_by_task, mut messages_by_task) = latest_of_many(conn, &rows).await?;
    rows.into_iter()
        .map(|row| {
            let turn = turns_by_task.remove(&row.id);
            let message = messages_by_task.remove(&row.id);
            task_view(row, turn, message)
        })
        .collect()
}

/// A task's view from its row, its latest turn and its latest agent message.
fn task_view(
    row: TaskRow,
    turn: Option<TurnRow>,
    message: Option<MessageRow>,
) -> Result<TaskView, StoreError> {
    let turn = turn.ok_or_else(|| crate::error::corrupt(format!("task {} has no turn", row.id)))?;
    let queued = count("tasks.queued", row.queued)?;
    Ok(TaskView {
        queued,
        task: row.into_domain()?,
        latest_turn: turn.into_domain()?,
        latest_agent_message: message.map(MessageRow::into_domain).transpose()?,
    })
}

/// One task's view in one statement (a get, each wake-up of a long-poll): its latest
/// turn and latest agent message are joined by indexed subqueries.
pub(crate) async fn get_task(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
) -> Result<Option<TaskView>, StoreError> {
    // Aliased: Diesel refuses a subquery over a table the outer query also reads.
    let (earlier_turns, earlier_messages) =
        diesel::alias!(turns as earlier_turns, messages as earlier_messages);
    let latest_turn = earlier_turns
        .filter(earlier_turns.field(turns::task_id).eq(task.0))
        .select(max(earlier_turns.field(turns::id)));
    let latest_message = earlier_messages
        .filter(
            earlier_messages.field(messages::task_id).eq(task.0).and(
                earlier_messages
                    .field(messages::role)
                    .eq(Role::Assistant.as_str()),
            ),
        )
        .select(max(earlier_messages.field(messages::id)));
    let found: Option<(TaskRow, Option<TurnRow>, Option<MessageRow>)> = tasks::table
        .left_join(turns::table.on(turns::id.nullable().eq(latest_turn.single_value())))
        .left_join(messages::table.on(messages::id.nullable().eq(latest_message.single_value())))
        .filter(tasks::id.eq(task.0).and(tasks::agent_id.eq(agent.0)))
        .select((
            TaskRow::as_select(),
            Option::<TurnRow>::as_select(),
            Option::<MessageRow>::as_select(),
        ))
        .first(conn)
        .await
        .optional()
        .map_err(from_diesel)?;
    found
        .map(|(row, turn, message)| task_view(row, turn, message))
        .transpose()
}

/// The agent's tasks, newest first. With `status`, a task is kept when its latest
/// turn has that status: a turn of the task with the status and no later turn, both
/// looked up per task by the turns' task index.
/// The agent's tasks as a boxed query, with only those whose latest turn has
/// `status` if given: what both listings order and page their own way.
type TaskQuery =
    tasks::BoxedQuery<'static, Db, diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<TaskRow, Db>>>;

fn tasks_of(agent: AgentId, status: Option<TaskStatus>) -> TaskQuery {
    let mut query = tasks::table
        .filter(tasks::agent_id.eq(agent.0))
        .select(TaskRow::as_select())
        .into_boxed();
    if let Some(status) = status {
        let later_turns = diesel::alias!(turns as later_turns);
        let later = later_turns
            .filter(later_turns.field(turns::task_id).eq(tasks::id))
            .filter(later_turns.field(turns::id).gt(turns::id));
        let latest_with_status = turns::table
            .filter(turns::task_id.eq(tasks::id))
            .filter(turns::status.eq(status.as_str()))
            .filter(not(exists(later)));
        query = query.filter(exists(latest_with_status));
    }
    query
}

pub(crate) async fn list_tasks(
    conn: &mut Conn,
    agent: AgentId,
    status: Option<TaskStatus>,
    page: PageRequest,
) -> Result<Page<TaskView>, StoreError> {
    async {
        let mut query = tasks_of(agent, status)
            .order(tasks::id.desc())
            .limit(i64::from(page.limit) + 1);
        if let Some(after) = page.after {
            query = query.filter(tasks::id.lt(after));
        }
        let rows = query.load(conn).await?;
        let views = task_views(conn, rows).await?;
        Ok::<_, TxError>(Page::from_overfetch(views, page.limit, |v| v.task.id.0))
    }
    .await
    .map_err(TxError::into_store)
}

/// Up to `limit + 1` of the agent's tasks, most recently updated first (ties: the
/// newest first), after `after` (the last task of the previous page: its update time
/// and id).
pub(crate) async fn list_tasks_by_update(
    conn: &mut Conn,
    agent: AgentId,
    status: Option<TaskStatus>,
    limit: u32,
    after: Option<(DateTime<Utc>, TaskId)>,
) -> Result<Vec<TaskView>, StoreError> {
    let mut query = tasks_of(agent, status)
        .order((tasks::updated_at.desc(), tasks::id.desc()))
        .limit(i64::from(limit) + 1);
    if let Some((at, id)) = after {
        let at = micros(at);
        query = query.filter(
            tasks::updated_at
                .lt(at)
                .or(tasks::updated_at.eq(at).and(tasks::id.lt(id.0))),
        );
    }
    let rows = query.load(conn).await.map_err(from_diesel)?;
    task_views(conn, rows).await
}

/// A page of the task's messages. Each row carries the task's `last_seq`, read by the
/// same statement — one snapshot on either backend, where two statements could see
/// two: output is written with its events in one transaction, so the page holds
/// exactly the events up to it. An empty page (a cursor at the end) has no text to
/// agree with, and takes the ownership check's.
pub(crate) async fn list_messages(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    page: PageRequest,
) -> Result<Option<History<Message>>, StoreError> {
    async {
        let Some(checked_seq) = owned_task(conn, agent, task).await? else {
            return Ok(None);
        };
        let mut query = messages::table
            .inner_join(tasks::table)
            .filter(messages::task_id.eq(task.0))
            .select((MessageRow::as_select(), tasks::last_seq))
            .order(messages::id.asc())
            .limit(i64::from(page.limit) + 1)
            .into_boxed();
        if let Some(after) = page.after {
            query = query.filter(messages::id.gt(after));
        }
        let rows: Vec<(MessageRow, i64)> = query.load(conn).await?;
        // Called as the slice's: Diesel's `FirstDsl::first` is in scope too.
        let last_event_id = <[_]>::first(&rows).map_or(checked_seq, |(_, seq)| *seq);
        let messages = rows
            .into_iter()
            .map(|(row, _)| row.into_domain())
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, TxError>(Some(History {
            page: Page::from_overfetch(messages, page.limit, |m| m.id.0),
            last_event_id,
        }))
    }
    .await
    .map_err(TxError::into_store)
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
