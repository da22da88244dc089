//! Real agents end to end: the `baton` binary playing turns with the `openai` runner
//! against a scripted OpenAI-compatible server, driven through the HTTP API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use baton_test_support::receiver::{Answer, Receiver, Reply};
use common::*;
use serde_json::{Value, json};

/// An `openai` agent on `model`, its key in `MODEL_KEY`, and a key for the agent.
fn openai_agent(db: &str, model: &Receiver) -> (i64, String) {
    let config = json!({
        "base_url": model.url().replace("/hook", "/v1"),
        "model": "m",
        "api_key_env": "MODEL_KEY",
        "system_prompt": "You are terse.",
        "max_retries": 0,
    })
    .to_string();
    runner_agent(db, "model", "openai", &config, &[])
}

fn serve_with_model_key(db: &str) -> Server {
    let mut command = baton(db);
    command.env("MODEL_KEY", "sk-end-to-end");
    Server::start_command(command, &[], Stdio::null())
}

fn settle(server: &Server, token: &str, task: i64) -> Value {
    client()
        .get(format!("{}/v1/chat/tasks/{task}?wait=20", server.base))
        .bearer_auth(token)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

#[test]
fn a_model_agent_answers_through_the_api_with_its_reasoning_and_usage() {
    let model = Receiver::start(|_| Reply::Answer(model_answer()));
    let (_dir, db) = sqlite_db();
    let (agent, token) = openai_agent(&db, &model);
    let server = serve_with_model_key(&db);

    let accepted: Value = client()
        .post(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(&token)
        .json(&json!({"agent_id": agent, "message": {"content": "Hi there"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let task = accepted["task_id"].as_i64().unwrap();
    let view = settle(&server, &token, task);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["latest_message"]["content"]["content"],
        "Hello, human."
    );
    assert_eq!(
        view["latest_turn"]["usage"],
        json!({"input_tokens": 21, "output_tokens": 4, "total_tokens": 25})
    );

    let history: Value = client()
        .get(format!("{}/v1/chat/tasks/{task}/messages", server.base))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let contents: Vec<Value> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json!([m["role"], m["content"]]))
        .collect();
    assert_eq!(
        contents,
        vec![
            json!(["user", {"type": "text", "format": "plain", "content": "Hi there"}]),
            json!(["assistant", {"type": "reasoning", "summary": [], "content": ["A greeting."]}]),
            json!(["assistant", {"type": "text", "format": "plain", "content": "Hello, human."}]),
        ]
    );

    let call = &model.received()[0];
    assert_eq!(call.path, "/v1/chat/completions");
    assert_eq!(call.header("authorization"), Some("Bearer sk-end-to-end"));
    assert_eq!(
        call.json()["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi there"},
        ])
    );

    // The next turn sends the conversation so far (the reasoning is the model's own).
    let response = client()
        .post(format!("{}/v1/chat/tasks/{task}/messages", server.base))
        .bearer_auth(&token)
        .json(&json!({"agent_id": agent, "message": {"content": "And again"}}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(settle(&server, &token, task)["status"], "completed");
    assert_eq!(
        model.received()[1].json()["messages"],
        json!([
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello, human."},
            {"role": "user", "content": "And again"},
        ])
    );
}

#[test]
fn a_refusing_model_fails_the_turn_with_its_code_and_message() {
    let model = Receiver::start(|_| {
        Reply::Answer(Answer::json(
            401,
            &json!({"error": {"message": "Incorrect API key provided: sk-end***"}}),
            &[],
        ))
    });
    let (_dir, db) = sqlite_db();
    let (agent, token) = openai_agent(&db, &model);
    let server = serve_with_model_key(&db);
    let accepted: Value = client()
        .post(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(&token)
        .json(&json!({"agent_id": agent, "message": {"content": "Hi"}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let view = settle(&server, &token, accepted["task_id"].as_i64().unwrap());
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["latest_turn"]["error"]["code"], "model_unauthorized");
    let message = view["latest_turn"]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("401") && message.contains("Incorrect API key"),
        "{message}"
    );
}

/// The example Python agent of docs/agents.md, on a free port, checking signatures
/// with `secret`.
struct PythonAgent {
    child: std::process::Child,
    url: String,
}

impl PythonAgent {
    fn start(secret: &str) -> PythonAgent {
        PythonAgent::start_with(secret, &[])
    }

    /// With more command-line arguments.
    fn start_with(secret: &str, args: &[&str]) -> PythonAgent {
        use std::io::BufRead;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/agents/python/agent.py"
        );
        let mut child = std::process::Command::new(baton_test_support::python::python())
            .arg(script)
            .args(["--port", "0"])
            .args(args)
            .env("AGENT_SECRET", secret)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("the agent prints its port").unwrap();
        let port = line.strip_prefix("agent listening on ").unwrap().to_owned();
        PythonAgent {
            child,
            url: format!("http://127.0.0.1:{port}/turn"),
        }
    }
}

impl Drop for PythonAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const AGENT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// An `http` agent at `url` signing with `$AGENT_SECRET`, a key, and the server with
/// `secret` in that variable.
fn http_agent_server(db: &str, url: &str, secret: &str) -> (i64, String, Server) {
    let config = json!({"url": url, "secret_env": "AGENT_SECRET", "max_retries": 0}).to_string();
    let (agent, token) = runner_agent(db, "py", "http", &config, &[]);
    let mut command = baton(db);
    command.env("AGENT_SECRET", secret);
    let server = Server::start_command(command, &[], Stdio::null());
    (agent, token, server)
}

fn start_task(server: &Server, token: &str, agent: i64, text: &str) -> i64 {
    let accepted: Value = client()
        .post(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(token)
        .json(&json!({"agent_id": agent, "message": {"content": text}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    accepted["task_id"].as_i64().unwrap()
}

#[test]
fn the_python_example_agent_answers_signed_turns_through_the_api() {
    let python = PythonAgent::start(AGENT_SECRET);
    let (_dir, db) = sqlite_db();
    let (agent, token, server) = http_agent_server(&db, &python.url, AGENT_SECRET);
    let task = start_task(&server, &token, agent, "one two three");
    let view = settle(&server, &token, task);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["latest_message"]["content"]["content"],
        "three two one"
    );
    assert_eq!(view["latest_turn"]["usage"]["output_tokens"], 3);

    // A second turn: the agent is sent the history (two user messages and its reply).
    let response = client()
        .post(format!("{}/v1/chat/tasks/{task}/messages", server.base))
        .bearer_auth(&token)
        .json(&json!({"agent_id": agent, "message": {"content": "a b"}}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let view = settle(&server, &token, task);
    assert_eq!(view["latest_message"]["content"]["content"], "b a");
    assert_eq!(view["latest_turn"]["usage"]["input_tokens"], 3);
}

#[test]
fn an_agent_refuses_a_wrongly_signed_turn_and_the_turn_fails_saying_so() {
    let python = PythonAgent::start(AGENT_SECRET);
    let (_dir, db) = sqlite_db();
    // The server signs with another secret than the agent checks.
    let other = "whsec_dGhpcyBpcyBub3QgdGhlIGFnZW50J3Mgc2VjcmV0IQ==";
    let (agent, token, server) = http_agent_server(&db, &python.url, other);
    let task = start_task(&server, &token, agent, "hello");
    let view = settle(&server, &token, task);
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(view["latest_turn"]["error"]["code"], "agent_unauthorized");
}

fn append(server: &Server, token: &str, task: i64, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/v1/chat/tasks/{task}/messages", server.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn tool_answer(agent: i64, id: &str, result: Value) -> Value {
    json!({"agent_id": agent, "message": {"role": "tool", "content": {
        "type": "tool_response", "tool_call_id": id, "name": "get_weather", "content": result}}})
}

#[test]
fn a_models_tool_calls_wait_for_the_clients_answers_which_start_the_next_turn() {
    let model = tool_model();
    let (_dir, db) = sqlite_db();
    let (agent, token) = tool_agent(&db, &model);
    let server = Server::start(&db, &[]);

    let task = start_task(&server, &token, agent, "Weather in Oslo and Rome?");
    let view = settle(&server, &token, task);
    assert_eq!(view["status"], "requires_action", "{view}");
    assert!(view["latest_turn"]["respond_by"].is_string(), "{view}");
    let asked = view["latest_message"]["content"].clone();
    assert_eq!(
        asked,
        json!({"type": "tool_request", "tool_call_id": "call_def", "name": "get_weather",
               "arguments": {"city": "Rome"}})
    );

    // The event stream says so, and a stream asked to end at the turn's end ends.
    let stream = client()
        .get(format!(
            "{}/v1/chat/tasks/{task}/stream?until=final",
            server.base
        ))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let last_event = stream
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .next_back()
        .unwrap();
    assert_eq!(last_event, "requires_action", "{stream}");

    // Not an answer: refused, nothing stored.
    let (status, body) = append(
        &server,
        &token,
        task,
        json!({"agent_id": agent, "message": {"content": "well?"}}),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "message.content.type");
    let (status, body) = append(
        &server,
        &token,
        task,
        tool_answer(agent, "call_zzz", json!(1)),
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("call_abc, call_def"),
        "{body}"
    );

    // One answer: accepted, the task still waits.
    let (status, body) = append(
        &server,
        &token,
        task,
        tool_answer(agent, "call_abc", json!({"celsius": 4})),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "requires_action");
    assert_eq!(model.received().len(), 1, "no turn yet");
    let waiting_stream = body["stream_url"].clone();

    // The last answer starts the next turn, which sends both results to the model.
    let (status, body) = append(
        &server,
        &token,
        task,
        tool_answer(agent, "call_def", json!("18 degrees")),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "running");
    // Both answers name the place the next turn's events start: nothing came between.
    assert_eq!(body["stream_url"], waiting_stream, "{body}");
    assert!(
        body["stream_url"]
            .as_str()
            .unwrap()
            .starts_with(&format!("/v1/chat/tasks/{task}/stream?after=")),
        "{body}"
    );
    let view = settle(&server, &token, task);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(
        view["latest_message"]["content"]["content"],
        "Hello, human."
    );
    let messages = model.received()[1].json()["messages"].clone();
    assert_eq!(
        messages,
        json!([
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_abc", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                {"id": "call_def", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_abc", "content": "{\"celsius\":4}"},
            {"role": "tool", "tool_call_id": "call_def", "content": "18 degrees"},
        ])
    );
}

#[test]
fn unanswered_tool_calls_fail_the_turn_when_they_are_due() {
    let model = tool_model();
    let (_dir, db) = sqlite_db();
    let (agent, token) = tool_agent(&db, &model);
    let mut command = baton(&db);
    command.env("BATON_TOOL_RESPONSE_TIMEOUT_SECS", "1");
    let server = Server::start_command(command, &["--sweep-interval-ms", "100"], Stdio::null());

    let task = start_task(&server, &token, agent, "Weather?");
    assert_eq!(settle(&server, &token, task)["status"], "requires_action");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = settle(&server, &token, task);
        if view["status"] != "requires_action" || std::time::Instant::now() > deadline {
            break view;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(view["status"], "failed", "{view}");
    assert_eq!(
        view["latest_turn"]["error"]["code"],
        "tool_response_timeout"
    );
    // The user writes again: the model is sent a history it accepts, each of the
    // unanswered calls followed by a result saying it was not answered.
    answers_are_late_and_a_message_starts_a_turn(&server, &token, agent, task, "still there?");
    assert_eq!(settle(&server, &token, task)["status"], "completed");
    let requests = model.received();
    let sent = requests.last().unwrap().json();
    assert_valid_chat(&sent["messages"]);
    let results: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        [baton_runners::openai::UNANSWERED_TOOL_CALL; 2],
        "{sent}"
    );
}

/// The Chat Completions rule: an assistant message with tool calls is followed by one
/// `tool` message per call, before any other message.
fn assert_valid_chat(messages: &Value) {
    let messages = messages.as_array().unwrap();
    let mut waiting: Vec<&str> = Vec::new();
    for message in messages {
        if message["role"] == "tool" {
            let id = message["tool_call_id"].as_str().unwrap();
            assert!(
                waiting.contains(&id),
                "a result for no pending call: {messages:?}"
            );
            waiting.retain(|w| *w != id);
            continue;
        }
        assert!(
            waiting.is_empty(),
            "calls {waiting:?} unanswered: {messages:?}"
        );
        for call in message["tool_calls"].as_array().into_iter().flatten() {
            waiting.push(call["id"].as_str().unwrap());
        }
    }
    assert!(
        waiting.is_empty(),
        "calls {waiting:?} unanswered: {messages:?}"
    );
}

#[test]
fn a_turn_waiting_for_tool_answers_can_be_cancelled() {
    let model = tool_model();
    let (_dir, db) = sqlite_db();
    let (agent, token) = tool_agent(&db, &model);
    let server = Server::start(&db, &[]);
    let task = start_task(&server, &token, agent, "Weather?");
    assert_eq!(settle(&server, &token, task)["status"], "requires_action");
    let cancel = || {
        let response = client()
            .post(format!("{}/v1/chat/tasks/{task}/cancel", server.base))
            .bearer_auth(&token)
            .send()
            .unwrap();
        (
            response.status().as_u16(),
            response.json::<Value>().unwrap(),
        )
    };
    let (status, view) = cancel();
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["status"], "cancelled");
    assert_eq!(cancel().0, 200, "a repeated cancel answers the same");
    answers_are_late_and_a_message_starts_a_turn(&server, &token, agent, task, "never mind");
}

/// Once a turn stopped waiting for tool answers, a late answer is refused (nothing
/// waits for it) and a user's message starts the next turn.
fn answers_are_late_and_a_message_starts_a_turn(
    server: &Server,
    token: &str,
    agent: i64,
    task: i64,
    text: &str,
) {
    let (status, _) = append(
        server,
        token,
        task,
        tool_answer(agent, "call_abc", json!(1)),
    );
    assert_eq!(status, 422);
    let (status, body) = append(
        server,
        token,
        task,
        json!({"agent_id": agent, "message": {"content": text}}),
    );
    assert_eq!(status, 202, "{body}");
}

/// An HTTP agent's answer: the text "ok", streamed, and the end.
fn agent_says_ok() -> Answer {
    Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/x-ndjson".into())],
        pieces: vec![
            b"{\"type\": \"text_delta\", \"delta\": \"ok\"}\n{\"type\": \"final\"}\n".to_vec(),
        ],
        pause: Duration::ZERO,
    }
}

#[test]
fn a_retried_turn_request_keeps_its_webhook_id_and_every_attempt_verifies() {
    let agent_service = Receiver::start(|n| match n {
        0 => Reply::Status(503),
        _ => Reply::Answer(agent_says_ok()),
    });
    let (_dir, db) = sqlite_db();
    let config =
        json!({"url": agent_service.url(), "secret_env": "AGENT_SECRET", "max_retries": 1})
            .to_string();
    let (agent, token) = runner_agent(&db, "svc", "http", &config, &[]);
    let mut command = baton(&db);
    command.env("AGENT_SECRET", AGENT_SECRET);
    let server = Server::start_command(command, &[], Stdio::null());

    let task = start_task(&server, &token, agent, "hi");
    assert_eq!(settle(&server, &token, task)["status"], "completed");
    let calls = agent_service.received();
    assert_eq!(calls.len(), 2, "one retry after the 503");
    assert_eq!(calls[0].header("webhook-id"), calls[1].header("webhook-id"));
    // The Standard Webhooks reference library accepts both attempts' signatures.
    assert_eq!(
        baton_test_support::standard_webhooks::verify(AGENT_SECRET, &calls),
        Ok(2)
    );
}

#[test]
fn each_turn_reaches_the_agent_with_the_metadata_of_its_request() {
    let agent_service = Receiver::start(|_| Reply::Answer(agent_says_ok()));
    let (_dir, db) = sqlite_db();
    let config = json!({"url": agent_service.url(), "max_retries": 0}).to_string();
    let (agent, token) = runner_agent(&db, "svc", "http", &config, &[]);
    let server = Server::start(&db, &[]);

    let first = json!({"user_params": {"locale": "nb", "plan": "pro"}});
    let accepted: Value = client()
        .post(format!("{}/v1/chat/tasks", server.base))
        .bearer_auth(&token)
        .json(&json!({"agent_id": agent, "message": {"content": "hi"}, "metadata": first}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let task = accepted["task_id"].as_i64().unwrap();
    assert_eq!(settle(&server, &token, task)["status"], "completed");
    let second = json!({"user_params": {"locale": "en"}});
    let (status, body) = append(
        &server,
        &token,
        task,
        json!({"agent_id": agent, "message": {"content": "again"}, "metadata": second}),
    );
    assert_eq!(status, 202, "{body}");
    assert_eq!(settle(&server, &token, task)["status"], "completed");

    let calls = agent_service.received();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].json()["metadata"], first);
    assert_eq!(calls[1].json()["metadata"], second);
    // The task's own metadata stays the first request's.
    assert_eq!(calls[1].json()["task"]["metadata"], first);
}

/// A signed request to a turn's inbox, as an agent service makes it; its status and body.
fn inbox_request(server: &Server, path: &str, body: Value, secret: &str) -> (u16, Value) {
    let body = body.to_string();
    let now = chrono::Utc::now().timestamp();
    let mut request = client()
        .post(format!("{}{path}", server.base))
        .header("content-type", "application/json");
    for (name, value) in
        baton_domain::webhooks::sign("msg_test", now, body.as_bytes(), &[secret.to_owned()])
    {
        request = request.header(name, value);
    }
    let response = request.body(body).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

#[test]
fn a_message_steered_into_an_http_agents_turn_is_taken_from_its_signed_inbox() {
    let (_dir, db) = sqlite_db();
    // The agent service needs the server's URL, and the server the service's: the
    // agent is made first and pointed at the service once both run.
    let config = |url: &str| json!({"url": url, "secret_env": "AGENT_SECRET", "max_retries": 0, "takes_messages": true});
    let (agent, token) = runner_agent(
        &db,
        "py",
        "http",
        &config("http://127.0.0.1:9/turn").to_string(),
        &["--on-busy", "steer"],
    );
    let admin = "an-admin-token-for-tests";
    let mut command = baton(&db);
    command
        .env("AGENT_SECRET", AGENT_SECRET)
        .env("BATON_ADMIN_TOKEN", admin);
    let server = Server::start_command(command, &[], Stdio::null());
    let python = PythonAgent::start_with(
        AGENT_SECRET,
        &["--baton", &server.base, "--inbox-wait-ms", "5000"],
    );
    let response = client()
        .patch(format!("{}/v1/admin/agents/{agent}", server.base))
        .bearer_auth(admin)
        .json(&json!({"runner": {"kind": "http", "config": config(&python.url)}}))
        .send()
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);

    let task = start_task(&server, &token, agent, "one two");
    let (status, steered) = append(
        &server,
        &token,
        task,
        json!({"agent_id": agent, "message": {"content": "three four"}}),
    );
    assert_eq!(status, 202, "{steered}");
    assert_eq!(steered["status"], "steering");
    let turn = steered["turn_id"].as_i64().unwrap();
    let view = settle(&server, &token, task);
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["latest_turn"]["turn_id"], turn, "no other turn ran");
    assert_eq!(view["latest_message"]["content"]["content"], "four three");
    let history: Value = client()
        .get(format!("{}/v1/chat/tasks/{task}/messages", server.base))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let messages = history["data"].as_array().unwrap();
    let said: std::collections::BTreeSet<(&str, &str)> = messages
        .iter()
        .map(|m| {
            assert_eq!(m["turn_id"], turn, "{m}");
            (
                m["role"].as_str().unwrap(),
                m["content"]["content"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        said,
        std::collections::BTreeSet::from([
            ("user", "one two"),
            ("user", "three four"),
            ("assistant", "two one"),
            ("assistant", "four three"),
        ])
    );
    let id = steered["queued_message_id"].as_i64().unwrap();
    let entry: Value = client()
        .get(format!("{}/v1/chat/tasks/{task}/queue/{id}", server.base))
        .bearer_auth(&token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(entry["status"], "delivered", "{entry}");

    // The inbox refuses a request not signed with the agent's secret, and tells the
    // agent when its turn is over.
    let path = format!("/v1/agents/{agent}/tasks/{task}/turns/{turn}/inbox");
    let other = "whsec_dGhpcyBpcyBub3QgdGhlIGFnZW50J3Mgc2VjcmV0IQ==";
    let (status, refused) = inbox_request(&server, &path, json!({"attempt": 1}), other);
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["error"]["code"], "unauthorized");
    let (status, ended) = inbox_request(&server, &path, json!({"attempt": 1}), AGENT_SECRET);
    assert_eq!(status, 409, "{ended}");
    assert_eq!(ended["error"]["code"], "turn_ended");
}
