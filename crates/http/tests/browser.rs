//! A real browser on another origin uses baton: headless Chromium (Debian's package,
//! driven by Playwright's `playwright-core`) loads `tests/browser/page.html` from an
//! origin of its own, creates a task with `fetch` (CORS, the bearer key), reads a
//! `409 task_busy`, and follows turns live — with the browser's own `EventSource` and
//! a stream token, then with `fetch` and the bearer header — through a proxy that cuts
//! every connection mid-turn: both resume after the last event, with no text lost or
//! repeated.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::path::Path;

use baton_http::cors::{AllowedOrigins, CorsOptions};
use baton_test_support::browser::BrowserRun;
use common::TestApp;
use serde_json::{Value, json};

/// Whether `ids` rise strictly (no event twice, none out of order).
fn strictly_rising(ids: &Value) -> bool {
    let ids: Vec<i64> = ids
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_i64().unwrap())
        .collect();
    !ids.is_empty() && ids.windows(2).all(|pair| pair[0] < pair[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_on_another_origin_follows_turns_live_and_resumes_after_a_cut() {
    // The page's origin is not known before its server starts: allow any (the
    // listed-origin rules are cors.rs's tests).
    let app = TestApp::with_cors(CorsOptions {
        allowed_origins: AllowedOrigins::Any,
        ..CorsOptions::default()
    })
    .await;
    // Long enough that the cut lands mid-turn, with words still to come.
    let (agent, key) = app.agent_with_key(json!({"delay_ms": 3000})).await;
    let app_base = app.base.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
        let run = BrowserRun::prepare(&scripts, &["follow.mjs", "page.html"]);
        let mut follow = run.node("follow.mjs");
        follow.args([&app_base, &key, &agent.to_string()]);
        BrowserRun::report(follow, "browser ok")
    })
    .await
    .unwrap();
    let report = serde_json::to_string_pretty(&seen).unwrap();

    assert_eq!(seen["pageErrors"], json!([]), "{report}");
    let console = seen["console"].to_string();
    assert!(!console.contains("CORS"), "a request was blocked: {report}");

    // fetch from another origin: the answer and the headers a client reads.
    let first = &seen["first"];
    assert_eq!(first["created"]["status"], 202, "{report}");
    assert_eq!(
        first["created"]["location"],
        format!("/v1/chat/tasks/{}", first["task"]),
        "{report}"
    );
    assert!(first["created"]["requestId"].is_string(), "{report}");
    assert_eq!(first["busy"]["status"], 409, "{report}");
    assert_eq!(
        first["busy"]["body"]["error"]["code"], "task_busy",
        "{report}"
    );
    assert_eq!(first["minted"], 200, "{report}");

    // EventSource: reconnected by itself after the cut, and the text is whole, once.
    assert_eq!(first["unnamed"], 0, "an event reached onmessage: {report}");
    assert!(first["connectionErrors"].as_i64().unwrap() >= 1, "{report}");
    assert!(first["opens"].as_i64().unwrap() >= 2, "{report}");
    assert!(strictly_rising(&first["ids"]), "{report}");
    assert_eq!(first["deltas"], first["reply"], "{report}");
    assert!(
        first["reply"]
            .as_str()
            .unwrap()
            .contains("one two three four five six seven eight nine ten"),
        "{report}"
    );
    // fetch with the bearer header: reconnected after the cut, the text whole, once.
    let second = &seen["second"];
    assert_eq!(second["appended"], 202, "{report}");
    assert!(second["failures"].as_i64().unwrap() >= 1, "{report}");
    assert!(strictly_rising(&second["ids"]), "{report}");
    assert!(
        second["ids"][0].as_i64().unwrap()
            > first["ids"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_i64()
                .unwrap(),
        "{report}"
    );
    assert_eq!(second["deltas"], second["reply"], "{report}");
    assert!(
        second["reply"]
            .as_str()
            .unwrap()
            .contains("eleven twelve thirteen fourteen fifteen sixteen"),
        "{report}"
    );

    // On the wire: the EventSource streams carried the token and no key, and the
    // browser's own reconnection said where it was (Last-Event-ID); the fetch streams
    // carried the key.
    let streams = seen["streams"].as_array().unwrap();
    let by_token: Vec<&Value> = streams
        .iter()
        .filter(|s| s["line"].as_str().unwrap().contains("token="))
        .collect();
    assert!(by_token.len() >= 2, "{report}");
    assert!(
        by_token.iter().all(|s| s["authorization"] == false),
        "{report}"
    );
    assert!(by_token[0]["lastEventId"].is_null(), "{report}");
    assert!(
        by_token[1..].iter().all(|s| s["lastEventId"].is_string()),
        "{report}"
    );
    let by_key: Vec<&Value> = streams
        .iter()
        .filter(|s| s["authorization"] == true)
        .collect();
    assert!(by_key.len() >= 2, "{report}");
    assert!(
        streams.iter().all(|s| s["origin"] == seen["origin"]),
        "{report}"
    );
}
