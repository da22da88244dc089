//! The `baton` binary as a user runs it: CLI commands, `serve`, signals, restarts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use common::{Api, Server, agent_and_key, baton, run, sqlite_db};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn readme_walkthrough_against_the_real_binary_then_revoke_and_sigterm() {
    let (_dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, r#"{"delay_ms": 800}"#);
    let mut server = Server::start(&db, &[]);
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };

    let (status, first) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"role": "user", "content": "hello"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let task = first["task_id"].as_i64().unwrap();
    let messages = format!("/v1/chat/tasks/{task}/messages");
    let (status, busy) = api.post(
        &messages,
        json!({"agent_id": agent, "message": {"content": "again"}}),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{busy}");
    assert_eq!(busy["error"]["code"], "task_busy");
    assert_eq!(
        api.settled(task)["latest_message"]["content"]["content"],
        "echo: hello"
    );
    let (status, second) = api.post(
        &messages,
        json!({"agent_id": agent, "message": {"content": "again"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    assert_eq!(
        api.settled(task)["latest_message"]["content"]["content"],
        "echo: again"
    );
    let (_, history) = api.get(&messages);
    assert_eq!(history["data"].as_array().unwrap().len(), 4);

    // The CLI writes to the same database while the server runs: another process's
    // revoke is seen within the key cache's freshness bound (one second).
    assert_eq!(api.get("/v1/chat/tasks").0, StatusCode::OK);
    let (ok, out, err) = run(&db, &["key", "revoke", &token]);
    let revoked = std::time::Instant::now();
    assert!(ok && out == "revoked", "{out} {err}");
    while api.get("/v1/chat/tasks").0 != StatusCode::UNAUTHORIZED {
        assert!(
            revoked.elapsed() < Duration::from_millis(1500),
            "a revoke by another process is seen within a second"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, _, err) = run(&db, &["key", "revoke", &token]);
    assert!(!ok && err.contains("no live key"), "{err}");

    server.signal("-TERM");
    assert!(
        server.wait_exit(Duration::from_secs(15)).success(),
        "SIGTERM is a clean exit"
    );
}

#[test]
fn sigterm_mid_turn_lets_the_turn_finish_before_exiting() {
    let (_dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, r#"{"delay_ms": 1000}"#);
    let mut server = Server::start(&db, &[]);
    let base = server.base.clone();
    let api = Api {
        http: common::client(),
        base: &base,
        token: &token,
    };
    let (status, first) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "late"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED);
    server.signal("-TERM");
    assert!(server.wait_exit(Duration::from_secs(15)).success());

    let server = Server::start(&db, &[]);
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    let done = api.settled(first["task_id"].as_i64().unwrap());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["latest_message"]["content"]["content"], "echo: late");
}

#[test]
fn serve_on_an_empty_database_explains_how_to_get_a_key_and_demo_makes_one() {
    let (_dir, db) = sqlite_db();
    let mut child = baton(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut hint = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if line.contains("no agents") {
            hint = line;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        hint.contains("baton agent create") && hint.contains("--demo"),
        "{hint}"
    );

    let server = Server::start(&db, &["--demo"]);
    let printed = server.stdout.join("\n");
    let token = server
        .stdout
        .iter()
        .find_map(|l| l.strip_prefix("export BATON_KEY="))
        .expect("--demo prints a key")
        .to_owned();
    assert!(printed.contains("curl -i -X POST"), "{printed}");
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    assert_eq!(api.get("/v1/chat/tasks").0, StatusCode::OK);
}

#[test]
fn cli_refuses_bad_input_with_a_clear_message() {
    let (dir, db) = sqlite_db();
    let (ok, _, err) = run(&db, &["agent", "create", "--name", "x", "--runner", "nope"]);
    assert!(!ok && err.contains("unknown runner"), "{err}");
    let (ok, _, err) = run(
        &db,
        &[
            "agent",
            "create",
            "--name",
            "x",
            "--runner",
            "echo",
            "--runner-config",
            "{\"delay\": 1}",
        ],
    );
    assert!(!ok && err.contains("runner.config"), "{err}");
    let (ok, _, err) = run(
        &db,
        &[
            "agent",
            "create",
            "--name",
            "x",
            "--runner",
            "echo",
            "--runner-config",
            "not json",
        ],
    );
    assert!(!ok && err.contains("must be JSON"), "{err}");
    let (ok, _, err) = run(&db, &["key", "create", "--agent", "999"]);
    assert!(!ok && err.contains("no agent with id 999"), "{err}");

    let config = dir.path().join("baton.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlistne = 1\n").unwrap();
    let (ok, _, err) = run(&db, &["--config", config.to_str().unwrap(), "migrate"]);
    assert!(!ok && err.contains("listne"), "{err}");

    let (ok, out, err) = run(&db, &["migrate"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("applied"), "{out}");
    let (ok, _, err) = run(&db, &["--database-url", "mysql://nope", "migrate"]);
    assert!(!ok && err.contains("sqlite://PATH"), "{err}");

    // The help names every built-in runner.
    let (ok, help, err) = run(&db, &["agent", "create", "--help"]);
    assert!(ok, "{err}");
    for kind in ["echo", "openai", "http"] {
        assert!(help.contains(&format!("`{kind}`")), "{kind}: {help}");
    }

    // A user's mistake is one line, even when backtraces are asked for.
    let output = baton(&db)
        .env("RUST_BACKTRACE", "1")
        .args(["key", "revoke", "bt_nosuchkey"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn config_prints_the_effective_settings_and_refuses_unknown_variables() {
    let (_dir, db) = sqlite_db();
    let output = baton(&db)
        .arg("config")
        .env("BATON_SQLITE_READERS", "9")
        .env(
            "BATON_WEBHOOKS_SIGNING_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("readers = 9"), "{printed}");
    assert!(
        printed.contains("# Left out: [webhooks] signing_secret"),
        "{printed}"
    );
    assert!(!printed.contains("MfKQ9r8"), "{printed}");
    assert!(
        !printed.contains("instance_id ="),
        "no instance id pinned: {printed}"
    );
    assert!(
        printed.contains(&format!("database_url = \"{db}\"")),
        "{printed}"
    );

    let output = baton(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("BATON_WROKERS", "4")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        err.contains("BATON_WROKERS") && err.contains("wrokers"),
        "{err}"
    );
}

#[test]
fn json_logs_carry_the_request_id_and_never_a_key_or_a_message() {
    let (dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    let log_path = dir.path().join("baton.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut server = Server::start_logging_to(&db, &["--log-format", "json"], log);
    let http = common::client();
    let mut ids = Vec::new();
    for (body, path) in [
        (
            json!({"agent_id": agent, "message": {"content": "confidential words"}}),
            "/v1/chat/tasks",
        ),
        (
            json!({"agent_id": agent, "message": {"content": ""}}),
            "/v1/chat/tasks",
        ),
        (json!({}), "/v1/nowhere"),
    ] {
        let response = http
            .post(format!("{}{path}", server.base))
            .bearer_auth(&token)
            .header("x-request-id", format!("trace-{}", ids.len()))
            .json(&body)
            .send()
            .unwrap();
        ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    // A stream opened with a token in its URL: the URL is logged without it.
    let created = http
        .post(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(&token)
        .header("x-request-id", "trace-create")
        .json(&json!({"agent_id": agent, "message": {"content": "streamed"}}))
        .send()
        .unwrap();
    let task = created.json::<serde_json::Value>().unwrap()["task_id"].clone();
    ids.push("trace-create".to_owned());
    let minted: serde_json::Value = http
        .post(format!("{}/v1/chat/tasks/{task}/stream-token", server.base))
        .bearer_auth(&token)
        .header("x-request-id", "trace-mint")
        .send()
        .unwrap()
        .json()
        .unwrap();
    ids.push("trace-mint".to_owned());
    let stream_token = minted["token"].as_str().unwrap().to_owned();
    let streamed = http
        .get(format!(
            "{}{}&until=final",
            server.base,
            minted["stream_url"].as_str().unwrap()
        ))
        .header("x-request-id", "trace-stream")
        .send()
        .unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.text().unwrap().contains("event: final"));
    ids.push("trace-stream".to_owned());
    // A turn that outlasts the SIGTERM keeps the server draining a while: a request
    // then is refused with 503, and logged like any other.
    let (slow, slow_token) = agent_and_key(&db, r#"{"delay_ms": 1500}"#);
    let response = http
        .post(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(&slow_token)
        .header("x-request-id", "trace-slow")
        .json(&json!({"agent_id": slow, "message": {"content": "slow"}}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    ids.push("trace-slow".to_owned());
    server.signal("-TERM");
    std::thread::sleep(Duration::from_millis(300));
    let response = http
        .get(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(&token)
        .header("x-request-id", "trace-draining")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    ids.push("trace-draining".to_owned());
    assert!(server.wait_exit(Duration::from_secs(15)).success());

    let text = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "request")
        .collect();
    assert_eq!(requests.len(), ids.len(), "{text}");
    for (line, id) in requests.iter().zip(&ids) {
        assert_eq!(line["span"]["request_id"], id.as_str(), "{line}");
        assert!(line["fields"]["status"].is_u64(), "{line}");
    }
    assert!(!text.contains(&token), "a key was logged");
    assert!(
        !text.contains(&stream_token),
        "a stream token was logged: {text}"
    );
    let signature = stream_token.rsplit('.').next().unwrap();
    assert!(!text.contains(signature));
    assert!(
        !text.contains("confidential words"),
        "a message body was logged"
    );
    let secret = token.rsplit('_').next().unwrap();
    assert!(!text.contains(secret));
}

#[test]
fn the_admin_api_exists_only_with_an_admin_token() {
    let (_dir, db) = sqlite_db();
    let off = Server::start(&db, &[]);
    let response = common::client()
        .get(format!("{}/v1/admin/agents", off.base))
        .bearer_auth("anything-at-all-really")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    drop(off);

    let mut child = baton(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("BATON_ADMIN_TOKEN", "a-long-admin-token-0123")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(url) = line.strip_prefix("baton listening on ") {
            break url.to_owned();
        }
    };
    // A key revoked through this server is refused from its next request on, though
    // the key was just used (and so is in the server's cache).
    let (agent, token) = agent_and_key(&db, "{}");
    let tasks = format!("{base}/v1/chat/tasks?agent_id={agent}");
    let listed = common::client()
        .get(&tasks)
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(listed.status(), StatusCode::OK);
    let response = common::client()
        .delete(format!("{base}/v1/admin/keys/{token}"))
        .bearer_auth("a-long-admin-token-0123")
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let refused = common::client()
        .get(&tasks)
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    let response = common::client()
        .post(format!("{base}/v1/admin/agents"))
        .bearer_auth("a-long-admin-token-0123")
        .json(&json!({"name": "made over HTTP", "runner": {"kind": "echo"}}))
        .send()
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let _ = child.kill();
    let _ = child.wait();
}

/// The README's conversation, run as written (only the address differs) by bash
/// against `serve --demo` on a new database: each step shows what the README says.
#[test]
fn the_readme_conversation_works_as_written() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("## A conversation with curl")
        .nth(1)
        .expect("the README has its conversation");
    let script = section
        .split("```sh\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("a sh block");
    let (_dir, db) = sqlite_db();
    let server = Server::start(&db, &["--demo"]);
    let export = |name: &str| {
        server
            .stdout
            .iter()
            .find_map(|l| l.strip_prefix(&format!("export {name}=")))
            .unwrap_or_else(|| panic!("serve --demo prints export {name}=…"))
            .to_owned()
    };
    let output = std::process::Command::new("bash")
        .arg("-c")
        .arg(script.replace("http://127.0.0.1:8080", &server.base))
        .env("BATON_KEY", export("BATON_KEY"))
        .env("BATON_AGENT", export("BATON_AGENT"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    // Each step's answer, in order.
    let mut rest: &str = &out;
    for step in [
        "HTTP/1.1 202 Accepted",
        "HTTP/1.1 409 Conflict",
        "\"code\":\"task_busy\"",
        // Queued behind the running turn, then played after it.
        "\"status\":\"queued\"",
        "\"position\":1",
        "\"status\":\"completed\"",
        "\"content\":\"echo: after you\"",
        "HTTP/1.1 202 Accepted",
        // The stream: the first turns replayed, then the third live to its end.
        "event: final",
        "\"queued_message_id\":1",
        "event: final",
        "event: turn_started",
        "event: text_delta",
        "\"delta\":\"again\"",
        "event: final",
        // The history, then the cancelled turn with what it had streamed.
        "\"content\":\"echo: and again\"",
        "\"status\":\"running\"",
        "\"status\":\"cancelled\"",
        "\"content\":\"echo: ",
        "\"streaming_status\":\"done\"",
        // The webhook's delivery is listed.
        "https://hooks.example.com/baton",
    ] {
        let at = rest
            .find(step)
            .unwrap_or_else(|| panic!("{step:?} not found after what came before in:\n{out}"));
        rest = &rest[at + step.len()..];
    }
}
