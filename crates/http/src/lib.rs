//! baton's HTTP adapter: the V1 API on actix-web, and the mapping of every error into
//! the V1 envelope.

pub mod a2a;
pub mod admin;
pub mod api;
mod assets;
pub mod console;
pub mod cors;
mod docs;
mod draining;
pub mod dto;
pub mod error;
pub mod extract;
mod framing_errors;
mod inbox;
mod json_text;
pub mod limits;
pub mod middleware;
pub mod openapi;
mod openapi_rewrites;
pub mod params;
pub mod routes;
pub mod sse;

use std::net::TcpListener;
use std::time::Duration;

use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::{AppConfig, Server};
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, web};
use baton_domain::TaskService;
use tokio_util::sync::CancellationToken;

pub use error::{ApiError, ErrorCode};

/// Default limit of a request body: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub tasks: TaskService,
    /// Largest request body accepted, in bytes; larger ones are a 413.
    pub body_limit: usize,
    /// Heartbeats and retry hints of event streams.
    pub sse: sse::SseOptions,
    /// The two steps of a graceful stop, as this API sees them.
    pub shutdown: Shutdown,
    /// Renders `/metrics` (Prometheus text); `None`: no `/metrics`.
    pub metrics: Option<MetricsRenderer>,
    /// JSON nesting and per-key request rate.
    pub limits: limits::RequestLimits,
    /// The admin API; `None`: its routes do not exist.
    pub admin: Option<admin::AdminApi>,
    /// Which other origins' pages may call the API.
    pub cors: cors::CorsOptions,
    /// Whether `/console` serves the console (else `404`).
    pub console: bool,
}

/// Renders the metrics in Prometheus' text format, at each scrape.
#[derive(Clone)]
pub struct MetricsRenderer(pub std::sync::Arc<dyn Fn() -> String + Send + Sync>);

impl std::fmt::Debug for MetricsRenderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsRenderer")
    }
}

/// A graceful stop in two steps. Once `draining`, new requests are refused with a 503
/// `shutting_down` while requests already being served go on (streams keep
/// delivering the turns that are finishing). Once `closing`, streams end with a last
/// comment and long-polls answer at once, so the server can stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub draining: CancellationToken,
    pub closing: CancellationToken,
}

/// How the HTTP server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerOptions {
    /// actix workers, each a single-threaded event loop (turns run elsewhere).
    pub workers: usize,
    /// How long a stopping server lets in-flight requests finish.
    pub shutdown_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            workers: 2,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// The served document and its `ETag`, hashed once for every worker.
fn openapi_json() -> &'static docs::OpenApiJson {
    static JSON: std::sync::OnceLock<docs::OpenApiJson> = std::sync::OnceLock::new();
    JSON.get_or_init(|| {
        docs::OpenApiJson(assets::Asset::new(
            "application/json",
            openapi::api_doc_json().as_bytes(),
        ))
    })
}

/// Adds the V1 API, its envelope for unknown routes, and the request-id middleware to
/// an app. Used by the server and by tests alike.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .app_data(web::Data::new(openapi_json().clone()))
            .configure(api::configure);
    }
}

/// Serves the API on `listener`. Signals are left to the caller, which coordinates the
/// stop of the server with the stop of running turns.
///
/// actix-web's `HttpServer`, assembled from its parts with the same settings, so that
/// each connection's stream is wrapped: the error answers actix-http writes by itself
/// (`400`, `408`, `431`) go out as envelopes too ([`framing_errors`]).
pub fn serve(
    listener: TcpListener,
    state: ApiState,
    options: ServerOptions,
) -> std::io::Result<Server> {
    let builder = Server::build();
    // Idle keep-alive connections close as soon as the stop begins, as in actix-web's
    // own server; without it a stop waits for them to time out.
    let stopping = builder.graceful_shutdown_signal();
    let server = builder
        .workers(options.workers.max(1))
        .shutdown_timeout(options.shutdown_timeout.as_secs())
        .disable_signals()
        .listen("baton", listener, move || {
            let (state, stopping) = (state.clone(), stopping.clone());
            // Inside the envelope, so that a refused preflight is an envelope too; the
            // envelope keeps the CORS headers of the answers it renders.
            let cors = Condition::new(state.cors.enabled(), state.cors.middleware());
            let app = App::new()
                .wrap(from_fn(draining::refuse_while_draining))
                .wrap(cors)
                .wrap(from_fn(middleware::envelope_and_request_id))
                .configure(configure(state))
                .default_service(web::to(routes::not_found));
            let http = actix_http::HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(actix_http::KeepAlive::default())
                .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
                .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
                .h1_write_buffer_size(WRITE_BUFFER_BYTES)
                .h1_allow_half_closed(true)
                .finish(map_config(
                    app.into_factory()
                        .map_err(|err: actix_web::Error| err.error_response()),
                    |_| AppConfig::default(),
                ));
            fn_service(|stream: actix_web::rt::net::TcpStream| async move {
                // Small writes (SSE events, short JSON answers) must leave at once:
                // without TCP_NODELAY, Nagle's algorithm holds them behind the peer's
                // delayed ACK (~40 ms).
                let _ = stream.set_nodelay(true);
                let peer = stream.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    framing_errors::Enveloping::new(stream),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run();
    Ok(server)
}

/// How long a client has to send a request's head (actix-web's default).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of response a connection queues before it stops producing more and waits for
/// the client to take them: the size of actix-http's first write buffer (8 KiB), so
/// a stream whose client reads slowly never grows it (actix-http's default, 32 KiB,
/// would let each slow stream hold four times as much). A JSON answer is one chunk
/// and is written whole whatever this is.
const WRITE_BUFFER_BYTES: usize = 8 * 1024;
/// How long a closing connection is given to shut down (actix-web's default).
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
