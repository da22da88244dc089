//! The console, driven in a real browser: headless Chromium (Debian's package, through
//! Playwright's `playwright-core`) runs `tests/console/drive.mjs` against the `baton`
//! binary — on SQLite and on PostgreSQL — with a slow echo agent, a scripted model
//! agent that asks for tools, and the admin token: sign-in, a streamed turn followed
//! through a cut connection, a refused send, markdown, a cancel, the live list and
//! its filter, tool answers, and the admin key flow.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::path::Path;
use std::process::Stdio;

use baton_test_support::TestDatabase;
use baton_test_support::browser::BrowserRun;
use baton_test_support::receiver::Receiver;
use common::*;
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "console-admin-token-0123";

fn drive(db: &str) {
    let model = tool_model();
    // Twelve words over six seconds: the turn is still streaming while the page is
    // refused a send and loses its connection.
    let (slow_agent, slow_key) = agent_and_key(db, r#"{"delay_ms": 6000}"#);
    let (tools_agent, tools_key) = tool_agent(db, &model);
    let receiver = Receiver::answering(204);
    let mut command = baton(db);
    command
        .env("BATON_ADMIN_TOKEN", ADMIN_TOKEN)
        // Webhooks to the loopback receiver, signed with the server's secret.
        .env(
            "BATON_WEBHOOKS_SIGNING_SECRET",
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        )
        .env("BATON_WEBHOOKS_ALLOW_HTTP", "true")
        .env("BATON_WEBHOOKS_ALLOW_NETWORKS", r#"["127.0.0.0/8"]"#)
        .env("BATON_WEBHOOKS_POLL_INTERVAL_MS", "50");
    let server = Server::start_command(command, &[], Stdio::null());

    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console");
    let run = BrowserRun::prepare(&scripts, &["drive.mjs"]);
    let setup = json!({
        "slow": {"agent": slow_agent, "key": slow_key},
        "tools": {"agent": tools_agent, "key": tools_key},
        "adminToken": ADMIN_TOKEN,
        "webhook": receiver.url(),
    });
    let mut node = run.node("drive.mjs");
    node.arg(&server.base).arg(setup.to_string());
    let seen = BrowserRun::report(node, "console ok");
    let report = serde_json::to_string_pretty(&seen).unwrap();

    assert_eq!(seen["pageErrors"], json!([]), "{report}");
    assert_eq!(
        seen["refused"],
        json!([]),
        "the page broke its own CSP: {report}"
    );

    // Sign-in: a wrong key is refused saying so; the key stays out of the URL.
    let wrong = seen["wrongKey"].as_str().unwrap();
    assert!(wrong.contains("401 unauthorized"), "{report}");
    assert!(
        seen["bar"]
            .as_str()
            .unwrap()
            .contains(&format!("Agent t (#{slow_agent})")),
        "{report}"
    );
    assert_eq!(seen["keyInUrl"], false, "{report}");
    assert_eq!(seen["focused"], "H1", "{report}");
    assert_eq!(seen["keyStored"], slow_key.as_str(), "{report}");

    // The streamed turn: refused send, reconnected after the cut, the text whole once.
    let busy = seen["busy"].as_str().unwrap();
    assert!(busy.contains("409 task_busy"), "{report}");
    assert!(busy.contains("is running"), "{report}");
    assert_eq!(seen["sawReconnecting"], true, "{report}");
    let words = "one two three four five six seven eight nine ten eleven twelve";
    assert!(
        words.starts_with(
            seen["partial"]
                .as_str()
                .unwrap()
                .trim_start_matches("echo: ")
                .trim_end()
        ),
        "{report}"
    );
    assert_eq!(seen["reply"], format!("echo: {words}"), "{report}");
    // Queued while it ran (position 1), then cancelled from the queue: never played.
    let queued = seen["queuedAnswer"].as_str().unwrap();
    assert!(queued.contains("Queued: position 1"), "{report}");
    assert!(
        seen["queuedShown"]
            .as_str()
            .unwrap()
            .contains("queued for later"),
        "{report}"
    );
    // Steered into the running turn, and answered in it.
    assert!(
        seen["steerAnswer"]
            .as_str()
            .unwrap()
            .contains("Sent into the running turn"),
        "{report}"
    );
    assert_eq!(
        seen["userMessages"],
        json!([words, "also this"]),
        "the cancelled one never joined the history: {report}"
    );
    assert_eq!(seen["steeredReply"], "echo: also this", "{report}");
    assert_eq!(seen["replies"], 2, "{report}");
    // The turn's duration, as the page shows it: the echo took its six seconds.
    let took: f64 = seen["tookShown"]
        .as_str()
        .unwrap()
        .split_once("Took")
        .and_then(|(_, rest)| rest.split_once(" s"))
        .and_then(|(secs, _)| secs.parse().ok())
        .unwrap_or_else(|| panic!("no duration in seconds: {report}"));
    assert!((5.5..15.0).contains(&took), "{took}: {report}");

    // Markdown rendered, its markup defused.
    let markdown = seen["markdown"].as_str().unwrap();
    assert!(markdown.contains("<strong>bold</strong>"), "{report}");
    assert!(markdown.contains("<code>code</code>"), "{report}");
    for unsafe_part in ["onerror", "<script", "javascript:"] {
        assert!(!markdown.contains(unsafe_part), "{unsafe_part}: {report}");
    }
    assert_eq!(seen["pwned"], Value::Null, "{report}");

    // Cancelled with its text so far kept.
    let cancelled_text = seen["cancelledText"].as_str().unwrap();
    assert!(cancelled_text.starts_with("echo: a long"), "{report}");
    assert!(!cancelled_text.contains("at all"), "{report}");

    // The list: newest first, the task started elsewhere seen running then completed,
    // and the filter.
    let order: Vec<i64> = seen["listOrder"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_i64().unwrap())
        .collect();
    assert_eq!(
        order.first(),
        seen["elsewhere"].as_i64().as_ref(),
        "{report}"
    );
    assert!(order.windows(2).all(|w| w[0] > w[1]), "{report}");
    assert_eq!(
        seen["cancelledList"],
        json!([seen["cancelledTask"]]),
        "{report}"
    );
    assert_eq!(seen["storedAfterSignOut"], 0, "{report}");

    // Tools: a form per call, both answered, the model's reply with its reasoning.
    assert_eq!(seen["toolForms"], 2, "{report}");
    assert_eq!(
        seen["keptTyping"], "18 degrees",
        "an answer typed into one tool form survives the page's update after another: {report}"
    );
    assert_eq!(seen["toolResults"], 2, "{report}");
    assert_eq!(seen["toolMessagesShown"], 0, "{report}");
    assert_eq!(seen["toolReply"], "Hello, human.", "{report}");
    assert!(seen["reasoning"].as_i64().unwrap() >= 1, "{report}");
    assert!(
        seen["usage"].as_str().unwrap().contains("25 total tokens"),
        "{report}"
    );
    assert_eq!(model.received().len(), 2, "{report}");

    // The attachment came back as sent.
    assert_eq!(
        seen["downloaded"], "baton attachment \u{2713}\n",
        "{report}"
    );
    assert_eq!(seen["downloadName"], "notes.txt", "{report}");

    // The webhook delivery and its attempt, then a second one asked for by the admin.
    let deliveries = seen["deliveries"].as_str().unwrap();
    assert!(deliveries.contains("turn.completed"), "{report}");
    assert!(deliveries.contains("delivered"), "{report}");
    assert!(deliveries.contains("204"), "{report}");
    assert!(
        seen["redelivered"].as_str().unwrap().contains("due again"),
        "{report}"
    );
    let sent = receiver.wait_for(2, std::time::Duration::from_secs(10));
    assert_eq!(sent.len(), 2, "{report}");
    assert_eq!(sent[0].header("webhook-id"), sent[1].header("webhook-id"));

    // An agent made with the form, whose turn fails: the page shows the code.
    assert!(
        seen["failure"].as_str().unwrap().contains("echo_failed"),
        "{report}"
    );

    // Admin: the key shown once worked, and once revoked did not; the rename held.
    assert_eq!(seen["newKeyWorks"], 200, "{report}");
    assert_eq!(seen["revokedKey"], 401, "{report}");
    assert_eq!(seen["dialogs"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(seen["renamed"], "renamed by the console", "{report}");
    assert_eq!(seen["editedConfig"], json!({"delay_ms": 3000}), "{report}");
    assert_eq!(seen["editedAttempts"], 5, "{report}");

    // Data as JSON; a second page of tasks.
    let data = seen["data"].as_str().unwrap();
    assert!(
        data.contains("\"city\": \"Oslo\"") && data.contains("\"days\": 3"),
        "{report}"
    );
    assert_eq!(seen["firstPage"], 20, "{report}");
    assert_eq!(seen["secondPage"], json!([seen["failedTask"]]), "{report}");

    // A key revoked elsewhere is forgotten at the page's next call, which says why.
    assert_eq!(seen["revokedElsewhere"], 204, "{report}");
    assert!(
        seen["afterRevoke"]
            .as_str()
            .unwrap()
            .contains("401 unauthorized"),
        "{report}"
    );

    // Keyboard alone is enough to sign in.
    assert!(
        seen["keyboardSignIn"]
            .as_str()
            .unwrap()
            .contains(&format!("Agent renamed by the console (#{slow_agent})")),
        "{report}"
    );

    // No WCAG 2 A or AA rule broken on any view (axe-core).
    for (view, violations) in seen["accessibility"].as_object().unwrap() {
        assert_eq!(violations, &json!([]), "{view}: {report}");
    }
    assert_eq!(
        seen["accessibility"].as_object().unwrap().len(),
        5,
        "{report}"
    );

    // A narrow screen scrolls down, not sideways.
    assert!(seen["narrowOverflow"].as_i64().unwrap() <= 0, "{report}");
}

#[test]
fn the_console_drives_tasks_on_sqlite() {
    let (_dir, db) = sqlite_db();
    drive(&db);
}

#[test]
fn the_console_drives_tasks_on_postgres() {
    let db = TestDatabase::new();
    drive(db.url());
}

#[test]
fn the_console_is_off_with_its_switch() {
    let (_dir, db) = sqlite_db();
    let mut command = baton(&db);
    command.env("BATON_CONSOLE", "false");
    let server = Server::start_command(command, &[], Stdio::null());
    for path in ["/console", "/console/console.js"] {
        let response = client()
            .get(format!("{}{path}", server.base))
            .send()
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let body: Value = response.json().unwrap();
        assert_eq!(body["error"]["code"], "not_found", "{body}");
    }
    drop(server);
    let on = Server::start(&db, &[]);
    let page = client().get(format!("{}/console", on.base)).send().unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    assert!(page.text().unwrap().contains("/console/console.js"));
}
