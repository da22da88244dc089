//! Clients generated from the server's own OpenAPI document, by third-party generators
//! as a user would run them, hold a conversation with a real server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TestApp;
use serde_json::json;

/// Runs a command off the runtime that serves the test's server, and says what it did
/// when it failed.
async fn run(mut command: Command) -> Output {
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{shown} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// `openapi-python-client` (PyPI, pinned in `baton_test_support::python`) generates a
/// client from `/openapi.json`; `tests/clients/conversation.py` uses it to create a
/// task and long-poll it, append and read the history, meet a `409 task_busy` as a
/// typed error envelope, and cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_holds_a_conversation() {
    let app = TestApp::start().await;
    let (slow_agent, slow_token) = app.agent_with_key(json!({"delay_ms": 60_000})).await;
    let document = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("openapi.json"), &document).unwrap();
    let bin = tokio::task::spawn_blocking(baton_test_support::python::bin)
        .await
        .unwrap();

    let mut generate = Command::new(bin.join("openapi-python-client"));
    generate
        .args(["generate", "--path", "openapi.json", "--meta", "none"])
        .args(["--output-path", "baton_client"])
        .current_dir(dir.path());
    run(generate).await;

    let mut conversation = Command::new(bin.join("python"));
    conversation
        .arg(script("conversation.py"))
        .args([&app.base, &app.token, &app.agent.to_string()])
        .args([&slow_token, &slow_agent.to_string()])
        .env("PYTHONPATH", dir.path());
    let output = run(conversation).await;
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("conversation ok"),
        "the script did not reach its end"
    );
}
