//! The cloud formats made from the raw disk (issue 7): a fixed VHD for Azure, a streamOptimized
//! VMDK inside an OVA for VMware, and `disk.raw` in a tar.gz for GCP. Each converter checks
//! what it made before the build lists it in SHA256SUMS.

use crate::cmd::{self, io, Result};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// Names inside the OVA (the tar member order is the OVF rule, see [`ova`]).
pub const OVF_NAME: &str = "attestgate.ovf";
pub const MF_NAME: &str = "attestgate.mf";
pub const VMDK_NAME: &str = "attestgate-disk1.vmdk";
/// The one member of the GCP tarball (GCP, "Importing a raw disk image": "disk.raw").
pub const GCP_MEMBER: &str = "disk.raw";

/// gzip level for the GCP tarball. On the appliance disk (2818 MiB, 345 MiB allocated), measured
/// here: -1 8.2 s / 127.8 MB, -3 10.8 s / 123.8 MB, -6 (gzip's default) 20.8 s / 116.8 MB. CI has
/// 2 cores; -3 is the knee.
const GZIP_LEVEL: &str = "-3";

fn other(msg: String) -> cmd::Error {
    cmd::Error::Other(msg)
}

/// The raw disk's length; a missing or empty raw is a clear error, not a tool's.
fn raw_len(raw: &Path) -> Result<u64> {
    let meta = std::fs::metadata(raw).map_err(|e| {
        other(format!(
            "{}: cannot read the raw disk image to convert ({e}); the disk stage makes it",
            raw.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(other(format!("{}: not a regular file", raw.display())));
    }
    if meta.len() == 0 {
        return Err(other(format!(
            "{}: the raw disk image is empty",
            raw.display()
        )));
    }
    Ok(meta.len())
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// A fresh, empty work directory.
fn fresh_dir(dir: &Path) -> Result<()> {
    crate::rootfs::remove_tree(dir)?;
    std::fs::create_dir_all(dir).map_err(io(dir))
}

// ---------------------------------------------------------------------------------------------
// Azure: fixed VHD

/// What [`vhd`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vhd {
    /// The disk the guest sees: the raw length rounded up to a whole MiB.
    pub virtual_size: u64,
}

/// A fixed VHD of the raw disk, its virtual size rounded up to a whole MiB (Azure refuses a VHD
/// whose virtual size is not a whole number of MiB: "Prepare a Windows VHD or VHDX to upload to
/// Azure" / "Information for non-endorsed distributions", "All VHDs on Azure must have a virtual
/// size aligned to 1 MB"). force_size=on keeps qemu-img from rounding the size to a CHS geometry.
pub fn vhd(raw: &Path, out: &Path) -> Result<Vhd> {
    let len = raw_len(raw)?;
    let virtual_size = round_up(len, MIB);
    let _ = std::fs::remove_file(out);
    // Create the target at the rounded size, then copy the raw in: the tail beyond the raw
    // stays zero (the created file is sparse, so --target-is-zero skips writing zeros).
    cmd::run(
        Command::new("qemu-img")
            .args([
                "create",
                "-q",
                "-f",
                "vpc",
                "-o",
                "subformat=fixed,force_size=on",
            ])
            .arg(out)
            .arg(virtual_size.to_string()),
    )?;
    cmd::run(
        cmd::nice("qemu-img")
            .args([
                "convert",
                "-n",
                "--target-is-zero",
                "-f",
                "raw",
                "-O",
                "vpc",
            ])
            .arg(raw)
            .arg(out),
    )?;
    check_vhd(out, virtual_size)?;
    Ok(Vhd { virtual_size })
}

/// The fields of a VHD hard disk footer this build relies on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhdFooter {
    pub disk_type: u32,
    pub current_size: u64,
    pub original_size: u64,
}

/// VHD disk type "fixed hard disk" (spec, "Hard Disk Footer Format", Disk Type).
pub const VHD_FIXED: u32 = 2;

/// Parses a 512-byte hard disk footer. Microsoft, "Virtual Hard Disk Image Format
/// Specification" (version 1.0), "Hard Disk Footer Format": big-endian fields; Cookie
/// "conectix" at 0, Original Size at 40, Current Size at 48, Disk Type at 60, Checksum at 64
/// (the one's complement of the sum of all footer bytes without the checksum field).
pub fn parse_vhd_footer(footer: &[u8]) -> Result<VhdFooter> {
    let f: &[u8; 512] = footer
        .try_into()
        .map_err(|_| other(format!("VHD footer: {} bytes, want 512", footer.len())))?;
    if &f[0..8] != b"conectix" {
        return Err(other(format!(
            "VHD footer: cookie {:?}, want \"conectix\"",
            String::from_utf8_lossy(&f[0..8])
        )));
    }
    let be32 = |at: usize| u32::from_be_bytes([f[at], f[at + 1], f[at + 2], f[at + 3]]);
    let be64 = |at: usize| (u64::from(be32(at)) << 32) | u64::from(be32(at + 4));
    let sum: u32 = f
        .iter()
        .enumerate()
        .filter(|(i, _)| !(64..68).contains(i))
        .map(|(_, &b)| u32::from(b))
        .fold(0u32, u32::wrapping_add);
    let checksum = be32(64);
    if !sum != checksum {
        return Err(other(format!(
            "VHD footer: checksum {checksum:#010x}, computed {:#010x}",
            !sum
        )));
    }
    Ok(VhdFooter {
        original_size: be64(40),
        current_size: be64(48),
        disk_type: be32(60),
    })
}

/// Refuses a VHD that is not a fixed disk of exactly `virtual_size` bytes (a whole MiB) followed
/// by its 512-byte footer.
pub fn check_vhd(path: &Path, virtual_size: u64) -> Result<VhdFooter> {
    let bad = |why: String| other(format!("{}: not a valid fixed VHD: {why}", path.display()));
    if virtual_size == 0 || !virtual_size.is_multiple_of(MIB) {
        return Err(bad(format!(
            "virtual size {virtual_size} is not a whole number of MiB"
        )));
    }
    let len = cmd::size(path);
    if len != virtual_size + 512 {
        return Err(bad(format!(
            "file size {len}, want virtual size {virtual_size} + 512"
        )));
    }
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    file.seek(SeekFrom::Start(len - 512)).map_err(io(path))?;
    let mut footer = [0u8; 512];
    file.read_exact(&mut footer).map_err(io(path))?;
    let parsed = parse_vhd_footer(&footer).map_err(|e| bad(e.to_string()))?;
    if parsed.disk_type != VHD_FIXED {
        return Err(bad(format!(
            "disk type {}, want {VHD_FIXED} (fixed)",
            parsed.disk_type
        )));
    }
    if parsed.current_size != virtual_size {
        return Err(bad(format!(
            "footer current size {}, want {virtual_size}",
            parsed.current_size
        )));
    }
    Ok(parsed)
}

// ---------------------------------------------------------------------------------------------
// VMware: OVA

/// What [`ova`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ova {
    pub vmdk_size: u64,
    pub capacity: u64,
}

/// `qemu-img info --output=json`: the format, its create type (vmdk) and virtual size.
pub fn qemu_img_info(path: &Path, format: Option<&str>) -> Result<serde_json::Value> {
    let mut c = Command::new("qemu-img");
    c.args(["info", "--output=json"]);
    if let Some(f) = format {
        c.args(["-f", f]);
    }
    let out = cmd::run(c.arg(path))?;
    serde_json::from_str(&out).map_err(|e| other(format!("qemu-img info {}: {e}", path.display())))
}

/// The OVA: a ustar archive of the OVF descriptor, its manifest and a streamOptimized VMDK,
/// in that order. DMTF DSP0243 (OVF 1.1 and 2.x), "OVF package": an OVF package stored as one
/// file uses the TAR format, the OVF descriptor is the first file and the manifest the second.
/// `work` is scratch space for the members.
pub fn ova(raw: &Path, work: &Path, out: &Path, version: &str) -> Result<Ova> {
    raw_len(raw)?;
    fresh_dir(work)?;
    let vmdk = work.join(VMDK_NAME);
    // adapter_type only fills the VMDK's ddb.adapterType hint (qemu-img knows no pvscsi; VMware
    // writes "lsilogic" for PVSCSI disks too): the controller the VM gets is the OVF's.
    // ddb.virtualHWVersion matches the OVF's vmx-14.
    cmd::run(
        cmd::nice("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vmdk", "-o"])
            .arg("subformat=streamOptimized,adapter_type=lsilogic,hwversion=14")
            .arg(raw)
            .arg(&vmdk),
    )?;
    let info = qemu_img_info(&vmdk, Some("vmdk"))?;
    let capacity = info["virtual-size"]
        .as_u64()
        .ok_or_else(|| other(format!("qemu-img info {}: no virtual-size", vmdk.display())))?;
    let create_type = info["format-specific"]["data"]["create-type"].as_str();
    if create_type != Some("streamOptimized") {
        return Err(other(format!(
            "{}: create type {create_type:?}, want streamOptimized",
            vmdk.display()
        )));
    }
    let vmdk_size = cmd::size(&vmdk);
    // ustar's size field holds 11 octal digits (POSIX.1-2008, pax "ustar Interchange Format").
    if vmdk_size >= 8 * GIB {
        return Err(other(format!(
            "{}: {vmdk_size} bytes is too large for a ustar member",
            vmdk.display()
        )));
    }
    let descriptor = ovf_descriptor(&OvfDisk {
        vmdk_size,
        capacity,
        populated: cmd::allocated(raw).min(capacity),
        version,
    });
    let ovf = work.join(OVF_NAME);
    std::fs::write(&ovf, &descriptor).map_err(io(&ovf))?;
    let mf = work.join(MF_NAME);
    let manifest = format!(
        "SHA256({OVF_NAME})= {}\nSHA256({VMDK_NAME})= {}\n",
        cmd::sha256_file(&ovf)?,
        cmd::sha256_file(&vmdk)?
    );
    std::fs::write(&mf, manifest).map_err(io(&mf))?;
    let _ = std::fs::remove_file(out);
    // Members named on the command line are archived in that order.
    cmd::run(
        Command::new("tar")
            .args([
                "--format=ustar",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--mode=0644",
                "-cf",
            ])
            .arg(out)
            .arg("-C")
            .arg(work)
            .args([OVF_NAME, MF_NAME, VMDK_NAME]),
    )?;
    let members = ustar_members(out)?;
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if names != [OVF_NAME, MF_NAME, VMDK_NAME] {
        return Err(other(format!(
            "{}: members {names:?}, want {OVF_NAME}, {MF_NAME}, {VMDK_NAME} in that order",
            out.display()
        )));
    }
    crate::rootfs::remove_tree(work)?;
    Ok(Ova {
        vmdk_size,
        capacity,
    })
}

