//! The admin API through the real server: agents, keys, redelivery, behind the token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use common::{ADMIN_TOKEN, TestApp, assert_envelope, read};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    read(request.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_token_opens_the_admin_api() {
    let app = TestApp::start().await;
    for token in [app.token.as_str(), "wrong", ""] {
        let response = app
            .http
            .get(app.url("/v1/admin/agents"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let (status, headers, body) = read(response).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    // And the admin token is no agent key.
    let (status, _) = app.get(ADMIN_TOKEN, "/v1/chat/tasks").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_are_created_listed_read_and_updated() {
    let app = TestApp::start().await;
    let (status, headers, created) = admin(
        &app,
        Method::POST,
        "/v1/admin/agents",
        Some(
            json!({"name": "helper", "runner": {"kind": "echo", "config": {"delay_ms": 10}},
                    "policy": {"on_interrupt": "retry"},
                    "webhook": {"url": "https://hooks.example.com/baton"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["agent_id"].as_i64().unwrap();
    assert_eq!(headers["location"], format!("/v1/admin/agents/{id}"));
    assert_eq!(
        created["policy"],
        json!({"on_interrupt": "retry", "max_attempts": 3, "turn_timeout_ms": 600000, "on_busy": "reject"})
    );
    assert_eq!(
        created["webhook"],
        json!({"url": "https://hooks.example.com/baton"})
    );
    let secret = created["webhook_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "a made secret is shown once");

    let (status, _, read_back) =
        admin(&app, Method::GET, &format!("/v1/admin/agents/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        read_back.get("webhook_secret").is_none(),
        "never shown again: {read_back}"
    );
    assert!(!read_back.to_string().contains(secret));

    let (status, _, page) = admin(&app, Method::GET, "/v1/admin/agents?limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["data"].as_array().unwrap().len(), 1);
    let next = page["next_cursor"].as_str().unwrap();
    let (_, _, rest) = admin(
        &app,
        Method::GET,
        &format!("/v1/admin/agents?limit=10&cursor={next}"),
        None,
    )
    .await;
    assert!(
        rest["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["agent_id"] == id)
    );

    let (status, _, updated) = admin(
        &app,
        Method::PATCH,
        &format!("/v1/admin/agents/{id}"),
        Some(
            json!({"name": "renamed", "policy": {"max_attempts": 5, "on_busy": "enqueue"}, "webhook": null}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["name"], "renamed");
    assert_eq!(
        updated["policy"]["on_interrupt"], "retry",
        "unnamed policy fields are kept"
    );
    assert_eq!(updated["policy"]["max_attempts"], 5);
    assert_eq!(updated["policy"]["on_busy"], "enqueue");
    assert_eq!(updated["webhook"], Value::Null);
    assert_eq!(updated["runner"], created["runner"]);
    assert_eq!(updated["card"], Value::Null, "no card until one is set");

    // The A2A card's config: set, kept by a change that does not name it, removed.
    let card = json!({"description": "Finds things.", "skills": [
        {"id": "find", "name": "Find", "description": "Finds a thing.", "tags": ["search"]}]});
    let path = format!("/v1/admin/agents/{id}");
    let (status, _, carded) = admin(&app, Method::PATCH, &path, Some(json!({"card": card}))).await;
    assert_eq!(status, StatusCode::OK, "{carded}");
    assert_eq!(carded["card"]["skills"][0]["id"], "find", "{carded}");
    let (_, _, renamed) = admin(&app, Method::PATCH, &path, Some(json!({"name": "again"}))).await;
    assert_eq!(renamed["card"], carded["card"]);
    let (_, _, removed) = admin(&app, Method::PATCH, &path, Some(json!({"card": null}))).await;
    assert_eq!(removed["card"], Value::Null, "{removed}");

    for (body, field) in [
        (
            json!({"name": "x", "runner": {"kind": "nope"}}),
            "runner.kind",
        ),
        (json!({"name": "", "runner": {"kind": "echo"}}), "name"),
        // Found by schemathesis: a null configuration was stored as null.
        (
            json!({"name": "x", "runner": {"kind": "echo", "config": null}}),
            "runner.config",
        ),
        (
            json!({"name": "x", "runner": {"kind": "echo", "config": [1]}}),
            "runner.config",
        ),
        (
            json!({"name": "x", "runner": {"kind": "echo"}, "policy": {"max_attempts": 0}}),
            "policy.max_attempts",
        ),
        (
            json!({"name": "x", "runner": {"kind": "echo"}, "webhook": {"url": "https://127.0.0.1/"}}),
            "webhook.url",
        ),
        (
            json!({"name": "x", "runner": {"kind": "echo"}, "policy": {"on_busy": "later"}}),
            "policy.on_busy",
        ),
        (
            json!({"name": "x", "runner": {"kind": "echo"}, "card": {"skills": [
                {"id": "a b", "name": "A", "description": "B"}]}}),
            "card.skills[0].id",
        ),
    ] {
        let (status, headers, err) =
            admin(&app, Method::POST, "/v1/admin/agents", Some(body)).await;
        assert_envelope(
            status,
            &headers,
            &err,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(err["error"]["fields"][0]["field"], field, "{err}");
    }
    let (status, headers, err) = admin(
        &app,
        Method::PATCH,
        "/v1/admin/agents/987654",
        Some(json!({})),
    )
    .await;
    assert_envelope(
        status,
        &headers,
        &err,
        StatusCode::NOT_FOUND,
        "agent_not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_made_shown_once_listed_with_last_use_and_revoked() {
    let app = TestApp::start().await;
    let path = format!("/v1/admin/agents/{}/keys", app.agent);
    let (status, _, created) = admin(&app, Method::POST, &path, None).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["key"].as_str().unwrap().to_owned();
    let prefix = created["prefix"].as_str().unwrap().to_owned();
    assert!(token.contains(&prefix));
    assert_eq!(created["last_used_at"], Value::Null);

    let (status, _) = app.get(&token, "/v1/chat/tasks").await;
    assert_eq!(status, StatusCode::OK, "the new key works");
    let (_, _, listed) = admin(&app, Method::GET, &path, None).await;
    let mine = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["prefix"] == prefix.as_str())
        .unwrap()
        .clone();
    assert!(mine["last_used_at"].is_string(), "{mine}");
    assert!(
        !listed.to_string().contains(&token),
        "secrets are never listed"
    );

    let (status, _, _) = admin(
        &app,
        Method::DELETE,
        &format!("/v1/admin/keys/{prefix}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.get(&token, "/v1/chat/tasks").await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, headers, err) = admin(
        &app,
        Method::DELETE,
        &format!("/v1/admin/keys/{prefix}"),
        None,
    )
    .await;
    assert_envelope(status, &headers, &err, StatusCode::NOT_FOUND, "not_found");
    let (status, headers, err) =
        admin(&app, Method::POST, "/v1/admin/agents/987654/keys", None).await;
    assert_envelope(
        status,
        &headers,
        &err,
        StatusCode::NOT_FOUND,
        "agent_not_found",
    );
    let (status, headers, err) = admin(
        &app,
        Method::POST,
        "/v1/admin/webhook-deliveries/987654/redeliver",
        None,
    )
    .await;
    assert_envelope(status, &headers, &err, StatusCode::NOT_FOUND, "not_found");
}
