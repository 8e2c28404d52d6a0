//! A/B updates on the appliance (issue 7, "Updates"): `image build` writes a signed bundle
//! ([`bundle`]); `attestgate update apply BUNDLE` writes it into the slot that is not running
//! and adds a boot-counted entry for it ([`apply`]); systemd-boot tries the new entry
//! `tries` times, `attestgate-boot-check.service` decides whether a boot is good (the daemon
//! healthy), systemd-bless-boot then drops the counter; a new version that never gets there
//! runs out of tries and systemd-boot falls back to the old slot by itself.

pub mod apply;
pub mod bundle;
pub mod pe;
pub mod slots;

use std::path::{Path, PathBuf};

/// The file in the root file system naming the image's version.
pub const VERSION_FILE: &str = "/usr/lib/attestgate/image-version";
/// Where the ESP is mounted on the appliance (automounted, see image/guest/fstab).
pub const ESP: &str = "/efi";

/// The version of the running image.
pub fn running_version() -> String {
    std::fs::read_to_string(VERSION_FILE)
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|_| "unknown (not an attestgate image)".into())
}

/// The mounted ESP: `/efi` (touching it triggers the automount).
pub fn esp() -> Result<PathBuf, String> {
    let p = Path::new(ESP);
    if p.join("EFI/Linux").is_dir() {
        Ok(p.to_path_buf())
    } else {
        Err(format!(
            "{ESP}/EFI/Linux: not found (is the EFI system partition mounted at {ESP}?)"
        ))
    }
}

/// The slot GRUB booted, when the running system came up through the legacy-BIOS path
/// (`attestgate.boot=bios attestgate.slot=X` on the command line, see `bios::slot_cmdline`).
pub fn bios_boot(cmdline: &str) -> Option<slots::Slot> {
    let words: Vec<&str> = cmdline.split_ascii_whitespace().collect();
    if !words.contains(&"attestgate.boot=bios") {
        return None;
    }
    match words
        .iter()
        .find_map(|w| w.strip_prefix("attestgate.slot="))?
    {
        "a" => Some(slots::Slot::A),
        "b" => Some(slots::Slot::B),
        _ => None,
    }
}

/// `attestgate update mark-good` (run by attestgate-boot-check after a good boot): drops the
/// running slot's counter from GRUB's env block, so the legacy-BIOS path agrees with what
/// booted well whatever the firmware; under UEFI systemd-bless-boot does the same for the boot
/// entry.
pub fn mark_good(cmdline: &str, esp: &Path, running: slots::Slot) -> Result<String, String> {
    let how = if bios_boot(cmdline).is_some() {
        "legacy BIOS boot"
    } else {
        "UEFI boot (systemd-bless-boot marks the entry good)"
    };
    if !apply::has_bios(esp) {
        return Ok(format!("{how}: nothing else to mark"));
    }
    let bslot = apply::bios_slot(running);
    let state = crate::bios::read_state(esp).map_err(|e| e.to_string())?;
    if state.slot(bslot).tries == crate::bios::Tries::Good || !state.order.contains(&bslot) {
        return Ok(format!("{how}: slot {running} is already good for GRUB"));
    }
    crate::bios::bless(esp, bslot).map_err(|e| e.to_string())?;
    Ok(format!(
        "{how}: slot {running} marked good for GRUB (its boot counter removed)"
    ))
}

/// The version a boot entry carries (`ATTESTGATE_VERSION=` in its `.osrel`).
pub fn entry_version(uki: &[u8]) -> Option<String> {
    let r = pe::section(uki, ".osrel").ok()?;
    String::from_utf8_lossy(&uki[r]).lines().find_map(|l| {
        l.strip_prefix("ATTESTGATE_VERSION=")
            .map(|v| v.trim_matches('"').to_string())
    })
}

#[derive(Debug, serde::Serialize)]
pub struct Status {
    pub running_slot: slots::Slot,
    /// "uefi", or "bios" when GRUB booted this system.
    pub firmware: &'static str,
    /// GRUB's boot order and each slot's tries (legacy-BIOS path), when the ESP has one.
    pub bios: Option<String>,
    pub running_version: String,
    pub disk: slots::Disk,
    pub entries: Vec<EntryStatus>,
}

#[derive(Debug, serde::Serialize)]
pub struct EntryStatus {
    #[serde(flatten)]
    pub entry: slots::Entry,
    pub state: &'static str,
    pub version: Option<String>,
    /// The entry systemd-boot starts next.
    pub default: bool,
}

