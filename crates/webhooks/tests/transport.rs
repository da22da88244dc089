//! The transport against a real receiver on a loopback port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::{Duration, Instant};

use baton_domain::{DestinationPolicy, WebhookTransport};
use baton_test_support::receiver::{Receiver, Reply};
use baton_webhooks::HttpTransport;

fn local_dev() -> DestinationPolicy {
    DestinationPolicy {
        allow_http: true,
        allow_networks: vec!["127.0.0.0/8".parse().unwrap()],
    }
}

fn headers() -> Vec<(String, String)> {
    vec![("webhook-id".into(), "msg_1".into())]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_destination_gets_the_body_and_headers_and_its_status_comes_back() {
    let receiver = Receiver::start(|n| Reply::Status(if n == 0 { 204 } else { 503 }));
    let transport = HttpTransport::new(local_dev(), Duration::from_secs(5)).unwrap();
    let url = receiver.url();
    assert_eq!(
        transport.post(&url, headers(), b"{\"a\":1}".to_vec()).await,
        Ok(204)
    );
    assert_eq!(
        transport.post(&url, headers(), b"{}".to_vec()).await,
        Ok(503)
    );
    let got = receiver.received();
    assert_eq!(got[0].body, b"{\"a\":1}");
    assert_eq!(got[0].header("webhook-id"), Some("msg_1"));
    // A name that resolves to an allowed address works as well.
    let by_name = url.replace("127.0.0.1", "localhost");
    assert_eq!(
        transport.post(&by_name, headers(), b"{}".to_vec()).await,
        Ok(503)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_are_refused_literal_or_after_resolution() {
    let receiver = Receiver::answering(200);
    let strict = HttpTransport::new(
        DestinationPolicy {
            allow_http: true,
            allow_networks: vec![],
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let literal = strict
        .post(&receiver.url(), headers(), b"{}".to_vec())
        .await;
    assert!(
        literal.as_ref().unwrap_err().contains("loopback"),
        "{literal:?}"
    );
    // `localhost` is a name: it is refused once resolved, before any connection.
    let named = receiver.url().replace("127.0.0.1", "localhost");
    let resolved = strict.post(&named, headers(), b"{}".to_vec()).await;
    let why = resolved.unwrap_err();
    assert!(
        why.contains("localhost resolves to a loopback address"),
        "{why}"
    );
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    let plain = HttpTransport::new(DestinationPolicy::default(), Duration::from_secs(5)).unwrap();
    let http = plain
        .post("http://hooks.example.com/", headers(), vec![])
        .await;
    assert!(http.unwrap_err().contains("https"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_start_of_an_answer_is_read() {
    // The body never ends: reading it all would run into the timeout.
    let receiver = Receiver::start(|_| Reply::EndlessBody);
    let transport = HttpTransport::new(local_dev(), Duration::from_secs(3)).unwrap();
    let started = Instant::now();
    assert_eq!(
        transport.post(&receiver.url(), headers(), vec![]).await,
        Ok(200)
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed_and_a_silent_receiver_times_out() {
    let receiver = Receiver::start(|n| {
        if n == 0 {
            Reply::Status(302)
        } else {
            Reply::Hang
        }
    });
    let transport = HttpTransport::new(local_dev(), Duration::from_millis(500)).unwrap();
    assert_eq!(
        transport.post(&receiver.url(), headers(), vec![]).await,
        Ok(302)
    );
    let started = Instant::now();
    let silent = transport.post(&receiver.url(), headers(), vec![]).await;
    assert!(silent.unwrap_err().contains("timed out"));
    assert!(started.elapsed() < Duration::from_secs(3));
}
