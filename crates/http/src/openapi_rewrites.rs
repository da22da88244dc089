//! Rewrites of the generated OpenAPI document that utoipa's attributes cannot express,
//! on its JSON form ([`on_json`]): utoipa's types do not read back every schema they
//! write, so the document cannot go back to them. They make the document what client
//! generators and linters expect (see the tests in `tests/openapi.rs`).

use serde_json::{Map, Value, json};

/// A listing's items by reference: utoipa writes `PageBody<TaskBody>` with a copy of
/// `TaskBody` inline, so a generated client gets a second, unrelated item type (and
/// `TaskBody` for a single task). Each `PageBody_X` / `DataBody_X` component whose `X`
/// is a component refers to it instead.
fn list_items_by_reference(json: &mut Value) {
    let Some(schemas) = json
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let lists: Vec<(String, String)> = schemas
        .keys()
        .filter_map(|name| {
            let item = name
                .strip_prefix("PageBody_")
                .or_else(|| name.strip_prefix("DataBody_"))?;
            schemas
                .contains_key(item)
                .then(|| (name.clone(), item.to_owned()))
        })
        .collect();
    for (list, item) in lists {
        if let Some(data) = schemas[&list].pointer_mut("/properties/data") {
            *data =
                json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{item}")}});
        }
    }
}

/// A message's content parts as named schemas, discriminated by `type`. utoipa writes
/// the internally tagged `Content` enum as a `oneOf` of inline `allOf`s (a part's
/// schema and its tag), which generators cannot name and cannot pick between. Each
/// part's component gets its `type` property instead, and `Content` becomes a `oneOf`
/// of references with a `discriminator` mapping each tag. The parts' schemas do not say
/// `additionalProperties: false` (the server's `deny_unknown_fields`; it names an
/// unknown field in a 422): with it, schemathesis' coverage phase crashed on this union
/// (a `SystemError` of CPython 3.11's parser, deep in Hypothesis), so CI could not fuzz.
fn tag_content_parts(json: &mut Value) {
    let Some(schemas) = json
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let Some(variants) = schemas
        .get("Content")
        .and_then(|content| content["oneOf"].as_array())
        .cloned()
    else {
        return;
    };
    let mut parts = Vec::new();
    let mut mapping = Map::new();
    for variant in variants {
        let (Some(reference), Some(tag)) = (
            variant.pointer("/allOf/0/$ref").and_then(Value::as_str),
            variant
                .pointer("/allOf/1/properties/type/enum/0")
                .and_then(Value::as_str),
        ) else {
            // Not the shape this rewrite knows: leave the document as generated.
            return;
        };
        parts.push((reference.to_owned(), tag.to_owned()));
    }
    for (reference, tag) in &parts {
        let name = reference.trim_start_matches("#/components/schemas/");
        let Some(part) = schemas.get_mut(name).and_then(Value::as_object_mut) else {
            return;
        };
        if let Some(properties) = part.get_mut("properties").and_then(Value::as_object_mut) {
            properties.insert("type".into(), json!({"type": "string", "enum": [tag]}));
        }
        part.remove("additionalProperties");
        let required = part.entry("required").or_insert_with(|| json!([]));
        if let Some(required) = required.as_array_mut() {
            required.insert(0, json!("type"));
        }
        mapping.insert(tag.clone(), json!(reference));
    }
    if let Some(content) = schemas.get_mut("Content").and_then(Value::as_object_mut) {
        let one_of = parts
            .iter()
            .map(|(reference, _)| json!({"$ref": reference}))
            .collect();
        content.insert("oneOf".into(), Value::Array(one_of));
        content.insert(
            "discriminator".into(),
            json!({"propertyName": "type", "mapping": mapping}),
        );
    }
}

/// Free-form objects (`metadata`, a `data` part, a tool call's `arguments`, a runner's
/// `config`) say so with `additionalProperties: true`: a bare `type: object` reads to
/// some generators as an object with no properties at all (TypeScript's
/// `Record<string, never>`), which no caller's value fits.
fn mark_free_form(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let is_object = match object.get("type") {
                Some(Value::String(kind)) => kind == "object",
                Some(Value::Array(kinds)) => kinds.iter().any(|kind| kind == "object"),
                _ => false,
            };
            let shaped = [
                "properties",
                "additionalProperties",
                "$ref",
                "oneOf",
                "allOf",
                "anyOf",
            ]
            .iter()
            .any(|key| object.contains_key(*key));
            if is_object && !shaped {
                object.insert("additionalProperties".into(), Value::Bool(true));
            }
            // Examples are values, not schemas.
            for (key, inner) in object.iter_mut() {
                if key != "example" && key != "examples" {
                    mark_free_form(inner);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mark_free_form),
        _ => {}
    }
}

/// `HEAD` beside every `GET` (the server answers both, [`crate::api`]): the same
/// operation, its answers without bodies. Described so that clients and fuzzers know
/// it exists rather than expecting a 405.
fn head_beside_get(json: &mut Value) {
    let Some(paths) = json.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(mut head) = item.get("get").cloned() else {
            continue;
        };
        if let Some(id) = head.get("operationId").and_then(Value::as_str) {
            head["operationId"] = json!(format!("{id}_head"));
        }
        if let Some(summary) = head.get("summary").and_then(Value::as_str) {
            head["summary"] = json!(format!("{summary} (headers only)"));
        }
        head["description"] = json!(
            "As `GET` on this path, answering its status and headers without a body (an event stream is checked, not opened)."
        );
        if let Some(responses) = head.get_mut("responses").and_then(Value::as_object_mut) {
            for response in responses.values_mut() {
                if let Some(response) = response.as_object_mut() {
                    // No body: nothing to take ids from either.
                    response.remove("content");
                    response.remove("links");
                }
            }
        }
        item["head"] = head;
    }
}

