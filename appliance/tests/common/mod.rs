//! A daemon in a temporary directory for the device-store and admin-API tests: the lab's
//! certificates (`tests/lab/files.sh`), a configuration written by the test, the CLI.

#![allow(dead_code)] // each test file uses part of this

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_attestgate");

/// Stops the process if a test fails half-way.
pub struct Kill(pub Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Lab {
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub config: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Lab {
    pub fn new() -> Lab {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let ok = Command::new("bash")
            .arg(root.join("tests/lab/files.sh"))
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "tests/lab/files.sh failed (is openssl installed?)");
        let config = dir.join("attestgate.toml");
        Lab { tmp, dir, config }
    }

    /// Writes the configuration: `[appliance]`, a relay on `relay_port`, an internet pair and a
    /// public egress, an `echo` app for 127.0.0.0/8 with a trusted policy (max_risk medium),
    /// the file source `mdm` (`devices.toml`), then `extra` as given.
    pub fn write_config(&self, relay_port: u16, compliance: &str, extra: &str) {
        let d = self.dir.display();
        std::fs::write(
            &self.config,
            format!(
                r#"[appliance]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"
[relay]
http3_listen = ["127.0.0.1:{relay_port}"]
http2_listen = []
certificate = "{d}/relay.crt"
private_key = "{d}/relay.key"
device_ca = ["{d}/device-ca.crt"]
identity = ["subject-cn"]
[egress.pair]
type = "internet"
source_addresses = ["127.0.0.1"]
[egress.public]
type = "public"
[apps.echo]
cidrs = ["127.0.0.0/8"]
[compliance]
compliant_groups = ["Compliant Macs"]
{compliance}
[compliance.sources.mdm]
type = "file"
path = "{d}/devices.toml"
[[policy]]
name = "echo"
apps = ["echo"]
egress = "pair"
fallback = "public"
max_risk = "medium"
[events]
file = "{d}/events.jsonl"
{extra}"#
            ),
        )
        .unwrap();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// `--json` result of a command that must succeed.
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(&[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.get("result").cloned().unwrap_or(v)
    }

    pub fn start(&self) -> Kill {
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(["run", "--log-level", "info"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Kill(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.cli(&["status"]).status.success() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon did not answer within 30 s");
    }

    /// SIGTERM and wait for the exit.
    pub fn stop(&self, mut d: Kill) {
        let ok = Command::new("kill")
            .args(["-TERM", &d.0.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "daemon did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Waits until `f` holds (polling every 50 ms).
    pub fn wait_for(&self, what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub const DEVICE_OK: &str = "[[device]]\nserial = \"C02LAB0001\"\nmanaged = true\ngroups = [\"Compliant Macs\"]\nrisk = \"secure\"\nplatform = \"macos\"\nudids = [\"UDID-0001\"]\n";
