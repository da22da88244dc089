//! Third-party Node.js tools the tests run, pinned, installed under `target/` by the
//! first test needing them (it needs `npm` and the npm registry, which these machines
//! reach); `.ci/run` installs them in a step of its own.

#![allow(
    clippy::expect_used,
    reason = "a test helper fails its test loudly on the first surprise"
)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The pinned packages.
pub const PACKAGES: &[&str] = &[
    // The OpenAPI linter the document must satisfy.
    "@redocly/cli@2.77.0",
    // A typed client as TypeScript users make one: types generated from the
    // document, a fetch wrapper that uses them, and the compiler that checks both.
    "openapi-typescript@7.13.0",
    "openapi-fetch@0.17.0",
    "typescript@5.9.3",
    "@types/node@20.19.43",
    // The SSE client docs/api.md shows for Node (the browser's EventSource, with
    // headers); version 3 is the last for Node 20.
    "eventsource@3.0.7",
    // Drives Debian's Chromium in the browser test (it downloads no browser itself).
    "playwright-core@1.65.2",
    // Checks the console's pages for accessibility (WCAG 2 A and AA rules).
    "axe-core@4.14.1",
];

fn prefix() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/node-tools")
}

/// The tools' `node_modules/` directory, with every package of [`PACKAGES`]; their
/// executables are in its `.bin/`.
pub fn node_modules() -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let prefix = prefix();
    let modules = prefix.join("node_modules");
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if !*ready {
        // What the last install was asked for, so a changed pin installs again.
        let recorded = prefix.join("installed");
        let wanted = PACKAGES.join("\n");
        let installed =
            std::fs::read_to_string(&recorded).is_ok_and(|had| had == wanted) && modules.is_dir();
        if !installed {
            std::fs::create_dir_all(&prefix).expect("target/ is writable");
            let done = Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .args(PACKAGES)
                .status()
                .expect("npm (Node.js) is needed for the third-party tools the tests run");
            assert!(done.success(), "npm install {PACKAGES:?} failed");
            std::fs::write(&recorded, wanted).expect("target/ is writable");
        }
        *ready = true;
    }
    modules
}

/// The tools' executables (`node_modules/.bin/`).
pub fn bin() -> PathBuf {
    node_modules().join(".bin")
}
