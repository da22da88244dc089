//! The `openai` runner: an agent that is a model behind an OpenAI-compatible Chat
//! Completions endpoint (OpenAI, vLLM, Ollama, llama.cpp's server, LiteLLM).
//!
//! The task's history becomes chat messages; the call streams (`stream: true`); content
//! deltas become `text_delta`s, reasoning deltas (`reasoning_content`, or `reasoning`)
//! one `reasoning` message, and the reported usage is recorded on the turn. Failures
//! end the turn with a code per class; rate limits, server errors and broken
//! connections are retried a few times, but only before any text was streamed.

use std::time::Duration;

use async_trait::async_trait;
use baton_domain::{
    Content, Message, RunnerError, StoredFile, TurnInput, TurnRunner, TurnSink, Usage,
    content::{Attachment, ReasoningContent, TextContent, ToolRequestContent},
};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::call::{self, Failure, Peer};

pub const KIND: &str = "openai";

const PEER: Peer = Peer {
    code_prefix: "model",
    name: "the model endpoint",
};

/// An `openai` agent's `runner.config`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiConfig {
    /// Up to and including the version: `https://api.openai.com/v1`,
    /// `http://localhost:11434/v1`. `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// The name of the environment variable holding the API key (read at each turn;
    /// the key itself is never stored). Absent: no `Authorization` header.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Sent first, as a `system` message.
    #[serde(default)]
    pub system_prompt: Option<String>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Tools the model may ask the client to run, as Chat Completions takes them:
    /// `[{"type": "function", "function": {"name", "description", "parameters"}}]`.
    /// A turn whose model calls them ends `requires_action`; the client's answers
    /// start the next turn.
    #[serde(default)]
    pub tools: Vec<Value>,
    /// Longest wait for the answer to start, and between two of its chunks.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Retries of a rate-limited, failed or unreachable call before any text streamed.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// The largest attached file sent to the model (images as image parts, text files
    /// as text); larger ones, and files of other types, are only named.
    #[serde(default = "default_max_attachment_bytes")]
    pub max_attachment_bytes: usize,
}

fn default_request_timeout_ms() -> u64 {
    60_000
}

fn default_max_attachment_bytes() -> usize {
    1024 * 1024
}

fn default_max_retries() -> u32 {
    2
}

impl OpenAiConfig {
    pub fn parse(config: &Value) -> Result<Self, String> {
        let config: OpenAiConfig = serde_json::from_value(config.clone())
            .map_err(|err| format!("invalid openai config: {err}"))?;
        call::check_common(
            &config.base_url,
            config.request_timeout_ms,
            config.max_retries,
        )
        .map_err(|why| format!("base_url: {why}"))?;
        if config.model.trim().is_empty() {
            return Err("model must not be empty".to_owned());
        }
        if let Some(name) = &config.api_key_env {
            call::check_env_name("api_key_env", name)?;
        }
        if let Some(t) = config.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err("temperature must be from 0 to 2".to_owned());
        }
        if config.max_tokens == Some(0) {
            return Err("max_tokens must be at least 1".to_owned());
        }
        for (i, tool) in config.tools.iter().enumerate() {
            let named = tool["type"] == "function"
                && tool["function"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty());
            if !named {
                return Err(format!(
                    "tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\", …}}}}"
                ));
            }
        }
        Ok(config)
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Calls the model through `http`, a client the server built (with its TLS set up).
#[derive(Debug, Clone)]
pub struct OpenAiRunner {
    http: reqwest::Client,
}

impl OpenAiRunner {
    pub fn new(http: reqwest::Client) -> Self {
        OpenAiRunner { http }
    }
}

#[async_trait]
impl TurnRunner for OpenAiRunner {
    fn validate_config(&self, config: &Value) -> Result<(), String> {
        OpenAiConfig::parse(config).map(drop)
    }

