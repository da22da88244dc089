//! The V1 routes.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_domain::Claim;

use crate::ApiState;
use baton_domain::webhooks::DeliveryView;

use crate::dto::{
    AcceptedBody, DataBody, HistoryBody, KeyAgentBody, PageBody, QueuedMessageBody, StatusBody,
    StreamTokenBody, SubmitBody, TaskBody,
};
use crate::error::{ApiError, ErrorCode};
use crate::extract::{
    authenticate, authenticate_stream, idempotency_key, json_body, page, status_filter, task_id,
    wait,
};
use crate::params::{
    IdempotencyKey, PageParams, QueuedIdParam, StreamParams, TaskIdParam, TaskStatusParam,
    WaitParam,
};

pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::NotFound,
        format!(
            "No route for {} {}. The API lives under /v1; see docs/api.md.",
            req.method(),
            req.path()
        ),
    ))
}

/// Prometheus metrics, when the server renders them.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics",
    description = "The server's metrics in Prometheus' text format (see docs/operations.md). `404 not_found` when metrics are turned off.",
    responses((status = 200, description = "Prometheus text exposition format.", content_type = "text/plain; version=0.0.4", body = String,
        example = "baton_turns_in_flight 0\n")))]
pub(crate) async fn metrics(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    match &state.metrics {
        Some(render) => Ok(HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body((render.0)())),
        None => not_found(req).await,
    }
}

/// The process is up and serving HTTP (liveness). Answered even while stopping.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    summary = "Liveness",
    description = "The process is up and serving HTTP. Answered even while the instance stops; it checks nothing else.",
    responses((status = 200, description = "The process serves HTTP.", body = StatusBody, example = json!({"status": "ok"}))))]
pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(StatusBody { status: "ok" })
}

/// This instance should get traffic (readiness): not stopping, its database reachable
/// and migrated.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    summary = "Readiness",
    description = "The instance should get traffic: its database is reachable and carries every migration this build knows, it is not stopping, and no write failed for want of space (or a read-only database) in the last 10 s. Otherwise 503, with the reason in the message.",
    responses((status = 200, description = "Ready: the database answers and is migrated.", body = StatusBody, example = json!({"status": "ready"}))))]
pub(crate) async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    if state.shutdown.draining.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "This instance is shutting down.",
        ));
    }
    state.tasks.check_ready().await.map_err(|err| {
        // Readiness says why, unlike other 503s: operators read it, not clients.
        let why = err.to_string();
        let code = match err {
            baton_domain::ServiceError::StorageUnwritable(_) => ErrorCode::StorageUnwritable,
            _ => ErrorCode::ServiceUnavailable,
        };
        ApiError::new(code, why)
    })?;
    Ok(HttpResponse::Ok().json(StatusBody { status: "ready" }))
}

/// The answer to an accepted message. A replay (same idempotency key, same request)
/// is byte for byte the first answer, marked by `Idempotent-Replayed: true`.
fn accepted(claim: Claim) -> HttpResponse {
    let (accepted, replayed) = match claim {
        Claim::Started(accepted) => (accepted, false),
        Claim::Replayed(accepted) => (accepted, true),
    };
    let location = format!("/v1/chat/tasks/{}", accepted.task_id);
    let mut response = HttpResponse::Accepted();
    response.insert_header((header::LOCATION, location));
    if replayed {
        response.insert_header(("idempotent-replayed", "true"));
    }
    response.json(AcceptedBody::from(accepted))
}

#[utoipa::path(post, path = "/v1/chat/tasks", tag = "tasks",
    summary = "Start a task",
    description = "Creates a task with its first message and starts the agent's turn in the background; answers at once. Follow the turn with `GET /v1/chat/tasks/{task_id}?wait=`, the event stream, or a webhook.",
    params(IdempotencyKey),
    request_body = SubmitBody,
    responses((status = 202, description = "Accepted: the turn runs. A replay of an Idempotency-Key is the first answer again.", body = AcceptedBody,
        headers(("Location" = String, description = "The task's URL."), ("Idempotent-Replayed" = String, description = "`true` when this is a replayed answer.")))),
    security(("agent_key" = [])))]
