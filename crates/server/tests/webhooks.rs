//! Webhooks end to end: the real `baton` binary delivering to a real HTTP receiver,
//! signatures checked by the Standard Webhooks reference verifier (Python, from PyPI).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use baton_test_support::TestDatabase;
use baton_test_support::receiver::{Receiver, Reply};
use baton_test_support::standard_webhooks;
use common::{Api, Server, agent_and_key, agent_with, run, sqlite_db};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The server's signing secret in these tests.
const SERVER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A config file for webhooks to loopback receivers with a fast retry schedule.
fn config(dir: &tempfile::TempDir, networks: &str, extra: &str) -> String {
    config_signed_by(dir, SERVER_SECRET, networks, extra)
}

fn config_signed_by(dir: &tempfile::TempDir, secrets: &str, networks: &str, extra: &str) -> String {
    let path = dir.path().join("baton.toml");
    std::fs::write(
        &path,
        format!(
            "[webhooks]\nsigning_secret = \"{secrets}\"\nallow_http = true\nallow_networks = [{networks}]\npoll_interval_ms = 50\nretry_schedule_ms = [200, 400]\n{extra}"
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn local(dir: &tempfile::TempDir) -> String {
    config(dir, "\"127.0.0.0/8\"", "")
}

fn api<'a>(server: &'a Server, token: &'a str) -> Api<'a> {
    Api {
        http: common::client(),
        base: &server.base,
        token,
    }
}

fn deliveries(api: &Api, task: i64) -> Vec<Value> {
    let (status, body) = api.get(&format!("/v1/chat/tasks/{task}/webhook-deliveries"));
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Polls the task's deliveries until the first one has this status.
fn delivery_when(api: &Api, task: i64, status: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let found = deliveries(api, task);
        if let Some(first) = found.first().filter(|d| d["status"] == status) {
            return first.clone();
        }
        assert!(Instant::now() < deadline, "no {status} delivery: {found:?}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn a_turns_end_is_signed_retried_with_one_id_and_verified_by_the_reference_verifier() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    let server = Server::start(&db, &["--config", &local(&dir)]);
    let api = api(&server, &token);
    // Fails twice, then takes it.
    let receiver = Receiver::start(|n| Reply::Status(if n < 2 { 500 } else { 204 }));
    let (status, created) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "ping"}, "metadata": {"trace": "t-1"},
               "webhook": {"url": receiver.url()}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let task = created["task_id"].as_i64().unwrap();

    let got = receiver.wait_for(3, Duration::from_secs(15));
    let ids: HashSet<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "the same webhook-id on every attempt");
    assert!(
        got.iter().all(|r| r.body == got[0].body),
        "the same body on every attempt"
    );
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(150), "backoff: {gaps:?}");
    assert!(
        gaps[1] >= Duration::from_millis(300),
        "backoff grows: {gaps:?}"
    );
    let body = got[0].json();
    assert_eq!(body["type"], "turn.completed");
    assert_eq!(body["data"]["task_id"], task);
    assert_eq!(body["data"]["turn_id"], created["turn_id"]);
    assert_eq!(body["data"]["status"], "completed");
    assert_eq!(
        body["data"]["output"][0]["content"]["content"],
        "echo: ping"
    );
    assert_eq!(body["data"]["metadata"]["trace"], "t-1");
    assert_eq!(got[0].header("content-type"), Some("application/json"));

    // A verifier nobody here wrote accepts every attempt's signature.
    assert_eq!(standard_webhooks::verify(SERVER_SECRET, &got), Ok(3));
    let wrong = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    assert!(
        standard_webhooks::verify(wrong, &got[..1]).is_err(),
        "and it does check"
    );

    let delivered = delivery_when(&api, task, "delivered", Duration::from_secs(5));
    let attempts: Vec<(Value, bool)> = delivered["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["status_code"].clone(), a["error"].is_null()))
        .collect();
    assert_eq!(
        attempts,
        [(json!(500), false), (json!(500), false), (json!(204), true)]
    );
    assert_eq!(
        delivered["webhook_id"],
        got[0].header("webhook-id").unwrap()
    );
    assert!(delivered["attempts"][0]["latency_ms"].is_u64());
}

#[test]
fn an_agents_default_webhook_with_its_own_secret_and_per_request_secrets() {
    let (dir, db) = sqlite_db();
    let receiver = Receiver::answering(200);
    let server_config = local(&dir);
    // The agent's default webhook; its secret is made and shown once.
    let (ok, agent, err) = run(
        &db,
        &[
            "--config",
            &server_config,
            "agent",
            "create",
            "--name",
            "hooked",
            "--runner",
            "echo",
            "--webhook-url",
            &receiver.url(),
        ],
    );
    assert!(ok, "{err}");
    let agent_secret = err
        .split_whitespace()
        .find(|w| w.starts_with("whsec_"))
        .expect("the new secret is printed")
        .to_owned();
    let (ok, token, err) = run(&db, &["key", "create", "--agent", &agent]);
    assert!(ok, "{err}");
    let server = Server::start(&db, &["--config", &server_config]);
    let api = api(&server, &token);
    let agent: i64 = agent.parse().unwrap();

    let (_, by_default) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "to the agent's webhook"}}),
    );
    let first = receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!(first[0].json()["data"]["task_id"], by_default["task_id"]);
    assert_eq!(standard_webhooks::verify(&agent_secret, &first), Ok(1));

    // A request's own secret signs its delivery; a request without one, to another
    // URL, is signed with the agent's.
    let own = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    let (status, _) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "own"}, "webhook": {"url": receiver.url(), "secret": own}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED);
    let second = receiver.wait_for(2, Duration::from_secs(10));
    assert_eq!(standard_webhooks::verify(own, &second[1..]), Ok(1));
    let other = Receiver::answering(200);
    let (status, _) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "other url"}, "webhook": {"url": other.url()}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED);
    let third = other.wait_for(1, Duration::from_secs(10));
    assert_eq!(standard_webhooks::verify(&agent_secret, &third), Ok(1));
}