pub fn status(disk: slots::Disk, esp: &Path, cmdline: &str) -> Result<Status, String> {
    let entries = slots::entries(esp).map_err(|e| format!("{}/EFI/Linux: {e}", esp.display()))?;
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let version = std::fs::read(esp.join("EFI/Linux").join(&e.file))
                .ok()
                .and_then(|b| entry_version(&b));
            EntryStatus {
                state: e.state(),
                default: i == 0,
                version,
                entry: e,
            }
        })
        .collect();
    let bios = apply::has_bios(esp).then(|| match crate::bios::read_state(esp) {
        Ok(st) => {
            let tries = |s: crate::bios::Slot| match st.slot(s).tries {
                crate::bios::Tries::Good if st.slot(s).installed => "good".to_string(),
                crate::bios::Tries::Good => "not installed".to_string(),
                crate::bios::Tries::Left(0) => "bad (0 tries left)".to_string(),
                crate::bios::Tries::Left(n) => format!("{n} tries left"),
            };
            let order: Vec<&str> = st.order.iter().map(|s| s.name()).collect();
            format!(
                "order [{}], a: {}, b: {}, next boot: {}",
                order.join(" "),
                tries(crate::bios::Slot::A),
                tries(crate::bios::Slot::B),
                st.next_boot().map(|s| s.name()).unwrap_or("none")
            )
        }
        Err(e) => format!("unreadable: {e}"),
    });
    Ok(Status {
        firmware: if bios_boot(cmdline).is_some() {
            "bios"
        } else {
            "uefi"
        },
        bios,
        running_slot: disk.current,
        running_version: running_version(),
        disk,
        entries,
    })
}

/// `attestgate update status` as a table.
pub fn render(s: &Status) -> String {
    let mut out = format!(
        "running   slot {} ({}), version {}, booted by {}\n",
        s.running_slot,
        s.disk.slot(s.running_slot).device.display(),
        s.running_version,
        if s.firmware == "bios" {
            "GRUB (legacy BIOS)"
        } else {
            "systemd-boot (UEFI)"
        }
    );
    if let Some(b) = &s.bios {
        out.push_str(&format!("bios      {b}\n"));
    }
    out.push_str(&format!(
        "{:<28} {:<5} {:<7} {:<9} {}\n",
        "BOOT ENTRY (UEFI)", "SLOT", "STATE", "TRIES", "VERSION"
    ));
    for e in &s.entries {
        let tries = match (e.entry.tries_left, e.entry.tries_done) {
            (None, _) => "-".to_string(),
            (Some(l), Some(d)) => format!("{l} left/{d}"),
            (Some(l), None) => format!("{l} left"),
        };
        out.push_str(&format!(
            "{:<28} {:<5} {:<7} {:<9} {}{}\n",
            e.entry.file,
            e.entry.slot,
            e.state,
            tries,
            e.version.as_deref().unwrap_or("?"),
            if e.default { "   <- next boot" } else { "" }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn the_status_table_lines_up_and_marks_the_next_boot() {
        let part = |d: &str| slots::Partition {
            device: PathBuf::from(d),
            partuuid: String::new(),
            size: 0,
        };
        let s = Status {
            firmware: "uefi",
            bios: None,
            running_slot: slots::Slot::B,
            running_version: "2".into(),
            disk: slots::Disk {
                disk: PathBuf::from("/dev/vda"),
                a: part("/dev/vda2"),
                b: part("/dev/vda3"),
                esp: part("/dev/vda1"),
                current: slots::Slot::B,
            },
            entries: ["attestgate-2-b.efi", "attestgate-3-a+0-1.efi"]
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let entry = slots::Entry::parse(f).unwrap();
                    EntryStatus {
                        state: entry.state(),
                        version: Some(format!("v{i}")),
                        default: i == 0,
                        entry,
                    }
                })
                .collect(),
        };
        let t = render(&s);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines[0],
            "running   slot b (/dev/vda3), version 2, booted by systemd-boot (UEFI)"
        );
        let col = |l: &str, w: &str| l.find(w).unwrap();
        // every column starts where its heading does
        for (heading, values) in [
            ("SLOT", ["b ", "a "]),
            ("STATE", ["good", "bad "]),
            ("TRIES", ["- ", "0 left/1"]),
        ] {
            let at = col(lines[1], heading);
            assert_eq!(&lines[2][at..at + values[0].len()], values[0], "{t}");
            assert_eq!(&lines[3][at..at + values[1].len()], values[1], "{t}");
        }
        assert!(lines[2].ends_with("<- next boot"));
        assert!(!lines[3].contains("next boot"));
    }

    #[test]
    fn knows_a_legacy_bios_boot_from_grubs_markers() {
        let base = "root=PARTUUID=x ro console=ttyS0,115200";
        assert_eq!(bios_boot(base), None);
        assert_eq!(
            bios_boot(&crate::bios::slot_cmdline(base, crate::bios::Slot::B)),
            Some(slots::Slot::B)
        );
        assert_eq!(bios_boot("attestgate.slot=a"), None);
        assert_eq!(bios_boot("attestgate.boot=bios attestgate.slot=c"), None);
        // UEFI: nothing to do here
        let dir = tempfile::tempdir().unwrap();
        assert!(mark_good(base, dir.path(), slots::Slot::A)
            .unwrap()
            .contains("systemd-bless-boot"));
    }
}
