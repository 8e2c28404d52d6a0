//! `ike-peer` (one attestgate IKE SA over real sockets) run inside a namespace, its JSON event
//! lines collected for tests and benchmarks.

use crate::netns::Netns;
use crate::strongswan::{Auth, PeerConfig};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The `ike-peer` binary: `$IKE_PEER`, else next to the running executable (or its parent,
/// for test binaries in `deps/`).
pub fn peer_bin() -> String {
    if let Ok(p) = std::env::var("IKE_PEER") {
        return p;
    }
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let c = d.join("ike-peer");
        if c.exists() {
            return c.display().to_string();
        }
    }
    "ike-peer".into()
}

#[derive(Debug)]
pub struct Peer {
    child: Child,
    lines: mpsc::Receiver<Value>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    pub fn start(ns: &Netns, role: &str, cfg: &PeerConfig) -> Peer {
        Peer::start_with(ns, role, cfg, &[])
    }

    pub fn start_with(ns: &Netns, role: &str, cfg: &PeerConfig, extra: &[&str]) -> Peer {
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns.name, &peer_bin()])
            .args([
                "--role",
                role,
                "--local",
                &cfg.local_addr,
                "--remote",
                &cfg.remote_addr,
            ])
            .args(["--local-id", &cfg.local_id, "--remote-id", &cfg.remote_id])
            .args(match &cfg.auth {
                Auth::Psk(s) => vec!["--psk".into(), s.clone()],
                Auth::Cert { ours, ca, .. } => [
                    ("--cert", &ours.cert),
                    ("--key", &ours.key),
                    ("--peer-ca", ca),
                ]
                .iter()
                .flat_map(|(k, v)| [k.to_string(), v.display().to_string()])
                .collect(),
            })
            .args(["--ike", &cfg.ike_proposal, "--esp", &cfg.esp_proposal])
            .args([
                "--local-ts",
                &cfg.local_ts,
                "--remote-ts",
                &cfg.remote_ts,
                "--exit-after",
                "60",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        let p = Peer { child, lines: rx };
        p.wait_for("listening", Duration::from_secs(10));
        p
    }

    pub fn wait_for(&self, event: &str, within: Duration) -> Value {
        let deadline = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return v,
                Ok(v) => seen.push(v),
                Err(_) => break,
            }
        }
        panic!("no `{event}` from ike-peer within {within:?}; saw {seen:?}");
    }
}

impl Peer {
    /// Every event until `within` has passed.
    pub fn collect(&self, within: Duration) -> Vec<Value> {
        let deadline = std::time::Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(v) => seen.push(v),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        seen
    }
}
