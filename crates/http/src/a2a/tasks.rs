//! A baton task as an A2A task: its status from the latest turn, the latest turn's
//! agent output as an artifact, the history as A2A messages.

use baton_domain::{
    Content, Message, Role, TaskId, TaskStatus, TaskView, TurnError, TurnId, TurnStatus,
};
use serde_json::{Value, json};

use super::parts::{context_id, message_json, parts_json};

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

/// The task with `history` (its messages, oldest first; all of them, for the
/// artifact), showing the last `history_length` messages (all without it).
pub fn task_json(view: &TaskView, history: &[Message], history_length: Option<usize>) -> Value {
    let turn = &view.latest_turn;
    let output: Vec<&Message> = history
        .iter()
        .filter(|m| m.turn_id == turn.id && m.role == Role::Assistant)
        .collect();
    let status = status_json(
        view.task.id,
        turn.id,
        turn.status,
        turn.error.as_ref(),
        output.iter().map(|m| &m.content),
        json!(turn.ended_at.unwrap_or(turn.started_at)),
    );
    let parts: Vec<Value> = output
        .iter()
        .flat_map(|m| parts_json(view.task.id, &m.content))
        .collect();
    let artifacts: Vec<Value> = match parts.is_empty() {
        true => Vec::new(),
        false => vec![json!({
            "artifactId": artifact_id(turn.id.0),
            "name": format!("turn {}", turn.id),
            "parts": parts,
        })],
    };
    let shown = match history_length {
        Some(n) => &history[history.len().saturating_sub(n)..],
        None => history,
    };
    let mut metadata = view.task.metadata.clone();
    metadata.insert(
        "baton".to_owned(),
        json!({"turn_id": turn.id, "attempt": turn.attempt, "queued": view.queued}),
    );
    json!({
        "id": view.task.id.0.to_string(),
        "contextId": context_id(view.task.id),
        "status": status,
        "artifacts": artifacts,
        "history": shown.iter().map(message_json).collect::<Vec<_>>(),
        "metadata": metadata,
    })
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
