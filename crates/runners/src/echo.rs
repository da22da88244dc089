//! The `echo` runner: replies `echo: <text>` to the latest user message, streaming it
//! word by word. Its configuration can hold a turn open (`delay_ms`) or make it fail
//! (`fail`), for tests and demos.

use std::time::Duration;

use async_trait::async_trait;
use baton_domain::{Content, Message, RunnerError, SinkClosed, TurnInput, TurnRunner, TurnSink};
use serde::Deserialize;
use serde_json::Value;

pub const KIND: &str = "echo";

/// Longest delay a configuration may ask for.
const MAX_DELAY_MS: u64 = 10 * 60 * 1000;

/// The echo runner's configuration (an agent's `runner.config`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoConfig {
    /// Total time the reply takes, spread evenly between its words.
    #[serde(default)]
    pub delay_ms: u64,
    /// Fail every turn with `echo_failed` (after the delay).
    #[serde(default)]
    pub fail: bool,
}

impl EchoConfig {
    fn parse(config: &Value) -> Result<Self, String> {
        let config: EchoConfig = match config {
            Value::Null => EchoConfig::default(),
            other => serde_json::from_value(other.clone())
                .map_err(|err| format!("invalid echo config: {err}"))?,
        };
        if config.delay_ms > MAX_DELAY_MS {
            return Err(format!("delay_ms must be at most {MAX_DELAY_MS}"));
        }
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct EchoRunner;

/// What a message said, as echo repeats it.
fn said(message: Option<&Message>) -> String {
    match message.map(|m| &m.content) {
        Some(Content::Text(text)) => text.content.clone(),
        Some(other) => serde_json::to_string(other).unwrap_or_default(),
        None => String::new(),
    }
}

#[async_trait]
impl TurnRunner for EchoRunner {
    fn validate_config(&self, config: &Value) -> Result<(), String> {
        EchoConfig::parse(config).map(drop)
    }

    /// Between its words (with a `delay_ms`), echo takes the messages steered into
    /// its turn, and answers each with a message of its own after its reply.
    fn takes_messages(&self, _config: &Value) -> bool {
        true
    }

    async fn run(&self, input: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let config = EchoConfig::parse(&input.agent.runner.config)
            .map_err(|why| RunnerError::new("invalid_runner_config", why))?;
        let closed = |closed: SinkClosed| RunnerError::new("turn_closed", closed.to_string());
        let reply = format!("echo: {}", said(input.last_user_message()));
        let words: Vec<&str> = reply.split_inclusive(' ').collect();
        let pause = Duration::from_millis(config.delay_ms / words.len().max(1) as u64);
        let mut steered = Vec::new();
        for word in words {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
                steered.extend(sink.take_messages().await.map_err(closed)?);
            }
            if config.fail {
                continue;
            }
            sink.text_delta(word).await.map_err(closed)?;
        }
        // Each message taken mid-turn is answered by a message of its own, after it.
        for message in steered {
            let answer = Content::text(format!("echo: {}", said(Some(&message))));
            sink.message(answer).await.map_err(closed)?;
        }
        if config.fail {
            return Err(RunnerError::new(
                "echo_failed",
                "the echo agent was configured to fail",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_domain::runner::SinkItem;
    use baton_domain::*;
    use chrono::Utc;
    use serde_json::json;

    fn input(config: Value, text: &str) -> TurnInput {
        let now = Utc::now();
        TurnInput {
            agent: Agent {
                card: None,
                id: AgentId(1),
                name: "e".into(),
                runner: RunnerSpec {
                    kind: KIND.into(),
                    config,
                },
                policy: TurnPolicy::default(),
                webhook: None,
                created_at: now,
            },
            task: Task {
                id: TaskId(1),
                agent_id: AgentId(1),
                metadata: Metadata::new(),
                input: Content::text(text),
                created_at: now,
                updated_at: now,
            },
            turn_id: TurnId(1),
            attempt: 1,
            metadata: Metadata::new(),
            history: vec![Message {
                id: MessageId(1),
                task_id: TaskId(1),
                turn_id: TurnId(1),
                role: Role::User,
                content: Content::text(text),
                streaming_status: None,
                created_at: now,
                metadata: Default::default(),
            }],
            files: Vec::new(),
        }
    }

    #[tokio::test]
    async fn echoes_the_last_user_message_word_by_word() {
        let (sink, mut rx) = TurnSink::channel(16);
        EchoRunner
            .run(input(json!({}), "hello big world"), sink)
            .await
            .unwrap();
        let mut deltas = Vec::new();
        while let Ok(SinkItem::TextDelta(d)) = rx.try_recv() {
            deltas.push(d);
        }
        assert_eq!(deltas, ["echo: ", "hello ", "big ", "world"]);
    }

    #[tokio::test]
    async fn fail_config_fails_the_turn_with_echo_failed() {
        let (sink, _rx) = TurnSink::channel(16);
        let err = EchoRunner
            .run(input(json!({"fail": true}), "x"), sink)
            .await
            .unwrap_err();
        assert_eq!(err.code, "echo_failed");
    }

    #[tokio::test(start_paused = true)]
    async fn delay_holds_the_turn_open_for_that_long() {
        let (sink, _rx) = TurnSink::channel(16);
        let started = tokio::time::Instant::now();
        EchoRunner
            .run(input(json!({"delay_ms": 1500}), "a b"), sink)
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(1500));
    }

    #[test]
    fn config_is_checked() {
        assert!(
            EchoRunner
                .validate_config(&json!({"delay_ms": 10, "fail": false}))
                .is_ok()
        );
        assert!(EchoRunner.validate_config(&Value::Null).is_ok());
        assert!(EchoRunner.validate_config(&json!({"delay": 10})).is_err());
        assert!(
            EchoRunner
                .validate_config(&json!({"delay_ms": -1}))
                .is_err()
        );
        assert!(
            EchoRunner
                .validate_config(&json!({"delay_ms": MAX_DELAY_MS + 1}))
                .is_err()
        );
    }
}
