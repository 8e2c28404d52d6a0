//! The end-to-end lab of issue 6: the whole product in namespaces.
//!
//! ```text
//!  device 198.51.100.2 ──veth── appliance 198.51.100.1 (relay :443, admin :8443, Jamf stand-in)
//!                                   │ 203.0.113.10 (+ .30, .31 the internet pair)
//!                          wan: bridge, router address 203.0.113.1
//!                  ┌────────────────┴───────────────┐
//!       peer 203.0.113.20 (strongSwan)        idp 203.0.113.40 (:443, records sources)
//!                  │ 198.19.0.1
//!       lan 198.19.0.10 (app server :80 :443), 198.19.0.53 (resolver)
//! ```
//!
//! attestgate runs in `appliance` on `config/examples/lab.toml` with its files in the lab's own
//! folder; its compliance source is the Jamf Pro stand-in (`mdm-standin jamf`, computers
//! `C02STAND0001` and `C02STAND0003` in the compliant smart group 1, `C02STAND0002` not), flipped live through
//! its webhook on the admin listener. Device certificates come from a lab CA made at start-up.
//! Every namespace, process and file goes away when the [`Lab`] is dropped, also on panic.

use crate::netns::{sh, unique, veth, Netns};
use crate::pki::{LabCert, LabPki, P256};
use crate::strongswan::Charon;
use serde_json::Value;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

pub const RELAY: &str = "198.51.100.1";
pub const DEVICE: &str = "198.51.100.2";
pub const WAN_ROUTER: &str = "203.0.113.1";
pub const PUBLIC: &str = "203.0.113.10";
pub const PAIR: [&str; 2] = ["203.0.113.30", "203.0.113.31"];
pub const PEER: &str = "203.0.113.20";
pub const IDP: &str = "203.0.113.40";
pub const APP: &str = "198.19.0.10";
pub const RESOLVER: &str = "198.19.0.53";
/// The corp tunnel's NAT pool (`nat_pool` in lab.toml).
pub const POOL_PREFIX: &str = "198.18.100.";
/// Jamf computer 1: in smart group 1 "Compliant Macs".
pub const COMPLIANT: &str = "C02STAND0001";
/// Jamf computer 2: managed, in no compliant group.
pub const NONCOMPLIANT: &str = "C02STAND0002";
/// Jamf computer 3: in smart group 1 too (a second compliant device).
pub const COMPLIANT_TOO: &str = "C02STAND0003";
const ADMIN: &str = "198.51.100.1:8443";
const WEBHOOK_HEADER: &str = "X-Attestgate-Token";

/// Milliseconds since the epoch.
pub fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// True when `ip` is an address of the corp tunnel's NAT pool 198.18.100.0/26.
pub fn in_pool(ip: &str) -> bool {
    ip.strip_prefix(POOL_PREFIX)
        .and_then(|h| h.parse::<u8>().ok())
        .is_some_and(|h| h < 64)
}

/// Where the programs the lab runs are.
#[derive(Debug, Clone)]
pub struct LabBins {
    pub attestgate: PathBuf,
    pub lab_server: PathBuf,
    pub mdm_standin: PathBuf,
    /// `relay/tests/h3_client.py`, the aioquic device.
    pub h3_client: PathBuf,
}

impl LabBins {
    /// The binaries in `dir` (a cargo target folder such as `target/debug`).
    pub fn in_dir(dir: &Path) -> LabBins {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        LabBins {
            attestgate: dir.join("attestgate"),
            lab_server: dir.join("lab-server"),
            mdm_standin: dir.join("mdm-standin"),
            h3_client: root.join("relay/tests/h3_client.py"),
        }
    }

    /// Fails with what to build when one is missing.
    pub fn check(&self) -> Result<(), String> {
        for (p, how) in [
            (&self.attestgate, "cargo build -p attestgate"),
            (&self.lab_server, "cargo build -p tests --bins"),
            (&self.mdm_standin, "cargo build -p tests --bins"),
            (&self.h3_client, "a checkout with relay/tests"),
        ] {
            if !p.exists() {
                return Err(format!("{} is missing: {how}", p.display()));
            }
        }
        Ok(())
    }
}

