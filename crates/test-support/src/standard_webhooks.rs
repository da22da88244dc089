//! Verifies webhook deliveries with the `standardwebhooks` package from PyPI — the
//! Standard Webhooks reference verifier, which nobody here wrote — run by Python in a
//! virtual environment under `target/`. `.ci/run` prepares it; a test run without it
//! creates it (it needs PyPI, one of the registries these machines reach).

#![allow(
    clippy::expect_used,
    reason = "a test helper fails its test loudly on the first surprise"
)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::receiver::Received;

/// The pinned verifier.
pub const PACKAGE: &str = "standardwebhooks==1.1.0";

const SCRIPT: &str = r#"
import json, sys
from standardwebhooks import Webhook
cases = json.load(sys.stdin)
for case in cases:
    payload = Webhook(case["secret"]).verify(case["body"], case["headers"])
    assert payload == json.loads(case["body"]), "verified payload differs"
print(len(cases))
"#;

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/standardwebhooks-venv")
}

/// The venv's Python, created with the package on first use (also what runs the
/// example Python agent in the tests).
pub fn python() -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let dir = venv();
    let python = dir.join("bin/python");
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if !*ready {
        let has_package = Command::new(&python)
            .args(["-c", "import standardwebhooks"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_package {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .status()
                .expect("python3 is needed to verify webhooks with the reference verifier");
            assert!(made.success(), "python3 -m venv failed");
            let installed = Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet", PACKAGE])
                .status()
                .expect("pip runs");
            assert!(installed.success(), "pip install {PACKAGE} failed");
        }
        *ready = true;
    }
    python
}

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