#[test]
fn while_a_secret_is_rotated_deliveries_carry_a_signature_per_secret() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    let next = "whsec_QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    let both = format!("{next} {SERVER_SECRET}");
    let server = Server::start(
        &db,
        &[
            "--config",
            &config_signed_by(&dir, &both, "\"127.0.0.1\"", ""),
        ],
    );
    let receiver = Receiver::answering(200);
    api(&server, &token).post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}, "webhook": {"url": receiver.url()}}),
    );
    let got = receiver.wait_for(1, Duration::from_secs(10));
    assert_eq!(
        got[0]
            .header("webhook-signature")
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    // Receivers still on the old secret and those already on the new one both verify.
    assert_eq!(standard_webhooks::verify(SERVER_SECRET, &got), Ok(1));
    assert_eq!(standard_webhooks::verify(next, &got), Ok(1));
}

#[test]
fn a_receiver_down_for_the_whole_schedule_fails_visibly_and_can_be_redelivered() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, r#"{"fail": true}"#);
    let config = local(&dir);
    let server = Server::start(&db, &["--config", &config]);
    let api = api(&server, &token);
    // Down for the first round (three attempts), up afterwards.
    let receiver = Receiver::start(|n| Reply::Status(if n < 3 { 503 } else { 200 }));
    let (_, created) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}, "webhook": {"url": receiver.url()}}),
    );
    let task = created["task_id"].as_i64().unwrap();
    let failed = delivery_when(&api, task, "failed", Duration::from_secs(15));
    assert_eq!(failed["event_type"], "turn.failed");
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 3);
    assert!(
        failed["attempts"][2]["error"]
            .as_str()
            .unwrap()
            .contains("503")
    );
    assert_eq!(failed["next_attempt_at"], Value::Null);
    assert_eq!(receiver.received().len(), 3);
    assert_eq!(
        receiver.received()[0].json()["data"]["error"]["code"],
        "echo_failed"
    );

    let id = failed["delivery_id"].as_i64().unwrap().to_string();
    let (ok, out, err) = run(&db, &["--config", &config, "webhook", "redeliver", &id]);
    assert!(ok && out == "due again", "{out} {err}");
    let delivered = delivery_when(&api, task, "delivered", Duration::from_secs(10));
    assert_eq!(delivered["attempts"].as_array().unwrap().len(), 4);
    let got = receiver.received();
    assert_eq!(got[3].header("webhook-id"), got[0].header("webhook-id"));
    let (ok, _, err) = run(
        &db,
        &["--config", &config, "webhook", "redeliver", "987654"],
    );
    assert!(!ok && err.contains("no webhook delivery 987654"), "{err}");
}