/// The links of one answer (path, method, status): each operation it leads to, with
/// the expressions of that operation's parameters.
struct AnswerLinks(
    &'static str,
    &'static str,
    &'static str,
    Vec<(&'static str, Value)>,
);

/// How operations chain, as OpenAPI `links`: which answer gives the ids another
/// operation takes. Readers learn the workflow from them, and schemathesis' stateful
/// phase follows them to exercise each operation on objects that exist.
fn link_operations(json: &mut Value) {
    let task_ops = [
        "get_task",
        "append_message",
        "list_messages",
        "stream",
        "stream_token",
        "cancel",
        "list_deliveries",
        "list_queue",
    ];
    let from_body = |pointer: &str| format!("$response.body#/{pointer}");
    let task_links = |task_id: String| -> Vec<(&str, Value)> {
        task_ops
            .iter()
            .map(|op| (*op, json!({"task_id": task_id})))
            .collect()
    };
    let chains: Vec<AnswerLinks> = vec![
        AnswerLinks(
            "/v1/chat/tasks",
            "post",
            "202",
            task_links(from_body("task_id")),
        ),
        AnswerLinks(
            "/v1/chat/tasks/{task_id}/messages",
            "post",
            "202",
            task_links(from_body("task_id"))
                .into_iter()
                .chain(["get_queued", "cancel_queued"].map(|op| {
                    (
                        op,
                        json!({
                            "task_id": from_body("task_id"),
                            "queued_message_id": from_body("queued_message_id"),
                        }),
                    )
                }))
                .collect(),
        ),
        AnswerLinks(
            "/v1/chat/agent",
            "get",
            "200",
            [
                "a2a_agent_card",
                "a2a_json_rpc",
                "a2a_send_message",
                "a2a_send_streaming_message",
                "a2a_list_tasks",
            ]
            .iter()
            .map(|op| (*op, json!({"agent_id": from_body("agent_id")})))
            .collect(),
        ),
        AnswerLinks(
            "/a2a/{agent_id}/message:send",
            "post",
            "200",
            [
                "a2a_get_task",
                "a2a_cancel_task",
                "a2a_subscribe_to_task",
                "a2a_subscribe_to_task_get",
                "a2a_create_push_config",
                "a2a_list_push_configs",
            ]
            .iter()
            .map(|op| {
                let task = json!({
                    "agent_id": "$request.path.agent_id",
                    "task_id": from_body("task/id"),
                });
                (*op, task)
            })
            .collect(),
        ),
        AnswerLinks(
            "/a2a/{agent_id}/tasks/{task_id}/pushNotificationConfigs",
            "post",
            "200",
            ["a2a_get_push_config", "a2a_delete_push_config"]
                .iter()
                .map(|op| {
                    let config = json!({
                        "agent_id": "$request.path.agent_id",
                        "task_id": "$request.path.task_id",
                        "config_id": from_body("id"),
                    });
                    (*op, config)
                })
                .collect(),
        ),
        AnswerLinks(
            "/v1/chat/tasks/{task_id}",
            "get",
            "200",
            vec![(
                "turn_inbox",
                json!({
                    "agent_id": from_body("agent_id"),
                    "task_id": from_body("task_id"),
                    "turn_id": from_body("latest_turn/id"),
                }),
            )],
        ),
        AnswerLinks(
            "/v1/chat/tasks/{task_id}/messages",
            "get",
            "200",
            vec![(
                "get_file",
                json!({
                    "task_id": "$request.path.task_id",
                    "file_id": from_body("data/0/content/attachments/0/file_id"),
                }),
            )],
        ),
        AnswerLinks(
            "/v1/chat/tasks/{task_id}/webhook-deliveries",
            "get",
            "200",
            vec![(
                "redeliver",
                json!({"delivery_id": from_body("data/0/delivery_id")}),
            )],
        ),
        AnswerLinks(
            "/v1/admin/agents",
            "post",
            "201",
            ["get_agent", "update_agent", "create_key", "list_keys"]
                .iter()
                .map(|op| (*op, json!({"agent_id": from_body("agent_id")})))
                .collect(),
        ),
        AnswerLinks(
            "/v1/admin/agents/{agent_id}/keys",
            "post",
            "201",
            vec![("revoke_key", json!({"prefix": from_body("prefix")}))],
        ),
    ];
    for AnswerLinks(path, method, status, links) in chains {
        let Some(response) = json.pointer_mut(&format!(
            "/paths/{}/{method}/responses/{status}",
            path.replace('~', "~0").replace('/', "~1")
        )) else {
            continue;
        };
        let links: Map<String, Value> = links
            .into_iter()
            .map(|(op, parameters)| {
                (
                    op.to_owned(),
                    json!({"operationId": op, "parameters": parameters}),
                )
            })
            .collect();
        response["links"] = Value::Object(links);
    }
}

/// The rewrites of the document's JSON form.
pub(crate) fn on_json(json: &mut Value) {
    link_operations(json);
    head_beside_get(json);
    list_items_by_reference(json);
    tag_content_parts(json);
    mark_free_form(json);
}
