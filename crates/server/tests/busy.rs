//! Messages sent while a turn runs, through the API of real `baton` processes: queued
//! (fifty at once, across a crash), interrupting (racing the turn's natural end) and
//! steered into the turn — on SQLite, and on two PostgreSQL instances.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::{Duration, Instant};

use baton_test_support::TestDatabase;
use common::{Api, FAST_LEASES, Server, agent_with, baton, client_with_timeout, sqlite_db};
use reqwest::StatusCode;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "an-admin-token-for-tests";

fn api<'a>(server: &'a Server, token: &'a str) -> Api<'a> {
    Api {
        http: client_with_timeout(Duration::from_secs(90)),
        base: &server.base,
        token,
    }
}

/// A server on `db` with the admin API on (and `extra` flags).
fn server_with_admin(db: &str, extra: &[&str]) -> Server {
    let mut command = baton(db);
    command.env("BATON_ADMIN_TOKEN", ADMIN_TOKEN);
    Server::start_command(command, extra, Stdio::null())
}

/// Changes an agent's runner configuration through the admin API.
fn set_runner_config(server: &Server, agent: i64, config: Value) {
    let response = client_with_timeout(Duration::from_secs(10))
        .patch(format!("{}/v1/admin/agents/{agent}", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"runner": {"kind": "echo", "config": config}}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// Waits until the task has no running turn and nothing queued.
fn drained(api: &Api, task: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, view) = api.get(&format!("/v1/chat/tasks/{task}"));
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] != "running" && view["queued"] == 0 {
            return view;
        }
        assert!(Instant::now() < deadline, "the queue did not drain: {view}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The task's whole history: (role, text, turn_id) of each message, in order.
fn history(api: &Api, task: i64) -> Vec<(String, String, i64)> {
    let mut messages = Vec::new();
    let mut path = format!("/v1/chat/tasks/{task}/messages?limit=100");
    loop {
        let (status, page) = api.get(&path);
        assert_eq!(status, StatusCode::OK, "{page}");
        messages.extend(page["data"].as_array().unwrap().iter().map(|m| {
            (
                m["role"].as_str().unwrap().to_owned(),
                m["content"]["content"].as_str().unwrap_or("").to_owned(),
                m["turn_id"].as_i64().unwrap(),
            )
        }));
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                path = format!("/v1/chat/tasks/{task}/messages?limit=100&cursor={cursor}")
            }
            None => return messages,
        }
    }
}

fn start_task(api: &Api, agent: i64, text: &str) -> (i64, i64) {
    let (status, body) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": text}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    (
        body["task_id"].as_i64().unwrap(),
        body["turn_id"].as_i64().unwrap(),
    )
}

