//! Cross-origin requests, as a browser makes them: preflights for every route, answers
//! a page may read (errors included), and origins that are not allowed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use baton_http::api::ROUTES;
use baton_http::cors::{AllowedOrigins, CorsOptions};
use common::{TestApp, assert_envelope, read};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

const PAGE: &str = "https://app.example.com";

fn allowing(origins: AllowedOrigins) -> CorsOptions {
    CorsOptions {
        allowed_origins: origins,
        ..CorsOptions::default()
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .map(|v| v.to_str().unwrap())
        .unwrap_or_default()
}

/// The names in a comma-separated header, lower-cased.
fn names(headers: &HeaderMap, name: &str) -> Vec<String> {
    header(headers, name)
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

/// A browser's preflight of `method` on `path` from `origin`, asking for `headers`.
async fn preflight(
    app: &TestApp,
    origin: &str,
    method: &str,
    path: &str,
    headers: &str,
) -> reqwest::Response {
    app.http
        .request(reqwest::Method::OPTIONS, app.url(path))
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", headers)
        .send()
        .await
        .unwrap()
}

/// A page's `GET` of `path` from `origin`, with `key` if any: the answer.
async fn get_from(
    app: &TestApp,
    origin: &str,
    path: &str,
    key: Option<&str>,
) -> (StatusCode, HeaderMap, serde_json::Value) {
    let mut request = app.http.get(app.url(path)).header("origin", origin);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    read(request.send().await.unwrap()).await
}

/// A route's path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{task_id}", "1")
        .replace("{file_id}", "1")
        .replace("{agent_id}", "1")
        .replace("{prefix}", "abcdefgh")
        .replace("{delivery_id}", "1")
        .replace("{file}", "index.html")
}

#[tokio::test]
async fn every_route_answers_a_preflight_with_what_the_api_uses() {
    let app = TestApp::with_cors(allowing(AllowedOrigins::Listed(vec![PAGE.into()]))).await;
    for route in ROUTES {
        let method = route.method.to_ascii_uppercase();
        let path = concrete(route.path);
        let response = preflight(
            &app,
            PAGE,
            &method,
            &path,
            "authorization, content-type, idempotency-key, last-event-id, x-request-id",
        )
        .await;
        assert!(
            response.status().is_success(),
            "{method} {path}: {}",
            response.status()
        );
        let headers = response.headers();
        assert_eq!(header(headers, "access-control-allow-origin"), PAGE);
        assert!(
            names(headers, "access-control-allow-methods").contains(&method.to_ascii_lowercase()),
            "{method} {path}: {headers:?}"
        );
        let allowed = names(headers, "access-control-allow-headers");
        for wanted in [
            "authorization",
            "content-type",
            "idempotency-key",
            "last-event-id",
            "x-request-id",
        ] {
            assert!(
                allowed.contains(&wanted.to_owned()),
                "{wanted}: {allowed:?}"
            );
        }
        assert_eq!(header(headers, "access-control-max-age"), "600");
        assert!(headers.get("access-control-allow-credentials").is_none());
    }
}

#[tokio::test]
async fn a_page_reads_answers_and_the_headers_it_needs_errors_included() {
    let app = TestApp::with_cors(allowing(AllowedOrigins::Listed(vec![PAGE.into()]))).await;
    let response = app
        .http
        .post(app.url("/v1/chat/tasks"))
        .bearer_auth(&app.token)
        .header("origin", PAGE)
        .json(&json!({"agent_id": app.agent, "message": {"role": "user", "content": "hi"}}))
        .send()
        .await
        .unwrap();
    let (status, headers, _) = read(response).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
    assert!(names(&headers, "vary").contains(&"origin".to_owned()));
    let exposed = names(&headers, "access-control-expose-headers");
    for wanted in [
        "location",
        "x-request-id",
        "retry-after",
        "idempotent-replayed",
        "etag",
    ] {
        assert!(
            exposed.contains(&wanted.to_owned()),
            "{wanted}: {exposed:?}"
        );
    }

    // An error is rendered as the envelope after the CORS layer: it keeps the headers.
    let (status, headers, body) =
        get_from(&app, PAGE, "/v1/chat/tasks/1", Some("bt_not_a_key")).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
    assert!(names(&headers, "access-control-expose-headers").contains(&"x-request-id".to_owned()));
    // An unknown route too.
    let (status, headers, body) = get_from(&app, PAGE, "/v1/nothing-here", None).await;
    assert_envelope(status, &headers, &body, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
}

#[tokio::test]
async fn other_origins_get_nothing_a_browser_would_let_them_read() {
    let app = TestApp::with_cors(allowing(AllowedOrigins::Listed(vec![PAGE.into()]))).await;
    // A preflight from another origin is refused, as an envelope.
    let (status, headers, body) = read(
        preflight(
            &app,
            "https://evil.example",
            "POST",
            "/v1/chat/tasks",
            "authorization",
        )
        .await,
    )
    .await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(headers.get("access-control-allow-origin").is_none());
    // A header the API does not use is not allowed either.
    let (status, headers, body) =
        read(preflight(&app, PAGE, "POST", "/v1/chat/tasks", "x-something-else").await).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    // A simple request from another origin is served (CORS protects the page's reader,
    // not the server) but carries no grant, so the browser hides the answer.
    let (status, headers, _) = get_from(&app, "https://evil.example", "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn any_origin_is_a_wildcard() {
    let app = TestApp::with_cors(allowing(AllowedOrigins::Any)).await;
    let response = preflight(
        &app,
        "https://anywhere.example",
        "GET",
        "/v1/chat/tasks",
        "authorization",
    )
    .await;
    assert!(response.status().is_success());
    assert_eq!(
        header(response.headers(), "access-control-allow-origin"),
        "*"
    );
    let (_, headers, _) = app.get_full(&app.token, "/v1/chat/tasks").await;
    // Without an Origin there is nothing to grant.
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let app = TestApp::start().await;
    let (status, headers, body) =
        read(preflight(&app, PAGE, "POST", "/v1/chat/tasks", "authorization").await).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert!(headers.get("access-control-allow-origin").is_none());
    let (_, headers, _) = get_from(&app, PAGE, "/healthz", None).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn a_draining_servers_refusal_is_readable_by_a_page() {
    let app = TestApp::with_cors(allowing(AllowedOrigins::Listed(vec![PAGE.into()]))).await;
    app.shutdown.draining.cancel();
    let (status, headers, body) = get_from(&app, PAGE, "/v1/chat/tasks", Some(&app.token)).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
    );
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
    // The probes still answer.
    let (status, headers, _) = get_from(&app, PAGE, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "access-control-allow-origin"), PAGE);
}
