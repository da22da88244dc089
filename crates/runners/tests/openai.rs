//! The `openai` runner against a scripted OpenAI-compatible server: real HTTP, chunks
//! as the Chat Completions API sends them (and cut in awkward places).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

use std::time::Duration;

use baton_domain::runner::SinkItem;
use baton_domain::*;
use baton_runners::OpenAiRunner;
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

fn config(server: &Receiver, extra: Value) -> Value {
    let mut config = json!({
        "base_url": server.url().replace("/hook", "/v1"),
        "model": "test-model",
        "request_timeout_ms": 2000,
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    config
}

/// Runs one turn; returns how it ended and what it pushed.
async fn run(config: Value) -> (Result<(), RunnerError>, Vec<SinkItem>) {
    baton_test_support::init_tls();
    let runner = OpenAiRunner::new(reqwest::Client::new());
    runner.validate_config(&config).unwrap();
    let (sink, mut items) = TurnSink::channel(1024);
    let result = runner.run(input(config, "Hello"), sink).await;
    let mut pushed = Vec::new();
    while let Ok(item) = items.try_recv() {
        pushed.push(item);
    }
    (result, pushed)
}

fn chunk(delta: Value) -> String {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}],
        "usage": null,
    });
    format!("data: {body}\n\n")
}

fn ending(usage: (u64, u64)) -> Vec<String> {
    let stop = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "test-model",
        "choices": [{"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"}],
        "usage": null,
    });
    let usage = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000,
        "model": "test-model", "choices": [],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1},
    });
    vec![
        format!("data: {stop}\n\n"),
        format!("data: {usage}\n\n"),
        "data: [DONE]\n\n".to_owned(),
    ]
}

fn text_answer(words: &[&str]) -> Answer {
    let mut pieces = vec![chunk(json!({"role": "assistant", "content": ""}))];
    pieces.extend(words.iter().map(|w| chunk(json!({"content": w}))));
    pieces.extend(ending((9, 2)));
    // Cut one event in the middle, as a network may.
    let whole = pieces.remove(1);
    let (a, b) = whole.split_at(whole.len() / 2);
    pieces.insert(1, b.to_owned());
    pieces.insert(1, a.to_owned());
    Answer::event_stream(&pieces, Duration::from_millis(5))
}

fn texts(items: &[SinkItem]) -> String {
    items
        .iter()
        .filter_map(|i| match i {
            SinkItem::TextDelta(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn usage(items: &[SinkItem]) -> Option<Usage> {
    items.iter().rev().find_map(|i| match i {
        SinkItem::Usage(u) => Some(*u),
        _ => None,
    })
}

#[tokio::test]
async fn streamed_text_becomes_deltas_and_usage_is_reported() {
    let server = Receiver::start(|_| Reply::Answer(text_answer(&["Hel", "lo", " there"])));
    let (result, items) = run(config(
        &server,
        json!({"system_prompt": "Be brief.", "temperature": 0.2, "max_tokens": 50}),
    ))
    .await;
    result.unwrap();
    assert_eq!(texts(&items), "Hello there");
    assert_eq!(
        usage(&items),
        Some(Usage {
            input_tokens: 9,
            output_tokens: 2,
            total_tokens: 11
        })
    );
    let request = &server.received()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request.header("authorization"),
        None,
        "no api_key_env: no key"
    );
    let body = request.json();
    // The request's metadata is the agent's business, not the model's.
    assert!(!body.to_string().contains("user_params"), "{body}");
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["stream"], true);
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["max_tokens"], 50);
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"},
        ])
    );
}

#[tokio::test]
async fn reasoning_deltas_become_one_reasoning_message_before_the_text() {
    let mut pieces = vec![
        chunk(json!({"role": "assistant", "content": null, "reasoning_content": "The user "})),
        chunk(json!({"content": null, "reasoning_content": "greets me."})),
        chunk(json!({"content": "Hi!"})),
    ];
    pieces.extend(ending((5, 7)));
    let server = Receiver::start(move |_| {
        Reply::Answer(Answer::event_stream(&pieces, Duration::from_millis(2)))
    });
    let (result, items) = run(config(&server, json!({}))).await;
    result.unwrap();
    let expected_reasoning = SinkItem::Message(Content::Reasoning(content::ReasoningContent {
        summary: vec![],
        content: Some(vec!["The user greets me.".into()]),
    }));
    let reasoning_at = items.iter().position(|i| *i == expected_reasoning);
    let text_at = items
        .iter()
        .position(|i| matches!(i, SinkItem::TextDelta(_)));
    assert!(
        reasoning_at.is_some() && reasoning_at < text_at,
        "{items:?}"
    );
    assert_eq!(texts(&items), "Hi!");
}

