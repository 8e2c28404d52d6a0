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

use super::SourceFact;
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
    platform: Option<String>,
    #[serde(default)]
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
pub fn read(path: &Path, now: SystemTime) -> Result<BTreeMap<String, SourceFact>, FileSourceError> {
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
        let mut fact =
            SourceFact::inventory(d.managed, d.groups.into_iter().collect(), Some(d.risk), now);
        fact.platform = d.platform;
        fact.udids = d.udids.into_iter().collect();
        out.insert(serial, fact);
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
            "[[device]]\nserial = \" c02lab0001 \"\nmanaged = true\ngroups = [\"Compliant Macs\"]\nrisk = \"low\"\nplatform = \"macos\"\nudids = [\"U1\"]\n",
        )
        .unwrap();
        let now = SystemTime::now();
        let r = read(&p, now).unwrap();
        let d = &r["C02LAB0001"];
        assert!(
            d.managed == Some(true)
                && d.groups.contains("Compliant Macs")
                && d.risk == Some(RiskLevel::Low)
        );
        assert_eq!(d.platform.as_deref(), Some("macos"));
        assert!(d.udids.contains("U1"));
        std::fs::write(
            &p,
            "[[device]]\nserial = \"X\"\nmanaged = true\nrisk = \"severe\"\n",
        )
        .unwrap();
        let e = read(&p, now).unwrap_err().to_string();
        assert!(e.contains("severe"), "{e}");
        std::fs::write(
            &p,
            "[[device]]\nserial = \"X\"\nmanaged = true\nrisk = \"low\"\ncolour = 1\n",
        )
        .unwrap();
        assert!(read(&p, now).unwrap_err().to_string().contains("colour"));
        std::fs::write(&p, "[[device]]\nserial = \"X\"\nmanaged = true\nrisk = \"low\"\n[[device]]\nserial = \"x\"\nmanaged = true\nrisk = \"low\"\n").unwrap();
        assert!(read(&p, now).unwrap_err().to_string().contains("twice"));
        assert!(matches!(
            read(&dir.path().join("none"), now),
            Err(FileSourceError::Read { .. })
        ));
    }
}