pub(crate) async fn create_task(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let key = idempotency_key(&req)?;
    let body: SubmitBody = json_body(&req, payload, &state).await?;
    let done = state
        .tasks
        .create_task(&who, body.into_submit(), key)
        .await?;
    Ok(accepted(done))
}

#[utoipa::path(post, path = "/v1/chat/tasks/{task_id}/messages", tag = "tasks",
    summary = "Send the next message",
    description = "Appends a message to a task whose last turn has ended and starts the next turn. A task runs one turn at a time: while one runs, `on_busy` (or the agent's `policy.on_busy`) decides — `reject`: `409 task_busy`; `enqueue`: `202` with status `queued`, the message starts a turn of its own when those before it have ended; `interrupt`: the running turn is cancelled and this message's turn starts, in one step; `steer`: `202` with status `steering`, the message is delivered into the running turn (queued instead if the agent's runner cannot take messages mid-turn, or if the turn ends first).",
    params(TaskIdParam, IdempotencyKey),
    request_body = SubmitBody,
    responses((status = 202, description = "Accepted: the turn runs, or the message is queued or steering.", body = AcceptedBody,
        headers(("Location" = String, description = "The task's URL."), ("Idempotent-Replayed" = String, description = "`true` when this is a replayed answer.")))),
    security(("agent_key" = [])))]
pub(crate) async fn append_message(
    state: web::Data<ApiState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let key = idempotency_key(&req)?;
    let body: SubmitBody = json_body(&req, payload, &state).await?;
    let done = state
        .tasks
        .append_message(&who, task, body.into_submit(), key)
        .await?;
    Ok(accepted(done))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}/queue", tag = "tasks",
    summary = "The task's waiting messages",
    description = "The messages sent while the task was busy that still wait: `queued` ones in the order they will start turns (`position` 1 is next), then `steering` ones waiting to be taken by the running turn.",
    params(TaskIdParam),
    responses((status = 200, description = "The waiting messages.", body = DataBody<QueuedMessageBody>)),
    security(("agent_key" = [])))]
pub(crate) async fn list_queue(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let queue = state.tasks.list_queue(&who, task).await?;
    Ok(HttpResponse::Ok().json(DataBody {
        data: queue.into_iter().map(QueuedMessageBody::from).collect(),
    }))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}/queue/{queued_message_id}", tag = "tasks",
    summary = "A queued message",
    description = "A message sent while the task was busy: waiting (`queued`, with its `position`, or `steering`), or what became of it (`started` with the turn it started, `delivered` with the turn it went into, or `cancelled`).",
    params(TaskIdParam, QueuedIdParam),
    responses((status = 200, description = "The queued message.", body = QueuedMessageBody)),
    security(("agent_key" = [])))]
pub(crate) async fn get_queued(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let id = queued_id(&req)?;
    let found = state.tasks.get_queued(&who, task, id).await?;
    Ok(HttpResponse::Ok().json(QueuedMessageBody::from(found)))
}

#[utoipa::path(delete, path = "/v1/chat/tasks/{task_id}/queue/{queued_message_id}", tag = "tasks",
    summary = "Cancel a queued message",
    description = "Takes a waiting message out of the queue: it will never start a turn or be delivered. Cancelling it again answers the same; one that already started its turn or was delivered is `409 message_not_queued`.",
    params(TaskIdParam, QueuedIdParam),
    responses((status = 200, description = "The message, now `cancelled`.", body = QueuedMessageBody)),
    security(("agent_key" = [])))]
pub(crate) async fn cancel_queued(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let id = queued_id(&req)?;
    let cancelled = state.tasks.cancel_queued(&who, task, id).await?;
    Ok(HttpResponse::Ok().json(QueuedMessageBody::from(cancelled)))
}

