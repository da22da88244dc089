//! Requests only raw TCP can send — a body that stalls, a head that never ends,
//! malformed or oversized headers — against the real binary: each is answered with
//! the API's envelope and a request id, like every other error. And what only raw
//! TCP sees: a stream's heartbeat comments.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Api, Server, agent_and_key, baton, sqlite_db};

/// Sends `head` (and what of the body it holds), then waits for the whole answer.
fn send_and_read(base: &str, head: &str) -> (String, Duration) {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let sent = Instant::now();
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    (
        String::from_utf8_lossy(&answer).into_owned(),
        sent.elapsed(),
    )
}

#[test]
fn a_request_body_that_stalls_is_answered_408_with_the_envelope() {
    let (_dir, db) = sqlite_db();
    let (_, token) = agent_and_key(&db, "{}");
    let mut command = baton(&db);
    command.env("BATON_LIMITS_BODY_TIMEOUT_SECS", "1");
    let server = Server::start_command(command, &[], std::process::Stdio::null());
    // A valid key, 100 bytes announced, one sent.
    let head = format!(
        "POST /v1/chat/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let (answer, took) = send_and_read(&server.base, &head);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("x-request-id: "),
        "{answer}"
    );
    let body = answer.split("\r\n\r\n").nth(1).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(envelope["error"]["code"], "request_timeout", "{answer}");
    assert!(envelope["error"]["request_id"].is_string());
    assert!(
        took < Duration::from_secs(10),
        "answered after the body timeout, not never: {took:?}"
    );
}

/// Asserts a raw answer is `status` with the envelope of `code` and a request id.
fn assert_raw_envelope(answer: &str, status: &str, code: &str) {
    assert!(
        answer.starts_with(&format!("HTTP/1.1 {status}")),
        "{answer}"
    );
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{answer}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .unwrap_or_else(|| panic!("no request id: {answer}"));
    let envelope: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(envelope["error"]["code"], code, "{answer}");
    assert_eq!(envelope["error"]["request_id"], id, "{answer}");
    assert!(envelope["error"]["message"].as_str().unwrap().len() > 10);
}

#[test]
fn requests_the_framework_refuses_get_the_envelope_too() {
    let (_dir, db) = sqlite_db();
    let server = Server::start(&db, &[]);
    // Headers over the limit: actix-http's 128 KiB for a head. Exactly that much is
    // sent, so the server has read all of it when it answers and closes (unread bytes
    // would make the close a reset that can swallow the answer).
    let mut head = String::from("GET /v1/chat/tasks HTTP/1.1\r\nHost: x\r\nX-Big: ");
    head.push_str(&"a".repeat(131_072 - head.len()));
    let (answer, _) = send_and_read(&server.base, &head);
    assert_raw_envelope(&answer, "431", "headers_too_large");
    // A header line that is not a header, and two Content-Lengths.
    for head in [
        "GET /v1/chat/tasks HTTP/1.1\r\nHost: x\r\nNot a header\r\n\r\n",
        "POST /v1/chat/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    ] {
        let (answer, _) = send_and_read(&server.base, head);
        assert_raw_envelope(&answer, "400", "bad_request");
    }
    // A head that never ends: after the server's 5 s for a request head.
    let (answer, took) = send_and_read(&server.base, "GET /v1/chat/tasks HTTP/1.1\r\nHost: x\r\n");
    assert_raw_envelope(&answer, "408", "request_timeout");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // The API itself still answers as before.
    let (answer, _) = send_and_read(
        &server.base,
        "GET /v1/chat/tasks HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_raw_envelope(&answer, "401", "unauthorized");
}

/// A stream's heartbeat comments are invisible to an SSE client: read the raw bytes.
#[test]
fn the_stream_heartbeat_comes_at_the_configured_period() {
    let (_dir, db) = sqlite_db();
    let (agent, token) = agent_and_key(&db, "{}");
    let mut command = baton(&db);
    command.env("BATON_STREAM_HEARTBEAT_SECS", "1");
    let server = Server::start_command(command, &[], std::process::Stdio::null());
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    let (_, created) = api.post(
        "/v1/chat/tasks",
        serde_json::json!({"agent_id": agent, "message": {"content": "hi"}}),
    );
    let task = created["task_id"].as_i64().unwrap();
    api.settled(task);

    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let opened = Instant::now();
    write!(
        stream,
        "GET /v1/chat/tasks/{task}/stream?after=1000 HTTP/1.1\r\nHost: baton\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    let mut chunk = [0_u8; 1024];
    // Two heartbeats within 5 s: the default period (15 s) would send none.
    while String::from_utf8_lossy(&raw)
        .matches(": keep-alive")
        .count()
        < 2
    {
        assert!(
            opened.elapsed() < Duration::from_secs(5),
            "no two heartbeats within 5 s: {}",
            String::from_utf8_lossy(&raw)
        );
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the stream ended: {}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) if err.kind() == std::io::ErrorKind::TimedOut => {}
            Err(err) => panic!("{err}"),
        }
    }
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200 OK"), "{raw}");
}