/// One member of a ustar archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub size: u64,
    /// Where its data starts in the archive.
    pub offset: u64,
}

/// The regular-file members of a ustar archive, in order. POSIX.1-2008, pax, "ustar
/// Interchange Format": 512-byte headers, name at 0 (100 bytes), size at 124 (12 bytes octal),
/// typeflag at 156, magic "ustar" at 257, prefix at 345 (155 bytes); data padded to 512 bytes;
/// the archive ends with zero blocks.
pub fn ustar_members(path: &Path) -> Result<Vec<Member>> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let len = cmd::size(path);
    let bad = |why: String| other(format!("{}: not a ustar archive: {why}", path.display()));
    let field = |h: &[u8], at: usize, n: usize| -> String {
        let raw = &h[at..at + n];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(n);
        String::from_utf8_lossy(&raw[..end]).into_owned()
    };
    let mut members = Vec::new();
    let mut pos = 0u64;
    let mut header = [0u8; 512];
    while pos + 512 <= len {
        file.seek(SeekFrom::Start(pos)).map_err(io(path))?;
        file.read_exact(&mut header).map_err(io(path))?;
        if header.iter().all(|&b| b == 0) {
            return Ok(members);
        }
        if &header[257..262] != b"ustar" {
            return Err(bad(format!("no ustar magic in the header at {pos}")));
        }
        let size_text = field(&header, 124, 12);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| bad(format!("size field {size_text:?} at {pos}")))?;
        let prefix = field(&header, 345, 155);
        let name = field(&header, 0, 100);
        let name = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        if matches!(header[156], b'0' | 0) {
            members.push(Member {
                name,
                size,
                offset: pos + 512,
            });
        }
        pos += 512 + round_up(size, 512);
    }
    Err(bad("no end-of-archive blocks".into()))
}

