//! Runs on the appliance at every boot, before `attestgate.service`
//! (`attestgate-firstboot.service`, output on the serial console): finds the platform (a
//! NoCloud seed — a volume labelled CIDATA — else AWS, GCP or Azure from DMI), reads its seed,
//! installs its SSH keys and its attestgate configuration once `attestgate config check
//! --strict` accepts it, reports to Azure's WireServer there, and says on the console what
//! happened. Exit status 1 (the unit fails and the daemon, which requires it, stays stopped)
//! when the seed or its configuration is refused.

use image::firstboot::install::{self, KeysOutcome, Layout, Outcome, NOT_CONFIGURED};
use image::firstboot::platform::{self, Facts, Platform};
use image::firstboot::seed::Seed;
use image::firstboot::{aws, azure, gcp, http, nocloud};
use std::path::Path;
use std::process::{Command, ExitCode};

const ATTESTGATE: &str = "/usr/bin/attestgate";
const MOUNT_POINT: &str = "/run/attestgate-seed";
const TAG: &str = "attestgate-firstboot";

fn main() -> ExitCode {
    let layout = Layout::appliance();
    let seed_device = find_volumes("LABEL=CIDATA")
        .into_iter()
        .chain(find_volumes("LABEL=cidata"))
        .next();
    let facts = Facts::read(Path::new("/sys"), seed_device.is_some());
    let platform = platform::detect(&facts);
    println!("{TAG}: platform: {}", platform.name());
    let result = match (platform, seed_device) {
        (Platform::NoCloud, Some(device)) => run_nocloud(&device, &layout),
        (Platform::Aws, _) => http::Client::new(aws::BASE)
            .map_err(|e| e.to_string())
            .and_then(|c| aws::read_seed(&c).map_err(|e| e.to_string()))
            .and_then(|seed| apply(&seed, "AWS instance metadata (IMDSv2)", &layout)),
        (Platform::Gcp, _) => gcp::client()
            .and_then(|c| gcp::read_seed(&c))
            .map_err(|e| e.to_string())
            .and_then(|seed| apply(&seed, "GCP metadata", &layout)),
        (Platform::Azure, _) => run_azure(&layout),
        _ => Ok(format!(
            "{TAG}: no NoCloud seed (no volume labelled CIDATA) and no cloud recognised \
             (DMI vendor {:?}, product {:?})",
            facts.sys_vendor.unwrap_or_default(),
            facts.product_name.unwrap_or_default()
        )),
    };
    match result {
        Ok(msg) => {
            println!("{msg}");
            if !layout.config().exists() {
                println!("{NOT_CONFIGURED}");
            }
            ExitCode::SUCCESS
        }
        Err(msg) => {
            for line in msg.lines() {
                println!("{TAG}: REFUSED: {line}");
            }
            println!("{TAG}: the daemon stays stopped (closed).");
            ExitCode::FAILURE
        }
    }
}

fn run_nocloud(device: &str, layout: &Layout) -> Result<String, String> {
    let seed = with_mounted(device, |dir| Ok(nocloud::read_seed(dir)))?
        .map_err(|e| format!("seed {device}: {e}"))?;
    apply(&seed, &format!("seed {device}"), layout)
}

/// Azure: the provisioning media's ovf-env.xml, then the health report whatever happened
/// (NotReady with the reason when refused).
fn run_azure(layout: &Layout) -> Result<String, String> {
    let result = match find_ovf_env() {
        Ok(Some((device, mut seed))) => {
            // The VM's unique id: stable over reboots and redeployments, new per VM.
            seed.meta.instance_id = std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
                .ok()
                .map(|s| s.trim().to_ascii_lowercase())
                .filter(|s| !s.is_empty());
            apply(&seed, &format!("Azure provisioning media {device}"), layout)
        }
        Ok(None) => Ok(format!(
            "{TAG}: no Azure provisioning media (no UDF or ISO 9660 volume with {})",
            azure::OVF_ENV
        )),
        Err(e) => Err(e),
    };
    let health = match &result {
        Ok(_) => azure::Health::Ready,
        Err(e) => azure::Health::failed(e),
    };
    let state = match &health {
        azure::Health::Ready => "Ready",
        azure::Health::NotReady { .. } => "NotReady",
    };
    match http::Client::new(azure::WIRESERVER)
        .map_err(|e| e.to_string())
        .and_then(|c| azure::report_health(&c, &health).map_err(|e| e.to_string()))
    {
        Ok(gs) => println!(
            "{TAG}: reported {state} to the Azure WireServer (incarnation {}, container {})",
            gs.incarnation, gs.container_id
        ),
        Err(e) => println!("{TAG}: WARNING: could not report {state} to the Azure WireServer: {e}"),
    }
    result
}

