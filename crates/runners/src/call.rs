//! What the runners that call out share: how a failed call is classified into the
//! turn's error code, and the bounded retries of calls that produced nothing yet.

use std::future::Future;
use std::time::Duration;

use baton_domain::RunnerError;
use futures_util::StreamExt;
use serde_json::{Map, Value};

/// The longest `Retry-After` honoured before giving up.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
/// The first pause between attempts when the server names none; doubled each time.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How much of an error answer is read for its message.
const ERROR_BODY_LIMIT: usize = 4096;
/// The most retries a configuration may ask for.
pub const MAX_RETRIES: u32 = 5;

/// Who is called: names the error codes (`model_timeout`, `agent_timeout`) and the
/// messages ("the model endpoint …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub code_prefix: &'static str,
    pub name: &'static str,
}

/// Why a call failed, and whether trying again may help.
#[derive(Debug)]
pub struct Failure {
    pub code: String,
    pub message: String,
    retryable: bool,
    /// What the server asked for (`Retry-After`).
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(peer: Peer, what: &str, message: String, retryable: bool) -> Self {
        Failure {
            code: format!("{}_{what}", peer.code_prefix),
            message,
            retryable,
            retry_after: None,
        }
    }

    pub fn timeout(peer: Peer, timeout_ms: u64) -> Self {
        let message = format!(
            "{} sent nothing for {timeout_ms} ms (request_timeout_ms)",
            peer.name
        );
        Failure::new(peer, "timeout", message, true)
    }

    pub fn unreachable(peer: Peer, err: &reqwest::Error) -> Self {
        let message = format!("could not reach {}: {err}", peer.name);
        Failure::new(peer, "unavailable", message, true)
    }

    pub fn bad_response(peer: Peer, why: impl std::fmt::Display) -> Self {
        let message = format!("{}'s answer does not follow the protocol: {why}", peer.name);
        Failure::new(peer, "bad_response", message, false)
    }

    /// An error the peer reported itself (in its stream).
    pub fn reported(peer: Peer, code: Option<&str>, message: &str) -> Self {
        let mut failure = Failure::new(
            peer,
            "error",
            format!("{} reported an error: {message}", peer.name),
            false,
        );
        if let Some(code) = code.filter(|c| is_code(c)) {
            failure.code = code.to_owned();
        }
        failure
    }

    pub fn closed() -> Self {
        Failure {
            code: "turn_closed".to_owned(),
            message: "the turn no longer accepts output".to_owned(),
            retryable: false,
            retry_after: None,
        }
    }

    /// A non-2xx answer: its class, its `Retry-After`, and the message in its body.
    pub async fn from_status(peer: Peer, response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let detail = error_detail(response).await;
        let (what, retryable) = match status {
            401 | 403 => ("unauthorized", false),
            429 => ("rate_limited", true),
            500..=599 => ("unavailable", true),
            _ => ("request_refused", false),
        };
        let message = format!("{} answered {status}: {detail}", peer.name);
        Failure {
            retry_after,
            ..Failure::new(peer, what, message, retryable)
        }
    }

    /// How long to wait before attempt `attempt + 1`, if trying again may help.
    pub fn retry_in(&self, attempt: u32) -> Option<Duration> {
        if !self.retryable {
            return None;
        }
        match self.retry_after {
            Some(asked) if asked > MAX_RETRY_AFTER => None,
            Some(asked) => Some(asked),
            None => Some(FIRST_BACKOFF * 2u32.saturating_pow(attempt)),
        }
    }

    fn into_error(self, retries: u32) -> RunnerError {
        let message = if retries > 0 {
            format!("{} (after {retries} retries)", self.message)
        } else {
            self.message
        };
        RunnerError::new(self.code, message)
    }
}

