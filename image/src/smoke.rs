//! `image smoke`: boots the built image under qemu (TCG; OVMF UEFI and the image's own
//! systemd-boot, or qemu's SeaBIOS and the image's GRUB) with a NoCloud seed carrying a small valid configuration, waits for the
//! health lines `attestgate-health` prints on the serial console, fails on any failed unit,
//! and powers the guest off.

use crate::cmd::{self, io, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const TARGET_BOOT_TO_HEALTHY: Duration = Duration::from_secs(60);

/// The configuration the smoke test's seed carries: the relay with a throw-away certificate,
/// the implicit public egress, no compliance sources (every device unknown: closed).
pub const SMOKE_CONFIG: &str = "\
# attestgate smoke test (`image smoke`): a throw-away relay certificate, no compliance source.
[appliance]
name = \"smoke\"

[relay]
certificate = \"/etc/attestgate/relay.crt\"
private_key = \"/etc/attestgate/relay.key\"
device_ca = [\"/etc/attestgate/device-ca.crt\"]
";

#[derive(Debug, Clone)]
pub struct Options {
    pub image: PathBuf,
    pub work: PathBuf,
    /// Give up after this long without the health report.
    pub timeout: Duration,
    /// user-data for the seed (default: [`SMOKE_CONFIG`]); None in `no_seed` runs.
    pub user_data: Option<String>,
    pub no_seed: bool,
    pub smp: u32,
    pub firmware: Firmware,
}

/// The firmware the guest boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// OVMF (pflash): systemd-boot and the slot's UKI.
    Uefi,
    /// qemu's default SeaBIOS: the MBR's GRUB boot code, grub.cfg on the ESP.
    Bios,
}

/// What the boot must show for the smoke test to pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Expect {
    /// The daemon answers `attestgate status`; no failed unit.
    Healthy,
    /// The seed's configuration is refused on the console; the daemon stays stopped.
    Refused,
    /// No configuration: the console says how to configure; no failed unit.
    Unconfigured,
}

#[derive(Debug, Default)]
pub struct Outcome {
    pub healthy_after: Option<Duration>,
    pub unhealthy: Option<String>,
    pub not_configured: bool,
    pub refused: Vec<String>,
    pub failed_units: Option<usize>,
    pub failed_lines: Vec<String>,
    pub report_after: Option<Duration>,
    pub serial_log: PathBuf,
    pub firmware: Option<Firmware>,
    /// GRUB's `attestgate-grub:` lines (BIOS boots).
    pub grub_lines: Vec<String>,
    /// The health report's "boot firmware ..." line: how the guest says it was booted.
    pub boot: Option<String>,
    /// The ESP's /bios/grubenv read back from the overlay after the guest stopped (BIOS).
    pub grubenv_after: Option<std::result::Result<String, String>>,
}

impl Outcome {
    pub fn passed(&self, expect: Expect) -> bool {
        // The guest must have come up the way asked: a BIOS run through the image's GRUB, with
        // its command line markers.
        if let Some(fw) = self.firmware {
            let boot = self.boot.as_deref().unwrap_or("");
            let ok = match fw {
                Firmware::Uefi => boot.starts_with("uefi"),
                Firmware::Bios => {
                    boot.starts_with("bios")
                        && boot.contains("attestgate.boot=bios")
                        && self
                            .grub_lines
                            .iter()
                            .any(|l| l.starts_with("booting slot"))
                }
            };
            if !ok {
                return false;
            }
        }
        let reported = self.report_after.is_some();
        match expect {
            Expect::Healthy => self.healthy_after.is_some() && self.failed_units == Some(0),
            Expect::Refused => {
                reported
                    && self.healthy_after.is_none()
                    && !self.refused.is_empty()
                    && self.failed_lines.len() == 1
                    && self.failed_lines[0].starts_with("attestgate-firstboot.service")
            }
            Expect::Unconfigured => {
                reported
                    && self.healthy_after.is_none()
                    && self.not_configured
                    && self.refused.is_empty()
                    && self.failed_units == Some(0)
            }
        }
    }
}

