//! Claims: a new task or a message on a task starts a turn, or answers a waiting
//! turn's tool calls; while a turn runs, refused, queued, steered or interrupting as
//! `on_busy` says; refused when the agent runs as many turns as it may.

use baton_domain::push::{MAX_PUSH_CONFIGS_PER_TASK, NewPush, PushPut};
use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::events::insert_events;
use super::idempotency::{remember, replay};
use super::messages::insert_message;
use super::push::store_push_config;
use super::queue::enqueue;
use super::reads::owned_task;
use super::turn_start::{LatestTurn, latest_turn, record_start, running_turn, start_turn};
use super::turns::finish_in;
use super::{Conn, lock_active_turn, lock_agent};
use crate::error::is_deadlock;
use crate::models::*;
use crate::queries::{RUNNING, TxError};
use crate::schema::{messages, tasks, turns};
use crate::statement_cache::CacheBySql;

/// Refuses a claim when the agent already runs `limit` turns. The agent's row is
/// locked first (PostgreSQL), so concurrent claims for one agent take turns and
/// cannot both see the last free place.
pub(super) async fn check_capacity(
    conn: &mut Conn,
    agent: AgentId,
    limit: Option<u32>,
) -> Result<(), TxError> {
    let Some(limit) = limit else { return Ok(()) };
    lock_agent(conn, agent).await?;
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
pub(super) const CLAIM_TRIES: usize = 3;

pub(super) fn contended() -> ClaimError {
    ClaimError::Store(StoreError::Unavailable(
        "the task is heavily contended; try again".to_owned(),
    ))
}

/// The row of a task about to be created.
pub(super) fn task_row(new: &NewTask) -> Result<NewTaskRow, StoreError> {
    let now = micros(new.now);
    Ok(NewTaskRow {
        agent_id: new.agent_id.0,
        metadata: metadata_json(&new.metadata)?,
        input: content_json(&new.message.content)?,
        created_at: now,
        updated_at: now,
        // Its turn's `turn_started` event is the first of its log.
        last_seq: 1,
    })
}

/// The answer to the creation of task `task_id`, whose first turn is `turn`.
pub(super) fn task_accepted(new: &NewTask, task_id: TaskId, turn: TurnId) -> Accepted {
    Accepted {
        task_id,
        agent_id: new.agent_id,
        turn_id: Some(turn),
        accepted_at: new.now,
        metadata: new.metadata.clone(),
        status: AcceptedStatus::Running,
        // A new task's log starts with its turn.
        stream_after: Some(0),
        queued: None,
        interrupted: None,
    }
}

pub(crate) async fn create_task(conn: &mut Conn, new: &NewTask) -> Result<Claim, ClaimError> {
    let now = micros(new.now);
    let task_row = task_row(new)?;
    let record = new.idempotency.as_ref();
    for _ in 0..CLAIM_TRIES {
        let result = super::transaction(conn, async |conn| {
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
            if let Some(push) = &new.push {
                store_push(conn, push, task_id, new.now).await?;
            }
            let started = start_turn(
                conn,
                task_id,
                &new.message,
                &new.metadata,
                &new.lease,
                new.webhook.as_ref(),
                new.now,
            )
            .await?;
            if started.input != new.message.content {
                diesel::update(tasks::table.find(task))
                    .set(tasks::input.eq(content_json(&started.input)?))
                    .by_sql()
                    .execute(conn)
                    .await?;
            }
            // The task was inserted with `last_seq` 1: its log starts with this.
            insert_events(conn, task, 1, vec![started.event], now, None).await?;
            let accepted = task_accepted(new, task_id, started.turn);
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
        let result = super::transaction(conn, async |conn| {
            if owned_task(conn, append.agent_id, append.task_id)
                .await?
                .is_none()
            {
                return Err(TxError::NotFound);
            }
            if let Some(first) = replay(conn, append.agent_id, record, now).await? {
                return Ok(Claim::Replayed(first));
            }
            // An interrupt ends the running turn: it takes the turn's row before
            // the task's, in the order the turn's player does. (Other claims
            // write no turn a player holds; a lock they may still meet in the
            // other order is a deadlock the loop below runs again.)
            if append.on_busy == OnBusy::Interrupt {
                lock_active_turn(conn, task).await?;
            }
            // (It locks the task's row: after the turn's, for the same reason.)
            if let Some(push) = &append.push {
                store_push(conn, push, append.task_id, append.now).await?;
            }
            let mut interrupted = None;
            match latest_turn(conn, task).await? {
                LatestTurn::Running(active) => {
                    tools::check_not_an_answer(&append.message).map_err(TxError::Invalid)?;
                    match append.on_busy {
                        OnBusy::Reject => return Err(TxError::Busy(Some(active))),
                        OnBusy::Enqueue => {
                            return enqueue(conn, append, QueueMode::Enqueue, None).await;
                        }
                        OnBusy::Steer => {
                            let into = Some(active.turn_id);
                            return enqueue(conn, append, QueueMode::Steer, into).await;
                        }
                        OnBusy::Interrupt => {
                            interrupt(conn, append, active.turn_id).await?;
                            interrupted = Some(active.turn_id);
                        }
                    }
                }
                LatestTurn::Waiting(waiting) => {
                    let is_answer = tools::check_not_an_answer(&append.message).is_err();
                    match append.on_busy {
                        // Only answers end the wait; anything else waits its turn
                        // (no runner plays to take a steered message).
                        OnBusy::Enqueue if !is_answer => {
                            return enqueue(conn, append, QueueMode::Enqueue, None).await;
                        }
                        OnBusy::Steer if !is_answer => {
                            return enqueue(conn, append, QueueMode::Steer, None).await;
                        }
                        OnBusy::Interrupt if !is_answer => {
                            interrupt(conn, append, waiting).await?;
                            interrupted = Some(waiting);
                        }
                        _ => {
                            let (requested, answered) = tool_calls_of(conn, waiting).await?;
                            let answer =
                                tools::check_answer(&requested, &answered, &append.message)
                                    .map_err(TxError::Invalid)?;
                            if answer == tools::Answer::Partial {
                                return answer_waiting_turn(conn, append, waiting, record).await;
                            }
                            // The last answer: the waiting turn is done, the next
                            // starts.
                            diesel::update(turns::table.find(waiting.0))
                                .set(turns::status.eq(TurnStatus::Completed.as_str()))
                                .by_sql()
                                .execute(conn)
                                .await?;
                        }
                    }
                }
                LatestTurn::Ended => {
                    tools::check_not_an_answer(&append.message).map_err(TxError::Invalid)?;
                }
            }
            check_capacity(conn, append.agent_id, append.max_running_per_agent).await?;
            let started = start_turn(
                conn,
                append.task_id,
                &append.message,
                &append.metadata,
                &append.lease,
                append.webhook.as_ref(),
                append.now,
            )
            .await?;
            let (last, _) = record_start(
                conn,
                append.task_id,
                &started.input,
                started.event,
                now,
                false,
            )
            .await?;
            let accepted = Accepted {
                task_id: append.task_id,
                agent_id: append.agent_id,
                turn_id: Some(started.turn),
                accepted_at: append.now,
                metadata: append.metadata.clone(),
                status: AcceptedStatus::Running,
                stream_after: Some(last - 1),
                queued: None,
                interrupted,
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
            Err(TxError::QueueFull(limit)) => return Err(ClaimError::QueueFull(limit)),
            Err(TxError::Invalid(errors)) => return Err(ClaimError::Invalid(errors)),
            Err(TxError::KeyRace) => continue,
            // Chosen to break a deadlock (PostgreSQL): rolled back, and safe to run again.
            Err(TxError::Db(err)) if is_deadlock(&err) => continue,
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

/// Ends the task's running turn (or the one waiting for tool answers) `cancelled` for
/// the message that interrupts it, as a cancel would, in the claim's transaction: the
/// message's own turn starts next, so the queue is not handed on.
async fn interrupt(conn: &mut Conn, append: &NewAppend, turn: TurnId) -> Result<(), TxError> {
    let finish = FinishTurn {
        task_id: append.task_id,
        turn_id: turn,
        outcome: TurnOutcome::Cancelled,
        output: Vec::new(),
        usage: None,
        guard: LeaseGuard::Anyone,
        now: append.now,
        next: None,
    };
    match finish_in(conn, &finish).await? {
        Some(_) => Ok(()),
        // The task's row is locked and the turn was just read running or waiting.
        None => Err(TxError::Store(StoreError::internal(
            "the interrupted turn could not be ended",
        ))),
    }
}

/// Stores a push config sent with the message, in the claim's transaction: the turn
/// it starts is pushed when it ends, however soon.
async fn store_push(
    conn: &mut Conn,
    push: &NewPush,
    task: TaskId,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    match store_push_config(conn, &push.for_task(task, now)).await? {
        PushPut::Full => Err(TxError::Invalid(vec![FieldError::new(
            "push",
            format!(
                "the task has {MAX_PUSH_CONFIGS_PER_TASK} push configs already: delete one first"
            ),
        )])),
        _ => Ok(()),
    }
}

/// The tool calls a turn asked for, and those answered so far.
pub(super) async fn tool_calls_of(
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
pub(super) async fn answer_waiting_turn(
    conn: &mut Conn,
    append: &NewAppend,
    waiting: TurnId,
    record: Option<&IdempotencyRecord>,
) -> Result<Claim, TxError> {
    insert_message(
        conn,
        append.task_id,
        waiting,
        MessageParts::of(&append.message),
        None,
        append.now,
    )
    .await?;
    // No event yet: the turn the last answer starts follows the log as it stands.
    let last: i64 = diesel::update(tasks::table.find(append.task_id.0))
        .set(tasks::updated_at.eq(micros(append.now)))
        .returning(tasks::last_seq)
        .by_sql()
        .get_result(conn)
        .await?;
    let accepted = Accepted {
        task_id: append.task_id,
        agent_id: append.agent_id,
        turn_id: Some(waiting),
        accepted_at: append.now,
        metadata: append.metadata.clone(),
        status: AcceptedStatus::RequiresAction,
        stream_after: Some(last),
        queued: None,
        interrupted: None,
    };
    remember(conn, record, &accepted).await?;
    Ok(Claim::Started(accepted))
}