/// Fifty messages queued at once behind a long turn (sent to the servers in turn,
/// half naming `enqueue`, half by the agent's default) are each answered `202 queued`
/// once, with its own place; once the long turn is cancelled, they start one after
/// another in the order they were queued, each answered by its own turn.
fn fifty_enqueued_messages_play_once_each_in_order(servers: &[&Server], db: &str) {
    let (agent, token) = agent_with(db, r#"{"delay_ms": 60000}"#, &["--on-busy", "enqueue"]);
    let apis: Vec<Api> = servers.iter().map(|s| api(s, &token)).collect();
    let (task, first_turn) = start_task(&apis[0], agent, "first");
    let path = format!("/v1/chat/tasks/{task}/messages");
    let answers: Vec<(usize, StatusCode, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|i| {
                let (target, path) = (&apis[i % apis.len()], &path);
                scope.spawn(move || {
                    let mut body =
                        json!({"agent_id": agent, "message": {"content": format!("m{i}")}});
                    if i % 2 == 0 {
                        body["on_busy"] = json!("enqueue");
                    }
                    let (status, answer) = target.post(path, body);
                    (i, status, answer)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut queued: Vec<(i64, usize)> = Vec::new();
    let mut positions = BTreeSet::new();
    for (i, status, answer) in &answers {
        assert_eq!(*status, StatusCode::ACCEPTED, "m{i}: {answer}");
        assert_eq!(answer["status"], "queued", "{answer}");
        assert_eq!(answer["turn_id"], Value::Null, "{answer}");
        queued.push((answer["queued_message_id"].as_i64().unwrap(), *i));
        positions.insert(answer["position"].as_u64().unwrap());
    }
    queued.sort();
    let ids: BTreeSet<i64> = queued.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), 50, "each message stored once");
    assert_eq!(positions, (1..=50).collect(), "each with its own place");
    let (_, view) = apis[0].get(&format!("/v1/chat/tasks/{task}"));
    assert_eq!(view["queued"], 50);
    assert_eq!(view["latest_turn"]["turn_id"], first_turn);

    // The queue plays quickly once the long turn is gone.
    set_runner_config(servers[0], agent, json!({}));
    std::thread::sleep(Duration::from_millis(1100)); // other instances hear of it
    let (status, cancelled) = apis[0].post(&format!("/v1/chat/tasks/{task}/cancel"), json!({}));
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    drained(&apis[apis.len() - 1], task, Duration::from_secs(60));

    let mut turns = Vec::new();
    for (id, i) in &queued {
        let (status, entry) = apis[0].get(&format!("/v1/chat/tasks/{task}/queue/{id}"));
        assert_eq!(status, StatusCode::OK, "{entry}");
        assert_eq!(entry["status"], "started", "m{i}: {entry}");
        assert_eq!(entry["message"]["content"]["content"], format!("m{i}"));
        turns.push(entry["turn_id"].as_i64().unwrap());
    }
    assert!(
        turns.windows(2).all(|pair| pair[0] < pair[1]),
        "started in the order they were queued: {turns:?}"
    );
    let mut expected = vec![("user".to_owned(), "first".to_owned(), first_turn)];
    for ((_, i), turn) in queued.iter().zip(&turns) {
        expected.push(("user".into(), format!("m{i}"), *turn));
        expected.push(("assistant".into(), format!("echo: m{i}"), *turn));
    }
    assert_eq!(history(&apis[0], task), expected);
}

#[test]
fn fifty_messages_queued_at_once_play_once_each_in_order_on_sqlite() {
    let (_dir, db) = sqlite_db();
    let server = server_with_admin(&db, &[]);
    fifty_enqueued_messages_play_once_each_in_order(&[&server], &db);
}

#[test]
fn fifty_messages_queued_at_once_on_two_instances_play_once_each_in_order() {
    let db = TestDatabase::new();
    let a = server_with_admin(db.url(), &[]);
    let b = server_with_admin(db.url(), &[]);
    fifty_enqueued_messages_play_once_each_in_order(&[&a, &b], db.url());
}

/// Starts a task and queues three messages behind its turn.
fn queue_three(api: &Api, agent: i64) -> (i64, i64) {
    let (task, first_turn) = start_task(api, agent, "first");
    for i in 0..3 {
        let (status, answer) = api.post(
            &format!("/v1/chat/tasks/{task}/messages"),
            json!({"agent_id": agent, "message": {"content": format!("m{i}")}, "on_busy": "enqueue"}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["position"], i + 1);
    }
    (task, first_turn)
}

/// After the crash: the interrupted turn failed, and each queued message was played
/// by a turn of its own, in order — nothing lost.
fn assert_queue_resumed(api: &Api, task: i64, first_turn: i64) {
    drained(api, task, Duration::from_secs(30));
    let messages = history(api, task);
    let said: Vec<(&str, &str)> = messages
        .iter()
        .map(|(role, text, _)| (role.as_str(), text.as_str()))
        .collect();
    assert_eq!(
        said,
        [
            ("user", "first"),
            ("user", "m0"),
            ("assistant", "echo: m0"),
            ("user", "m1"),
            ("assistant", "echo: m1"),
            ("user", "m2"),
            ("assistant", "echo: m2"),
        ]
    );
    assert_eq!(messages[0].2, first_turn);
    let (_, queue) = api.get(&format!("/v1/chat/tasks/{task}/queue"));
    assert_eq!(queue["data"], json!([]));
}

#[test]
fn a_queue_survives_kill_9_and_resumes_after_a_restart_on_sqlite() {
    let (_dir, db) = sqlite_db();
    // Long enough that the first turn is mid-play at the kill; the queued ones are
    // quick (the agent is changed after the restart).
    let (agent, token) = agent_with(&db, r#"{"delay_ms": 60000}"#, &[]);
    let mut server = server_with_admin(&db, &FAST_LEASES);
    let (task, first_turn) = queue_three(&api(&server, &token), agent);
    // The playing turn keeps the configuration it started with.
    set_runner_config(&server, agent, json!({}));
    server.signal("-KILL");
    server.wait_exit(Duration::from_secs(5));
    drop(server);
    // The restarted server fails the interrupted turn and hands its queue on.
    let restarted = server_with_admin(&db, &FAST_LEASES);
    let on = api(&restarted, &token);
    assert_queue_resumed(&on, task, first_turn);
    let view = on.settled(task);
    assert_eq!(view["status"], "completed", "{view}");
}

#[test]
fn a_killed_instances_queue_is_resumed_by_the_survivor() {
    let db = TestDatabase::new();
    let (agent, token) = agent_with(db.url(), r#"{"delay_ms": 60000}"#, &[]);
    let survivor = server_with_admin(db.url(), &FAST_LEASES);
    let mut doomed = server_with_admin(db.url(), &FAST_LEASES);
    let (task, first_turn) = queue_three(&api(&doomed, &token), agent);
    set_runner_config(&survivor, agent, json!({}));
    doomed.signal("-KILL");
    doomed.wait_exit(Duration::from_secs(5));
    // The survivor's sweep fails the dead instance's turn and starts the queue.
    assert_queue_resumed(&api(&survivor, &token), task, first_turn);
}

/// Thirty interrupts, sent to `send_to` at moments around the end of the turn running
/// (started on `play_on`): each is accepted and names the turn it interrupted, if it
/// found one running; every message is kept, in order.
fn interrupts_racing_the_turns_end(play_on: &Server, send_to: &Server, db: &str) {
    let (agent, token) = agent_with(db, r#"{"delay_ms": 200}"#, &[]);
    let (on, to) = (api(play_on, &token), api(send_to, &token));
    let (task, mut previous) = start_task(&on, agent, "r0");
    let (mut interrupted, mut ran_out) = (0, 0);
    for round in 1..=30 {
        // Now before the running turn's end, now after it, now at it.
        std::thread::sleep(Duration::from_millis((round * 37) % 280));
        let (status, answer) = to.post(
            &format!("/v1/chat/tasks/{task}/messages"),
            json!({"agent_id": agent, "message": {"content": format!("r{round}")}, "on_busy": "interrupt"}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        assert_eq!(answer["status"], "running", "{answer}");
        let turn = answer["turn_id"].as_i64().unwrap();
        assert!(turn > previous);
        match answer.get("interrupted_turn_id") {
            Some(ended) => {
                assert_eq!(ended, previous, "it interrupts the turn that ran");
                interrupted += 1;
            }
            None => ran_out += 1,
        }
        previous = turn;
    }
    let view = on.settled(task);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["latest_turn"]["turn_id"], previous);
    let users: Vec<String> = history(&on, task)
        .into_iter()
        .filter(|(role, _, _)| role == "user")
        .map(|(_, text, _)| text)
        .collect();
    let sent: Vec<String> = (0..=30).map(|round| format!("r{round}")).collect();
    assert_eq!(users, sent, "every message kept, in order");
    eprintln!("of 30 interrupts, {interrupted} interrupted a turn and {ran_out} found it ended");
}

#[test]
fn an_interrupt_racing_the_turns_natural_end_always_gets_a_clear_answer() {
    let (_dir, db) = sqlite_db();
    let server = server_with_admin(&db, &[]);
    interrupts_racing_the_turns_end(&server, &server, &db);
}

#[test]
fn interrupts_sent_to_another_instance_than_the_one_playing_the_turn() {
    let db = TestDatabase::new();
    let a = server_with_admin(db.url(), &[]);
    let b = server_with_admin(db.url(), &[]);
    interrupts_racing_the_turns_end(&a, &b, db.url());
}

/// The SSE stream of the task from its start until its first turn's end, as
/// `(event, data)` pairs.
fn first_turns_events(server: &Server, token: &str, task: i64) -> Vec<(String, Value)> {
    let body = client_with_timeout(Duration::from_secs(30))
        .get(format!(
            "{}/v1/chat/tasks/{task}/stream?after=0&until=final",
            server.base
        ))
        .bearer_auth(token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    body.split("\n\n")
        .filter_map(|frame| {
            let event = frame.lines().find_map(|l| l.strip_prefix("event: "))?;
            let data = frame.lines().find_map(|l| l.strip_prefix("data: "))?;
            Some((event.to_owned(), serde_json::from_str(data).unwrap()))
        })
        .collect()
}

/// A message sent to `send_to` while an echo turn plays on `play_on`, by the agent's
/// default (`steer`): taken by the turn and answered in it.
fn steered_into_an_echo_turn(play_on: &Server, send_to: &Server, db: &str) {
    let (agent, token) = agent_with(db, r#"{"delay_ms": 1500}"#, &["--on-busy", "steer"]);
    let (on, to) = (api(play_on, &token), api(send_to, &token));
    let (task, turn) = start_task(&on, agent, "first");
    // The agent's default: steer.
    let (status, steered) = to.post(
        &format!("/v1/chat/tasks/{task}/messages"),
        json!({"agent_id": agent, "message": {"content": "more"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{steered}");
    assert_eq!(steered["status"], "steering");
    assert_eq!(steered["turn_id"], turn, "it waits for the running turn");
    let id = steered["queued_message_id"].as_i64().unwrap();
    let view = on.settled(task);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["latest_turn"]["turn_id"], turn, "no other turn ran");
    let messages = history(&on, task);
    assert!(messages.iter().all(|(_, _, t)| *t == turn), "{messages:?}");
    let texts: BTreeSet<&str> = messages.iter().map(|(_, text, _)| text.as_str()).collect();
    assert_eq!(
        texts,
        BTreeSet::from(["first", "more", "echo: first", "echo: more"])
    );
    assert_eq!(messages.last().unwrap().1, "echo: more");
    let (_, entry) = on.get(&format!("/v1/chat/tasks/{task}/queue/{id}"));
    assert_eq!(entry["status"], "delivered", "{entry}");
    assert_eq!(entry["turn_id"], turn);
    let events = first_turns_events(send_to, &token, task);
    let delivered = events
        .iter()
        .find(|(event, _)| event == "message_delivered")
        .expect("the stream shows the delivery");
    assert_eq!(delivered.1["queued_message_id"], id);
    assert_eq!(delivered.1["message"]["content"]["content"], "more");
    assert_eq!(events.last().unwrap().0, "final");
}

#[test]
fn a_message_steered_into_an_echo_turn_is_answered_in_that_turn() {
    let (_dir, db) = sqlite_db();
    let server = server_with_admin(&db, &[]);
    steered_into_an_echo_turn(&server, &server, &db);
}

#[test]
fn a_message_steered_on_one_instance_reaches_the_turn_playing_on_the_other() {
    let db = TestDatabase::new();
    let a = server_with_admin(db.url(), &[]);
    let b = server_with_admin(db.url(), &[]);
    steered_into_an_echo_turn(&a, &b, db.url());
}

#[test]
fn a_message_steered_to_an_agent_that_cannot_take_one_is_queued() {
    // An http agent that takes the turn and never answers (and takes no messages).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            held.push(stream);
        }
    });
    let (_dir, db) = sqlite_db();
    let config = json!({"url": format!("http://127.0.0.1:{port}/turn"), "request_timeout_ms": 60000, "max_retries": 0});
    let (agent, token) = common::runner_agent(&db, "mute", "http", &config.to_string(), &[]);
    let server = server_with_admin(&db, &[]);
    let on = api(&server, &token);
    let (task, turn) = start_task(&on, agent, "first");
    let (status, answer) = on.post(
        &format!("/v1/chat/tasks/{task}/messages"),
        json!({"agent_id": agent, "message": {"content": "more"}, "on_busy": "steer"}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "queued", "{answer}");
    assert_eq!(answer["position"], 1);
    // Cancelling the turn starts the queued message's own.
    let (status, _) = on.post(&format!("/v1/chat/tasks/{task}/cancel"), json!({}));
    assert_eq!(status, StatusCode::OK);
    let id = answer["queued_message_id"].as_i64().unwrap();
    let (_, entry) = on.get(&format!("/v1/chat/tasks/{task}/queue/{id}"));
    assert_eq!(entry["status"], "started", "{entry}");
    assert!(entry["turn_id"].as_i64().unwrap() > turn);
    // A started message can no longer be cancelled.
    let response = on
        .http
        .delete(format!("{}/v1/chat/tasks/{task}/queue/{id}", server.base))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let err: Value = response.json().unwrap();
    assert_eq!(err["error"]["code"], "message_not_queued", "{err}");
}

/// A server stopped with SIGTERM ends its turn (by the agent's `fail` policy) without
/// starting the queued message's turn there; the next start's sweep starts it, and it
/// plays to its end.
#[test]
fn a_queue_left_by_a_stopping_server_is_played_after_its_restart() {
    let (_dir, db) = sqlite_db();
    let (agent, token) = agent_with(&db, r#"{"delay_ms": 60000}"#, &[]);
    let mut server = server_with_admin(&db, &["--shutdown-grace-secs", "1"]);
    let on = api(&server, &token);
    let (task, first_turn) = start_task(&on, agent, "first");
    let (status, queued) = on.post(
        &format!("/v1/chat/tasks/{task}/messages"),
        json!({"agent_id": agent, "message": {"content": "m0"}, "on_busy": "enqueue"}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{queued}");
    set_runner_config(&server, agent, json!({}));
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());
    drop(server);

    let restarted = server_with_admin(&db, &[]);
    let on = api(&restarted, &token);
    let view = drained(&on, task, Duration::from_secs(30));
    assert_eq!(view["status"], "completed", "{view}");
    let messages = history(&on, task);
    let said: Vec<(&str, &str)> = messages
        .iter()
        .map(|(role, text, _)| (role.as_str(), text.as_str()))
        .collect();
    assert_eq!(
        said,
        [("user", "first"), ("user", "m0"), ("assistant", "echo: m0")]
    );
    assert!(messages[1].2 > first_turn);
    let id = queued["queued_message_id"].as_i64().unwrap();
    let (_, entry) = on.get(&format!("/v1/chat/tasks/{task}/queue/{id}"));
    assert_eq!(entry["status"], "started", "{entry}");
}
