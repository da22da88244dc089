//! Streams a browser can open: a short-lived token for one task's stream, minted with
//! a key and carried in the URL (a browser's `EventSource` cannot send a header).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use common::{TestApp, assert_envelope, read};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Mints a stream token for `task` with `key`: the answer's status, headers and body.
async fn mint(
    app: &TestApp,
    key: &str,
    task: i64,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    app.post(
        key,
        &format!("/v1/chat/tasks/{task}/stream-token"),
        json!({}),
    )
    .await
}

/// Opens `path` with no `Authorization` header, as `EventSource` does.
async fn open_without_header(app: &TestApp, path: &str) -> reqwest::Response {
    app.http.get(app.url(path)).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minted_token_opens_its_tasks_stream_without_a_header() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "hello token").await;
    app.settled(&app.token, task).await;
    let (status, headers, body) = mint(&app, &app.token, task).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let token = body["token"].as_str().unwrap();
    let expires: chrono::DateTime<chrono::Utc> =
        body["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires - chrono::Utc::now();
    assert!(
        lifetime > chrono::Duration::minutes(4) && lifetime <= chrono::Duration::minutes(5),
        "{lifetime}"
    );
    let url = body["stream_url"].as_str().unwrap();
    assert_eq!(url, format!("/v1/chat/tasks/{task}/stream?token={token}"));

    let response = open_without_header(&app, &format!("{url}&until=final")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let events: Vec<_> = response
        .bytes_stream()
        .eventsource()
        .map(|event| event.unwrap())
        .collect()
        .await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"turn_started"), "{names:?}");
    assert_eq!(names.last(), Some(&"final"), "{names:?}");
    // Resuming with the token and a cursor, as a reconnecting EventSource does.
    let last = events[events.len() - 2].id.clone();
    let response = app
        .http
        .get(app.url(&format!("{url}&until=final")))
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    let resumed: Vec<_> = response
        .bytes_stream()
        .eventsource()
        .map(|event| event.unwrap().event)
        .collect()
        .await;
    assert_eq!(resumed, ["final"]);
}

/// Asserts that an answer is the `401 unauthorized` envelope; its message.
fn unauthorized(
    (status, headers, body): (StatusCode, reqwest::header::HeaderMap, Value),
) -> String {
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// Opens `path` with no header: the `401` envelope's message.
async fn refused_without_header(app: &TestApp, path: &str) -> String {
    unauthorized(read(open_without_header(app, path).await).await)
}

#[tokio::test]
async fn a_token_opens_nothing_but_its_tasks_stream() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "one").await;
    let other = app.create_task(&app.token, app.agent, "two").await;
    let (_, _, body) = mint(&app, &app.token, task).await;
    let token = body["token"].as_str().unwrap().to_owned();

    // Another task's stream.
    let why = refused_without_header(
        &app,
        &format!("/v1/chat/tasks/{other}/stream?token={token}"),
    )
    .await;
    assert!(why.contains("is for another task"), "{why}");
    // Another route of the same task, with the token in the query or as a bearer key.
    refused_without_header(&app, &format!("/v1/chat/tasks/{task}?token={token}")).await;
    unauthorized(
        app.get_full(&token, &format!("/v1/chat/tasks/{task}"))
            .await,
    );
    // A bearer key wins over a token: a stream opened with a header is the key's.
    unauthorized(
        app.get_full(
            &token,
            &format!("/v1/chat/tasks/{task}/stream?token={token}"),
        )
        .await,
    );
    // No token, an empty one, garbage, or a forged one.
    let forged = {
        let (head, _) = token.rsplit_once('.').unwrap();
        format!("{head}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    };
    for query in [
        String::new(),
        "?token=".to_owned(),
        "?token=nonsense".to_owned(),
        format!("?token={}", app.token),
        format!("?token={forged}"),
    ] {
        refused_without_header(&app, &format!("/v1/chat/tasks/{task}/stream{query}")).await;
    }
}

#[tokio::test]
async fn tokens_are_minted_only_for_the_keys_own_tasks_and_die_with_the_key() {
    let app = TestApp::start().await;
    let (other_agent, other_key) = app.agent_with_key(json!({})).await;
    let theirs = app.create_task(&other_key, other_agent, "theirs").await;
    let (status, headers, body) = mint(&app, &app.token, theirs).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::NOT_FOUND,
        "task_not_found",
    );
    unauthorized(mint(&app, "bt_nope_nope", theirs).await);

    let (status, _, body) = mint(&app, &other_key, theirs).await;
    assert_eq!(status, StatusCode::OK);
    let url = body["stream_url"].as_str().unwrap().to_owned();
    let prefix = other_key.split('_').nth(1).unwrap();
    assert!(app.admin.revoke_key(prefix).await.unwrap());
    let why = refused_without_header(&app, &url).await;
    assert!(why.contains("valid, unrevoked key"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_opened_with_a_token_follows_the_task_live() {
    let app = TestApp::start().await;
    let (agent, key) = app.agent_with_key(json!({"delay_ms": 300})).await;
    let task = app.create_task(&key, agent, "slowly now").await;
    let (_, _, body) = mint(&app, &key, task).await;
    let url = body["stream_url"].as_str().unwrap();
    let response = open_without_header(&app, &format!("{url}&until=final")).await;
    let mut events = response.bytes_stream().eventsource();
    let mut names = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .unwrap()
    {
        names.push(event.unwrap().event);
    }
    assert_eq!(names.last().map(String::as_str), Some("final"), "{names:?}");
    assert!(names.iter().any(|n| n == "text_delta"), "{names:?}");
}
