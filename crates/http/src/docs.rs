//! `/openapi.json` and the docs page: Swagger UI at `/docs`, built into the binary so
//! that it needs no network. The document itself is [`crate::openapi`]'s, handed to
//! these handlers as app data ([`OpenApiJson`]), so that the document, which lists
//! these routes, and the routes that serve it do not depend on each other.

use std::sync::{Arc, OnceLock};

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::assets::{Asset, accepts_gzip};
use crate::error::{ApiError, ErrorCode};

/// The OpenAPI document as `/openapi.json` serves it.
#[derive(Debug, Clone)]
pub struct OpenApiJson(pub Asset);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    summary = "This OpenAPI document",
    description = "With `If-None-Match` naming the document's `ETag`, `304` and no body: the document changes only with the server's version. Gzipped when `Accept-Encoding` takes gzip.",
    params(("If-None-Match" = Option<String>, Header, description = "An `ETag` this answer gave before.")),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this server.", content_type = "application/json", body = Object,
            headers(("ETag" = String, description = "The document's version (in this encoding), for `If-None-Match`."))),
        (status = 304, description = "Not modified: `If-None-Match` named this document.",
            headers(("ETag" = String, description = "The document's version."))),
    ))]
pub(crate) async fn document(req: HttpRequest, document: web::Data<OpenApiJson>) -> HttpResponse {
    document.0.respond(&req, |_| ())
}

/// `/docs` (and its alias `/docs/`, see [`crate::api::ALIASES`]) lead to the page,
/// whose assets are relative to it.
#[utoipa::path(get, path = "/docs", tag = "operations",
    summary = "Interactive API docs",
    description = "Redirects to Swagger UI at `/docs/index.html`, served by the binary itself (no network needed).",
    responses((status = 308, description = "To `/docs/index.html`.", headers(("Location" = String)))))]
pub(crate) async fn docs_root() -> HttpResponse {
    to_docs_page()
}

fn to_docs_page() -> HttpResponse {
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, "/docs/index.html"))
        .finish()
}

fn swagger_config() -> Arc<utoipa_swagger_ui::Config<'static>> {
    static CONFIG: OnceLock<Arc<utoipa_swagger_ui::Config<'static>>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Arc::new(
                utoipa_swagger_ui::Config::from("/openapi.json")
                    .try_it_out_enabled(true)
                    .persist_authorization(true),
            )
        })
        .clone()
}

/// Swagger UI's page and assets.
#[utoipa::path(get, path = "/docs/{file}", tag = "operations",
    summary = "Interactive API docs (page and assets)",
    params(("file" = String, Path, description = "`index.html`, or one of its scripts and stylesheets.", example = "index.html")),
    responses((status = 200, description = "The page or one of its assets.", content_type = "text/html", body = String)))]
pub(crate) async fn docs_file(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let file = req.match_info().get("file").unwrap_or_default();
    let found = utoipa_swagger_ui::serve(file, swagger_config())
        .map_err(|err| ApiError::internal(err.to_string()))?;
    let Some(found) = found else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("The docs have no file {file:?}; start at /docs."),
        ));
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type(found.content_type)
        .insert_header((header::VARY, "accept-encoding"));
    if !found.gzpipped {
        return Ok(response.body(found.bytes.into_owned()));
    }
    // Stored gzipped (at build time): sent so to clients that take it, unpacked for
    // the others.
    if accepts_gzip(&req) {
        response.insert_header((header::CONTENT_ENCODING, "gzip"));
        return Ok(response.body(found.bytes.into_owned()));
    }
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&*found.bytes), &mut plain)
        .map_err(|err| ApiError::internal(format!("unpacking docs asset {file:?}: {err}")))?;
    Ok(response.body(plain))
}
