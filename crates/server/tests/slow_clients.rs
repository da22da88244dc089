//! Clients that stall: the real binary over raw TCP, where a client can stop sending
//! halfway through a request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Server, agent_and_key, baton, sqlite_db};

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
