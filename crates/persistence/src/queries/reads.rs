//! Reads of tasks, their messages and files, as a client sees them.

use std::collections::HashMap;

use baton_domain::*;
use diesel::dsl::max;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::Conn;
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

/// As `latest_of_many`, for one task.
pub(super) async fn latest_of_one(
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
pub(super) async fn task_views(
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
            let turn = turns_by_task
                .remove(&row.id)
                .ok_or_else(|| crate::error::corrupt(format!("task {} has no turn", row.id)))?;
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
    async {
        let row: Option<TaskRow> = tasks::table
            .filter(tasks::id.eq(task.0).and(tasks::agent_id.eq(agent.0)))
            .select(TaskRow::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(row) = row else { return Ok(None) };
        Ok::<_, TxError>(task_views(conn, vec![row]).await?.pop())
    }
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn list_tasks(
    conn: &mut Conn,
    agent: AgentId,
    page: PageRequest,
) -> Result<Page<TaskView>, StoreError> {
    async {
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
    }
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn list_messages(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    page: PageRequest,
) -> Result<Option<Page<Message>>, StoreError> {
    async {
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
