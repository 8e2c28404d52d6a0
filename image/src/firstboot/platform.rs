//! Which platform this machine boots on, from what the firmware and hypervisor say. The
//! decision ([`detect`]) is a pure function of those files' contents; [`Facts::read`] reads
//! them.
//!
//! Order: a NoCloud seed (a volume labelled CIDATA) always wins, so a seed can configure an
//! appliance anywhere; then DMI (SMBIOS) strings:
//! - Azure: chassis asset tag `7783-7084-3265-9085-8269-3286-77`, which Hyper-V sets on Azure
//!   only (what cloud-init and waagent test too);
//! - AWS: `sys_vendor` `Amazon EC2` (Nitro instances), or on Xen instances
//!   `/sys/hypervisor/uuid` starting with `ec2` (AWS "Identify EC2 Linux instances");
//! - GCP: `product_name` `Google Compute Engine` (GCP "Detect if running in Compute Engine").
//!
//! Nothing else is a platform: the appliance then says it is not configured.

use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    NoCloud,
    Aws,
    Gcp,
    Azure,
    /// No seed and no cloud recognised.
    Unknown,
}

impl Platform {
    pub fn name(self) -> &'static str {
        match self {
            Platform::NoCloud => "NoCloud",
            Platform::Aws => "AWS EC2",
            Platform::Gcp => "GCP",
            Platform::Azure => "Azure",
            Platform::Unknown => "no platform",
        }
    }
}

/// Azure's chassis asset tag (SMBIOS type 3).
pub const AZURE_ASSET_TAG: &str = "7783-7084-3265-9085-8269-3286-77";

/// What detection looks at. Strings are the files' contents, `None` when unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// A volume labelled CIDATA (or cidata) exists.
    pub nocloud_seed: bool,
    /// `/sys/class/dmi/id/sys_vendor`
    pub sys_vendor: Option<String>,
    /// `/sys/class/dmi/id/product_name`
    pub product_name: Option<String>,
    /// `/sys/class/dmi/id/chassis_asset_tag`
    pub chassis_asset_tag: Option<String>,
    /// `/sys/hypervisor/uuid` (Xen only)
    pub hypervisor_uuid: Option<String>,
}

impl Facts {
    /// Reads the DMI and hypervisor files under `sys` (`/sys` on the appliance).
    pub fn read(sys: &Path, nocloud_seed: bool) -> Facts {
        let read = |rel: &str| {
            std::fs::read(sys.join(rel))
                .ok()
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        };
        Facts {
            nocloud_seed,
            sys_vendor: read("class/dmi/id/sys_vendor"),
            product_name: read("class/dmi/id/product_name"),
            chassis_asset_tag: read("class/dmi/id/chassis_asset_tag"),
            hypervisor_uuid: read("hypervisor/uuid"),
        }
    }
}

/// The platform these facts show (see the module doc for the order and the sources).
pub fn detect(f: &Facts) -> Platform {
    let is = |v: &Option<String>, want: &str| v.as_deref().map(str::trim) == Some(want);
    if f.nocloud_seed {
        Platform::NoCloud
    } else if is(&f.chassis_asset_tag, AZURE_ASSET_TAG) {
        Platform::Azure
    } else if is(&f.sys_vendor, "Amazon EC2")
        || f.hypervisor_uuid
            .as_deref()
            .is_some_and(|u| u.trim().to_ascii_lowercase().starts_with("ec2"))
    {
        Platform::Aws
    } else if is(&f.product_name, "Google Compute Engine") || is(&f.sys_vendor, "Google") {
        Platform::Gcp
    } else {
        Platform::Unknown
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn facts(vendor: &str, product: &str, tag: &str, xen: Option<&str>) -> Facts {
        Facts {
            nocloud_seed: false,
            sys_vendor: Some(vendor.into()),
            product_name: Some(product.into()),
            chassis_asset_tag: Some(tag.into()),
            hypervisor_uuid: xen.map(String::from),
        }
    }

    #[test]
    fn platforms() {
        let azure = facts(
            "Microsoft Corporation",
            "Virtual Machine",
            AZURE_ASSET_TAG,
            None,
        );
        assert_eq!(detect(&azure), Platform::Azure);
        // Hyper-V elsewhere has the same vendor and product but not the tag.
        let hyperv = facts(
            "Microsoft Corporation",
            "Virtual Machine",
            "1234-5678",
            None,
        );
        assert_eq!(detect(&hyperv), Platform::Unknown);
        let nitro = facts("Amazon EC2", "t3.micro", "Amazon EC2", None);
        assert_eq!(detect(&nitro), Platform::Aws);
        let xen = facts(
            "Xen",
            "HVM domU",
            "",
            Some("ec2e1916-9099-7caf-fd21-012345abcdef"),
        );
        assert_eq!(detect(&xen), Platform::Aws);
        let other_xen = facts(
            "Xen",
            "HVM domU",
            "",
            Some("4f2c1a9e-0000-0000-0000-000000000000"),
        );
        assert_eq!(detect(&other_xen), Platform::Unknown);
        let gcp = facts("Google", "Google Compute Engine", "", None);
        assert_eq!(detect(&gcp), Platform::Gcp);
        let qemu = facts("QEMU", "Standard PC (Q35 + ICH9, 2009)", "", None);
        assert_eq!(detect(&qemu), Platform::Unknown);
        assert_eq!(detect(&Facts::default()), Platform::Unknown);
        // A seed wins everywhere.
        for f in [azure, nitro, gcp, qemu] {
            assert_eq!(
                detect(&Facts {
                    nocloud_seed: true,
                    ..f
                }),
                Platform::NoCloud
            );
        }
    }

    #[test]
    fn reads_sysfs_files() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("class/dmi/id");
        std::fs::create_dir_all(&dmi).unwrap();
        std::fs::write(dmi.join("sys_vendor"), "Microsoft Corporation\n").unwrap();
        std::fs::write(
            dmi.join("chassis_asset_tag"),
            format!("{AZURE_ASSET_TAG}\n"),
        )
        .unwrap();
        let f = Facts::read(dir.path(), false);
        assert_eq!(f.product_name, None);
        assert_eq!(f.sys_vendor.as_deref(), Some("Microsoft Corporation"));
        assert_eq!(detect(&f), Platform::Azure);
    }
}
