//! Reading requests: the bearer key, the task id in the path, JSON bodies and page
//! queries, each refusal as an [`ApiError`]. Handlers call these in order —
//! authentication first — so an unauthenticated request is a 401 whatever its body.

use actix_web::http::header;
use actix_web::{HttpRequest, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use baton_domain::page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use std::time::Duration;

use baton_domain::service::MAX_WAIT;
use baton_domain::{PageRequest, Principal, TaskId, TaskStatus};
use futures_util::StreamExt;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::ApiState;
use crate::error::{ApiError, ErrorCode, FieldProblem};

/// The principal for the request's `Authorization: Bearer <key>` header.
pub async fn authenticate(state: &ApiState, req: &HttpRequest) -> Result<Principal, ApiError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::from(baton_domain::ServiceError::Unauthorized))?;
    admit(state, state.tasks.authenticate(token).await?)
}

/// An authenticated caller, within its key's request rate.
fn admit(state: &ApiState, who: Principal) -> Result<Principal, ApiError> {
    if let Some(rate) = &state.limits.per_key {
        rate.check(who.key_id)?;
    }
    Ok(who)
}

/// The principal for a stream of `task`: the bearer key if a header is sent, else the
/// stream token of `?token=` (see [`baton_domain::stream_tokens`]).
pub async fn authenticate_stream(
    state: &ApiState,
    req: &HttpRequest,
    task: TaskId,
) -> Result<Principal, ApiError> {
    #[derive(Deserialize)]
    struct TokenQuery {
        token: Option<String>,
    }
    if req.headers().contains_key(header::AUTHORIZATION) {
        return authenticate(state, req).await;
    }
    let token = web::Query::<TokenQuery>::from_query(req.query_string())
        .ok()
        .and_then(|query| query.into_inner().token)
        .ok_or_else(|| ApiError::from(baton_domain::ServiceError::Unauthorized))?;
    admit(state, state.tasks.authenticate_stream(&token, task).await?)
}

/// The `Idempotency-Key` header, if sent. Its form is checked with the body (so all
/// problems are reported at once); a value that is not text is refused here.
pub fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(value) => value.to_str().map(|key| Some(key.to_owned())).map_err(|_| {
            ApiError::invalid_field(
                "Idempotency-Key",
                "must be visible ASCII characters (a UUID is a good key)",
            )
        }),
    }
}

/// The `{task_id}` path segment. A segment that is not an id names no task: 404.
pub fn task_id(req: &HttpRequest) -> Result<TaskId, ApiError> {
    req.match_info()
        .get("task_id")
        .and_then(|raw| raw.parse::<i64>().ok())
        .filter(|id| *id > 0)
        .map(TaskId)
        .ok_or_else(ApiError::task_not_found)
}

/// Reads and parses a JSON body: `application/json` only, at most `limit` bytes, and
/// every refusal names what was wrong (the field path for a wrong value).
pub async fn json_body<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    state: &ApiState,
) -> Result<T, ApiError> {
    let body = json_bytes(req, payload, state).await?;
    parse_json_body(&body, state)
}

/// Parses a body read by [`json_bytes`] (see [`json_body`]).
pub fn parse_json_body<T: DeserializeOwned>(body: &[u8], state: &ApiState) -> Result<T, ApiError> {
    parse_json(body, state.limits.json_depth)
}

/// Reads a JSON body's bytes as they came (`application/json` only, within the
/// server's size and time limits), for a route that checks a signature over them.
pub async fn json_bytes(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &ApiState,
) -> Result<web::BytesMut, ApiError> {
    let limit = state.body_limit;
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            format!("Send the body as 'Content-Type: application/json' (got {content_type:?})."),
        ));
    }
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("The request body is larger than the limit of {limit} bytes."),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let timeout = state.limits.body_timeout;
    let read = async {
        let mut body = web::BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|err| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("Could not read the body: {err}"),
                )
            })?;
            if body.len() + chunk.len() > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let body = tokio::time::timeout(timeout, read).await.map_err(|_| {
        ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "The request body did not arrive within {} s.",
                timeout.as_secs_f64()
            ),
        )
    })??;
    Ok(body)
}

/// Parses in two steps so that any syntax error anywhere in the body is reported as
/// such (`malformed_json`) before any field is judged (`validation_failed`).
fn parse_json<T: DeserializeOwned>(body: &[u8], max_depth: usize) -> Result<T, ApiError> {
    let scan = crate::json_text::scan(body);
    if scan.depth > max_depth {
        return Err(ApiError::new(
            ErrorCode::JsonTooDeep,
            format!(
                "The body nests {} levels deep; at most {max_depth} are accepted.",
                scan.depth
            ),
        ));
    }
    // The depth is checked above, so the parser's own recursion limit (128, which
    // would answer a different error for the largest allowed depth) is not needed.
    let mut parser = serde_json::Deserializer::from_slice(body);
    parser.disable_recursion_limit();
    let value = serde_json::Value::deserialize(&mut parser)
        .and_then(|value| parser.end().map(|()| value))
        .map_err(|err| {
            ApiError::new(
                ErrorCode::MalformedJson,
                format!("The body is not valid JSON: {err}."),
            )
        })?;
    if !value.is_object() {
        return Err(ApiError::invalid_field("body", "must be a JSON object"));
    }
    if let Some(number) = scan.inexact_number {
        return Err(ApiError::invalid_field(
            "body",
            format!(
                "the number {number} cannot be kept exactly (integers must fit 64 bits, \
                 decimals the precision of a double); send it as a string"
            ),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let field = if path == "." { "body".to_owned() } else { path };
        ApiError::invalid(vec![FieldProblem {
            field,
            reason: err.into_inner().to_string(),
        }])
    })
}

/// The query string read into `T`; unreadable, a `400 bad_request`.
pub(crate) fn query<T: DeserializeOwned>(req: &HttpRequest) -> Result<T, ApiError> {
    web::Query::<T>::from_query(req.query_string())
        .map(web::Query::into_inner)
        .map_err(|err| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("Could not read the query string: {err}"),
            )
        })
}