#[tokio::test]
async fn the_key_comes_from_the_named_environment_variable_at_each_turn() {
    // A variable cargo sets for the test process (this workspace forbids `unsafe`, so
    // the test cannot set one itself); the server test sets a real key.
    let var = "CARGO_PKG_NAME";
    let value = std::env::var(var).expect("cargo sets CARGO_PKG_NAME when it runs tests");
    let server = Receiver::start(|_| Reply::Answer(text_answer(&["ok"])));
    let (result, _) = run(config(&server, json!({"api_key_env": var}))).await;
    result.unwrap();
    let sent = server.received()[0]
        .header("authorization")
        .map(str::to_owned);
    assert_eq!(sent, Some(format!("Bearer {value}")));

    let (result, _) = run(config(
        &server,
        json!({"api_key_env": "BATON_TEST_OPENAI_KEY_UNSET_9C1D"}),
    ))
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.code, "model_api_key_missing");
    assert!(err.message.contains("BATON_TEST_OPENAI_KEY_UNSET_9C1D"));
    assert_eq!(server.received().len(), 1, "no call without its key");
}

#[tokio::test]
async fn each_error_class_ends_the_turn_with_its_code() {
    let cases: Vec<(Answer, &str, &str)> = vec![
        (
            Answer::json(
                401,
                &json!({"error": {"message": "Incorrect API key provided"}}),
                &[],
            ),
            "model_unauthorized",
            "Incorrect API key",
        ),
        (
            Answer::json(
                404,
                &json!({"error": {"message": "The model `x` does not exist"}}),
                &[],
            ),
            "model_request_refused",
            "does not exist",
        ),
        (
            Answer::event_stream(&["data: {not json\n\n"], Duration::ZERO),
            "model_bad_response",
            "not JSON",
        ),
        (
            Answer::event_stream(&[chunk(json!({"content": "cut"}))], Duration::ZERO),
            "model_bad_response",
            "before [DONE]",
        ),
        (
            Answer::event_stream(
                &["data: {\"error\": {\"message\": \"context length exceeded\"}}\n\n"],
                Duration::ZERO,
            ),
            "model_error",
            "context length",
        ),
    ];
    for (answer, code, says) in cases {
        let server = Receiver::start(move |_| Reply::Answer(answer.clone()));
        let (result, _) = run(config(&server, json!({"max_retries": 2}))).await;
        let err = result.unwrap_err();
        assert_eq!(err.code, code, "{err:?}");
        assert!(err.message.contains(says), "{err:?}");
        assert_eq!(server.received().len(), 1, "{code} is not retried");
    }
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_before_any_text() {
    let server = Receiver::start(|n| match n {
        0 => Reply::Answer(Answer::json(
            429,
            &json!({"error": {"message": "Rate limit reached"}}),
            &[("retry-after", "1")],
        )),
        1 => Reply::Answer(Answer::json(
            503,
            &json!({"error": {"message": "overloaded"}}),
            &[],
        )),
        _ => Reply::Answer(text_answer(&["fine"])),
    });
    let started = std::time::Instant::now();
    let (result, items) = run(config(&server, json!({"max_retries": 2}))).await;
    result.unwrap();
    assert_eq!(texts(&items), "fine");
    let got = server.received();
    assert_eq!(got.len(), 3);
    assert!(
        got[1].at - got[0].at >= Duration::from_millis(950),
        "Retry-After: 1 is honoured"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "then a backoff"
    );

    // Past its retries, the last failure is the turn's.
    let server = Receiver::start(|_| {
        Reply::Answer(Answer::json(
            429,
            &json!({"error": {"message": "Rate limit reached"}}),
            &[("retry-after", "0")],
        ))
    });
    let (result, _) = run(config(&server, json!({"max_retries": 1}))).await;
    let err = result.unwrap_err();
    assert_eq!(err.code, "model_rate_limited");
    assert!(err.message.contains("after 1 retries"), "{err:?}");
    assert_eq!(server.received().len(), 2);
}

#[tokio::test]
async fn a_silent_endpoint_times_out_and_a_stream_that_breaks_after_text_is_not_retried() {
    let server = Receiver::start(|_| Reply::Hang);
    let (result, _) = run(config(
        &server,
        json!({"request_timeout_ms": 200, "max_retries": 1}),
    ))
    .await;
    let err = result.unwrap_err();
    assert_eq!(err.code, "model_timeout");
    assert_eq!(server.received().len(), 2, "a timeout is retried");

    let server = Receiver::start(|_| {
        Reply::Answer(Answer::event_stream(
            &[chunk(json!({"content": "half an ans"}))],
            Duration::ZERO,
        ))
    });
    let (result, items) = run(config(&server, json!({"max_retries": 3}))).await;
    assert_eq!(result.unwrap_err().code, "model_bad_response");
    assert_eq!(texts(&items), "half an ans", "what streamed is kept");
    assert_eq!(server.received().len(), 1, "text was streamed: no retry");
}

/// A model's answer that calls two tools, their arguments cut across chunks as the
/// API sends them.
fn tool_calls_answer() -> Answer {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut call = json!({"index": index, "function": {"arguments": args}});
        if let Some(id) = id {
            call["id"] = json!(id);
            call["type"] = json!("function");
        }
        if let Some(name) = name {
            call["function"]["name"] = json!(name);
        }
        chunk(json!({"tool_calls": [call]}))
    };
    let mut pieces = vec![
        chunk(json!({"role": "assistant", "content": null})),
        call(0, Some("call_abc"), Some("get_weather"), ""),
        call(0, None, None, "{\"ci"),
        call(0, None, None, "ty\": \"Oslo\"}"),
        call(1, Some("call_def"), Some("get_weather"), ""),
        call(1, None, None, "{\"city\": \"Rome\"}"),
    ];
    pieces.extend(ending((30, 12)));
    Answer::event_stream(&pieces, Duration::from_millis(2))
}

