//! A2A push configs: stored per task, and turned into outbox deliveries when a turn
//! of the task ends.

use baton_domain::push::{MAX_PUSH_CONFIGS_PER_TASK, PushConfig, PushPut};
use baton_domain::*;
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::RunQueryDsl;

use super::reads::owned_task;
use super::{Conn, lock_task};
use crate::models::*;
use crate::queries::TxError;
use crate::schema::{push_configs, webhook_deliveries};

/// Stores `config` in the transaction the caller holds (a claim's, or its own),
/// replacing the task's config of the same id. The task's row is locked first, so
/// concurrent puts count each other.
pub(super) async fn store_push_config(
    conn: &mut Conn,
    config: &PushConfig,
) -> Result<PushPut, TxError> {
    let task = config.task_id.0;
    lock_task(conn, task).await?;
    let others: i64 = push_configs::table
        .filter(
            push_configs::task_id
                .eq(task)
                .and(push_configs::config_id.ne(&config.id)),
        )
        .count()
        .get_result(conn)
        .await?;
    if others >= MAX_PUSH_CONFIGS_PER_TASK as i64 {
        return Ok(PushPut::Full);
    }
    diesel::insert_into(push_configs::table)
        .values(PushConfigRow::new(config))
        .on_conflict((push_configs::task_id, push_configs::config_id))
        .do_update()
        .set((
            push_configs::url.eq(excluded(push_configs::url)),
            push_configs::token.eq(excluded(push_configs::token)),
            push_configs::auth_scheme.eq(excluded(push_configs::auth_scheme)),
            push_configs::auth_credentials.eq(excluded(push_configs::auth_credentials)),
            push_configs::secrets.eq(excluded(push_configs::secrets)),
        ))
        .execute(conn)
        .await?;
    Ok(PushPut::Stored)
}

pub(crate) async fn put_push_config(
    conn: &mut Conn,
    agent: AgentId,
    config: &PushConfig,
) -> Result<PushPut, StoreError> {
    super::transaction(conn, async |conn| {
        if owned_task(conn, agent, config.task_id).await?.is_none() {
            return Ok(PushPut::TaskNotFound);
        }
        store_push_config(conn, config).await
    })
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn list_push_configs(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
) -> Result<Option<Vec<PushConfig>>, StoreError> {
    async {
        if owned_task(conn, agent, task).await?.is_none() {
            return Ok(None);
        }
        Ok(Some(configs_of(conn, task.0).await?))
    }
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn delete_push_config(
    conn: &mut Conn,
    agent: AgentId,
    task: TaskId,
    id: &str,
) -> Result<Option<bool>, StoreError> {
    super::transaction(conn, async |conn| {
        if owned_task(conn, agent, task).await?.is_none() {
            return Ok(None);
        }
        let deleted = diesel::delete(
            push_configs::table.filter(
                push_configs::task_id
                    .eq(task.0)
                    .and(push_configs::config_id.eq(id)),
            ),
        )
        .execute(conn)
        .await?;
        Ok::<_, TxError>(Some(deleted > 0))
    })
    .await
    .map_err(TxError::into_store)
}

async fn configs_of(conn: &mut Conn, task: i64) -> Result<Vec<PushConfig>, TxError> {
    let rows: Vec<PushConfigRow> = push_configs::table
        .filter(push_configs::task_id.eq(task))
        .order((
            push_configs::created_at.asc(),
            push_configs::config_id.asc(),
        ))
        .select(PushConfigRow::as_select())
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(PushConfigRow::into_domain)
        .collect::<Result<_, _>>()?)
}

/// Writes a push of the turn's end to the outbox for each of its task's push configs
/// (A2A's `StreamResponse` with the task; the config's token and `Authorization`).
pub(super) async fn queue_pushes(
    conn: &mut Conn,
    ended: &Turn,
    output: &[Message],
    task_metadata: &Metadata,
    now: i64,
) -> Result<(), TxError> {
    let configs = configs_of(conn, ended.task_id.0).await?;
    if configs.is_empty() {
        return Ok(());
    }
    let payload = serde_json::to_string(&baton_domain::a2a::push_payload(
        ended,
        output,
        task_metadata,
    ))
    .map_err(StoreError::internal)?;
    let event_type = format!("a2a.{}", baton_domain::webhooks::event_type(ended));
    // One statement each: a task has few configs, and SQLite cannot batch rows with
    // optional columns.
    for config in &configs {
        let row = NewDeliveryRow {
            webhook_id: baton_domain::webhooks::new_delivery_id(),
            task_id: ended.task_id.0,
            turn_id: ended.id.0,
            event_type: event_type.clone(),
            url: config.url.clone(),
            secrets: config.secrets.join(" "),
            payload: payload.clone(),
            status: "pending",
            next_attempt_at: Some(now),
            created_at: now,
            headers: Some(serde_json::to_string(&config.headers()).map_err(StoreError::internal)?),
        };
        diesel::insert_into(webhook_deliveries::table)
            .values(&row)
            .execute(conn)
            .await?;
    }
    Ok(())
}
