//! `/metrics` of the real binary, scraped and parsed after known traffic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use baton_test_support::receiver::Receiver;
use common::{Api, Server, agent_and_key, sqlite_db};
use reqwest::StatusCode;
use serde_json::json;

/// One sample of the Prometheus text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => {
                    let labels = rest
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').unwrap();
                            (k.to_owned(), v.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
                None => (series.to_owned(), BTreeMap::new()),
            };
            (name, labels, value.parse().unwrap())
        })
        .collect()
}

fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn metrics_count_requests_turns_streams_pools_and_webhooks() {
    let (dir, db) = sqlite_db();
    let config = dir.path().join("baton.toml");
    std::fs::write(
        &config,
        "[webhooks]\nsigning_secret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nallow_http = true\nallow_networks = [\"127.0.0.1\"]\npoll_interval_ms = 50\n",
    )
    .unwrap();
    let (agent, token) = agent_and_key(&db, "{}");
    let server = Server::start(&db, &["--config", config.to_str().unwrap()]);
    let api = Api {
        http: common::client(),
        base: &server.base,
        token: &token,
    };
    let receiver = Receiver::answering(204);
    let (status, created) = api.post(
        "/v1/chat/tasks",
        json!({"agent_id": agent, "message": {"content": "one"}, "webhook": {"url": receiver.url()}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED);
    let task = created["task_id"].as_i64().unwrap();
    api.settled(task);
    let (status, _) = api.post(
        &format!("/v1/chat/tasks/{task}/messages"),
        json!({"agent_id": agent, "message": {"content": "two"}}),
    );
    assert_eq!(status, StatusCode::ACCEPTED);
    api.settled(task);
    assert_eq!(api.get("/nowhere").0, StatusCode::NOT_FOUND);
    receiver.wait_for(1, Duration::from_secs(10));
    // A stream held open while scraping.
    let stream = common::client()
        .get(format!("{}/v1/chat/tasks/{task}/stream", server.base))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);

    // The webhook's attempt is recorded just after the receiver answers.
    let mut samples = Vec::new();
    for _ in 0..100 {
        let response = common::client()
            .get(format!("{}/metrics", server.base))
            .send()
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = response.text().unwrap();
        assert!(text.contains("# HELP baton_turns_ended_total"), "{text}");
        samples = parse(&text);
        if value(
            &samples,
            "baton_webhook_attempts_total",
            &[("outcome", "delivered")],
        )
        .is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let requests = "baton_http_requests_total";
    let post = [("method", "POST"), ("status", "202")];
    assert_eq!(
        value(
            &samples,
            requests,
            &[post[0], post[1], ("route", "/v1/chat/tasks")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            requests,
            &[
                post[0],
                post[1],
                ("route", "/v1/chat/tasks/{task_id}/messages")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            requests,
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0),
        "unknown paths share one label, whatever they are"
    );
    assert!(
        value(
            &samples,
            "baton_http_request_duration_seconds_count",
            &[("route", "/v1/chat/tasks")]
        )
        .is_some()
    );
    assert_eq!(value(&samples, "baton_turns_started_total", &[]), Some(2.0));
    assert_eq!(
        value(
            &samples,
            "baton_turns_ended_total",
            &[("status", "completed"), ("how", "played")]
        ),
        Some(2.0)
    );
    assert_eq!(
        value(
            &samples,
            "baton_turn_duration_seconds_count",
            &[("status", "completed")]
        ),
        Some(2.0)
    );
    assert!(
        value(
            &samples,
            "baton_turn_duration_seconds_bucket",
            &[("le", "0.5")]
        )
        .is_some(),
        "a histogram"
    );
    assert_eq!(value(&samples, "baton_turns_in_flight", &[]), Some(0.0));
    assert_eq!(value(&samples, "baton_sse_streams_open", &[]), Some(1.0));
    assert_eq!(
        value(
            &samples,
            "baton_db_pool_connections",
            &[("pool", "sqlite_readers"), ("state", "max")]
        ),
        Some(4.0)
    );
    // Every write went through the writer's groups: at least one each.
    let groups = value(&samples, "baton_sqlite_write_groups_total", &[]).unwrap_or(0.0);
    let operations = value(&samples, "baton_sqlite_write_operations_total", &[]).unwrap_or(0.0);
    assert!(groups >= 1.0, "{groups} groups");
    assert!(
        operations >= groups,
        "{operations} operations in {groups} groups"
    );
    assert_eq!(
        value(
            &samples,
            "baton_webhook_attempts_total",
            &[("outcome", "delivered")]
        ),
        Some(1.0)
    );
    drop(stream);
}
