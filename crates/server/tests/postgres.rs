//! Several `baton` processes on one PostgreSQL database: the same guarantees as one.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::time::{Duration, Instant};

use baton_test_support::TestDatabase;
use chrono::{DateTime, Utc};
use common::{Api, CrashAgents, FAST_LEASES, GatedAgent, RECOVERY_BOUND, Server, agent_and_key};
use reqwest::StatusCode;
use serde_json::json;

fn api<'a>(server: &'a Server, token: &'a str) -> Api<'a> {
    Api {
        http: common::client_with_timeout(Duration::from_secs(90)),
        base: &server.base,
        token,
    }
}

#[test]
fn two_instances_one_winner_of_fifty_appends_and_cross_instance_long_poll() {
    let db = TestDatabase::new();
    let (agent, token) = agent_and_key(db.url(), r#"{"delay_ms": 500}"#);
    let a = Server::start(db.url(), &[]);
    let b = Server::start(db.url(), &[]);
    let (on_a, on_b) = (api(&a, &token), api(&b, &token));

    // 50 concurrent appends to one idle task, alternating between the instances.
    let (status, created) = on_a.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "start"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let task = created["task_id"].as_i64().unwrap();
    on_b.settled(task);
    let path = format!("/v1/chat/tasks/{task}/messages");
    let results: Vec<(StatusCode, serde_json::Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let target = if i % 2 == 0 { &on_a } else { &on_b };
                let path = &path;
                scope.spawn(move || {
                    target.post(
                        path,
                        json!({"agent_id": agent, "message": {"content": format!("m{i}")}}),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let accepted: Vec<_> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .collect();
    let busy = results
        .iter()
        .filter(|(s, body)| *s == StatusCode::CONFLICT && body["error"]["code"] == "task_busy")
        .count();
    assert_eq!((accepted.len(), busy), (1, 49), "{results:?}");
    let done = on_a.settled(task);
    assert_eq!(done["latest_turn"]["turn_id"], accepted[0].1["turn_id"]);
    let (_, history) = on_b.get(&format!("{path}?limit=100"));
    assert_eq!(
        history["data"].as_array().unwrap().len(),
        4,
        "one winner's message and its reply"
    );

    // A turn accepted on A, long-polled on B: B wakes when A ends the turn.
    let mut latencies = Vec::new();
    for round in 0..5 {
        let (status, turn) = on_a.post(
            &path,
            json!({"agent_id": agent, "message": {"content": format!("r{round}")}}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{turn}");
        let (status, view) = on_b.get(&format!("/v1/chat/tasks/{task}?wait=30"));
        let received = Utc::now();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(view["status"], "completed", "{view}");
        assert_eq!(view["latest_turn"]["turn_id"], turn["turn_id"]);
        assert_eq!(
            view["latest_message"]["content"]["content"],
            format!("echo: r{round}")
        );
        let ended: DateTime<Utc> = view["latest_turn"]["ended_at"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        latencies.push((received - ended).num_microseconds().unwrap() as f64 / 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    eprintln!(
        "cross-instance long-poll wake-up after the turn ended on the other instance: median {:.1} ms, max {:.1} ms ({latencies:?})",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    // Loose: the precise figure is in the log; a timer-based wake-up would be far slower.
    assert!(latencies[latencies.len() / 2] < 1000.0, "{latencies:?}");
}

#[test]
fn a_survivor_recovers_the_turns_of_a_killed_instance_without_a_restart() {
    let db = TestDatabase::new();
    let agents = CrashAgents::create(db.url());
    let survivor = Server::start(db.url(), &FAST_LEASES);
    let mut recovery_times = Vec::new();
    for cycle in 0..3 {
        let mut doomed = Server::start(db.url(), &FAST_LEASES);
        let interrupted = agents.start_turns(&doomed.base, &format!("cycle {cycle}"), 2);
        doomed.signal("-KILL");
        doomed.wait_exit(Duration::from_secs(5));
        let killed = Instant::now();
        // The last renewal was at most a third of the lease before the kill, so the
        // lease runs out within its lifetime, and the next sweep finds it.
        let slack = Duration::from_millis(1500);
        let first_failed = interrupted.iter().find(|t| !t.retried).unwrap();
        let on_survivor = api(&survivor, &agents.failing.1);
        on_survivor.settled_within(first_failed.task, RECOVERY_BOUND + slack);
        recovery_times.push(killed.elapsed());
        agents.assert_recovered(
            &survivor.base,
            &interrupted,
            killed + RECOVERY_BOUND + slack,
        );
        agents.assert_appends_work(&survivor.base, &interrupted);
    }
    eprintln!(
        "a killed instance's turn ended by the survivor's sweep after (from the kill; bound {RECOVERY_BOUND:?}): {recovery_times:?}"
    );
}

/// An instance paused (SIGSTOP) past its leases finds its own live turns expired when
/// it resumes. Its sweep must leave them to its renewal: each turn is played once, to
/// the end, by its first attempt.
#[test]
fn a_paused_instance_never_sweeps_its_own_live_turns() {
    let db = TestDatabase::new();
    let service = GatedAgent::holding();
    let (agent, token) = service.agent(
        db.url(),
        &["--on-interrupt", "retry", "--max-attempts", "5"],
    );
    let server = Server::start(db.url(), &FAST_LEASES);
    let on = api(&server, &token);
    let mut tasks = Vec::new();
    for i in 0..4 {
        let (status, body) = on.post(
            "/v1/chat/tasks",
            json!({"agent_id": agent, "message": {"content": format!("paused {i}")}}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        tasks.push(body["task_id"].as_i64().unwrap());
    }
    service
        .receiver
        .wait_for(tasks.len(), Duration::from_secs(10));
    // Three pauses, each past the lease (1 s) and several sweep periods (200 ms): on
    // resuming, the sweep and the renewal are both due at once.
    for _ in 0..3 {
        server.signal("-STOP");
        std::thread::sleep(Duration::from_millis(1600));
        server.signal("-CONT");
        std::thread::sleep(Duration::from_millis(700));
    }
    service.open();
    for (i, task) in tasks.iter().enumerate() {
        let done = on.settled_within(*task, Duration::from_secs(20));
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["latest_turn"]["attempt"], 1,
            "never taken over: {done}"
        );
        assert_eq!(
            done["latest_message"]["content"]["content"],
            format!("echo: paused {i}")
        );
    }
    assert_eq!(
        service.receiver.received().len(),
        tasks.len(),
        "each turn was played once"
    );
}

/// The database goes away for a moment (as in a restart) while turns stream and end:
/// their writes are tried again while their leases last, so every turn completes with
/// its whole answer — none is thrown away and later ended `turn_interrupted`.
#[test]
fn turns_that_end_during_a_short_database_outage_keep_their_output_and_end() {
    let db = TestDatabase::new();
    let (agent, token) = agent_and_key(db.url(), r#"{"delay_ms": 400}"#);
    let server = Server::start(db.url(), &[]);
    let on = api(&server, &token);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let text = format!("through the outage {i}");
        let (status, body) = on.post(
            "/v1/chat/tasks",
            json!({"agent_id": agent, "message": {"content": text}}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        tasks.push((body["task_id"].as_i64().unwrap(), text));
    }
    // The turns stream their words and end while the database refuses everyone.
    db.set_reachable(false).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    db.set_reachable(true).unwrap();
    for (task, text) in &tasks {
        let done = on.settled_within(*task, Duration::from_secs(20));
        assert_eq!(done["status"], "completed", "{done}");
        assert_eq!(
            done["latest_message"]["content"]["content"],
            format!("echo: {text}"),
            "{done}"
        );
    }
}

#[test]
fn a_cancel_on_one_instance_stops_the_turn_playing_on_the_other() {
    let db = TestDatabase::new();
    let (agent, token) = agent_and_key(db.url(), r#"{"delay_ms": 60000}"#);
    let mut a = Server::start(db.url(), &["--shutdown-grace-secs", "60"]);
    let b = Server::start(db.url(), &[]);
    let (on_a, on_b) = (api(&a, &token), api(&b, &token));
    let (_, created) = on_a.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "stop me"}}),
    );
    let task = created["task_id"].as_i64().unwrap();
    let (status, cancelled) = on_b.post(&format!("/v1/chat/tasks/{task}/cancel"), json!({}));
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["status"], "cancelled");
    let (_, seen_on_a) = on_a.get(&format!("/v1/chat/tasks/{task}"));
    assert_eq!(seen_on_a["status"], "cancelled");

    // A stopped playing the turn at once (told through NOTIFY, not at its next lease
    // renewal ~6.7 s after the start): stopping A does not wait for anything, where a
    // turn still in flight would hold it for the grace period (60 s).
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    a.signal("-TERM");
    assert!(a.wait_exit(Duration::from_secs(20)).success());
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "A still held the cancelled turn: {:?}",
        stopping.elapsed()
    );
    let (_, after) = on_b.get(&format!("/v1/chat/tasks/{task}"));
    assert_eq!(after["status"], "cancelled", "{after}");
    assert_eq!(after["latest_turn"]["error"], serde_json::Value::Null);
}

#[test]
fn one_idempotency_key_across_two_instances_starts_one_turn() {
    let db = TestDatabase::new();
    let (agent, token) = agent_and_key(db.url(), r#"{"delay_ms": 200}"#);
    let a = Server::start(db.url(), &[]);
    let b = Server::start(db.url(), &[]);
    let bases = [a.base.clone(), b.base.clone()];
    let answers: Vec<(StatusCode, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..20)
            .map(|i| {
                let (base, token) = (&bases[i % 2], &token);
                scope.spawn(move || {
                    let response = common::client()
                        .post(format!("{base}/v1/chat/tasks"))
                        .bearer_auth(token)
                        .header("idempotency-key", "one-key-two-instances")
                        .json(&json!({"agent_id": agent, "message": {"content": "once"}}))
                        .send()
                        .unwrap();
                    (response.status(), response.text().unwrap())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        answers
            .iter()
            .all(|(status, body)| *status == StatusCode::ACCEPTED && *body == answers[0].1),
        "{answers:?}"
    );
    let (_, tasks) = api(&a, &token).get("/v1/chat/tasks");
    assert_eq!(tasks["data"].as_array().unwrap().len(), 1, "{tasks}");

    // The same for appends: two identical appends with one key, one to each instance
    // at once, on an idle task. The key wins over the busy check: both are the same
    // 202, one of them a replay — never a 409 task_busy.
    let (quick, quick_token) = agent_and_key(db.url(), r#"{"delay_ms": 10}"#);
    let on_a = api(&a, &quick_token);
    let (status, created) = on_a.post(
        "/v1/chat/tasks",
        json!({"agent_id": quick, "message": {"content": "start"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let task = created["task_id"].as_i64().unwrap();
    for round in 0..40 {
        on_a.settled(task);
        let answers: Vec<(StatusCode, Option<String>, String)> = std::thread::scope(|scope| {
            let handles: Vec<_> = bases
                .iter()
                .map(|base| {
                    let token = &quick_token;
                    scope.spawn(move || {
                        let response = common::client()
                            .post(format!("{base}/v1/chat/tasks/{task}/messages"))
                            .bearer_auth(token)
                            .header("idempotency-key", format!("append-round-{round}"))
                            .json(&json!({"agent_id": quick, "message": {"content": format!("round {round}")}}))
                            .send()
                            .unwrap();
                        let replayed = response
                            .headers()
                            .get("idempotent-replayed")
                            .map(|v| v.to_str().unwrap().to_owned());
                        (response.status(), replayed, response.text().unwrap())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(
            answers
                .iter()
                .all(|(status, _, body)| *status == StatusCode::ACCEPTED && *body == answers[0].2),
            "round {round}: {answers:?}"
        );
        let replays = answers
            .iter()
            .filter(|(_, r, _)| r.as_deref() == Some("true"))
            .count();
        assert_eq!(replays, 1, "round {round}: {answers:?}");
    }
    on_a.settled(task);
    let (_, history) = on_a.get(&format!("/v1/chat/tasks/{task}/messages?limit=100"));
    assert_eq!(
        history["data"].as_array().unwrap().len(),
        2 + 40 * 2,
        "one turn per round"
    );
}

#[test]
fn starting_or_stopping_an_instance_never_ends_another_instances_turn() {
    let db = TestDatabase::new();
    let (agent, token) = agent_and_key(db.url(), r#"{"delay_ms": 5000}"#);
    let a = Server::start(db.url(), &[]);
    let on_a = api(&a, &token);
    let (_, created) = on_a.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "mine"}}),
    );
    let task = created["task_id"].as_i64().unwrap();

    let started = Instant::now();
    let mut b = Server::start(db.url(), &[]);
    let (_, view) = api(&b, &token).get(&format!("/v1/chat/tasks/{task}"));
    assert_eq!(
        view["status"], "running",
        "a new instance does not sweep others' turns: {view}"
    );
    b.signal("-TERM");
    assert!(b.wait_exit(Duration::from_secs(15)).success());
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "the checks ran while the turn still ran"
    );

    let done = on_a.settled(task);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["latest_message"]["content"]["content"], "echo: mine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_one_instance_follows_a_turn_running_on_the_other() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;

    let db = tokio::task::spawn_blocking(TestDatabase::new)
        .await
        .unwrap();
    let url = db.url().to_owned();
    let (agent, token, a, b) = tokio::task::spawn_blocking(move || {
        let (agent, token) = agent_and_key(&url, r#"{"delay_ms": 800}"#);
        (
            agent,
            token,
            Server::start(&url, &[]),
            Server::start(&url, &[]),
        )
    })
    .await
    .unwrap();
    baton_test_support::init_tls();
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{}/v1/chat/tasks", a.base))
        .bearer_auth(&token)
        .json(&json!({"agent_id": agent, "message": {"content": "across instances we stream"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let task = created["task_id"].as_i64().unwrap();
    let response = http
        .get(format!(
            "{}/v1/chat/tasks/{task}/stream?until=final",
            b.base
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut events = response.bytes_stream().eventsource();
    let mut got = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(20), events.next())
        .await
        .unwrap()
    {
        got.push(event.unwrap());
    }
    let ids: Vec<i64> = got.iter().map(|e| e.id.parse().unwrap()).collect();
    assert_eq!(ids, (1..=got.len() as i64).collect::<Vec<_>>());
    assert_eq!(got.first().unwrap().event, "turn_started");
    assert_eq!(got.last().unwrap().event, "final");
    let deltas = got.iter().filter(|e| e.event == "text_delta").count();
    assert!(
        deltas >= 2,
        "the turn streamed live across instances, not in one piece: {deltas}"
    );
    let text: String = got
        .iter()
        .filter(|e| e.event == "text_delta")
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(&e.data).unwrap()["delta"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "echo: across instances we stream");
    drop((a, b));
}

#[test]
fn a_key_revoked_on_one_instance_is_refused_there_at_once_and_on_the_other_as_announced() {
    let db = TestDatabase::new();
    let (_agent, token) = agent_and_key(db.url(), "{}");
    let mut admin = common::baton(db.url());
    admin.env("BATON_ADMIN_TOKEN", "a-long-admin-token-0123");
    let a = Server::start_command(admin, &[], std::process::Stdio::null());
    let b = Server::start(db.url(), &[]);
    let (on_a, on_b) = (api(&a, &token), api(&b, &token));
    // Both instances have just used (and so hold) the key.
    assert_eq!(on_a.get("/v1/chat/tasks").0, StatusCode::OK);
    assert_eq!(on_b.get("/v1/chat/tasks").0, StatusCode::OK);

    let revoked = common::client()
        .delete(format!("{}/v1/admin/keys/{token}", a.base))
        .bearer_auth("a-long-admin-token-0123")
        .send()
        .unwrap();
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    let at = Instant::now();
    assert_eq!(on_a.get("/v1/chat/tasks").0, StatusCode::UNAUTHORIZED);
    // The revoke is announced (NOTIFY), so the other instance drops the key it holds
    // well before the cache's one-second freshness bound would.
    while on_b.get("/v1/chat/tasks").0 != StatusCode::UNAUTHORIZED {
        assert!(
            at.elapsed() < Duration::from_millis(500),
            "the other instance refuses the key once the revoke is announced"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
