//! The JSON of each event kind, built here once so every store writes the same events.
//! Every event's data carries its `turn_id`; docs/api.md documents each shape.

use serde_json::{Value, json};

use crate::model::{EventKind, Message, MessageId, QueuedMessageId, Turn, TurnId, TurnStatus};

/// `turn_started`: the turn and the message that started it.
pub fn turn_started(turn: &Turn, input: &Message) -> Value {
    json!({"turn_id": turn.id, "turn": turn, "input": input})
}

/// `text_delta`: more text of a streamed message.
pub fn text_delta(turn: TurnId, message: MessageId, delta: &str) -> Value {
    json!({"turn_id": turn, "message_id": message, "delta": delta})
}

/// `message`: a complete stored message (a closed streamed one, or a whole one).
pub fn message(message: &Message) -> Value {
    json!({"turn_id": message.turn_id, "message": message})
}

/// `message_delivered`: a message steered into the running turn, taken by its runner
/// and now part of the turn's history.
pub fn message_delivered(queued: QueuedMessageId, message: &Message) -> Value {
    json!({"turn_id": message.turn_id, "queued_message_id": queued, "message": message})
}

/// The event that ends a turn: `final` (completed, with its output), `error` (failed,
/// with its error and whatever output it produced) or `cancelled`.
pub fn turn_ended(turn: &Turn, output: &[Message]) -> (EventKind, Value) {
    let kind = match turn.status {
        TurnStatus::Failed => EventKind::Error,
        TurnStatus::Cancelled => EventKind::Cancelled,
        TurnStatus::RequiresAction => EventKind::RequiresAction,
        TurnStatus::Completed | TurnStatus::Running => EventKind::Final,
    };
    let mut data =
        json!({"turn_id": turn.id, "turn": turn, "status": turn.status, "output": output});
    if let (Some(error), Some(object)) = (&turn.error, data.as_object_mut()) {
        object.insert("error".to_owned(), json!(error));
    }
    (kind, data)
}
