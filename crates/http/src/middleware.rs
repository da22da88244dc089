//! The outermost layer: a request id on every request and response, every error
//! rendered as the V1 envelope carrying that id, panics turned into 500s, and one log
//! line per request.

use std::panic::AssertUnwindSafe;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use futures_util::FutureExt;
use tracing::{Instrument, error, info, info_span, warn};

use baton_domain::telemetry;

use crate::error::{ApiError, ErrorCode, REQUEST_ID_HEADER};

/// The id of the request being served, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// A client-supplied request id is kept if it is short and plain; otherwise one is made.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .filter(|v| {
            v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id)
}

/// A request id made by the server (`req_` and 16 hex digits).
pub(crate) fn new_request_id() -> String {
    format!("req_{:016x}", rand::random::<u64>())
}

/// For an error response that is not already our envelope, the code that fits its
/// status (the framework's own errors: unknown route, wrong method, bad headers).
fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::ServiceUnavailable,
        s if s.is_server_error() => ErrorCode::InternalError,
        _ => ErrorCode::BadRequest,
    }
}

pub async fn envelope_and_request_id(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let id = request_id(&req);
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let path = req.path().to_owned();
    // The route's pattern, not the path, labels metrics: ids would explode them.
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let span = info_span!("request", request_id = %id);

    let outcome = AssertUnwindSafe(next.call(req).instrument(span.clone()))
        .catch_unwind()
        .await;
    let mut response = match outcome {
        Ok(Ok(response)) => finish(response.map_into_boxed_body(), &id),
        // The request is gone with the failed future, so the envelope travels as an
        // error that renders itself with the request's id.
        Ok(Err(err)) => {
            let api = match err.as_error::<ApiError>() {
                Some(api) => ApiError::new(api.code, api.message.clone()),
                None => ApiError::new(
                    code_for_status(err.as_response_error().status_code()),
                    err.to_string(),
                ),
            };
            return Err(Done {
                span: &span,
                method: &method,
                route: &route,
                path: &path,
                started,
            }
            .failed(ApiError {
                request_id: Some(id.into()),
                ..api
            }));
        }
        Err(_panic) => {
            span.in_scope(|| error!("handler panicked"));
            let api = ApiError::new(
                ErrorCode::InternalError,
                "An unexpected error occurred. Report the request_id to the operator.",
            );
            return Err(Done {
                span: &span,
                method: &method,
                route: &route,
                path: &path,
                started,
            }
            .failed(ApiError {
                request_id: Some(id.into()),
                ..api
            }));
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let done = Done {
        span: &span,
        method: &method,
        route: &route,
        path: &path,
        started,
    };
    done.record(response.status().as_u16());
    Ok(response)
}

/// A request that was answered: one log line and its metrics.
struct Done<'a> {
    span: &'a tracing::Span,
    method: &'a actix_web::http::Method,
    route: &'a str,
    path: &'a str,
    started: Instant,
}

impl Done<'_> {
    fn record(&self, status: u16) {
        let elapsed = self.started.elapsed();
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let (method, path) = (self.method, self.path);
        self.span
            .in_scope(|| info!(%method, %path, status, elapsed_ms, "request"));
        let labels = [
            ("method", method.as_str().to_owned()),
            ("route", self.route.to_owned()),
        ];
        metrics::histogram!(telemetry::HTTP_DURATION, &labels).record(elapsed.as_secs_f64());
        let mut with_status = labels.to_vec();
        with_status.push(("status", status.to_string()));
        metrics::counter!(telemetry::HTTP_REQUESTS, &with_status).increment(1);
    }

    fn failed(&self, err: ApiError) -> Error {
        self.record(err.code.status().as_u16());
        err.into()
    }
}

/// Renders any error response as the envelope with this request's id, and logs the
/// cause of a 5xx (which the client never sees).
fn finish(response: ServiceResponse<BoxBody>, id: &str) -> ServiceResponse<BoxBody> {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let mut rendered = match response.response().error() {
        Some(err) => match err.as_error::<ApiError>() {
            Some(api) => {
                if let Some(source) = &api.source {
                    if status.is_server_error() {
                        error!(request_id = id, error = %source, "request failed");
                    } else {
                        warn!(request_id = id, error = %source, "request refused");
                    }
                }
                api.to_response(id)
            }
            None => {
                if status.is_server_error() {
                    error!(request_id = id, error = %err, "request failed");
                }
                let message = if status.is_server_error() {
                    "An unexpected error occurred. Report the request_id to the operator."
                        .to_owned()
                } else {
                    err.to_string()
                };
                ApiError::new(code_for_status(status), message).to_response(id)
            }
        },
        None => {
            let is_json = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if is_json {
                return response;
            }
            let message = status.canonical_reason().unwrap_or("Error").to_owned();
            ApiError::new(code_for_status(status), message).to_response(id)
        }
    };
    keep_cors_headers(response.headers(), rendered.headers_mut());
    let (request, _) = response.into_parts();
    ServiceResponse::new(request, rendered)
}

/// A page on another origin reads an error only if its answer carries the CORS
/// headers the inner layer added: the envelope that replaces the answer keeps them.
fn keep_cors_headers(from: &header::HeaderMap, to: &mut header::HeaderMap) {
    for (name, value) in from {
        if name.as_str().starts_with("access-control-") || name == header::VARY {
            to.append(name.clone(), value.clone());
        }
    }
}
