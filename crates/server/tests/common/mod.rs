//! Helpers shared by the tests of the `baton` binary.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_test_support::receiver::{Answer, Receiver, Reply};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

/// A SQLite database URL in a fresh directory (kept alive by the returned guard).
pub fn sqlite_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("baton.db").display());
    (dir, url)
}

/// A blocking reqwest client for the tests.
pub fn client() -> Client {
    baton_test_support::init_tls();
    Client::new()
}

/// A blocking reqwest client that waits up to `timeout` for an answer.
pub fn client_with_timeout(timeout: Duration) -> Client {
    baton_test_support::init_tls();
    Client::builder().timeout(timeout).build().unwrap()
}

/// The `baton` binary, on the database at `url` (`sqlite://…` or `postgres://…`).
pub fn baton(url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
    command
        .env("BATON_DATABASE_URL", url)
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_LISTEN");
    command
}

/// Runs a CLI command; returns (success, stdout, stderr).
pub fn run(db: &str, args: &[&str]) -> (bool, String, String) {
    let output = baton(db).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn agent_and_key(db: &str, runner_config: &str) -> (i64, String) {
    agent_with(db, runner_config, &[])
}

/// An echo agent with this runner config and extra `agent create` flags (its turn
/// policy), and a key for it.
pub fn agent_with(db: &str, runner_config: &str, flags: &[&str]) -> (i64, String) {
    runner_agent(db, "t", "echo", runner_config, flags)
}

/// An agent named `name` whose turns `runner` plays with `config`, made with the CLI
/// with extra `agent create` flags (its turn policy), and a key for it.
pub fn runner_agent(
    db: &str,
    name: &str,
    runner: &str,
    config: &str,
    flags: &[&str],
) -> (i64, String) {
    let mut args = vec![
        "agent",
        "create",
        "--name",
        name,
        "--runner",
        runner,
        "--runner-config",
        config,
    ];
    args.extend_from_slice(flags);
    let (ok, agent, err) = run(db, &args);
    assert!(ok, "{err}");
    let (ok, token, err) = run(db, &["key", "create", "--agent", &agent]);
    assert!(ok, "{err}");
    assert!(err.contains("shown only once"), "{err}");
    (agent.parse().unwrap(), token)
}

pub struct Server {
    pub child: Child,
    pub base: String,
    pub stdout: Vec<String>,
}

impl Server {
    pub fn start(db: &str, extra: &[&str]) -> Server {
        Server::start_logging_to(db, extra, Stdio::null())
    }

    /// As [`Server::start`], with the server's log (stderr) going to `log`.
    pub fn start_logging_to(db: &str, extra: &[&str], log: impl Into<Stdio>) -> Server {
        Server::start_command(baton(db), extra, log)
    }

    /// Starts `baton serve` from `command` (a [`baton`] command with, say, more
    /// environment).
    pub fn start_command(mut command: Command, extra: &[&str], log: impl Into<Stdio>) -> Server {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdout = Vec::new();
        let base = loop {
            let line = lines
                .next()
                .expect("baton exited before listening")
                .unwrap();
            if let Some(url) = line.strip_prefix("baton listening on ") {
                break url.to_owned();
            }
            stdout.push(line);
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            base,
            stdout,
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "baton did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Api<'a> {
    pub http: Client,
    pub base: &'a str,
    pub token: &'a str,
}

impl Api<'_> {
    pub fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(self.token)
            .json(&body)
            .send()
            .unwrap();
        (response.status(), response.json().unwrap())
    }

    pub fn get(&self, path: &str) -> (StatusCode, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(self.token)
            .send()
            .unwrap();
        (response.status(), response.json().unwrap())
    }

    pub fn settled(&self, task: i64) -> Value {
        self.settled_within(task, Duration::from_secs(15))
    }

    /// Polls the task until its status leaves `running`, failing after `within`.
    pub fn settled_within(&self, task: i64, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let (status, body) = self.get(&format!("/v1/chat/tasks/{task}"));
            assert_eq!(status, StatusCode::OK, "{body}");
            if body["status"] != "running" {
                return body;
            }
            assert!(Instant::now() < deadline, "task still running: {body}");
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// Lease settings short enough for crash tests: a dead instance's turns are found
/// within a second and a fifth.
pub const FAST_LEASES: [&str; 4] = ["--lease-ttl-ms", "1000", "--sweep-interval-ms", "200"];
/// Lease expiry plus one sweep period, as set by [`FAST_LEASES`].
pub const RECOVERY_BOUND: Duration = Duration::from_millis(1200);

/// Two agents for crash tests: an echo agent whose interrupted turns fail (its turns
/// take 30 s, so they are always mid-turn when killed), and a [`GatedAgent`] whose
/// turns are retried: they stream part of the reply, then wait until the test checks
/// the recovery, so they are mid-turn at the crash whatever the machine's speed.
pub struct CrashAgents {
    pub failing: (i64, String),
    pub retrying: (i64, String),
    gate: GatedAgent,
}

/// A turn started before a crash.
#[derive(Debug, Clone)]
pub struct Started {
    pub retried: bool,
    pub task: i64,
    pub text: String,
}

impl CrashAgents {
    pub fn create(db: &str) -> CrashAgents {
        let gate = GatedAgent::holding();
        CrashAgents {
            failing: agent_with(db, r#"{"delay_ms": 30000}"#, &[]),
            retrying: gate.agent(db, &["--on-interrupt", "retry", "--max-attempts", "5"]),
            gate,
        }
    }

    fn api<'a>(&'a self, base: &'a str, retried: bool) -> Api<'a> {
        let (_, token) = if retried {
            &self.retrying
        } else {
            &self.failing
        };
        Api {
            http: client(),
            base,
            token,
        }
    }

    /// Starts `n` turns of each agent on the server at `base`, and waits until the
    /// retried ones have streamed some text (so a crash interrupts them mid-output).
    pub fn start_turns(&self, base: &str, label: &str, n: usize) -> Vec<Started> {
        self.gate.close();
        let mut started = Vec::new();
        for i in 0..n {
            for retried in [false, true] {
                let (agent, _) = if retried {
                    &self.retrying
                } else {
                    &self.failing
                };
                let text = format!("{label} {i} {}", if retried { "retry" } else { "fail" });
                let (status, body) = self.api(base, retried).post(
                    "/v1/chat/tasks",
                    serde_json::json!({"agent_id": agent, "message": {"content": text}}),
                );
                assert_eq!(status, StatusCode::ACCEPTED, "{body}");
                started.push(Started {
                    retried,
                    task: body["task_id"].as_i64().unwrap(),
                    text,
                });
            }
        }
        for turn in started.iter().filter(|t| t.retried) {
            let api = self.api(base, true);
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let (_, history) = api.get(&format!("/v1/chat/tasks/{}/messages", turn.task));
                if history["data"].as_array().is_some_and(|m| m.len() >= 2) {
                    break;
                }
                assert!(Instant::now() < deadline, "no output: {history}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        started
    }

    /// Asserts how the turns interrupted by a crash ended, as seen on `base`: each
    /// `fail` turn ended `failed` with `turn_interrupted` by `deadline`; each retried
    /// turn was played again (attempt 2) and completed with its whole reply, without
    /// the interrupted attempt's text. Every accepted message is still stored.
    pub fn assert_recovered(&self, base: &str, turns: &[Started], deadline: Instant) {
        // The retried turns may finish now.
        self.gate.open();
        for turn in turns {
            let api = self.api(base, turn.retried);
            let path = format!("/v1/chat/tasks/{}", turn.task);
            let view = loop {
                let (status, view) = api.get(&path);
                assert_eq!(status, StatusCode::OK, "{view}");
                let ended = view["status"] != "running";
                let retrying = turn.retried && view["latest_turn"]["attempt"] == 2;
                if ended || retrying {
                    break view;
                }
                assert!(
                    Instant::now() < deadline,
                    "turn of task {} not recovered in time: {view}",
                    turn.task
                );
                std::thread::sleep(Duration::from_millis(20));
            };
            let (_, history) = api.get(&format!("{path}/messages"));
            let messages = history["data"].as_array().unwrap();
            assert_eq!(
                messages[0]["content"]["content"], turn.text,
                "the accepted message is kept"
            );
            if turn.retried {
                let done = api.settled(turn.task);
                assert_eq!(done["status"], "completed", "{done}");
                assert_eq!(done["latest_turn"]["attempt"], 2, "{done}");
                let (_, history) = api.get(&format!("{path}/messages"));
                let replies: Vec<&str> = history["data"].as_array().unwrap()[1..]
                    .iter()
                    .map(|m| m["content"]["content"].as_str().unwrap())
                    .collect();
                assert_eq!(replies, [format!("echo: {}", turn.text)], "{history}");
            } else {
                assert_eq!(view["status"], "failed", "{view}");
                assert_eq!(view["latest_turn"]["error"]["code"], "turn_interrupted");
                assert_eq!(view["latest_turn"]["attempt"], 1);
            }
        }
    }

    /// A recovered task takes new messages.
    pub fn assert_appends_work(&self, base: &str, turns: &[Started]) {
        for turn in turns {
            let api = self.api(base, turn.retried);
            let (agent, _) = if turn.retried {
                &self.retrying
            } else {
                &self.failing
            };
            let (status, body) = api.post(
                &format!("/v1/chat/tasks/{}/messages", turn.task),
                serde_json::json!({"agent_id": agent, "message": {"content": "after the crash"}}),
            );
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        }
    }
}

/// An agent service for the `http` runner that echoes the turn's message: it streams
/// `echo: ` at once, then waits at a gate the test controls before streaming the rest.
/// So a turn is mid-play, with output recorded, when the test kills or pauses the
/// server, and still playing while the test looks — however fast or slow the machine.
pub struct GatedAgent {
    pub receiver: baton_test_support::receiver::Receiver,
    gate: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl GatedAgent {
    /// Starts with the gate closed.
    pub fn holding() -> GatedAgent {
        use std::io::Write;
        use std::sync::atomic::{AtomicBool, Ordering};
        let gate = std::sync::Arc::new(AtomicBool::new(false));
        let open = gate.clone();
        let receiver = baton_test_support::receiver::Receiver::start_raw(
            move |_, request, stream, stop| {
                let said = request.json()["message"]["content"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let line = |event: Value| format!("{event}\n");
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
                let first = line(serde_json::json!({"type": "text_delta", "delta": "echo: "}));
                if stream
                    .write_all(format!("{head}{first}").as_bytes())
                    .and_then(|()| stream.flush())
                    .is_err()
                {
                    return;
                }
                while !open.load(Ordering::SeqCst) {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                let rest = line(serde_json::json!({"type": "text_delta", "delta": said}))
                    + &line(serde_json::json!({"type": "final"}));
                let _ = stream.write_all(rest.as_bytes());
            },
        );
        GatedAgent { receiver, gate }
    }

    /// Lets every turn finish, the waiting ones first.
    pub fn open(&self) {
        self.gate.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes turns wait again.
    pub fn close(&self) {
        self.gate.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// An `http` agent calling this service with this turn policy, and a key for it.
    pub fn agent(&self, db: &str, policy: &[&str]) -> (i64, String) {
        let config = serde_json::json!({"url": self.receiver.url(), "max_retries": 0}).to_string();
        let mut args = vec![
            "agent",
            "create",
            "--name",
            "gated",
            "--runner",
            "http",
            "--runner-config",
            &config,
        ];
        args.extend_from_slice(policy);
        let (ok, agent, err) = run(db, &args);
        assert!(ok, "{err}");
        let (ok, token, err) = run(db, &["key", "create", "--agent", &agent]);
        assert!(ok, "{err}");
        (agent.parse().unwrap(), token)
    }

    /// The task ids of the turns received at or after `since`, one per request.
    pub fn requests_since(&self, since: Instant) -> Vec<i64> {
        self.receiver
            .received()
            .iter()
            .filter(|r| r.at >= since)
            .map(|r| r.json()["task"]["task_id"].as_i64().unwrap())
            .collect()
    }
}

// ---- A scripted OpenAI-compatible model ----

/// One chunk of a streamed chat completion.
pub fn chunk(delta: Value) -> String {
    let body = json!({
        "id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
    });
    format!("data: {body}\n\n")
}

/// A streamed answer: reasoning, "Hello, human." in two pieces, usage.
pub fn model_answer() -> Answer {
    let usage = json!({
        "id": "chatcmpl-9", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "m", "choices": [],
        "usage": {"prompt_tokens": 21, "completion_tokens": 4, "total_tokens": 25},
    });
    let pieces = vec![
        chunk(json!({"role": "assistant", "reasoning_content": "A greeting."})),
        chunk(json!({"content": "Hello"})),
        chunk(json!({"content": ", human."})),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".to_owned(),
    ];
    Answer::event_stream(&pieces, Duration::from_millis(20))
}

/// A model that asks for two tools (their arguments split across chunks), then, given
/// the answers, replies.
pub fn tool_model() -> Receiver {
    Receiver::start(|n| {
        if n > 0 {
            return Reply::Answer(model_answer());
        }
        let call = |index: u64, id: Option<&str>, args: &str| {
            let mut call = json!({"index": index, "function": {"arguments": args}});
            if let Some(id) = id {
                call["id"] = json!(id);
                call["type"] = json!("function");
                call["function"]["name"] = json!("get_weather");
            }
            chunk(json!({"tool_calls": [call]}))
        };
        let pieces = vec![
            chunk(json!({"role": "assistant", "content": null})),
            call(0, Some("call_abc"), ""),
            call(0, None, "{\"city\": \"Os"),
            call(0, None, "lo\"}"),
            call(1, Some("call_def"), "{\"city\": \"Rome\"}"),
            "data: [DONE]\n\n".to_owned(),
        ];
        Reply::Answer(Answer::event_stream(&pieces, Duration::from_millis(5)))
    })
}

/// An `openai` agent on `model` offering the `get_weather` tool, and a key for it.
pub fn tool_agent(db: &str, model: &Receiver) -> (i64, String) {
    let config = json!({
        "base_url": model.url().replace("/hook", "/v1"),
        "model": "m",
        "max_retries": 0,
        "tools": [{"type": "function", "function": {"name": "get_weather",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
    })
    .to_string();
    runner_agent(db, "tools", "openai", &config, &[])
}
