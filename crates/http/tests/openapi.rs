//! The OpenAPI document against the routes the server registers, and the docs page
//! through the real server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails loudly on the first surprise"
)]

mod common;

use std::collections::BTreeSet;

use baton_http::ErrorCode;
use baton_http::api::ROUTES;
use baton_test_support::tool_output;
use common::*;
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::Value;

fn document() -> Value {
    baton_http::openapi::api_doc().clone()
}

/// Every `(path, method)` the document describes.
fn described(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                found.insert((path.clone(), method.to_owned()));
            }
        }
    }
    found
}

#[test]
fn every_registered_route_is_described_and_nothing_else() {
    let doc = document();
    let mut registered: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|r| (r.path.to_owned(), r.method.to_owned()))
        .collect();
    assert_eq!(
        registered.len(),
        ROUTES.len(),
        "a route is registered twice"
    );
    // HEAD is answered wherever GET is.
    for route in ROUTES.iter().filter(|r| r.method == "get") {
        registered.insert((route.path.to_owned(), "head".to_owned()));
    }
    let described = described(&doc);
    let undocumented: Vec<_> = registered.difference(&described).collect();
    assert!(
        undocumented.is_empty(),
        "routes the OpenAPI document does not describe: {undocumented:?}"
    );
    let phantom: Vec<_> = described.difference(&registered).collect();
    assert!(
        phantom.is_empty(),
        "the document describes routes that do not exist: {phantom:?}"
    );
}

#[test]
fn every_operation_says_what_it_answers_and_every_error_it_can_give() {
    let doc = document();
    for route in ROUTES {
        let op = &doc["paths"][route.path][route.method];
        let name = format!("{} {}", route.method, route.path);
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{name}: no summary"
        );
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses
                .keys()
                .any(|s| s.starts_with('2') || s.starts_with('3')),
            "{name}: no success answer"
        );
        for code in route.error_codes() {
            let status = code.status().as_u16().to_string();
            let answer = &responses
                .get(&status)
                .unwrap_or_else(|| panic!("{name}: {status} for {} missing", code.as_str()));
            let content = &answer["content"]["application/json"];
            // A2A's HTTP+JSON binding answers its own errors beside the envelope.
            let envelope =
                match route.is_a2a_rest() && ["400", "404", "500"].contains(&status.as_str()) {
                    true => {
                        let any_of = &content["schema"]["anyOf"];
                        assert_eq!(
                            any_of[1]["$ref"], "#/components/schemas/A2aRestError",
                            "{name} {status}"
                        );
                        &any_of[0]
                    }
                    false => &content["schema"],
                };
            assert_eq!(
                envelope["$ref"], "#/components/schemas/ErrorEnvelope",
                "{name} {status}"
            );
            let example = &content["examples"][code.as_str()]["value"]["error"];
            assert_eq!(
                example["code"],
                code.as_str(),
                "{name}: no example of {code:?}"
            );
            if code.says_when_to_retry() {
                assert!(
                    answer["headers"]["Retry-After"].is_object(),
                    "{name} {status}"
                );
            }
        }
        // Authenticated routes name their scheme.
        if route.path.starts_with("/v1/") {
            let scheme = if route.path.starts_with("/v1/admin/") {
                "admin_token"
            } else if route.path.starts_with("/v1/agents/") {
                "agent_signature"
            } else {
                "agent_key"
            };
            assert!(op["security"][0][scheme].is_array(), "{name}: no {scheme}");
        }
    }
}

