//! The Agent2Agent (A2A 1.0) binding of baton's agents: an Agent Card per agent, the
//! JSON-RPC binding and the HTTP+JSON binding (docs/a2a.md). An A2A task is a baton
//! task; its context is the task itself; a message is an append, busy or not as the
//! agent's `on_busy` says.

use actix_web::HttpRequest;
use baton_domain::{AgentId, Principal, ServiceError};

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::authenticate;

pub mod card;
mod parts;
mod push;
pub mod rest;
pub mod rpc;
mod rpc_error;
pub mod schema;
mod stream;
mod tasks;

/// The key's principal, whose agent must be the path's: another agent is not found,
/// as in the rest of the API (baton's own envelopes, before any A2A answer).
async fn caller(state: &ApiState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let who = authenticate(state, req).await?;
    let agent = req
        .match_info()
        .get("agent_id")
        .and_then(|raw| raw.parse::<i64>().ok());
    match agent {
        Some(id) if AgentId(id) == who.agent_id => Ok(who),
        _ => Err(ApiError::from(ServiceError::AgentNotFound)),
    }
}
