//! Every route of the server, in one table. The routes are registered from it and the
//! OpenAPI document's error answers are added from it, and a test holds the document
//! to it: a route that exists but is not described fails that test.

use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;
use crate::error::ErrorCode::{self, *};
use crate::{a2a, admin, console, docs, inbox, routes};

/// One method on one path, as registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The path as actix and OpenAPI both write it: `/v1/chat/tasks/{task_id}`.
    pub path: &'static str,
    /// Lower case, as OpenAPI writes it: `get`, `post`, …
    pub method: &'static str,
    /// The error codes this route can answer with, besides [`ANY_ROUTE`]'s.
    pub errors: &'static [&'static [ErrorCode]],
}

/// Any route can meet an unexpected error, and any request can be refused before it
/// reaches a route: unreadable (`bad_request`), too slow (`request_timeout`) or with
/// headers over the limit. (While the instance stops, every route but the probes and
/// `/metrics` answers `shutting_down`.)
pub const ANY_ROUTE: &[ErrorCode] = &[InternalError, BadRequest, RequestTimeout, HeadersTooLarge];
/// A route behind an agent's key.
const KEYED: &[ErrorCode] = &[
    Unauthorized,
    RateLimited,
    ShuttingDown,
    ServiceUnavailable,
    StorageUnwritable,
];
/// A route behind the admin token (`not_found` when the admin API is disabled).
const ADMIN: &[ErrorCode] = &[Unauthorized, NotFound, ShuttingDown, ServiceUnavailable];
/// A route that reads a JSON body.
const JSON_BODY: &[ErrorCode] = &[
    MalformedJson,
    JsonTooDeep,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
];
/// A route of A2A's HTTP+JSON binding: another agent's path is baton's `404`
/// envelope; A2A's own errors (`400`, `404`, `500`) are A2A's REST error body, which
/// the document adds beside the envelope (see `openapi`).
const A2A_REST: &[ErrorCode] = &[AgentNotFound];
/// A route that reads `?limit=&cursor=`.
const PAGED: &[ErrorCode] = &[BadRequest, ValidationFailed];

macro_rules! api {
    ($($path:literal { $($method:ident => $handler:path, errors: [$($errors:expr),* $(,)?];)+ })+) => {
        /// Every route, in registration order.
        pub const ROUTES: &[Route] = &[$($(Route {
            path: $path,
            method: stringify!($method),
            errors: &[$($errors),*],
        },)+)+];

        /// Registers every route of the table; a known path with another method is a
        /// 405 envelope.
        fn configure_table(cfg: &mut web::ServiceConfig) {
            $(cfg.service(
                web::resource($path)
                    $(.route(method_route(stringify!($method)).to($handler)))+
                    .default_service(web::to(method_not_allowed)),
            );)+
        }
    };
}

