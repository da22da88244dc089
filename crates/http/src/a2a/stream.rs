//! A2A's streaming methods (`SendStreamingMessage`, `SubscribeToTask`): the task's
//! event log as JSON-RPC results over Server-Sent Events. Every event carries baton's
//! event id — as the SSE `id:` and in its `metadata.baton.event_id` — and a
//! `SubscribeToTask` with `Last-Event-ID` resumes right after it, with nothing missed
//! or repeated, on any instance (the extension A2A itself lacks).

use actix_web::web::Bytes;
use baton_domain::{Content, EventKind, SharedEvent, TaskId, TurnError, TurnStatus};
use serde_json::{Value, json};

use crate::sse::Framer;
use baton_domain::a2a::{artifact_id, context_id, parts_json, status_json};

/// How a binding wraps each stream response: the JSON-RPC binding in a JSON-RPC
/// response to the request's id, the HTTP+JSON binding not at all.
#[derive(Debug, Clone)]
pub enum Envelope {
    JsonRpc(Value),
    Rest,
}

impl Envelope {
    /// A result as one SSE event, with baton's event id when it has one.
    pub fn result(&self, event_id: Option<i64>, result: Value) -> Bytes {
        let data = match self {
            Envelope::JsonRpc(id) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
            Envelope::Rest => result,
        };
        Bytes::from(match event_id {
            Some(id) => format!("id: {id}\ndata: {data}\n\n"),
            None => format!("data: {data}\n\n"),
        })
    }
}

/// A JSON-RPC error as the one event of a stream that could not start.
pub fn error_frame(rpc_id: &Value, code: i32, message: &str) -> Bytes {
    let data = json!({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}});
    Bytes::from(format!("data: {data}\n\n"))
}

/// Writes the task's events as A2A stream responses: a turn's start as a `working`
/// status update, its text as artifact updates (`append` after the first,
/// `lastChunk` at the end), whole agent messages as artifact updates, and its end as
/// the final status update, after which the stream ends.
pub struct A2aFrames {
    pub envelope: Envelope,
    pub task: TaskId,
    /// The turn whose artifact has had a chunk on this stream.
    pub started: Option<i64>,
}

impl A2aFrames {
    fn frame_of(&self, seq: i64, result: Value) -> Bytes {
        self.envelope.result(Some(seq), result)
    }

    /// A status update carrying `status` (built by [`status_json`]).
    fn status(&self, seq: i64, status: Value) -> Bytes {
        self.frame_of(
            seq,
            json!({"statusUpdate": {
                "taskId": self.task.0.to_string(),
                "contextId": context_id(self.task),
                "status": status,
                "metadata": {"baton": {"event_id": seq}},
            }}),
        )
    }

    fn artifact(&mut self, seq: i64, turn: i64, parts: Vec<Value>, last: bool) -> Bytes {
        let append = self.started == Some(turn);
        self.started = Some(turn);
        self.frame_of(
            seq,
            json!({"artifactUpdate": {
                "taskId": self.task.0.to_string(),
                "contextId": context_id(self.task),
                "artifact": {"artifactId": artifact_id(turn), "name": format!("turn {turn}"), "parts": parts},
                "append": append,
                "lastChunk": last,
                "metadata": {"baton": {"event_id": seq}},
            }}),
        )
    }
}

impl Framer for A2aFrames {
    fn frame(&mut self, shared: &SharedEvent) -> (Vec<Bytes>, bool) {
        let event = &shared.event;
        let (seq, turn, data) = (event.seq, event.turn_id.0, &event.data);
        let at = json!(event.created_at);
        match event.kind {
            EventKind::TurnStarted => {
                let working =
                    status_json(self.task, event.turn_id, TurnStatus::Running, None, [], at);
                (vec![self.status(seq, working)], false)
            }
            EventKind::TextDelta => {
                let delta = data["delta"].as_str().unwrap_or_default();
                (
                    vec![self.artifact(seq, turn, vec![json!({"text": delta})], false)],
                    false,
                )
            }
            EventKind::Message => {
                let message = &data["message"];
                // A streamed message's text came as deltas already; a client's message
                // (a tool answer) is not the agent's output.
                let streamed = message["streaming_status"] == "done";
                let agents = message["role"] == "assistant";
                match serde_json::from_value::<Content>(message["content"].clone()) {
                    Ok(content) if agents && !streamed => {
                        let parts = parts_json(self.task, &content);
                        (vec![self.artifact(seq, turn, parts, false)], false)
                    }
                    _ => (Vec::new(), false),
                }
            }
            // A user message taken by the running turn: not the agent's output.
            EventKind::MessageDelivered => (Vec::new(), false),
            EventKind::Final
            | EventKind::Error
            | EventKind::Cancelled
            | EventKind::RequiresAction => {
                // The ending event's data: the turn's status, its error, its output.
                let status =
                    serde_json::from_value(data["status"].clone()).unwrap_or(TurnStatus::Failed);
                let error: Option<TurnError> = serde_json::from_value(data["error"].clone()).ok();
                let output: Vec<Content> = data["output"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| serde_json::from_value(m["content"].clone()).ok())
                    .collect();
                let ended = status_json(
                    self.task,
                    event.turn_id,
                    status,
                    error.as_ref(),
                    &output,
                    at,
                );
                let mut frames = Vec::new();
                if self.started == Some(turn) {
                    frames.push(self.artifact(seq, turn, Vec::new(), true));
                }
                frames.push(self.status(seq, ended));
                (frames, true)
            }
        }
    }
}
