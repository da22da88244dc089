//! The example agent against baton's protocol: a turn signed as baton's `http` runner
//! signs it (the same `sign` function) is answered with NDJSON events; a turn signed
//! with another secret is refused with 401, which baton reports as `agent_unauthorized`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER: &str = "whsec_dGhpcyBpcyBub3QgdGhlIGFnZW50J3Mgc2VjcmV0IQ==";

struct Agent(Child, String);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent() -> Agent {
    let mut child = Command::new(env!("CARGO_BIN_EXE_baton-example-http-agent"))
        .arg("127.0.0.1:0")
        .env("AGENT_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().expect("the agent prints its port").unwrap();
    let port = line.strip_prefix("agent listening on ").unwrap().to_owned();
    Agent(child, format!("http://127.0.0.1:{port}/turn"))
}

async fn post_turn(url: &str, secret: &str, said: &str) -> reqwest::Response {
    let turn = json!({
        "type": "turn", "turn_id": 1, "agent": {"agent_id": 1, "name": "rust"},
        "task": {"task_id": 1, "agent_id": 1, "metadata": {}, "created_at": "2026-01-01T00:00:00Z"},
        "message": {"role": "user", "content": {"type": "text", "format": "plain", "content": said}},
        "history": [],
    });
    let body = serde_json::to_vec(&turn).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json");
    for (name, value) in baton_domain::webhooks::sign("turn_1_x", now, &body, &[secret.to_owned()])
    {
        request = request.header(name, value);
    }
    request.body(body).send().await.unwrap()
}

#[tokio::test]
async fn signed_turns_are_answered_with_events_and_others_refused() {
    baton_test_support::init_tls();
    let agent = start_agent();
    let response = post_turn(&agent.1, SECRET, "one two three").await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let text = response.text().await.unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        events,
        vec![
            json!({"type": "text_delta", "delta": "three"}),
            json!({"type": "text_delta", "delta": " two"}),
            json!({"type": "text_delta", "delta": " one"}),
            json!({"type": "final"}),
        ]
    );

    let refused = post_turn(&agent.1, OTHER, "hello").await;
    assert_eq!(refused.status().as_u16(), 401);
}
