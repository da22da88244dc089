//! The `http` runner: an agent that is a service of its own, in any language. baton
//! POSTs the turn to the agent's URL, signed like webhooks (Standard Webhooks), and
//! the agent answers with newline-delimited JSON events as it works, or with one JSON
//! reply. The protocol is in docs/agents.md.

use std::time::Duration;

use async_trait::async_trait;
use baton_domain::{Content, RunnerError, TurnInput, TurnRunner, TurnSink, Usage};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::call::{self, Failure, Peer};

pub const KIND: &str = "http";

const PEER: Peer = Peer {
    code_prefix: "agent",
    name: "the agent service",
};

/// The longest line of an event stream, or a whole JSON reply.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// An `http` agent's `runner.config`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAgentConfig {
    /// Where turns are POSTed.
    pub url: String,
    /// The environment variable holding the `whsec_…` secret requests are signed with
    /// (read at each turn; never stored). Absent: requests are not signed.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Longest wait for the answer to start, and between two of its lines.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retries of a failed or unreachable call before any output was streamed.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The largest attached file whose bytes the turn request carries (base64);
    /// larger ones come with their description only.
    #[serde(default = "default_max_inline_file_bytes")]
    pub max_inline_file_bytes: usize,
    /// The agent takes messages sent while its turn runs (`on_busy: steer`) from the
    /// turn's inbox (the turn request's `inbox`). Needs `secret_env`: the agent signs
    /// its inbox requests with that secret.
    #[serde(default)]
    pub takes_messages: bool,
}

fn default_request_timeout_ms() -> u64 {
    60_000
}

fn default_max_inline_file_bytes() -> usize {
    1024 * 1024
}

fn default_max_retries() -> u32 {
    2
}

impl HttpAgentConfig {
    pub fn parse(config: &Value) -> Result<Self, String> {
        let config: HttpAgentConfig = serde_json::from_value(config.clone())
            .map_err(|err| format!("invalid http agent config: {err}"))?;
        call::check_common(&config.url, config.request_timeout_ms, config.max_retries)
            .map_err(|why| format!("url: {why}"))?;
        if let Some(name) = &config.secret_env {
            call::check_env_name("secret_env", name)?;
        }
        if config.takes_messages && config.secret_env.is_none() {
            return Err(
                "takes_messages needs secret_env: the agent signs its inbox requests with that secret"
                    .to_owned(),
            );
        }
        Ok(config)
    }
}

/// Calls agent services through `http`, a client the server built.
#[derive(Debug, Clone)]
pub struct HttpAgentRunner {
    http: reqwest::Client,
}

impl HttpAgentRunner {
    pub fn new(http: reqwest::Client) -> Self {
        HttpAgentRunner { http }
    }
}

/// What an agent sends: one JSON object per line.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum AgentEvent {
    TextDelta {
        delta: String,
    },
    Message {
        #[serde(deserialize_with = "Content::deserialize_lenient")]
        content: Content,
    },
    Usage(Usage),
    Final,
    Error {
        #[serde(default)]
        code: Option<String>,
        message: String,
    },
}

/// A whole reply at once.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentReply {
    #[serde(default)]
    messages: Vec<ReplyContent>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<ReplyError>,
}

#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct ReplyContent(#[serde(deserialize_with = "Content::deserialize_lenient")] Content);

#[derive(Debug, Deserialize)]
struct ReplyError {
    #[serde(default)]
    code: Option<String>,
    message: String,
}

#[async_trait]
impl TurnRunner for HttpAgentRunner {
    fn validate_config(&self, config: &Value) -> Result<(), String> {
        HttpAgentConfig::parse(config).map(drop)
    }

    fn takes_messages(&self, config: &Value) -> bool {
        HttpAgentConfig::parse(config).is_ok_and(|config| config.takes_messages)
    }