#[test]
fn the_error_code_table_is_the_documents() {
    let doc = document();
    let code = &doc["components"]["schemas"]["ErrorBody"]["properties"]["code"];
    assert!(
        code.get("enum").is_none(),
        "an open set: a client must accept codes added later"
    );
    let listed: Vec<&str> = code["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let table: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, table);
    // Every code but those of no particular route (a wrong method) is some route's.
    let answered: Vec<ErrorCode> = ROUTES.iter().flat_map(|r| r.error_codes()).collect();
    for code in ErrorCode::ALL {
        if *code != ErrorCode::MethodNotAllowed {
            assert!(answered.contains(code), "{code:?} is no route's answer");
        }
    }
}

/// Every `$ref` in the document points at a schema it has.
#[test]
fn every_reference_resolves() {
    fn walk(value: &Value, schemas: &serde_json::Map<String, Value>, seen: &mut usize) {
        match value {
            Value::Object(object) => {
                if let Some(Value::String(target)) = object.get("$ref") {
                    let name = target
                        .strip_prefix("#/components/schemas/")
                        .unwrap_or_else(|| panic!("unexpected reference {target}"));
                    assert!(schemas.contains_key(name), "dangling reference {target}");
                    *seen += 1;
                }
                object.values().for_each(|v| walk(v, schemas, seen));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, schemas, seen)),
            _ => {}
        }
    }
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut seen = 0;
    walk(&doc, schemas, &mut seen);
    assert!(seen > 50, "only {seen} references: is the document built?");
}

#[tokio::test]
async fn the_document_and_the_docs_page_are_served_without_network() {
    let app = TestApp::start().await;
    let (status, headers, body) =
        read(app.http.get(app.url("/openapi.json")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_eq!(body, document());
    // Its ETag lets a client that has it skip the download.
    let etag = headers["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "{etag}"
    );
    for (if_none_match, expected) in [
        (etag.clone(), StatusCode::NOT_MODIFIED),
        (format!("\"other\", W/{etag}"), StatusCode::NOT_MODIFIED),
        ("\"other\"".to_owned(), StatusCode::OK),
    ] {
        let response = app
            .http
            .get(app.url("/openapi.json"))
            .header("if-none-match", &if_none_match)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{if_none_match}");
        assert_eq!(response.headers()["etag"], etag.as_str());
        let bytes = response.bytes().await.unwrap();
        assert_eq!(bytes.is_empty(), expected == StatusCode::NOT_MODIFIED);
    }

    let no_redirects = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    for entry in ["/docs", "/docs/"] {
        let response = no_redirects.get(app.url(entry)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::PERMANENT_REDIRECT, "{entry}");
        assert_eq!(response.headers()["location"], "/docs/index.html");
        // The alias, outside the document, still names what it allows.
        let refused = no_redirects.post(app.url(entry)).send().await.unwrap();
        assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED, "{entry}");
        assert_eq!(refused.headers()["allow"], "GET, HEAD", "{entry}");
    }
    let page = app
        .http
        .get(app.url("/docs/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    // The page's script and its configuration come from this server, not a CDN.
    assert!(
        !html.contains("https://"),
        "the page loads something from the network"
    );
    let script = app
        .http
        .get(app.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(script.bytes().await.unwrap().len() > 100_000);
    let init = app
        .http
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("\"/openapi.json\""), "{init}");

    let (status, headers, body) = read(
        app.http
            .get(app.url("/docs/nothing-here.js"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_envelope(status, &headers, &body, StatusCode::NOT_FOUND, "not_found");
}

/// The document as a third-party validator reads it: `openapi-spec-validator` (PyPI,
/// pinned in `baton_test_support::python`), every error reported.
#[test]
fn the_document_is_valid_openapi_3_1_for_openapi_spec_validator() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&document()).unwrap()).unwrap();
    let mut validate = std::process::Command::new(
        baton_test_support::python::bin().join("openapi-spec-validator"),
    );
    validate
        .args(["--schema", "3.1", "--validation-errors", "all"])
        .arg(&path);
    tool_output(validate);
}

/// A listing refers to its item's schema, so a generated client has one type per
/// thing (the issue found `PageBodyTaskBodyDataItem` beside `TaskBody`).
#[test]
fn listings_refer_to_their_item_schema() {
    let doc = document();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut lists = 0;
    for (name, schema) in schemas {
        // A history page is a listing of messages with a field more.
        let Some(item) = name
            .strip_prefix("PageBody_")
            .or_else(|| name.strip_prefix("DataBody_"))
            .or_else(|| (name == "HistoryBody").then_some("Message"))
        else {
            continue;
        };
        lists += 1;
        assert_eq!(
            schema["properties"]["data"]["items"]["$ref"],
            format!("#/components/schemas/{item}"),
            "{name}"
        );
        assert!(schemas.contains_key(item), "{item} is a component");
    }
    assert!(lists >= 5, "the listings were found: {lists}");
}

/// An operation that needs no key says so (`security: [{}]`), and the document names
/// the server it is served by.
#[test]
fn every_operation_states_its_security_and_the_document_its_server() {
    let doc = document();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert!(
                operation["security"].is_array(),
                "{method} {path} states no security"
            );
        }
    }
    assert_eq!(
        doc["paths"]["/healthz"]["get"]["security"],
        serde_json::json!([{}])
    );
    assert_eq!(doc["servers"][0]["url"], "/");
}

/// Findings the linter may keep, each with its reason: `/docs` only redirects to the
/// docs page (its `308` is its answer; there is no `2XX` to describe).
const REDOCLY_IGNORED: &str = "openapi.json:
  operation-2xx-response:
    - '#/paths/~1docs/get/responses'
    - '#/paths/~1docs/head/responses'
";

/// The document as `@redocly/cli lint` (npm, pinned in `baton_test_support::node`)
/// reads it with its recommended rules: no error and no warning beyond those
/// [`REDOCLY_IGNORED`] justifies.
#[test]
fn the_document_passes_redocly_lint_without_errors_or_warnings() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("openapi.json"),
        serde_json::to_vec_pretty(&document()).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join(".redocly.lint-ignore.yaml"),
        REDOCLY_IGNORED,
    )
    .unwrap();
    let mut lint = std::process::Command::new(baton_test_support::node::bin().join("redocly"));
    lint.args(["lint", "--format", "stylish", "--max-problems", "1000"])
        .arg("openapi.json")
        .current_dir(dir.path())
        .env("REDOCLY_TELEMETRY", "off")
        .env("REDOCLY_SUPPRESS_UPDATE_NOTICE", "true");
    let report = tool_output(lint);
    assert!(
        !report.contains(" warning "),
        "redocly lint warns:\n{report}"
    );
}

