//! attestgate's lab: network namespaces as hosts, veth links, strongSwan peers, cleanup guards.
//!
//! Everything a test makes is owned by a guard that removes it on drop, also when the test
//! panics: namespaces (and every process left inside them), charon daemons, temporary folders.
//! Names are unique per process so tests can run in parallel: `ag<pid><n>-<role>`.
//! Addresses come only from the documentation and benchmarking ranges (LAB.md).

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

pub mod daemon;
pub mod ike_lab;
pub mod ike_peer;
pub mod interop;
pub mod lab;
pub mod netns;
pub mod pki;
pub mod standins;
pub mod strongswan;

/// True when running as root; lab tests need it. Under CI (`CI=true`) a non-root run is an
/// error rather than a silent skip.
pub fn require_root(test: &str) -> bool {
    let root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        assert!(
            std::env::var("CI").map(|v| v != "true").unwrap_or(true),
            "{test}: lab tests need root, and CI must run them"
        );
        eprintln!("{test}: skipped (needs root for network namespaces)");
    }
    root
}