    /// An inbox request must be signed with the agent's secret, as baton signs the
    /// turn request; an agent that does not take messages has no inbox.
    fn authorize_inbox(
        &self,
        config: &Value,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(), String> {
        let config = HttpAgentConfig::parse(config)?;
        if !config.takes_messages {
            return Err("the agent does not take messages mid-turn (takes_messages)".to_owned());
        }
        let secret = secret_of(&config)
            .map_err(|err| err.message)?
            .ok_or_else(|| "the agent has no secret_env".to_owned())?;
        baton_domain::webhooks::verify(headers, body, &secret, chrono::Utc::now())
    }

    async fn run(&self, input: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let config = HttpAgentConfig::parse(&input.agent.runner.config)
            .map_err(|why| RunnerError::new("invalid_runner_config", why))?;
        let secret = secret_of(&config)?;
        let mut request = turn_request(&input, config.max_inline_file_bytes);
        if config.takes_messages {
            request["inbox"] = json!({
                "path": format!(
                    "/v1/agents/{}/tasks/{}/turns/{}/inbox",
                    input.agent.id, input.task.id, input.turn_id
                ),
                "attempt": input.attempt,
            });
        }
        let body = serde_json::to_vec(&request)
            .map_err(|err| RunnerError::new("internal_error", err.to_string()))?;
        // One id for the turn's calls, retries included: the agent can tell a retry.
        let id = format!("turn_{}_{:016x}", input.turn_id, rand::random::<u64>());
        call::with_retries(config.max_retries, || async {
            let mut streamed = false;
            self.call(&config, secret.as_deref(), &id, &body, &sink, &mut streamed)
                .await
                .map_err(|failure| (failure, streamed))
        })
        .await
    }
}

/// The agent's signing secret, read from its environment variable at each use.
fn secret_of(config: &HttpAgentConfig) -> Result<Option<String>, RunnerError> {
    let Some(name) = &config.secret_env else {
        return Ok(None);
    };
    let secret = call::env_secret(PEER, "secret_env", name)?;
    // A secret that signs nothing must not look like an unsigned agent.
    baton_domain::webhooks::check_secret(&secret).map_err(|why| {
        RunnerError::new(
            "agent_secret_invalid",
            format!("the environment variable {name} (secret_env) {why}"),
        )
    })?;
    Ok(Some(secret))
}

/// What the agent is sent for a turn. The attached files come with their bytes up
/// to `max_inline_bytes` each.
pub fn turn_request(input: &TurnInput, max_inline_bytes: usize) -> Value {
    use base64::Engine;
    let files: Vec<Value> = input
        .files
        .iter()
        .map(|file| {
            let data = (file.data.len() <= max_inline_bytes)
                .then(|| base64::engine::general_purpose::STANDARD.encode(&file.data));
            json!({
                "file_id": file.file_id,
                "filename": file.filename,
                "media_type": file.media_type,
                "size_bytes": file.data.len(),
                "data": data,
            })
        })
        .collect();
    json!({
        "type": "turn",
        "task": {
            "task_id": input.task.id,
            "agent_id": input.task.agent_id,
            "metadata": input.task.metadata,
            "created_at": input.task.created_at,
        },
        "agent": {"agent_id": input.agent.id, "name": input.agent.name},
        "turn_id": input.turn_id,
        "metadata": input.metadata,
        "message": input.history.last(),
        "history": input.history,
        "files": files,
    })
}

impl HttpAgentRunner {
    async fn call(
        &self,
        config: &HttpAgentConfig,
        secret: Option<&str>,
        id: &str,
        body: &[u8],
        sink: &TurnSink,
        streamed: &mut bool,
    ) -> Result<(), Failure> {
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let mut request = self
            .http
            .post(&config.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(
                reqwest::header::ACCEPT,
                "application/x-ndjson, application/json",
            )
            .body(body.to_vec());
        if let Some(secret) = secret {
            let now = chrono::Utc::now().timestamp();
            let secrets = [secret.to_owned()];
            for (name, value) in baton_domain::webhooks::sign(id, now, body, &secrets) {
                request = request.header(name, value);
            }
        }
        let response = tokio::time::timeout(timeout, request.send())
            .await
            .map_err(|_| Failure::timeout(PEER, config.request_timeout_ms))?
            .map_err(|err| Failure::unreachable(PEER, &err))?;
        if !response.status().is_success() {
            return Err(Failure::from_status(PEER, response).await);
        }
        let media = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let mut lines = Lines::new(response, timeout, config.request_timeout_ms);
        match media.as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/json-seq" => {
                while let Some(line) = lines.next().await? {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let event: AgentEvent = serde_json::from_slice(&line).map_err(|err| {
                        Failure::bad_response(
                            PEER,
                            format!("an event is not one baton knows: {err}"),
                        )
                    })?;
                    match event {
                        AgentEvent::TextDelta { delta } => {
                            *streamed = true;
                            sink.text_delta(delta)
                                .await
                                .map_err(|_| Failure::closed())?;
                        }
                        AgentEvent::Message { content } => {
                            *streamed = true;
                            sink.message(content).await.map_err(|_| Failure::closed())?;
                        }
                        AgentEvent::Usage(usage) => {
                            sink.usage(usage).await.map_err(|_| Failure::closed())?;
                        }
                        AgentEvent::Final => return Ok(()),
                        AgentEvent::Error { code, message } => {
                            return Err(Failure::reported(PEER, code.as_deref(), &message));
                        }
                    }
                }
                Err(Failure::bad_response(
                    PEER,
                    "the event stream ended without a final or error event",
                ))
            }
            "application/json" => {
                let whole = lines.rest().await?;
                let reply: AgentReply = serde_json::from_slice(&whole).map_err(|err| {
                    Failure::bad_response(PEER, format!("the reply is not one baton knows: {err}"))
                })?;
                if let Some(error) = reply.error {
                    return Err(Failure::reported(
                        PEER,
                        error.code.as_deref(),
                        &error.message,
                    ));
                }
                for ReplyContent(content) in reply.messages {
                    sink.message(content).await.map_err(|_| Failure::closed())?;
                }
                if let Some(usage) = reply.usage {
                    sink.usage(usage).await.map_err(|_| Failure::closed())?;
                }
                Ok(())
            }
            other => Err(Failure::bad_response(
                PEER,
                format!("it answered {other:?}; send application/x-ndjson or application/json"),
            )),
        }
    }
}