#[tokio::test]
async fn tool_calls_split_across_chunks_become_tool_requests_and_tools_are_offered() {
    let server = Receiver::start(|_| Reply::Answer(tool_calls_answer()));
    let tools = json!([{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }}]);
    let (result, items) = run(config(&server, json!({"tools": tools.clone()}))).await;
    result.unwrap();
    let requests: Vec<&Content> = items
        .iter()
        .filter_map(|i| match i {
            SinkItem::Message(c @ Content::ToolRequest(_)) => Some(c),
            _ => None,
        })
        .collect();
    let expected = |id: &str, city: &str| {
        Content::ToolRequest(content::ToolRequestContent {
            tool_call_id: id.into(),
            name: "get_weather".into(),
            arguments: json!({"city": city}).as_object().cloned().unwrap(),
        })
    };
    assert_eq!(
        requests,
        vec![&expected("call_abc", "Oslo"), &expected("call_def", "Rome")]
    );
    assert_eq!(server.received()[0].json()["tools"], tools);
}

#[test]
fn tools_must_be_named_functions() {
    let mut bad = json!({"base_url": "http://x/v1", "model": "m"});
    bad["tools"] = json!([{"type": "function", "function": {}}]);
    let err = baton_runners::openai::OpenAiConfig::parse(&bad).unwrap_err();
    assert!(err.contains("tools[0]"), "{err}");
}

/// A file attached to the turn's message, as the server shows it and keeps it.
fn attached(id: i64, filename: &str, media_type: &str, data: &[u8]) -> (Value, StoredFile) {
    let shown = json!({"filename": filename, "media_type": media_type, "file_id": id,
                       "size_bytes": data.len(), "sha256": "00"});
    let file = StoredFile {
        file_id: id,
        task_id: TaskId(1),
        filename: filename.into(),
        media_type: media_type.into(),
        data: data.to_vec(),
    };
    (shown, file)
}

#[tokio::test]
async fn attachments_reach_the_model_as_image_and_text_parts_by_url_or_by_name() {
    let server = Receiver::start(|_| Reply::Answer(text_answer(&["seen"])));
    let config = config(&server, json!({"max_attachment_bytes": 16}));
    let files = [
        attached(1, "dot.png", "image/png", b"\x89PNG-tiny"),
        attached(
            2,
            "notes.txt",
            "text/plain; charset=utf-8",
            "ja, vær så god".as_bytes(),
        ),
        attached(3, "report.pdf", "application/pdf", b"%PDF-1.7"),
        attached(4, "large.png", "image/png", &[0u8; 17]),
    ];
    // Two more sent by their URLs: an image goes as its URL, anything else by name.
    let by_url = [
        json!({"filename": "chart.png", "media_type": "image/png", "url": "https://files.example/chart.png"}),
        json!({"filename": "deck.pdf", "media_type": "application/pdf", "url": "https://files.example/deck.pdf"}),
    ];
    let mut turn = input(config.clone(), "Look");
    let mut shown: Vec<Value> = files.iter().map(|(shown, _)| shown.clone()).collect();
    shown.extend(by_url);
    turn.history[0].content = serde_json::from_value(json!({
        "type": "text", "content": "Look", "attachments": shown,
    }))
    .unwrap();
    turn.files = files.into_iter().map(|(_, file)| file).collect();

    baton_test_support::init_tls();
    let runner = OpenAiRunner::new(reqwest::Client::new());
    let (sink, _items) = TurnSink::channel(1024);
    runner.run(turn, sink).await.unwrap();

    let body = server.received()[0].json();
    assert_eq!(
        body["messages"][0]["content"],
        json!([
            {"type": "text", "text": "Look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORy10aW55"}},
            {"type": "text", "text": "Attached file notes.txt:\nja, vær så god"},
            {"type": "text", "text": "[Attached file report.pdf (application/pdf, 8 bytes): not sent to the model]"},
            {"type": "text", "text": "[Attached file large.png (image/png, 17 bytes): not sent to the model]"},
            {"type": "image_url", "image_url": {"url": "https://files.example/chart.png"}},
            {"type": "text", "text": "[Attached file deck.pdf (application/pdf) at https://files.example/deck.pdf: not sent to the model]"},
        ])
    );
}