/// A code a peer may give its own error: snake_case, short.
fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Calls `attempt` until it succeeds, up to `max_retries` more times for failures
/// that may pass — but only while nothing reached the client: `attempt` answers the
/// failure and whether it had streamed output.
pub async fn with_retries<F, Fut>(max_retries: u32, mut attempt: F) -> Result<(), RunnerError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), (Failure, bool)>>,
{
    let mut retries = 0;
    loop {
        let (failure, streamed) = match attempt().await {
            Ok(()) => return Ok(()),
            Err(failed) => failed,
        };
        match failure.retry_in(retries).filter(|_| !streamed) {
            Some(pause) if retries < max_retries => {
                retries += 1;
                tracing::info!(retries, code = %failure.code, "retrying the call");
                tokio::time::sleep(pause).await;
            }
            _ => return Err(failure.into_error(retries)),
        }
    }
}

/// The message of an error answer: `{"error": {"message"}}` (or `{"error": "…"}`),
/// else its text, cut short.
async fn error_detail(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(chunk)) = stream.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= ERROR_BODY_LIMIT {
            body.truncate(ERROR_BODY_LIMIT);
            break;
        }
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    match serde_json::from_str::<Map<String, Value>>(&text) {
        Ok(object) => match object.get("error") {
            Some(Value::String(message)) => message.clone(),
            Some(error) => error
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| error.to_string(), str::to_owned),
            None => text,
        },
        Err(_) if text.trim().is_empty() => "no message".to_owned(),
        Err(_) => text,
    }
}

/// Checks the parts of a configuration both runners have.
pub fn check_common(url: &str, timeout_ms: u64, max_retries: u32) -> Result<(), String> {
    let parsed = url::Url::parse(url).map_err(|err| format!("not a URL ({url}): {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{url} must be http:// or https://"));
    }
    if !(100..=600_000).contains(&timeout_ms) {
        return Err("request_timeout_ms must be from 100 to 600000".to_owned());
    }
    if max_retries > MAX_RETRIES {
        return Err(format!("max_retries must be at most {MAX_RETRIES}"));
    }
    Ok(())
}

/// Checks the name of an environment variable a configuration points at.
pub fn check_env_name(field: &str, name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{field} must name an environment variable (A-Z, 0-9 and _)"
        ))
    }
}

/// The value of the environment variable `name`, read at each turn.
pub fn env_secret(peer: Peer, field: &str, name: &str) -> Result<String, RunnerError> {
    std::env::var(name).map_err(|_| {
        RunnerError::new(
            format!("{}_{}_missing", peer.code_prefix, field_code(field)),
            format!("the environment variable {name} ({field}) is not set on this server"),
        )
    })
}

fn field_code(field: &str) -> &str {
    field.strip_suffix("_env").unwrap_or(field)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: Peer = Peer {
        code_prefix: "model",
        name: "the model endpoint",
    };

    #[test]
    fn retries_back_off_or_follow_retry_after_within_reason() {
        let failure = |retryable, retry_after| Failure {
            retryable,
            retry_after,
            ..Failure::new(PEER, "x", String::new(), false)
        };
        assert_eq!(failure(true, None).retry_in(0), Some(FIRST_BACKOFF));
        assert_eq!(failure(true, None).retry_in(2), Some(FIRST_BACKOFF * 4));
        let asked = Duration::from_secs(3);
        assert_eq!(failure(true, Some(asked)).retry_in(0), Some(asked));
        assert_eq!(
            failure(true, Some(Duration::from_secs(3600))).retry_in(0),
            None
        );
        assert_eq!(failure(false, None).retry_in(0), None);
    }

    #[test]
    fn a_peer_may_name_its_own_error_code_if_it_is_one() {
        assert_eq!(
            Failure::reported(PEER, Some("quota_exceeded"), "m").code,
            "quota_exceeded"
        );
        assert_eq!(
            Failure::reported(PEER, Some("Bad Code!"), "m").code,
            "model_error"
        );
        assert_eq!(Failure::reported(PEER, None, "m").code, "model_error");
    }
}
