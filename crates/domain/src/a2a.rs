//! The Agent2Agent (A2A 1.0) form of baton's tasks and messages, as the HTTP binding
//! answers them and as push notifications carry them (A2A's JSON form of its protobuf
//! types: camelCase fields, enum values by name). An A2A task is a baton task, and
//! its context is the task itself.

use serde_json::{Value, json};

use crate::content::Content;
use crate::error::FieldError;
/// An agent's card config lives with the agent (`model`); it is named here too, where
/// the rest of A2A is.
pub use crate::model::{CardConfig, Skill};
use crate::model::{
    Message, Metadata, Role, TaskId, TaskStatus, Turn, TurnError, TurnId, TurnStatus,
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

/// The parts of a baton content: text (attachments as `url` parts: to their stored
/// file, or the URL they were sent by), data, and the kinds A2A has no part for as
/// data parts marked `baton_type`.
pub fn parts_json(task: TaskId, content: &Content) -> Vec<Value> {
    let marked = |kind: &str, data: Value| json!({"data": data, "metadata": {KIND_KEY: kind}});
    match content {
        Content::Text(text) => {
            let mut parts = vec![json!({"text": text.content})];
            parts.extend(text.attachments.iter().map(|a| {
                let stored = a
                    .file_id
                    .map(|id| format!("/v1/chat/tasks/{}/files/{id}", task.0));
                let url = a.url.clone().or(stored).unwrap_or_default();
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

const MAX_SKILLS: usize = 32;
const MAX_LIST: usize = 16;

/// Checks a card's config, naming fields under `card.`.
pub fn check_card(card: &CardConfig, errors: &mut Vec<FieldError>) {
    let mut bounded = |field: String, text: &str, min: usize, max: usize| {
        let chars = text.chars().count();
        if chars < min || chars > max {
            errors.push(FieldError::new(
                field,
                format!("must be {min} to {max} characters"),
            ));
        }
    };
    if let Some(description) = &card.description {
        bounded("card.description".into(), description, 1, 2000);
    }
    for (n, skill) in card.skills.iter().enumerate() {
        let at = format!("card.skills[{n}]");
        bounded(format!("{at}.id"), &skill.id, 1, 64);
        bounded(format!("{at}.name"), skill.name.trim(), 1, 200);
        bounded(
            format!("{at}.description"),
            skill.description.trim(),
            1,
            2000,
        );
        for (t, tag) in skill.tags.iter().enumerate() {
            bounded(format!("{at}.tags[{t}]"), tag, 1, 64);
        }
        for (e, example) in skill.examples.iter().enumerate() {
            bounded(format!("{at}.examples[{e}]"), example, 1, 1000);
        }
    }
    let id_chars = |id: &str| {
        id.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    };
    for (n, skill) in card.skills.iter().enumerate() {
        if !id_chars(&skill.id) {
            errors.push(FieldError::new(
                format!("card.skills[{n}].id"),
                "must be letters, digits, '_', '.' or '-'",
            ));
        }
        if card.skills[..n].iter().any(|s| s.id == skill.id) {
            errors.push(FieldError::new(
                format!("card.skills[{n}].id"),
                "is the id of an earlier skill",
            ));
        }
        if skill.tags.len() > MAX_LIST || skill.examples.len() > MAX_LIST {
            errors.push(FieldError::new(
                format!("card.skills[{n}]"),
                format!("must have at most {MAX_LIST} tags and {MAX_LIST} examples"),
            ));
        }
    }
    if card.skills.len() > MAX_SKILLS {
        errors.push(FieldError::new(
            "card.skills",
            format!("must be at most {MAX_SKILLS}"),
        ));
    }
}

/// The card's description and skills for an agent named `name` whose turns `runner`
/// plays, as its config says (or the defaults).
pub fn card_parts(name: &str, runner: &str, card: Option<&CardConfig>) -> (String, Vec<Value>) {
    let description = card
        .and_then(|c| c.description.clone())
        .unwrap_or_else(|| format!("The baton agent {name:?} ({runner} runner)."));
    let skills: Vec<Value> = match card.map(|c| c.skills.as_slice()).unwrap_or_default() {
        [] => vec![json!({
            "id": "conversation",
            "name": name,
            "description": "Answers messages, one turn at a time, in a task that keeps the conversation.",
            "tags": ["conversation"],
        })],
        skills => skills
            .iter()
            .map(|skill| {
                let mut json = json!({
                    "id": skill.id,
                    "name": skill.name,
                    "description": skill.description,
                    "tags": skill.tags,
                });
                if !skill.examples.is_empty() {
                    json["examples"] = json!(skill.examples);
                }
                json
            })
            .collect(),
    };
    (description, skills)
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
                url: None,
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

#[cfg(test)]
mod card_tests {
    use super::*;

    fn skill(id: &str) -> Skill {
        Skill {
            id: id.to_owned(),
            name: "Lookup".to_owned(),
            description: "Looks things up.".to_owned(),
            tags: vec!["search".to_owned()],
            examples: Vec::new(),
        }
    }

    fn refused(card: &CardConfig) -> Vec<String> {
        let mut errors = Vec::new();
        check_card(card, &mut errors);
        errors.into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_cards_skills_are_the_configs_or_one_conversation() {
        let (description, skills) = card_parts("bot", "echo", None);
        assert_eq!(description, "The baton agent \"bot\" (echo runner).");
        assert_eq!(skills.len(), 1);
        assert_eq!(skills[0]["id"], "conversation");
        let card = CardConfig {
            description: Some("Finds answers.".to_owned()),
            skills: vec![skill("lookup"), skill("summarize")],
        };
        assert!(refused(&card).is_empty());
        let (description, skills) = card_parts("bot", "echo", Some(&card));
        assert_eq!(description, "Finds answers.");
        let ids: Vec<&Value> = skills.iter().map(|s| &s["id"]).collect();
        assert_eq!(ids, [&json!("lookup"), &json!("summarize")]);
        assert_eq!(skills[0]["tags"], json!(["search"]));
    }

    #[test]
    fn a_card_with_bad_or_repeated_skills_is_refused_by_field() {
        let card = CardConfig {
            description: Some(String::new()),
            skills: vec![skill("a b"), skill("x"), skill("x")],
        };
        assert_eq!(
            refused(&card),
            vec!["card.description", "card.skills[0].id", "card.skills[2].id"]
        );
    }
}