pub(crate) fn ovmf() -> Result<(PathBuf, PathBuf)> {
    for (code, vars) in [
        (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "/usr/share/OVMF/OVMF_CODE.fd",
            "/usr/share/OVMF/OVMF_VARS.fd",
        ),
    ] {
        if Path::new(code).is_file() && Path::new(vars).is_file() {
            return Ok((code.into(), vars.into()));
        }
    }
    Err(cmd::Error::Other(
        "OVMF firmware not found in /usr/share/OVMF (install ovmf)".into(),
    ))
}

/// qemu under TCG (q35, one CPU unless told) with the serial console on stdout, a QMP socket
/// and the firmware: OVMF on pflash (a private copy of its variables) or qemu's SeaBIOS. The
/// caller adds the disks and the network.
pub(crate) fn qemu(work: &Path, firmware: Firmware, smp: u32, qmp: &Path) -> Result<Command> {
    let mut c = cmd::nice("qemu-system-x86_64");
    c.args([
        "-accel", "tcg", "-machine", "q35", "-cpu", "max", "-m", "1024",
    ])
    .args(["-smp", &smp.to_string()])
    .args(["-nodefaults", "-display", "none", "-serial", "stdio"])
    .arg("-qmp")
    .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    if firmware == Firmware::Uefi {
        let (code, vars_src) = ovmf()?;
        let vars = work.join("OVMF_VARS.fd");
        std::fs::copy(&vars_src, &vars).map_err(io(&vars))?;
        c.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    Ok(c)
}

/// Starts qemu; its serial console arrives as lines on the channel (the thread ends with it).
pub(crate) fn spawn_console(
    c: &mut Command,
) -> Result<(
    std::process::Child,
    mpsc::Receiver<String>,
    std::thread::JoinHandle<()>,
)> {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(io(Path::new("qemu-system-x86_64")))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        return Err(cmd::Error::Other("qemu: no stdout".into()));
    };
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });
    Ok((child, rx, reader))
}

/// A FAT seed labelled CIDATA: meta-data (with `ssh_key` as its `public-keys`), user-data and
/// `attestgate/` (certificate, key, CA).
pub(crate) fn seed(work: &Path, user_data: &str, ssh_key: Option<&str>) -> Result<PathBuf> {
    let files = work.join("seed");
    crate::rootfs::remove_tree(&files)?;
    std::fs::create_dir_all(files.join("attestgate")).map_err(io(&files))?;
    let key = files.join("attestgate/relay.key");
    let crt = files.join("attestgate/relay.crt");
    cmd::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args([
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=attestgate-smoke",
                "-keyout",
            ])
            .arg(&key)
            .arg("-out")
            .arg(&crt),
    )?;
    std::fs::copy(&crt, files.join("attestgate/device-ca.crt")).map_err(io(&crt))?;
    let instance = format!(
        "smoke-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    std::fs::write(
        files.join("meta-data"),
        format!(
            "instance-id: {instance}\nlocal-hostname: attestgate-smoke\n{}",
            ssh_key
                .map(|k| format!("public-keys:\n  - {}\n", k.trim()))
                .unwrap_or_default()
        ),
    )
    .map_err(io(&files))?;
    std::fs::write(files.join("user-data"), user_data).map_err(io(&files))?;
    let img = work.join("seed.img");
    let _ = std::fs::remove_file(&img);
    cmd::run(
        Command::new("mkfs.fat")
            .args(["-n", "CIDATA", "-C"])
            .arg(&img)
            .arg("2048"),
    )?;
    let i = img.to_string_lossy().into_owned();
    cmd::run(
        Command::new("mcopy")
            .args(["-s", "-i", &i])
            .args([
                files.join("meta-data"),
                files.join("user-data"),
                files.join("attestgate"),
            ])
            .arg("::"),
    )?;
    Ok(img)
}

/// The qemu format of a base image, by its extension: the build's raw, fixed VHD (qemu's `vpc`;
/// a fixed VHD has no header, so probing would take it for raw) or VMDK; qcow2 otherwise.
fn backing_format(image: &Path) -> &'static str {
    match image.extension().and_then(|e| e.to_str()) {
        Some("raw") => "raw",
        Some("vhd") => "vpc",
        Some("vmdk") => "vmdk",
        _ => "qcow2",
    }
}

