//! The A2A binding with a real third-party client: the `a2a-sdk` package's client
//! (PyPI, pinned) holds a conversation with a baton agent — the Agent Card, messages
//! answered blocking and at once, cancel (twice), `GetTask` with `historyLength`,
//! the errors A2A names, `ListTasks`, a streamed reply, a stream cut and resumed by
//! baton's event id (on another instance, on PostgreSQL) — over both bindings
//! (JSON-RPC, HTTP+JSON) on SQLite and PostgreSQL; answers tool calls; and manages
//! push notification configs and receives the pushes (signed, retried).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use baton_test_support::TestDatabase;
use common::{Server, agent_with, sqlite_db};
use serde_json::{Value, json};

/// The conversation on a server of `db` over `binding` (`JSONRPC`, `HTTP+JSON`); with
/// `resume_elsewhere`, the cut stream is resumed on a second instance.
fn conversation(db: &str, resume_elsewhere: bool, binding: &str) {
    let (agent, key) = agent_with(db, r#"{"delay_ms": 1500}"#, &[]);
    let server = Server::start(db, &[]);
    let other = resume_elsewhere.then(|| Server::start(db, &[]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/a2a/conversation.py");
    let other_base = other.as_ref().map(|o| o.base.clone()).unwrap_or_default();
    let args = [
        server.base.clone(),
        agent.to_string(),
        key.clone(),
        other_base,
        binding.to_owned(),
    ];
    let output = std::process::Command::new(baton_test_support::python::python())
        .arg(script)
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let report_text = report.to_string();

    // The card names the agent, its two interfaces and the bearer key.
    let card = &report["card"];
    assert_eq!(card["name"], "t", "{report_text}");
    let interfaces = card["supportedInterfaces"].as_array().unwrap();
    let bindings: Vec<&Value> = interfaces.iter().map(|i| &i["protocolBinding"]).collect();
    assert_eq!(
        bindings,
        [&json!("JSONRPC"), &json!("HTTP+JSON")],
        "{report_text}"
    );
    for interface in interfaces {
        assert_eq!(interface["protocolVersion"], "1.0", "{report_text}");
        assert_eq!(
            interface["url"],
            format!("{}/a2a/{agent}", server.base),
            "{report_text}"
        );
    }
    // The client spoke the binding asked for.
    let transport = match binding {
        "HTTP+JSON" => "RestTransport",
        _ => "JsonRpcTransport",
    };
    assert_eq!(report["resume"]["transport"], transport, "{report_text}");
    assert_eq!(
        card["securitySchemes"]["agent_key"]["httpAuthSecurityScheme"]["scheme"], "Bearer",
        "{report_text}"
    );

    // Answered when the turn ended: the reply is the task's artifact.
    let first = &report["first"];
    assert_eq!(first["state"], "TASK_STATE_COMPLETED", "{report_text}");
    assert_eq!(first["context"], first["id"], "a task is its own context");
    assert_eq!(first["artifact"], json!([["echo: hello there"]]));
    assert_eq!(
        first["history"],
        json!([
            ["ROLE_USER", ["hello there"]],
            ["ROLE_AGENT", ["echo: hello there"]]
        ])
    );
    // Answered at once, then cancelled; cancelling again answers the same.
    assert_eq!(report["immediate"]["state"], "TASK_STATE_WORKING");
    assert_eq!(report["immediate"]["id"], first["id"]);
    assert_eq!(
        report["cancel"],
        json!({"state": "TASK_STATE_CANCELED", "again": "TASK_STATE_CANCELED"})
    );
    // historyLength 2: the last two messages (the cancelled turn's message; its
    // partial reply, if it had streamed one by the cancel).
    let got = &report["get"];
    assert_eq!(got["state"], "TASK_STATE_CANCELED");
    let history = got["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{report_text}");
    assert!(
        history
            .iter()
            .any(|m| m == &json!(["ROLE_USER", ["and again"]])),
        "{report_text}"
    );
    // The third turn, to its end, without history; then not cancelable.
    assert_eq!(
        report["third"],
        json!({"state": "TASK_STATE_COMPLETED", "artifact": [["echo: third"]], "history": 0})
    );
    assert_eq!(report["not_cancelable"], "TaskNotCancelableError");
    assert_eq!(report["not_found"], "TaskNotFoundError");
    // Newest first.
    assert_eq!(report["list"], json!([report["second"], first["id"]]));

    // Streamed: the task, its turn's start, its text in artifact chunks (appended
    // after the first, the last marked), its end.
    let streamed = report["streamed"].as_array().unwrap();
    assert_eq!(
        streamed[0]["task"]["status"]["state"], "TASK_STATE_WORKING",
        "{report_text}"
    );
    assert_eq!(
        streamed[1]["statusUpdate"]["status"]["state"],
        "TASK_STATE_WORKING"
    );
    let last = streamed.last().unwrap();
    assert_eq!(
        last["statusUpdate"]["status"]["state"], "TASK_STATE_COMPLETED",
        "{report_text}"
    );
    let chunks: Vec<&Value> = streamed
        .iter()
        .filter_map(|e| e.get("artifactUpdate"))
        .collect();
    assert!(chunks.len() >= 3, "{report_text}");
    assert_eq!(
        chunks[0].get("append"),
        None,
        "the first chunk starts the artifact"
    );
    assert!(
        chunks[1..].iter().all(|c| c["append"] == true),
        "{report_text}"
    );
    assert_eq!(chunks.last().unwrap()["lastChunk"], true);
    let text: String = chunks
        .iter()
        // The last chunk has no parts (protobuf's JSON then leaves the field out).
        .flat_map(|c| c["artifact"]["parts"].as_array().into_iter().flatten())
        .filter_map(|p| p["text"].as_str())
        .collect();
    assert_eq!(text, "echo: one two three four five six seven eight");
    // Every update carries baton's event id, increasing.
    let ids: Vec<i64> = streamed[1..]
        .iter()
        .map(|e| {
            let update = e.get("artifactUpdate").or(e.get("statusUpdate")).unwrap();
            // A protobuf Struct holds numbers as doubles.
            update["metadata"]["baton"]["event_id"].as_f64().unwrap() as i64
        })
        .collect();
    assert!(ids.windows(2).all(|w| w[0] <= w[1]), "{ids:?}");

    // Cut mid-turn and resumed after the last event id seen: the text whole, once.
    let resume = &report["resume"];
    assert!(
        resume["cut_after"].is_i64(),
        "the stream was cut mid-turn: {report_text}"
    );
    assert_eq!(resume["final"], "TASK_STATE_COMPLETED", "{report_text}");
    assert_eq!(
        resume["text"],
        "echo: alpha beta gamma delta epsilon zeta eta theta"
    );
    assert_eq!(resume["text"], resume["stored"]);
    let resumed_at = other.as_ref().unwrap_or(&server);
    assert_eq!(
        resume["resumed_at"],
        format!("{}/a2a/{agent}", resumed_at.base),
        "{report_text}"
    );
}

#[test]
fn an_a2a_sdk_client_converses_with_a_baton_agent_on_sqlite() {
    let (_dir, db) = sqlite_db();
    conversation(&db, false, "JSONRPC");
}

#[test]
fn an_a2a_sdk_client_converses_over_http_json_on_sqlite() {
    let (_dir, db) = sqlite_db();
    conversation(&db, false, "HTTP+JSON");
}

/// On PostgreSQL the cut stream is resumed on another instance than the one the turn
/// plays on.
#[test]
fn an_a2a_sdk_client_converses_with_a_baton_agent_on_two_postgres_instances() {
    let db = TestDatabase::new();
    conversation(db.url(), true, "JSONRPC");
}

#[test]
fn an_a2a_sdk_client_converses_over_http_json_on_two_postgres_instances() {
    let db = TestDatabase::new();
    conversation(db.url(), true, "HTTP+JSON");
}

/// A JSON-RPC request to the agent's A2A endpoint; the HTTP status and the answer.
fn call(
    server: &Server,
    agent: i64,
    key: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut request = common::client()
        .post(format!("{}/a2a/{agent}", server.base))
        .bearer_auth(key)
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.body(body.to_owned()).send().unwrap();
    (response.status().as_u16(), response.json().unwrap())
}

fn rpc(server: &Server, agent: i64, key: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let (status, answer) = call(server, agent, key, &[], &body.to_string());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], 7, "{answer}");
    answer
}

fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {answer}"))
}

