//! Decision at use, end to end through the daemon: an aioquic device (the stand-in for Apple's
//! relay client) keeps a CONNECT busy through the relay; the MDM's device list drops it from
//! the compliant group; the daemon re-decides the open flow and the relay resets it within one
//! second; the device's next CONNECT leaves through the untrusted egress; restoring compliance
//! makes the next decision trusted again, with nothing done on the device.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

mod common;

use common::{device, device_certificate, echo_server, free_udp_port, require_aioquic, Kill, BIN};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DEVICES_OK: &str = "[[device]]\nserial = \"C02LAB0001\"\nmanaged = true\ngroups = [\"Compliant Macs\"]\nrisk = \"secure\"\n";
const DEVICES_BAD: &str = "[[device]]\nserial = \"C02LAB0001\"\nmanaged = true\ngroups = [\"Engineering\"]\nrisk = \"secure\"\n";

fn config(dir: &Path, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"[appliance]
state_dir = "{d}/state"
control_socket = "{d}/control.sock"
[relay]
http3_listen = ["127.0.0.1:{port}"]
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
# not the pair's address: untrusted traffic never leaves from a trusted one
source_address = "127.0.0.2"
[apps.echo]
cidrs = ["127.0.0.0/8"]
[compliance]
refresh_interval = "1m"
compliant_groups = ["Compliant Macs"]
[compliance.sources.mdm]
type = "file"
path = "{d}/devices.toml"
[[policy]]
name = "echo"
apps = ["echo"]
egress = "pair"
fallback = "public"
[events]
file = "{d}/events.jsonl"
"#
    )
}

fn cli(config: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("-c")
        .arg(config)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout).unwrap()["result"].clone()
}

#[test]
fn a_compliance_flip_resets_the_open_flow_within_a_second() {
    require_aioquic();
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().to_path_buf();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    assert!(Command::new("bash")
        .arg(root.join("tests/lab/files.sh"))
        .arg(&dir)
        .status()
        .unwrap()
        .success());
    // a device certificate from the lab device CA, serial in the subject CN
    device_certificate(&dir, "C02LAB0001");
    std::fs::write(dir.join("devices.toml"), DEVICES_OK).unwrap();
    let port = free_udp_port();
    let echo = echo_server();
    let cfg = dir.join("attestgate.toml");
    std::fs::write(&cfg, config(&dir, port)).unwrap();

    let _daemon = Kill(
        Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .args(["--json", "status"])
            .output()
            .unwrap();
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let state = v["result"]["relay"]["state"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(!state.starts_with("error"), "{state}");
            if state.starts_with("listening") {
                break;
            }
        }
        assert!(Instant::now() < deadline, "daemon/relay did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    // a compliant device: its flow leaves through the trusted pair
    let d = device(&dir, port, echo);
    let flowing = d.lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(flowing["event"], "flowing", "{flowing}");
    let flows = cli(&cfg, &["flows"]);
    assert_eq!(flows["flows"][0]["device"], "C02LAB0001", "{flows}");
    assert_eq!(flows["flows"][0]["egress"], "pair", "{flows}");

    // the MDM drops it from the compliant group; the daemon learns it at the next sync
    // (forced here with `attestgate sync`)
    std::fs::write(dir.join("devices.toml"), DEVICES_BAD).unwrap();
    let flipped_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let synced = cli(&cfg, &["sync"]);
    assert_eq!(synced["devices"], 1, "{synced}");
    let end = d.lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        end["reset"], 0x10c,
        "the flow was not reset as cancelled: {end}"
    );
    let latency = end["reset_at_ms"].as_f64().unwrap() as i64 - flipped_at;
    eprintln!("compliance flip → stream reset: {latency} ms");
    assert!(latency < 1000, "reset took {latency} ms");
    drop(d);
    let events = std::fs::read_to_string(dir.join("events.jsonl")).unwrap();
    assert!(events.contains("\"enforcement.revoked\""), "{events}");

    // the next CONNECT of the same device takes the untrusted egress
    let d = device(&dir, port, echo);
    assert_eq!(
        d.lines.recv_timeout(Duration::from_secs(20)).unwrap()["event"],
        "flowing"
    );
    let flows = cli(&cfg, &["flows"]);
    assert_eq!(flows["flows"][0]["egress"], "public", "{flows}");
    drop(d);

    // compliant again: trusted again, nothing done on the device
    std::fs::write(dir.join("devices.toml"), DEVICES_OK).unwrap();
    cli(&cfg, &["config", "apply"]);
    let w = cli(
        &cfg,
        &[
            "whatif",
            "--device",
            "C02LAB0001",
            "--target",
            &format!("127.0.0.1:{echo}"),
        ],
    );
    assert_eq!(w["decision"]["verdict"]["egress"], "pair", "{w}");
    let d = device(&dir, port, echo);
    assert_eq!(
        d.lines.recv_timeout(Duration::from_secs(20)).unwrap()["event"],
        "flowing"
    );
    assert_eq!(cli(&cfg, &["flows"])["flows"][0]["egress"], "pair");
    let _ = &d.child;
}