pub fn smoke(opts: &Options) -> Result<Outcome> {
    let work = &opts.work;
    crate::rootfs::remove_tree(work)?;
    std::fs::create_dir_all(work).map_err(io(work))?;
    // Boot a copy-on-write overlay (4 GiB: the data partition grows into the rest), so the
    // built image stays as built.
    let image = std::fs::canonicalize(&opts.image).map_err(io(&opts.image))?;
    let fmt = backing_format(&image);
    let overlay = work.join("overlay.qcow2");
    cmd::run(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
            .arg(&image)
            .arg(&overlay)
            .arg("4G"),
    )?;
    let qmp = work.join("qmp.sock");
    let mut c = qemu(work, opts.firmware, opts.smp, &qmp)?;
    c.arg("-no-reboot")
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
        .args(["-nic", "user,model=virtio-net-pci"]);
    if !opts.no_seed {
        let user_data = opts.user_data.as_deref().unwrap_or(SMOKE_CONFIG);
        let seed = seed(work, user_data, None)?;
        c.arg("-drive").arg(format!(
            "file={},if=virtio,format=raw,readonly=on",
            seed.display()
        ));
    }
    let serial_log = work.join("serial.log");
    let mut log = std::fs::File::create(&serial_log).map_err(io(&serial_log))?;
    let started = Instant::now();
    let (mut child, rx, reader) = spawn_console(&mut c)?;
    let mut out = Outcome {
        serial_log: serial_log.clone(),
        firmware: Some(opts.firmware),
        ..Outcome::default()
    };
    let deadline = started + opts.timeout;
    let mut finished = false;
    while !finished {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let _ = writeln!(log, "[{:6.1}s] {line}", started.elapsed().as_secs_f64());
        // strip terminal escapes the console may put before the text
        let text = line
            .rsplit('\r')
            .next()
            .unwrap_or(&line)
            .trim_start_matches(|c: char| c.is_control());
        let at = started.elapsed();
        if let Some(rest) = find(text, "attestgate-health: ") {
            if rest.starts_with("HEALTHY") {
                out.healthy_after.get_or_insert(at);
                eprintln!("smoke: healthy after {:.1} s", at.as_secs_f64());
            } else if let Some(why) = rest.strip_prefix("UNHEALTHY: ") {
                out.unhealthy = Some(why.to_string());
            } else if rest.starts_with("NOT CONFIGURED") {
                out.not_configured = true;
            } else if let Some(b) = rest.strip_prefix("boot firmware ") {
                out.boot = Some(b.trim().to_string());
            } else if let Some(n) = rest.strip_prefix("failed units: ") {
                out.failed_units = n.trim().parse().ok();
            } else if let Some(unit) = rest.strip_prefix("failed: ") {
                out.failed_lines.push(unit.to_string());
            } else if rest.starts_with("END") {
                out.report_after = Some(at);
                finished = true;
            }
        } else if let Some(rest) = find(text, "attestgate-firstboot: REFUSED: ") {
            out.refused.push(rest.to_string());
        } else if let Some(rest) = find(text, "attestgate-grub: ") {
            eprintln!("smoke: grub: {rest}");
            out.grub_lines.push(rest.to_string());
        }
    }
    power_off(&qmp, &mut child);
    drop(rx);
    let _ = reader.join();
    if opts.firmware == Firmware::Bios {
        out.grubenv_after = Some(grubenv_after(work, &overlay).map_err(|e| e.to_string()));
    }
    Ok(out)
}

/// The boot counting state GRUB left: the ESP copied out of the overlay with `qemu-img dd`,
/// /bios/grubenv read from it with mtools and parsed.
fn grubenv_after(work: &Path, overlay: &Path) -> Result<String> {
    let esp = work.join("esp-after.raw");
    let _ = std::fs::remove_file(&esp);
    cmd::run(
        Command::new("qemu-img")
            .args(["dd", "-f", "qcow2", "-O", "raw", "bs=1M", "skip=1"])
            .arg(format!("count={}", crate::disk::ESP_MIB))
            .arg(format!("if={}", overlay.display()))
            .arg(format!("of={}", esp.display())),
    )?;
    let tree = work.join("esp-after");
    crate::rootfs::remove_tree(&tree)?;
    let bios = tree.join(crate::bios::ESP_DIR);
    std::fs::create_dir_all(&bios).map_err(io(&bios))?;
    cmd::run(
        Command::new("mcopy")
            .args(["-n", "-i"])
            .arg(&esp)
            .arg(format!("::{}/grubenv", crate::bios::ESP_DIR))
            .arg(crate::bios::env_path(&tree)),
    )?;
    let _ = std::fs::remove_file(&esp);
    let env = crate::bios::read_env(&tree)?;
    let state = crate::bios::read_state(&tree)?;
    let tries = |s: crate::bios::Slot| match state.slot(s).tries {
        crate::bios::Tries::Good => "absent (good)".to_string(),
        crate::bios::Tries::Left(n) => n.to_string(),
    };
    Ok(format!(
        "order=[{}] a_tries={} b_tries={}",
        env.get("order").unwrap_or(""),
        tries(crate::bios::Slot::A),
        tries(crate::bios::Slot::B)
    ))
}

