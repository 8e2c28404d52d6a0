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

pub fn status(disk: slots::Disk, esp: &Path) -> Result<Status, String> {
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
    Ok(Status {
        running_slot: disk.current,
        running_version: running_version(),
        disk,
        entries,
    })
}

/// `attestgate update status` as a table.
pub fn render(s: &Status) -> String {
    let mut out = format!(
        "running   slot {} ({}), version {}\n",
        s.running_slot,
        s.disk.slot(s.running_slot).device.display(),
        s.running_version
    );
    out.push_str(&format!(
        "{:<28} {:<5} {:<7} {:<9} {}\n",
        "BOOT ENTRY", "SLOT", "STATE", "TRIES", "VERSION"
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
        assert_eq!(lines[0], "running   slot b (/dev/vda3), version 2");
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
}
