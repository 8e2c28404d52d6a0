//! Where the slots are on the running appliance: the disk holding the booted root, its
//! partitions `root-a`, `root-b` and `esp` (by GPT partition name, as `image build` writes
//! them), which slot is running (the kernel command line's `root=PARTUUID=`), and the boot
//! entries on the ESP with their boot counters (Boot Loader Specification, "Boot counting":
//! `NAME+LEFT[-DONE].efi`).

use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Slot {
    #[serde(rename = "a")]
    A,
    #[serde(rename = "b")]
    B,
}

impl Slot {
    pub fn name(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "root-a",
            Slot::B => "root-b",
        }
    }
    fn from_char(c: char) -> Option<Slot> {
        match c {
            'a' => Some(Slot::A),
            'b' => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // pad: tables give the slot a column width
        f.pad(match self {
            Slot::A => "a",
            Slot::B => "b",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub device: PathBuf,
    pub partuuid: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Disk {
    pub disk: PathBuf,
    pub a: Partition,
    pub b: Partition,
    pub esp: Partition,
    pub current: Slot,
}

impl Disk {
    pub fn slot(&self, s: Slot) -> &Partition {
        match s {
            Slot::A => &self.a,
            Slot::B => &self.b,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("{0}")]
    Probe(String),
    #[error(
        "the kernel command line has no root=PARTUUID= (not booted from an attestgate image?)"
    )]
    NoRoot,
    #[error("no partition with PARTUUID {0} (the running root) among the block devices")]
    RootNotFound(String),
    #[error("the disk {disk} has no partition named {label:?} (not an attestgate image's layout)")]
    Missing { disk: String, label: &'static str },
    #[error("the running root {0} is neither root-a nor root-b")]
    NotASlot(String),
}

/// The `root=PARTUUID=` value of a kernel command line.
pub fn root_partuuid(cmdline: &str) -> Option<String> {
    cmdline
        .split_ascii_whitespace()
        .filter_map(|w| w.strip_prefix("root=PARTUUID="))
        .next_back()
        .map(|u| u.to_ascii_lowercase())
}

#[derive(Debug, serde::Deserialize)]
struct Lsblk {
    blockdevices: Vec<BlockDevice>,
}

#[derive(Debug, serde::Deserialize)]
struct BlockDevice {
    path: Option<String>,
    pkname: Option<String>,
    partuuid: Option<String>,
    partlabel: Option<String>,
    size: Option<u64>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Reads `lsblk --json --bytes --list -o PATH,PKNAME,PARTUUID,PARTLABEL,SIZE,TYPE`.
pub fn from_lsblk(json: &str, cmdline: &str) -> Result<Disk, SlotError> {
    let root = root_partuuid(cmdline).ok_or(SlotError::NoRoot)?;
    let l: Lsblk =
        serde_json::from_str(json).map_err(|e| SlotError::Probe(format!("lsblk --json: {e}")))?;
    let parts: Vec<&BlockDevice> = l
        .blockdevices
        .iter()
        .filter(|d| d.kind.as_deref() == Some("part"))
        .collect();
    let running = parts
        .iter()
        .find(|d| d.partuuid.as_deref().map(str::to_ascii_lowercase) == Some(root.clone()))
        .ok_or_else(|| SlotError::RootNotFound(root.clone()))?;
    let disk = running.pkname.clone().unwrap_or_default();
    let find = |label: &'static str| -> Result<Partition, SlotError> {
        let d = parts
            .iter()
            .find(|d| d.pkname.as_deref() == Some(&disk) && d.partlabel.as_deref() == Some(label))
            .ok_or_else(|| SlotError::Missing {
                disk: disk.clone(),
                label,
            })?;
        Ok(Partition {
            device: PathBuf::from(d.path.clone().unwrap_or_default()),
            partuuid: d.partuuid.clone().unwrap_or_default().to_ascii_lowercase(),
            size: d.size.unwrap_or(0),
        })
    };
    let (a, b, esp) = (find("root-a")?, find("root-b")?, find("esp")?);
    let current = if a.partuuid == root {
        Slot::A
    } else if b.partuuid == root {
        Slot::B
    } else {
        return Err(SlotError::NotASlot(root));
    };
    let disk = PathBuf::from(if disk.starts_with('/') {
        disk
    } else {
        format!("/dev/{disk}")
    });
    Ok(Disk {
        disk,
        a,
        b,
        esp,
        current,
    })
}

/// Probes the running system.
pub fn probe() -> Result<Disk, SlotError> {
    let cmdline = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| SlotError::Probe(format!("/proc/cmdline: {e}")))?;
    let out = std::process::Command::new("lsblk")
        .args([
            "--json",
            "--bytes",
            "--list",
            "-o",
            "PATH,PKNAME,PARTUUID,PARTLABEL,SIZE,TYPE",
        ])
        .output()
        .map_err(|e| SlotError::Probe(format!("lsblk: {e}")))?;
    if !out.status.success() {
        return Err(SlotError::Probe(format!(
            "lsblk: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    from_lsblk(&String::from_utf8_lossy(&out.stdout), &cmdline)
}

/// A boot entry of ours on the ESP (`EFI/Linux/attestgate-GEN-SLOT[+LEFT[-DONE]].efi`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub file: String,
    /// Install generation: systemd-boot sorts entries by name, newest (highest) first.
    pub generation: u64,
    pub slot: Slot,
    /// Boot attempts left; None = no counter (a good entry).
    pub tries_left: Option<u32>,
    pub tries_done: Option<u32>,
}

impl Entry {
    pub fn parse(file: &str) -> Option<Entry> {
        let stem = file.strip_suffix(".efi")?;
        let rest = stem.strip_prefix("attestgate-")?;
        let (name, counter) = match rest.split_once('+') {
            Some((n, c)) => (n, Some(c)),
            None => (rest, None),
        };
        // `attestgate-a` (images before generations) counts as generation 0
        let (generation, slot) = match name.split_once('-') {
            Some((g, s)) => (g.parse().ok()?, s),
            None => (0, name),
        };
        let mut chars = slot.chars();
        let slot = Slot::from_char(chars.next()?)?;
        if chars.next().is_some() {
            return None;
        }
        let (tries_left, tries_done) = match counter {
            None => (None, None),
            Some(c) => match c.split_once('-') {
                Some((l, d)) => (Some(l.parse().ok()?), Some(d.parse().ok()?)),
                None => (Some(c.parse().ok()?), None),
            },
        };
        Some(Entry {
            file: file.into(),
            generation,
            slot,
            tries_left,
            tries_done,
        })
    }

    pub fn name(generation: u64, slot: Slot, tries: Option<u32>) -> String {
        match tries {
            Some(t) => format!("attestgate-{generation}-{slot}+{t}.efi"),
            None => format!("attestgate-{generation}-{slot}.efi"),
        }
    }

    /// "bad": no tries left; systemd-boot boots it only when nothing else is left.
    pub fn state(&self) -> &'static str {
        match self.tries_left {
            None => "good",
            Some(0) => "bad",
            Some(_) => "trying",
        }
    }
}

/// Our entries in `esp/EFI/Linux`, the one systemd-boot boots by default first (highest
/// generation among those not bad, then the bad ones, as systemd-boot orders them).
pub fn entries(esp: &Path) -> std::io::Result<Vec<Entry>> {
    let dir = esp.join("EFI/Linux");
    let mut v = Vec::new();
    for e in std::fs::read_dir(&dir)?.flatten() {
        if let Some(entry) = Entry::parse(&e.file_name().to_string_lossy()) {
            v.push(entry);
        }
    }
    v.sort_by(|x, y| {
        (x.tries_left == Some(0))
            .cmp(&(y.tries_left == Some(0)))
            .then(y.generation.cmp(&x.generation))
            .then(y.slot.name().cmp(&x.slot.name()))
    });
    Ok(v)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const LSBLK: &str = r#"{"blockdevices": [
      {"path":"/dev/vda", "pkname":null, "partuuid":null, "partlabel":null, "size":4294967296, "type":"disk"},
      {"path":"/dev/vda1", "pkname":"vda", "partuuid":"11111111-1111-4111-8111-111111111111", "partlabel":"esp", "size":268435456, "type":"part"},
      {"path":"/dev/vda2", "pkname":"vda", "partuuid":"AAAAAAAA-2222-4222-8222-222222222222", "partlabel":"root-a", "size":1073741824, "type":"part"},
      {"path":"/dev/vda3", "pkname":"vda", "partuuid":"33333333-3333-4333-8333-333333333333", "partlabel":"root-b", "size":1073741824, "type":"part"},
      {"path":"/dev/vda4", "pkname":"vda", "partuuid":"44444444-4444-4444-8444-444444444444", "partlabel":"data", "size":1900000000, "type":"part"},
      {"path":"/dev/vdb", "pkname":null, "partuuid":null, "partlabel":null, "size":1000, "type":"disk"},
      {"path":"/dev/vdb2", "pkname":"vdb", "partuuid":"55555555-5555-4555-8555-555555555555", "partlabel":"root-b", "size":1000, "type":"part"}
    ]}"#;

    #[test]
    fn finds_the_running_slot_and_the_other() {
        let d = from_lsblk(
            LSBLK,
            "root=PARTUUID=aaaaaaaa-2222-4222-8222-222222222222 ro quiet\n",
        )
        .unwrap();
        assert_eq!(d.current, Slot::A);
        assert_eq!(d.disk, PathBuf::from("/dev/vda"));
        // the other disk's root-b is not ours
        assert_eq!(d.slot(Slot::B).device, PathBuf::from("/dev/vda3"));
        assert_eq!(d.esp.device, PathBuf::from("/dev/vda1"));
        let d = from_lsblk(
            LSBLK,
            "root=PARTUUID=33333333-3333-4333-8333-333333333333 ro",
        )
        .unwrap();
        assert_eq!(d.current, Slot::B);
        assert_eq!(d.current.other(), Slot::A);
    }

    #[test]
    fn refuses_what_is_not_our_layout() {
        assert!(matches!(
            from_lsblk(LSBLK, "ro quiet"),
            Err(SlotError::NoRoot)
        ));
        assert!(matches!(
            from_lsblk(LSBLK, "root=PARTUUID=99999999-9999-4999-8999-999999999999"),
            Err(SlotError::RootNotFound(_))
        ));
        // booted from the data partition: not a slot
        assert!(matches!(
            from_lsblk(LSBLK, "root=PARTUUID=44444444-4444-4444-8444-444444444444"),
            Err(SlotError::NotASlot(_))
        ));
        // the root on a disk without root-a/esp
        assert!(matches!(
            from_lsblk(LSBLK, "root=PARTUUID=55555555-5555-4555-8555-555555555555"),
            Err(SlotError::Missing { .. })
        ));
        assert!(from_lsblk("{", "root=PARTUUID=x").is_err());
        assert!(from_lsblk("[]", "root=PARTUUID=x").is_err());
    }

    #[test]
    fn parses_boot_counted_names() {
        let e = Entry::parse("attestgate-12-b+2-1.efi").unwrap();
        assert_eq!(
            (e.generation, e.slot, e.tries_left, e.tries_done),
            (12, Slot::B, Some(2), Some(1))
        );
        assert_eq!(e.state(), "trying");
        assert_eq!(Entry::parse("attestgate-3-a.efi").unwrap().state(), "good");
        assert_eq!(
            Entry::parse("attestgate-3-a+0-3.efi").unwrap().state(),
            "bad"
        );
        assert_eq!(Entry::parse("attestgate-a+3.efi").unwrap().generation, 0);
        for bad in [
            "attestgate-3-c.efi",
            "attestgate-x-a.efi",
            "attestgate-3-ab.efi",
            "attestgate-3-a+x.efi",
            "attestgate-3-a.conf",
            "debian-6.1.efi",
            "attestgate-.efi",
        ] {
            assert_eq!(Entry::parse(bad), None, "{bad}");
        }
        assert_eq!(Entry::name(4, Slot::B, Some(3)), "attestgate-4-b+3.efi");
        assert_eq!(Entry::name(4, Slot::A, None), "attestgate-4-a.efi");
    }

    #[test]
    fn orders_entries_as_systemd_boot_does() {
        let dir = tempfile::tempdir().unwrap();
        let linux = dir.path().join("EFI/Linux");
        std::fs::create_dir_all(&linux).unwrap();
        for f in ["attestgate-1-a.efi", "attestgate-2-b+0-3.efi", "other.efi"] {
            std::fs::write(linux.join(f), b"").unwrap();
        }
        let v = entries(dir.path()).unwrap();
        assert_eq!(v.len(), 2);
        // the bad newer entry sorts after the good older one
        assert_eq!(v[0].file, "attestgate-1-a.efi");
        std::fs::write(linux.join("attestgate-3-a+3.efi"), b"").unwrap();
        assert_eq!(entries(dir.path()).unwrap()[0].file, "attestgate-3-a+3.efi");
    }
}
