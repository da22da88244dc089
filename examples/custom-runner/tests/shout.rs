//! The example runs: its binary is `baton` with the `shout` runner, end to end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn baton(db: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton-example-custom-runner"));
    command
        .env("BATON_DATABASE_URL", db)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_LISTEN");
    command
}

fn cli(db: &str, args: &[&str]) -> String {
    let output = baton(db).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn a_shout_agent_answers_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("baton.db").display());
    let agent = cli(
        &db,
        &["agent", "create", "--name", "loud", "--runner", "shout"],
    );
    let key = cli(&db, &["key", "create", "--agent", &agent]);

    let mut server = baton(&db)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("the server exited").unwrap();
        if let Some(url) = line.strip_prefix("baton listening on ") {
            break url.to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    baton_test_support::init_tls();
    let http = reqwest::blocking::Client::new();
    let accepted: Value = http
        .post(format!("{base}/v1/chat/tasks"))
        .bearer_auth(&key)
        .json(&json!({"agent_id": agent.parse::<i64>().unwrap(), "message": {"content": "hello there"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let task: Value = http
        .get(format!(
            "{base}/v1/chat/tasks/{}?wait=20",
            accepted["task_id"]
        ))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(task["status"], "completed", "{task}");
    assert_eq!(task["latest_message"]["content"]["content"], "HELLO THERE");
}
