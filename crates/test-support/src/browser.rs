//! A real browser for the browser tests: Debian's Chromium (package `chromium`),
//! installed by the first test that needs it if it is missing (with `apt-get`, as the
//! machine's administrator: CI runs as root), and driven by Playwright's
//! `playwright-core` (npm, pinned in [`crate::node::PACKAGES`]), which never downloads
//! a browser of its own. `.ci/run` installs it in a step of its own.

#![allow(
    clippy::expect_used,
    reason = "a test helper fails its test loudly on the first surprise"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Where Debian's package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// The Chromium executable, installed first if missing.
pub fn chromium() -> PathBuf {
    static READY: Mutex<bool> = Mutex::new(false);
    let path = PathBuf::from(CHROMIUM);
    let mut ready = READY.lock().unwrap_or_else(|p| p.into_inner());
    if !*ready && !path.exists() {
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "--no-install-recommends", "chromium"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|status| status.success())
        };
        // A fresh machine's package lists may be missing or stale: refresh once.
        let installed = install()
            || (Command::new("apt-get")
                .arg("update")
                .status()
                .is_ok_and(|status| status.success())
                && install());
        assert!(
            installed && path.exists(),
            "the browser tests need Debian's chromium: `apt-get install chromium` (as root) failed"
        );
    }
    *ready = true;
    path
}

/// The flags Chromium runs headless with here: no sandbox (CI runs as root), and none
/// of its background connections to Google, which a closed network refuses.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// A browser test's scripts, ready to run with `node`: a directory holding the test's
/// own files, the pinned Node packages (`node_modules`, linked) and the shared
/// `cut_proxy.mjs` (a proxy whose connections a test can cut).
#[derive(Debug)]
pub struct BrowserRun {
    dir: tempfile::TempDir,
    chromium: PathBuf,
}

impl BrowserRun {
    /// Installs what is missing (Chromium, the Node packages), then copies `files`
    /// from the directory `from`.
    pub fn prepare(from: &Path, files: &[&str]) -> BrowserRun {
        let chromium = chromium();
        let modules = crate::node::node_modules();
        let dir = tempfile::tempdir().expect("a directory for the browser scripts");
        std::os::unix::fs::symlink(&modules, dir.path().join("node_modules"))
            .expect("linking node_modules");
        let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/cut_proxy.mjs");
        std::fs::copy(shared, dir.path().join("cut_proxy.mjs")).expect("copying cut_proxy.mjs");
        for file in files {
            std::fs::copy(from.join(file), dir.path().join(file))
                .unwrap_or_else(|err| panic!("copying {file}: {err}"));
        }
        BrowserRun { dir, chromium }
    }

    /// `node <script>`, told where the browser is (`CHROMIUM`) and how to start it
    /// (`CHROMIUM_FLAGS`, a JSON list).
    pub fn node(&self, script: &str) -> Command {
        let mut node = Command::new("node");
        node.arg(self.dir.path().join(script))
            .env("CHROMIUM", &self.chromium)
            .env(
                "CHROMIUM_FLAGS",
                serde_json::to_string(CHROMIUM_FLAGS).expect("a list of strings"),
            );
        node
    }

    /// Runs a script made with [`BrowserRun::node`] to its end, which must print
    /// `done`, and returns the JSON line it printed: what the page saw.
    pub fn report(script: Command, done: &str) -> serde_json::Value {
        let output = crate::tool_output(script);
        assert!(output.contains(done), "{output}");
        output
            .lines()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("no report: {output}"))
    }
}
