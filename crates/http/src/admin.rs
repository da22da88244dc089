//! The admin API under `/v1/admin`: agents, their keys, webhook redelivery. Behind the
//! operator's admin token; without one configured, these routes do not exist (404).
//! The CLI's `agent`, `key` and `webhook` commands use the same `AdminService`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_domain::a2a::CardConfig;
use baton_domain::{
    AdminService, Agent, AgentChanges, AgentId, ApiKey, OnBusy, OnInterrupt, RunnerSpec,
    TurnPolicy, WebhookTarget,
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::ApiState;
use crate::dto::{DataBody, PageBody};
use crate::error::{ApiError, ErrorCode};
use crate::extract::{json_body, page};
use crate::params::PageParams;

/// The admin API's service and the hash of its token.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub service: AdminService,
    token_hash: [u8; 32],
}

impl AdminApi {
    pub fn new(service: AdminService, token: &str) -> Self {
        AdminApi {
            service,
            token_hash: Sha256::digest(token.as_bytes()).into(),
        }
    }
}

/// The admin service, for a request that presents the admin token.
fn admin<'a>(state: &'a ApiState, req: &HttpRequest) -> Result<&'a AdminService, ApiError> {
    let Some(api) = &state.admin else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "The admin API is disabled on this server (no admin_token is configured).",
        ));
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| Sha256::digest(token.trim().as_bytes()));
    // Hashes are compared, so the time taken says nothing about the token.
    match presented {
        Some(hash) if hash.as_slice() == api.token_hash => Ok(&api.service),
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "Send the admin token as 'Authorization: Bearer <token>'.",
        )),
    }
}

fn agent_id(req: &HttpRequest) -> Result<AgentId, ApiError> {
    req.match_info()
        .get("agent_id")
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(AgentId)
        .ok_or_else(|| ApiError::new(ErrorCode::AgentNotFound, "No agent with this id."))
}

/// `{agent_id}` in a path.
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AgentIdParam {
    #[param(minimum = 1, example = 1)]
    pub agent_id: i64,
}

/// An agent as the admin API shows it: never its webhook secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct AgentBody {
    pub agent_id: i64,
    pub name: String,
    pub runner: RunnerSpec,
    pub policy: TurnPolicy,
    /// The default webhook for the agent's turn ends (its secret is never shown again).
    pub webhook: Option<WebhookUrl>,
    /// What its A2A Agent Card says of it; `null`: the defaults (docs/a2a.md).
    pub card: Option<CardConfig>,
    pub created_at: DateTime<Utc>,
    /// Only when the server made the webhook's secret in this request: shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookUrl {
    pub url: String,
}

impl From<Agent> for AgentBody {
    fn from(agent: Agent) -> Self {
        AgentBody {
            agent_id: agent.id.0,
            name: agent.name,
            runner: agent.runner,
            policy: agent.policy,
            webhook: agent.webhook.map(|w| WebhookUrl { url: w.url }),
            card: agent.card,
            created_at: agent.created_at,
            webhook_secret: None,
        }
    }
}

/// A turn policy in a request: missing fields keep their current (or default) value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    pub on_interrupt: Option<OnInterrupt>,
    pub max_attempts: Option<u32>,
    pub turn_timeout_ms: Option<u64>,
    /// What the agent's messages do when their task is busy, unless a request says.
    pub on_busy: Option<OnBusy>,
}

impl PolicyBody {
    fn over(self, base: TurnPolicy) -> TurnPolicy {
        TurnPolicy {
            on_interrupt: self.on_interrupt.unwrap_or(base.on_interrupt),
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            turn_timeout_ms: self.turn_timeout_ms.unwrap_or(base.turn_timeout_ms),
            on_busy: self.on_busy.unwrap_or(base.on_busy),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "support-bot", "runner": {"kind": "echo"}, "policy": {"on_interrupt": "retry"}}))]