/// A process of the lab; killed and reaped when dropped.
#[derive(Debug)]
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The Jamf Pro stand-in, driven through its stdin (see `tests/src/bin/mdm-standin.rs`).
#[derive(Debug)]
struct Mdm {
    _proc: Proc,
    stdin: ChildStdin,
    lines: Receiver<Value>,
    hello: Value,
}

impl Mdm {
    fn command(&mut self, line: &str) -> Value {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let v = self
            .lines
            .recv_timeout(Duration::from_secs(15))
            .unwrap_or_else(|_| panic!("the Jamf stand-in did not answer `{line}`"));
        assert_eq!(v["ok"], true, "`{line}`: {v}");
        v["result"].clone()
    }
}

/// JSON lines of a child's stdout, on a channel.
fn json_lines(out: impl std::io::Read + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// A device holding one busy CONNECT (`h3_client.py hold`): `{"event": "flowing"}` once the
/// echo flows, then the end with `reset` and `reset_at_ms`.
#[derive(Debug)]
pub struct HeldStream {
    _proc: Proc,
    pub lines: Receiver<Value>,
}

impl HeldStream {
    /// Waits for the next line (`None` after `within`).
    pub fn next(&self, within: Duration) -> Option<Value> {
        self.lines.recv_timeout(within).ok()
    }
}

/// Which recording host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The LAN behind the peer (app server and resolver).
    Lan,
    Idp,
}

/// Changes to the lab configuration before the daemon starts.
pub type Edit = fn(String) -> String;

/// The running lab.
pub struct Lab {
    pub bins: LabBins,
    pub config: PathBuf,
    pub pki: LabPki,
    daemon: Option<Proc>,
    mdm: Mdm,
    charon: Option<Charon>,
    psk: String,
    _servers: Vec<Proc>,
    pub device: Netns,
    pub appliance: Netns,
    pub peer: Netns,
    pub lan: Netns,
    pub idp: Netns,
    pub wan: Netns,
    /// Last: removed once everything that writes into it is gone.
    pub dir: tempfile::TempDir,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Lab({})", self.dir.path().display())
    }
}

/// Puts `host` on the wan bridge with `cidrs` (the first one primary); returns its interface.
fn attach(wan: &Netns, host: &Netns, cidrs: &[&str]) -> String {
    let ours = unique("w");
    let port = unique("p");
    sh(&[
        "ip", "link", "add", &ours, "netns", &host.name, "type", "veth", "peer", "name", &port,
        "netns", &wan.name,
    ]);
    wan.ip(&["link", "set", &port, "master", "br0", "up"]);
    for c in cidrs {
        host.addr(&ours, c);
    }
    host.ip(&["link", "set", &ours, "up"]);
    ours
}

fn sysctl(ns: &Netns, kv: &str) {
    ns.ok(&["sysctl", "-q", "-w", kv]);
}

fn replace_once(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "lab.toml no longer contains {from:?}; update tests/src/lab.rs"
    );
    text.replacen(from, to, 1)
}

/// Starts `bin args` in `ns` and waits for its first stdout line (`ready` or a JSON hello).
fn start_ready(ns: &Netns, args: &[&str], log: &Path) -> (Proc, std::process::ChildStdout, String) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.name])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    let _ = out.read_line(&mut first);
    assert!(
        !first.is_empty(),
        "{args:?} did not start: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let stdout = out.into_inner();
    (Proc(child), stdout, first)
}

impl Lab {
    /// Brings the lab up with `config/examples/lab.toml` as it is (plus what the lab needs);
    /// returns once the tunnel is established and the relay and admin listener listen.
    pub fn start(bins: LabBins) -> Lab {
        Lab::start_with(bins, |t| t)
    }