/// Each content part is a named schema that carries its `type` tag, and `Content`
/// picks between them with a discriminator: what client generators need to name and
/// parse the parts (they dropped the create and append operations before).
#[test]
fn content_parts_are_named_schemas_picked_by_their_type() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let content = &schemas["Content"];
    assert_eq!(content["discriminator"]["propertyName"], "type");
    let mapping = content["discriminator"]["mapping"].as_object().unwrap();
    let tags: BTreeSet<&str> = mapping.keys().map(String::as_str).collect();
    assert_eq!(
        tags,
        BTreeSet::from(["text", "reasoning", "data", "tool_request", "tool_response"])
    );
    let variants = content["oneOf"].as_array().unwrap();
    assert_eq!(variants.len(), tags.len());
    for (tag, reference) in mapping {
        assert!(
            variants.contains(&serde_json::json!({"$ref": reference})),
            "{tag}"
        );
        let name = reference
            .as_str()
            .unwrap()
            .trim_start_matches("#/components/schemas/");
        let part = &schemas[name];
        assert_eq!(part["properties"]["type"]["enum"], serde_json::json!([tag]));
        assert_eq!(part["required"][0], "type", "{name}");
    }
}

/// Free-form objects take any property (`additionalProperties: true`): TypeScript's
/// generator made them `Record<string, never>`, which no caller's metadata fits.
#[test]
fn free_form_objects_take_any_property() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    for (schema, property) in [
        ("TaskBody", "metadata"),
        ("AcceptedBody", "metadata"),
        ("Turn", "metadata"),
        ("DataContent", "data"),
        ("ToolRequestContent", "arguments"),
        ("RunnerSpec", "config"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][property]["additionalProperties"], true,
            "{schema}.{property}"
        );
    }
}

