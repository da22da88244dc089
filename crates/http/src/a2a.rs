//! The Agent2Agent (A2A 1.0) binding of baton's agents: an Agent Card per agent, the
//! JSON-RPC binding and the HTTP+JSON binding (docs/a2a.md). An A2A task is a baton task; its context is
//! the task itself; a message is an append, busy or not as the agent's `on_busy` says.

use actix_web::HttpRequest;
use baton_domain::{AgentId, Principal, ServiceError};

use crate::error::ApiError;

pub mod card;
mod parts;
mod push;
pub mod rest;
pub mod rpc;
mod rpc_error;
pub mod schema;
mod stream;
mod tasks;

/// The agent of the path must be the key's: another agent is not found, as in the
/// rest of the API.
fn agent_of_path(req: &HttpRequest, who: &Principal) -> Result<(), ApiError> {
    let agent = req
        .match_info()
        .get("agent_id")
        .and_then(|raw| raw.parse::<i64>().ok());
    match agent {
        Some(id) if AgentId(id) == who.agent_id => Ok(()),
        _ => Err(ApiError::from(ServiceError::AgentNotFound)),
    }
}
