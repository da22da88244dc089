//! The `http` runner against a scripted agent service: real HTTP, both answer forms,
//! and every way an agent can fail. (The Python example agent runs in the server's
//! tests.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use baton_domain::runner::SinkItem;
use baton_domain::*;
use baton_runners::HttpAgentRunner;
use baton_test_support::receiver::{Answer, Receiver, Reply};
use serde_json::{Value, json};

fn at() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn input(config: Value, said: &str) -> TurnInput {
    let agent = Agent {
        card: None,
        id: AgentId(1),
        name: "model".into(),
        runner: RunnerSpec {
            kind: "openai".into(),
            config,
        },
        policy: TurnPolicy::default(),
        webhook: None,
        created_at: at(),
    };
    let task = Task {
        id: TaskId(1),
        agent_id: AgentId(1),
        metadata: Metadata::new(),
        input: Content::text(said),
        created_at: at(),
        updated_at: at(),
    };
    let history = vec![Message {
        id: MessageId(1),
        task_id: TaskId(1),
        turn_id: TurnId(1),
        role: Role::User,
        content: Content::text(said),
        streaming_status: None,
        created_at: at(),
        metadata: Default::default(),
    }];
    TurnInput {
        agent,
        task,
        turn_id: TurnId(1),
        attempt: 1,
        // The request's own parameters, as a client sends them.
        metadata: json!({"user_params": {"locale": "nb"}})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        history,
        files: Vec::new(),
    }
}

async fn run(server: &Receiver, extra: Value) -> (Result<(), RunnerError>, Vec<SinkItem>) {
    baton_test_support::init_tls();
    let mut config = json!({"url": server.url(), "request_timeout_ms": 2000});
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let runner = HttpAgentRunner::new(reqwest::Client::new());
    runner.validate_config(&config).unwrap();
    let (sink, mut items) = TurnSink::channel(1024);
    let result = runner.run(input(config, "Hello"), sink).await;
    let mut pushed = Vec::new();
    while let Ok(item) = items.try_recv() {
        pushed.push(item);
    }
    (result, pushed)
}

fn ndjson(lines: &[Value]) -> Answer {
    let pieces: Vec<String> = lines.iter().map(|l| format!("{l}\n")).collect();
    Answer {
        status: 200,
        headers: vec![("content-type".into(), "application/x-ndjson".into())],
        pieces: pieces.into_iter().map(String::into_bytes).collect(),
        pause: Duration::from_millis(2),
    }
}