struct OvfDisk<'a> {
    vmdk_size: u64,
    capacity: u64,
    populated: u64,
    version: &'a str,
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The OVF 1.0 envelope (DMTF DSP0243 1.1; VMware's `vmw:` extensions). The RASD and VSSD
/// children are in the order of their CIM schemas (alphabetical), which ovftool validates.
/// Hardware: vmx-14 (ESXi 6.7 and later), 2 vCPUs, 2048 MB, a paravirtual SCSI controller
/// (Debian's cloud kernel ships vmw_pvscsi, not the LSI Logic mptspi driver) with the disk, one
/// VMXNET3 NIC (vmxnet3 is in the cloud kernel), UEFI firmware without Secure Boot (the boot
/// loader is not signed). debian11_64Guest: debian12_64Guest is known only to vSphere 8 hosts.
fn ovf_descriptor(d: &OvfDisk<'_>) -> String {
    let version = xml_escape(d.version);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:cim="http://schemas.dmtf.org/wbem/wscim/1/common" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{VMDK_NAME}" ovf:id="file1" ovf:size="{vmdk_size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized" ovf:populatedSize="{populated}"/>
  </DiskSection>
  <NetworkSection>
    <Info>The list of logical networks</Info>
    <Network ovf:name="VM Network">
      <Description>The network of the appliance's first interface</Description>
    </Network>
  </NetworkSection>
  <VirtualSystem ovf:id="attestgate">
    <Info>The attestgate appliance</Info>
    <Name>attestgate</Name>
    <ProductSection>
      <Info>Product information</Info>
      <Product>attestgate</Product>
      <Vendor>attestgate</Vendor>
      <Version>{version}</Version>
      <FullVersion>{version}</FullVersion>
    </ProductSection>
    <OperatingSystemSection ovf:id="96" vmw:osType="debian11_64Guest">
      <Info>The guest operating system</Info>
      <Description>Debian GNU/Linux 12 (64-bit)</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>attestgate</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>2048MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:Description>SCSI Controller</rasd:Description>
        <rasd:ElementName>SCSI Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>VirtualSCSI</rasd:ResourceSubType>
        <rasd:ResourceType>6</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>VM Network</rasd:Connection>
        <rasd:Description>VmxNet3 ethernet adapter on "VM Network"</rasd:Description>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
      <vmw:Config ovf:required="false" vmw:key="uefi.secureBoot.enabled" vmw:value="false"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#,
        vmdk_size = d.vmdk_size,
        capacity = d.capacity,
        populated = d.populated,
    )
}

// ---------------------------------------------------------------------------------------------
// GCP: disk.raw in a tar.gz

/// What [`gcp`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gcp {
    /// `disk.raw`'s length: the raw rounded up to a whole GiB.
    pub disk_size: u64,
}

