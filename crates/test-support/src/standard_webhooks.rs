//! Verifies webhook deliveries with the `standardwebhooks` package from PyPI — the
//! Standard Webhooks reference verifier, which nobody here wrote — run by the tests'
//! Python environment ([`crate::python`]).

use std::process::{Command, Stdio};

use crate::python::python;
use crate::receiver::Received;

const SCRIPT: &str = r#"
import json, sys
from standardwebhooks import Webhook
cases = json.load(sys.stdin)
for case in cases:
    payload = Webhook(case["secret"]).verify(case["body"], case["headers"])
    assert payload == json.loads(case["body"]), "verified payload differs"
print(len(cases))
"#;

/// Verifies each delivery's signature with `secret` using the reference verifier;
/// returns how many it verified, or its error (a wrong signature, a stale timestamp).
pub fn verify(secret: &str, deliveries: &[Received]) -> Result<usize, String> {
    let cases: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| {
            let headers: serde_json::Map<String, serde_json::Value> = d
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
                .collect();
            serde_json::json!({
                "secret": secret,
                "headers": headers,
                "body": String::from_utf8_lossy(&d.body),
            })
        })
        .collect();
    let mut child = Command::new(python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|err| err.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(serde_json::Value::Array(cases).to_string().as_bytes())
            .map_err(|err| err.to_string())?;
    }
    let output = child.wait_with_output().map_err(|err| err.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|_| "the verifier printed no count".to_owned())
}