/// A `HEAD` of `path` written on a connection of its own (`Connection: close`): every
/// byte the server sent until it closed.
async fn head_on_the_wire(app: &TestApp, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let address = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!(
        "HEAD {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.token
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut wire = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_end(&mut wire),
    )
    .await
    .unwrap_or_else(|_| panic!("HEAD {path}: the connection stayed open"))
    .unwrap();
    String::from_utf8(wire).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_answers_wherever_get_does_with_no_body() {
    let app = TestApp::start().await;
    let task = app.create_task(&app.token, app.agent, "heads up").await;
    app.settled(&app.token, task).await;
    for path in [
        "/healthz".to_owned(),
        "/openapi.json".to_owned(),
        "/v1/chat/tasks".to_owned(),
        format!("/v1/chat/tasks/{task}"),
        format!("/v1/chat/tasks/{task}/messages"),
        format!("/v1/chat/tasks/{task}/stream"),
        "/v1/chat/tasks/999999".to_owned(),
    ] {
        // A GET of the stream ends with the turn it replays.
        let until = if path.ends_with("/stream") {
            "?until=final"
        } else {
            ""
        };
        let get = app
            .http
            .get(app.url(&format!("{path}{until}")))
            .bearer_auth(&app.token)
            .send()
            .await
            .unwrap();
        let (get_status, get_type) = (get.status(), get.headers()["content-type"].clone());
        let head = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            app.http.head(app.url(&path)).bearer_auth(&app.token).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("HEAD {path} did not answer at once"))
        .unwrap();
        assert_eq!(head.status(), get_status, "{path}");
        assert_eq!(head.headers()["content-type"], get_type, "{path}");
        assert!(head.headers().contains_key("x-request-id"), "{path}");
        assert!(head.bytes().await.unwrap().is_empty(), "{path}");
        // An HTTP client never reads a body after a HEAD, so look at the wire: nothing
        // follows the head, and the answer ends (a stream is not held open).
        let wire = head_on_the_wire(&app, &path).await;
        let (_, after_head) = wire
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("HEAD {path}: no complete head in {wire:?}"));
        assert_eq!(after_head, "", "HEAD {path} sent a body");
    }
    // Not where there is no GET.
    let refused = app
        .http
        .head(app.url(&format!("/v1/chat/tasks/{task}/cancel")))
        .bearer_auth(&app.token)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(refused.headers()["allow"], "POST");
}

