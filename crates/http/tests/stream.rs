//! The SSE stream through the real server, parsed by a real SSE client library
//! (eventsource-stream), never by string matching.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::pin::Pin;
use std::time::Duration;

use baton_domain::{TaskId, TaskStore};
use baton_http::sse::SseOptions;
use common::{TestApp, assert_envelope, read};
use eventsource_stream::{Event, Eventsource};
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};

type Events = Pin<
    Box<
        dyn Stream<Item = Result<Event, eventsource_stream::EventStreamError<reqwest::Error>>>
            + Send,
    >,
>;

async fn open(
    app: &TestApp,
    token: &str,
    task: i64,
    query: &str,
    last_event_id: Option<&str>,
) -> Events {
    let mut request = app
        .http
        .get(app.url(&format!("/v1/chat/tasks/{task}/stream{query}")))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    assert_eq!(response.headers()["cache-control"], "no-cache");
    Box::pin(response.bytes_stream().eventsource())
}

/// The next event, failing the test after 10 s.
async fn next(events: &mut Events) -> Option<Event> {
    tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .expect("no event within 10 s")
        .map(|event| event.unwrap())
}

/// Every event until the stream ends.
async fn all(mut events: Events) -> Vec<Event> {
    let mut got = Vec::new();
    while let Some(event) = next(&mut events).await {
        got.push(event);
    }
    got
}

fn data(event: &Event) -> Value {
    serde_json::from_str(&event.data).unwrap()
}

fn ids(events: &[Event]) -> Vec<i64> {
    events.iter().map(|e| e.id.parse().unwrap()).collect()
}