api! {
    "/healthz" { get => routes::healthz, errors: []; }
    "/readyz" { get => routes::readyz, errors: [&[ShuttingDown, ServiceUnavailable, StorageUnwritable]]; }
    "/metrics" { get => routes::metrics, errors: [&[NotFound]]; }
    "/openapi.json" { get => docs::document, errors: [&[ShuttingDown]]; }
    "/docs" { get => docs::docs_root, errors: [&[ShuttingDown]]; }
    "/docs/{file}" { get => docs::docs_file, errors: [&[ShuttingDown, NotFound]]; }
    "/console" { get => console::page, errors: [&[ShuttingDown, NotFound]]; }
    "/console/{file}" { get => console::file, errors: [&[ShuttingDown, NotFound]]; }
    "/v1/chat/agent" {
        get => routes::key_agent, errors: [KEYED, &[AgentNotFound]];
    }
    "/v1/chat/tasks" {
        post => routes::create_task, errors: [KEYED, JSON_BODY, &[AgentNotFound, IdempotencyKeyReused, IdempotencyKeyInUse, TooManyRunningTurns]];
        get => routes::list_tasks, errors: [KEYED, PAGED];
    }
    "/v1/chat/tasks/{task_id}" {
        get => routes::get_task, errors: [KEYED, &[BadRequest, ValidationFailed, TaskNotFound]];
    }
    "/v1/chat/tasks/{task_id}/messages" {
        post => routes::append_message, errors: [KEYED, JSON_BODY, &[AgentNotFound, TaskNotFound, TaskBusy, QueueFull, IdempotencyKeyReused, IdempotencyKeyInUse, TooManyRunningTurns]];
        get => routes::list_messages, errors: [KEYED, PAGED, &[TaskNotFound]];
    }
    "/v1/chat/tasks/{task_id}/stream" {
        get => routes::stream, errors: [KEYED, &[BadRequest, ValidationFailed, TaskNotFound]];
    }
    "/v1/chat/tasks/{task_id}/stream-token" {
        post => routes::stream_token, errors: [KEYED, &[TaskNotFound]];
    }
    "/v1/chat/tasks/{task_id}/cancel" {
        post => routes::cancel, errors: [KEYED, &[TaskNotFound, TaskNotRunning]];
    }
    "/v1/chat/tasks/{task_id}/queue" {
        get => routes::list_queue, errors: [KEYED, &[TaskNotFound]];
    }
    "/v1/chat/tasks/{task_id}/queue/{queued_message_id}" {
        get => routes::get_queued, errors: [KEYED, &[TaskNotFound, QueuedMessageNotFound]];
        delete => routes::cancel_queued, errors: [KEYED, &[TaskNotFound, QueuedMessageNotFound, MessageNotQueued]];
    }
    "/a2a/{agent_id}/.well-known/agent-card.json" {
        get => a2a::card::card, errors: [KEYED, &[AgentNotFound]];
    }
    "/a2a/{agent_id}" {
        post => a2a::rpc::rpc, errors: [KEYED, JSON_BODY, &[AgentNotFound]];
    }
    "/a2a/{agent_id}/message:send" {
        post => a2a::rest::send_message, errors: [KEYED, JSON_BODY, A2A_REST];
    }
    "/a2a/{agent_id}/message:stream" {
        post => a2a::rest::send_streaming_message, errors: [KEYED, JSON_BODY, A2A_REST];
    }
    // Before `/tasks/{task_id}`, whose `{task_id}` would take `5:cancel` whole.
    "/a2a/{agent_id}/tasks/{task_id}:cancel" {
        post => a2a::rest::cancel_task, errors: [KEYED, A2A_REST];
    }
    "/a2a/{agent_id}/tasks/{task_id}:subscribe" {
        post => a2a::rest::subscribe_to_task, errors: [KEYED, A2A_REST];
        get => a2a::rest::subscribe_to_task_get, errors: [KEYED, A2A_REST];
    }
    "/a2a/{agent_id}/tasks" {
        get => a2a::rest::list_tasks, errors: [KEYED, A2A_REST];
    }
    "/a2a/{agent_id}/tasks/{task_id}" {
        get => a2a::rest::get_task, errors: [KEYED, A2A_REST];
    }
    "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs" {
        post => a2a::rest::create_push_config, errors: [KEYED, JSON_BODY, A2A_REST];
        get => a2a::rest::list_push_configs, errors: [KEYED, A2A_REST];
    }
    "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs/{config_id}" {
        get => a2a::rest::get_push_config, errors: [KEYED, A2A_REST];
        delete => a2a::rest::delete_push_config, errors: [KEYED, A2A_REST];
    }
    "/v1/agents/{agent_id}/tasks/{task_id}/turns/{turn_id}/inbox" {
        post => inbox::turn_inbox, errors: [JSON_BODY, &[Unauthorized, TurnEnded]];
    }
    "/v1/chat/tasks/{task_id}/files/{file_id}" {
        get => routes::get_file, errors: [KEYED, &[NotFound, TaskNotFound]];
    }
    "/v1/chat/tasks/{task_id}/webhook-deliveries" {
        get => routes::list_deliveries, errors: [KEYED, &[TaskNotFound]];
    }
    "/v1/admin/agents" {
        post => admin::create_agent, errors: [ADMIN, JSON_BODY];
        get => admin::list_agents, errors: [ADMIN, PAGED];
    }
    "/v1/admin/agents/{agent_id}" {
        get => admin::get_agent, errors: [ADMIN, &[AgentNotFound]];
        patch => admin::update_agent, errors: [ADMIN, JSON_BODY, &[AgentNotFound]];
    }
    "/v1/admin/agents/{agent_id}/keys" {
        post => admin::create_key, errors: [ADMIN, &[AgentNotFound]];
        get => admin::list_keys, errors: [ADMIN, &[AgentNotFound]];
    }
    "/v1/admin/keys/{prefix}" {
        delete => admin::revoke_key, errors: [ADMIN];
    }
    "/v1/admin/webhook-deliveries/{delivery_id}/redeliver" {
        post => admin::redeliver, errors: [ADMIN];
    }
}