    /// The same with the configuration changed by `edit` first.
    pub fn start_with(bins: LabBins, edit: Edit) -> Lab {
        if let Err(e) = bins.check() {
            panic!("{e}");
        }
        let dir = tempfile::Builder::new()
            .prefix("attestgate-lab")
            .tempdir()
            .unwrap();
        let d = dir.path().to_path_buf();

        // hosts and links
        let wan = Netns::new("wan");
        let appliance = Netns::new("app");
        let device = Netns::new("dev");
        let peer = Netns::new("peer");
        let lan = Netns::new("lan");
        let idp = Netns::new("idp");
        // for a wrapper script that must clean up after a Ctrl-C, which skips our guards
        if let Ok(record) = std::env::var("ATTESTGATE_LAB_RECORD") {
            let mut text = format!("dir {}\n", d.display());
            for ns in [&wan, &appliance, &device, &peer, &lan, &idp] {
                text.push_str(&format!("netns {}\n", ns.name));
            }
            std::fs::write(record, text).unwrap();
        }
        wan.ip(&["link", "add", "br0", "type", "bridge"]);
        wan.ip(&["link", "set", "br0", "up"]);
        wan.addr("br0", &format!("{WAN_ROUTER}/24"));
        veth(
            &device,
            &format!("{DEVICE}/24"),
            &appliance,
            &format!("{RELAY}/24"),
        );
        attach(
            &wan,
            &appliance,
            &[
                &format!("{PUBLIC}/24"),
                &format!("{}/24", PAIR[0]),
                &format!("{}/24", PAIR[1]),
            ],
        );
        appliance.ip(&["route", "add", "default", "via", WAN_ROUTER]);
        attach(&wan, &peer, &[&format!("{PEER}/24")]);
        attach(&wan, &idp, &[&format!("{IDP}/24")]);
        veth(&peer, "198.19.0.1/24", &lan, &format!("{APP}/24"));
        lan.addr(&lan_ifname(&lan), &format!("{RESOLVER}/24"));
        lan.ip(&["route", "add", "default", "via", "198.19.0.1"]);
        sysctl(&peer, "net.ipv4.ip_forward=1");
        sysctl(&peer, "net.ipv4.conf.all.rp_filter=0");

        // recording servers
        let ls = bins.lab_server.display().to_string();
        let lan_log = d.join("lan.jsonl").display().to_string();
        let idp_log = d.join("idp.jsonl").display().to_string();
        let (lan_srv, _, _) = start_ready(
            &lan,
            &[
                &ls,
                "--log",
                &lan_log,
                "--tcp",
                &format!("{APP}:80"),
                "--tcp",
                &format!("{APP}:443"),
                "--dns",
                &format!("{RESOLVER}:53"),
                "--answer",
                &format!("app.corp.lab={APP}"),
                "--answer",
                &format!("wiki.corp.lab={APP}"),
            ],
            &d.join("lan-server.log"),
        );
        let (idp_srv, _, _) = start_ready(
            &idp,
            &[&ls, "--log", &idp_log, "--tcp", &format!("{IDP}:443")],
            &d.join("idp-server.log"),
        );

        // lab files (relay certificate, PSK), device CA, the Jamf stand-in
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        sh(&[
            "bash",
            &root.join("tests/lab/files.sh").display().to_string(),
            &d.display().to_string(),
        ]);
        let psk = std::fs::read_to_string(d.join("corp.psk"))
            .unwrap()
            .trim_end()
            .to_string();
        let pki = LabPki::new("attestgate lab device CA", &P256);
        let jamf_dir = d.join("jamf");
        let (mdm_proc, mdm_out, hello) = start_ready(
            &appliance,
            &[
                &bins.mdm_standin.display().to_string(),
                "jamf",
                "--dir",
                &jamf_dir.display().to_string(),
                "--computers",
                "3",
                "--mobiles",
                "0",
            ],
            &d.join("jamf.log"),
        );
        let hello: Value = serde_json::from_str(&hello).unwrap();
        let mut mdm_proc = mdm_proc;
        let stdin = mdm_proc.0.stdin.take().unwrap();
        let mdm = Mdm {
            _proc: mdm_proc,
            stdin,
            lines: json_lines(mdm_out),
            hello,
        };

        // the enterprise side
        let charon = Charon::start(&peer, &crate::daemon::corp_peer(psk.clone()));

        let config = d.join("attestgate.toml");
        let text = lab_toml(&d, &pki, &mdm.hello);
        std::fs::write(&config, edit(text)).unwrap();
        let mut lab = Lab {
            bins,
            config,
            pki,
            daemon: None,
            mdm,
            charon: Some(charon),
            psk,
            _servers: vec![lan_srv, idp_srv],
            device,
            appliance,
            peer,
            lan,
            idp,
            wan,
            dir,
        };
        lab.start_daemon();
        lab
    }

