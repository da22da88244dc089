//! Tool round trips. An agent's turn that ends with `tool_request` messages leaves its
//! task `requires_action`: the client runs the tools and appends one `tool` message
//! per call, each a `tool_response` naming its `tool_call_id`. The answer to the last
//! unanswered call starts the next turn, which sees every answer; an earlier answer is
//! stored with the waiting turn. The stores gather what a turn asked and what was
//! answered; the decision is made here, once for every store.

use crate::content::Content;
use crate::error::FieldError;
use crate::model::{NewMessage, Role};

/// What an accepted tool answer does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Other calls still wait: the answer is stored with the waiting turn.
    Partial,
    /// The last unanswered call: the answer starts the next turn.
    Last,
}

/// Whether `message` is an answer the waiting turn accepts: a `tool` message with a
/// `tool_response` to one of the calls it `requested` that is not `answered` yet.
pub fn check_answer(
    requested: &[String],
    answered: &[String],
    message: &NewMessage,
) -> Result<Answer, Vec<FieldError>> {
    let waiting: Vec<&String> = requested
        .iter()
        .filter(|id| !answered.contains(id))
        .collect();
    let listed = waiting
        .iter()
        .map(|id| id.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let Content::ToolResponse(response) = &message.content else {
        return Err(vec![FieldError::new(
            "message.content.type",
            format!(
                "the task waits for tool answers (calls {listed}): send role \"tool\" with a tool_response"
            ),
        )]);
    };
    if message.role != Role::Tool {
        return Err(vec![FieldError::new(
            "message.role",
            "a tool_response is sent with role \"tool\"",
        )]);
    }
    let id = &response.tool_call_id;
    if answered.contains(id) {
        return Err(vec![FieldError::new(
            "message.content.tool_call_id",
            format!("call {id} is answered already; waiting for: {listed}"),
        )]);
    }
    if !waiting.contains(&id) {
        return Err(vec![FieldError::new(
            "message.content.tool_call_id",
            format!("no call {id} waits for an answer; waiting for: {listed}"),
        )]);
    }
    Ok(if waiting.len() == 1 {
        Answer::Last
    } else {
        Answer::Partial
    })
}

/// A task that waits for no tool answers refuses one.
pub fn check_not_an_answer(message: &NewMessage) -> Result<(), Vec<FieldError>> {
    if message.role == Role::Tool || matches!(message.content, Content::ToolResponse(_)) {
        return Err(vec![FieldError::new(
            "message.content",
            "no tool call of this task waits for an answer",
        )]);
    }
    Ok(())
}

/// The `tool_call_id`s of tool requests among `contents`.
pub fn requested_calls<'a>(contents: impl IntoIterator<Item = &'a Content>) -> Vec<String> {
    contents
        .into_iter()
        .filter_map(|c| match c {
            Content::ToolRequest(call) => Some(call.tool_call_id.clone()),
            _ => None,
        })
        .collect()
}

/// The `tool_call_id`s answered among `contents`.
pub fn answered_calls<'a>(contents: impl IntoIterator<Item = &'a Content>) -> Vec<String> {
    contents
        .into_iter()
        .filter_map(|c| match c {
            Content::ToolResponse(answer) => Some(answer.tool_call_id.clone()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::content::ToolResponseContent;
    use serde_json::json;

    fn answer(id: &str) -> NewMessage {
        NewMessage {
            role: Role::Tool,
            content: Content::ToolResponse(ToolResponseContent {
                tool_call_id: id.into(),
                name: "weather".into(),
                content: json!({"c": 4}),
                is_error: None,
            }),
            metadata: Default::default(),
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_last_unanswered_call_starts_the_next_turn() {
        let asked = ids(&["a", "b"]);
        assert_eq!(check_answer(&asked, &[], &answer("a")), Ok(Answer::Partial));
        assert_eq!(
            check_answer(&asked, &ids(&["a"]), &answer("b")),
            Ok(Answer::Last)
        );
    }

    #[test]
    fn anything_but_an_answer_to_a_waiting_call_is_refused_naming_the_calls() {
        let asked = ids(&["a", "b"]);
        let err = check_answer(&asked, &ids(&["a"]), &answer("a")).unwrap_err();
        assert!(err[0].reason.contains("answered already"), "{err:?}");
        let err = check_answer(&asked, &[], &answer("zzz")).unwrap_err();
        assert!(err[0].reason.contains("waiting for: a, b"), "{err:?}");
        let text = NewMessage {
            role: Role::User,
            content: Content::text("done?"),
            metadata: Default::default(),
        };
        let err = check_answer(&asked, &[], &text).unwrap_err();
        assert_eq!(err[0].field, "message.content.type");
        let mut wrong_role = answer("a");
        wrong_role.role = Role::User;
        assert_eq!(
            check_answer(&asked, &[], &wrong_role).unwrap_err()[0].field,
            "message.role"
        );
        assert!(check_not_an_answer(&answer("a")).is_err());
        assert!(check_not_an_answer(&text).is_ok());
    }
}
