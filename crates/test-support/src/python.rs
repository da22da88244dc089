//! Third-party Python tools the tests run, pinned, in one virtual environment under
//! `target/` that the first test needing it creates (it needs PyPI, one of the
//! registries these machines reach); `.ci/run` prepares it in a step of its own.

#![allow(
    clippy::expect_used,
    reason = "a test helper fails its test loudly on the first surprise"
)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Each pinned package, and the module that shows it is installed.
pub const PACKAGES: &[(&str, &str)] = &[
    // The Standard Webhooks reference verifier.
    ("standardwebhooks==1.1.0", "standardwebhooks"),
    // The OpenAPI validator the document must satisfy.
    ("openapi-spec-validator==0.9.0", "openapi_spec_validator"),
    // A client generator users run on the document (its clients need httpx and attrs,
    // which it brings).
    ("openapi-python-client==0.29.1", "openapi_python_client"),
    // The SSE client docs/api.md shows for following a stream from Python.
    ("httpx-sse==0.4.3", "httpx_sse"),
    // The Agent2Agent SDK whose client holds a conversation with baton's A2A binding.
    ("a2a-sdk==1.3.0", "a2a.client"),
];

fn venv() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv")
}

/// The environment's `bin/` directory, with every package of [`PACKAGES`] installed.
pub fn bin() -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let dir = venv();
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if !*ready {
        let imports = PACKAGES
            .iter()
            .map(|(_, module)| format!("import {module}"))
            .collect::<Vec<_>>()
            .join("; ");
        let has_packages = Command::new(dir.join("bin/python"))
            .args(["-c", &imports])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_packages {
            let made = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&dir)
                .status()
                .expect("python3 is needed for the third-party tools the tests run");
            assert!(made.success(), "python3 -m venv failed");
            let installed = Command::new(dir.join("bin/pip"))
                .args(["install", "--quiet"])
                .args(PACKAGES.iter().map(|(package, _)| package))
                .status()
                .expect("pip runs");
            assert!(installed.success(), "pip install {PACKAGES:?} failed");
        }
        *ready = true;
    }
    dir.join("bin")
}

/// The environment's Python (also what runs the example Python agent in the tests).
pub fn python() -> PathBuf {
    bin().join("python")
}
