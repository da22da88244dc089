//! Attachments through the real server: sent inline, shown by id, downloaded, refused
//! clearly when too large or malformed.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn with_file(agent: i64, data: &str) -> Value {
    json!({"agent_id": agent, "message": {"content": {
        "type": "text", "content": "summarize this",
        "attachments": [{"filename": "report \"Q3\".csv", "media_type": "text/csv", "data": data}],
    }}})
}

#[tokio::test]
async fn a_file_sent_by_its_url_is_kept_by_reference() {
    let app = small_limit_app().await;
    let linked = json!({"filename": "chart.png", "media_type": "image/png",
                        "url": "https://files.example/chart.png?v=2"});
    let body = json!({"agent_id": app.agent, "message": {"content": {
        "type": "text", "content": "see", "attachments": [linked]}}});
    let (status, _, accepted) = app.post(&app.token, "/v1/chat/tasks", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let task = accepted["task_id"].as_i64().unwrap();
    let view = app.settled(&app.token, task).await;
    assert_eq!(
        view["input"]["attachments"][0], linked,
        "as sent: no file, no bytes"
    );
}

async fn small_limit_app() -> TestApp {
    TestApp::with_limits(
        baton_http::DEFAULT_BODY_LIMIT,
        baton_http::sse::SseOptions::default(),
        baton_http::limits::RequestLimits::default(),
        baton_domain::SubmitLimits {
            max_attachment_bytes: 16,
            ..Default::default()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attachment_is_shown_by_id_and_downloaded_as_sent() {
    let app = small_limit_app().await;
    // "a,b\n1,2\n" in base64.
    let (status, _, accepted) = app
        .post(
            &app.token,
            "/v1/chat/tasks",
            with_file(app.agent, "YSxiCjEsMgo="),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let task = accepted["task_id"].as_i64().unwrap();
    let view = app.settled(&app.token, task).await;
    let shown = &view["input"]["attachments"][0];
    assert_eq!(shown["filename"], "report \"Q3\".csv");
    assert_eq!(shown["size_bytes"], 8);
    assert!(shown.get("data").is_none(), "{shown}");
    let file_id = shown["file_id"].as_i64().unwrap();
    let (_, history) = app
        .get(&app.token, &format!("/v1/chat/tasks/{task}/messages"))
        .await;
    assert_eq!(history["data"][0]["content"]["attachments"][0], *shown);

    let path = format!("/v1/chat/tasks/{task}/files/{file_id}");
    let response = app
        .http
        .get(app.url(&path))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/csv");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"report__Q3_.csv\""
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), b"a,b\n1,2\n");

    // Another agent's key finds nothing; nor does a wrong id.
    let (_, other) = app.agent_with_key(json!({})).await;
    for (token, path) in [
        (other.as_str(), path.clone()),
        (
            app.token.as_str(),
            format!("/v1/chat/tasks/{task}/files/{}", file_id + 7),
        ),
        (app.token.as_str(), format!("/v1/chat/tasks/{task}/files/x")),
    ] {
        let response = app
            .http
            .get(app.url(&path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let (status, headers, body) = read(response).await;
        assert_envelope(status, &headers, &body, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_large_or_malformed_attachments_are_refused_and_nothing_is_stored() {
    let app = small_limit_app().await;
    // 17 bytes: one more than the limit.
    let big = "QUJDREVGR0hJSktMTU5PUFE=";
    let (status, headers, body) = app
        .post(&app.token, "/v1/chat/tasks", with_file(app.agent, big))
        .await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 16"),
        "{body}"
    );

    let cases = [
        (
            json!({"filename": "a.txt", "media_type": "text/plain", "data": "not base64!"}),
            "data",
        ),
        (
            json!({"filename": "a.txt", "media_type": "text/plain"}),
            "data",
        ),
        (
            json!({"filename": "../a.txt", "media_type": "text/plain", "data": "YQ=="}),
            "filename",
        ),
        (
            json!({"filename": "a.txt", "media_type": "plain", "data": "YQ=="}),
            "media_type",
        ),
        (
            json!({"filename": "a.txt", "media_type": "text/plain", "data": "YQ==", "file_id": 1}),
            "file_id",
        ),
        // A file by reference: an http(s) URL, and not with its bytes as well.
        (
            json!({"filename": "a.png", "media_type": "image/png", "url": "javascript:alert(1)"}),
            "url",
        ),
        (
            json!({"filename": "a.png", "media_type": "image/png", "url": "https://user:pw@x.example/a.png"}),
            "url",
        ),
        (
            json!({"filename": "a.png", "media_type": "image/png", "url": "https://x.example/a.png", "data": "YQ=="}),
            "url",
        ),
    ];
    for (attachment, field) in cases {
        let body = json!({"agent_id": app.agent, "message": {"content": {
            "type": "text", "content": "x", "attachments": [attachment]}}});
        let (status, headers, err) = app.post(&app.token, "/v1/chat/tasks", body).await;
        assert_envelope(
            status,
            &headers,
            &err,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(
            err["error"]["fields"][0]["field"],
            format!("message.content.attachments[0].{field}"),
            "{err}"
        );
    }
    let nine: Vec<Value> = (0..9)
        .map(|i| json!({"filename": format!("f{i}.txt"), "media_type": "text/plain", "data": "YQ=="}))
        .collect();
    let body = json!({"agent_id": app.agent, "message": {"content": {
        "type": "text", "content": "x", "attachments": nine}}});
    let (status, headers, err) = app.post(&app.token, "/v1/chat/tasks", body).await;
    assert_envelope(
        status,
        &headers,
        &err,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    assert_eq!(
        err["error"]["fields"][0]["field"],
        "message.content.attachments"
    );
    assert_eq!(err["error"]["fields"].as_array().unwrap().len(), 1, "{err}");

    let (_, tasks) = app.get(&app.token, "/v1/chat/tasks").await;
    assert_eq!(tasks["data"], json!([]), "nothing was stored");
}
