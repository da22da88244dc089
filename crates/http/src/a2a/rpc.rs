//! A2A's JSON-RPC binding: `POST /a2a/{agent_id}` takes JSON-RPC 2.0 requests and
//! answers each with its result or an error as the A2A specification names them.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use baton_domain::{
    Claim, Message, PageRequest, Principal, SubmitMessage, TaskId, TaskStatus, TaskView,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::caller;
use super::parts::{InMessage, to_baton};
use super::push::{self, InPushConfig};
use super::rpc_error::{Outcome, RpcCode, RpcError, task_id};
use super::stream::{A2aFrames, Envelope, error_frame};
use super::tasks::task_json;
use crate::ApiState;
use crate::error::ApiError;
use crate::extract::json_bytes;
use crate::sse::Follow;

/// The header a client names the protocol version in; baton speaks 1.0.
pub const VERSION_HEADER: &str = "A2A-Version";

#[utoipa::path(post, path = "/a2a/{agent_id}", tag = "a2a",
    operation_id = "a2a_json_rpc",
    summary = "A2A: the agent's JSON-RPC endpoint",
    description = "The Agent2Agent (A2A 1.0) JSON-RPC binding of the agent (docs/a2a.md): `SendMessage`, `GetTask`, `ListTasks`, `CancelTask` and the push notification config methods, each a JSON-RPC 2.0 request answered with its `result` or an `error` as A2A names them (HTTP 200 once the key is accepted); `SendStreamingMessage` and `SubscribeToTask` answered as Server-Sent Events, each event a JSON-RPC response carrying baton's event id (`id:`), and `SubscribeToTask` resuming after `Last-Event-ID`. Its Agent Card is at `/a2a/{agent_id}/.well-known/agent-card.json`.",
    params(("agent_id" = i64, Path, description = "The agent, the key's.", minimum = 1),
        ("Last-Event-ID" = Option<i64>, Header, description = "With `SubscribeToTask`: resume after this event (baton's extension).")),
    request_body(content = Object, description = "A JSON-RPC 2.0 request: `{jsonrpc: \"2.0\", id, method, params}`."),
    responses((status = 200, description = "A JSON-RPC 2.0 response: `{jsonrpc, id, result}` or `{jsonrpc, id, error: {code, message}}` — a body that is no JSON-RPC request included (`-32700`, `-32600`); for the streaming methods, an event stream of them.",
        content((Object = "application/json"), (super::schema::A2aStreamEvent = "text/event-stream")))),
    security(("agent_key" = [])))]
pub(crate) async fn rpc(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&state, &req).await?;
    let body = json_bytes(&req, payload, &state).await?;
    let request: Value = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return Ok(answer(
                Value::Null,
                Err(RpcError::new(
                    RpcCode::Parse,
                    format!("the body is not JSON: {err}"),
                )),
            ));
        }
    };
    let id = request.get("id").cloned().unwrap_or(Value::Null);
    let method = request.get("method").and_then(Value::as_str);
    if let Some(method @ ("SendStreamingMessage" | "SubscribeToTask")) = method {
        let params = request.get("params").cloned().unwrap_or(json!({}));
        let streamed = match check_version(&req) {
            Err(err) => Err(err),
            Ok(()) => {
                let envelope = Envelope::JsonRpc(id.clone());
                streaming(&state, &who, &req, &envelope, method, params).await
            }
        };
        return Ok(streamed.unwrap_or_else(|err| {
            crate::sse::frames_only(vec![error_frame(&id, err.code as i32, &err.message)])
        }));
    }
    let outcome = match check_version(&req) {
        Err(err) => Err(err),
        Ok(()) => dispatch(&state, &who, &request).await,
    };
    Ok(answer(id, outcome))
}

