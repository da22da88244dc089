//! The agent's A2A Agent Card: who it is, where and how to call it.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::caller;
use super::rpc::VERSION_HEADER;
use crate::ApiState;
use crate::error::ApiError;

#[utoipa::path(get, path = "/a2a/{agent_id}/.well-known/agent-card.json", tag = "a2a",
    operation_id = "a2a_agent_card",
    summary = "A2A: the agent's Agent Card",
    description = "The Agent Card of the key's agent (A2A 1.0, docs/a2a.md): its name, its JSON-RPC and HTTP+JSON interfaces at `/a2a/{agent_id}`, the bearer agent key as its security scheme, its capabilities, and its description and skills as the agent's `card` says (one `conversation` skill without it). Read with the agent's key: an agent's existence is not shown to others.",
    params(("agent_id" = i64, Path, description = "The agent, the key's.", minimum = 1)),
    responses((status = 200, description = "The Agent Card (A2A's JSON form).", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn card(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&state, &req).await?;
    let agent = state.tasks.key_agent(&who).await?;
    let info = req.connection_info();
    let url = format!("{}://{}/a2a/{}", info.scheme(), info.host(), agent.id);
    let (description, skills) =
        baton_domain::a2a::card_parts(&agent.name, &agent.runner.kind, agent.card.as_ref());
    let card = json!({
        "name": agent.name,
        "description": description,
        "version": env!("CARGO_PKG_VERSION"),
        // Both bindings under one URL: JSON-RPC requests to it, the HTTP+JSON
        // binding's paths (`/message:send`, `/tasks/…`) below it.
        "supportedInterfaces": [
            {"url": url, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": url, "protocolBinding": "HTTP+JSON", "protocolVersion": "1.0"},
        ],
        "capabilities": {"streaming": true, "pushNotifications": true},
        "securitySchemes": {
            "agent_key": {"httpAuthSecurityScheme": {
                "scheme": "Bearer",
                "description": "The agent's API key (bt_…), as for baton's own API.",
            }},
        },
        "securityRequirements": [{"schemes": {"agent_key": {"list": []}}}],
        "defaultInputModes": ["text/plain", "application/json", "application/octet-stream"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": skills,
    });
    Ok(HttpResponse::Ok()
        .insert_header((VERSION_HEADER, "1.0"))
        .json(card))
}