/// `bytes` gunzipped.
fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut plain).unwrap();
    plain
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_docs_assets_are_gzipped_for_clients_that_take_it_and_streams_never() {
    let app = TestApp::start().await;
    let fetch = |path: &str, encoding: Option<&str>| {
        let mut request = app.http.get(app.url(path)).bearer_auth(&app.token);
        if let Some(encoding) = encoding {
            request = request.header("accept-encoding", encoding);
        }
        request.send()
    };
    for path in [
        "/openapi.json",
        "/docs/swagger-ui-bundle.js",
        "/docs/index.html",
    ] {
        let plain = fetch(path, None).await.unwrap();
        assert!(plain.headers().get("content-encoding").is_none(), "{path}");
        assert_eq!(plain.headers()["vary"], "accept-encoding", "{path}");
        let plain = plain.bytes().await.unwrap();
        for encoding in ["gzip", "br, gzip;q=0.5", "*", "x-gzip"] {
            let packed = fetch(path, Some(encoding)).await.unwrap();
            assert_eq!(
                packed.headers()["content-encoding"],
                "gzip",
                "{path} {encoding}"
            );
            let packed = packed.bytes().await.unwrap();
            assert!(
                packed.len() * 2 < plain.len(),
                "{path}: {} of {}",
                packed.len(),
                plain.len()
            );
            assert_eq!(gunzip(&packed), plain, "{path}");
        }
        // Refused, or not offered: plain.
        for encoding in ["gzip;q=0", "br", "identity", "gzip;q=0, *"] {
            let response = fetch(path, Some(encoding)).await.unwrap();
            assert!(
                response.headers().get("content-encoding").is_none(),
                "{path} {encoding}"
            );
            assert_eq!(response.bytes().await.unwrap(), plain, "{path} {encoding}");
        }
    }
    // Each encoding has its own ETag, and either names the document.
    let plain = fetch("/openapi.json", None).await.unwrap();
    let packed = fetch("/openapi.json", Some("gzip")).await.unwrap();
    let (plain_tag, packed_tag) = (
        plain.headers()["etag"].clone(),
        packed.headers()["etag"].clone(),
    );
    assert_ne!(plain_tag, packed_tag);
    let again = app
        .http
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .header("if-none-match", packed_tag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], packed_tag);

    // A stream is never compressed: each event must leave as it is written.
    let task = app.create_task(&app.token, app.agent, "plain events").await;
    app.settled(&app.token, task).await;
    let stream = fetch(
        &format!("/v1/chat/tasks/{task}/stream?until=final"),
        Some("gzip"),
    )
    .await
    .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert!(stream.headers().get("content-encoding").is_none());
    assert!(
        String::from_utf8(stream.bytes().await.unwrap().to_vec())
            .unwrap()
            .contains("event: final")
    );
}

/// Every operation that takes an id in its path can be reached from an answer that
/// gives one (OpenAPI `links`), and every link names a real operation and exactly the
/// path parameters it takes.
#[test]
fn links_chain_every_operation_that_takes_an_id_to_an_answer_that_gives_one() {
    let doc = document();
    let mut operations = std::collections::BTreeMap::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(id) = op["operationId"].as_str() {
                operations.insert(id.to_owned(), (path.clone(), method.clone(), op.clone()));
            }
        }
    }
    // Every `{name}` of the path, a segment's whole or a part (`{task_id}:cancel`).
    let path_params = |path: &str| -> BTreeSet<String> {
        path.split('{')
            .skip(1)
            .filter_map(|part| part.split_once('}'))
            .map(|(name, _)| name.to_owned())
            .collect()
    };
    let mut reached = BTreeSet::new();
    for (path, method, op) in operations.values() {
        for (status, response) in op["responses"].as_object().unwrap() {
            let Some(links) = response["links"].as_object() else {
                continue;
            };
            assert_ne!(
                method, "head",
                "{path}: a HEAD answer has no body to link from"
            );
            for (name, link) in links {
                let target = link["operationId"].as_str().unwrap();
                let (target_path, _, _) = operations.get(target).unwrap_or_else(|| {
                    panic!("{method} {path} {status} links to no operation {target}")
                });
                let given: BTreeSet<String> = link["parameters"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .cloned()
                    .collect();
                assert_eq!(
                    given,
                    path_params(target_path),
                    "{method} {path} {status}: {name}"
                );
                for expression in link["parameters"].as_object().unwrap().values() {
                    let expression = expression.as_str().unwrap();
                    assert!(
                        expression.starts_with("$response.body#/")
                            || expression.starts_with("$request.path."),
                        "{expression}"
                    );
                }
                reached.insert(target.to_owned());
            }
        }
    }
    let unreached: Vec<&String> = operations
        .iter()
        .filter(|(id, (path, method, _))| {
            method != "head"
                && !path.starts_with("/docs")
                && !path.starts_with("/console")
                && !path_params(path).is_empty()
                && !reached.contains(*id)
        })
        .map(|(id, _)| id)
        .collect();
    assert!(unreached.is_empty(), "no link leads to {unreached:?}");
}