/// `SendStreamingMessage` (the message, then its turn as it happens) and
/// `SubscribeToTask` (the task from now, or after `Last-Event-ID`), as SSE. Both end
/// when the turn they follow ends (or the task waits for tool answers).
pub(super) async fn streaming(
    state: &ApiState,
    who: &Principal,
    req: &HttpRequest,
    envelope: &Envelope,
    method: &str,
    params: Value,
) -> Result<HttpResponse, RpcError> {
    let (watch, after, first) = match method {
        "SendStreamingMessage" => {
            let params: SendMessageParams = read_params(params)?;
            let claim = claim(state, who, &params).await?;
            let accepted = claim.accepted();
            let watch = state.tasks.watch(accepted.task_id);
            // The task as the message left it; its output follows as events.
            let view = state.tasks.get_task(who, accepted.task_id).await?;
            let history = whole_history(state, who, accepted.task_id).await?;
            let mut task = task_json(
                &view,
                &history,
                length(params.configuration.and_then(|c| c.history_length))?,
            );
            task["artifacts"] = json!([]);
            task["status"] =
                json!({"state": "TASK_STATE_WORKING", "timestamp": accepted.accepted_at});
            let first = vec![envelope.result(None, json!({"task": task}))];
            (watch, accepted.stream_after.unwrap_or(0), first)
        }
        _ => {
            let params: SubscribeParams = read_params(params)?;
            let task = task_id(&params.id)?;
            let watch = state.tasks.watch(task);
            let resume = match req.headers().get("last-event-id") {
                None => None,
                Some(value) => Some(
                    value
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<i64>().ok())
                        .filter(|id| *id >= 0)
                        .ok_or_else(|| {
                            RpcError::invalid("Last-Event-ID must be an event id (0 or more)")
                        })?,
                ),
            };
            let log = state
                .tasks
                .events(who, task, resume.unwrap_or(0), 0)
                .await?;
            let view = state.tasks.get_task(who, task).await?;
            let running = view.status() == TaskStatus::Running;
            match resume {
                // Resumed: the events after the one last seen, and nothing else; a
                // task already past its turn's end has nothing more to send.
                Some(after) if running || after < log.last_seq => (watch, after, Vec::new()),
                _ => {
                    let history = whole_history(state, who, task).await?;
                    let snapshot = envelope.result(
                        Some(log.last_seq),
                        json!({"task": task_json(&view, &history, None)}),
                    );
                    if !running {
                        return Ok(crate::sse::frames_only(vec![snapshot]));
                    }
                    (watch, log.last_seq, vec![snapshot])
                }
            }
        }
    };
    let framer = A2aFrames {
        envelope: envelope.clone(),
        task: watch.task(),
        started: None,
    };
    Ok(crate::sse::follow_with(
        state.tasks.clone(),
        *who,
        Follow {
            after,
            watch,
            first,
        },
        Box::new(framer),
        state.sse,
        state.shutdown.closing.clone(),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscribeParams {
    id: String,
}

/// `A2A-Version`: absent or 1.x is spoken here; anything else is refused.
pub(super) fn check_version(req: &HttpRequest) -> Result<(), RpcError> {
    let Some(asked) = req.headers().get(VERSION_HEADER) else {
        return Ok(());
    };
    let asked = asked.to_str().unwrap_or("");
    match asked.split('.').next() {
        Some("1") => Ok(()),
        _ => Err(RpcError::new(
            RpcCode::VersionNotSupported,
            format!("A2A-Version {asked:?} is not supported: this server speaks 1.0"),
        )),
    }
}

/// The JSON-RPC response, always HTTP `200` (as the A2A SDK's own server answers, a
/// request that is not JSON-RPC at all included).
fn answer(id: Value, outcome: Outcome) -> HttpResponse {
    let body = match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(err) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": {"code": err.code as i32, "message": err.message},
        }),
    };
    HttpResponse::Ok().json(body)
}

async fn dispatch(state: &ApiState, who: &Principal, request: &Value) -> Outcome {
    let (Some("2.0"), Some(method)) = (
        request.get("jsonrpc").and_then(Value::as_str),
        request.get("method").and_then(Value::as_str),
    ) else {
        return Err(RpcError::new(
            RpcCode::InvalidRequest,
            "a JSON-RPC 2.0 request has jsonrpc: \"2.0\" and a method",
        ));
    };
    let params = request.get("params").cloned().unwrap_or(json!({}));
    call(state, who, method, params).await
}

/// A (non-streaming) method with its params, as either binding names and reads it.
pub(super) async fn call(
    state: &ApiState,
    who: &Principal,
    method: &str,
    params: Value,
) -> Outcome {
    match method {
        "SendMessage" => send_message(state, who, read_params(params)?).await,
        "GetTask" => get_task(state, who, read_params(params)?).await,
        "ListTasks" => list_tasks(state, who, read_params(params)?).await,
        "CancelTask" => cancel_task(state, who, read_params(params)?).await,
        "CreateTaskPushNotificationConfig" => push::create(state, who, read_params(params)?).await,
        "GetTaskPushNotificationConfig" => push::get(state, who, read_params(params)?).await,
        "ListTaskPushNotificationConfigs" => push::list(state, who, read_params(params)?).await,
        "DeleteTaskPushNotificationConfig" => push::delete(state, who, read_params(params)?).await,
        "GetExtendedAgentCard" => Err(RpcError::new(
            RpcCode::ExtendedAgentCardNotConfigured,
            "this agent has no extended Agent Card",
        )),
        other => Err(RpcError::new(
            RpcCode::MethodNotFound,
            format!("no method {other:?}"),
        )),
    }
}

