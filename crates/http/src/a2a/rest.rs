//! A2A's HTTP+JSON binding under `/a2a/{agent_id}`: the same methods as the JSON-RPC
//! binding (one implementation, [`super::rpc::call`] and [`super::rpc::streaming`]),
//! each on its path, answered with the result as the body, or with an error as A2A's
//! REST binding writes one (`google.rpc.Status` with an `ErrorInfo` naming the reason)
//! and its HTTP status.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_domain::Principal;
use serde::Serialize;
use serde_json::{Map, Value, json};

use super::caller;
use super::rpc::{call, check_version, streaming};
use super::rpc_error::{RpcCode, RpcError};
use super::stream::Envelope;
use crate::ApiState;
use crate::error::ApiError;
use crate::extract::json_body;

/// An A2A error as the HTTP+JSON binding answers it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct A2aRestError {
    error: A2aRestStatus,
}

/// `google.rpc.Status`, as A2A's REST binding fills it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct A2aRestStatus {
    /// The HTTP status.
    code: u16,
    /// The gRPC status name: `INVALID_ARGUMENT`, `NOT_FOUND`, `FAILED_PRECONDITION`,
    /// `INTERNAL`.
    status: &'static str,
    message: String,
    /// One `google.rpc.ErrorInfo`: `{"@type", reason, domain: "a2a-protocol.org",
    /// metadata}`, its `reason` the A2A error (`TASK_NOT_FOUND`, …).
    #[schema(value_type = Vec<Object>)]
    details: Vec<Value>,
}

impl RpcCode {
    /// The HTTP status, gRPC status and A2A reason of this error on the REST binding.
    fn rest(self) -> (StatusCode, &'static str, &'static str) {
        use RpcCode::*;
        let bad = StatusCode::BAD_REQUEST;
        match self {
            Parse | InvalidRequest => (bad, "INVALID_ARGUMENT", "INVALID_REQUEST"),
            InvalidParams => (bad, "INVALID_ARGUMENT", "INVALID_PARAMS"),
            MethodNotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", "METHOD_NOT_FOUND"),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                "INTERNAL_ERROR",
            ),
            TaskNotFound => (StatusCode::NOT_FOUND, "NOT_FOUND", "TASK_NOT_FOUND"),
            TaskNotCancelable => (bad, "FAILED_PRECONDITION", "TASK_NOT_CANCELABLE"),
            UnsupportedOperation => (bad, "FAILED_PRECONDITION", "UNSUPPORTED_OPERATION"),
            ContentTypeNotSupported => (bad, "INVALID_ARGUMENT", "CONTENT_TYPE_NOT_SUPPORTED"),
            ExtendedAgentCardNotConfigured => (
                bad,
                "FAILED_PRECONDITION",
                "EXTENDED_AGENT_CARD_NOT_CONFIGURED",
            ),
            VersionNotSupported => (bad, "FAILED_PRECONDITION", "VERSION_NOT_SUPPORTED"),
        }
    }
}

fn error_answer(err: RpcError) -> HttpResponse {
    let (status, grpc, reason) = err.code.rest();
    HttpResponse::build(status).json(A2aRestError {
        error: A2aRestStatus {
            code: status.as_u16(),
            status: grpc,
            message: err.message,
            details: vec![json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": "a2a-protocol.org",
                "metadata": {},
            })],
        },
    })
}

/// Runs `method` for the caller with `params` (once the version is one spoken here):
/// its result as the body, or its error.
async fn run(
    state: &ApiState,
    req: &HttpRequest,
    who: &Principal,
    method: &str,
    params: Result<Value, RpcError>,
) -> HttpResponse {
    let outcome = match check_version(req).and(params) {
        Ok(params) => call(state, who, method, params).await,
        Err(err) => Err(err),
    };
    match outcome {
        Ok(result) => HttpResponse::Ok().json(result),
        Err(err) => error_answer(err),
    }
}

/// Authenticates, then runs `method` with the params the request makes.
async fn answer(
    state: &ApiState,
    req: &HttpRequest,
    method: &str,
    params: Result<Value, RpcError>,
) -> Result<HttpResponse, ApiError> {
    let who = caller(state, req).await?;
    Ok(run(state, req, &who, method, params).await)
}

/// Runs a streaming `method`: Server-Sent Events whose data are A2A's
/// `StreamResponse`s, or an error answer if the stream cannot start.
async fn stream(
    state: &ApiState,
    req: &HttpRequest,
    who: &Principal,
    method: &str,
    params: Value,
) -> HttpResponse {
    let streamed = match check_version(req) {
        Ok(()) => streaming(state, who, req, &Envelope::Rest, method, params).await,
        Err(err) => Err(err),
    };
    streamed.unwrap_or_else(error_answer)
}

/// A path parameter (the table's routes all have theirs).
fn path_param(req: &HttpRequest, name: &str) -> String {
    req.match_info().get(name).unwrap_or_default().to_owned()
}

