//! The webhook outbox: deliveries queued with a turn's end, claimed by senders, and
//! their attempts.

use std::collections::HashMap;

use baton_domain::webhooks::{AttemptResult, DeliveryView, DueDelivery, NextStep, WebhookEndpoint};
use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use diesel_async::RunQueryDsl;

use super::push::queue_pushes;
use super::reads::owned_task;
use super::{Conn, due_deliveries};
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::TxError;
use crate::schema::{webhook_attempts, webhook_deliveries};
use crate::statement_cache::CacheBySql;

/// What a turn's end is delivered with, read by the statement that ends the turn (so
/// a turn's end without deliveries reads nothing more): its task's agent and
/// metadata, the agent's default webhook, and whether the task has A2A push configs.
pub(super) fn recipients() -> diesel::expression::SqlLiteral<RecipientsSql> {
    // Written out: a subselect Diesel builds names its columns unqualified inside an
    // SQLite `RETURNING`, where `id` and `task_id` are then ambiguous.
    diesel::dsl::sql(
        "(SELECT t.agent_id FROM tasks t WHERE t.id = turns.task_id), \
         (SELECT t.metadata FROM tasks t WHERE t.id = turns.task_id), \
         (SELECT a.webhook_url FROM tasks t JOIN agents a ON a.id = t.agent_id \
          WHERE t.id = turns.task_id), \
         (SELECT a.webhook_secrets FROM tasks t JOIN agents a ON a.id = t.agent_id \
          WHERE t.id = turns.task_id), \
         EXISTS (SELECT 1 FROM push_configs p WHERE p.task_id = turns.task_id)",
    )
}

/// The SQL types of what [`recipients`] reads.
pub(super) type RecipientsSql = (
    Nullable<BigInt>,
    Nullable<Text>,
    Nullable<Text>,
    Nullable<Text>,
    Bool,
);

/// What [`recipients`] reads.
pub(super) type Recipients = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
);

