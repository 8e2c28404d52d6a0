//! A daemon in a temporary directory for the device-store and admin-API tests: the lab's
//! certificates (`tests/lab/files.sh`), a configuration written by the test, the CLI.

#![allow(dead_code)] // each test file uses part of this

use serde_json::Value;
use std::io::Write;
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
# not the pair's address: untrusted traffic never leaves from a trusted one
source_address = "127.0.0.2"
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

    /// A lab whose daemon also runs the admin listener on `admin` with Basic auth
    /// `jamf:s3cret-pw`.
    pub fn with_admin(relay_port: u16, admin: u16) -> Lab {
        let lab = Lab::new();
        let pw = lab.dir.join("webhook.pw");
        std::fs::write(&pw, "s3cret-pw\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
        let d = lab.dir.display();
        lab.write_config(
            relay_port,
            "",
            &format!(
                "[compliance.webhook]\nlisten = \"127.0.0.1:{admin}\"\ncertificate = \"{d}/relay.crt\"\n\
                 private_key = \"{d}/relay.key\"\nauth = \"basic\"\nusername = \"jamf\"\npassword_file = \"{d}/webhook.pw\"\n"
            ),
        );
        lab
    }

    /// The configuration of [`Lab::write_config`] with `refresh_interval = "{refresh}"`, a
    /// `jamf-pro` source `jamf` reading computer group 1 of the Jamf Pro stand-in `jamf` as
    /// client `id` / `secret`, and the admin listener on `admin` with Basic auth
    /// `jamf:s3cret-pw`. Returns the stand-in's CA, for the daemon's `SSL_CERT_FILE`.
    pub fn jamf_config(
        &self,
        relay_port: u16,
        admin: u16,
        jamf: &tests::standins::jamf::JamfStandin,
        id: &str,
        secret: &str,
        refresh: &str,
    ) -> PathBuf {
        let d = self.dir.display();
        std::fs::write(self.dir.join("jamf.secret"), format!("{secret}\n")).unwrap();
        std::fs::write(self.dir.join("webhook.pw"), "s3cret-pw\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in ["jamf.secret", "webhook.pw"] {
            std::fs::set_permissions(self.dir.join(f), std::fs::Permissions::from_mode(0o600))
                .unwrap();
        }
        let ca = self.dir.join("jamf-ca.pem");
        std::fs::write(&ca, &jamf.server.tls.ca_pem).unwrap();
        self.write_config(
            relay_port,
            &format!("refresh_interval = \"{refresh}\""),
            &format!(
                "[compliance.sources.jamf]\ntype = \"jamf-pro\"\nurl = \"{}\"\nclient_id = \"{id}\"\n\
                 client_secret_file = \"{d}/jamf.secret\"\ncomputer_groups = [1]\n\
                 [compliance.webhook]\nlisten = \"127.0.0.1:{admin}\"\ncertificate = \"{d}/relay.crt\"\n\
                 private_key = \"{d}/relay.key\"\nauth = \"basic\"\nusername = \"jamf\"\npassword_file = \"{d}/webhook.pw\"\n",
                jamf.url()
            ),
        );
        ca
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
        self.start_with_env(&[])
    }

    /// The daemon with these environment variables set (e.g. `SSL_CERT_FILE`).
    pub fn start_with_env(&self, env: &[(&str, &Path)]) -> Kill {
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(["run", "--log-level", "info"])
            .envs(env.iter().copied())
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

/// Runs a command in `dir`; it must succeed.
pub fn sh(args: &[&str], dir: &Path) {
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

/// A device certificate from the lab device CA with `serial` as the subject CN
/// (`device.crt`, `device.key`).
pub fn device_certificate(dir: &Path, serial: &str) {
    device_certificate_named(dir, serial, "device");
}

/// The same as `NAME.crt` and `NAME.key`.
pub fn device_certificate_named(dir: &Path, serial: &str, name: &str) {
    let (key, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    sh(
        &[
            "openssl",
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
        dir,
    );
    let subject = format!("/CN={serial}");
    sh(
        &[
            "openssl", "req", "-new", "-key", &key, "-subj", &subject, "-out", &csr,
        ],
        dir,
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
            &csr,
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
            &crt,
        ],
        dir,
    );
}

/// An echo server on 127.0.0.1 (one thread per connection).
pub fn echo_server() -> u16 {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An aioquic device holding one busy CONNECT to `127.0.0.1:echo` through the relay; its
/// JSON lines (`{"event":"flowing"}`, then the end with `reset` and `reset_at_ms`).
pub struct Device {
    pub child: Kill,
    pub lines: std::sync::mpsc::Receiver<Value>,
}

pub fn device(dir: &Path, relay_port: u16, echo: u16) -> Device {
    use std::io::BufRead;
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
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
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

pub fn require_aioquic() {
    let missing = Command::new("python3")
        .args(["-c", "import aioquic"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true);
    assert!(
        !missing,
        "aioquic is missing: python3 -m pip install aioquic==1.7.2"
    );
}

/// Milliseconds since the epoch.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// One HTTPS request with curl (verifying the listener's certificate); status and JSON body.
pub fn request(
    lab: &Lab,
    port: u16,
    method: &str,
    path: &str,
    user: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "-X", method])
        .arg("--cacert")
        .arg(lab.dir.join("relay-ca.crt"))
        .args([
            "--resolve",
            &format!("relay.attestgate.lab:{port}:127.0.0.1"),
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
            "-w",
            "\n%{http_code}",
            &format!("https://relay.attestgate.lab:{port}{path}"),
        ]);
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The admin listener's Basic credentials in the labs of [`Lab::with_admin`].
pub fn good() -> Option<&'static str> {
    Some("jamf:s3cret-pw")
}
