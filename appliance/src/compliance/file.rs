//! The `file` compliance source: a TOML list of devices, for labs and emergencies.
//!
//! ```toml
//! [[device]]
//! serial = "C02LAB0001"            # as in the device certificate
//! managed = true
//! groups = ["Compliant Macs"]
//! risk = "secure"                  # secure | low | medium | high
//! platform = "macos"               # optional: macos | ios | ipados | visionos
//! udids = ["..."]                  # optional
//! ```
//!
//! The file is the truth at the moment it is read: its records count as confirmed then.

use crate::policy::DeviceRecord;
use config::RiskLevel;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceFile {
    #[serde(default)]
    device: Vec<DeviceEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceEntry {
    serial: String,
    managed: bool,
    #[serde(default)]
    groups: Vec<String>,
    risk: RiskLevel,
    #[serde(default)]
    #[allow(dead_code)]
    platform: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    udids: Vec<String>,
}

/// Why a device file was not used.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Parse {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Reads the file; every record is confirmed at `now`.
pub fn read(
    path: &Path,
    source: &str,
    now: SystemTime,
) -> Result<BTreeMap<String, DeviceRecord>, FileSourceError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileSourceError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parsed: DeviceFile = toml::from_str(&text).map_err(|e| FileSourceError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim().replace('\n', " "),
    })?;
    let mut out = BTreeMap::new();
    for d in parsed.device {
        let serial = super::normalize_serial(&d.serial);
        if serial.is_empty() {
            return Err(FileSourceError::Parse {
                path: path.to_path_buf(),
                message: "a device has an empty serial".into(),
            });
        }
        if out.contains_key(&serial) {
            return Err(FileSourceError::Parse {
                path: path.to_path_buf(),
                message: format!("device {serial} is listed twice"),
            });
        }
        out.insert(
            serial,
            DeviceRecord {
                managed: d.managed,
                groups: d.groups.into_iter().collect(),
                risk: d.risk,
                source: source.to_string(),
                confirmed_at: now,
            },
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_devices_and_refuses_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("devices.toml");
        std::fs::write(
            &p,
            "[[device]]\nserial = \" c02lab0001 \"\nmanaged = true\ngroups = [\"Compliant Macs\"]\nrisk = \"low\"\n",
        )
        .unwrap();
        let now = SystemTime::now();
        let r = read(&p, "lab", now).unwrap();
        let d = &r["C02LAB0001"];
        assert!(d.managed && d.groups.contains("Compliant Macs") && d.risk == RiskLevel::Low);
        std::fs::write(
            &p,
            "[[device]]\nserial = \"X\"\nmanaged = true\nrisk = \"severe\"\n",
        )
        .unwrap();
        let e = read(&p, "lab", now).unwrap_err().to_string();
        assert!(e.contains("severe"), "{e}");
        std::fs::write(
            &p,
            "[[device]]\nserial = \"X\"\nmanaged = true\nrisk = \"low\"\ncolour = 1\n",
        )
        .unwrap();
        assert!(read(&p, "lab", now)
            .unwrap_err()
            .to_string()
            .contains("colour"));
        std::fs::write(&p, "[[device]]\nserial = \"X\"\nmanaged = true\nrisk = \"low\"\n[[device]]\nserial = \"x\"\nmanaged = true\nrisk = \"low\"\n").unwrap();
        assert!(read(&p, "lab", now)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(matches!(
            read(&dir.path().join("none"), "lab", now),
            Err(FileSourceError::Read { .. })
        ));
    }
}
