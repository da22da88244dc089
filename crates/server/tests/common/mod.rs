//! Helpers shared by the tests of the `baton` binary.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::Value;

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
    let (ok, agent, err) = run(
        db,
        &[
            "agent",
            "create",
            "--name",
            "t",
            "--runner",
            "echo",
            "--runner-config",
            runner_config,
        ],
    );
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
        let mut child = baton(db)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
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
        let deadline = Instant::now() + Duration::from_secs(15);
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