/// `?limit=&cursor=` of a listing.
#[derive(Debug, Deserialize)]
pub struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// The page a listing's query asks for; a bad limit or cursor is a 422 naming it.
pub fn page(req: &HttpRequest) -> Result<PageRequest, ApiError> {
    let query = query::<PageQuery>(req)?;
    let limit = match query.limit.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "limit",
                    format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                )
            })?,
    };
    let after = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
            ApiError::invalid_field(
                "cursor",
                "is not a cursor this API returned (use next_cursor as given)",
            )
        })?),
    };
    Ok(PageRequest { limit, after })
}

#[derive(Debug, Deserialize)]
struct StatusQuery {
    status: Option<String>,
}

/// `?status=` of the task listing: one of the task statuses, or absent (all tasks).
pub fn status_filter(req: &HttpRequest) -> Result<Option<TaskStatus>, ApiError> {
    let query = query::<StatusQuery>(req)?;
    query
        .status
        .as_deref()
        .map(|raw| {
            raw.parse::<TaskStatus>().map_err(|_| {
                let known: Vec<&str> = TaskStatus::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::invalid_field("status", format!("must be one of {}", known.join(", ")))
            })
        })
        .transpose()
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait: Option<String>,
}

/// `?wait=N`: seconds a read may wait for the task to leave `running`. Absent is 0;
/// more than the cap waits the cap.
pub fn wait(req: &HttpRequest) -> Result<Duration, ApiError> {
    let query = query::<WaitQuery>(req)?;
    match query.wait.as_deref() {
        None | Some("false") => Ok(Duration::ZERO),
        // Seed 003's spelling: wait as long as a long-poll may.
        Some("true") => Ok(MAX_WAIT),
        // An int64, as the API's integers are: a number beyond one is refused, not
        // read as "very long".
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .and_then(|secs| u64::try_from(secs).ok())
            .map(|secs| Duration::from_secs(secs).min(MAX_WAIT))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "wait",
                    format!(
                        "must be a whole number of seconds (at most {} is waited), or true for that much",
                        MAX_WAIT.as_secs()
                    ),
                )
            }),
    }
}

/// Cursors are opaque to clients; today they wrap the last row's id.
pub fn encode_cursor(after: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{after}"))
}

pub(crate) fn decode_cursor(raw: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(raw).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    text.strip_prefix("v1:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        agent_id: i64,
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u8,
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        for bad in [&b"{"[..], b"", b"{\"agent_id\": 1,}", b"{} x"] {
            let err = parse_json::<Body>(bad, 32).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::MalformedJson,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn wrong_values_name_their_field() {
        let err = parse_json::<Body>(br#"{"agent_id": 1, "inner": {"n": 300}}"#, 32).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationFailed);
        assert_eq!(err.fields[0].field, "inner.n");
        let err = parse_json::<Body>(br#"{"inner": {"n": 1}}"#, 32).unwrap_err();
        assert_eq!(err.fields[0].field, "body");
        assert!(
            err.fields[0].reason.contains("agent_id"),
            "{:?}",
            err.fields
        );
        let err = parse_json::<Body>(br#"[1]"#, 32).unwrap_err();
        assert_eq!(err.code, ErrorCode::ValidationFailed);
    }

    #[test]
    fn bodies_nested_deeper_than_the_limit_are_refused_before_any_field() {
        let deep = format!(
            "{{\"agent_id\": 1, \"x\": {}1{}}}",
            "[".repeat(40),
            "]".repeat(40)
        );
        let err = parse_json::<Body>(deep.as_bytes(), 32).unwrap_err();
        assert_eq!(err.code, ErrorCode::JsonTooDeep);
        assert!(err.message.contains("at most 32"), "{}", err.message);
        let err = parse_json::<Body>(deep.as_bytes(), 64).unwrap_err();
        assert_eq!(
            err.code,
            ErrorCode::ValidationFailed,
            "within the limit, fields are judged"
        );
        // Deeper than the JSON parser's own recursion limit (128): the same code, for
        // the default limit and the largest one allowed.
        for nesting in [127, 128, 129, 200, 10_000] {
            let deep = format!(
                "{{\"agent_id\": 1, \"x\": {}1{}}}",
                "[".repeat(nesting),
                "]".repeat(nesting)
            );
            for limit in [32, 128] {
                let err = parse_json::<Body>(deep.as_bytes(), limit).unwrap_err();
                let expected = if nesting + 1 > limit {
                    ErrorCode::JsonTooDeep
                } else {
                    ErrorCode::ValidationFailed
                };
                assert_eq!(
                    err.code, expected,
                    "{nesting} deep, limit {limit}: {}",
                    err.message
                );
            }
        }
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        assert_eq!(decode_cursor("42"), None);
        assert_eq!(decode_cursor("!!"), None);
    }
}