    async fn run(&self, input: TurnInput, sink: TurnSink) -> Result<(), RunnerError> {
        let config = OpenAiConfig::parse(&input.agent.runner.config)
            .map_err(|why| RunnerError::new("invalid_runner_config", why))?;
        let api_key = match &config.api_key_env {
            None => None,
            Some(name) => Some(call::env_secret(PEER, "api_key_env", name)?),
        };
        let body = request_body(&config, &input);
        call::with_retries(config.max_retries, || async {
            let mut reply = Reply::new(&sink);
            let called = self
                .call(&config, api_key.as_deref(), &body, &mut reply)
                .await;
            let ended = match called {
                Ok(()) => {
                    reply.flush_reasoning().await;
                    reply.send_tool_calls().await
                }
                Err(failure) => Err(failure),
            };
            match ended {
                Ok(()) => Ok(()),
                Err(failure) => {
                    // Thinking that reached this point is kept with the failure.
                    reply.flush_reasoning().await;
                    Err((failure, reply.streamed()))
                }
            }
        })
        .await
    }
}

impl OpenAiRunner {
    async fn call(
        &self,
        config: &OpenAiConfig,
        api_key: Option<&str>,
        body: &Value,
        reply: &mut Reply<'_>,
    ) -> Result<(), Failure> {
        let mut request = self.http.post(config.endpoint()).json(body);
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let response = tokio::time::timeout(config.timeout(), request.send())
            .await
            .map_err(|_| Failure::timeout(PEER, config.request_timeout_ms))?
            .map_err(|err| Failure::unreachable(PEER, &err))?;
        if !response.status().is_success() {
            return Err(Failure::from_status(PEER, response).await);
        }
        let mut events = response.bytes_stream().eventsource();
        loop {
            let event = tokio::time::timeout(config.timeout(), events.next())
                .await
                .map_err(|_| Failure::timeout(PEER, config.request_timeout_ms))?;
            let Some(event) = event else {
                return Err(Failure::bad_response(
                    PEER,
                    "the stream ended before [DONE]",
                ));
            };
            let event = event.map_err(|err| {
                Failure::bad_response(PEER, format!("the stream broke off: {err}"))
            })?;
            let data = event.data.trim();
            if data == "[DONE]" {
                return Ok(());
            }
            if data.is_empty() {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).map_err(|err| {
                Failure::bad_response(PEER, format!("a chunk is not JSON: {err}"))
            })?;
            if let Some(error) = chunk.get("error") {
                let message = error["message"].as_str().unwrap_or("no message");
                return Err(Failure::reported(PEER, None, message));
            }
            reply.chunk(&chunk).await?;
        }
    }
}

/// The Chat Completions request for a turn.
fn request_body(config: &OpenAiConfig, input: &TurnInput) -> Value {
    let mut messages = Vec::new();
    if let Some(prompt) = &config.system_prompt {
        messages.push(json!({"role": "system", "content": prompt}));
    }
    let files = Attached {
        files: &input.files,
        max_bytes: config.max_attachment_bytes,
    };
    messages.extend(chat_messages(&input.history, &files));
    let mut body = json!({
        "model": config.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(object) = body.as_object_mut() {
        if let Some(t) = config.temperature {
            object.insert("temperature".to_owned(), json!(t));
        }
        if let Some(n) = config.max_tokens {
            object.insert("max_tokens".to_owned(), json!(n));
        }
        if !config.tools.is_empty() {
            object.insert("tools".to_owned(), json!(config.tools));
        }
    }
    body
}

/// What a model is told of a tool call the client never answered (its turn failed
/// with `tool_response_timeout`).
pub const UNANSWERED_TOOL_CALL: &str =
    "The client did not answer this tool call in time; no result is available.";

/// The files of a turn's input, as a model may be sent them.
#[derive(Debug)]
pub struct Attached<'a> {
    pub files: &'a [StoredFile],
    /// The largest file sent; larger ones are only named.
    pub max_bytes: usize,
}

impl Attached<'_> {
    /// A text message's content: the text alone, or — with attachments — content
    /// parts: the text, then each file as an image part (a data URL, or the URL an
    /// image was sent by), as a text part (text-like files in UTF-8), or, for any other
    /// file or one over the limit, a line naming it (and its URL).
    fn content_of(&self, text: &TextContent) -> Value {
        if text.attachments.is_empty() {
            return json!(text.content);
        }
        let mut parts = vec![json!({"type": "text", "text": text.content})];
        for attachment in &text.attachments {
            let file = attachment
                .file_id
                .and_then(|id| self.files.iter().find(|file| file.file_id == id))
                .filter(|file| file.data.len() <= self.max_bytes);
            let media_type = attachment.media_type.to_ascii_lowercase();
            let image = media_type.starts_with("image/");
            let part = match file {
                // An image sent by its URL goes to the model as that URL.
                None if image && attachment.url.is_some() => {
                    json!({"type": "image_url", "image_url": {"url": attachment.url}})
                }
                Some(file) if image => {
                    use base64::Engine;
                    let data = base64::engine::general_purpose::STANDARD.encode(&file.data);
                    json!({"type": "image_url",
                           "image_url": {"url": format!("data:{media_type};base64,{data}")}})
                }
                Some(file) if text_like(&media_type) => match std::str::from_utf8(&file.data) {
                    Ok(body) => json!({"type": "text",
                        "text": format!("Attached file {}:\n{body}", attachment.filename)}),
                    Err(_) => named(attachment),
                },
                _ => named(attachment),
            };
            parts.push(part);
        }
        Value::Array(parts)
    }
}

/// Files a model reads as text.
fn text_like(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or_default().trim();
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || matches!(
            essence,
            "application/json" | "application/xml" | "application/yaml" | "application/x-yaml"
        )
}

/// A file the model is not sent, named so it knows one came.
fn named(attachment: &Attachment) -> Value {
    let text = match &attachment.url {
        Some(url) => format!(
            "[Attached file {} ({}) at {url}: not sent to the model]",
            attachment.filename, attachment.media_type
        ),
        None => format!(
            "[Attached file {} ({}, {} bytes): not sent to the model]",
            attachment.filename,
            attachment.media_type,
            attachment.size_bytes.unwrap_or_default()
        ),
    };
    json!({"type": "text", "text": text})
}

/// The task's history as chat messages. Reasoning is the model's own and is not sent
/// back; tool requests of one assistant turn become one message with its tool calls.
///
/// The result is always a valid conversation for the Chat Completions API: every tool
/// call is followed by a `tool` message answering it before anything else. A call the
/// client left unanswered gets [`UNANSWERED_TOOL_CALL`] as its result.
pub fn chat_messages(history: &[Message], files: &Attached<'_>) -> Vec<Value> {
    let mut messages: Vec<Value> = Vec::new();
    // Calls of the latest assistant tool-call message not answered yet.
    let mut pending: Vec<String> = Vec::new();
    let answer_pending = |messages: &mut Vec<Value>, pending: &mut Vec<String>| {
        for id in pending.drain(..) {
            messages.push(json!({
                "role": "tool",
                "tool_call_id": id,
                "content": UNANSWERED_TOOL_CALL,
            }));
        }
    };
    for message in history {
        let role = message.role.as_str();
        match &message.content {
            Content::Text(text) => {
                answer_pending(&mut messages, &mut pending);
                messages.push(json!({"role": role, "content": files.content_of(text)}));
            }
            Content::Data(data) => {
                answer_pending(&mut messages, &mut pending);
                messages.push(json!({
                    "role": role,
                    "content": Value::Object(data.data.clone()).to_string(),
                }));
            }
            Content::Reasoning(_) => {}
            Content::ToolRequest(call) => {
                let tool_call = json!({
                    "id": call.tool_call_id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": Value::Object(call.arguments.clone()).to_string(),
                    },
                });
                // (`get_mut`, not indexing: indexing a JSON object inserts the key.)
                let previous_calls = messages
                    .last_mut()
                    .filter(|last| last["role"] == "assistant")
                    .and_then(|last| last.get_mut("tool_calls"))
                    .and_then(Value::as_array_mut);
                match previous_calls {
                    Some(calls) => calls.push(tool_call),
                    None => {
                        answer_pending(&mut messages, &mut pending);
                        messages.push(json!({
                            "role": "assistant",
                            "content": null,
                            "tool_calls": [tool_call],
                        }));
                    }
                }
                pending.push(call.tool_call_id.clone());
            }
            Content::ToolResponse(answer) => {
                pending.retain(|id| *id != answer.tool_call_id);
                let content = match &answer.content {
                    Value::String(text) => text.clone(),
                    other => other.to_string(),
                };
                messages.push(json!({
                    "role": "tool",
                    "tool_call_id": answer.tool_call_id,
                    "content": content,
                }));
            }
        }
    }
    answer_pending(&mut messages, &mut pending);
    messages
}