/// A route for `method` (as the table writes it); one for `get` answers `HEAD` too,
/// with the same handler: actix-http sends a HEAD answer's headers and drops its body.
fn method_route(method: &'static str) -> actix_web::Route {
    web::route().guard(actix_web::guard::fn_guard(move |ctx| {
        let asked = ctx.head().method.as_str();
        asked.eq_ignore_ascii_case(method) || (method == "get" && asked == "HEAD")
    }))
}

/// The methods a path allows, as `Allow` names them: its routes', and `HEAD` wherever
/// `GET` is.
pub fn allowed_methods(path: &str) -> Vec<String> {
    let mut allowed = Vec::new();
    for route in ROUTES.iter().filter(|route| route.path == path) {
        allowed.push(route.method.to_ascii_uppercase());
        if route.method == "get" {
            allowed.push("HEAD".to_owned());
        }
    }
    allowed
}

/// Paths that only lead to a described route, each with the route it answers as, and
/// are left out of the document (a trailing slash is an error to OpenAPI linters):
/// `/docs/` redirects as `/docs` does.
pub const ALIASES: &[(&str, &str)] = &[("/docs/", "/docs")];

/// Registers every route, and the aliases.
pub fn configure(cfg: &mut web::ServiceConfig) {
    configure_table(cfg);
    cfg.service(
        web::resource(ALIASES[0].0)
            .route(method_route("get").to(docs::docs_root))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A known path with a method it does not have: `405` naming the methods it has.
pub(crate) async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let pattern = req.match_pattern();
    // An alias allows what the route it answers as allows.
    let pattern = ALIASES
        .iter()
        .find(|(alias, _)| pattern.as_deref() == Some(*alias))
        .map_or(pattern, |(_, route)| Some((*route).to_owned()));
    let allowed = allowed_methods(pattern.as_deref().unwrap_or_default());
    Err(ApiError {
        allow: Some(allowed.join(", ").into()),
        ..ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!(
                "{} is not allowed on {}; it allows {}.",
                req.method(),
                req.path(),
                allowed.join(", ")
            ),
        )
    })
}

impl Route {
    /// Whether this is a route of A2A's HTTP+JSON binding.
    pub fn is_a2a_rest(&self) -> bool {
        self.path.starts_with("/a2a/{agent_id}/") && !self.path.ends_with("agent-card.json")
    }

    /// Every code this route can answer with, [`ANY_ROUTE`]'s included, each once.
    pub fn error_codes(&self) -> Vec<ErrorCode> {
        let mut codes: Vec<ErrorCode> = Vec::new();
        for code in self.errors.iter().copied().flatten().chain(ANY_ROUTE) {
            if !codes.contains(code) {
                codes.push(*code);
            }
        }
        codes
    }
}