/// An answer's body, a line at a time, each read within the timeout and bounded.
struct Lines {
    body: futures_util::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
    done: bool,
    timeout: Duration,
    timeout_ms: u64,
}

impl Lines {
    fn new(response: reqwest::Response, timeout: Duration, timeout_ms: u64) -> Self {
        Lines {
            body: response
                .bytes_stream()
                .map(|r| r.map(|b| b.to_vec()))
                .boxed(),
            buffer: Vec::new(),
            done: false,
            timeout,
            timeout_ms,
        }
    }

    /// Reads more of the body; `false` at its end.
    async fn fill(&mut self) -> Result<bool, Failure> {
        if self.done {
            return Ok(false);
        }
        let next = tokio::time::timeout(self.timeout, self.body.next())
            .await
            .map_err(|_| Failure::timeout(PEER, self.timeout_ms))?;
        match next {
            None => {
                self.done = true;
                Ok(false)
            }
            Some(Err(err)) => Err(Failure::bad_response(
                PEER,
                format!("the answer broke off: {err}"),
            )),
            Some(Ok(bytes)) => {
                self.buffer.extend_from_slice(&bytes);
                Ok(true)
            }
        }
    }

    fn too_long() -> Failure {
        Failure::bad_response(
            PEER,
            format!("a line is longer than {MAX_LINE_BYTES} bytes"),
        )
    }

    async fn next(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                return Ok(Some(line));
            }
            if self.buffer.len() > MAX_LINE_BYTES {
                return Err(Lines::too_long());
            }
            if !self.fill().await? {
                let rest = std::mem::take(&mut self.buffer);
                return Ok((!rest.is_empty()).then_some(rest));
            }
        }
    }

    async fn rest(&mut self) -> Result<Vec<u8>, Failure> {
        while self.fill().await? {
            if self.buffer.len() > MAX_LINE_BYTES {
                return Err(Lines::too_long());
            }
        }
        Ok(std::mem::take(&mut self.buffer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_when_the_agent_is_made() {
        let ok = json!({"url": "http://localhost:9000/turn", "secret_env": "AGENT_SECRET"});
        assert!(HttpAgentConfig::parse(&ok).is_ok());
        for (bad, says) in [
            (json!({}), "url"),
            (json!({"url": "localhost:9000"}), "url"),
            (
                json!({"url": "http://x", "secret_env": "whsec_abc"}),
                "secret_env",
            ),
            (json!({"url": "http://x", "secret": "whsec_abc"}), "secret"),
            (json!({"url": "http://x", "max_retries": 6}), "max_retries"),
        ] {
            let err = HttpAgentConfig::parse(&bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn events_and_replies_parse_as_documented() {
        let event: AgentEvent =
            serde_json::from_str(r#"{"type": "message", "content": "plain"}"#).unwrap();
        assert!(
            matches!(event, AgentEvent::Message { content } if content == Content::text("plain"))
        );
        let event: AgentEvent = serde_json::from_str(
            r#"{"type": "usage", "input_tokens": 1, "output_tokens": 2, "total_tokens": 3}"#,
        )
        .unwrap();
        assert!(matches!(event, AgentEvent::Usage(u) if u.total_tokens == 3));
        let reply: AgentReply =
            serde_json::from_str(r#"{"messages": ["hi", {"type": "data", "data": {"n": 1}}]}"#)
                .unwrap();
        assert_eq!(reply.messages.len(), 2);
        assert!(serde_json::from_str::<AgentEvent>(r#"{"type": "shout"}"#).is_err());
    }
}
