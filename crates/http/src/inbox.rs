//! The turn inbox: where an agent service that plays a turn (the `http` runner) takes
//! the messages steered into it. Called by the agent, not by a client: signed with
//! the agent's secret as baton signs the turn request (Standard Webhooks).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use baton_domain::{AgentId, InboxTurn, ServiceError, TaskId, TurnId};

use crate::ApiState;
use crate::dto::{InboxBody, InboxRequestBody};
use crate::error::ApiError;
use crate::extract::{json_bytes, parse_json_body};

/// An id from the path; a malformed one names nothing this agent may open.
fn path_id(req: &HttpRequest, name: &str) -> Result<i64, ApiError> {
    req.match_info()
        .get(name)
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::from(ServiceError::TurnEnded))
}

#[utoipa::path(post, path = "/v1/agents/{agent_id}/tasks/{task_id}/turns/{turn_id}/inbox", tag = "agents",
    summary = "Take the messages steered into a turn (agent services)",
    description = "For an `http` agent with `takes_messages`: the messages sent into the turn it plays (`on_busy: steer`) since it last asked, now delivered — in the task's history as part of the turn, with a `message_delivered` event. With `wait_ms`, waits up to that long for one. Signed like the turn request (Standard Webhooks headers, the agent's secret); the turn request's `inbox` gives the path and attempt. `409 turn_ended` once the turn no longer runs at that attempt: stop playing it.",
    params(
        ("agent_id" = i64, Path, description = "The agent playing the turn.", minimum = 1),
        ("task_id" = i64, Path, description = "The turn's task.", minimum = 1),
        ("turn_id" = i64, Path, description = "The turn.", minimum = 1),
        ("webhook-id" = String, Header, description = "A unique id for this request."),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; within 5 minutes of the server's time."),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256 of \"id.timestamp.body\">` with the agent's secret."),
    ),
    request_body = InboxRequestBody,
    responses((status = 200, description = "The messages delivered by this request (none if none waited).", body = InboxBody)),
    security(("agent_signature" = [])))]
pub(crate) async fn turn_inbox(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let (agent, task, turn) = (
        path_id(&req, "agent_id")?,
        path_id(&req, "task_id")?,
        path_id(&req, "turn_id")?,
    );
    let body = json_bytes(&req, payload, &state).await?;
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
        .collect();
    // The signature is checked over the bytes as sent, before they are read.
    let agent = state
        .tasks
        .authorize_inbox(AgentId(agent), &headers, &body)
        .await?;
    let asked: InboxRequestBody = parse_json_body(&body, &state)?;
    let inbox = InboxTurn {
        task_id: TaskId(task),
        turn_id: TurnId(turn),
        attempt: asked.attempt,
    };
    let wait = Duration::from_millis(asked.wait_ms);
    let messages = state.tasks.turn_inbox(&agent, inbox, wait).await?;
    Ok(HttpResponse::Ok().json(InboxBody { messages }))
}