fn text_message(id: &str, text: &str) -> Value {
    json!({"messageId": id, "role": "ROLE_USER", "parts": [{"text": text}]})
}

#[test]
fn the_json_rpc_binding_answers_as_a2a_names_it() {
    let (_dir, db) = sqlite_db();
    let (agent, key) = agent_with(&db, r#"{"delay_ms": 2000}"#, &[]);
    let (other, _) = agent_with(&db, "{}", &[]);
    let server = Server::start(&db, &[]);

    // What is not a request, in the protocol's words.
    let (status, parse) = call(&server, agent, &key, &[], "{not json");
    assert_eq!(
        (status, error_code(&parse), &parse["id"]),
        (200, -32700, &Value::Null)
    );
    let (status, invalid) = call(&server, agent, &key, &[], r#"{"id": 1, "method": 3}"#);
    assert_eq!((status, error_code(&invalid)), (200, -32600));
    assert_eq!(
        error_code(&rpc(&server, agent, &key, "Nope", json!({}))),
        -32601
    );
    let (_, version) = call(
        &server,
        agent,
        &key,
        &[("A2A-Version", "2.0")],
        r#"{"jsonrpc": "2.0", "id": 1, "method": "GetTask", "params": {"id": "1"}}"#,
    );
    assert_eq!(error_code(&version), -32009, "{version}");
    // Not this key's agent, or no key: baton's own envelopes.
    let (status, refused) = call(&server, other, &key, &[], "{}");
    assert_eq!(
        (status, &refused["error"]["code"]),
        (404, &json!("agent_not_found"))
    );
    let (status, _) = call(&server, agent, "bt_nope", &[], "{}");
    assert_eq!(status, 401);
    // The card likewise: only the key's own agent's, and only with the key.
    let card = |agent: i64, key: Option<&str>| {
        let mut request = common::client().get(format!(
            "{}/a2a/{agent}/.well-known/agent-card.json",
            server.base
        ));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send().unwrap().status().as_u16()
    };
    assert_eq!(
        (
            card(agent, Some(&key)),
            card(other, Some(&key)),
            card(agent, None)
        ),
        (200, 404, 401)
    );

    // What baton cannot take, before anything is stored: a client that accepts no
    // output baton gives, a file by a URL that is not http(s).
    let images_only = json!({"message": text_message("u-1", "hi"),
        "configuration": {"acceptedOutputModes": ["image/png"]}});
    assert_eq!(
        error_code(&rpc(&server, agent, &key, "SendMessage", images_only)),
        -32005
    );
    let ftp = json!({"message": {"messageId": "u-1", "parts": [
        {"text": "see"}, {"url": "ftp://example.com/a.png"}]}});
    let refused = rpc(&server, agent, &key, "SendMessage", ftp);
    assert_eq!(error_code(&refused), -32602, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("attachments[0].url")),
        "{refused}"
    );
    let from_agent =
        json!({"message": {"messageId": "u-2", "role": "ROLE_AGENT", "parts": [{"text": "hi"}]}});
    assert_eq!(
        error_code(&rpc(&server, agent, &key, "SendMessage", from_agent)),
        -32602
    );
    // A push config to an internal address is refused with its message.
    let push = json!({"message": text_message("u-3", "hi"), "configuration": {"taskPushNotificationConfig": {"url": "https://127.0.0.1/hook"}}});
    let refused = rpc(&server, agent, &key, "SendMessage", push);
    assert_eq!(error_code(&refused), -32602);
    assert!(
        refused["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("push.url")),
        "{refused}"
    );
    for (method, code) in [
        ("ListTaskPushNotificationConfigs", -32602),
        ("GetExtendedAgentCard", -32007),
    ] {
        assert_eq!(
            error_code(&rpc(&server, agent, &key, method, json!({}))),
            code,
            "{method}"
        );
    }

    // A message's id is its idempotency key: sent again, it starts nothing.
    let first = json!({"message": text_message("m-1", "hello"), "configuration": {"returnImmediately": true}});
    let started = rpc(&server, agent, &key, "SendMessage", first.clone());
    let task = started["result"]["task"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        started["result"]["task"]["status"]["state"],
        "TASK_STATE_WORKING"
    );
    let again = rpc(&server, agent, &key, "SendMessage", first);
    assert_eq!(again["result"]["task"]["id"], task.as_str());
    let reused = json!({"message": text_message("m-1", "something else"), "configuration": {"returnImmediately": true}});
    assert_eq!(
        error_code(&rpc(&server, agent, &key, "SendMessage", reused)),
        -32602
    );
    // While the turn runs, the agent's default (reject) refuses another message.
    let busy =
        json!({"message": {"messageId": "m-2", "taskId": task, "parts": [{"text": "more"}]}});
    let refused = rpc(&server, agent, &key, "SendMessage", busy);
    assert_eq!(error_code(&refused), -32004);
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("on_busy"),
        "{refused}"
    );
    // A context is its task: a message naming only the context continues it.
    let done = rpc(&server, agent, &key, "GetTask", json!({"id": task}));
    assert_eq!(
        done["result"]["history"].as_array().unwrap().len(),
        1,
        "sent once: {done}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while rpc(&server, agent, &key, "GetTask", json!({"id": task}))["result"]["status"]["state"]
        != "TASK_STATE_COMPLETED"
    {
        assert!(std::time::Instant::now() < deadline, "the turn did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let continued = rpc(
        &server,
        agent,
        &key,
        "SendMessage",
        json!({"message": {"messageId": "m-3", "contextId": task, "parts": [{"text": "in context"}]},
               "configuration": {"returnImmediately": true, "historyLength": 1}}),
    );
    let continued = &continued["result"]["task"];
    assert_eq!(continued["id"], task.as_str(), "{continued}");
    assert_eq!(
        continued["history"][0]["parts"][0]["text"], "in context",
        "{continued}"
    );

    // ListTasks: by context, by status, a page at a time, artifacts only when asked.
    let second = rpc(
        &server,
        agent,
        &key,
        "SendMessage",
        json!({"message": text_message("m-4", "another"), "configuration": {"returnImmediately": true}}),
    );
    let second = second["result"]["task"]["id"].as_str().unwrap().to_owned();
    let list = |params: Value| rpc(&server, agent, &key, "ListTasks", params)["result"].clone();
    let ids = |listed: &Value| -> Vec<String> {
        listed["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&list(json!({"contextId": task}))),
        std::slice::from_ref(&task)
    );
    assert_eq!(ids(&list(json!({}))), [second.clone(), task.clone()]);
    let first_page = list(json!({"pageSize": 1}));
    assert_eq!(ids(&first_page), std::slice::from_ref(&second));
    let token = first_page["nextPageToken"].as_str().unwrap();
    assert_eq!(
        ids(&list(json!({"pageSize": 1, "pageToken": token}))),
        std::slice::from_ref(&task)
    );
    assert_eq!(
        ids(&list(json!({"status": "TASK_STATE_CANCELED"}))),
        Vec::<String>::new()
    );
    let bare = list(json!({"contextId": task}));
    assert!(bare["tasks"][0].get("artifacts").is_none(), "{bare}");
    assert_eq!(bare["tasks"][0]["history"], json!([]), "{bare}");
    let full = list(json!({"contextId": task, "includeArtifacts": true, "historyLength": 1}));
    assert_eq!(
        full["tasks"][0]["history"].as_array().unwrap().len(),
        1,
        "{full}"
    );
    assert!(full["tasks"][0]["artifacts"].is_array(), "{full}");
    let refused = rpc(
        &server,
        agent,
        &key,
        "ListTasks",
        json!({"pageToken": "nope"}),
    );
    assert_eq!(error_code(&refused), -32602);

    // Most recently updated first, as A2A lists: a new turn of the older task puts it
    // first, on every page.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while ids(&list(json!({"status": "TASK_STATE_COMPLETED"}))).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the turns did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    rpc(
        &server,
        agent,
        &key,
        "SendMessage",
        json!({"message": {"messageId": "m-5", "taskId": task, "parts": [{"text": "again"}]},
               "configuration": {"returnImmediately": true}}),
    );
    assert_eq!(ids(&list(json!({}))), [task.clone(), second.clone()]);
    let first_page = list(json!({"pageSize": 1}));
    assert_eq!(ids(&first_page), std::slice::from_ref(&task));
    let token = first_page["nextPageToken"].as_str().unwrap();
    let last_page = list(json!({"pageSize": 1, "pageToken": token}));
    assert_eq!(ids(&last_page), std::slice::from_ref(&second));
    assert_eq!(last_page["nextPageToken"], "", "{last_page}");

    // A file by its URL is kept by reference and shown as the same url part.
    let linked = rpc(
        &server,
        agent,
        &key,
        "SendMessage",
        json!({"message": {"messageId": "u-2", "parts": [
                {"text": "see"},
                {"url": "https://files.example/a/chart.png", "mediaType": "image/png"}]},
               "configuration": {"returnImmediately": true, "acceptedOutputModes": ["text/plain"]}}),
    );
    let linked = &linked["result"]["task"];
    assert_eq!(
        linked["history"][0]["parts"][1],
        json!({"url": "https://files.example/a/chart.png", "filename": "chart.png", "mediaType": "image/png"}),
        "{linked}"
    );

    // The HTTP+JSON binding's own answers: an ended task followed by GET is its
    // snapshot and the end; no such task is A2A's REST error, reason and all.
    let get = |path: &str| {
        let response = common::client()
            .get(format!("{}/a2a/{agent}{path}", server.base))
            .bearer_auth(&key)
            .send()
            .unwrap();
        let status = response.status().as_u16();
        let kind = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, kind, response.text().unwrap())
    };
    let second_task = second.clone();
    let (status, kind, body) = get(&format!("/tasks/{second_task}:subscribe"));
    assert_eq!(
        (status, kind.as_deref()),
        (200, Some("text/event-stream")),
        "{body}"
    );
    let events: Vec<Value> = body
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["task"]["id"], second_task.as_str(), "{body}");
    let (status, _, body) = get("/tasks/999999");
    assert_eq!(status, 404, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["status"], "NOT_FOUND", "{body}");
    assert_eq!(
        error["error"]["details"][0]["reason"], "TASK_NOT_FOUND",
        "{body}"
    );
}

/// The agent's tool calls, through the a2a-sdk client: input required, each answered
/// with a marked data part; the last answer's turn completes.
fn tool_round_trip(db: &str) {
    let model = common::tool_model();
    let (agent, key) = common::tool_agent(db, &model);
    let mut command = common::baton(db);
    command.env("MODEL_KEY", "sk-end-to-end");
    let server = Server::start_command(command, &[], std::process::Stdio::null());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/a2a/tools.py");
    let output = std::process::Command::new(baton_test_support::python::python())
        .arg(script)
        .args([&server.base, &agent.to_string(), &key])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let calls = report["calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2, "{report}");
    assert!(calls.iter().all(|c| c["name"] == "get_weather"), "{report}");
    assert_eq!(
        report["states"],
        json!([
            "TASK_STATE_INPUT_REQUIRED",
            "TASK_STATE_INPUT_REQUIRED",
            "TASK_STATE_COMPLETED"
        ]),
        "{report}"
    );
    assert_eq!(report["texts"], json!(["Hello, human."]), "{report}");
}

#[test]
fn tool_calls_are_input_required_and_answered_with_marked_data_parts() {
    let (_dir, db) = sqlite_db();
    tool_round_trip(&db);
}

#[test]
fn tool_calls_are_answered_through_a2a_on_postgres() {
    let db = TestDatabase::new();
    tool_round_trip(db.url());
}

/// The server's signing secret in the push tests: pushes carry its Standard Webhooks
/// signature besides the client's token and `Authorization`.
const SERVER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Push notifications through the a2a-sdk client on a server of `db` (with
/// `elsewhere`, configs made on one instance and messages sent to another), over
/// `binding`.
fn push_notifications(db: &str, elsewhere: bool, binding: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        format!(
            "[webhooks]\nsigning_secret = \"{SERVER_SECRET}\"\nallow_http = true\nallow_networks = [\"127.0.0.0/8\"]\npoll_interval_ms = 50\nretry_schedule_ms = [200, 400]\n"
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    // Its card describes it and its skills, as the operator said.
    let card = r#"{"description": "Pushes its answers.", "skills": [
        {"id": "echo", "name": "Echo", "description": "Says it again.", "tags": ["test"], "examples": ["hello"]},
        {"id": "push", "name": "Push", "description": "Tells you when done.", "tags": []}]}"#;
    let (agent, key) = agent_with(db, "{}", &["--card", card]);
    let server = Server::start(db, &["--config", &config]);
    let other = elsewhere.then(|| Server::start(db, &["--config", &config]));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/a2a/push.py");
    let other_base = other.as_ref().map(|o| o.base.clone()).unwrap_or_default();
    let output = std::process::Command::new(baton_test_support::python::python())
        .arg(script)
        .args([&server.base, &agent.to_string(), &key, &other_base, binding])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the client failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let text = report.to_string();

    assert_eq!(
        report["card"]["capabilities"]["pushNotifications"], true,
        "{text}"
    );
    let transport = match binding {
        "HTTP+JSON" => "RestTransport",
        _ => "JsonRpcTransport",
    };
    assert_eq!(report["transport"], transport, "{text}");
    assert_eq!(
        report["card"]["description"], "Pushes its answers.",
        "{text}"
    );
    let skills = &report["card"]["skills"];
    assert_eq!(
        (&skills[0]["id"], &skills[0]["examples"], &skills[1]["name"]),
        (&json!("echo"), &json!(["hello"]), &json!("Push")),
        "{text}"
    );
    // The config sent with the first message: its turn's end, as the SDK reads it,
    // with the client's token and credentials.
    let task = report["first_task"].as_str().unwrap();
    assert_eq!(
        report["first"],
        json!([{
            "task": task, "state": "TASK_STATE_COMPLETED", "text": ["echo: push me"],
            "token": "tok-1", "authorization": "Bearer cred-1",
        }]),
        "{text}"
    );
    // Created on its own (named by the client), read back without credentials.
    assert_eq!(
        report["created"],
        json!({"id": "second", "taskId": task, "url": report["created"]["url"], "token": "tok-2"}),
        "{text}"
    );
    assert_eq!(report["got"], report["created"]);
    // The first config is named by its task, as A2A's SDK names an unnamed one.
    assert_eq!(report["listed"], json!([task, "second"]), "{text}");
    // The next turn went to both, the flaky receiver's on the retry.
    let second = &report["second_turn"];
    assert_eq!(second["first"]["text"], json!(["echo: again"]), "{text}");
    assert_eq!(second["flaky"][0]["text"], json!(["echo: again"]), "{text}");
    assert_eq!(second["flaky"][0]["token"], "tok-2", "{text}");
    assert_eq!(second["flaky"][0]["authorization"], Value::Null, "{text}");
    // Deleted: nothing more for it.
    assert_eq!(report["after_delete"], json!([task]), "{text}");
    assert_eq!(report["flaky_total"], 1, "{text}");
    assert_eq!(report["errors"]["unknown_config"], "TaskNotFoundError");
    assert_eq!(report["errors"]["unknown_task"], "TaskNotFoundError");
    assert!(
        report["errors"]["bad_url"]
            .as_str()
            .is_some_and(|e| e.contains("url")),
        "{text}"
    );
    // Every push is signed with the server's secret, as the reference verifier checks.
    let received: Vec<baton_test_support::receiver::Received> = report["received"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| baton_test_support::receiver::Received {
            path: r["path"].as_str().unwrap().to_owned(),
            headers: r["headers"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap().to_owned()))
                .collect(),
            body: r["body"].as_str().unwrap().as_bytes().to_vec(),
            at: std::time::Instant::now(),
        })
        .collect();
    assert_eq!(received.len(), 4, "{text}");
    assert_eq!(
        baton_test_support::standard_webhooks::verify(SERVER_SECRET, &received),
        Ok(4)
    );
}

#[test]
fn an_a2a_sdk_client_receives_push_notifications_on_sqlite() {
    let (_dir, db) = sqlite_db();
    push_notifications(&db, false, "JSONRPC");
}

#[test]
fn an_a2a_sdk_client_manages_push_notifications_over_http_json_on_sqlite() {
    let (_dir, db) = sqlite_db();
    push_notifications(&db, false, "HTTP+JSON");
}

/// Configs made on one instance, messages sent to the other: the pushes come from the
/// shared outbox whichever instance sends them.
#[test]
fn an_a2a_sdk_client_receives_push_notifications_across_two_postgres_instances() {
    let db = TestDatabase::new();
    push_notifications(db.url(), true, "JSONRPC");
}
