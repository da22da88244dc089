//! Crashes and stops of the real `baton` binary on SQLite: SIGKILL mid-turn, again and
//! again, then SIGTERM with a short grace period.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::{Api, CrashAgents, FAST_LEASES, RECOVERY_BOUND, Server, agent_and_key, sqlite_db};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn sigkill_mid_turn_again_and_again_loses_nothing_and_leaves_nothing_running() {
    let (_dir, db) = sqlite_db();
    let agents = CrashAgents::create(&db, 1500);
    let mut interrupted = Vec::new();
    for cycle in 0..3 {
        let mut server = Server::start(&db, &FAST_LEASES);
        let started = Instant::now();
        // The embedded database serves one process, so a restart recovers every turn
        // the killed process left running before it answers any request.
        agents.assert_recovered(&server.base, &interrupted, started + RECOVERY_BOUND);
        if cycle > 0 {
            agents.assert_appends_work(&server.base, &interrupted);
        }
        interrupted = agents.start_turns(&server.base, &format!("cycle {cycle}"), 2);
        server.signal("-KILL");
        server.wait_exit(Duration::from_secs(5));
    }
    let server = Server::start(&db, &FAST_LEASES);
    agents.assert_recovered(&server.base, &interrupted, Instant::now() + RECOVERY_BOUND);
    agents.assert_appends_work(&server.base, &interrupted);
}

/// Reads an SSE response to its end in a thread.
fn read_stream(base: &str, token: &str, task: i64) -> std::thread::JoinHandle<String> {
    let mut response = common::client_with_timeout(Duration::from_secs(60))
        .get(format!("{base}/v1/chat/tasks/{task}/stream"))
        .bearer_auth(token)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = response.read_to_string(&mut text);
        text
    })
}

#[test]
fn sigterm_refuses_new_requests_lets_quick_turns_finish_and_ends_the_rest_by_policy() {
    let (_dir, db) = sqlite_db();
    // The retried turns outlast the grace period; the quick one does not.
    let agents = CrashAgents::create(&db, 4000);
    let (quick, quick_token) = agent_and_key(&db, r#"{"delay_ms": 300}"#);
    let mut flags = FAST_LEASES.to_vec();
    flags.extend(["--shutdown-grace-secs", "1"]);
    let mut server = Server::start(&db, &flags);
    let base = server.base.clone();
    let interrupted = agents.start_turns(&base, "stopping", 1);
    let api = Api {
        http: common::client(),
        base: &base,
        token: &quick_token,
    };
    let (status, finishing) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": quick, "message": {"content": "in time"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{finishing}");
    let stream = read_stream(&base, &agents.failing.1, interrupted[0].task);

    let signalled = Instant::now();
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(200));
    let (status, refused) = api.get("/v1/chat/tasks");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
    assert_eq!(refused["error"]["code"], "shutting_down");
    let exit = server.wait_exit(Duration::from_secs(15));
    assert!(exit.success(), "SIGTERM is a clean exit: {exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "the grace period was given"
    );
    let text = stream.join().unwrap();
    assert!(text.contains("event: turn_started"), "{text}");
    assert!(
        text.contains("event: error"),
        "the interrupted turn's end reaches the stream before it closes: {text}"
    );
    assert!(
        text.trim_end()
            .ends_with(": server shutting down; reconnect with Last-Event-ID"),
        "{text}"
    );

    // After a restart: the quick turn completed within the grace; the `fail` agent's
    // turn ended interrupted at the stop; the `retry` agent's was released and is
    // played again at once.
    let server = Server::start(&db, &FAST_LEASES);
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &quick_token,
    };
    let (_, done) = api.get(&format!(
        "/v1/chat/tasks/{}",
        finishing["task_id"].as_i64().unwrap()
    ));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["latest_message"]["content"]["content"],
        "echo: in time"
    );
    agents.assert_recovered(&server.base, &interrupted, Instant::now() + RECOVERY_BOUND);
}
