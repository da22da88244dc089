//! Cancel, turn timeouts, idempotency keys and a graceful stop, through the real server
//! on a real SQLite file with the echo runner.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::time::Duration;

use baton_domain::TurnPolicy;
use common::{TestApp, assert_envelope};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn message(agent: i64, text: &str) -> Value {
    json!({"agent_id": agent, "message": {"role": "user", "content": text}})
}

/// The task's event stream, opened.
async fn open_stream(app: &TestApp, token: &str, task: i64) -> reqwest::Response {
    let stream = app
        .http
        .get(app.url(&format!("/v1/chat/tasks/{task}/stream")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    stream
}

/// Waits until the task's first agent message has some streamed text.
async fn until_partial_text(app: &TestApp, token: &str, task: i64) -> String {
    for _ in 0..500 {
        let (_, history) = app
            .get(token, &format!("/v1/chat/tasks/{task}/messages"))
            .await;
        if let Some(text) = history["data"][1]["content"]["content"].as_str()
            && !text.is_empty()
        {
            return text.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no streamed text within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_turn_keeps_partial_text_and_discards_late_output() {
    let app = TestApp::start().await;
    // Four words over 2 s: "echo: " comes after 0.5 s, the rest later.
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 2000})).await;
    let task = app.create_task(&token, agent, "one two three").await;
    let partial = until_partial_text(&app, &token, task).await;
    let cancel = format!("/v1/chat/tasks/{task}/cancel");

    let (status, _, first) = app.post(&token, &cancel, json!({})).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["status"], "cancelled");
    assert_eq!(first["latest_turn"]["status"], "cancelled");
    let (status, _, again) = app.post(&token, &cancel, Value::Null).await;
    assert_eq!(
        (status, &again),
        (StatusCode::OK, &first),
        "a repeated cancel answers as the first"
    );

    // The runner would have finished by now; nothing it said after the cancel shows.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let (_, view) = app.get(&token, &format!("/v1/chat/tasks/{task}")).await;
    assert_eq!(view["status"], "cancelled");
    let (_, history) = app
        .get(&token, &format!("/v1/chat/tasks/{task}/messages"))
        .await;
    let messages = history["data"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{history}");
    let kept = messages[1]["content"]["content"].as_str().unwrap();
    assert!(
        kept.starts_with(&partial) && kept != "echo: one two three",
        "{kept}"
    );
    assert_eq!(messages[1]["streaming_status"], "done");
    let stream = app
        .http
        .get(app.url(&format!("/v1/chat/tasks/{task}/stream?until=final")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let kinds: Vec<String> = stream
        .bytes_stream()
        .eventsource()
        .map(|event| event.unwrap().event)
        .collect()
        .await;
    assert_eq!(kinds.first().map(String::as_str), Some("turn_started"));
    assert_eq!(kinds.last().map(String::as_str), Some("cancelled"));

    // The task takes the next message, and the cancelled turn's output never leaks in.
    let messages_path = format!("/v1/chat/tasks/{task}/messages");
    let (status, _, next) = app
        .post(&token, &messages_path, message(agent, "four"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{next}");
    let done = app.settled(&token, task).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["latest_message"]["content"]["content"], "echo: four");
    let (_, history) = app.get(&token, &messages_path).await;
    assert_eq!(history["data"].as_array().unwrap().len(), 4, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_refusals_are_clear_envelopes() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "hi").await;
    app.settled(&app.token, task).await;
    let body = app
        .refused_post(
            &app.token,
            &format!("/v1/chat/tasks/{task}/cancel"),
            json!({}),
            StatusCode::CONFLICT,
            "task_not_running",
        )
        .await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("completed")
    );

    let (_, other_token) = app.agent_with_key(json!({})).await;
    app.refused_post(
        &other_token,
        &format!("/v1/chat/tasks/{task}/cancel"),
        json!({}),
        StatusCode::NOT_FOUND,
        "task_not_found",
    )
    .await;
    let response = app
        .http
        .get(app.url(&format!("/v1/chat/tasks/{task}/cancel")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let (status, _, body) = app
        .post(
            "bt_nope",
            &format!("/v1/chat/tasks/{task}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_past_its_timeout_fails_with_turn_timeout() {
    let app = TestApp::start().await;
    let policy = TurnPolicy {
        turn_timeout_ms: 300,
        ..TurnPolicy::default()
    };
    let (agent, token) = app
        .agent_with_policy(json!({"delay_ms": 5000}), policy)
        .await;
    let task = app.create_task(&token, agent, "slow").await;
    let (_, view) = app
        .get(&token, &format!("/v1/chat/tasks/{task}?wait=10"))
        .await;
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["latest_turn"]["error"]["code"], "turn_timeout");
}

const KEY: &str = "5f0c2d1e-8a51-4d7e-9f57-1b2a3c4d5e6f";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_requests_with_one_key_start_one_turn_with_identical_answers() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 300})).await;
    let requests: Vec<_> = (0..20)
        .map(|_| {
            let (http, url, token) = (app.http.clone(), app.url("/v1/chat/tasks"), token.clone());
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(token)
                    .header("idempotency-key", KEY)
                    .json(&message(agent, "only once"))
                    .send()
                    .await
                    .unwrap();
                let replayed = response.headers().contains_key("idempotent-replayed");
                (response.status(), replayed, response.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for request in requests {
        answers.push(request.await.unwrap());
    }
    assert!(
        answers
            .iter()
            .all(|(status, _, _)| *status == StatusCode::ACCEPTED)
    );
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1,
        "one request started the turn; the rest are marked replays"
    );
    let first = &answers[0].2;
    assert!(
        answers.iter().all(|(_, _, body)| body == first),
        "byte for byte"
    );
    let (_, tasks) = app.get(&token, "/v1/chat/tasks").await;
    assert_eq!(tasks["data"].as_array().unwrap().len(), 1, "{tasks}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_lost_response_replays_and_another_body_is_refused() {
    let app = TestApp::start().await;
    let key = [("idempotency-key", KEY)];
    let body = message(app.agent, "hello");
    // The client sent this, and its connection dropped before the answer arrived.
    let (status, _, first) = app
        .post_with(&app.token, "/v1/chat/tasks", &key, body.clone())
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let task = first["task_id"].as_i64().unwrap();
    app.settled(&app.token, task).await;

    // Same key, same request (keys in another order): the first answer, unchanged.
    let reordered = json!({"message": {"content": "hello", "role": "user"}, "agent_id": app.agent});
    let (status, headers, replay) = app
        .post_with(&app.token, "/v1/chat/tasks", &key, reordered)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(replay, first);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(headers["location"], format!("/v1/chat/tasks/{task}"));

    let (status, headers, refused) = app
        .post_with(
            &app.token,
            "/v1/chat/tasks",
            &key,
            message(app.agent, "other"),
        )
        .await;
    assert_envelope(
        status,
        &headers,
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    // The same key on another route is another request too.
    let messages = format!("/v1/chat/tasks/{task}/messages");
    let (status, _, refused) = app.post_with(&app.token, &messages, &key, body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");

    // Appends: a retry while the turn still runs replays instead of `task_busy`.
    let (slow_agent, slow_token) = app.agent_with_key(json!({"delay_ms": 1500})).await;
    let task = app.create_task(&slow_token, slow_agent, "a").await;
    app.settled(&slow_token, task).await;
    let messages = format!("/v1/chat/tasks/{task}/messages");
    let append_key = [("idempotency-key", "append-1")];
    let (status, _, appended) = app
        .post_with(
            &slow_token,
            &messages,
            &append_key,
            message(slow_agent, "b"),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{appended}");
    let (status, _, again) = app
        .post_with(
            &slow_token,
            &messages,
            &append_key,
            message(slow_agent, "b"),
        )
        .await;
    assert_eq!((status, &again), (StatusCode::ACCEPTED, &appended));
    let (status, _, busy) = app
        .post(&slow_token, &messages, message(slow_agent, "b"))
        .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "without the key it is a new request: {busy}"
    );
    app.settled(&slow_token, task).await;
    let (_, history) = app.get(&slow_token, &messages).await;
    assert_eq!(history["data"].as_array().unwrap().len(), 4, "{history}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_refused_before_anything_is_stored() {
    let app = TestApp::start().await;
    let long = "k".repeat(256);
    for bad in ["", "two words", long.as_str()] {
        let (status, headers, body) = app
            .post_with(
                &app.token,
                "/v1/chat/tasks",
                &[("idempotency-key", bad)],
                message(app.agent, "x"),
            )
            .await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["error"]["fields"][0]["field"], "Idempotency-Key");
    }
    let (_, tasks) = app.get(&app.token, "/v1/chat/tasks").await;
    assert!(tasks["data"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_refuses_new_requests_then_closes_streams_and_long_polls() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 60_000})).await;
    let task = app.create_task(&token, agent, "long").await;
    let stream = open_stream(&app, &token, task).await;
    let long_poll = {
        let (http, url, token) = (
            app.http.clone(),
            app.url(&format!("/v1/chat/tasks/{task}?wait=60")),
            token.clone(),
        );
        tokio::spawn(async move {
            let response = http.get(url).bearer_auth(token).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;

    app.shutdown.draining.cancel();
    let (status, headers, body) = app.get_full(&token, "/v1/chat/tasks").await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
    );
    assert!(headers.contains_key("retry-after"));
    let (status, _, body) = app
        .post(&token, "/v1/chat/tasks", message(agent, "x"))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        !long_poll.is_finished(),
        "requests already being served go on"
    );

    app.shutdown.closing.cancel();
    let (status, view) = tokio::time::timeout(Duration::from_secs(5), long_poll)
        .await
        .expect("the long-poll answers once the server closes")
        .unwrap();
    assert_eq!(
        (status, view["status"].as_str()),
        (StatusCode::OK, Some("running"))
    );
    let text = tokio::time::timeout(Duration::from_secs(5), stream.text())
        .await
        .expect("the stream ends once the server closes")
        .unwrap();
    assert!(
        text.trim_end()
            .ends_with(": server shutting down; reconnect with Last-Event-ID"),
        "{text}"
    );
    let events: Vec<_> =
        futures_util::stream::iter([Ok::<_, std::io::Error>(actix_web::web::Bytes::from(text))])
            .eventsource()
            .map(|event| event.unwrap().event)
            .collect()
            .await;
    assert_eq!(
        events,
        ["turn_started"],
        "the log up to the close, then nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_probes_and_how_they_answer_while_stopping() {
    let app = TestApp::start().await;
    let get = |path: &'static str| {
        let (http, url) = (app.http.clone(), app.url(path));
        async move { common::read(http.get(url).send().await.unwrap()).await }
    };
    // No key needed: probes are for the platform, not for clients.
    let (status, _, body) = get("/healthz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, _, body) = get("/readyz").await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ready"})));

    app.shutdown.draining.cancel();
    let (status, _, _) = get("/healthz").await;
    assert_eq!(status, StatusCode::OK, "a draining process is alive");
    let (status, headers, body) = get("/readyz").await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_their_own_codes_and_store_nothing() {
    let app = TestApp::with_limits(
        baton_http::DEFAULT_BODY_LIMIT,
        baton_http::sse::SseOptions::default(),
        baton_http::limits::RequestLimits {
            json_depth: 8,
            per_key: baton_http::limits::KeyRate::new(1, 4),
            ..baton_http::limits::RequestLimits::default()
        },
        baton_domain::SubmitLimits {
            max_message_bytes: 1024,
            max_running_turns_per_agent: Some(1),
            ..Default::default()
        },
    )
    .await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 3000})).await;

    let body = app
        .refused_post(
            &token,
            "/v1/chat/tasks",
            message(agent, &"x".repeat(2000)),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        )
        .await;
    assert_eq!(body["error"]["fields"][0]["field"], "message.content");

    let deep = json!({"agent_id": agent, "message": {"content": "x"},
                      "metadata": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}});
    app.refused_post(
        &token,
        "/v1/chat/tasks",
        deep,
        StatusCode::BAD_REQUEST,
        "json_too_deep",
    )
    .await;

    let (status, _, first) = app
        .post(&token, "/v1/chat/tasks", message(agent, "one"))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, headers, body) = app
        .post(&token, "/v1/chat/tasks", message(agent, "two"))
        .await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_running_turns",
    );
    assert_eq!(headers["retry-after"], "1");

    // Four requests so far: the burst is spent, and the next waits.
    let (status, headers, body) = app.get_full(&token, "/v1/chat/tasks").await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    assert_eq!(headers["retry-after"], "1");
    let (status, _) = app.get(&app.token, "/v1/chat/tasks").await;
    assert_eq!(status, StatusCode::OK, "another key has its own bucket");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, tasks) = app.get(&token, "/v1/chat/tasks").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        tasks["data"].as_array().unwrap().len(),
        1,
        "only the accepted task exists"
    );
}

