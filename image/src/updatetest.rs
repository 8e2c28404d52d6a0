//! `image update-test`: the A/B update and its fallback, end to end under qemu (TCG, OVMF, the
//! image's own systemd-boot). One guest, reboots inside the same qemu:
//!
//! 1. boot the built image with a NoCloud seed (the smoke configuration and an SSH key):
//!    healthy, slot a, its entry blessed (boot counter gone);
//! 2. over SSH, `attestgate update apply` the good bundle (an attached disk), reboot: healthy
//!    on slot b with the bundle's version, its entry blessed;
//! 3. apply a deliberately broken bundle (its attestgate does not run) with one try, reboot:
//!    the boot check finds it bad and reboots, systemd-boot counts the entry bad and boots slot
//!    b again: healthy, the good version, the broken entry listed as bad.

use crate::cmd::{self, io, Result};
use crate::smoke;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Options {
    pub image: PathBuf,
    pub good: PathBuf,
    pub broken: PathBuf,
    pub work: PathBuf,
    /// Per boot: from reset to the health report.
    pub boot_timeout: Duration,
    /// UEFI (OVMF, systemd-boot) or legacy BIOS (SeaBIOS, GRUB).
    pub firmware: smoke::Firmware,
}

/// The guest, its serial console as lines, and SSH into it.
struct Guest {
    child: std::process::Child,
    qmp: PathBuf,
    rx: mpsc::Receiver<String>,
    log: std::fs::File,
    started: Instant,
    ssh: Vec<String>,
}

