//! Decision at use, end to end through the daemon: an aioquic device (the stand-in for Apple's
//! relay client) keeps a CONNECT busy through the relay; the MDM's device list drops it from
//! the compliant group; the daemon re-decides the open flow and the relay resets it within one
//! second; the device's next CONNECT leaves through the untrusted egress; restoring compliance
//! makes the next decision trusted again, with nothing done on the device.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BIN: &str = env!("CARGO_BIN_EXE_attestgate");

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(args: &[&str], dir: &Path) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An echo server on 127.0.0.1 (one thread per connection).
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 65536];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

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

struct Device {
    child: Kill,
    lines: mpsc::Receiver<Value>,
}

fn device(dir: &Path, relay_port: u16, echo: u16) -> Device {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../relay/tests/h3_client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            "hold",
            "--host",
            "127.0.0.1",
            "--port",
            &relay_port.to_string(),
            "--server-name",
            "relay.attestgate.lab",
        ])
        .arg("--ca")
        .arg(dir.join("relay-ca.crt"))
        .arg("--cert")
        .arg(dir.join("device.crt"))
        .arg("--key")
        .arg(dir.join("device.key"))
        .args([
            "--authority",
            &format!("127.0.0.1:{echo}"),
            "--timeout",
            "30",
        ])
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
    Device {
        child: Kill(child),
        lines: rx,
    }
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
    if Command::new("python3")
        .args(["-c", "import aioquic"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!("aioquic is missing: python3 -m pip install aioquic==1.7.2");
    }
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
    sh(
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "device.key",
        ],
        &dir,
    );
    sh(
        &[
            "openssl",
            "req",
            "-new",
            "-key",
            "device.key",
            "-subj",
            "/CN=C02LAB0001",
            "-out",
            "device.csr",
        ],
        &dir,
    );
    std::fs::write(
        dir.join("device.ext"),
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    )
    .unwrap();
    sh(
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "device.csr",
            "-CA",
            "device-ca.crt",
            "-CAkey",
            "device-ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "device.ext",
            "-out",
            "device.crt",
        ],
        &dir,
    );
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
