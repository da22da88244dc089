//! A baton task as an A2A task: its status from the latest turn, the latest turn's
//! agent output as an artifact, the history as A2A messages.

use baton_domain::a2a;
use baton_domain::{Message, Role, TaskView};
use serde_json::Value;

/// The task with `history` (its messages, oldest first; all of them, for the
/// artifact), showing the last `history_length` messages (all without it).
pub fn task_json(view: &TaskView, history: &[Message], history_length: Option<usize>) -> Value {
    let turn = &view.latest_turn;
    let output: Vec<&Message> = history
        .iter()
        .filter(|m| m.turn_id == turn.id && m.role == Role::Assistant)
        .collect();
    let shown = match history_length {
        Some(n) => &history[history.len().saturating_sub(n)..],
        None => history,
    };
    a2a::task_json(
        view.task.id,
        &view.task.metadata,
        turn,
        &output,
        shown,
        Some(view.queued),
    )
}
