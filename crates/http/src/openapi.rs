//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types
//! they answer with (served at `/openapi.json` by [`crate::docs`]).
//!
//! The error answers are not written on each handler: they come from the route table
//! ([`crate::api::ROUTES`]), grouped by status, with an example envelope per code.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ContentBuilder, HeaderBuilder, OpenApi as Document, Ref, ResponseBuilder, example::Example,
    schema::Type,
};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::a2a::rest::A2aRestError;
use crate::api::{ROUTES, Route};
use crate::error::{ApiError, ErrorCode, ErrorEnvelope};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "baton",
        description = "Runs AI-agent conversations as tasks. Append a message and get `202 Accepted` at once; the agent's turn runs in the background; follow it by long-poll, a resumable event stream, or a signed webhook. One turn at a time per task.\n\nEvery error is an envelope `{\"error\": {\"code\", \"message\", \"request_id\", ...}}`; every answer carries `X-Request-Id`. See docs/api.md for the walk-through.",
        license(name = "MIT OR Apache-2.0", identifier = "MIT OR Apache-2.0"),
    ),
    servers((url = "/", description = "This server: the document is served by the server it describes.")),
    paths(
        crate::routes::healthz,
        crate::routes::readyz,
        crate::routes::metrics,
        crate::docs::document,
        crate::docs::docs_root,
        crate::docs::docs_file,
        crate::console::page,
        crate::console::file,
        crate::routes::key_agent,
        crate::routes::create_task,
        crate::routes::list_tasks,
        crate::routes::get_task,
        crate::routes::append_message,
        crate::routes::list_messages,
        crate::routes::stream,
        crate::routes::stream_token,
        crate::routes::cancel,
        crate::routes::list_deliveries,
        crate::routes::get_file,
        crate::routes::list_queue,
        crate::routes::get_queued,
        crate::routes::cancel_queued,
        crate::inbox::turn_inbox,
        crate::a2a::card::card,
        crate::a2a::rpc::rpc,
        crate::a2a::rest::send_message,
        crate::a2a::rest::send_streaming_message,
        crate::a2a::rest::get_task,
        crate::a2a::rest::list_tasks,
        crate::a2a::rest::cancel_task,
        crate::a2a::rest::subscribe_to_task,
        crate::a2a::rest::subscribe_to_task_get,
        crate::a2a::rest::create_push_config,
        crate::a2a::rest::list_push_configs,
        crate::a2a::rest::get_push_config,
        crate::a2a::rest::delete_push_config,
        crate::admin::create_agent,
        crate::admin::list_agents,
        crate::admin::get_agent,
        crate::admin::update_agent,
        crate::admin::create_key,
        crate::admin::list_keys,
        crate::admin::revoke_key,
        crate::admin::redeliver,
    ),
    components(schemas(ErrorEnvelope, A2aRestError)),
    modifiers(&Security, &ErrorAnswers),
    tags(
        (name = "tasks", description = "Tasks, their messages and turns: what agents' clients use, with an agent's key."),
        (name = "admin", description = "Agents and their keys, with the operator's admin token. Disabled (404) unless the server has an admin token."),
        (name = "agents", description = "Called by agent services (the `http` runner) while they play a turn, signed with the agent's secret."),
        (name = "a2a", description = "The Agent2Agent (A2A 1.0) binding of each agent: its Agent Card, its JSON-RPC endpoint and its HTTP+JSON binding (docs/a2a.md)."),
        (name = "operations", description = "Probes, metrics and this document."),
    ),
)]
pub struct ApiDoc;

/// The two bearer schemes: an agent's key and the operator's admin token.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        let bearer = |what: &str| {
            let mut http = Http::new(HttpAuthScheme::Bearer);
            http.description = Some(what.to_owned());
            SecurityScheme::Http(http)
        };
        components.add_security_scheme(
            "agent_key",
            bearer("An agent's API key (`bt_…`), made by `baton key create` or the admin API."),
        );
        components.add_security_scheme(
            "agent_signature",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "webhook-signature",
                "An agent service's request, signed as baton signs its turn requests (Standard Webhooks: `webhook-id`, `webhook-timestamp` and `webhook-signature`, HMAC-SHA256 with the agent's secret).",
            ))),
        );
        components.add_security_scheme(
            "stream_token",
            SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
                "token",
                "A stream token from `POST /v1/chat/tasks/{task_id}/stream-token`: opens that task's stream only, for 5 minutes. For a browser's `EventSource`, which cannot send a header.",
            ))),
        );
        components.add_security_scheme(
            "admin_token",
            bearer("The server's admin token (`admin_token` / `BATON_ADMIN_TOKEN`)."),
        );
        // An operation that names no scheme needs none: say so (`[{}]`, the empty
        // requirement), so readers and linters need not guess.
        for route in ROUTES {
            if let Some(operation) = operation_mut(doc, route)
                && operation.security.is_none()
            {
                operation.security = Some(vec![SecurityRequirement::default()]);
            }
        }
    }
}