/// A method's params, read as its request type.
fn read_params<T: for<'de> Deserialize<'de>>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params)
        .map_err(|err| RpcError::invalid(format!("invalid params: {err}")))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendMessageParams {
    message: InMessage,
    #[serde(default)]
    configuration: Option<SendConfiguration>,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SendConfiguration {
    #[serde(default)]
    return_immediately: bool,
    #[serde(default)]
    history_length: Option<i64>,
    #[serde(default)]
    task_push_notification_config: Option<InPushConfig>,
    #[serde(default)]
    accepted_output_modes: Vec<String>,
}

/// What baton's agents answer with: text and JSON (files they attach are links).
const OUTPUT_MODES: [&str; 2] = ["text/plain", "application/json"];

/// A client that accepts none of [`OUTPUT_MODES`] (its `acceptedOutputModes`, when
/// it names any) cannot be answered: A2A's content type not supported, before
/// anything is stored.
fn check_output_modes(config: Option<&SendConfiguration>) -> Result<(), RpcError> {
    let accepted = config
        .map(|c| c.accepted_output_modes.as_slice())
        .unwrap_or_default();
    let answerable = |mode: &String| {
        let mode = mode
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        mode == "*/*" || mode == "text/*" || OUTPUT_MODES.contains(&mode.as_str())
    };
    match accepted.is_empty() || accepted.iter().any(answerable) {
        true => Ok(()),
        false => Err(RpcError::new(
            RpcCode::ContentTypeNotSupported,
            format!(
                "acceptedOutputModes {accepted:?}: this agent answers with {}",
                OUTPUT_MODES.join(" and ")
            ),
        )),
    }
}

/// The page token after `last`: its update time (Unix microseconds) and id.
fn page_token(last: &TaskView) -> String {
    format!(
        "{}.{}",
        last.task.updated_at.timestamp_micros(),
        last.task.id.0
    )
}

fn read_page_token(token: &str) -> Result<(chrono::DateTime<chrono::Utc>, TaskId), RpcError> {
    let refused = || RpcError::invalid("pageToken is not one this server gave");
    let (micros, id) = token.split_once('.').ok_or_else(refused)?;
    let at = micros
        .parse::<i64>()
        .ok()
        .and_then(chrono::DateTime::from_timestamp_micros)
        .ok_or_else(refused)?;
    let id = id.parse::<i64>().map_err(|_| refused())?;
    Ok((at, TaskId(id)))
}

/// The longest a blocking `SendMessage` waits for the turn to settle; it then answers
/// with the task still working.
const BLOCKING_WAIT: Duration = baton_domain::service::MAX_WAIT;

async fn send_message(state: &ApiState, who: &Principal, params: SendMessageParams) -> Outcome {
    let claim = claim(state, who, &params).await?;
    let config = params.configuration.unwrap_or_default();
    let task = claim.accepted().task_id;
    let wait = match config.return_immediately {
        true => Duration::ZERO,
        false => BLOCKING_WAIT,
    };
    let view = state.tasks.wait_task(who, task, wait).await?;
    let history_length = length(config.history_length)?;
    Ok(json!({"task": shown(state, who, &view, history_length).await?}))
}

/// The message sent: a new task, or the next message of its task.
async fn claim(
    state: &ApiState,
    who: &Principal,
    params: &SendMessageParams,
) -> Result<Claim, RpcError> {
    check_output_modes(params.configuration.as_ref())?;
    let message = to_baton(&params.message).map_err(RpcError::invalid)?;
    let submit = SubmitMessage {
        agent_id: who.agent_id,
        message,
        metadata: params.metadata.clone().unwrap_or_default(),
        webhook: None,
        on_busy: None,
        // Stored with the message, so its turn's end is pushed however soon it comes.
        push: params
            .configuration
            .as_ref()
            .and_then(|c| c.task_push_notification_config.as_ref())
            .map(InPushConfig::request),
    };
    // A message sent again (the same messageId) is the same request: it replays.
    let key = idempotency_key(&params.message.message_id);
    // A message continues its task; a context is one task, so a context id names it
    // too.
    let target = params
        .message
        .task_id
        .as_deref()
        .or(params.message.context_id.as_deref());
    Ok(match target {
        Some(raw) => {
            let task = task_id(raw)?;
            state.tasks.append_message(who, task, submit, key).await?
        }
        None => state.tasks.create_task(who, submit, key).await?,
    })
}

/// The key a message's id makes for baton's idempotency, if it can be one (1–255
/// visible ASCII characters once prefixed).
fn idempotency_key(message_id: &str) -> Option<String> {
    let key = format!("a2a-{message_id}");
    (key.len() <= 255 && key.bytes().all(|b| b.is_ascii_graphic())).then_some(key)
}

fn length(asked: Option<i64>) -> Result<Option<usize>, RpcError> {
    match asked {
        None => Ok(None),
        Some(n) => usize::try_from(n)
            .map(Some)
            .map_err(|_| RpcError::invalid("historyLength must be 0 or more")),
    }
}

/// The task as A2A shows it, with its history read whole (the artifact is built from
/// the latest turn's messages).
async fn shown(
    state: &ApiState,
    who: &Principal,
    view: &TaskView,
    history_length: Option<usize>,
) -> Result<Value, RpcError> {
    let history = whole_history(state, who, view.task.id).await?;
    Ok(task_json(view, &history, history_length))
}

/// Every message of the task, oldest first.
async fn whole_history(
    state: &ApiState,
    who: &Principal,
    task: TaskId,
) -> Result<Vec<Message>, RpcError> {
    let mut messages = Vec::new();
    let mut after = None;
    loop {
        let page = state
            .tasks
            .list_messages(who, task, PageRequest { limit: 100, after })
            .await?
            .page;
        messages.extend(page.items);
        match page.next_after {
            Some(next) => after = Some(next),
            None => return Ok(messages),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GetTaskParams {
    id: String,
    #[serde(default)]
    history_length: Option<i64>,
}

async fn get_task(state: &ApiState, who: &Principal, params: GetTaskParams) -> Outcome {
    let view = state.tasks.get_task(who, task_id(&params.id)?).await?;
    shown(state, who, &view, length(params.history_length)?).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct CancelTaskParams {
    id: String,
}

/// Cancels the task's running turn (or the one waiting for tool answers); a task
/// already canceled answers the same, one that ended otherwise is not cancelable.
async fn cancel_task(state: &ApiState, who: &Principal, params: CancelTaskParams) -> Outcome {
    let view = state.tasks.cancel(who, task_id(&params.id)?).await?;
    shown(state, who, &view, None).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListTasksParams {
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    page_token: Option<String>,
    #[serde(default)]
    history_length: Option<i64>,
    #[serde(default)]
    include_artifacts: Option<bool>,
}

/// The agent's tasks, most recently updated first (A2A's order: by the status's
/// time, ties by id), a page at a time (`pageToken` from the last page's
/// `nextPageToken`); with `contextId`, that context's one task.
async fn list_tasks(state: &ApiState, who: &Principal, params: ListTasksParams) -> Outcome {
    let status = match params.status.as_deref() {
        None | Some("") | Some("TASK_STATE_UNSPECIFIED") => None,
        Some(asked) => Some(
            TaskStatus::ALL
                .iter()
                .copied()
                .find(|s| baton_domain::a2a::state(*s) == asked)
                .ok_or_else(|| {
                    RpcError::invalid(format!("status {asked:?}: no task has it here"))
                })?,
        ),
    };
    let limit = u32::try_from(params.page_size.unwrap_or(50).clamp(1, 100)).unwrap_or(50);
    let history_length = length(params.history_length)?.unwrap_or(0);
    let with_artifacts = params.include_artifacts.unwrap_or(false);
    let (views, next) = match params.context_id.as_deref() {
        Some(context) => {
            let view = state.tasks.get_task(who, task_id(context)?).await?;
            let kept = status.is_none_or(|s| view.status() == s);
            (if kept { vec![view] } else { vec![] }, None)
        }
        None => {
            let after = match params.page_token.as_deref() {
                None | Some("") => None,
                Some(token) => Some(read_page_token(token)?),
            };
            let (views, more) = state
                .tasks
                .list_tasks_by_update(who, status, limit, after)
                .await?;
            let next = match more {
                true => views.last().map(page_token),
                false => None,
            };
            (views, next)
        }
    };
    let mut tasks = Vec::with_capacity(views.len());
    for view in &views {
        let mut task = match history_length > 0 || with_artifacts {
            true => shown(state, who, view, Some(history_length)).await?,
            false => task_json(view, &[], Some(0)),
        };
        if !with_artifacts && let Some(object) = task.as_object_mut() {
            object.remove("artifacts");
        }
        tasks.push(task);
    }
    Ok(json!({
        "tasks": tasks,
        "nextPageToken": next.unwrap_or_default(),
        "pageSize": limit,
    }))
}
