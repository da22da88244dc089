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

use common::{
    Api, CrashAgents, FAST_LEASES, GatedAgent, RECOVERY_BOUND, Server, agent_and_key, baton, run,
    sqlite_db,
};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn sigkill_mid_turn_again_and_again_loses_nothing_and_leaves_nothing_running() {
    let (_dir, db) = sqlite_db();
    let agents = CrashAgents::create(&db);
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

/// More running turns than one page of a sweep (100), killed mid-play: the restart
/// takes each over once and plays it once, and each answer is exactly the agent's.
/// The agent holds every turn until the restart's recovery is over, so turns taken
/// over early are still running when the sweep reads its next page.
#[test]
fn a_restart_after_sigkill_plays_each_of_many_retried_turns_once_with_its_exact_answer() {
    const TURNS: usize = 150;
    let (_dir, db) = sqlite_db();
    let service = GatedAgent::holding();
    let (agent, token) = service.agent(&db, &["--on-interrupt", "retry", "--max-attempts", "5"]);
    let mut server = Server::start(&db, &FAST_LEASES);
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    let mut tasks = Vec::new();
    for i in 0..TURNS {
        let text = format!("turn {i}");
        let (status, body) = api.post(
            "/v1/chat/tasks",
            json!({"agent_id": agent, "message": {"content": text}}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        tasks.push((body["task_id"].as_i64().unwrap(), text));
    }
    // As many turns as the server plays at once have started streaming and wait at the
    // agent; the rest wait for a slot. None can end before the kill.
    service.receiver.wait_for(64, Duration::from_secs(30));
    server.signal("-KILL");
    server.wait_exit(Duration::from_secs(5));

    let restarted = Instant::now();
    let server = Server::start(&db, &FAST_LEASES);
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    // Recovery happens before the server listens; the plays it started now wait at
    // the agent.
    service.receiver.wait_for(64 + 64, Duration::from_secs(30));
    service.open();
    for (task, text) in &tasks {
        let done = api.settled_within(*task, Duration::from_secs(60));
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["latest_turn"]["attempt"], 2, "{done}");
        let (_, history) = api.get(&format!("/v1/chat/tasks/{task}/messages"));
        let texts: Vec<&str> = history["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"]["content"].as_str().unwrap())
            .collect();
        assert_eq!(texts, [text.clone(), format!("echo: {text}")], "{history}");
    }
    let mut played = service.requests_since(restarted);
    played.sort_unstable();
    let mut expected: Vec<i64> = tasks.iter().map(|(task, _)| *task).collect();
    expected.sort_unstable();
    assert_eq!(
        played, expected,
        "each turn is played once after the restart"
    );
}

/// The embedded database serves one process: a second `serve` on the same file is
/// refused at once with a clear message, and the first server's turns are untouched
/// (a second server would take them for orphans). Commands that add agents and keys
/// still work beside the server.
#[test]
fn a_second_server_on_the_same_sqlite_file_is_refused_and_the_first_is_untouched() {
    let (_dir, db) = sqlite_db();
    let service = GatedAgent::holding();
    let (retrying, retry_token) =
        service.agent(&db, &["--on-interrupt", "retry", "--max-attempts", "5"]);
    let (failing, fail_token) = agent_and_key(&db, r#"{"delay_ms": 800}"#);
    let server = Server::start(&db, &FAST_LEASES);
    let post = |agent: i64, token: &str| {
        let api = Api {
            http: common::client(),
            base: &server.base,
            token,
        };
        let (status, body) = api.post(
            "/v1/chat/tasks",
            json!({"agent_id": agent, "message": {"content": "mine"}}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["task_id"].as_i64().unwrap()
    };
    let retried = post(retrying, &retry_token);
    let failed_if_swept = post(failing, &fail_token);
    service.receiver.wait_for(1, Duration::from_secs(10));

    let mut second = baton(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(FAST_LEASES)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server started on the same SQLite file");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    second
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("already serving the SQLite database"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");

    let (ok, _, err) = run(&db, &["key", "create", "--agent", &retrying.to_string()]);
    assert!(ok, "adding a key beside the server works: {err}");

    service.open();
    for (task, token) in [(retried, &retry_token), (failed_if_swept, &fail_token)] {
        let api = Api {
            http: common::client(),
            base: &server.base,
            token,
        };
        let done = api.settled(task);
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(done["latest_turn"]["attempt"], 1, "{done}");
        assert_eq!(done["latest_message"]["content"]["content"], "echo: mine");
    }
    assert_eq!(service.receiver.received().len(), 1, "played once");
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
    let agents = CrashAgents::create(&db);
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
        text.contains("event: failed"),
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
