//! Agents and their API keys.

use baton_domain::*;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use super::{Conn, announce_agents};
use crate::error::from_diesel;
use crate::models::*;
use crate::queries::TxError;
use crate::schema::{agents, api_keys};
use crate::statement_cache::CacheBySql;

pub(crate) async fn create_agent(conn: &mut Conn, new: &NewAgent) -> Result<Agent, StoreError> {
    let row = NewAgentRow::from_domain(new)?;
    diesel::insert_into(agents::table)
        .values(&row)
        .returning(AgentRow::as_returning())
        .get_result(conn)
        .await
        .map_err(from_diesel)?
        .into_domain()
}

pub(crate) async fn get_agent(conn: &mut Conn, id: AgentId) -> Result<Option<Agent>, StoreError> {
    agents::table
        .find(id.0)
        .select(AgentRow::as_select())
        .first(conn)
        .await
        .optional()
        .map_err(from_diesel)?
        .map(AgentRow::into_domain)
        .transpose()
}

pub(crate) async fn count_agents(conn: &mut Conn) -> Result<u64, StoreError> {
    let n: i64 = agents::table
        .count()
        .get_result(conn)
        .await
        .map_err(from_diesel)?;
    Ok(n.max(0) as u64)
}

pub(crate) async fn list_agents(
    conn: &mut Conn,
    page: PageRequest,
) -> Result<Page<Agent>, StoreError> {
    let mut query = agents::table
        .select(AgentRow::as_select())
        .order(agents::id.asc())
        .limit(i64::from(page.limit) + 1)
        .into_boxed();
    if let Some(after) = page.after {
        query = query.filter(agents::id.gt(after));
    }
    let agents = query
        .load(conn)
        .await
        .map_err(from_diesel)?
        .into_iter()
        .map(AgentRow::into_domain)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Page::from_overfetch(agents, page.limit, |a| a.id.0))
}

pub(crate) async fn update_agent(
    conn: &mut Conn,
    id: AgentId,
    update: &AgentUpdate,
) -> Result<Option<Agent>, StoreError> {
    super::transaction(conn, async |conn| {
        let found: Option<AgentRow> = agents::table
            .find(id.0)
            .select(AgentRow::as_select())
            .first(conn)
            .await
            .optional()?;
        let Some(row) = found else { return Ok(None) };
        let mut agent = row.into_domain()?;
        if let Some(name) = &update.name {
            agent.name = name.clone();
        }
        if let Some(runner) = &update.runner {
            agent.runner = runner.clone();
        }
        if let Some(policy) = update.policy {
            agent.policy = policy;
        }
        if let Some(webhook) = &update.webhook {
            agent.webhook = webhook.clone();
        }
        if let Some(card) = &update.card {
            agent.card = card.clone();
        }
        let row = NewAgentRow::from_domain(&NewAgent {
            name: agent.name.clone(),
            runner: agent.runner.clone(),
            policy: agent.policy,
            webhook: agent.webhook.clone(),
            card: agent.card.clone(),
            created_at: agent.created_at,
        })?;
        diesel::update(agents::table.find(id.0))
            .set((
                agents::name.eq(&row.name),
                agents::runner_kind.eq(&row.runner_kind),
                agents::runner_config.eq(&row.runner_config),
                agents::on_interrupt.eq(row.on_interrupt),
                agents::max_attempts.eq(row.max_attempts),
                agents::turn_timeout_ms.eq(row.turn_timeout_ms),
                agents::webhook_url.eq(&row.webhook_url),
                agents::webhook_secrets.eq(&row.webhook_secrets),
                agents::on_busy.eq(row.on_busy),
                agents::card.eq(&row.card),
            ))
            .execute(conn)
            .await?;
        announce_agents(conn, &AgentsChanged::Agent(id)).await?;
        Ok::<_, TxError>(Some(agent))
    })
    .await
    .map_err(TxError::into_store)
}

pub(crate) async fn list_api_keys(
    conn: &mut Conn,
    agent: AgentId,
) -> Result<Vec<ApiKey>, StoreError> {
    api_keys::table
        .filter(api_keys::agent_id.eq(agent.0))
        .order(api_keys::id.asc())
        .select(ApiKeyRow::as_select())
        .load(conn)
        .await
        .map_err(from_diesel)?
        .into_iter()
        .map(ApiKeyRow::into_domain)
        .collect()
}

pub(crate) async fn touch_api_key(
    conn: &mut Conn,
    key: ApiKeyId,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    diesel::update(api_keys::table.find(key.0))
        .set(api_keys::last_used_at.eq(micros(now)))
        .by_sql()
        .execute(conn)
        .await
        .map_err(from_diesel)?;
    Ok(())
}

pub(crate) async fn create_api_key(conn: &mut Conn, new: &NewApiKey) -> Result<ApiKey, StoreError> {
    let row = NewApiKeyRow {
        agent_id: new.agent_id.0,
        prefix: &new.prefix,
        secret_hash: &new.secret_hash,
        created_at: micros(new.created_at),
    };
    diesel::insert_into(api_keys::table)
        .values(&row)
        .returning(ApiKeyRow::as_returning())
        .get_result(conn)
        .await
        .map_err(from_diesel)?
        .into_domain()
}

pub(crate) async fn find_api_key(
    conn: &mut Conn,
    secret_hash: &str,
) -> Result<Option<ApiKey>, StoreError> {
    api_keys::table
        .filter(api_keys::secret_hash.eq(secret_hash))
        .select(ApiKeyRow::as_select())
        .first(conn)
        .await
        .optional()
        .map_err(from_diesel)?
        .map(ApiKeyRow::into_domain)
        .transpose()
}

pub(crate) async fn revoke_api_key(
    conn: &mut Conn,
    prefix: &str,
    at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let revoked = diesel::update(
        api_keys::table.filter(
            api_keys::prefix
                .eq(prefix)
                .and(api_keys::revoked_at.is_null()),
        ),
    )
    .set(api_keys::revoked_at.eq(micros(at)))
    .execute(conn)
    .await
    .map_err(from_diesel)?;
    if revoked > 0 {
        announce_agents(conn, &AgentsChanged::Key(prefix.to_owned()))
            .await
            .map_err(from_diesel)?;
    }
    Ok(revoked > 0)
}