#[tokio::test]
async fn the_turn_is_posted_and_streamed_events_become_output() {
    let server = Receiver::start(|_| {
        Reply::Answer(ndjson(&[
            json!({"type": "text_delta", "delta": "Hel"}),
            json!({"type": "text_delta", "delta": "lo"}),
            json!({"type": "message", "content": {"type": "data", "data": {"n": 1}}}),
            json!({"type": "usage", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3}),
            json!({"type": "final"}),
        ]))
    });
    let (result, items) = run(&server, json!({})).await;
    result.unwrap();
    assert_eq!(
        items,
        vec![
            SinkItem::TextDelta("Hel".into()),
            SinkItem::TextDelta("lo".into()),
            SinkItem::Message(Content::Data(content::DataContent {
                data: json!({"n": 1}).as_object().cloned().unwrap(),
            })),
            SinkItem::Usage(Usage {
                input_tokens: 1,
                output_tokens: 2,
                total_tokens: 3
            }),
        ]
    );
    let request = &server.received()[0];
    assert_eq!(
        request.header("webhook-signature"),
        None,
        "no secret_env: unsigned"
    );
    let turn = request.json();
    assert_eq!(turn["type"], "turn");
    assert_eq!(turn["turn_id"], 1);
    assert_eq!(turn["metadata"], json!({"user_params": {"locale": "nb"}}));
    assert_eq!(turn["agent"], json!({"agent_id": 1, "name": "model"}));
    assert_eq!(turn["message"]["content"]["content"], "Hello");
    assert_eq!(turn["history"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_single_json_reply_is_its_messages_and_usage() {
    let server = Receiver::start(|_| {
        Reply::Answer(Answer::json(
            200,
            &json!({"messages": ["Hi!", {"type": "text", "format": "markdown", "content": "**bold**"}],
                    "usage": {"input_tokens": 4, "output_tokens": 2, "total_tokens": 6}}),
            &[],
        ))
    });
    let (result, items) = run(&server, json!({})).await;
    result.unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert_eq!(items[0], SinkItem::Message(Content::text("Hi!")));
}

#[tokio::test]
async fn every_way_an_agent_fails_ends_the_turn_with_its_code() {
    let cases: Vec<(Answer, &str, &str)> = vec![
        (
            ndjson(&[
                json!({"type": "text_delta", "delta": "hm"}),
                json!({"type": "error", "code": "tool_unavailable", "message": "the search index is down"}),
            ]),
            "tool_unavailable",
            "search index is down",
        ),
        (
            ndjson(&[json!({"type": "text_delta", "delta": "cut"})]),
            "agent_bad_response",
            "without a final",
        ),
        (
            ndjson(&[json!({"type": "shout", "text": "?"})]),
            "agent_bad_response",
            "not one baton knows",
        ),
        (
            Answer {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                pieces: vec![b"hello".to_vec()],
                pause: Duration::ZERO,
            },
            "agent_bad_response",
            "text/plain",
        ),
        (
            Answer::json(200, &json!({"error": {"message": "no such skill"}}), &[]),
            "agent_error",
            "no such skill",
        ),
        (
            Answer::json(422, &json!({"error": "the turn is malformed"}), &[]),
            "agent_request_refused",
            "the turn is malformed",
        ),
    ];
    for (answer, code, says) in cases {
        let server = Receiver::start(move |_| Reply::Answer(answer.clone()));
        let (result, _) = run(&server, json!({"max_retries": 2})).await;
        let err = result.unwrap_err();
        assert_eq!(err.code, code, "{err:?}");
        assert!(err.message.contains(says), "{err:?}");
        assert_eq!(server.received().len(), 1, "{code} is not retried");
    }
}

#[tokio::test]
async fn an_unavailable_agent_is_retried_until_it_answers() {
    let server = Receiver::start(|n| match n {
        0 => Reply::Status(503),
        _ => Reply::Answer(ndjson(&[
            json!({"type": "text_delta", "delta": "back"}),
            json!({"type": "final"}),
        ])),
    });
    let (result, items) = run(&server, json!({"max_retries": 1})).await;
    result.unwrap();
    assert_eq!(items, vec![SinkItem::TextDelta("back".into())]);
    let got = server.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].body, got[1].body, "a retry is the same turn request");
}

#[tokio::test]
async fn a_secret_that_is_not_a_signing_secret_fails_the_turn_before_any_call() {
    let server = Receiver::answering(200);
    // Set by cargo for the test process; not a `whsec_` secret.
    let (result, _) = run(&server, json!({"secret_env": "CARGO_PKG_NAME"})).await;
    let err = result.unwrap_err();
    assert_eq!(err.code, "agent_secret_invalid");
    assert!(err.message.contains("CARGO_PKG_NAME"), "{err:?}");
    let (result, _) = run(
        &server,
        json!({"secret_env": "BATON_TEST_UNSET_SECRET_4E2B"}),
    )
    .await;
    assert_eq!(result.unwrap_err().code, "agent_secret_missing");
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn attached_files_come_with_the_turn_up_to_the_inline_limit() {
    let server = Receiver::start(|_| Reply::Answer(ndjson(&[json!({"type": "final"})])));
    baton_test_support::init_tls();
    let config =
        json!({"url": server.url(), "request_timeout_ms": 2000, "max_inline_file_bytes": 4});
    let mut turn = input(config.clone(), "Hello");
    let file = |id: i64, data: &[u8]| StoredFile {
        file_id: id,
        task_id: TaskId(1),
        filename: format!("f{id}.txt"),
        media_type: "text/plain".into(),
        data: data.to_vec(),
    };
    turn.files = vec![file(1, b"abc"), file(2, b"abcde")];
    let runner = HttpAgentRunner::new(reqwest::Client::new());
    let (sink, _items) = TurnSink::channel(64);
    runner.run(turn, sink).await.unwrap();
    let sent = server.received()[0].json();
    assert_eq!(
        sent["files"],
        json!([
            {"file_id": 1, "filename": "f1.txt", "media_type": "text/plain", "size_bytes": 3, "data": "YWJj"},
            {"file_id": 2, "filename": "f2.txt", "media_type": "text/plain", "size_bytes": 5, "data": null},
        ])
    );
}