/// Writes the deliveries of a turn's end to the outbox: to the turn's own webhook
/// (`own_hook`) or else its agent's default one, if there is either, and a push to
/// each of the task's A2A push configs.
pub(super) async fn queue_delivery(
    conn: &mut Conn,
    ended: &Turn,
    own_hook: Option<WebhookEndpoint>,
    recipients: Recipients,
    output: &[Message],
    now: i64,
) -> Result<(), TxError> {
    let (agent_id, task_metadata, agent_url, agent_secrets, pushed) = recipients;
    let (Some(agent_id), Some(task_metadata)) = (agent_id, task_metadata) else {
        return Err(crate::error::corrupt("a turn without its task".to_owned()).into());
    };
    let endpoint = own_hook.or(endpoint(agent_url, agent_secrets));
    if endpoint.is_none() && !pushed {
        return Ok(());
    }
    let task_metadata: Metadata = serde_json::from_str(&task_metadata)
        .map_err(|err| crate::error::corrupt(format!("tasks.metadata: {err}")))?;
    if pushed {
        queue_pushes(conn, ended, output, &task_metadata, now).await?;
    }
    let Some(endpoint) = endpoint else {
        return Ok(());
    };
    let payload = baton_domain::webhooks::payload(ended, agent_id, output, &task_metadata);
    let row = NewDeliveryRow {
        webhook_id: baton_domain::webhooks::new_delivery_id(),
        task_id: ended.task_id.0,
        turn_id: ended.id.0,
        event_type: baton_domain::webhooks::event_type(ended).to_owned(),
        url: endpoint.url.clone(),
        secrets: endpoint.secrets_column(),
        payload: serde_json::to_string(&payload).map_err(StoreError::internal)?,
        status: "pending",
        next_attempt_at: Some(now),
        created_at: now,
        headers: None,
    };
    diesel::insert_into(webhook_deliveries::table)
        .values(&row)
        .by_sql()
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn claim_deliveries(
    conn: &mut Conn,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<DueDelivery>, StoreError> {
    let now = micros(now);
    // Every instance polls every second: look before taking the write lock (on
    // SQLite, the single writer) when, as usually, nothing is due.
    let anything_due: Option<i64> = webhook_deliveries::table
        .filter(
            webhook_deliveries::status
                .eq("pending")
                .and(webhook_deliveries::next_attempt_at.le(now)),
        )
        .select(webhook_deliveries::id)
        .first(conn)
        .await
        .optional()
        .map_err(from_diesel)?;
    if anything_due.is_none() {
        return Ok(Vec::new());
    }
    super::transaction(conn, async |conn| {
        let due = due_deliveries(conn, now, limit).await?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let claimed: Vec<DeliveryRow> =
            diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(&due)))
                .set(webhook_deliveries::claimed_until.eq(micros(until)))
                .returning(DeliveryRow::as_returning())
                .get_results(conn)
                .await?;
        Ok::<_, TxError>(
            claimed
                .into_iter()
                .map(DeliveryRow::into_due)
                .collect::<Result<_, _>>()?,
        )
    })
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn record_attempt(
    conn: &mut Conn,
    attempt: &AttemptResult,
) -> Result<bool, StoreError> {
    let (status, next_at) = match attempt.next {
        NextStep::Delivered => ("delivered", None),
        NextStep::RetryAt(at) => ("pending", Some(micros(at))),
        NextStep::GiveUp => ("failed", None),
    };
    super::transaction(conn, async |conn| {
        let number: Option<i64> = diesel::update(
            webhook_deliveries::table.filter(
                webhook_deliveries::id
                    .eq(attempt.delivery_id)
                    .and(webhook_deliveries::status.eq("pending")),
            ),
        )
        .set((
            webhook_deliveries::status.eq(status),
            webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
            webhook_deliveries::next_attempt_at.eq(next_at),
            webhook_deliveries::claimed_until.eq(None::<i64>),
        ))
        .returning(webhook_deliveries::attempts)
        .by_sql()
        .get_result(conn)
        .await
        .optional()?;
        let Some(number) = number else {
            return Ok(false);
        };
        let row = AttemptRow {
            delivery_id: attempt.delivery_id,
            attempt: number,
            started_at: micros(attempt.started_at),
            status_code: attempt.status_code.map(i64::from),
            latency_ms: i64::try_from(attempt.latency_ms).unwrap_or(i64::MAX),
            error: attempt.error.clone(),
        };
        diesel::insert_into(webhook_attempts::table)
            .values(&row)
            .by_sql()
            .execute(conn)
            .await?;
        Ok::<_, TxError>(true)
    })
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn list_deliveries(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
) -> Result<Option<Vec<DeliveryView>>, StoreError> {
    async {
        if owned_task(conn, agent, task).await?.is_none() {
            return Ok(None);
        }
        let rows: Vec<DeliveryRow> = webhook_deliveries::table
            .filter(webhook_deliveries::task_id.eq(task.0))
            .order(webhook_deliveries::id.asc())
            .select(DeliveryRow::as_select())
            .load(conn)
            .await?;
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let mut attempts: HashMap<i64, Vec<_>> = HashMap::new();
        let attempt_rows: Vec<AttemptRow> = webhook_attempts::table
            .filter(webhook_attempts::delivery_id.eq_any(&ids))
            .order((
                webhook_attempts::delivery_id.asc(),
                webhook_attempts::attempt.asc(),
            ))
            .select(AttemptRow::as_select())
            .load(conn)
            .await?;
        for row in attempt_rows {
            attempts
                .entry(row.delivery_id)
                .or_default()
                .push(row.into_view()?);
        }
        let views = rows
            .into_iter()
            .map(|row| {
                let mine = attempts.remove(&row.id).unwrap_or_default();
                row.into_view(mine)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, TxError>(Some(views))
    }
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn redeliver(
    conn: &mut Conn,
    delivery: i64,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let updated = diesel::update(webhook_deliveries::table.find(delivery))
        .set((
            webhook_deliveries::status.eq("pending"),
            webhook_deliveries::round_start.eq(webhook_deliveries::attempts),
            webhook_deliveries::next_attempt_at.eq(Some(micros(now))),
            webhook_deliveries::claimed_until.eq(None::<i64>),
        ))
        .execute(conn)
        .await
        .map_err(from_diesel)?;
    Ok(updated > 0)
}

/// The deliveries due at `now` that no sender holds, oldest first: what
/// `claim_deliveries` takes (each backend adds its locking, see `due_deliveries`).
#[diesel::dsl::auto_type]
pub(super) fn due(now: i64, limit: i64) -> _ {
    webhook_deliveries::table
        .filter(
            webhook_deliveries::status
                .eq("pending")
                .and(webhook_deliveries::next_attempt_at.le(now))
                .and(
                    webhook_deliveries::claimed_until
                        .is_null()
                        .or(webhook_deliveries::claimed_until.le(now)),
                ),
        )
        .order(webhook_deliveries::next_attempt_at.asc())
        .limit(limit)
        .select(webhook_deliveries::id)
}
