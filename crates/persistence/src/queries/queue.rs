//! A busy task's queue: messages sent while a turn runs, waiting for a turn of their
//! own (`queued`) or to be taken by the running turn (`steering`); handed on when a
//! turn ends. `tasks.queued` counts the waiting ones, so the end of a turn learns from
//! the task row it updates anyway whether there is a queue to look at.

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::events::insert_events;
use super::idempotency::remember;
use super::messages::{insert_message, store_attachments};
use super::reads::owned_task;
use super::turn_start::{LatestTurn, Started, latest_turn, record_start, start_turn};
use super::{Conn, lock_task};
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::{REQUIRES_ACTION, RUNNING, TxError};
use crate::schema::{queued_messages, tasks, turns};
use crate::statement_cache::CacheBySql;

const QUEUED: &str = "queued";
const STEERING: &str = "steering";

/// Puts the message at the end of the task's queue (`steer_into`: waiting to be taken
/// by that running turn instead), and answers with its place.
pub(super) async fn enqueue(
    conn: &mut Conn,
    append: &NewAppend,
    mode: QueueMode,
    steer_into: Option<TurnId>,
) -> Result<Claim, TxError> {
    let task = append.task_id;
    let now = micros(append.now);
    let (queued, last_seq): (i64, i64) = diesel::update(tasks::table.find(task.0))
        .set((
            tasks::queued.eq(tasks::queued + 1),
            tasks::updated_at.eq(now),
        ))
        .returning((tasks::queued, tasks::last_seq))
        .by_sql()
        .get_result(conn)
        .await?;
    if queued > i64::from(append.max_queued) {
        return Err(TxError::QueueFull(append.max_queued));
    }
    let content = store_attachments(conn, task, &append.message.content, append.now).await?;
    let (status, accepted_status) = match steer_into {
        Some(_) => (STEERING, AcceptedStatus::Steering),
        None => (QUEUED, AcceptedStatus::Queued),
    };
    let row = NewQueuedRow {
        task_id: task.0,
        mode: mode.as_str(),
        status,
        steer_turn_id: steer_into.map(|turn| turn.0),
        content: content_json(&content)?,
        message_metadata: metadata_json(&append.message.metadata)?,
        metadata: metadata_json(&append.metadata)?,
        webhook_url: append.webhook.as_ref().map(|w| w.url.clone()),
        webhook_secrets: append
            .webhook
            .as_ref()
            .map(webhooks::WebhookEndpoint::secrets_column),
        created_at: now,
    };
    let id: i64 = diesel::insert_into(queued_messages::table)
        .values(&row)
        .returning(queued_messages::id)
        .by_sql()
        .get_result(conn)
        .await?;
    let position = match steer_into {
        Some(_) => None,
        None => Some(queued_position(conn, task, id).await?),
    };
    let accepted = Accepted {
        task_id: task,
        agent_id: append.agent_id,
        turn_id: steer_into,
        accepted_at: append.now,
        metadata: append.metadata.clone(),
        status: accepted_status,
        stream_after: Some(last_seq),
        queued: Some(QueuedRef {
            id: QueuedMessageId(id),
            position,
        }),
        interrupted: None,
    };
    remember(conn, append.idempotency.as_ref(), &accepted).await?;
    Ok(Claim::Started(accepted))
}

/// The place of a queued message among its task's: 1 for the next to start.
async fn queued_position(conn: &mut Conn, task: TaskId, id: i64) -> Result<u32, TxError> {
    let ahead: i64 = queued_messages::table
        .filter(
            queued_messages::task_id
                .eq(task.0)
                .and(queued_messages::status.eq(QUEUED))
                .and(queued_messages::id.le(id)),
        )
        .count()
        .get_result(conn)
        .await?;
    Ok(u32::try_from(ahead).unwrap_or(u32::MAX))
}

/// Hands a task's queue on after `ended` stopped playing (in its ending
/// transaction): messages still steering into it wait for a turn of their own, and
/// if the task is now idle (`idle`) and a lease is given, the first queued message
/// starts its turn.
pub(super) async fn hand_on(
    conn: &mut Conn,
    task: TaskId,
    ended: TurnId,
    idle: bool,
    next: Option<&Lease>,
    at: DateTime<Utc>,
) -> Result<Option<StartedTurn>, TxError> {
    diesel::update(
        queued_messages::table.filter(
            queued_messages::steer_turn_id
                .eq(ended.0)
                .and(queued_messages::status.eq(STEERING)),
        ),
    )
    .set((
        queued_messages::status.eq(QUEUED),
        queued_messages::steer_turn_id.eq(None::<i64>),
    ))
    .by_sql()
    .execute(conn)
    .await?;
    match (idle, next) {
        (true, Some(lease)) => start_next_queued(conn, task, lease, at).await,
        _ => Ok(None),
    }
}