/// The queued message's id from the path; a malformed one names no message.
fn queued_id(req: &HttpRequest) -> Result<baton_domain::QueuedMessageId, ApiError> {
    req.match_info()
        .get("queued_message_id")
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(baton_domain::QueuedMessageId)
        .ok_or_else(|| ApiError::from(baton_domain::ServiceError::QueuedMessageNotFound))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}/files/{file_id}", tag = "tasks",
    summary = "Download an attachment",
    description = "The bytes of a file attached to one of the task's messages, as its `media_type`, with its `filename` in `Content-Disposition`.",
    params(TaskIdParam, ("file_id" = i64, Path, description = "The attachment's `file_id`, as the message shows it.", minimum = 1)),
    responses((status = 200, description = "The file's bytes, as the attachment's `media_type` says (any type: `*/*`).", content_type = "*/*", body = String,
        headers(("Content-Disposition" = String, description = "`attachment; filename=\"…\"`.")))),
    security(("agent_key" = [])))]
pub(crate) async fn get_file(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let file = req
        .match_info()
        .get("file_id")
        .and_then(|raw| raw.parse::<i64>().ok());
    let found = match file {
        Some(file) => state.tasks.get_file(&who, task, file).await?,
        None => None,
    };
    let Some(found) = found else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "No file with this id in this task.",
        ));
    };
    // The name is the client's: only a plain, quoted ASCII form goes in the header.
    let name: String = found
        .filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(HttpResponse::Ok()
        .content_type(found.media_type)
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header(("x-content-type-options", "nosniff"))
        .body(found.data))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}/webhook-deliveries", tag = "tasks",
    summary = "The task's webhook deliveries",
    description = "Every webhook delivery of the task's turns, newest first, with each attempt's status code, latency and error.",
    params(TaskIdParam),
    responses((status = 200, description = "The task's webhook deliveries with their attempts.", body = DataBody<DeliveryView>)),
    security(("agent_key" = [])))]
pub(crate) async fn list_deliveries(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let deliveries = state.tasks.list_deliveries(&who, task).await?;
    Ok(HttpResponse::Ok().json(DataBody { data: deliveries }))
}

#[utoipa::path(post, path = "/v1/chat/tasks/{task_id}/cancel", tag = "tasks",
    summary = "Cancel the running turn",
    description = "Stops the task's running turn: the text streamed so far is kept, the turn ends `cancelled`. Cancelling a cancelled task answers the same; a completed or failed one is `409 task_not_running`.",
    params(TaskIdParam),
    responses((status = 200, description = "The task, now `cancelled`.", body = TaskBody)),
    security(("agent_key" = [])))]
pub(crate) async fn cancel(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let view = state.tasks.cancel(&who, task).await?;
    Ok(HttpResponse::Ok().json(TaskBody::from(view)))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}", tag = "tasks",
    summary = "Get a task (long-poll with `wait`)",
    description = "The task with its latest turn and latest agent message. With `wait=N` the answer waits up to N seconds (at most 60) for the task to leave `running`.",
    params(TaskIdParam, WaitParam),
    responses((status = 200, description = "The task; with `wait`, once it left `running` or the wait ended.", body = TaskBody)),
    security(("agent_key" = [])))]
pub(crate) async fn get_task(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let wait = wait(&req)?;
    // A stopping server answers long-polls at once with the task as it is.
    let view = tokio::select! {
        view = state.tasks.wait_task(&who, task, wait) => view?,
        _ = state.shutdown.closing.cancelled() => state.tasks.get_task(&who, task).await?,
    };
    Ok(HttpResponse::Ok().json(TaskBody::from(view)))
}

#[utoipa::path(get, path = "/v1/chat/agent", tag = "tasks",
    summary = "The key's agent",
    description = "The agent the calling key belongs to: the `agent_id` its requests must name, and what the agent is. For a client that was given a key and nothing else.",
    responses((status = 200, description = "The key's agent.", body = KeyAgentBody)),
    security(("agent_key" = [])))]
pub(crate) async fn key_agent(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let agent = state.tasks.key_agent(&who).await?;
    Ok(HttpResponse::Ok().json(KeyAgentBody::from(agent)))
}

#[utoipa::path(get, path = "/v1/chat/tasks", tag = "tasks",
    summary = "List the agent's tasks",
    description = "The key's agent's tasks, newest first, a page at a time; with `status`, only the tasks in that status (their latest turn's).",
    params(TaskStatusParam, PageParams),
    responses((status = 200, description = "A page of the agent's tasks, newest first.", body = PageBody<TaskBody>)),
    security(("agent_key" = [])))]