#[test]
fn a_kill_during_a_delivery_is_sent_again_after_restart_with_the_same_id() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    // A send may take 1 s; a claim lasts 1.5 s, then a dead sender's delivery is due.
    let config = config(
        &dir,
        "\"127.0.0.0/8\"",
        "timeout_ms = 1000\nclaim_ms = 1500\n",
    );
    let mut server = Server::start(&db, &["--config", &config]);
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    });
    let (_, created) = api(&server, &token).post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}, "webhook": {"url": receiver.url()}}),
    );
    let task = created["task_id"].as_i64().unwrap();
    receiver.wait_for(1, Duration::from_secs(10));
    server.signal("-KILL");
    server.wait_exit(Duration::from_secs(5));

    let restarted = Instant::now();
    let server = Server::start(&db, &["--config", &config]);
    let got = receiver.wait_for(2, Duration::from_secs(10));
    assert_eq!(got[0].header("webhook-id"), got[1].header("webhook-id"));
    assert!(
        restarted.elapsed() < Duration::from_secs(5),
        "sent again once the claim ran out"
    );
    let delivered = delivery_when(
        &api(&server, &token),
        task,
        "delivered",
        Duration::from_secs(5),
    );
    assert_eq!(
        delivered["attempts"].as_array().unwrap().len(),
        1,
        "the killed attempt left no record"
    );
}

#[test]
fn internal_destinations_are_refused_at_submit_when_literal_and_at_send_when_resolved() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    // Plain http is allowed (for the test), internal networks are not.
    let config = config(&dir, "", "");
    let server = Server::start(&db, &["--config", &config]);
    let api = api(&server, &token);
    let receiver = Receiver::answering(200);
    for (url, why) in [
        (receiver.url(), "loopback"),
        (
            "http://169.254.169.254/latest/meta-data".to_owned(),
            "metadata",
        ),
        ("http://10.0.0.7/hook".to_owned(), "private"),
        ("http://[::1]:9/hook".to_owned(), "loopback"),
        ("ftp://hooks.example.com/".to_owned(), "https"),
    ] {
        let (status, body) = api.post(
            "/v1/chat/tasks",
            json!({"agent_id": agent, "message": {"content": "x"}, "webhook": {"url": url}}),
        );
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["error"]["fields"][0]["field"], "webhook.url");
        assert!(
            body["error"]["fields"][0]["reason"]
                .as_str()
                .unwrap()
                .contains(why),
            "{body}"
        );
    }
    let (status, body) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}, "webhook": {"url": "https://h.example/", "secret": "nope"}}),
    );
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "webhook.secret");
    let (_, tasks) = api.get("/v1/chat/tasks");
    assert!(
        tasks["data"].as_array().unwrap().is_empty(),
        "refusals stored nothing"
    );

    // A name is only known after resolution: accepted, then refused at send time.
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    let (status, created) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}, "webhook": {"url": by_name}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{created}");
    let failed = delivery_when(
        &api,
        created["task_id"].as_i64().unwrap(),
        "failed",
        Duration::from_secs(15),
    );
    let error = failed["attempts"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("localhost resolves to a loopback address"),
        "{error}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing reached the internal address"
    );
}

#[test]
fn deliveries_of_other_agents_tasks_are_not_found() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    let (_, other_token) = agent_with(&db, "{}", &[]);
    let server = Server::start(&db, &["--config", &local(&dir)]);
    let (_, created) = api(&server, &token).post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "x"}}),
    );
    let task = created["task_id"].as_i64().unwrap();
    let path = format!("/v1/chat/tasks/{task}/webhook-deliveries");
    let (status, body) = api(&server, &other_token).get(&path);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("task_not_found"))
    );
    assert!(
        deliveries(&api(&server, &token), task).is_empty(),
        "no webhook, no delivery"
    );
}

#[test]
fn two_instances_on_postgresql_deliver_each_turn_end_once() {
    let db = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    let config = local(&dir);
    let (agent, token) = agent_and_key(db.url(), "{}");
    let a = Server::start(db.url(), &["--config", &config]);
    let b = Server::start(db.url(), &["--config", &config]);
    let receiver = Receiver::answering(200);
    let mut tasks = Vec::new();
    for i in 0..10 {
        let on = if i % 2 == 0 { &a } else { &b };
        let (status, created) = api(on, &token).post(
            "/v1/chat/tasks",
            json!({"agent_id": agent, "message": {"content": format!("m{i}")}, "webhook": {"url": receiver.url()}}),
        );
        assert_eq!(status, StatusCode::ACCEPTED, "{created}");
        tasks.push(created["task_id"].as_i64().unwrap());
    }
    let got = receiver.wait_for(10, Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let got_after = receiver.received();
    assert_eq!(
        got_after.len(),
        10,
        "no delivery sent twice by the two senders"
    );
    let ids: HashSet<&str> = got
        .iter()
        .map(|r| r.header("webhook-id").unwrap())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(standard_webhooks::verify(SERVER_SECRET, &got), Ok(10));
    for task in tasks {
        delivery_when(&api(&b, &token), task, "delivered", Duration::from_secs(5));
    }
}