/// Starts the task's first queued message's turn under `lease`: the turn, the
/// message in the history, the message marked started, and the `turn_started` event
/// (naming the queued message). The caller made sure no turn runs.
async fn start_next_queued(
    conn: &mut Conn,
    task: TaskId,
    lease: &Lease,
    at: DateTime<Utc>,
) -> Result<Option<StartedTurn>, TxError> {
    let head: Option<QueuedRow> = queued_messages::table
        .filter(
            queued_messages::task_id
                .eq(task.0)
                .and(queued_messages::status.eq(QUEUED)),
        )
        .order(queued_messages::id.asc())
        .select(QueuedRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let Some(head) = head else { return Ok(None) };
    let message = head.message()?;
    let metadata: Metadata = parse_json("queued_messages.metadata", &head.metadata)?;
    let webhook = endpoint(head.webhook_url.clone(), head.webhook_secrets.clone());
    let Started {
        turn,
        mut event,
        input,
        message: started_with,
    } = start_turn(conn, task, &message, &metadata, lease, webhook.as_ref(), at).await?;
    if let Some(data) = event.data.as_object_mut() {
        data.insert("queued_message_id".to_owned(), head.id.into());
    }
    let now = micros(at);
    diesel::update(queued_messages::table.find(head.id))
        .set((
            queued_messages::status.eq(QueuedStatus::Started.as_str()),
            queued_messages::turn_id.eq(turn.0),
            queued_messages::message_id.eq(started_with.0),
            queued_messages::ended_at.eq(now),
        ))
        .by_sql()
        .execute(conn)
        .await?;
    let (_, agent) = record_start(conn, task, &input, event, now, true).await?;
    Ok(Some(StartedTurn {
        agent_id: agent,
        task_id: task,
        turn_id: turn,
        attempt: 1,
    }))
}

pub(crate) async fn take_steered(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    turn: TurnId,
    attempt: u32,
    at: DateTime<Utc>,
) -> Result<Option<Vec<Message>>, StoreError> {
    super::transaction(conn, async |conn| {
        // The task before its queue's rows, as the claims and the turn's end take them.
        lock_task(conn, task.0).await?;
        let playing: Option<i64> = turns::table
            .inner_join(tasks::table)
            .filter(
                turns::id
                    .eq(turn.0)
                    .and(turns::task_id.eq(task.0))
                    .and(tasks::agent_id.eq(agent.0))
                    .and(turns::status.eq(RUNNING))
                    .and(turns::attempt.eq(i64::from(attempt))),
            )
            .select(turns::id)
            .first(conn)
            .await
            .optional()?;
        if playing.is_none() {
            return Ok(None);
        }
        let now = micros(at);
        // One conditional update takes them: of two concurrent takers (or a taker
        // and the turn's end), each message goes to exactly one.
        let mut taken: Vec<QueuedRow> = diesel::update(
            queued_messages::table.filter(
                queued_messages::steer_turn_id
                    .eq(turn.0)
                    .and(queued_messages::status.eq(STEERING)),
            ),
        )
        .set((
            queued_messages::status.eq(QueuedStatus::Delivered.as_str()),
            queued_messages::turn_id.eq(turn.0),
            queued_messages::ended_at.eq(now),
        ))
        .returning(QueuedRow::as_returning())
        .by_sql()
        .get_results(conn)
        .await?;
        if taken.is_empty() {
            return Ok(Some(Vec::new()));
        }
        taken.sort_by_key(|row| row.id);
        let mut delivered = Vec::with_capacity(taken.len());
        let mut drafts = Vec::with_capacity(taken.len());
        for row in &taken {
            let message = row.message()?;
            let stored =
                insert_message(conn, task, turn, MessageParts::of(&message), None, at).await?;
            diesel::update(queued_messages::table.find(row.id))
                .set(queued_messages::message_id.eq(stored.id.0))
                .by_sql()
                .execute(conn)
                .await?;
            drafts.push(EventDraft {
                turn_id: turn,
                kind: EventKind::MessageDelivered,
                data: baton_domain::events::message_delivered(QueuedMessageId(row.id), &stored),
            });
            delivered.push(stored);
        }
        let count = drafts.len() as i64;
        let last: i64 = diesel::update(tasks::table.find(task.0))
            .set((
                tasks::queued.eq(tasks::queued - count),
                tasks::last_seq.eq(tasks::last_seq + count),
                tasks::updated_at.eq(now),
            ))
            .returning(tasks::last_seq)
            .by_sql()
            .get_result(conn)
            .await?;
        insert_events(conn, task.0, last, drafts, now, None).await?;
        Ok::<_, TxError>(Some(delivered))
    })
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn has_steered(conn: &mut Conn, turn: TurnId) -> Result<bool, StoreError> {
    let waiting = queued_messages::table.filter(
        queued_messages::steer_turn_id
            .eq(turn.0)
            .and(queued_messages::status.eq(STEERING)),
    );
    diesel::select(diesel::dsl::exists(waiting))
        .get_result(conn)
        .await
        .map_err(from_diesel)
}

/// The waiting messages of a task, in order, with the queued ones' places.
async fn waiting(conn: &mut Conn, task: TaskId) -> Result<Vec<QueuedMessage>, TxError> {
    let rows: Vec<QueuedRow> = queued_messages::table
        .filter(
            queued_messages::task_id
                .eq(task.0)
                .and(queued_messages::status.eq_any([QUEUED, STEERING])),
        )
        .order(queued_messages::id.asc())
        .select(QueuedRow::as_select())
        .load(conn)
        .await?;
    let mut place = 0;
    let mut listed = Vec::with_capacity(rows.len());
    for row in rows {
        let position = (row.status == QUEUED).then(|| {
            place += 1;
            place
        });
        listed.push(row.into_domain(position)?);
    }
    // Queued ones first, in order: they start turns; steering ones wait for the
    // running turn.
    listed.sort_by_key(|m| (m.status != QueuedStatus::Queued, m.id));
    Ok(listed)
}

pub(crate) async fn list_queue(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
) -> Result<Option<Vec<QueuedMessage>>, StoreError> {
    async {
        if owned_task(conn, agent, task).await?.is_none() {
            return Ok(None);
        }
        Ok::<_, TxError>(Some(waiting(conn, task).await?))
    }
    .await
    .map_err(TxError::into_store)
}

/// One of the agent's task's queued messages, with its place while queued.
async fn find_queued(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    id: QueuedMessageId,
) -> Result<Option<QueuedMessage>, TxError> {
    let row: Option<QueuedRow> = queued_messages::table
        .inner_join(tasks::table)
        .filter(
            queued_messages::id
                .eq(id.0)
                .and(queued_messages::task_id.eq(task.0))
                .and(tasks::agent_id.eq(agent.0)),
        )
        .select(QueuedRow::as_select())
        .first(conn)
        .await
        .optional()?;
    let Some(row) = row else { return Ok(None) };
    let position = match row.status == QUEUED {
        true => Some(queued_position(conn, task, row.id).await?),
        false => None,
    };
    Ok(Some(row.into_domain(position)?))
}

pub(crate) async fn get_queued(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    id: QueuedMessageId,
) -> Result<Option<QueuedMessage>, StoreError> {
    find_queued(conn, agent, task, id)
        .await
        .map_err(TxError::into_store)
}

pub(crate) async fn cancel_queued(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    id: QueuedMessageId,
    at: DateTime<Utc>,
) -> Result<QueueCancel, StoreError> {
    super::transaction(conn, async |conn| {
        if owned_task(conn, agent, task).await?.is_none() {
            return Ok(QueueCancel::NotFound);
        }
        // Taken in turn with the task's claims and turn ends (PostgreSQL).
        lock_task(conn, task.0).await?;
        let cancelled = diesel::update(
            queued_messages::table.filter(
                queued_messages::id
                    .eq(id.0)
                    .and(queued_messages::task_id.eq(task.0))
                    .and(queued_messages::status.eq_any([QUEUED, STEERING])),
            ),
        )
        .set((
            queued_messages::status.eq(QueuedStatus::Cancelled.as_str()),
            queued_messages::steer_turn_id.eq(None::<i64>),
            queued_messages::ended_at.eq(micros(at)),
        ))
        .by_sql()
        .execute(conn)
        .await?;
        if cancelled > 0 {
            diesel::update(tasks::table.find(task.0))
                .set((
                    tasks::queued.eq(tasks::queued - 1),
                    tasks::updated_at.eq(micros(at)),
                ))
                .by_sql()
                .execute(conn)
                .await?;
        }
        Ok::<_, TxError>(match find_queued(conn, agent, task, id).await? {
            None => QueueCancel::NotFound,
            Some(found) if found.status == QueuedStatus::Cancelled => QueueCancel::Cancelled(found),
            Some(found) => QueueCancel::TooLate(found),
        })
    })
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn start_stalled_queues(
    conn: &mut Conn,
    lease: &Lease,
    at: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<StartedTurn>, StoreError> {
    let busy = turns::table
        .filter(turns::task_id.eq(queued_messages::task_id))
        .filter(turns::status.eq_any([RUNNING, REQUIRES_ACTION]));
    let stalled: Vec<i64> = queued_messages::table
        .filter(queued_messages::status.eq(QUEUED))
        .filter(diesel::dsl::not(diesel::dsl::exists(busy)))
        .select(queued_messages::task_id)
        .distinct()
        .limit(i64::from(limit))
        .load(conn)
        .await
        .map_err(from_diesel)?;
    let mut started = Vec::new();
    for task in stalled {
        let next = super::transaction(conn, async |conn| {
            // Looked at again under the task's lock: a claim may have started a
            // turn meanwhile.
            match latest_turn(conn, task).await? {
                LatestTurn::Ended => start_next_queued(conn, TaskId(task), lease, at).await,
                LatestTurn::Running(_) | LatestTurn::Waiting(_) => Ok(None),
            }
        })
        .await
        .map_err(TxError::into_store)?;
        started.extend(next);
    }
    Ok(started)
}