    /// Starts attestgate in the appliance namespace and waits until it is ready (relay and
    /// admin listening, the devices read from Jamf, the corp tunnel established).
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "the daemon runs already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.appliance.name])
            .arg(&self.bins.attestgate)
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .env("SSL_CERT_FILE", self.mdm.hello["ca"].as_str().unwrap())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.daemon = Some(Proc(child));
        self.wait_for("the daemon ready", Duration::from_secs(90), |lab| {
            let s = lab.json(&["status"]);
            let relay = s["relay"]["state"].as_str().unwrap_or("");
            let admin = s["compliance"]["admin"].as_str().unwrap_or("");
            relay.starts_with("listening")
                && admin.starts_with("listening")
                && lab.tunnel()["state"] == "established"
                && lab.json(&["device", "show", COMPLIANT])["verdict"]["compliant"] == true
        });
    }

    /// SIGTERM to the daemon; returns its exit status once it stopped (within 15 s).
    pub fn stop_daemon(&mut self) -> std::process::ExitStatus {
        let Some(mut p) = self.daemon.take() else {
            panic!("the daemon is not running")
        };
        sh(&["kill", "-TERM", &p.0.id().to_string()]);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(s) = p.0.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop within 15 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL to the daemon: it leaves whatever it had configured behind.
    pub fn kill_daemon(&mut self) {
        drop(self.daemon.take());
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The daemon's log so far (for failure messages).
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// `attestgate -c CONFIG args…`
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(&self.bins.attestgate)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// The `result` of `attestgate --json args…` (null when the daemon does not answer).
    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(&[&["--json"], args].concat());
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v.get("result").cloned().unwrap_or(v)
    }

    /// The `corp` tunnel as `attestgate tunnels` shows it.
    pub fn tunnel(&self) -> Value {
        self.json(&["tunnels"])["tunnels"]
            .as_array()
            .and_then(|t| t.iter().find(|t| t["name"] == "corp").cloned())
            .unwrap_or(Value::Null)
    }

    /// Polls `ok` every 100 ms; panics with the daemon's log after `within`.
    pub fn wait_for(&self, what: &str, within: Duration, ok: impl Fn(&Lab) -> bool) {
        let deadline = Instant::now() + within;
        while !ok(self) {
            if Instant::now() > deadline {
                panic!(
                    "{what}: not within {within:?}\nstatus: {}\ntunnel: {}\ndaemon log:\n{}\nstrongSwan log:\n{}",
                    self.json(&["status"]),
                    self.tunnel(),
                    tail(&self.daemon_log(), 40),
                    tail(&self.charon.as_ref().map(|c| c.log()).unwrap_or_default(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A device certificate (and key) for `serial` from the lab's device CA.
    pub fn device_cert(&self, serial: &str) -> LabCert {
        self.pki.issue_client(serial)
    }

    fn h3(&self, mode: &str, cert: &LabCert, authority: &str, extra: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.device.name, "python3"])
            .arg(&self.bins.h3_client)
            .args([
                mode,
                "--host",
                RELAY,
                "--port",
                "443",
                "--server-name",
                "relay.attestgate.lab",
            ])
            .arg("--ca")
            .arg(self.path("relay-ca.crt"))
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key)
            .args(["--authority", authority])
            .args(extra);
        c
    }

    /// One CONNECT from the device namespace to `authority`, sending `payload` and reading
    /// until the target ends: the client's JSON (`status`, `proxy_status`, `received_text`
    /// which starts with the target's `seen …` line, or `connect_error`).
    pub fn connect(&self, cert: &LabCert, authority: &str, payload: &str) -> Value {
        let out = self
            .h3(
                "connect",
                cert,
                authority,
                &["--payload", payload, "--timeout", "10"],
            )
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "h3_client: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// A device holding a busy CONNECT to `authority` for at most `secs`.
    pub fn hold(&self, cert: &LabCert, authority: &str, secs: u32) -> HeldStream {
        let mut child = self
            .h3("hold", cert, authority, &["--timeout", &secs.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = json_lines(child.stdout.take().unwrap());
        HeldStream {
            _proc: Proc(child),
            lines,
        }
    }

    /// Everything `host` recorded so far (JSON lines).
    pub fn seen(&self, host: Host) -> Vec<Value> {
        let file = match host {
            Host::Lan => "lan.jsonl",
            Host::Idp => "idp.jsonl",
        };
        std::fs::read_to_string(self.path(file))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The source address of the TCP connection `host` recorded from source port `port`
    /// (read from the `seen ADDR:PORT` line a CONNECT received), or of its last one.
    pub fn tcp_source(&self, host: Host, received_text: &str) -> Option<String> {
        let seen = received_text
            .strip_prefix("seen ")?
            .split_whitespace()
            .next()?;
        let (addr, port) = seen.rsplit_once(':')?;
        let port: u64 = port.parse().ok()?;
        self.seen(host)
            .iter()
            .find(|e| e["kind"] == "tcp" && e["port"] == port && e["source"] == addr)
            .and_then(|e| e["source"].as_str().map(str::to_string))
    }

    /// Moves Jamf computer `id` into (or out of) the compliant smart group and sends Jamf's
    /// webhook to the appliance's admin listener; returns when the webhook was sent (ms since
    /// the epoch) and the listener's HTTP status.
    pub fn set_compliant(&mut self, id: u32, compliant: bool) -> (f64, u64) {
        let verb = if compliant { "join" } else { "leave" };
        self.mdm.command(&format!("{verb} 1 {id}"));
        let (added, removed) = if compliant {
            (id.to_string(), "-".to_string())
        } else {
            ("-".to_string(), id.to_string())
        };
        let sent = now_ms();
        let r = self.mdm.command(&format!(
            "webhook https://{ADMIN}/webhooks/jamf {} {WEBHOOK_HEADER}:{} SmartGroupComputerMembershipChange 1 {added} {removed}",
            self.path("relay-ca.crt").display(),
            webhook_token(self.dir.path()),
        ));
        (sent, r["status"].as_u64().unwrap_or(0))
    }

    /// strongSwan's `--list-sas --raw`.
    pub fn peer_sas(&self) -> String {
        self.charon
            .as_ref()
            .map(|c| c.list_sas())
            .unwrap_or_default()
    }

    /// ESP packets strongSwan received and sent on its installed child SAs.
    pub fn peer_esp_packets(&self) -> (u64, u64) {
        let sas = self.peer_sas();
        (counter(&sas, "packets-in="), counter(&sas, "packets-out="))
    }

    /// Kills strongSwan (its SAs and ipsec0 vanish) and starts it again with the same
    /// configuration.
    pub fn restart_peer(&mut self) {
        drop(self.charon.take());
        std::thread::sleep(Duration::from_millis(300));
        self.charon = Some(Charon::start(
            &self.peer,
            &crate::daemon::corp_peer(self.psk.clone()),
        ));
    }

    /// What of attestgate's own is still configured in the appliance namespace: policy rules
    /// beyond the three defaults, routes with routing protocol 245 or into the NAT pool, pool
    /// addresses.
    pub fn leftovers(&self) -> Vec<String> {
        let text =
            |args: &[&str]| String::from_utf8_lossy(&self.appliance.ip(args).stdout).to_string();
        let mut left = Vec::new();
        for l in text(&["rule", "show"]).lines() {
            let default = [
                "from all lookup local",
                "from all lookup main",
                "from all lookup default",
            ]
            .iter()
            .any(|d| l.trim_end().ends_with(d));
            if !default {
                left.push(format!("rule: {l}"));
            }
        }
        for l in text(&["route", "show", "table", "all"]).lines() {
            if l.contains("proto 245") || l.contains(POOL_PREFIX) {
                left.push(format!("route: {l}"));
            }
        }
        for l in text(&["-o", "addr", "show"]).lines() {
            if l.contains(&format!("inet {POOL_PREFIX}")) {
                left.push(format!("address: {l}"));
            }
        }
        left
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // the daemon first, so it stops before its namespace goes away
        drop(self.daemon.take());
        drop(self.charon.take());
        // the namespaces (and what still runs in them) and the folder go with the fields
    }
}

fn counter(text: &str, key: &str) -> u64 {
    text.match_indices(key)
        .filter_map(|(i, _)| {
            let rest = &text[i + key.len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            rest[..end].parse::<u64>().ok()
        })
        .sum()
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The LAN host's interface towards the peer (its only one besides lo).
fn lan_ifname(lan: &Netns) -> String {
    let out = String::from_utf8_lossy(&lan.ip(&["-o", "link", "show"]).stdout).to_string();
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .find(|n| n != "lo")
        .unwrap()
}

/// The admin listener's webhook token, written once per lab.
fn webhook_token(dir: &Path) -> String {
    let path = dir.join("webhook.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return t.trim().to_string();
    }
    let token = format!("lab-{:016x}", fastrand::u64(..));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    token
}

/// `config/examples/lab.toml` for this lab: its files in `d`, devices from the lab CA, the
/// compliance source the Jamf stand-in (`hello`) with its webhook on the admin listener,
/// `idp.lab` resolved by the internet egresses, liveness checks every 2 s.
fn lab_toml(d: &Path, pki: &LabPki, hello: &Value) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("config/examples/lab.toml")).unwrap();
    let ds = d.display().to_string();
    let text = text.replace("/run/attestgate-lab", &ds);
    let text = replace_once(
        text,
        &format!("device_ca = [\"{ds}/device-ca.crt\"]"),
        &format!("device_ca = [\"{}\"]", pki.ca.display()),
    );
    let text = replace_once(text, "dpd_interval = \"10s\"", "dpd_interval = \"2s\"");
    let text = replace_once(
        text,
        "source_addresses = [\"203.0.113.30\", \"203.0.113.31\"]\n",
        &format!("source_addresses = [\"203.0.113.30\", \"203.0.113.31\"]\n[egress.idp-pair.hosts]\n\"idp.lab\" = \"{IDP}\"\n"),
    );
    let text = replace_once(
        text,
        "source_address = \"203.0.113.10\"\n",
        &format!(
            "source_address = \"203.0.113.10\"\n[egress.public.hosts]\n\"idp.lab\" = \"{IDP}\"\n"
        ),
    );
    webhook_token(d);
    replace_once(
        text,
        &format!("[compliance.sources.lab]\ntype = \"file\"\npath = \"{ds}/devices.toml\"\n"),
        &format!(
            "[compliance.sources.jamf]\ntype = \"jamf-pro\"\nurl = \"{url}\"\nclient_id = \"{id}\"\n\
             client_secret_file = \"{secret}\"\ncomputer_groups = [1]\nrisk_attribute = \"Risk\"\n\n\
             [compliance.webhook]\nlisten = \"{ADMIN}\"\ncertificate = \"{ds}/relay.crt\"\n\
             private_key = \"{ds}/relay.key\"\nauth = \"header\"\nheader_name = \"{WEBHOOK_HEADER}\"\n\
             token_file = \"{ds}/webhook.token\"\n",
            url = hello["url"].as_str().unwrap(),
            id = hello["client_id"].as_str().unwrap(),
            secret = hello["client_secret_file"].as_str().unwrap(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_addresses_and_sa_counters() {
        assert!(in_pool("198.18.100.0") && in_pool("198.18.100.63"));
        assert!(!in_pool("198.18.100.64") && !in_pool("198.18.1.5") && !in_pool("198.18.100.x"));
        let sas = "lab { packets-in=12 packets-out=3 } lab2 { packets-in=5 packets-out=0 }";
        assert_eq!(counter(sas, "packets-in="), 17);
        assert_eq!(counter(sas, "packets-out="), 3);
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