pub struct CreateAgentBody {
    pub name: String,
    pub runner: RunnerSpec,
    #[serde(default)]
    pub policy: PolicyBody,
    /// The agent's default webhook; without a secret, one is made and shown once.
    #[serde(default)]
    pub webhook: Option<WebhookTarget>,
    /// What its A2A Agent Card says of it: a description and skills.
    #[serde(default)]
    pub card: Option<CardConfig>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"policy": {"turn_timeout_ms": 60000}, "webhook": null}))]
pub struct UpdateAgentBody {
    pub name: Option<String>,
    pub runner: Option<RunnerSpec>,
    pub policy: Option<PolicyBody>,
    /// Absent: unchanged; `null`: removed.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<WebhookTarget>)]
    pub webhook: Option<Option<WebhookTarget>>,
    /// Absent: unchanged; `null`: removed (the card's defaults again).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<CardConfig>)]
    pub card: Option<Option<CardConfig>>,
}

/// Tells a field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// A key as listed: its public prefix and dates, never a secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyBody {
    pub prefix: String,
    pub agent_id: i64,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<ApiKey> for KeyBody {
    fn from(key: ApiKey) -> Self {
        KeyBody {
            prefix: key.prefix,
            agent_id: key.agent_id.0,
            created_at: key.created_at,
            revoked_at: key.revoked_at,
            last_used_at: key.last_used_at,
        }
    }
}

#[utoipa::path(post, path = "/v1/admin/agents", tag = "admin",
    summary = "Create an agent",
    request_body = CreateAgentBody,
    responses((status = 201, description = "The agent. `webhook_secret` only when the server made it.", body = AgentBody,
        headers(("Location" = String, description = "The agent's admin URL.")))),
    security(("admin_token" = [])))]
pub(crate) async fn create_agent(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let body: CreateAgentBody = json_body(&req, payload, &state).await?;
    let generated = body.webhook.as_ref().is_some_and(|w| w.secret.is_none());
    let agent = admin
        .create_agent(
            &body.name,
            body.runner,
            body.policy.over(TurnPolicy::default()),
            body.webhook,
            body.card,
        )
        .await?;
    let secret = agent
        .webhook
        .as_ref()
        .filter(|_| generated)
        .map(|w| w.secrets.join(" "));
    let location = format!("/v1/admin/agents/{}", agent.id);
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, location))
        .json(AgentBody {
            webhook_secret: secret,
            ..AgentBody::from(agent)
        }))
}

#[utoipa::path(get, path = "/v1/admin/agents", tag = "admin",
    summary = "List agents",
    params(PageParams),
    responses((status = 200, description = "A page of agents, oldest first.", body = PageBody<AgentBody>)),
    security(("admin_token" = [])))]
pub(crate) async fn list_agents(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let agents = admin.list_agents(page(&req)?).await?;
    Ok(HttpResponse::Ok().json(PageBody::<AgentBody>::new(agents)))
}

#[utoipa::path(get, path = "/v1/admin/agents/{agent_id}", tag = "admin",
    summary = "Get an agent",
    params(AgentIdParam),
    responses((status = 200, description = "The agent.", body = AgentBody)),
    security(("admin_token" = [])))]
pub(crate) async fn get_agent(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let agent = admin.get_agent(agent_id(&req)?).await?;
    Ok(HttpResponse::Ok().json(AgentBody::from(agent)))
}

#[utoipa::path(patch, path = "/v1/admin/agents/{agent_id}", tag = "admin",
    summary = "Change an agent",
    description = "Absent fields stay as they are; policy fields merge into the current policy; `webhook: null` removes the default webhook. Running turns keep the policy they started with.",
    params(AgentIdParam),
    request_body = UpdateAgentBody,
    responses((status = 200, description = "The agent as changed.", body = AgentBody)),
    security(("admin_token" = [])))]