/// The query string as the method's params: numbers and booleans where A2A has them.
fn query_params(req: &HttpRequest, mut params: Map<String, Value>) -> Result<Value, RpcError> {
    let pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|err| RpcError::invalid(format!("the query string cannot be read: {err}")))?;
    for (key, raw) in pairs.into_inner() {
        let value = match key.as_str() {
            "historyLength" | "pageSize" => raw
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| RpcError::invalid(format!("{key} must be a whole number")))?,
            "includeArtifacts" => raw
                .parse::<bool>()
                .map(Value::from)
                .map_err(|_| RpcError::invalid(format!("{key} must be true or false")))?,
            _ => Value::String(raw),
        };
        params.insert(key, value);
    }
    Ok(Value::Object(params))
}

/// `{"id": <task_id>}` and the query string.
fn task_params(req: &HttpRequest) -> Result<Value, RpcError> {
    let mut params = Map::new();
    params.insert("id".to_owned(), path_param(req, "task_id").into());
    query_params(req, params)
}

/// `{"taskId", "id"}` of a push config's path.
fn config_params(req: &HttpRequest) -> Value {
    json!({"taskId": path_param(req, "task_id"), "id": path_param(req, "config_id")})
}

const PATH: &str = "The agent, the key's.";
const TASK: &str =
    "The task: its id, which is also its context id (A2A writes it as a string of digits).";

#[utoipa::path(post, path = "/a2a/{agent_id}/message:send", tag = "a2a",
    operation_id = "a2a_send_message",
    summary = "A2A (HTTP+JSON): send a message",
    description = "A2A's `SendMessage` on the HTTP+JSON binding (docs/a2a.md): a new task, or the next message of `message.taskId`; answered `{task}` when the turn has settled (at most 60 s) or at once with `configuration.returnImmediately`.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1)),
    request_body(content = super::schema::SendMessageBody, description = "A2A's `SendMessageRequest`: `{message, configuration, metadata}` (its usual shape shown)."),
    responses((status = 200, description = "A2A's `SendMessageResponse`: `{task}`.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn send_message(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&state, &req).await?;
    let body: Value = json_body(&req, payload, &state).await?;
    Ok(run(&state, &req, &who, "SendMessage", Ok(body)).await)
}

#[utoipa::path(post, path = "/a2a/{agent_id}/message:stream", tag = "a2a",
    operation_id = "a2a_send_streaming_message",
    summary = "A2A (HTTP+JSON): send a message and stream its turn",
    description = "A2A's `SendStreamingMessage` on the HTTP+JSON binding: Server-Sent Events, each `data` one `StreamResponse` (the task, then its turn's status and artifact updates, each with baton's event id as the SSE `id:` and in `metadata.baton.event_id`), ending with the turn's end.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1)),
    request_body(content = super::schema::SendMessageBody, description = "A2A's `SendMessageRequest` (its usual shape shown)."),
    responses((status = 200, description = "An event stream of A2A `StreamResponse`s.", content_type = "text/event-stream", body = super::schema::A2aStreamEvent)),
    security(("agent_key" = [])))]
pub(crate) async fn send_streaming_message(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&state, &req).await?;
    let body: Value = json_body(&req, payload, &state).await?;
    Ok(stream(&state, &req, &who, "SendStreamingMessage", body).await)
}

#[utoipa::path(get, path = "/a2a/{agent_id}/tasks/{task_id}", tag = "a2a",
    operation_id = "a2a_get_task",
    summary = "A2A (HTTP+JSON): a task",
    description = "A2A's `GetTask`: the task, with its last `historyLength` messages (all without it).",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1),
        ("historyLength" = Option<i64>, Query, description = "How many of the latest messages to show.", minimum = 0)),
    responses((status = 200, description = "A2A's `Task`.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn get_task(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    answer(&state, &req, "GetTask", task_params(&req)).await
}

#[utoipa::path(get, path = "/a2a/{agent_id}/tasks", tag = "a2a",
    operation_id = "a2a_list_tasks",
    summary = "A2A (HTTP+JSON): the agent's tasks",
    description = "A2A's `ListTasks`: a page of the agent's tasks, most recently updated first.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("contextId" = Option<String>, Query, description = "Only this context's task."),
        ("status" = Option<String>, Query, description = "Only tasks in this state (`TASK_STATE_…`)."),
        ("pageSize" = Option<i64>, Query, description = "1 to 100 (50).", minimum = 1, maximum = 100),
        ("pageToken" = Option<String>, Query, description = "The last page's `nextPageToken`."),
        ("historyLength" = Option<i64>, Query, description = "Messages shown per task (none without it).", minimum = 0),
        ("includeArtifacts" = Option<bool>, Query, description = "Show each task's artifacts.")),
    responses((status = 200, description = "A2A's `ListTasksResponse`: `{tasks, nextPageToken, pageSize}`.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn list_tasks(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    answer(&state, &req, "ListTasks", query_params(&req, Map::new())).await
}

#[utoipa::path(post, path = "/a2a/{agent_id}/tasks/{task_id}:cancel", tag = "a2a",
    operation_id = "a2a_cancel_task",
    summary = "A2A (HTTP+JSON): cancel a task",
    description = "A2A's `CancelTask`: cancels the running turn (or the one waiting for tool answers); a task already canceled answers the same. A body, if sent, is not read.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1)),
    responses((status = 200, description = "A2A's `Task`, canceled.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn cancel_task(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    answer(&state, &req, "CancelTask", task_params(&req)).await
}

#[utoipa::path(post, path = "/a2a/{agent_id}/tasks/{task_id}:subscribe", tag = "a2a",
    operation_id = "a2a_subscribe_to_task",
    summary = "A2A (HTTP+JSON): follow a task",
    description = "A2A's `SubscribeToTask`: the task, then its running turn as it happens, as Server-Sent Events of `StreamResponse`s; with `Last-Event-ID`, only what came after that event (baton's extension). A body, if sent, is not read.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event.")),
    responses((status = 200, description = "An event stream of A2A `StreamResponse`s.", content_type = "text/event-stream", body = super::schema::A2aStreamEvent)),
    security(("agent_key" = [])))]
