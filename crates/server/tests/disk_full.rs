//! A full disk under the embedded database: the real binary on a small tmpfs, in a
//! mount namespace of its own (`unshare`), filled by the API itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Api, Server, agent_and_key, sqlite_db};
use reqwest::StatusCode;
use serde_json::json;

/// Mounts a 4 MiB tmpfs, puts the database on it next to a file that takes most of
/// the room, and runs `baton serve` there; once `free` appears in `control`, the
/// filler goes: space returns. A new PID namespace ends the server with the test.
const IN_NAMESPACE: &str = r#"
set -e
mount -t tmpfs -o size=4m tmpfs "$MNT"
cp "$SRC/baton.db" "$MNT/baton.db"
dd if=/dev/zero of="$MNT/filler" bs=64k count=40 2>/dev/null
BATON_DATABASE_URL="sqlite://$MNT/baton.db" "$BATON" "$@" &
server=$!
until [ -e "$CONTROL/free" ]; do
    kill -0 "$server" 2>/dev/null || exit 1
    sleep 0.05
done
rm "$MNT/filler"
wait "$server"
"#;

#[test]
fn a_full_disk_is_a_503_saying_so_readiness_tells_and_the_server_recovers_when_space_returns() {
    let (dir, db) = sqlite_db();
    // Its turns fail at once and write little: the disk is filled by what the
    // requests bring, and space that returns is not taken again by long replies.
    let (agent, token) = agent_and_key(&db, r#"{"fail": true}"#);
    let mount = tempfile::tempdir().unwrap();
    let control = tempfile::tempdir().unwrap();
    let mut command = Command::new("unshare");
    command
        .args([
            "--map-root-user",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
        ])
        .args(["sh", "-c", IN_NAMESPACE, "sh"])
        .env("MNT", mount.path())
        .env("SRC", dir.path())
        .env("CONTROL", control.path())
        .env("BATON", env!("CARGO_BIN_EXE_baton"))
        .env_remove("BATON_CONFIG")
        .env_remove("BATON_LISTEN");
    let server = Server::start_command(command, &[], Stdio::null());
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    let big = "x".repeat(200 * 1024);
    let post = || {
        api.http
            .post(format!("{}/v1/chat/tasks", server.base))
            .bearer_auth(&token)
            .json(&json!({"agent_id": agent, "message": {"content": big}}))
            .send()
            .unwrap()
    };
    // Fill what is left of the disk through the API.
    let deadline = Instant::now() + Duration::from_secs(60);
    let refused = loop {
        let response = post();
        match response.status() {
            StatusCode::ACCEPTED => {}
            StatusCode::SERVICE_UNAVAILABLE => break response,
            other => panic!("{other}: {}", response.text().unwrap()),
        }
        assert!(Instant::now() < deadline, "the disk never filled up");
    };
    assert_eq!(refused.headers()["retry-after"], "5");
    assert!(refused.headers().contains_key("x-request-id"));
    let envelope: serde_json::Value = refused.json().unwrap();
    assert_eq!(
        envelope["error"]["code"], "storage_unwritable",
        "{envelope}"
    );
    let (status, ready) = api.get("/readyz");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{ready}");
    assert_eq!(ready["error"]["code"], "storage_unwritable");
    let why = ready["error"]["message"].as_str().unwrap();
    assert!(why.contains("full"), "readiness says why: {why}");
    // Reads still work.
    assert_eq!(api.get("/v1/chat/tasks").0, StatusCode::OK);

    // Space returns: the next write succeeds without a restart, and readiness follows.
    std::fs::write(control.path().join("free"), b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = post();
        if response.status() == StatusCode::ACCEPTED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused: {}",
            response.status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(api.get("/readyz").0, StatusCode::OK);
}
