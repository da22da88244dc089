//! A real browser for the browser tests: Debian's Chromium (package `chromium`),
//! installed by the first test that needs it if it is missing (with `apt-get`, as the
//! machine's administrator: CI runs as root), and driven by Playwright's
//! `playwright-core` (npm, pinned in [`crate::node::PACKAGES`]), which never downloads
//! a browser of its own. `.ci/run` installs it in a step of its own.

#![allow(
    clippy::expect_used,
    reason = "a test helper fails its test loudly on the first surprise"
)]

use std::path::PathBuf;
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
