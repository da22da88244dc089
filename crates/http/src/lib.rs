//! baton's HTTP adapter: the V1 API on actix-web, and the mapping of every error into
//! the V1 envelope.

pub mod admin;
pub mod api;
pub mod dto;
pub mod error;
pub mod extract;
pub mod limits;
pub mod middleware;
pub mod openapi;
pub mod routes;
pub mod sse;

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, middleware::from_fn, web};
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

/// Adds the V1 API, its envelope for unknown routes, and the request-id middleware to
/// an app. Used by the server and by tests alike.
pub fn configure(state: ApiState) -> impl FnOnce(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        cfg.app_data(web::Data::new(state))
            .configure(api::configure);
    }
}

/// Serves the API on `listener`. Signals are left to the caller, which coordinates the
/// stop of the server with the stop of running turns.
pub fn serve(
    listener: TcpListener,
    state: ApiState,
    options: ServerOptions,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(middleware::envelope_and_request_id))
            .configure(configure(state.clone()))
            .default_service(web::to(routes::not_found))
    })
    // Small writes (SSE events, short JSON answers) must leave at once: without
    // TCP_NODELAY, Nagle's algorithm holds them behind the peer's delayed ACK (~40 ms).
    .on_connect(|connection, _| {
        if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
            let _ = tcp.set_nodelay(true);
        }
    })
    .workers(options.workers.max(1))
    .shutdown_timeout(options.shutdown_timeout.as_secs())
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
