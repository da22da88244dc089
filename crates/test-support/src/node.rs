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

/// Each pinned package, and the executable that shows it is installed.
pub const PACKAGES: &[(&str, &str)] = &[
    // The OpenAPI linter the document must satisfy.
    ("@redocly/cli@2.77.0", "redocly"),
];

fn prefix() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/node-tools")
}

/// The tools' `node_modules/.bin/` directory, with every package of [`PACKAGES`].
pub fn bin() -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let prefix = prefix();
    let bin = prefix.join("node_modules/.bin");
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if !*ready {
        let recorded = prefix.join("installed");
        let wanted = PACKAGES
            .iter()
            .map(|(package, _)| *package)
            .collect::<Vec<_>>()
            .join("\n");
        let installed = std::fs::read_to_string(&recorded).is_ok_and(|had| had == wanted)
            && PACKAGES.iter().all(|(_, tool)| bin.join(tool).exists());
        if !installed {
            std::fs::create_dir_all(&prefix).expect("target/ is writable");
            let done = Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&prefix)
                .args(PACKAGES.iter().map(|(package, _)| package))
                .status()
                .expect("npm (Node.js) is needed for the third-party tools the tests run");
            assert!(done.success(), "npm install {PACKAGES:?} failed");
            std::fs::write(&recorded, wanted).expect("target/ is writable");
        }
        *ready = true;
    }
    bin
}