impl Guest {
    /// The next console line containing `marker` (the text after it), within `within`.
    fn wait_for(&mut self, markers: &[&str], within: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match self.rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => {
                    return Err(cmd::Error::Other(format!(
                        "no console line with {markers:?} within {} s (serial log {})",
                        within.as_secs(),
                        self.qmp.with_file_name("serial.log").display()
                    )))
                }
            };
            let _ = writeln!(
                self.log,
                "[{:6.1}s] {line}",
                self.started.elapsed().as_secs_f64()
            );
            let text = line
                .rsplit('\r')
                .next()
                .unwrap_or(&line)
                .trim_start_matches(|c: char| c.is_control());
            for (i, m) in markers.iter().enumerate() {
                if let Some(rest) = smoke::find(text, m) {
                    return Ok((i, rest.to_string()));
                }
            }
        }
    }

    /// Waits for this boot's health report; returns the time it took and whether healthy.
    fn wait_health(&mut self, within: Duration) -> Result<(Duration, bool)> {
        let t = Instant::now();
        let mut healthy = false;
        let mut failed = None;
        loop {
            let (i, rest) = self.wait_for(
                &[
                    "attestgate-health: HEALTHY",
                    "attestgate-health: UNHEALTHY",
                    "attestgate-health: failed units: ",
                    "attestgate-health: END",
                ],
                within.saturating_sub(t.elapsed()),
            )?;
            match i {
                0 => healthy = true,
                1 => eprintln!("update-test: unhealthy:{rest}"),
                2 => failed = rest.trim().parse::<usize>().ok(),
                _ => break,
            }
        }
        if failed != Some(0) {
            eprintln!("update-test: failed units: {failed:?}");
        }
        Ok((t.elapsed(), healthy && failed == Some(0)))
    }

    /// Runs a command on the guest over SSH; its standard output.
    fn ssh(&mut self, command: &str) -> Result<String> {
        let out = Command::new("ssh")
            .args(&self.ssh)
            .arg(command)
            .output()
            .map_err(io(Path::new("ssh")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let _ = writeln!(
            self.log,
            "[{:6.1}s] host$ ssh {command}\n{stdout}{stderr}[exit {}]",
            self.started.elapsed().as_secs_f64(),
            out.status
        );
        if !out.status.success() {
            return Err(cmd::Error::Tool {
                tool: format!("ssh guest {command}"),
                reason: format!("{}\n{stdout}{stderr}", out.status),
            });
        }
        eprint!(
            "{}",
            stderr
                .lines()
                .map(|l| format!("  guest: {l}\n"))
                .collect::<String>()
        );
        Ok(stdout)
    }

    /// `attestgate update status --json`, polled until `ok` holds (blessing runs just after
    /// the health report).
    fn status_until(
        &mut self,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        let until = Instant::now() + Duration::from_secs(90);
        loop {
            let out = self.ssh("attestgate update status --json")?;
            let v: serde_json::Value = serde_json::from_str(&out)
                .map_err(|e| cmd::Error::Other(format!("update status --json: {e}: {out}")))?;
            if ok(&v) {
                return Ok(v);
            }
            if Instant::now() > until {
                return Err(cmd::Error::Other(format!(
                    "update status never showed {what}: {v}"
                )));
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }
}

/// The boot counting state of a slot as `update status --json` shows it: the UEFI boot entry's
/// (systemd-boot), or the slot's in GRUB's env block (legacy BIOS).
fn slot_state(
    firmware: smoke::Firmware,
    s: &serde_json::Value,
    entry_prefix: &str,
    slot: char,
) -> String {
    match firmware {
        smoke::Firmware::Uefi => entry(s, entry_prefix)
            .and_then(|e| e["state"].as_str())
            .unwrap_or("missing")
            .to_string(),
        smoke::Firmware::Bios => {
            let bios = s["bios"].as_str().unwrap_or("");
            let key = format!("{slot}: ");
            bios.split(", ")
                .find_map(|p| p.strip_prefix(key.as_str()))
                .map(|v| v.split(' ').next().unwrap_or("").to_string())
                .unwrap_or_else(|| "missing".into())
        }
    }
}

fn entry<'a>(status: &'a serde_json::Value, file_prefix: &str) -> Option<&'a serde_json::Value> {
    status["entries"].as_array()?.iter().find(|e| {
        e["file"]
            .as_str()
            .is_some_and(|f| f.starts_with(file_prefix))
    })
}

/// The version a bundle's manifest names.
fn bundle_version(bundle: &Path) -> Result<String> {
    let f = std::fs::File::open(bundle).map_err(io(bundle))?;
    let mut a = tar::Archive::new(f);
    let mut entries = a.entries().map_err(io(bundle))?;
    let mut first = entries
        .next()
        .ok_or_else(|| cmd::Error::Other(format!("{}: empty", bundle.display())))?
        .map_err(io(bundle))?;
    let json = crate::update::bundle::read_small(
        &mut first,
        crate::update::bundle::MANIFEST,
        crate::update::bundle::MAX_MANIFEST,
    )
    .map_err(|e| cmd::Error::Other(e.to_string()))?;
    let m: crate::update::bundle::Manifest =
        serde_json::from_slice(&json).map_err(|e| cmd::Error::Other(e.to_string()))?;
    Ok(m.version)
}

#[derive(Debug, Default)]
pub struct Report {
    pub phases: Vec<(String, Duration)>,
}

pub fn run(opts: &Options) -> Result<Report> {
    let work = &opts.work;
    crate::rootfs::remove_tree(work)?;
    std::fs::create_dir_all(work).map_err(io(work))?;
    let good_version = bundle_version(&opts.good)?;
    let broken_version = bundle_version(&opts.broken)?;
    let key = work.join("id_ed25519");
    cmd::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "update-test", "-f"])
            .arg(&key),
    )?;
    let public = std::fs::read_to_string(key.with_extension("pub")).map_err(io(&key))?;
    let seed = smoke::seed(work, smoke::SMOKE_CONFIG, Some(&public))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(io(Path::new("127.0.0.1:0")))?
        .port();
    let image = std::fs::canonicalize(&opts.image).map_err(io(&opts.image))?;
    let overlay = work.join("overlay.qcow2");
    cmd::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&image)
            .arg(&overlay)
            .arg("4G"),
    )?;
    let qmp = work.join("qmp.sock");
    let mut c = smoke::qemu(work, opts.firmware, 1, &qmp)?;
    // bootindex: SeaBIOS boots the first disk it finds, and the bundle disks below come first
    // on the PCI bus
    c.arg("-drive")
        .arg(format!(
            "if=none,id=root,file={},format=qcow2",
            overlay.display()
        ))
        .arg("-device")
        .arg("virtio-blk-pci,drive=root,bootindex=0")
        .arg("-drive")
        .arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ))
        .arg("-nic")
        .arg(format!(
            "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{port}-:22"
        ))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    // the bundles as disks, found in the guest by their serial numbers
    for (id, file) in [("good", &opts.good), ("broken", &opts.broken)] {
        let file = std::fs::canonicalize(file).map_err(io(file))?;
        c.arg("-drive")
            .arg(format!(
                "if=none,id={id},file={},format=raw,readonly=on",
                file.display()
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive={id},serial={id}-bundle"));
    }
    let serial_log = work.join("serial.log");
    let log = std::fs::File::create(&serial_log).map_err(io(&serial_log))?;
    let (child, rx, reader) = smoke::spawn_console(&mut c)?;
    let mut g = Guest {
        child,
        qmp: qmp.clone(),
        rx,
        log,
        started: Instant::now(),
        ssh: [
            "-i",
            &key.to_string_lossy(),
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=20",
            "-o",
            "LogLevel=ERROR",
            "root@127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    };
    let result = scenario(&mut g, opts, &good_version, &broken_version);
    smoke::power_off(&qmp, &mut g.child);
    drop(g);
    let _ = reader.join();
    result
}

fn scenario(
    g: &mut Guest,
    opts: &Options,
    good_version: &str,
    broken_version: &str,
) -> Result<Report> {
    let mut r = Report::default();
    let step = |r: &mut Report, name: &str, t: Instant| {
        eprintln!("update-test: {name}: {:.1} s", t.elapsed().as_secs_f64());
        r.phases.push((name.to_string(), t.elapsed()));
    };
    let fail = |what: String| cmd::Error::Other(format!("update test: {what}"));

    // 1. the image as built
    let t = Instant::now();
    let (_, healthy) = g.wait_health(opts.boot_timeout)?;
    if !healthy {
        return Err(fail("the built image did not boot healthy".into()));
    }
    step(&mut r, "boot the built image to healthy (slot a)", t);
    let s = g.status_until("slot a's entry blessed", |s| {
        slot_state(opts.firmware, s, "attestgate-1-a", 'a') == "good"
    })?;
    if s["running_slot"] != "a" {
        return Err(fail(format!(
            "running slot {} after the first boot",
            s["running_slot"]
        )));
    }
    eprintln!(
        "update-test: slot a running, its entry blessed:\n{}",
        g.ssh("attestgate update status")?
    );

    // 2. the good update
    let t = Instant::now();
    let out = g.ssh("attestgate update apply /dev/disk/by-id/virtio-good-bundle")?;
    eprintln!("update-test: {}", out.trim());
    step(
        &mut r,
        "apply the good bundle (verify, write slot b, read back)",
        t,
    );
    let s = g.ssh("attestgate update status --json")?;
    if !s.contains("attestgate-2-b+3.efi") {
        return Err(fail(format!(
            "no counted entry for slot b after apply: {s}"
        )));
    }
    let t = Instant::now();
    g.ssh("systemctl --no-block reboot")?;
    g.wait_for(&["attestgate-firstboot: "], opts.boot_timeout)?;
    let (_, healthy) = g.wait_health(opts.boot_timeout)?;
    if !healthy {
        return Err(fail("the good update did not boot healthy".into()));
    }
    step(&mut r, "reboot into slot b to healthy", t);
    let s = g.status_until("slot b running and blessed", |s| {
        s["running_slot"] == "b" && slot_state(opts.firmware, s, "attestgate-2-b", 'b') == "good"
    })?;
    if s["running_version"] != good_version {
        return Err(fail(format!(
            "slot b runs {} instead of {good_version}",
            s["running_version"]
        )));
    }
    eprintln!(
        "update-test: updated to {good_version}:\n{}",
        g.ssh("attestgate update status")?
    );

    // 3. the broken update, one try
    let t = Instant::now();
    g.ssh("attestgate update apply --tries 1 /dev/disk/by-id/virtio-broken-bundle")?;
    step(&mut r, "apply the broken bundle (slot a, 1 try)", t);
    let t = Instant::now();
    g.ssh("systemctl --no-block reboot")?;
    let (_, why) = g.wait_for(&["attestgate-boot-check: BAD BOOT: "], opts.boot_timeout)?;
    eprintln!("update-test: the broken version's boot check: BAD BOOT: {why}");
    step(
        &mut r,
        "reboot into the broken version until its boot check fails",
        t,
    );
    let t = Instant::now();
    // the next boot's first line of ours: the broken boot's own health report is behind us
    g.wait_for(&["attestgate-firstboot: "], opts.boot_timeout)?;
    let (_, healthy) = g.wait_health(opts.boot_timeout)?;
    if !healthy {
        return Err(fail(
            "after the broken update the appliance did not come back healthy".into(),
        ));
    }
    step(&mut r, "fall back to slot b by itself, to healthy", t);
    let s = g.status_until("the broken entry counted bad", |s| {
        slot_state(opts.firmware, s, "attestgate-3-a", 'a') == "bad"
    })?;
    if s["running_slot"] != "b" || s["running_version"] != good_version {
        return Err(fail(format!(
            "after the fallback: slot {} version {} (want b, {good_version})",
            s["running_slot"], s["running_version"]
        )));
    }
    if entry(&s, "attestgate-3-a").and_then(|e| e["version"].as_str()) != Some(broken_version) {
        return Err(fail(format!(
            "the bad entry is not the broken version: {s}"
        )));
    }
    eprintln!(
        "update-test: back on {good_version}, the broken {broken_version} counted bad:\n{}",
        g.ssh("attestgate update status")?
    );
    Ok(r)
}

pub fn print_report(r: &Report, total: Duration) {
    println!("image update-test: PASS");
    for (name, took) in &r.phases {
        println!("  {:>6.1} s  {name}", took.as_secs_f64());
    }
    println!("  {:>6.1} s  whole run", total.as_secs_f64());
}