/// A change announced just before the server closes its streams reaches them: a stream
/// woken by both at once reads the log to its end before its last comment, whichever
/// wake-up it takes first. Several streams, each woken by both at the same instant, so
/// a stream that trusted its earlier read would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_announced_as_the_server_closes_reaches_every_stream_before_it_ends() {
    use baton_domain::ports::TaskNotifier;
    use baton_domain::{FinishTurn, LeaseGuard, TaskId, TaskStore, TurnOutcome};

    const STREAMS: usize = 8;
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 60_000})).await;
    let mut open = Vec::new();
    for i in 0..STREAMS {
        let task = app.create_task(&token, agent, &format!("long {i}")).await;
        let mut stream = open_stream(&app, &token, task).await;
        // The stream has read the log (its turn's start) and waits for a change.
        let mut text = String::new();
        while !text.contains("event: turn_started") {
            let chunk = stream.chunk().await.unwrap().expect("the stream is open");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        open.push((task, stream, text));
    }
    // Each turn ends in the store, unannounced; then every change is announced and the
    // streams are closed without a pause between, so each stream wakes to both.
    for (task, _, _) in &open {
        let (_, view) = app.get(&token, &format!("/v1/chat/tasks/{task}")).await;
        let turn = view["latest_turn"]["turn_id"].as_i64().unwrap();
        let finish = FinishTurn {
            task_id: TaskId(*task),
            turn_id: baton_domain::TurnId(turn),
            outcome: TurnOutcome::Cancelled,
            output: Vec::new(),
            usage: None,
            guard: LeaseGuard::Anyone,
            now: chrono::Utc::now(),
            next: None,
        };
        assert!(app.store.finish_turn(finish).await.unwrap().is_some());
    }
    for (task, _, _) in &open {
        app.hub.task_changed(TaskId(*task));
    }
    app.shutdown.closing.cancel();

    for (task, stream, mut text) in open {
        let rest = tokio::time::timeout(Duration::from_secs(5), stream.text())
            .await
            .expect("the stream ends once the server closes")
            .unwrap();
        text.push_str(&rest);
        assert!(
            text.contains("event: cancelled"),
            "task {task}: the end announced before the close is sent: {text}"
        );
        assert!(
            text.trim_end()
                .ends_with(": server shutting down; reconnect with Last-Event-ID"),
            "{text}"
        );
    }
}
