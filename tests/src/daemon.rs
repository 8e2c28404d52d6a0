//! The attestgate daemon in a namespace with the lab configuration, and its CLI, for the
//! appliance's tunnel tests (the binary's path comes from the test: `CARGO_BIN_EXE_attestgate`).

use crate::netns::Netns;
use crate::strongswan::{Auth, PeerConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon; killed when dropped.
#[derive(Debug)]
pub struct Daemon(Child);

impl Daemon {
    /// Runs `bin -c config run` in `ns`, its output discarded.
    pub fn start(bin: &str, ns: &Netns, config: &Path) -> Daemon {
        Daemon(
            Command::new("ip")
                .args(["netns", "exec", &ns.name, bin, "-c"])
                .arg(config)
                .arg("run")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lab configuration (`config/examples/lab.toml` with its files made by
/// `tests/lab/files.sh` in `dir`), changed by `edit`; returns its path and the `corp` PSK.
pub fn lab_config(dir: &Path, edit: impl FnOnce(String) -> String) -> (PathBuf, String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(Command::new("bash")
        .arg(root.join("tests/lab/files.sh"))
        .arg(dir)
        .status()
        .unwrap()
        .success());
    let text = std::fs::read_to_string(root.join("config/examples/lab.toml")).unwrap();
    let config = dir.join("attestgate.toml");
    let text = text.replace("/run/attestgate-lab", &dir.display().to_string());
    std::fs::write(&config, edit(text)).unwrap();
    let psk = std::fs::read_to_string(dir.join("corp.psk"))
        .unwrap()
        .trim_end()
        .to_string();
    (config, psk)
}

/// The daemon's host `gw` (203.0.113.10, devices' side 198.18.100.1) and the enterprise peer's
/// `corp` (203.0.113.20, its network 198.19.0.1), linked.
pub fn corp_lab() -> (Netns, Netns) {
    let a = Netns::new("gw");
    let b = Netns::new("corp");
    crate::netns::veth(&a, "203.0.113.10/24", &b, "203.0.113.20/24");
    a.addr("lo", "198.18.100.1/24");
    b.addr("lo", "198.19.0.1/24");
    (a, b)
}

/// strongSwan as the lab configuration's `corp` peer expects it (its side of the tunnel).
pub fn corp_peer(psk: String) -> PeerConfig {
    PeerConfig {
        local_addr: "203.0.113.20".into(),
        remote_addr: "203.0.113.10".into(),
        local_id: "vpn.corp.lab".into(),
        remote_id: "gw.attestgate.lab".into(),
        auth: Auth::Psk(psk),
        ike_proposal: "aes256gcm16-prfsha256-ecp256".into(),
        esp_proposal: "aes256gcm16".into(),
        local_ts: "198.19.0.0/24".into(),
        remote_ts: "198.18.100.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    }
}

/// The CLI against the daemon of `config`.
#[derive(Debug, Clone)]
pub struct Cli<'a> {
    pub bin: &'a str,
    pub config: &'a Path,
}

impl Cli<'_> {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new(self.bin)
            .arg("-c")
            .arg(self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// The first tunnel of `attestgate --json tunnels` (null when the daemon does not answer).
    pub fn tunnel(&self) -> Value {
        let out = self.run(&["--json", "tunnels"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["result"]["tunnels"][0].clone()
    }

    /// Polls [`Cli::tunnel`] until `ok`, failing after `within`.
    pub fn wait_until(&self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let t = self.tunnel();
            if ok(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not reached within {within:?}: {t}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