pub(crate) async fn subscribe_to_task(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&state, &req).await?;
    let params = json!({"id": path_param(&req, "task_id")});
    Ok(stream(&state, &req, &who, "SubscribeToTask", params).await)
}

#[utoipa::path(get, path = "/a2a/{agent_id}/tasks/{task_id}:subscribe", tag = "a2a",
    operation_id = "a2a_subscribe_to_task_get",
    summary = "A2A (HTTP+JSON): follow a task (GET)",
    description = "`SubscribeToTask` as a `GET`, as A2A's SDK servers also take it: the same as the `POST`.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event.")),
    responses((status = 200, description = "An event stream of A2A `StreamResponse`s.", content_type = "text/event-stream", body = super::schema::A2aStreamEvent)),
    security(("agent_key" = [])))]
pub(crate) async fn subscribe_to_task_get(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    subscribe_to_task(state, req).await
}

#[utoipa::path(post, path = "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs", tag = "a2a",
    operation_id = "a2a_create_push_config",
    summary = "A2A (HTTP+JSON): add a push notification config",
    description = "A2A's `CreateTaskPushNotificationConfig`: each of the task's turns that ends from now on is pushed to `url` (docs/a2a.md). The same `id` again replaces it; at most 10 per task.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1)),
    request_body(content = super::schema::PushConfigBody, description = "A2A's `TaskPushNotificationConfig`: `{id, url, token, authentication: {scheme, credentials}}`."),
    responses((status = 200, description = "The config, without its credentials.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn create_push_config(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = caller(&state, &req).await?;
    let mut body: Map<String, Value> = json_body(&req, payload, &state).await?;
    body.insert("taskId".to_owned(), path_param(&req, "task_id").into());
    let params = Ok(Value::Object(body));
    Ok(run(
        &state,
        &req,
        &who,
        "CreateTaskPushNotificationConfig",
        params,
    )
    .await)
}

#[utoipa::path(get, path = "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs", tag = "a2a",
    operation_id = "a2a_list_push_configs",
    summary = "A2A (HTTP+JSON): the task's push notification configs",
    description = "A2A's `ListTaskPushNotificationConfigs`: all of them, oldest first, in one page.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1)),
    responses((status = 200, description = "`{configs, nextPageToken}`.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn list_push_configs(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let params = json!({"taskId": path_param(&req, "task_id")});
    answer(&state, &req, "ListTaskPushNotificationConfigs", Ok(params)).await
}

#[utoipa::path(get, path = "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs/{config_id}", tag = "a2a",
    operation_id = "a2a_get_push_config",
    summary = "A2A (HTTP+JSON): one push notification config",
    description = "A2A's `GetTaskPushNotificationConfig`; one the task does not have is `TASK_NOT_FOUND`, as A2A's SDK answers.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1),
        ("config_id" = String, Path, description = "The config's id.")),
    responses((status = 200, description = "The config, without its credentials.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn get_push_config(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    answer(
        &state,
        &req,
        "GetTaskPushNotificationConfig",
        Ok(config_params(&req)),
    )
    .await
}

#[utoipa::path(delete, path = "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs/{config_id}", tag = "a2a",
    operation_id = "a2a_delete_push_config",
    summary = "A2A (HTTP+JSON): delete a push notification config",
    description = "A2A's `DeleteTaskPushNotificationConfig`; deleting one that is not there answers the same.",
    params(("agent_id" = i64, Path, description = PATH, minimum = 1),
        ("task_id" = i64, Path, description = TASK, minimum = 1),
        ("config_id" = String, Path, description = "The config's id.")),
    responses((status = 200, description = "`{}`.", body = Object)),
    security(("agent_key" = [])))]
pub(crate) async fn delete_push_config(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    answer(
        &state,
        &req,
        "DeleteTaskPushNotificationConfig",
        Ok(config_params(&req)),
    )
    .await
}