/// The GCP import tarball: one member `disk.raw`, its size a whole number of GiB, archived
/// sparse in the old GNU format and gzipped. Google Cloud, "Manually import boot disks" /
/// "Importing a raw disk image": the raw disk must be named disk.raw, its size a multiple of
/// 1 GB (GiB), packed with `tar --format=oldgnu -Sczf`. `work` is scratch space.
pub fn gcp(raw: &Path, work: &Path, out: &Path) -> Result<Gcp> {
    let len = raw_len(raw)?;
    let disk_size = round_up(len, GIB);
    fresh_dir(work)?;
    let disk = work.join(GCP_MEMBER);
    // A sparse copy (cp looks for holes with SEEK_DATA), then grown sparsely.
    cmd::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(raw)
            .arg(&disk),
    )?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .map_err(io(&disk))?;
    f.set_len(disk_size).map_err(io(&disk))?;
    drop(f);
    let _ = std::fs::remove_file(out);
    cmd::run(
        cmd::nice("tar")
            .args([
                "--format=oldgnu",
                "-S",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-I",
                &format!("gzip {GZIP_LEVEL}"),
                "-cf",
            ])
            .arg(out)
            .arg("-C")
            .arg(work)
            .arg(GCP_MEMBER),
    )?;
    crate::rootfs::remove_tree(work)?;
    Ok(Gcp { disk_size })
}

