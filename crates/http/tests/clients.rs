//! Clients generated from the server's own OpenAPI document, by third-party generators
//! as a user would run them, hold a conversation with a real server: Python
//! (`openapi-python-client`) and TypeScript (`openapi-typescript` + `openapi-fetch`,
//! type-checked by `tsc --strict`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use baton_test_support::tool_output;
use common::TestApp;
use serde_json::json;

/// Runs a tool off the runtime that serves the test's server; what it printed.
async fn run(command: Command) -> String {
    tokio::task::spawn_blocking(move || tool_output(command))
        .await
        .unwrap()
}

/// Runs a conversation script to its end (its last line says so).
async fn holds_the_conversation(script: Command) {
    assert!(
        run(script).await.contains("conversation ok"),
        "the script did not reach its end"
    );
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// A server with the test's echo agent, a slow agent (a turn of a minute) and a key for
/// each, and its `/openapi.json` written into `dir`.
struct Conversation {
    app: TestApp,
    slow_agent: i64,
    slow_token: String,
}

impl Conversation {
    async fn start(dir: &Path) -> Conversation {
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
        std::fs::write(dir.join("openapi.json"), &document).unwrap();
        Conversation {
            app,
            slow_agent,
            slow_token,
        }
    }

    /// The scripts' arguments: base URL, key, agent, slow key, slow agent.
    fn args(&self) -> [String; 5] {
        [
            self.app.base.clone(),
            self.app.token.clone(),
            self.app.agent.to_string(),
            self.slow_token.clone(),
            self.slow_agent.to_string(),
        ]
    }
}

/// `openapi-python-client` (PyPI, pinned in `baton_test_support::python`) generates a
/// client from `/openapi.json`; `tests/clients/conversation.py` uses it to create a
/// task and long-poll it, append and read the history, meet a `409 task_busy` as a
/// typed error envelope, and cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_holds_a_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let conversation = Conversation::start(dir.path()).await;
    let bin = tokio::task::spawn_blocking(baton_test_support::python::bin)
        .await
        .unwrap();

    let mut generate = Command::new(bin.join("openapi-python-client"));
    generate
        .args(["generate", "--path", "openapi.json", "--meta", "none"])
        .args(["--output-path", "baton_client"])
        .current_dir(dir.path());
    run(generate).await;

    let mut script = Command::new(bin.join("python"));
    script
        .arg(self::script("conversation.py"))
        .args(conversation.args())
        .env("PYTHONPATH", dir.path());
    holds_the_conversation(script).await;
}

/// `openapi-typescript` types the document, `tests/clients/conversation.ts` uses them
/// through `openapi-fetch` (npm, pinned in `baton_test_support::node`), `tsc --strict`
/// checks it (free-form `metadata` included), and node runs the same conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typescript_client_typed_from_the_document_checks_strictly_and_holds_a_conversation() {
    let dir = tempfile::tempdir().unwrap();
    let conversation = Conversation::start(dir.path()).await;
    let modules = tokio::task::spawn_blocking(baton_test_support::node::node_modules)
        .await
        .unwrap();
    let bin = modules.join(".bin");
    std::os::unix::fs::symlink(&modules, dir.path().join("node_modules")).unwrap();
    std::fs::copy(
        script("conversation.ts"),
        dir.path().join("conversation.ts"),
    )
    .unwrap();
    std::fs::write(dir.path().join("package.json"), r#"{"type": "module"}"#).unwrap();
    let tsconfig = json!({
        "compilerOptions": {
            "strict": true,
            "target": "ES2022",
            "module": "NodeNext",
            "moduleResolution": "NodeNext",
            "types": ["node"],
            "skipLibCheck": true,
            "outDir": "out",
        },
        "files": ["conversation.ts", "baton.ts"],
    });
    std::fs::write(dir.path().join("tsconfig.json"), tsconfig.to_string()).unwrap();

    let mut types = Command::new(bin.join("openapi-typescript"));
    types
        .args(["openapi.json", "-o", "baton.ts"])
        .current_dir(dir.path());
    run(types).await;
    let mut check = Command::new(bin.join("tsc"));
    check.args(["-p", "tsconfig.json"]).current_dir(dir.path());
    run(check).await;

    let mut script = Command::new("node");
    script
        .arg("out/conversation.js")
        .args(conversation.args())
        .current_dir(dir.path());
    holds_the_conversation(script).await;
}
