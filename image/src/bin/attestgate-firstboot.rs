//! Runs on the appliance at every boot, before `attestgate.service`
//! (`attestgate-firstboot.service`, output on the serial console): finds a NoCloud seed (a
//! volume labelled CIDATA), installs its attestgate configuration once `attestgate config check
//! --strict` accepts it, and says on the console what happened. Exit status 1 (the unit fails
//! and the daemon, which requires it, stays stopped) when the seed or its configuration is
//! refused.

use image::firstboot::install::{self, Layout, Outcome, NOT_CONFIGURED};
use image::firstboot::nocloud;
use std::path::Path;
use std::process::{Command, ExitCode};

const ATTESTGATE: &str = "/usr/bin/attestgate";
const MOUNT_POINT: &str = "/run/attestgate-seed";

fn main() -> ExitCode {
    let layout = Layout::appliance();
    match run(&layout) {
        Ok(msg) => {
            println!("{msg}");
            if !layout.config().exists() {
                println!("{NOT_CONFIGURED}");
            }
            ExitCode::SUCCESS
        }
        Err(msg) => {
            for line in msg.lines() {
                println!("attestgate-firstboot: REFUSED: {line}");
            }
            println!("attestgate-firstboot: the daemon stays stopped (closed).");
            ExitCode::FAILURE
        }
    }
}

fn run(layout: &Layout) -> Result<String, String> {
    let Some(device) = find_seed() else {
        return Ok("attestgate-firstboot: no NoCloud seed (no volume labelled CIDATA)".into());
    };
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("{MOUNT_POINT}: {e}"))?;
    let mounted = Command::new("mount")
        .args(["-o", "ro,nodev,nosuid,noexec", &device, MOUNT_POINT])
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !mounted.status.success() {
        return Err(format!(
            "cannot mount the seed {device}: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        ));
    }
    let seed = nocloud::read_seed(Path::new(MOUNT_POINT));
    let _ = Command::new("umount").arg(MOUNT_POINT).status();
    let seed = seed.map_err(|e| format!("seed {device}: {e}"))?;
    let check = |file: &Path| -> Result<(), String> {
        let out = Command::new(ATTESTGATE)
            .args(["config", "check", "--strict"])
            .arg(file)
            .output()
            .map_err(|e| format!("{ATTESTGATE}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    match install::install(&seed, layout, &check).map_err(|e| e.to_string())? {
        Outcome::Installed { instance_id, files } => Ok(format!(
            "attestgate-firstboot: installed the configuration of seed {device} (instance-id \
             {instance_id}, {files} extra files) as {}",
            layout.config().display()
        )),
        Outcome::AlreadyApplied { instance_id } => Ok(format!(
            "attestgate-firstboot: seed {device} (instance-id {instance_id}) was applied on an \
             earlier boot; keeping {}",
            layout.config().display()
        )),
        Outcome::NoConfig => Ok(format!(
            "attestgate-firstboot: seed {device} carries no user-data configuration"
        )),
    }
}

/// `blkid` probes the devices itself, so this does not wait for udev's by-label links.
fn find_seed() -> Option<String> {
    for label in ["CIDATA", "cidata"] {
        let out = Command::new("blkid")
            .args(["-l", "-o", "device", "-t", &format!("LABEL={label}")])
            .output()
            .ok()?;
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !dev.is_empty() {
            return Some(dev);
        }
    }
    None
}
