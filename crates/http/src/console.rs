//! The console: a web page to watch and drive tasks, served at `/console` from files
//! embedded in the binary at build time (`crates/http/console/`: plain HTML, CSS and
//! JavaScript, with two vendored libraries — no build step, no network at run time).
//! The page is a client of the V1 API like any other: same origin, the key sent as a
//! header. Off with `console = false`.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::ApiState;
use crate::assets::Asset;
use crate::error::{ApiError, ErrorCode};

/// The console's files, by the name they are served under (`/console/{file}`).
const FILES: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../console/index.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../console/console.css"),
    ),
    (
        "marked.umd.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/marked.umd.js"),
    ),
    (
        "purify.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../console/purify.min.js"),
    ),
];

/// The page may run its own scripts and styles and call this origin, nothing else: a
/// message that slipped markup past the sanitizer still could not run or load
/// anything. (Downloads are links to blob URLs the page makes: no image source.)
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; \
    base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn assets() -> &'static [(&'static str, Asset)] {
    static ASSETS: OnceLock<Vec<(&'static str, Asset)>> = OnceLock::new();
    ASSETS.get_or_init(|| {
        FILES
            .iter()
            .map(|(name, content_type, bytes)| (*name, Asset::new(content_type, bytes)))
            .collect()
    })
}

fn serve(req: &HttpRequest, state: &ApiState, file: &str) -> Result<HttpResponse, ApiError> {
    if !state.console {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            "The console is off on this server (`console = false`).",
        ));
    }
    let Some((_, asset)) = assets().iter().find(|(name, _)| *name == file) else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("The console has no file {file:?}; start at /console."),
        ));
    };
    Ok(asset.respond(req, |head| {
        head.insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
            .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
            .insert_header((header::REFERRER_POLICY, "no-referrer"))
            // Revalidated on every load (a 304 when unchanged): a new server version's
            // page never runs with the old one's script.
            .insert_header((header::CACHE_CONTROL, "no-cache"));
    }))
}

/// The console's page.
#[utoipa::path(get, path = "/console", tag = "operations",
    summary = "The console",
    description = "A web page to watch and drive tasks (with an agent key) and manage agents and keys (with the admin token), served by the binary itself. `404 not_found` when the server runs with `console = false`. See docs/console.md.",
    responses((status = 200, description = "The console's page.", content_type = "text/html", body = String)))]
pub(crate) async fn page(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    serve(&req, &state, "index.html")
}

/// The console's scripts and stylesheet.
#[utoipa::path(get, path = "/console/{file}", tag = "operations",
    summary = "The console's assets",
    params(("file" = String, Path, description = "One of the page's scripts or its stylesheet.", example = "console.js")),
    responses((status = 200, description = "The asset.", content_type = "text/javascript", body = String)))]
pub(crate) async fn file(
    req: HttpRequest,
    state: web::Data<ApiState>,
) -> Result<HttpResponse, ApiError> {
    let file = req.match_info().get("file").unwrap_or_default();
    serve(&req, &state, file)
}
