//! The V1 API end to end: real HTTP through the actix server, a real SQLite file, the
//! echo runner.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestApp, assert_envelope, read};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_task_is_accepted_with_location_and_the_echo_turn_completes() {
    let app = TestApp::start().await;
    let (status, headers, body) = app
        .post(
            &app.token,
            "/v1/chat/tasks",
            json!({"agent_id": app.agent, "message": {"content": "hello"}, "metadata": {"trace": {"id": 7}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let task = body["task_id"].as_i64().unwrap();
    assert_eq!(
        headers["location"],
        format!("/v1/chat/tasks/{task}").as_str()
    );
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(body["agent_id"], app.agent);
    assert_eq!(body["status"], "running");
    assert!(body["turn_id"].as_i64().is_some());
    assert_eq!(body["metadata"], json!({"trace": {"id": 7}}));
    assert!(body["accepted_at"].as_str().unwrap().ends_with('Z'));

    let done = app.settled(&app.token, task).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(
        done["metadata"],
        json!({"trace": {"id": 7}}),
        "metadata passes through unchanged"
    );
    assert_eq!(done["latest_turn"]["turn_id"], body["turn_id"]);
    assert_eq!(done["latest_turn"]["error"], Value::Null);
    assert_eq!(done["latest_message"]["role"], "assistant");
    assert_eq!(
        done["latest_message"]["content"],
        json!({"type": "text", "format": "plain", "content": "echo: hello"})
    );
    assert_eq!(
        done["input"],
        json!({"type": "text", "format": "plain", "content": "hello"})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_turn_conversation_with_a_busy_409_that_names_the_running_turn() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 400})).await;
    let first = app.create(&token, agent, "one").await;
    let task = first["task_id"].as_i64().unwrap();
    let path = format!("/v1/chat/tasks/{task}/messages");

    let (status, headers, body) = app
        .post(
            &token,
            &path,
            json!({"agent_id": agent, "message": {"role": "user", "content": "two"}}),
        )
        .await;
    assert_envelope(status, &headers, &body, StatusCode::CONFLICT, "task_busy");
    assert_eq!(body["error"]["active_turn"]["turn_id"], first["turn_id"]);
    assert!(body["error"]["active_turn"]["started_at"].is_string());
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("running")
    );
    assert_eq!(headers["retry-after"], "1");

    assert_eq!(app.settled(&token, task).await["status"], "completed");
    let (status, headers, second) = app
        .post(
            &token,
            &path,
            json!({"agent_id": agent, "message": {"role": "user", "content": "two"}, "metadata": {"n": 2}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(
        headers["location"],
        format!("/v1/chat/tasks/{task}").as_str()
    );
    assert_eq!(second["task_id"], task);
    assert_ne!(second["turn_id"], first["turn_id"]);
    let done = app.settled(&token, task).await;
    assert_eq!(done["latest_turn"]["metadata"], json!({"n": 2}));
    assert_eq!(done["latest_message"]["content"]["content"], "echo: two");

    let (status, history) = app.get(&token, &path).await;
    assert_eq!(status, StatusCode::OK);
    let texts: Vec<_> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"]["content"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("user", "one"),
        ("assistant", "echo: one"),
        ("user", "two"),
        ("assistant", "echo: two"),
    ];
    assert_eq!(texts, want.map(|(r, t)| (r.to_owned(), t.to_owned())));
    assert_eq!(history["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_appends_to_an_idle_task_give_one_202_and_49_task_busy() {
    let app = Arc::new(TestApp::start().await);
    // Long enough that the 50 requests all arrive while the winner's turn runs, even
    // on a loaded 2-core machine (300 ms once let a late request find the task idle).
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 2000})).await;
    let first = app.create(&token, agent, "start").await;
    let task = first["task_id"].as_i64().unwrap();
    app.settled(&token, task).await;

    let path = format!("/v1/chat/tasks/{task}/messages");
    let requests = (0..50).map(|i| {
        let app = app.clone();
        let token = token.clone();
        let path = path.clone();
        tokio::spawn(async move {
            app.post(
                &token,
                &path,
                json!({"agent_id": agent, "message": {"content": format!("m{i}")}}),
            )
            .await
        })
    });
    let mut accepted = Vec::new();
    let mut busy = 0;
    for request in requests {
        let (status, _, body) = request.await.unwrap();
        match status {
            StatusCode::ACCEPTED => accepted.push(body),
            StatusCode::CONFLICT => {
                assert_eq!(body["error"]["code"], "task_busy");
                busy += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((accepted.len(), busy), (1, 49));
    let done = app.settled(&token, task).await;
    assert_eq!(done["latest_turn"]["turn_id"], accepted[0]["turn_id"]);

    // Exactly one new turn: every turn starts with one user message, so count the
    // distinct turns of the stored user messages.
    let (_, history) = app.get(&token, &format!("{path}?limit=100")).await;
    let user_turns: std::collections::BTreeSet<_> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "user")
        .map(|m| m["turn_id"].as_i64().unwrap())
        .collect();
    assert_eq!(user_turns.len(), 2, "{history}");
    assert_eq!(history["data"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_runner_fails_the_turn_and_the_task_accepts_the_next_message() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"fail": true})).await;
    let task = app.create_task(&token, agent, "x").await;
    let done = app.settled(&token, task).await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["latest_turn"]["status"], "failed");
    assert_eq!(done["latest_turn"]["error"]["code"], "echo_failed");
    assert!(done["latest_turn"]["ended_at"].is_string());
    let (status, _, body) = app
        .post(
            &token,
            &format!("/v1/chat/tasks/{task}/messages"),
            json!({"agent_id": agent, "message": {"content": "again"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_and_messages_page_with_opaque_cursors() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            app.create_task(&app.token, app.agent, &format!("t{i}"))
                .await,
        );
    }
    let (status, page1) = app.get(&app.token, "/v1/chat/tasks?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    let got: Vec<_> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[2], ids[1]], "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(
            &app.token,
            &format!("/v1/chat/tasks?limit=2&cursor={cursor}"),
        )
        .await;
    let got: Vec<_> = page2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task_id"].as_i64().unwrap())
        .collect();
    assert_eq!(got, [ids[0]]);
    assert_eq!(page2["next_cursor"], Value::Null);

    app.settled(&app.token, ids[0]).await;
    let (_, m1) = app
        .get(
            &app.token,
            &format!("/v1/chat/tasks/{}/messages?limit=1", ids[0]),
        )
        .await;
    assert_eq!(m1["data"][0]["role"], "user");
    let cursor = m1["next_cursor"].as_str().unwrap();
    let (_, m2) = app
        .get(
            &app.token,
            &format!("/v1/chat/tasks/{}/messages?limit=1&cursor={cursor}", ids[0]),
        )
        .await;
    assert_eq!(m2["data"][0]["role"], "assistant");
    assert_eq!(m2["next_cursor"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_listed_by_status_and_a_bad_status_is_422() {
    let app = TestApp::start().await;
    let (slow, key) = app.agent_with_key(json!({"delay_ms": 60_000})).await;
    let (failing, failing_key) = app.agent_with_key(json!({"fail": true})).await;
    let waiting = app.create_task(&key, slow, "take your time").await;
    let done = app.create_task(&key, slow, "and another").await;
    let (status, _, cancelled) = app
        .post(&key, &format!("/v1/chat/tasks/{done}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let failed = app.create_task(&failing_key, failing, "fail").await;
    app.settled(&failing_key, failed).await;

    let ids = |page: &Value| -> Vec<i64> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["task_id"].as_i64().unwrap())
            .collect()
    };
    let (status, running) = app.get(&key, "/v1/chat/tasks?status=running").await;
    assert_eq!(status, StatusCode::OK, "{running}");
    assert_eq!(ids(&running), [waiting]);
    let (_, page) = app
        .get(&key, "/v1/chat/tasks?status=cancelled&limit=5")
        .await;
    assert_eq!(ids(&page), [done]);
    let (_, page) = app.get(&key, "/v1/chat/tasks?status=completed").await;
    assert_eq!(ids(&page), Vec::<i64>::new());
    let (_, page) = app.get(&failing_key, "/v1/chat/tasks?status=failed").await;
    assert_eq!(ids(&page), [failed]);
    let (_, page) = app.get(&key, "/v1/chat/tasks").await;
    assert_eq!(ids(&page), [done, waiting]);

    for bad in ["done", "", "RUNNING"] {
        let (status, body) = app.get(&key, &format!("/v1/chat/tasks?status={bad}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["error"]["fields"][0]["field"], "status", "{body}");
        assert!(
            body["error"]["fields"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("running, requires_action, completed, failed, cancelled"),
            "{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_tells_its_agent() {
    let app = TestApp::start().await;
    let (agent, key) = app.agent_with_key(json!({})).await;
    let (status, body) = app.get(&key, "/v1/chat/agent").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["agent_id"], agent, "{body}");
    assert_eq!(body["runner_kind"], "echo", "{body}");
    assert_eq!(body["on_busy"], "reject", "the default: {body}");
    assert!(
        body["name"].is_string() && body["created_at"].is_string(),
        "{body}"
    );
    assert!(
        body.get("runner").is_none() && body.get("webhook").is_none(),
        "{body}"
    );
    let (status, body) = app.get(&app.token, "/v1/chat/agent").await;
    assert_eq!(
        (status, body["agent_id"].clone()),
        (StatusCode::OK, json!(app.agent))
    );
    let (status, _) = app.get("bt_nope_nope", "/v1/chat/agent").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_page_parameters_are_422_naming_the_parameter() {
    let app = TestApp::start().await;
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=x", "limit"),
        ("cursor=42", "cursor"),
    ] {
        let (status, headers, body) = app
            .get_full(&app.token, &format!("/v1/chat/tasks?{query}"))
            .await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(
            body["error"]["fields"][0]["field"], field,
            "{query}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_invalid_and_revoked_keys_are_401() {
    let app = TestApp::start().await;
    let body = json!({"agent_id": app.agent, "message": {"content": "x"}});
    let no_key = app
        .http
        .post(app.url("/v1/chat/tasks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.headers()["www-authenticate"], "Bearer");
    let (status, headers, envelope) = read(no_key).await;
    assert_envelope(
        status,
        &headers,
        &envelope,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    for token in ["bt_wrong_key", ""] {
        let (status, headers, envelope) = app.post(token, "/v1/chat/tasks", body.clone()).await;
        assert_envelope(
            status,
            &headers,
            &envelope,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        );
    }
    let basic = app
        .http
        .get(app.url("/v1/chat/tasks"))
        .header("authorization", format!("Basic {}", app.token))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::UNAUTHORIZED);

    // An unauthenticated request is a 401 whatever its body.
    let response = app
        .http
        .post(app.url("/v1/chat/tasks"))
        .header("content-type", "text/plain")
        .body("{{{")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let (agent, token) = app.agent_with_key(json!({})).await;
    assert_eq!(app.get(&token, "/v1/chat/tasks").await.0, StatusCode::OK);
    assert!(app.admin.revoke_key(&token).await.unwrap());
    app.refused_post(
        &token,
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}}),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_agents_task_is_404_task_not_found_on_every_route() {
    let app = TestApp::start().await;
    let (other_agent, other_token) = app.agent_with_key(json!({})).await;
    let theirs = app.create_task(&other_token, other_agent, "private").await;
    for path in [
        format!("/v1/chat/tasks/{theirs}"),
        format!("/v1/chat/tasks/{theirs}/messages"),
    ] {
        let (status, headers, body) = app.get_full(&app.token, &path).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::NOT_FOUND,
            "task_not_found",
        );
    }
    app.refused_post(
        &app.token,
        &format!("/v1/chat/tasks/{theirs}/messages"),
        json!({"agent_id": app.agent, "message": {"content": "x"}}),
        StatusCode::NOT_FOUND,
        "task_not_found",
    )
    .await;
    // The same answer as for a task that does not exist at all.
    for missing in [
        "/v1/chat/tasks/999999",
        "/v1/chat/tasks/not-a-number",
        "/v1/chat/tasks/0/messages",
    ] {
        let (status, headers, body) = app.get_full(&app.token, missing).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::NOT_FOUND,
            "task_not_found",
        );
    }
    // And their task is not in our listing.
    let (_, listing) = app.get(&app.token, "/v1/chat/tasks").await;
    assert!(listing["data"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_id_other_than_the_keys_is_404_agent_not_found_and_creates_nothing() {
    let app = TestApp::start().await;
    let (other_agent, _) = app.agent_with_key(json!({})).await;
    app.refused_post(
        &app.token,
        "/v1/chat/tasks",
        json!({"agent_id": other_agent, "message": {"content": "x"}}),
        StatusCode::NOT_FOUND,
        "agent_not_found",
    )
    .await;
    let task = app.create_task(&app.token, app.agent, "mine").await;
    app.settled(&app.token, task).await;
    app.refused_post(
        &app.token,
        &format!("/v1/chat/tasks/{task}/messages"),
        json!({"agent_id": other_agent, "message": {"content": "x"}}),
        StatusCode::NOT_FOUND,
        "agent_not_found",
    )
    .await;
    let (_, listing) = app.get(&app.token, "/v1/chat/tasks").await;
    assert_eq!(listing["data"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bodies_are_422_naming_the_field_and_change_nothing() {
    let app = TestApp::start().await;
    let cases = [
        (
            json!({"agent_id": app.agent, "message": {"content": "  "}}),
            "message.content",
        ),
        (
            json!({"agent_id": app.agent, "message": {"role": "assistant", "content": "x"}}),
            "message.role",
        ),
        (
            json!({"agent_id": app.agent, "message": {"role": "robot", "content": "x"}}),
            "message.role",
        ),
        (
            json!({"agent_id": "seven", "message": {"content": "x"}}),
            "agent_id",
        ),
        (
            json!({"agent_id": app.agent, "message": {"content": "x", "colour": "red"}}),
            "message.colour",
        ),
        (
            json!({"agent_id": app.agent, "message": {"content": "x"}, "metdata": {}}),
            "metdata",
        ),
        (json!({"agent_id": app.agent}), "body"),
        (
            json!({"agent_id": app.agent, "message": {"content": {"type": "video"}}}),
            "message.content",
        ),
        (
            json!({"agent_id": app.agent, "message": {"content": "x"}, "metadata": []}),
            "metadata",
        ),
        (
            json!({"agent_id": app.agent, "message": {"content": "nul \u{0} here"}}),
            "message.content",
        ),
        (json!([1, 2]), "body"),
    ];
    for (body, field) in cases {
        let (status, headers, envelope) =
            app.post(&app.token, "/v1/chat/tasks", body.clone()).await;
        assert_envelope(
            status,
            &headers,
            &envelope,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(
            envelope["error"]["fields"][0]["field"], field,
            "{body}: {envelope}"
        );
        assert!(
            envelope["error"]["fields"][0]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty())
        );
    }
    let (_, listing) = app.get(&app.token, "/v1/chat/tasks").await;
    assert!(
        listing["data"].as_array().unwrap().is_empty(),
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_wrong_content_type_and_oversized_bodies_have_their_codes() {
    let app = TestApp::with_body_limit(2048).await;
    let send = |content_type: &'static str, body: Vec<u8>| {
        app.http
            .post(app.url("/v1/chat/tasks"))
            .bearer_auth(&app.token)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    for malformed in [&b"{\"agent_id\": "[..], b"{} trailing"] {
        let (status, headers, body) =
            read(send("application/json", malformed.to_vec()).await.unwrap()).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::BAD_REQUEST,
            "malformed_json",
        );
    }

    let valid =
        serde_json::to_vec(&json!({"agent_id": app.agent, "message": {"content": "x"}})).unwrap();
    let (status, headers, body) = read(send("text/plain", valid.clone()).await.unwrap()).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    let (status, _, body) = read(
        send("application/json; charset=utf-8", valid)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    let huge = serde_json::to_vec(
        &json!({"agent_id": app.agent, "message": {"content": "x".repeat(4096)}}),
    )
    .unwrap();
    let (status, headers, body) = read(send("application/json", huge).await.unwrap()).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("2048"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods_are_enveloped() {
    let app = TestApp::start().await;
    let response = app.http.get(app.url("/v2/nothing")).send().await.unwrap();
    let (status, headers, body) = read(response).await;
    assert_envelope(status, &headers, &body, StatusCode::NOT_FOUND, "not_found");

    let response = app
        .http
        .delete(app.url("/v1/chat/tasks"))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    let (status, headers, body) = read(response).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    // RFC 9110: a 405 lists what the path allows (found by schemathesis).
    assert_eq!(headers["allow"], "POST, GET, HEAD");
    for (path, allowed) in [
        ("/v1/chat/tasks/1/messages", "POST, GET, HEAD"),
        ("/v1/admin/agents/1", "GET, HEAD, PATCH"),
        ("/healthz", "GET, HEAD"),
    ] {
        let response = app.http.put(app.url(path)).send().await.unwrap();
        let (status, headers, body) = read(response).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        assert_eq!(headers["allow"], allowed, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_a_request_id_and_a_sane_client_id_is_kept() {
    let app = TestApp::start().await;
    let response = app
        .http
        .get(app.url("/v1/chat/tasks"))
        .bearer_auth(&app.token)
        .header("x-request-id", "client-abc_1.2")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-abc_1.2");
    let response = app
        .http
        .get(app.url("/v1/chat/tasks"))
        .bearer_auth(&app.token)
        .header("x-request-id", "has spaces and is not kept")
        .send()
        .await
        .unwrap();
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(id.starts_with("req_"), "{id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_when_the_turn_ends_not_before_and_not_on_a_timer() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 600})).await;
    let task = app.create_task(&token, agent, "slow").await;
    let started = Instant::now();
    let (status, body) = app
        .get(&token, &format!("/v1/chat/tasks/{task}?wait=30"))
        .await;
    let waited = started.elapsed();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["latest_message"]["content"]["content"], "echo: slow");
    assert!(
        waited >= Duration::from_millis(450),
        "returned before the turn ended: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // A task that is not running answers at once, whatever the wait.
    let started = Instant::now();
    let (_, body) = app
        .get(&token, &format!("/v1/chat/tasks/{task}?wait=30"))
        .await;
    assert_eq!(body["status"], "completed");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_gives_up_after_wait_seconds_with_the_task_still_running() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 10000})).await;
    let task = app.create_task(&token, agent, "very slow").await;
    let started = Instant::now();
    let (status, body) = app
        .get(&token, &format!("/v1/chat/tasks/{task}?wait=1"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "running");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(950) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // No wait answers at once.
    let started = Instant::now();
    let (_, body) = app.get(&token, &format!("/v1/chat/tasks/{task}")).await;
    assert_eq!(body["status"], "running");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_true_long_polls_to_the_end_and_wait_false_answers_at_once() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 1500})).await;
    let task = app.create_task(&token, agent, "a b c").await;
    let started = Instant::now();
    let (_, body) = app
        .get(&token, &format!("/v1/chat/tasks/{task}?wait=false"))
        .await;
    assert_eq!(body["status"], "running", "{body}");
    assert!(started.elapsed() < Duration::from_millis(500));
    let (status, body) = app
        .get(&token, &format!("/v1/chat/tasks/{task}?wait=true"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    assert!(started.elapsed() >= Duration::from_millis(1200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_wait_is_422_naming_wait_and_other_agents_tasks_are_404_even_when_waiting() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "x").await;
    // 2^63 is past an int64, as found by schemathesis.
    for wait in ["-1", "1.5", "soon", "9223372036854775808", ""] {
        let (status, headers, body) = app
            .get_full(&app.token, &format!("/v1/chat/tasks/{task}?wait={wait}"))
            .await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["error"]["fields"][0]["field"], "wait");
    }
    let (_, other_token) = app.agent_with_key(json!({})).await;
    let (status, body) = app
        .get(&other_token, &format!("/v1/chat/tasks/{task}?wait=5"))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "task_not_found");
}

/// Metadata is passed through unchanged, or refused: a number the server could only
/// round (2^64, a decimal past a double's precision) is a 422 that stores nothing;
/// the largest 64-bit integers come back digit for digit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_come_back_exactly_or_are_refused() {
    let app = TestApp::start().await;
    let post = |metadata: &str| {
        let body = format!(
            r#"{{"agent_id": {}, "message": {{"content": "n"}}, "metadata": {metadata}}}"#,
            app.agent
        );
        app.http
            .post(app.url("/v1/chat/tasks"))
            .bearer_auth(&app.token)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for lossy in ["18446744073709551616", "3.14159265358979323846"] {
        let response = post(&format!(r#"{{"n": {lossy}}}"#)).await.unwrap();
        let (status, headers, body) = read(response).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        let reason = body["error"]["fields"][0]["reason"].as_str().unwrap();
        assert!(reason.contains(lossy), "{reason}");
    }
    let (_, list) = app.get(&app.token, "/v1/chat/tasks").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "nothing stored");

    let exact = r#"{"max":18446744073709551615,"min":-9223372036854775808,"pi":3.141592653589793}"#;
    let response = post(exact).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let task: Value = response.json().await.unwrap();
    let text = app
        .http
        .get(app.url(&format!("/v1/chat/tasks/{}", task["task_id"])))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains(exact), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_keeps_its_own_metadata() {
    let app = TestApp::start().await;
    let (status, _, created) = app
        .post_with(
            &app.token,
            "/v1/chat/tasks",
            &[("Idempotency-Key", "message-metadata-1")],
            json!({"agent_id": app.agent, "message": {"content": "hi", "metadata": {"client": "ios", "draft": 3}},
                   "metadata": {"trace": "t-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let task = created["task_id"].as_i64().unwrap();
    app.settled(&app.token, task).await;
    let (_, history) = app
        .get(&app.token, &format!("/v1/chat/tasks/{task}/messages"))
        .await;
    assert_eq!(
        history["data"][0]["metadata"],
        json!({"client": "ios", "draft": 3}),
        "{history}"
    );
    assert_eq!(history["data"][1]["metadata"], json!({}), "{history}");
    let (_, view) = app.get(&app.token, &format!("/v1/chat/tasks/{task}")).await;
    assert_eq!(view["metadata"], json!({"trace": "t-1"}), "{view}");

    // The same key with other message metadata is another request.
    let (status, _, body) = app
        .post_with(
            &app.token,
            "/v1/chat/tasks",
            &[("Idempotency-Key", "message-metadata-1")],
            json!({"agent_id": app.agent, "message": {"content": "hi", "metadata": {"client": "web"}},
                   "metadata": {"trace": "t-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "idempotency_key_reused", "{body}");

    // Not an object, or NUL inside: refused, naming the field.
    for (metadata, field) in [
        (json!("ios"), "message.metadata"),
        (json!({"k": "a\u{0}b"}), "message.metadata.k"),
    ] {
        let (status, _, body) = app
            .post(
                &app.token,
                "/v1/chat/tasks",
                json!({"agent_id": app.agent, "message": {"content": "x", "metadata": metadata}}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["error"]["fields"][0]["field"], field, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_answers_with_envelopes_and_refuses_what_it_cannot_do() {
    let app = TestApp::start().await;
    let (agent, key) = app.agent_with_key(json!({"delay_ms": 30000})).await;
    let task = app.create_task(&key, agent, "first").await;
    let path = format!("/v1/chat/tasks/{task}/messages");
    let message = |on_busy: Value| json!({"agent_id": agent, "message": {"content": "next"}, "on_busy": on_busy});
    // An unknown strategy is refused naming the field; nothing is queued.
    let refused = app
        .refused_post(
            &key,
            &path,
            message(json!("later")),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    assert_eq!(
        refused["error"]["fields"][0]["field"], "on_busy",
        "{refused}"
    );
    // The default refuses, naming the running turn, and says how to queue instead.
    let busy = app
        .refused_post(
            &key,
            &path,
            message(Value::Null),
            StatusCode::CONFLICT,
            "task_busy",
        )
        .await;
    assert!(
        busy["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"on_busy\": \"enqueue\""),
        "{busy}"
    );
    let (_, queue) = app.get(&key, &format!("/v1/chat/tasks/{task}/queue")).await;
    assert_eq!(queue, json!({"data": []}));

    let (status, _, queued) = app.post(&key, &path, message(json!("enqueue"))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    assert_eq!(queued["status"], "queued");
    assert_eq!(queued["turn_id"], Value::Null);
    assert_eq!(queued["position"], 1);
    let id = queued["queued_message_id"].as_i64().unwrap();
    let (_, view) = app.get(&key, &format!("/v1/chat/tasks/{task}")).await;
    assert_eq!(view["queued"], 1, "{view}");
    let (status, entry) = app
        .get(&key, &format!("/v1/chat/tasks/{task}/queue/{id}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(entry["status"], "queued");
    assert_eq!(entry["mode"], "enqueue");
    assert_eq!(entry["message"]["content"]["content"], "next");

    // Unknown ids: a message of no task, a task of no one.
    for (path, code) in [
        (
            format!("/v1/chat/tasks/{task}/queue/999999"),
            "queued_message_not_found",
        ),
        (
            format!("/v1/chat/tasks/{task}/queue/nope"),
            "queued_message_not_found",
        ),
        (
            format!("/v1/chat/tasks/999999/queue/{id}"),
            "task_not_found",
        ),
        ("/v1/chat/tasks/999999/queue".to_owned(), "task_not_found"),
    ] {
        let (status, headers, body) = app.get_full(&key, &path).await;
        assert_envelope(status, &headers, &body, StatusCode::NOT_FOUND, code);
    }
    let (other_agent, other_key) = app.agent_with_key(json!({})).await;
    assert_ne!(other_agent, agent);
    let (status, headers, body) = app
        .get_full(&other_key, &format!("/v1/chat/tasks/{task}/queue/{id}"))
        .await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::NOT_FOUND,
        "task_not_found",
    );

    // Cancelled, and cancelled again: the same answer.
    for _ in 0..2 {
        let response = app
            .http
            .delete(app.url(&format!("/v1/chat/tasks/{task}/queue/{id}")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let (status, _, cancelled) = read(response).await;
        assert_eq!(status, StatusCode::OK, "{cancelled}");
        assert_eq!(cancelled["status"], "cancelled");
    }
    let (_, view) = app.get(&key, &format!("/v1/chat/tasks/{task}")).await;
    assert_eq!(view["queued"], 0, "{view}");
}