/// The text of the message streamed by `text_delta` events, concatenated.
fn streamed_text(events: &[Event]) -> String {
    events
        .iter()
        .filter(|e| e.event == "text_delta")
        .map(|e| data(e)["delta"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_message_names_the_stream_of_its_turn() {
    let app = TestApp::start().await;
    let created = app.create(&app.token, app.agent, "first").await;
    let task = created["task_id"].as_i64().unwrap();
    assert_eq!(
        created["stream_url"],
        format!("/v1/chat/tasks/{task}/stream?after=0"),
        "{created}"
    );
    app.settled(&app.token, task).await;
    let path = format!("/v1/chat/tasks/{task}/messages");
    let append = || {
        app.post_with(
            &app.token,
            &path,
            &[("Idempotency-Key", "stream-url-1")],
            json!({"agent_id": app.agent, "message": {"content": "second"}}),
        )
    };
    let (status, _, appended) = append().await;
    assert_eq!(status, StatusCode::ACCEPTED, "{appended}");
    // Followed, it starts at this turn's first event, not the first turn's.
    let query = appended["stream_url"]
        .as_str()
        .unwrap()
        .split_once('?')
        .map(|(_, query)| format!("?{query}&until=final"))
        .unwrap();
    let events = all(open(&app, &app.token, task, &query, None).await).await;
    assert_eq!(events[0].event, "turn_started");
    assert!(
        events
            .iter()
            .all(|e| data(e)["turn_id"] == appended["turn_id"]),
        "{events:?}"
    );
    assert_eq!(streamed_text(&events), "echo: second");
    // A replay names the same place.
    let (_, headers, replayed) = append().await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(replayed["stream_url"], appended["stream_url"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_from_zero_tells_the_whole_turn_in_order_then_closes_on_final() {
    let app = TestApp::start().await;
    let task = app
        .create_task(&app.token, app.agent, "hello big world")
        .await;
    app.settled(&app.token, task).await;

    let events = all(open(&app, &app.token, task, "?until=final", None).await).await;
    let kinds: Vec<_> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"turn_started"));
    assert_eq!(kinds[kinds.len() - 2..], ["message_completed", "final"]);
    assert!(
        kinds[1..kinds.len() - 2].iter().all(|k| *k == "text_delta"),
        "{kinds:?}"
    );
    assert_eq!(ids(&events), (1..=events.len() as i64).collect::<Vec<_>>());
    assert_eq!(streamed_text(&events), "echo: hello big world");
    let message = data(&events[events.len() - 2]);
    assert_eq!(
        message["message"]["content"]["content"],
        "echo: hello big world"
    );
    assert_eq!(message["message"]["streaming_status"], "done");
    let end = data(events.last().unwrap());
    assert_eq!(end["status"], "completed");
    assert_eq!(end["task_id"], task);
    assert_eq!(end["seq"], events.len() as i64);
    assert_eq!(
        end["output"][0]["content"]["content"],
        "echo: hello big world"
    );
    // The stream's text is the stored message's text.
    let (_, view) = app.get(&app.token, &format!("/v1/chat/tasks/{task}")).await;
    assert_eq!(
        view["latest_message"]["content"]["content"],
        "echo: hello big world"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_mid_turn_from_last_event_id_loses_and_repeats_nothing() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 1200})).await;
    let text = "one two three four five six seven eight";
    let task = app.create_task(&token, agent, text).await;

    let mut first = open(&app, &token, task, "", None).await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        seen.push(next(&mut first).await.unwrap());
    }
    drop(first); // the connection drops mid-turn
    let last_id = seen.last().unwrap().id.clone();
    let rest = all(open(&app, &token, task, "?until=final", Some(&last_id)).await).await;
    assert!(!rest.is_empty());
    seen.extend(rest);
    assert_eq!(
        ids(&seen),
        (1..=seen.len() as i64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(seen.last().unwrap().event, "final");
    assert_eq!(streamed_text(&seen), format!("echo: {text}"));

    // ?after= does the same as the header, and the header wins when both are given.
    let from_query = all(open(&app, &token, task, "?until=final&after=2", None).await).await;
    assert_eq!(ids(&from_query)[0], 3);
    let both = all(open(&app, &token, task, "?until=final&after=1", Some("4")).await).await;
    assert_eq!(ids(&both)[0], 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_follows_the_task_across_two_turns() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 200})).await;
    let task = app.create_task(&token, agent, "first").await;
    let mut stream = open(&app, &token, task, "", None).await;
    let mut events = Vec::new();
    let mut finals = 0;
    while finals < 2 {
        let event = next(&mut stream)
            .await
            .expect("the stream stays open between turns");
        if event.event == "final" {
            finals += 1;
            if finals == 1 {
                let (status, _, body) = app
                    .post(
                        &token,
                        &format!("/v1/chat/tasks/{task}/messages"),
                        json!({"agent_id": agent, "message": {"content": "second"}}),
                    )
                    .await;
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            }
        }
        events.push(event);
    }
    assert_eq!(ids(&events), (1..=events.len() as i64).collect::<Vec<_>>());
    let starts = events.iter().filter(|e| e.event == "turn_started").count();
    assert_eq!(starts, 2);
    assert_eq!(streamed_text(&events), "echo: firstecho: second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_mid_turn_leaves_nothing_behind() {
    let app = TestApp::start().await;
    let (agent, token) = app.agent_with_key(json!({"delay_ms": 800})).await;
    let task = app.create_task(&token, agent, "a b c d").await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        let mut stream = open(&app, &token, task, "", None).await;
        next(&mut stream).await.unwrap();
        streams.push(stream);
    }
    assert_eq!(
        app.hub.watched_tasks(),
        1,
        "five streams of one task share one slot"
    );
    drop(streams);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.hub.watched_tasks() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dropped stream kept its watch"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = app.settled(&token, task).await;
    assert_eq!(
        done["status"], "completed",
        "the turn is unaffected by its watchers leaving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_heartbeats_and_a_retry_hint() {
    let options = SseOptions {
        heartbeat: Duration::from_millis(150),
        retry: Duration::from_millis(2500),
    };
    let app = TestApp::with(baton_http::DEFAULT_BODY_LIMIT, options).await;
    let task = app.create_task(&app.token, app.agent, "x").await;
    app.settled(&app.token, task).await;
    // Comments are invisible to an SSE client, so this one test reads the raw bytes.
    let response = app
        .http
        .get(app.url(&format!("/v1/chat/tasks/{task}/stream?after=1000")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    let mut bytes = response.bytes_stream();
    let mut raw = String::new();
    while raw.matches(": keep-alive").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), bytes.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        raw.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(raw.starts_with("retry: 2500\n\n"), "{raw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_before_the_kept_log_gets_an_explicit_reset_event() {
    let app = TestApp::start().await;
    let task = app
        .create_task(&app.token, app.agent, "one two three")
        .await;
    app.settled(&app.token, task).await;
    let pruned = app.store.prune_events(TaskId(task), 4).await.unwrap();
    assert_eq!(pruned, 3);
    let events = all(open(&app, &app.token, task, "?until=final&after=1", None).await).await;
    assert_eq!(events[0].event, "reset");
    assert_eq!(
        data(&events[0]),
        json!({"missed_after": 1, "first_kept": 4})
    );
    assert_eq!(events[0].id, "3");
    assert_eq!(ids(&events[1..])[0], 4, "then what is kept, from its start");
    assert_eq!(events.last().unwrap().event, "final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_refused_before_any_byte_when_they_cannot_be_served() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "x").await;
    let (_, other) = app.agent_with_key(json!({})).await;
    let get = |token: String, query: &'static str, last_id: Option<&'static [u8]>| {
        let mut request = app
            .http
            .get(app.url(&format!("/v1/chat/tasks/{task}/stream{query}")))
            .bearer_auth(token);
        if let Some(id) = last_id {
            let value = reqwest::header::HeaderValue::from_bytes(id).unwrap();
            request = request.header("last-event-id", value);
        }
        request.send()
    };
    let (status, headers, body) = read(get(other, "", None).await.unwrap()).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::NOT_FOUND,
        "task_not_found",
    );
    let (status, headers, body) = read(get("bt_nope".into(), "", None).await.unwrap()).await;
    assert_envelope(
        status,
        &headers,
        &body,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    let none: Option<&'static [u8]> = None;
    for (query, last_id, field) in [
        ("?after=-1", none, "after"),
        ("?after=x", none, "after"),
        ("?until=forever", none, "until"),
        // Given empty is given wrong (found by schemathesis).
        ("?until=", none, "until"),
        ("?after=", none, "after"),
        ("", Some(b"abc".as_slice()), "Last-Event-ID"),
        // The header follows the parameter's rule: empty or unreadable is wrong too.
        ("", Some(b"".as_slice()), "Last-Event-ID"),
        ("", Some(b"  ".as_slice()), "Last-Event-ID"),
        ("", Some(b"\xff7".as_slice()), "Last-Event-ID"),
        ("?after=3", Some(b"".as_slice()), "Last-Event-ID"),
    ] {
        let (status, headers, body) =
            read(get(app.token.clone(), query, last_id).await.unwrap()).await;
        assert_envelope(
            status,
            &headers,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        );
        assert_eq!(body["error"]["fields"][0]["field"], field);
    }
}

/// Found by schemathesis: a cursor of `i64::MAX` on a task whose streams share a feed
/// dropped the connection (an overflow past the last event). It is a cursor like any:
/// the stream opens and waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_past_every_event_opens_a_stream_that_waits() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "x").await;
    app.settled(&app.token, task).await;
    // A stream that stays open and has read the log to its end: the task's feed is
    // placed there.
    let mut follower = open(&app, &app.token, task, "", None).await;
    while next(&mut follower).await.unwrap().event != "final" {}
    let mut far = open(
        &app,
        &app.token,
        task,
        &format!("?after={}", i64::MAX),
        None,
    )
    .await;
    let waited = tokio::time::timeout(Duration::from_millis(500), far.next()).await;
    assert!(waited.is_err(), "the stream ended or sent: {waited:?}");
}
