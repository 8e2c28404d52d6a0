//! The daemon end to end through its CLI: start on the lab configuration (files made by
//! `tests/lab/files.sh`), status, live what-if, a valid apply (seen in status), an invalid one
//! (refused, old configuration still active and the file on disk untouched), apply of another
//! file, SIGHUP, a second daemon refused, SIGTERM → clean exit with the socket removed.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_attestgate");

/// Kills the daemon if a test fails half-way.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Lab {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .arg(root.join("tests/lab/files.sh"))
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            status.success(),
            "tests/lab/files.sh failed (is openssl installed?)"
        );
        let text = std::fs::read_to_string(root.join("config/examples/lab.toml")).unwrap();
        let config = dir.path().join("attestgate.toml");
        std::fs::write(
            &config,
            text.replace("/run/attestgate-lab", &dir.path().display().to_string()),
        )
        .unwrap();
        Lab { dir, config }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.cli(&[&["--json"], args].concat());
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v.get("result").cloned().unwrap_or(v)
    }

    fn start(&self) -> Daemon {
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(["run", "--log-level", "debug"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let d = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.cli(&["status"]).status.success() {
                return d;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "daemon did not answer on {} within 20 s",
            self.socket().display()
        );
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemon_lifecycle_apply_refuse_reload_stop() {
    let lab = Lab::new();
    let mut daemon = lab.start();

    // the socket is root/owner only
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.socket())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let status = lab.json(&["status"]);
    assert_eq!(status["config"]["generation"], 1);
    assert_eq!(status["compliance"]["devices"], 3);
    assert_eq!(status["compliance"]["sources"][0]["state"], "ok");
    let digest1 = status["config"]["digest"].as_str().unwrap().to_string();

    // live what-if from the device table
    let w = lab.json(&[
        "whatif",
        "--device",
        "c02lab0001",
        "--target",
        "login.idp.lab:443",
    ]);
    assert_eq!(w["decision"]["verdict"]["egress"], "idp-pair");
    assert_eq!(w["decision"]["verdict"]["trusted"], true);
    let w = lab.json(&[
        "whatif",
        "--device",
        "DMPLAB0002",
        "--target",
        "login.idp.lab:443",
    ]);
    assert_eq!(w["decision"]["verdict"]["egress"], "public");
    assert_eq!(w["decision"]["verdict"]["trusted"], false);
    assert!(
        w["why"].as_str().unwrap().contains("no compliant group"),
        "{w}"
    );
    let w = lab.json(&[
        "whatif",
        "--device",
        "UNKNOWN999",
        "--target",
        "app.corp.lab:443",
    ]);
    assert_eq!(w["decision"]["verdict"]["outcome"], "deny");
    let human = lab.cli(&[
        "whatif",
        "--device",
        "C02LAB0003",
        "--target",
        "idp.lab:443",
    ]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("FAIL  risk        risk high over max medium"),
        "{text}"
    );
    assert!(
        text.contains("decision: public (public, untrusted)"),
        "{text}"
    );

    // a valid change: the idp policy now takes high-risk devices too
    let original = std::fs::read_to_string(&lab.config).unwrap();
    let changed = original.replacen("max_risk = \"medium\"", "max_risk = \"high\"", 1);
    assert_ne!(changed, original);
    std::fs::write(&lab.config, &changed).unwrap();
    let out = lab.cli(&["config", "apply"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied: generation 2"));
    let status = lab.json(&["status"]);
    assert_eq!(status["config"]["generation"], 2);
    assert_ne!(status["config"]["digest"].as_str().unwrap(), digest1);
    let w = lab.json(&[
        "whatif",
        "--device",
        "C02LAB0003",
        "--target",
        "idp.lab:443",
    ]);
    assert_eq!(w["decision"]["verdict"]["egress"], "idp-pair", "{w}");

    // an invalid change: refused with line:column, the running configuration stays
    let bad = lab.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        changed.replacen("egress = \"idp-pair\"", "egress = \"idp-pear\"", 1),
    )
    .unwrap();
    let out = lab.cli(&["config", "apply", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown egress `idp-pear`") && err.contains("did you mean `idp-pair`?"),
        "{err}"
    );
    assert!(err.contains(&format!("{}:", bad.display())), "{err}");
    assert!(err.contains("still running generation 2"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&lab.config).unwrap(),
        changed,
        "the configuration file was touched"
    );
    let status = lab.json(&["status"]);
    assert_eq!(status["config"]["generation"], 2);
    assert_eq!(status["last_apply"]["ok"], false);

    // applying another valid file installs it as the daemon's configuration
    let next = lab.dir.path().join("next.toml");
    let next_text = changed.replacen("refresh_interval = \"1m\"", "refresh_interval = \"2m\"", 1);
    std::fs::write(&next, &next_text).unwrap();
    let out = lab.cli(&["config", "apply", next.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&lab.config).unwrap(), next_text);
    assert_eq!(lab.json(&["status"])["config"]["generation"], 3);

    // SIGHUP re-reads the file
    signal(&daemon.0, "HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.json(&["status"])["config"]["generation"] != 4 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }

    // a second daemon does not steal the socket
    let second = Command::new(BIN)
        .arg("-c")
        .arg(&lab.config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another attestgate daemon"));
    assert_eq!(lab.json(&["status"])["config"]["generation"], 4);

    // SIGTERM: clean exit, socket gone, events recorded
    signal(&daemon.0, "TERM");
    let status = wait_exit(&mut daemon.0, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(!lab.socket().exists());
    let events = std::fs::read_to_string(lab.dir.path().join("events.jsonl")).unwrap();
    let all: Vec<Value> = events
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect();
    // the lab's tunnel cannot bind its address outside the lab's namespaces: one error, not a
    // stream of them
    let tunnel: Vec<&Value> = all
        .iter()
        .filter(|e| e["event"].as_str().unwrap().starts_with("tunnel."))
        .collect();
    assert_eq!(tunnel.len(), 1, "{tunnel:?}");
    assert_eq!(tunnel[0]["event"], "tunnel.error");
    assert!(
        tunnel[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot bind 203.0.113.10"),
        "{tunnel:?}"
    );
    // nor can its relay bind 198.51.100.1:443: one error, repeated applies do not repeat it
    let relay: Vec<&Value> = all
        .iter()
        .filter(|e| e["event"].as_str().unwrap().starts_with("relay."))
        .collect();
    assert_eq!(relay.len(), 1, "{relay:?}");
    assert!(
        relay[0]["error"]
            .as_str()
            .unwrap()
            .contains("198.51.100.1:443"),
        "{relay:?}"
    );
    let kinds: Vec<String> = all
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .filter(|k| {
            !k.starts_with("tunnel.") && !k.starts_with("relay.") && !k.starts_with("compliance.")
        })
        .collect();
    // the first sync made the lab's three devices known, one compliance.changed each
    let changed = all
        .iter()
        .filter(|e| e["event"] == "compliance.changed")
        .count();
    assert_eq!(changed, 3, "{all:?}");
    assert_eq!(
        kinds,
        [
            "daemon.started",
            "config.applied",
            "config.refused",
            "config.applied",
            "config.applied",
            "daemon.stopped"
        ]
    );
    let out = lab.cli(&["status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn daemon_refuses_to_start_on_an_invalid_configuration() {
    let lab = Lab::new();
    std::fs::remove_file(lab.dir.path().join("corp.psk")).unwrap();
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&lab.config)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("egress.corp.psk_file") && err.contains("does not exist"),
        "{err}"
    );
    assert!(!lab.socket().exists());
}

#[test]
fn config_check_names_every_mistake_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("config/examples/lab.toml")).unwrap();
    let bad = text
        .replacen("nat_mode = \"per-device\"", "nat_mod = \"per-device\"", 1)
        .replacen("egress = \"idp-pair\"", "egress = \"idp-pear\"", 1)
        .replacen(
            "remote_ts = [\"198.19.0.0/24\"]",
            "remote_ts = [\"198.19.0.0/33\"]",
            1,
        );
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, &bad).unwrap();
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    let pos = |needle: &str| {
        let at = bad.find(needle).unwrap();
        let line = bad[..at].lines().count() + usize::from(bad[..at].ends_with('\n'));
        let col = at - bad[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
        format!("{}:{line}:{col}: error:", file.display())
    };
    for (needle, what) in [
        ("nat_mod =", "egress.corp.nat_mod: unknown key"),
        ("\"idp-pear\"", "unknown egress `idp-pear`"),
        ("\"198.19.0.0/33\"", "is not a valid CIDR"),
    ] {
        let p = pos(needle);
        assert!(
            err.lines().any(|l| l.starts_with(&p) && l.contains(what)),
            "missing `{p} … {what}` in:\n{err}"
        );
    }
    assert!(err.contains("did you mean `nat_mode`?"), "{err}");
    let out = Command::new(BIN)
        .args(["--json", "config", "check"])
        .arg(&file)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["ok"], false);
    assert_eq!(
        v[0]["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["severity"] == "error")
            .count(),
        3
    );
}

#[test]
fn the_cli_documents_itself() {
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("whatif"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("attestgate-whatif.1")).unwrap();
    assert!(page.contains(".TH"), "not a man page");
    let out = Command::new(BIN)
        .args(["whatif", "--device"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN).args(["version"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("attestgate {}", env!("CARGO_PKG_VERSION"))
    );
}
