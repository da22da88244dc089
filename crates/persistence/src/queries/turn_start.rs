//! Starting a turn, and what the task's latest turn leaves a new message to do: what
//! a claim and the hand-on of a busy task's queue both need.

use baton_domain::webhooks::WebhookEndpoint;
use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::RunQueryDsl;

use super::events::insert_events;
use super::messages::insert_message;
use super::{Conn, lock_task};
use crate::models::*;
use crate::queries::{REQUIRES_ACTION, RUNNING, TxError};
use crate::schema::{tasks, turns};
use crate::statement_cache::CacheBySql;

pub(super) async fn running_turn(
    conn: &mut Conn,
    task: i64,
) -> Result<Option<ActiveTurn>, TxError> {
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

/// A turn just started: its `turn_started` event is not in the log yet, so the caller
/// appends it in the statement that changes the task anyway.
pub(super) struct Started {
    pub turn: TurnId,
    pub event: EventDraft,
    /// The task's input as stored: attachments by id, never their bytes.
    pub input: Content,
    /// The message the turn started with.
    pub message: MessageId,
}

/// Starts a turn with its message: the turn (the partial unique index refuses a
/// second running one) and the message.
pub(super) async fn start_turn(
    conn: &mut Conn,
    task: TaskId,
    message: &NewMessage,
    metadata: &Metadata,
    lease: &Lease,
    webhook: Option<&WebhookEndpoint>,
    at: DateTime<Utc>,
) -> Result<Started, TxError> {
    let turn: i64 = diesel::insert_into(turns::table)
        .values(&turn_row(task, metadata, lease, webhook, at)?)
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
    let input = insert_message(conn, task, turn, MessageParts::of(message), None, at).await?;
    Ok(started(task, turn, metadata, input, at))
}

/// The row of a turn that starts now, running under `lease`.
pub(super) fn turn_row(
    task: TaskId,
    metadata: &Metadata,
    lease: &Lease,
    webhook: Option<&WebhookEndpoint>,
    at: DateTime<Utc>,
) -> Result<NewTurnRow, StoreError> {
    Ok(NewTurnRow {
        task_id: task.0,
        status: RUNNING,
        metadata: metadata_json(metadata)?,
        started_at: micros(at),
        lease_owner: lease.owner.clone(),
        lease_expires_at: micros(lease.expires_at),
        webhook_url: webhook.map(|w| w.url.clone()),
        webhook_secrets: webhook.map(WebhookEndpoint::secrets_column),
    })
}

/// The turn `turn` just started with the message `input`, and its `turn_started` event.
pub(super) fn started(
    task: TaskId,
    turn: TurnId,
    metadata: &Metadata,
    input: Message,
    at: DateTime<Utc>,
) -> Started {
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
    Started {
        turn,
        event: draft,
        message: input.id,
        input: input.content,
    }
}

/// Writes a turn just started on a task that has a log already: the task's new input,
/// its change time (and, when a queued message started the turn, one message fewer
/// waiting) in one statement, then the turn's event. Returns the event's `seq` and
/// the task's agent.
pub(super) async fn record_start(
    conn: &mut Conn,
    task: TaskId,
    input: &Content,
    event: EventDraft,
    now: i64,
    dequeued: bool,
) -> Result<(i64, AgentId), TxError> {
    let (last, agent): (i64, i64) = diesel::update(tasks::table.find(task.0))
        .set((
            tasks::input.eq(content_json(input)?),
            tasks::updated_at.eq(now),
            tasks::last_seq.eq(tasks::last_seq + 1),
            tasks::queued.eq(tasks::queued - i64::from(dequeued)),
        ))
        .returning((tasks::last_seq, tasks::agent_id))
        .by_sql()
        .get_result(conn)
        .await?;
    insert_events(conn, task.0, last, vec![event], now, None).await?;
    Ok((last, AgentId(agent)))
}

/// What the task's latest turn leaves a new message to do.
pub(super) enum LatestTurn {
    /// The turn runs: the task is busy.
    Running(ActiveTurn),
    /// The turn waits for answers to its tool calls.
    Waiting(TurnId),
    /// The turn ended (or the task has none): a message starts the next.
    Ended,
}

/// The task's latest turn, which is the running one if any runs (a turn starts only
/// when none does). The task's row is locked first (PostgreSQL), so two messages to
/// one task take turns: the second sees the first's turn, and of two answers to one
/// turn's tool calls exactly one is the last.
pub(super) async fn latest_turn(conn: &mut Conn, task: i64) -> Result<LatestTurn, TxError> {
    lock_task(conn, task).await?;
    let latest: Option<(i64, String, i64)> = turns::table
        .filter(turns::task_id.eq(task))
        .order(turns::id.desc())
        .select((turns::id, turns::status, turns::started_at))
        .first(conn)
        .await
        .optional()?;
    Ok(match latest {
        Some((id, status, started)) if status == RUNNING => LatestTurn::Running(ActiveTurn {
            turn_id: TurnId(id),
            started_at: from_micros(started)?,
        }),
        Some((id, status, _)) if status == REQUIRES_ACTION => LatestTurn::Waiting(TurnId(id)),
        _ => LatestTurn::Ended,
    })
}