/// Where the build puts the cloud formats.
pub fn outputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        dir.join("attestgate.vhd"),
        dir.join("attestgate.ova"),
        dir.join("attestgate-gcp.tar.gz"),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::io::Write;

    /// 3 MiB + 5 KiB with data at the start, in the middle and in the last partial MiB.
    const RAW_LEN: u64 = 3 * MIB + 5 * 1024;

    fn synthetic_raw(dir: &Path) -> PathBuf {
        let raw = dir.join("disk.img");
        let mut f = std::fs::File::create(&raw).unwrap();
        f.set_len(RAW_LEN).unwrap();
        for (at, byte) in [(0u64, 0x11u8), (MIB + 4096, 0x22), (3 * MIB + 1024, 0x33)] {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(&vec![byte; 4096]).unwrap();
        }
        raw
    }

    fn run_ok(c: &mut Command) -> String {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{c:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn vhd_is_fixed_and_rounded_to_a_mib() {
        let dir = tempfile::tempdir().unwrap();
        let raw = synthetic_raw(dir.path());
        let out = dir.path().join("a.vhd");
        let made = vhd(&raw, &out).unwrap();
        assert_eq!(made.virtual_size, 4 * MIB);
        assert_eq!(cmd::size(&out), 4 * MIB + 512);
        let footer = check_vhd(&out, 4 * MIB).unwrap();
        assert_eq!(footer.disk_type, VHD_FIXED);
        assert_eq!(footer.current_size, 4 * MIB);
        // qemu-img reads it as vpc of the rounded size (a fixed VHD has no header, so the
        // format is named: probing finds only raw).
        let info = qemu_img_info(&out, Some("vpc")).unwrap();
        assert_eq!(info["format"], "vpc");
        assert_eq!(info["virtual-size"], 4 * MIB);
        let cmp = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "vpc"])
                .arg(&raw)
                .arg(&out),
        );
        assert!(cmp.contains("Images are identical"), "{cmp}");
    }

    #[test]
    fn vhd_check_refuses_bad_footers() {
        let dir = tempfile::tempdir().unwrap();
        let raw = synthetic_raw(dir.path());
        let good = dir.path().join("a.vhd");
        vhd(&raw, &good).unwrap();
        // The wrong expected size.
        assert!(check_vhd(&good, 5 * MIB).is_err());
        assert!(check_vhd(&good, 4 * MIB + 512).is_err());
        let bytes = std::fs::read(&good).unwrap();
        let footer_at = bytes.len() - 512;
        let corrupt = |at: usize, value: &[u8]| {
            let mut b = bytes.clone();
            b[footer_at + at..footer_at + at + value.len()].copy_from_slice(value);
            let p = dir.path().join("bad.vhd");
            std::fs::write(&p, &b).unwrap();
            check_vhd(&p, 4 * MIB).unwrap_err().to_string()
        };
        assert!(corrupt(0, b"conectiy").contains("cookie"));
        // A changed field without a fixed checksum.
        assert!(corrupt(60, &3u32.to_be_bytes()).contains("checksum"));
        // A dynamic disk type with a correct checksum.
        let mut f: [u8; 512] = bytes[footer_at..].try_into().unwrap();
        f[60..64].copy_from_slice(&3u32.to_be_bytes());
        f[64..68].copy_from_slice(&[0; 4]);
        let sum = f
            .iter()
            .map(|&b| u32::from(b))
            .fold(0u32, u32::wrapping_add);
        f[64..68].copy_from_slice(&(!sum).to_be_bytes());
        assert_eq!(parse_vhd_footer(&f).unwrap().disk_type, 3);
        let mut b = bytes.clone();
        b[footer_at..].copy_from_slice(&f);
        let p = dir.path().join("dynamic.vhd");
        std::fs::write(&p, &b).unwrap();
        assert!(check_vhd(&p, 4 * MIB)
            .unwrap_err()
            .to_string()
            .contains("disk type 3"));
        // Truncated: the footer is gone.
        let p = dir.path().join("short.vhd");
        std::fs::write(&p, &bytes[..footer_at]).unwrap();
        assert!(check_vhd(&p, 4 * MIB).is_err());
        assert!(parse_vhd_footer(&[0u8; 511]).is_err());
    }

    #[test]
    fn ova_has_the_descriptor_first_and_a_matching_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let raw = synthetic_raw(dir.path());
        let out = dir.path().join("a.ova");
        let made = ova(&raw, &dir.path().join("work"), &out, "1.2.3").unwrap();
        assert_eq!(made.capacity, RAW_LEN);
        assert!(!dir.path().join("work").exists());

        // GNU tar agrees on the order (OVF: descriptor first, manifest second).
        let listing = run_ok(Command::new("tar").arg("-tf").arg(&out));
        let names: Vec<&str> = listing.lines().collect();
        assert_eq!(names, [OVF_NAME, MF_NAME, VMDK_NAME]);

        // Extract and check each member against the manifest.
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        run_ok(Command::new("tar").arg("-xf").arg(&out).arg("-C").arg(&x));
        let mf = std::fs::read_to_string(x.join(MF_NAME)).unwrap();
        let lines: Vec<&str> = mf.lines().collect();
        assert_eq!(lines.len(), 2, "{mf}");
        for (line, name) in lines.iter().zip([OVF_NAME, VMDK_NAME]) {
            let want = format!(
                "SHA256({name})= {}",
                cmd::sha256_file(&x.join(name)).unwrap()
            );
            assert_eq!(*line, want);
        }

        // The VMDK: streamOptimized, the raw's size.
        let info = qemu_img_info(&x.join(VMDK_NAME), None).unwrap();
        assert_eq!(info["format"], "vmdk");
        assert_eq!(
            info["format-specific"]["data"]["create-type"],
            "streamOptimized"
        );
        assert_eq!(info["virtual-size"], RAW_LEN);
        let cmp = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "vmdk"])
                .arg(&raw)
                .arg(x.join(VMDK_NAME)),
        );
        assert!(cmp.contains("Images are identical"), "{cmp}");

        // The descriptor parses as XML (an independent parser) and says what was made.
        let ovf = x.join(OVF_NAME);
        let script = "import sys, xml.etree.ElementTree as T\n\
            ns = {'o': 'http://schemas.dmtf.org/ovf/envelope/1', \
            'r': 'http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData', \
            'v': 'http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData'}\n\
            e = T.parse(sys.argv[1]).getroot()\n\
            a = lambda el, n: el.get('{' + ns['o'] + '}' + n)\n\
            f = e.find('o:References/o:File', ns)\n\
            d = e.find('o:DiskSection/o:Disk', ns)\n\
            vs = e.find('o:VirtualSystem', ns)\n\
            hw = vs.find('o:VirtualHardwareSection', ns)\n\
            types = [i.find('r:ResourceType', ns).text for i in hw.findall('o:Item', ns)]\n\
            print(e.tag, a(f, 'href'), a(f, 'size'), a(d, 'capacity'), \
            vs.find('o:ProductSection/o:Version', ns).text, \
            hw.find('o:System/v:VirtualSystemType', ns).text, ','.join(types))\n";
        let parsed = run_ok(Command::new("python3").arg("-c").arg(script).arg(&ovf));
        assert_eq!(
            parsed.trim(),
            format!(
                "{{http://schemas.dmtf.org/ovf/envelope/1}}Envelope {VMDK_NAME} {} {RAW_LEN} \
                 1.2.3 vmx-14 3,4,6,17,10",
                cmd::size(&x.join(VMDK_NAME))
            )
        );
        let text = std::fs::read_to_string(&ovf).unwrap();
        assert!(text.contains(r#"vmw:key="firmware" vmw:value="efi""#));

        // Our own ustar reader agrees with GNU tar, offsets included.
        let members = ustar_members(&out).unwrap();
        assert_eq!(members.len(), 3);
        let mut f = std::fs::File::open(&out).unwrap();
        let mut head = vec![0u8; members[0].size as usize];
        f.seek(SeekFrom::Start(members[0].offset)).unwrap();
        f.read_exact(&mut head).unwrap();
        assert_eq!(head, text.as_bytes());
    }

    #[test]
    fn gcp_tarball_holds_one_gib_aligned_disk_raw() {
        let dir = tempfile::tempdir().unwrap();
        let raw = synthetic_raw(dir.path());
        let out = dir.path().join("a.tar.gz");
        let made = gcp(&raw, &dir.path().join("work"), &out).unwrap();
        assert_eq!(made.disk_size, GIB);
        // Sparse: the 1 GiB member compresses to almost nothing.
        assert!(cmd::size(&out) < 64 * 1024, "{}", cmd::size(&out));
        let listing = run_ok(Command::new("tar").arg("-tvzf").arg(&out));
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 1, "{listing}");
        let fields: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(fields.last(), Some(&GCP_MEMBER));
        assert_eq!(fields[2].parse::<u64>().unwrap(), GIB);

        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        run_ok(Command::new("tar").arg("-xSzf").arg(&out).arg("-C").arg(&x));
        let disk = x.join(GCP_MEMBER);
        assert_eq!(cmd::size(&disk), GIB);
        assert!(cmd::allocated(&disk) < 16 * MIB);
        // Identical on the raw's length, zero beyond it (qemu-img compare's non-strict mode
        // checks the larger image's tail is unallocated or zero).
        let cmp = run_ok(
            Command::new("qemu-img")
                .args(["compare", "-f", "raw", "-F", "raw"])
                .arg(&raw)
                .arg(&disk),
        );
        assert!(cmp.contains("Images are identical"), "{cmp}");
    }

    #[test]
    fn a_missing_raw_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.raw");
        let work = dir.path().join("work");
        for err in [
            vhd(&missing, &dir.path().join("a.vhd")).unwrap_err(),
            ova(&missing, &work, &dir.path().join("a.ova"), "1").unwrap_err(),
            gcp(&missing, &work, &dir.path().join("a.tar.gz")).unwrap_err(),
        ] {
            let e = err.to_string();
            assert!(
                e.contains("none.raw") && e.contains("cannot read the raw disk image"),
                "{e}"
            );
        }
        let empty = dir.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        assert!(vhd(&empty, &dir.path().join("a.vhd"))
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(ustar_members(&empty).is_err());
    }
}
