//! The V1 routes.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use baton_domain::Claim;

use crate::ApiState;
use baton_domain::Message;

use crate::dto::{AcceptedBody, PageBody, SubmitBody, TaskBody};
use crate::error::{ApiError, ErrorCode};
use crate::extract::{authenticate, idempotency_key, json_body, page, task_id, wait};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
    cfg.service(
        web::resource("/v1/chat/tasks")
            .route(web::post().to(create_task))
            .route(web::get().to(list_tasks))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/tasks/{task_id}")
            .route(web::get().to(get_task))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/tasks/{task_id}/stream")
            .route(web::get().to(stream))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/tasks/{task_id}/webhook-deliveries")
            .route(web::get().to(list_deliveries))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/tasks/{task_id}/cancel")
            .route(web::post().to(cancel))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/v1/chat/tasks/{task_id}/messages")
            .route(web::post().to(append_message))
            .route(web::get().to(list_messages))
            .default_service(web::to(method_not_allowed)),
    );
}

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
async fn metrics(state: web::Data<ApiState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    match &state.metrics {
        Some(render) => Ok(HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body((render.0)())),
        None => not_found(req).await,
    }
}

/// The process is up and serving HTTP (liveness). Answered even while stopping.
async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

/// This instance should get traffic (readiness): not stopping, its database reachable
/// and migrated.
async fn readyz(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    if state.shutdown.draining.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "This instance is shutting down.",
        ));
    }
    state.tasks.check_ready().await.map_err(|err| {
        // Readiness says why, unlike other 503s: operators read it, not clients.
        let why = err.to_string();
        ApiError::new(ErrorCode::ServiceUnavailable, why)
    })?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"status": "ready"})))
}

async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!("{} is not allowed on {}.", req.method(), req.path()),
    ))
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

async fn create_task(
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

async fn append_message(
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

async fn list_deliveries(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let deliveries = state.tasks.list_deliveries(&who, task).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "data": deliveries })))
}

async fn cancel(state: web::Data<ApiState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let view = state.tasks.cancel(&who, task).await?;
    Ok(HttpResponse::Ok().json(TaskBody::from(view)))
}

async fn get_task(state: web::Data<ApiState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
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

async fn list_tasks(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let page = page(&req)?;
    let tasks = state.tasks.list_tasks(&who, page).await?;
    Ok(HttpResponse::Ok().json(PageBody::<TaskBody>::new(tasks)))
}

async fn list_messages(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let page = page(&req)?;
    let messages = state.tasks.list_messages(&who, task, page).await?;
    Ok(HttpResponse::Ok().json(PageBody::<Message>::new(messages)))
}

async fn stream(state: web::Data<ApiState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let who = authenticate(&state, &req).await?;
    let task = task_id(&req)?;
    let (after, until_final) = crate::sse::cursor(&req)?;
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
