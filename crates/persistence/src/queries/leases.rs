//! Leases of playing turns, and the recovery of turns whose instance stopped.

use std::collections::HashMap;

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::Conn;
use super::events::append_events;
use super::turns::expired_by;
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::{REQUIRES_ACTION, RUNNING, TxError};
use crate::schema::{messages, tasks, turns};

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
    super::transaction(conn, async |conn| {
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
    super::transaction(conn, async |conn| {
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
            append_events(conn, restarted.task_id.0, vec![draft], now, None, None).await?;
            attempts.push((restarted.id, restarted.attempt));
        }
        Ok::<_, TxError>(attempts)
    })
    .await
    .map_err(TxError::into_store)
}