/// What one call has produced so far, pushed into the turn as it comes.
struct Reply<'a> {
    sink: &'a TurnSink,
    reasoning: String,
    text_started: bool,
    /// Tool calls as their deltas arrive, by index: id, name, arguments so far.
    calls: std::collections::BTreeMap<u64, (String, String, String)>,
}

impl<'a> Reply<'a> {
    fn new(sink: &'a TurnSink) -> Self {
        Reply {
            sink,
            reasoning: String::new(),
            text_started: false,
            calls: std::collections::BTreeMap::new(),
        }
    }

    /// Whether text reached the client: the call can no longer be retried.
    fn streamed(&self) -> bool {
        self.text_started
    }

    async fn chunk(&mut self, chunk: &Value) -> Result<(), Failure> {
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            let count = |name: &str| usage[name].as_u64().unwrap_or(0);
            let (input, output) = (count("prompt_tokens"), count("completion_tokens"));
            let total = usage["total_tokens"].as_u64().unwrap_or(input + output);
            self.sink
                .usage(Usage {
                    input_tokens: input,
                    output_tokens: output,
                    total_tokens: total,
                })
                .await
                .map_err(|_| Failure::closed())?;
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        for choice in choices {
            let delta = &choice["delta"];
            let reasoning = delta["reasoning_content"]
                .as_str()
                .or_else(|| delta["reasoning"].as_str());
            if let Some(more) = reasoning {
                self.reasoning.push_str(more);
            }
            if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
                // Thinking comes before the answer: it is one message before the text.
                self.flush_reasoning().await;
                self.text_started = true;
                self.sink
                    .text_delta(text)
                    .await
                    .map_err(|_| Failure::closed())?;
            }
            // A call's id and name come first, its arguments in pieces after.
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let index = call["index"].as_u64().unwrap_or(0);
                let entry = self.calls.entry(index).or_default();
                if let Some(id) = call["id"].as_str() {
                    entry.0.push_str(id);
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    entry.1.push_str(name);
                }
                if let Some(more) = call["function"]["arguments"].as_str() {
                    entry.2.push_str(more);
                }
            }
        }
        Ok(())
    }

    /// The model's tool calls, complete, as `tool_request` messages: the turn then
    /// waits for the client's answers.
    async fn send_tool_calls(&mut self) -> Result<(), Failure> {
        for (id, name, arguments) in std::mem::take(&mut self.calls).into_values() {
            if id.is_empty() || name.is_empty() {
                return Err(Failure::bad_response(PEER, "a tool call has no id or name"));
            }
            let arguments = if arguments.trim().is_empty() {
                Map::new()
            } else {
                match serde_json::from_str::<Value>(&arguments) {
                    Ok(Value::Object(object)) => object,
                    _ => {
                        return Err(Failure::bad_response(
                            PEER,
                            format!("the arguments of tool call {id} are not a JSON object"),
                        ));
                    }
                }
            };
            let request = Content::ToolRequest(ToolRequestContent {
                tool_call_id: id,
                name,
                arguments,
            });
            self.sink
                .message(request)
                .await
                .map_err(|_| Failure::closed())?;
        }
        Ok(())
    }

    /// The reasoning gathered so far, as one `reasoning` message.
    async fn flush_reasoning(&mut self) {
        if self.reasoning.is_empty() {
            return;
        }
        let thought = std::mem::take(&mut self.reasoning);
        let _ = self
            .sink
            .message(Content::Reasoning(ReasoningContent {
                summary: Vec::new(),
                content: Some(vec![thought]),
            }))
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_domain::content::{ToolRequestContent, ToolResponseContent};
    use baton_domain::{MessageId, Role, TaskId, TurnId};

    fn message(role: Role, content: Content) -> Message {
        Message {
            id: MessageId(1),
            task_id: TaskId(1),
            turn_id: TurnId(1),
            role,
            content,
            streaming_status: None,
            created_at: chrono::Utc::now(),
            metadata: Default::default(),
        }
    }

    #[test]
    fn configs_are_checked_when_the_agent_is_made() {
        let ok = json!({"base_url": "http://localhost:11434/v1", "model": "llama3"});
        assert!(OpenAiConfig::parse(&ok).is_ok());
        for (bad, says) in [
            (json!({"model": "m"}), "base_url"),
            (json!({"base_url": "ftp://x", "model": "m"}), "http"),
            (
                json!({"base_url": "http://x", "model": "m", "request_timeout_ms": 5}),
                "request_timeout_ms",
            ),
            (json!({"base_url": "http://x", "model": ""}), "model"),
            (
                json!({"base_url": "http://x", "model": "m", "api_key_env": "sk-123"}),
                "api_key_env",
            ),
            (
                json!({"base_url": "http://x", "model": "m", "temperature": 3}),
                "temperature",
            ),
            (
                json!({"base_url": "http://x", "model": "m", "max_retries": 9}),
                "max_retries",
            ),
            (
                json!({"base_url": "http://x", "model": "m", "api_key": "sk"}),
                "api_key",
            ),
        ] {
            let err = OpenAiConfig::parse(&bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn history_maps_to_chat_messages_with_tool_calls_and_results() {
        let history = vec![
            message(Role::User, Content::text("weather in Oslo and Rome?")),
            message(
                Role::Assistant,
                Content::Reasoning(ReasoningContent {
                    summary: vec![],
                    content: Some(vec!["two lookups".into()]),
                }),
            ),
            message(
                Role::Assistant,
                Content::ToolRequest(ToolRequestContent {
                    tool_call_id: "call_1".into(),
                    name: "weather".into(),
                    arguments: json!({"city": "Oslo"}).as_object().cloned().unwrap(),
                }),
            ),
            message(
                Role::Assistant,
                Content::ToolRequest(ToolRequestContent {
                    tool_call_id: "call_2".into(),
                    name: "weather".into(),
                    arguments: json!({"city": "Rome"}).as_object().cloned().unwrap(),
                }),
            ),
            message(
                Role::Tool,
                Content::ToolResponse(ToolResponseContent {
                    tool_call_id: "call_1".into(),
                    name: "weather".into(),
                    content: json!({"c": 4}),
                    is_error: None,
                }),
            ),
            message(
                Role::Tool,
                Content::ToolResponse(ToolResponseContent {
                    tool_call_id: "call_2".into(),
                    name: "weather".into(),
                    content: json!("sunny"),
                    is_error: None,
                }),
            ),
        ];
        let messages = chat_messages(
            &history,
            &Attached {
                files: &[],
                max_bytes: 0,
            },
        );
        assert_eq!(
            messages,
            vec![
                json!({"role": "user", "content": "weather in Oslo and Rome?"}),
                json!({"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Rome\"}"}},
                ]}),
                json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"c\":4}"}),
                json!({"role": "tool", "tool_call_id": "call_2", "content": "sunny"}),
            ]
        );
    }

    #[test]
    fn calls_left_unanswered_get_a_result_saying_so_before_the_next_message() {
        let call = |id: &str| {
            message(
                Role::Assistant,
                Content::ToolRequest(ToolRequestContent {
                    tool_call_id: id.into(),
                    name: "weather".into(),
                    arguments: serde_json::Map::new(),
                }),
            )
        };
        let history = vec![
            message(Role::User, Content::text("weather?")),
            call("call_1"),
            call("call_2"),
            message(
                Role::Tool,
                Content::ToolResponse(ToolResponseContent {
                    tool_call_id: "call_2".into(),
                    name: "weather".into(),
                    content: json!("rain"),
                    is_error: None,
                }),
            ),
            // The turn timed out waiting for call_1; the user wrote again.
            message(Role::User, Content::text("hello?")),
            call("call_3"),
        ];
        let messages = chat_messages(
            &history,
            &Attached {
                files: &[],
                max_bytes: 0,
            },
        );
        let roles: Vec<(&str, Option<&str>)> = messages
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["tool_call_id"].as_str()))
            .collect();
        assert_eq!(
            roles,
            [
                ("user", None),
                ("assistant", None),
                ("tool", Some("call_2")),
                ("tool", Some("call_1")),
                ("user", None),
                ("assistant", None),
                ("tool", Some("call_3")),
            ]
        );
        assert_eq!(messages[3]["content"], UNANSWERED_TOOL_CALL);
        assert_eq!(messages[6]["content"], UNANSWERED_TOOL_CALL);
    }
}