pub(crate) fn find<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    text.find(marker).map(|i| &text[i + marker.len()..])
}

/// ACPI power-off over QMP: the guest shuts down cleanly. logind ignores the power button for
/// 30 s after it starts (`HoldoffTimeoutSec`), so the button is pressed again every 10 s for up
/// to a minute; then qemu is told to quit, and killed if even that fails.
pub(crate) fn power_off(qmp: &Path, child: &mut std::process::Child) {
    let started = Instant::now();
    for _ in 0..6 {
        qmp_command(qmp, "system_powerdown");
        if wait_exit(child, Duration::from_secs(10)) {
            eprintln!(
                "smoke: the guest powered off {:.1} s after the first ACPI power button press",
                started.elapsed().as_secs_f64()
            );
            return;
        }
    }
    eprintln!("smoke: the guest did not power off within 60 s; quitting qemu");
    qmp_command(qmp, "quit");
    if !wait_exit(child, Duration::from_secs(10)) {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Sends one QMP command and waits for its answer (closing the socket earlier may drop it).
fn qmp_command(qmp: &Path, command: &str) {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(qmp) else {
        return;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let msg = format!("{{\"execute\":\"qmp_capabilities\"}}\n{{\"execute\":\"{command}\"}}\n");
    if s.write_all(msg.as_bytes()).is_err() {
        return;
    }
    let mut answers = 0;
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { break };
        if line.contains("\"return\"") || line.contains("\"error\"") {
            answers += 1;
            if answers == 2 {
                break;
            }
        }
    }
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

pub fn print_report(o: &Outcome, expect: Expect, total: Duration) {
    println!("image smoke:");
    match o.healthy_after {
        Some(t) => println!(
            "  boot to healthy  {:.1} s (target <= {} s under TCG: {})",
            t.as_secs_f64(),
            TARGET_BOOT_TO_HEALTHY.as_secs(),
            if t <= TARGET_BOOT_TO_HEALTHY {
                "met"
            } else {
                "MISSED"
            }
        ),
        None => println!("  boot to healthy  never (no HEALTHY line)"),
    }
    if let Some(u) = &o.unhealthy {
        println!("  unhealthy: {u}");
    }
    if o.not_configured {
        println!("  the appliance said it is not configured");
    }
    for r in &o.refused {
        println!("  first boot refused: {r}");
    }
    match o.failed_units {
        Some(n) => println!("  failed units     {n}"),
        None => println!("  failed units     unknown (no report)"),
    }
    for l in &o.failed_lines {
        println!("    {l}");
    }
    if let Some(fw) = o.firmware {
        println!(
            "  firmware         asked {fw:?}, guest says {}",
            o.boot.as_deref().unwrap_or("nothing")
        );
    }
    for l in &o.grub_lines {
        println!("  grub             {l}");
    }
    match &o.grubenv_after {
        Some(Ok(env)) => println!("  grubenv after    {env}"),
        Some(Err(e)) => println!("  grubenv after    unreadable: {e}"),
        None => {}
    }
    println!("  whole smoke run  {:.1} s", total.as_secs_f64());
    println!("  serial log       {}", o.serial_log.display());
    println!(
        "  result           {} (expected: {expect:?})",
        if o.passed(expect) { "PASS" } else { "FAIL" }
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_backing_format_follows_the_extension() {
        for (name, fmt) in [
            ("target/image/attestgate.raw", "raw"),
            ("attestgate.vhd", "vpc"),
            ("x/attestgate-disk1.vmdk", "vmdk"),
            ("attestgate.qcow2", "qcow2"),
        ] {
            assert_eq!(backing_format(Path::new(name)), fmt, "{name}");
        }
    }
}