/// Installs the seed's keys, then its configuration; the console lines saying so.
fn apply(seed: &Seed, source: &str, layout: &Layout) -> Result<String, String> {
    let mut lines = Vec::new();
    for note in &seed.notes {
        lines.push(format!("{TAG}: {source}: {note}"));
    }
    match install::install_keys(seed, layout).map_err(|e| e.to_string())? {
        KeysOutcome::Replaced { installed, refused } => {
            for r in refused {
                lines.push(format!("{TAG}: {source}: refused {r}"));
            }
            lines.push(format!(
                "{TAG}: {source}: {installed} SSH keys installed in {}",
                layout.authorized_keys.display()
            ));
        }
        KeysOutcome::Unchanged => {}
    }
    // Printed now: a refused configuration below returns only its error.
    for line in lines.drain(..) {
        println!("{line}");
    }
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
    Ok(
        match install::install(seed, layout, &check).map_err(|e| e.to_string())? {
            Outcome::Installed { instance_id, files } => format!(
                "{TAG}: installed the configuration of {source} (instance-id {instance_id}, \
                 {files} extra files) as {}",
                layout.config().display()
            ),
            Outcome::AlreadyApplied { instance_id } => format!(
                "{TAG}: {source} (instance-id {instance_id}) was applied on an earlier boot; \
                 keeping {}",
                layout.config().display()
            ),
            Outcome::NoConfig => format!("{TAG}: {source} carries no user-data configuration"),
        },
    )
}

/// The first UDF or ISO 9660 volume holding ovf-env.xml, probed as waagent does.
fn find_ovf_env() -> Result<Option<(String, Seed)>, String> {
    for device in find_volumes("TYPE=udf")
        .into_iter()
        .chain(find_volumes("TYPE=iso9660"))
    {
        let found = with_mounted(&device, |dir| {
            let path = dir.join(azure::OVF_ENV);
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > azure::MAX_OVF_ENV as u64 => {
                    Err(format!("{device}: {} is too large", azure::OVF_ENV))
                }
                Ok(_) => std::fs::read(&path)
                    .map(Some)
                    .map_err(|e| format!("{device}: {}: {e}", azure::OVF_ENV)),
                Err(_) => Ok(None),
            }
        });
        match found {
            Ok(Some(bytes)) => {
                let seed = azure::parse_ovf_env(&bytes)
                    .map_err(|e| format!("provisioning media {device}: {e}"))?;
                return Ok(Some((device, seed)));
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Mounts `device` read-only, runs `f` on it, unmounts.
fn with_mounted<T>(device: &str, f: impl FnOnce(&Path) -> Result<T, String>) -> Result<T, String> {
    std::fs::create_dir_all(MOUNT_POINT).map_err(|e| format!("{MOUNT_POINT}: {e}"))?;
    let mounted = Command::new("mount")
        .args(["-o", "ro,nodev,nosuid,noexec", device, MOUNT_POINT])
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !mounted.status.success() {
        return Err(format!(
            "cannot mount {device}: {}",
            String::from_utf8_lossy(&mounted.stderr).trim()
        ));
    }
    let result = f(Path::new(MOUNT_POINT));
    let _ = Command::new("umount").arg(MOUNT_POINT).status();
    result
}

/// Devices matching a blkid token (`LABEL=…`, `TYPE=…`). `blkid` probes the devices itself,
/// so this does not wait for udev's by-label links.
fn find_volumes(token: &str) -> Vec<String> {
    let Ok(out) = Command::new("blkid")
        .args(["-o", "device", "-t", token])
        .output()
    else {
        return Vec::new();
    };
    if !out.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect()
}