/// Adds each route's error answers from the route table.
struct ErrorAnswers;

impl Modify for ErrorAnswers {
    fn modify(&self, doc: &mut Document) {
        for route in ROUTES {
            if let Some(operation) = operation_mut(doc, route) {
                add_errors(operation, route);
            }
        }
    }
}

fn http_method(route: &Route) -> Option<HttpMethod> {
    Some(match route.method {
        "get" => HttpMethod::Get,
        "post" => HttpMethod::Post,
        "put" => HttpMethod::Put,
        "patch" => HttpMethod::Patch,
        "delete" => HttpMethod::Delete,
        _ => return None,
    })
}

/// The document's operation for a route, if the document has it.
fn operation_mut<'a>(doc: &'a mut Document, route: &Route) -> Option<&'a mut Operation> {
    let item = doc.paths.paths.get_mut(route.path)?;
    match http_method(route)? {
        HttpMethod::Get => item.get.as_mut(),
        HttpMethod::Post => item.post.as_mut(),
        HttpMethod::Put => item.put.as_mut(),
        HttpMethod::Patch => item.patch.as_mut(),
        HttpMethod::Delete => item.delete.as_mut(),
        _ => None,
    }
}

fn add_errors(operation: &mut Operation, route: &Route) {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in route.error_codes() {
        by_status
            .entry(code.status().as_u16())
            .or_default()
            .push(code);
    }
    for (status, codes) in by_status {
        let listed: Vec<String> = codes.iter().map(|c| format!("`{}`", c.as_str())).collect();
        let examples = codes.iter().map(|code| {
            let envelope = ApiError::new(*code, code.meaning()).envelope("3f2a9c1e7b6d4a58");
            let example = Example::builder()
                .summary(code.meaning())
                .value(Some(envelope))
                .build();
            (code.as_str(), example)
        });
        let envelope = Ref::from_schema_name(<ErrorEnvelope as ToSchema>::name());
        // A2A's HTTP+JSON binding answers its own errors as A2A writes them.
        let a2a = route.is_a2a_rest() && A2A_REST_STATUSES.contains(&status);
        let (schema, description) = match a2a {
            false => (
                utoipa::openapi::RefOr::Ref(envelope),
                format!("An error envelope: {}.", listed.join(", ")),
            ),
            true => (
                utoipa::openapi::RefOr::T(utoipa::openapi::Schema::AnyOf(
                    utoipa::openapi::schema::AnyOfBuilder::new()
                        .item(envelope)
                        .item(Ref::from_schema_name(<A2aRestError as ToSchema>::name()))
                        .build(),
                )),
                format!(
                    "An error envelope ({}), or an A2A error (`google.rpc.Status` whose `ErrorInfo` names the reason).",
                    listed.join(", ")
                ),
            ),
        };
        let content = ContentBuilder::new()
            .schema(Some(schema))
            .examples_from_iter(examples);
        let mut response = ResponseBuilder::new()
            .description(description)
            .content("application/json", content.build());
        if codes.iter().any(|c| c.says_when_to_retry()) {
            response = response.header(
                "Retry-After",
                HeaderBuilder::new()
                    .schema(Some(integer_schema()))
                    .description(Some("Seconds to wait before retrying."))
                    .build(),
            );
        }
        if codes.contains(&ErrorCode::Unauthorized) {
            response = response.header(
                "WWW-Authenticate",
                HeaderBuilder::new()
                    .schema(Some(string_schema()))
                    .description(Some("`Bearer`."))
                    .build(),
            );
        }
        operation
            .responses
            .responses
            .insert(status.to_string(), response.build().into());
    }
}

/// The statuses A2A's REST binding answers its errors with.
const A2A_REST_STATUSES: [u16; 3] = [400, 404, 500];

fn integer_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(Type::Integer)
        .build()
}

fn string_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(Type::String)
        .build()
}

/// The document, built once.
pub fn api_doc() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut json = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        crate::openapi_rewrites::on_json(&mut json);
        json
    })
}

/// The document as JSON text, rendered once.
pub(crate) fn api_doc_json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| serde_json::to_string(api_doc()).unwrap_or_default())
}