pub(crate) async fn update_agent(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let id = agent_id(&req)?;
    let body: UpdateAgentBody = json_body(&req, payload, &state).await?;
    let policy = match body.policy {
        Some(partial) => Some(partial.over(admin.get_agent(id).await?.policy)),
        None => None,
    };
    let changes = AgentChanges {
        card: body.card,
        name: body.name,
        runner: body.runner,
        policy,
        webhook: body.webhook,
    };
    let agent = admin.update_agent(id, changes).await?;
    Ok(HttpResponse::Ok().json(AgentBody::from(agent)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKeyBody {
    /// The key itself: shown in this answer only.
    key: String,
    #[serde(flatten)]
    listed: KeyBody,
}

#[utoipa::path(post, path = "/v1/admin/agents/{agent_id}/keys", tag = "admin",
    summary = "Create a key",
    description = "A new API key for the agent. The key is in this answer only; the server keeps its hash.",
    params(AgentIdParam),
    responses((status = 201, description = "The new key, shown this once.", body = CreatedKeyBody)),
    security(("admin_token" = [])))]
pub(crate) async fn create_key(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let created = admin.create_key(agent_id(&req)?).await?;
    Ok(HttpResponse::Created().json(CreatedKeyBody {
        key: created.token,
        listed: created.key.into(),
    }))
}

#[utoipa::path(get, path = "/v1/admin/agents/{agent_id}/keys", tag = "admin",
    summary = "List an agent's keys",
    description = "Prefixes and dates, revoked keys included; never a secret.",
    params(AgentIdParam),
    responses((status = 200, description = "The agent's keys.", body = DataBody<KeyBody>)),
    security(("admin_token" = [])))]
pub(crate) async fn list_keys(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let keys = admin.list_keys(agent_id(&req)?).await?;
    let data: Vec<KeyBody> = keys.into_iter().map(KeyBody::from).collect();
    Ok(HttpResponse::Ok().json(DataBody { data }))
}

#[utoipa::path(delete, path = "/v1/admin/keys/{prefix}", tag = "admin",
    summary = "Revoke a key",
    description = "Revokes the live key with this prefix (or this whole key); it is refused from then on.",
    params(("prefix" = String, Path, description = "The key's prefix, as listed (or the whole key).")),
    responses((status = 204, description = "Revoked.")),
    security(("admin_token" = [])))]
pub(crate) async fn revoke_key(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let prefix = req.match_info().get("prefix").unwrap_or_default();
    if admin.revoke_key(prefix).await? {
        Ok(HttpResponse::NoContent().finish())
    } else {
        Err(ApiError::new(
            ErrorCode::NotFound,
            "No live key has this prefix (it may be revoked already).",
        ))
    }
}

/// The answer to a redelivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedeliveryBody {
    pub delivery_id: i64,
    /// `pending`: a new round of attempts starts now.
    pub status: &'static str,
}

#[utoipa::path(post, path = "/v1/admin/webhook-deliveries/{delivery_id}/redeliver", tag = "admin",
    summary = "Redeliver a webhook",
    description = "Starts a new round of attempts for a delivery (delivered or failed), with the same webhook id.",
    params(("delivery_id" = i64, Path, description = "The delivery's id, as listed by the task's webhook deliveries.")),
    responses((status = 202, description = "Accepted: a new round of attempts is queued.", body = RedeliveryBody)),
    security(("admin_token" = [])))]
pub(crate) async fn redeliver(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let admin = admin(&state, &req)?;
    let delivery = req
        .match_info()
        .get("delivery_id")
        .and_then(|raw| raw.parse::<i64>().ok());
    match delivery {
        Some(id) if admin.redeliver(id).await? => {
            Ok(HttpResponse::Accepted().json(RedeliveryBody {
                delivery_id: id,
                status: "pending",
            }))
        }
        _ => Err(ApiError::new(
            ErrorCode::NotFound,
            "No webhook delivery with this id.",
        )),
    }
}