pub(crate) async fn list_tasks(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let status = status_filter(&req)?;
    let page = page(&req)?;
    let tasks = state.tasks.list_tasks(&who, status, page).await?;
    Ok(HttpResponse::Ok().json(PageBody::<TaskBody>::new(tasks)))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}/messages", tag = "tasks",
    summary = "A task's history",
    description = "The task's messages, oldest first, a page at a time. A message being streamed has `streaming_status: in_progress` and its text so far. `last_event_id` is the task's last event as of the page: open the stream with `?after=` it to follow on from the last page with nothing missing or repeated.",
    params(TaskIdParam, PageParams),
    responses((status = 200, description = "A page of the task's messages, oldest first.", body = HistoryBody)),
    security(("agent_key" = [])))]
pub(crate) async fn list_messages(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let page = page(&req)?;
    let history = state.tasks.list_messages(&who, task, page).await?;
    Ok(HttpResponse::Ok().json(HistoryBody::from(history)))
}

#[utoipa::path(get, path = "/v1/chat/tasks/{task_id}/stream", tag = "tasks",
    summary = "The task's events (Server-Sent Events)",
    description = "The task's event log as Server-Sent Events: `turn_started`, `text_delta`, `message_completed`, `message_delivered`, `final`, `failed`, `cancelled`, `requires_action` (and `reset`), each with its `id` (the event's `seq`); every event is named, so a browser's `EventSource` delivers none to `onmessage`: listen by name. Reconnect with `Last-Event-ID` (or `?after=`) to resume exactly after the last event seen. A browser's `EventSource`, which cannot send a header, authenticates with `?token=` from `POST /v1/chat/tasks/{task_id}/stream-token`. Without `until=final` the stream stays open for the task's next turns (comment heartbeats keep it alive). See docs/api.md for each event's data.",
    params(TaskIdParam, StreamParams),
    responses((status = 200, description = "An event stream; each event's `data` is as `StreamEvent` describes it. On the wire:\n\n```\nretry: 2000\n\nid: 3\nevent: text_delta\ndata: {\"turn_id\":1,\"message_id\":2,\"delta\":\"Hel\",\"seq\":3,\"task_id\":1,\"created_at\":\"2026-11-22T19:29:53.004211Z\"}\n```", content_type = "text/event-stream", body = crate::sse::schema::StreamEvent)),
    security(("agent_key" = []), ("stream_token" = [])))]
pub(crate) async fn stream(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let task = task_id(&req)?;
    let who = authenticate_stream(&state, &req, task).await?;
    let (after, until_final) = crate::sse::cursor(&req)?;
    if req.method() == actix_web::http::Method::HEAD {
        return crate::sse::head(&state.tasks, &who, task, after).await;
    }
    crate::sse::stream(
        state.tasks.clone(),
        who,
        task,
        after,
        until_final,
        state.sse,
        state.shutdown.closing.clone(),
    )
    .await
}

#[utoipa::path(post, path = "/v1/chat/tasks/{task_id}/stream-token", tag = "tasks",
    summary = "A token for a browser's EventSource",
    description = "A browser's `EventSource` cannot send an `Authorization` header. This mints a token that opens this task's event stream, and nothing else, for 5 minutes: `new EventSource(stream_url)`. The token is made with the calling key, so revoking the key voids it. A stream open when the token expires goes on; to reopen later (after `?after=` the last event id), mint another. Tokens in URLs are never logged by baton; proxies may log them, which is why they are short-lived and limited to one task.",
    params(TaskIdParam),
    responses((status = 200, description = "The token and the stream URL that carries it.", body = StreamTokenBody)),
    security(("agent_key" = [])))]
pub(crate) async fn stream_token(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let (token, expires_at) = state.tasks.mint_stream_token(&who, task).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(StreamTokenBody {
            stream_url: format!("/v1/chat/tasks/{task}/stream?token={token}"),
            token,
            expires_at,
        }))
}
