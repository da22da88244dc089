//! The Agent2Agent (A2A 1.0) form of baton's tasks and messages, as the HTTP binding
//! answers them and as push notifications carry them (A2A's JSON form of its protobuf
//! types: camelCase fields, enum values by name). An A2A task is a baton task, and
//! its context is the task itself.

use serde_json::{Value, json};

use crate::{
    Content, Message, Metadata, Role, TaskId, TaskStatus, Turn, TurnError, TurnId, TurnStatus,
};

/// Where a part says which baton content it stands for (`tool_request`,
/// `tool_response`, `reasoning`), when a plain A2A part cannot say it.
pub const KIND_KEY: &str = "baton_type";

/// A baton message as an A2A message of its task.
pub fn message_json(message: &Message) -> Value {
    let role = match message.role {
        Role::User | Role::Tool => "ROLE_USER",
        Role::Assistant | Role::System => "ROLE_AGENT",
    };
    let mut out = json!({
        "messageId": message.id.0.to_string(),
        "contextId": context_id(message.task_id),
        "taskId": message.task_id.0.to_string(),
        "role": role,
        "parts": parts_json(message.task_id, &message.content),
    });
    if !message.metadata.is_empty() {
        out["metadata"] = Value::Object(message.metadata.clone());
    }
    out
}

/// A task's context: each baton task is a conversation of its own, so its context id
/// is its task id.
pub fn context_id(task: TaskId) -> String {
    task.0.to_string()
}

/// The parts of a baton content: text (attachments as `url` parts to their file),
/// data, and the kinds A2A has no part for as data parts marked `baton_type`.
pub fn parts_json(task: TaskId, content: &Content) -> Vec<Value> {
    let marked = |kind: &str, data: Value| json!({"data": data, "metadata": {KIND_KEY: kind}});
    match content {
        Content::Text(text) => {
            let mut parts = vec![json!({"text": text.content})];
            parts.extend(text.attachments.iter().map(|a| {
                let url = a
                    .file_id
                    .map(|id| format!("/v1/chat/tasks/{}/files/{id}", task.0))
                    .unwrap_or_default();
                json!({"url": url, "filename": a.filename, "mediaType": a.media_type})
            }));
            parts
        }
        Content::Data(data) => vec![json!({"data": data.data})],
        Content::Reasoning(reasoning) => vec![marked("reasoning", json!(reasoning))],
        Content::ToolRequest(request) => vec![marked("tool_request", json!(request))],
        Content::ToolResponse(response) => vec![marked("tool_response", json!(response))],
    }
}

/// The A2A state of a baton task.
pub fn state(status: TaskStatus) -> &'static str {
    match status {
        TaskStatus::Running => "TASK_STATE_WORKING",
        TaskStatus::RequiresAction => "TASK_STATE_INPUT_REQUIRED",
        TaskStatus::Completed => "TASK_STATE_COMPLETED",
        TaskStatus::Failed => "TASK_STATE_FAILED",
        TaskStatus::Cancelled => "TASK_STATE_CANCELED",
    }
}

/// A task whose latest turn is `turn`, with that turn's agent `output` as its one
/// artifact and `shown` as its history (A2A's `Task`). `queued`: how many messages
/// wait in its queue, when known.
pub fn task_json(
    task: TaskId,
    metadata: &Metadata,
    turn: &Turn,
    output: &[&Message],
    shown: &[Message],
    queued: Option<u32>,
) -> Value {
    let status = status_json(
        task,
        turn.id,
        turn.status,
        turn.error.as_ref(),
        output.iter().map(|m| &m.content),
        json!(turn.ended_at.unwrap_or(turn.started_at)),
    );
    let parts: Vec<Value> = output
        .iter()
        .flat_map(|m| parts_json(task, &m.content))
        .collect();
    let artifacts: Vec<Value> = match parts.is_empty() {
        true => Vec::new(),
        false => vec![json!({
            "artifactId": artifact_id(turn.id.0),
            "name": format!("turn {}", turn.id),
            "parts": parts,
        })],
    };
    let mut metadata = metadata.clone();
    let mut baton = json!({"turn_id": turn.id, "attempt": turn.attempt});
    if let Some(queued) = queued {
        baton["queued"] = json!(queued);
    }
    metadata.insert("baton".to_owned(), baton);
    json!({
        "id": task.0.to_string(),
        "contextId": context_id(task),
        "status": status,
        "artifacts": artifacts,
        "history": shown.iter().map(message_json).collect::<Vec<_>>(),
        "metadata": metadata,
    })
}

/// A push notification's body for a turn's end: A2A's `StreamResponse` holding the
/// task as the turn left it (its status, the turn's output as the artifact, no
/// history).
pub fn push_payload(turn: &Turn, output: &[Message], task_metadata: &Metadata) -> Value {
    let output: Vec<&Message> = output.iter().collect();
    json!({"task": task_json(turn.task_id, task_metadata, turn, &output, &[], None)})
}

/// The artifact of a turn's output (one per turn, built up by its text as it
/// streams).
pub fn artifact_id(turn: i64) -> String {
    format!("turn-{turn}")
}

/// The A2A status of a task whose latest turn `turn` has `status`, at `at`, with
/// what the client must know to go on as the agent's status message: the tool calls
/// asked for (from the turn's `output`), or why the turn failed. The same for a task
/// read whole and for a stream's status update.
pub fn status_json<'a>(
    task: TaskId,
    turn: TurnId,
    status: TurnStatus,
    error: Option<&TurnError>,
    output: impl IntoIterator<Item = &'a Content>,
    at: Value,
) -> Value {
    let mut json = json!({"state": state(status.into()), "timestamp": at});
    let note = match status {
        TurnStatus::RequiresAction => Some(
            output
                .into_iter()
                .filter(|c| matches!(c, Content::ToolRequest(_)))
                .flat_map(|c| parts_json(task, c))
                .collect(),
        ),
        TurnStatus::Failed => {
            error.map(|e| vec![json!({"text": format!("{}: {}", e.code, e.message)})])
        }
        _ => None,
    };
    if let Some(parts) = note {
        // A status message from the agent (not stored in the task's history).
        json["message"] = json!({
            "messageId": format!("status-{turn}"),
            "contextId": context_id(task),
            "taskId": task.0.to_string(),
            "role": "ROLE_AGENT",
            "parts": parts,
        });
    }
    json
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::{Attachment, DataContent, TextContent};

    #[test]
    fn baton_content_goes_out_as_parts_files_by_url_and_other_kinds_marked() {
        let task = TaskId(7);
        let text = Content::Text(TextContent {
            format: Default::default(),
            content: "see".to_owned(),
            attachments: vec![Attachment {
                filename: "a.csv".to_owned(),
                media_type: "text/csv".to_owned(),
                data: None,
                file_id: Some(3),
                size_bytes: Some(2),
                sha256: None,
            }],
        });
        assert_eq!(
            parts_json(task, &text),
            vec![
                json!({"text": "see"}),
                json!({"url": "/v1/chat/tasks/7/files/3", "filename": "a.csv", "mediaType": "text/csv"}),
            ]
        );
        let data = Content::Data(DataContent {
            data: json!({"a": 1}).as_object().unwrap().clone(),
        });
        assert_eq!(parts_json(task, &data), vec![json!({"data": {"a": 1}})]);
        let reasoning: Content =
            serde_json::from_value(json!({"type": "reasoning", "summary": ["think"]})).unwrap();
        let parts = parts_json(task, &reasoning);
        assert_eq!(parts[0]["metadata"][KIND_KEY], "reasoning");
        assert_eq!(parts[0]["data"]["summary"], json!(["think"]));
    }
}
