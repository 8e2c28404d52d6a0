//! The root file system: a Debian bookworm tree from mmdebstrap (cached as a tarball keyed by
//! everything that goes into it), then attestgate's binaries, units and settings on top, then
//! split into the read-only root and the writable `/var` (the data partition).

use crate::cmd::{self, io, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SUITE: &str = "bookworm";
pub const MIRROR: &str = "http://deb.debian.org/debian";

/// What the appliance runs on. The cloud kernel carries every cloud's NIC and disk drivers;
/// systemd-boot provides the boot loader, the UKI stub and systemd-bless-boot (boot counting).
pub const PACKAGES: &[&str] = &[
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "zstd",
    "systemd",
    "systemd-sysv",
    "systemd-boot",
    "udev",
    "iproute2",
    "nftables",
    // operators' shell: keys only (image/guest/sshd-attestgate.conf)
    "openssh-server",
    "e2fsprogs",
    "mount",
    // logind (which needs D-Bus) turns the hypervisor's ACPI power button into a clean
    // shutdown: clouds stop instances that way, and `image smoke` powers off that way.
    "dbus",
];

/// Documentation and translations are not shipped (copyright files are).
const DPKG_OPTS: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
];

/// Bumped when the way the tarball is made changes without the lists above changing.
const RECIPE: &str = "mmdebstrap minbase v1";

/// The cache key: a digest of the suite, mirror, recipe, packages and dpkg options.
pub fn cache_key() -> String {
    key_of(PACKAGES, DPKG_OPTS)
}

fn key_of(packages: &[&str], dpkg_opts: &[&str]) -> String {
    let mut s = format!("{RECIPE}\n{SUITE}\n{MIRROR}\n");
    let mut pkgs: Vec<&str> = packages.to_vec();
    pkgs.sort_unstable();
    for p in pkgs {
        s.push_str(p);
        s.push('\n');
    }
    for o in dpkg_opts {
        s.push_str(o);
        s.push('\n');
    }
    let d = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    cmd::hex(&d.as_ref()[..8])
}

/// The Debian tree as a tarball: from the cache when its key matches, else made by mmdebstrap.
/// Returns the tarball and whether it came from the cache.
pub fn debian_tarball(cache_dir: &Path) -> Result<(PathBuf, bool)> {
    std::fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    let tar = cache_dir.join(format!("rootfs-{SUITE}-{}.tar", cache_key()));
    if tar.is_file() {
        return Ok((tar, true));
    }
    let partial = tar.with_extension("tar.partial");
    let mut c = cmd::nice("mmdebstrap");
    c.args(["--variant=minbase", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")));
    for o in DPKG_OPTS {
        c.arg(format!("--dpkgopt={o}"));
    }
    c.args(["--format=tar", SUITE]).arg(&partial).arg(MIRROR);
    cmd::run(&mut c)?;
    std::fs::rename(&partial, &tar).map_err(io(&tar))?;
    Ok((tar, false))
}

/// Unpacks the tarball into `dir` (emptied first), keeping owners, modes and xattrs.
pub fn unpack(tar: &Path, dir: &Path) -> Result<()> {
    remove_tree(dir)?;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    cmd::run(
        Command::new("tar")
            .args(["--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf"])
            .arg(tar)
            .arg("-C")
            .arg(dir),
    )?;
    Ok(())
}

pub fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(dir)(e)),
        _ => Ok(()),
    }
}

/// The kernel and initrd the tree's kernel package installed, and the boot files the UKI needs.
#[derive(Debug)]
pub struct BootFiles {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub os_release: PathBuf,
    pub stub: PathBuf,
    pub systemd_boot: PathBuf,
    pub kernel_version: String,
}

/// Guest files shipped in the crate (image/guest).
mod guest {
    pub const UNIT: &str = include_str!("../guest/attestgate.service");
    pub const FIRSTBOOT_UNIT: &str = include_str!("../guest/attestgate-firstboot.service");
    pub const HEALTH_UNIT: &str = include_str!("../guest/attestgate-health.service");
    pub const HEALTH: &str = include_str!("../guest/attestgate-health");
    pub const BOOT_CHECK_UNIT: &str = include_str!("../guest/attestgate-boot-check.service");
    pub const BOOT_CHECK: &str = include_str!("../guest/attestgate-boot-check");
    pub const NFTABLES: &str = include_str!("../guest/nftables.conf");
    pub const SSHD: &str = include_str!("../guest/sshd-attestgate.conf");
    pub const SSH_KEYGEN_UNIT: &str = include_str!("../guest/attestgate-ssh-keygen.service");
    pub const SSH_DROPIN: &str = include_str!("../guest/ssh-attestgate.conf");
    pub const SYSCTL: &str = include_str!("../guest/90-attestgate.conf");
    pub const NETWORK: &str = include_str!("../guest/80-dhcp.network");
    pub const FSTAB: &str = include_str!("../guest/fstab");
    pub const REPART_DATA: &str = include_str!("../guest/50-data.conf");
}

/// What `customize` puts on the tree besides the fixed guest files.
#[derive(Debug, Clone, Copy)]
pub struct Payload<'a> {
    pub attestgate: &'a Path,
    pub firstboot: &'a Path,
    /// The image's version (`/usr/lib/attestgate/image-version`).
    pub version: &'a str,
    /// The Ed25519 public key (hex) updates must be signed with.
    pub update_key: &'a str,
}

/// Puts attestgate on the tree and moves `/var` out to `var_dir` (the data partition's
/// contents). Returns the boot files, which stay outside the root (they go into the UKI).
pub fn customize(
    root: &Path,
    var_dir: &Path,
    boot_dir: &Path,
    payload: &Payload<'_>,
) -> Result<BootFiles> {
    let (attestgate, firstboot) = (payload.attestgate, payload.firstboot);
    let w = |rel: &str, contents: &str, mode: u32| write(root, rel, contents.as_bytes(), mode);
    // Debug info stays on the build host (the release profile keeps line tables).
    install_stripped(attestgate, &root.join("usr/bin/attestgate"))?;
    install_stripped(
        firstboot,
        &root.join("usr/lib/attestgate/attestgate-firstboot"),
    )?;
    w("usr/lib/attestgate/attestgate-health", guest::HEALTH, 0o755)?;
    w(
        "usr/lib/attestgate/attestgate-boot-check",
        guest::BOOT_CHECK,
        0o755,
    )?;
    w(
        "usr/lib/attestgate/image-version",
        &format!("{}\n", payload.version),
        0o644,
    )?;
    w(
        &format!(
            "usr/lib/attestgate/update-keys/{}.pub",
            &payload.update_key[..16.min(payload.update_key.len())]
        ),
        &format!("{}\n", payload.update_key),
        0o644,
    )?;
    w(
        "etc/systemd/system/attestgate-boot-check.service",
        guest::BOOT_CHECK_UNIT,
        0o644,
    )?;
    w("etc/nftables.conf", guest::NFTABLES, 0o755)?;
    w("etc/ssh/sshd_config.d/attestgate.conf", guest::SSHD, 0o644)?;
    w(
        "etc/systemd/system/attestgate-ssh-keygen.service",
        guest::SSH_KEYGEN_UNIT,
        0o644,
    )?;
    w(
        "etc/systemd/system/ssh.service.d/attestgate.conf",
        guest::SSH_DROPIN,
        0o644,
    )?;
    // host keys made by mmdebstrap's postinst would be the same on every appliance
    let ssh_dir = root.join("etc/ssh");
    if let Ok(entries) = std::fs::read_dir(&ssh_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                std::fs::remove_file(e.path()).map_err(io(&ssh_dir))?;
            }
        }
    }
    w("etc/systemd/system/attestgate.service", guest::UNIT, 0o644)?;
    w(
        "etc/systemd/system/attestgate-firstboot.service",
        guest::FIRSTBOOT_UNIT,
        0o644,
    )?;
    w(
        "etc/systemd/system/attestgate-health.service",
        guest::HEALTH_UNIT,
        0o644,
    )?;
    w("etc/sysctl.d/90-attestgate.conf", guest::SYSCTL, 0o644)?;
    w("etc/systemd/network/80-dhcp.network", guest::NETWORK, 0o644)?;
    w("etc/fstab", guest::FSTAB, 0o644)?;
    w("etc/repart.d/50-data.conf", guest::REPART_DATA, 0o644)?;
    w("etc/hostname", "attestgate\n", 0o644)?;
    w(
        "etc/hosts",
        "127.0.0.1 localhost\n127.0.1.1 attestgate\n::1 localhost ip6-localhost ip6-loopback\n",
        0o644,
    )?;
    // Empty: on the read-only root systemd makes a transient machine id each boot.
    w("etc/machine-id", "", 0o444)?;
    for (wants, unit, target) in [
        (
            "multi-user.target.wants",
            "attestgate.service",
            "/etc/systemd/system/attestgate.service",
        ),
        (
            "multi-user.target.wants",
            "attestgate-firstboot.service",
            "/etc/systemd/system/attestgate-firstboot.service",
        ),
        (
            "multi-user.target.wants",
            "attestgate-health.service",
            "/etc/systemd/system/attestgate-health.service",
        ),
        (
            "multi-user.target.wants",
            "attestgate-boot-check.service",
            "/etc/systemd/system/attestgate-boot-check.service",
        ),
        (
            "boot-complete.target.requires",
            "attestgate-boot-check.service",
            "/etc/systemd/system/attestgate-boot-check.service",
        ),
        (
            "multi-user.target.wants",
            "ssh.service",
            "/lib/systemd/system/ssh.service",
        ),
        (
            "sysinit.target.wants",
            "nftables.service",
            "/lib/systemd/system/nftables.service",
        ),
        (
            "multi-user.target.wants",
            "systemd-networkd.service",
            "/lib/systemd/system/systemd-networkd.service",
        ),
        (
            "sockets.target.wants",
            "systemd-networkd.socket",
            "/lib/systemd/system/systemd-networkd.socket",
        ),
        (
            "network-online.target.wants",
            "systemd-networkd-wait-online.service",
            "/lib/systemd/system/systemd-networkd-wait-online.service",
        ),
        (
            "getty.target.wants",
            "serial-getty@ttyS0.service",
            "/lib/systemd/system/serial-getty@.service",
        ),
    ] {
        let dir = root.join("etc/systemd/system").join(wants);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let link = dir.join(unit);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(target, &link).map_err(io(&link))?;
    }
    // /etc/attestgate lives on the writable data partition.
    let etc_link = root.join("etc/attestgate");
    let _ = std::fs::remove_file(&etc_link);
    std::os::unix::fs::symlink("/var/etc/attestgate", &etc_link).map_err(io(&etc_link))?;
    std::fs::create_dir_all(root.join("efi")).map_err(io(root))?;

    // The boot files leave the root: the UKI carries them.
    let boot = boot_files(root, boot_dir)?;
    // The appliance never runs dpkg or maintainer scripts (the root is read-only and updates
    // replace it whole): Perl's full library, pulled in for the kernel packages' scripts at
    // build time, is not shipped (perl-base, which is Essential, stays).
    for build_only in ["usr/share/perl", "usr/lib/x86_64-linux-gnu/perl"] {
        let p = root.join(build_only);
        if p.is_dir() {
            remove_tree(&p)?;
        }
    }
    for junk in [
        "var/cache/apt",
        "var/lib/apt/lists",
        "var/log/apt",
        "var/cache/debconf/templates.dat-old",
    ] {
        let p = root.join(junk);
        if p.is_dir() {
            remove_tree(&p)?;
            std::fs::create_dir_all(&p).map_err(io(&p))?;
        }
    }

    // /var becomes the data partition.
    remove_tree(var_dir)?;
    std::fs::rename(root.join("var"), var_dir).map_err(io(var_dir))?;
    let var = root.join("var");
    std::fs::create_dir(&var).map_err(io(&var))?;
    set_mode(&var, 0o755)?;
    for (dir, mode) in [
        ("etc", 0o755),
        ("etc/attestgate", 0o700),
        ("lib/attestgate-firstboot", 0o700),
    ] {
        let p = var_dir.join(dir);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
        set_mode(&p, mode)?;
    }
    Ok(boot)
}

fn boot_files(root: &Path, boot_dir: &Path) -> Result<BootFiles> {
    remove_tree(boot_dir)?;
    std::fs::create_dir_all(boot_dir).map_err(io(boot_dir))?;
    let rboot = root.join("boot");
    let mut version = None;
    for e in std::fs::read_dir(&rboot).map_err(io(&rboot))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_prefix("vmlinuz-") {
            version = Some(v.to_string());
        }
    }
    let Some(version) = version else {
        return Err(cmd::Error::Other(format!(
            "{}: no kernel (vmlinuz-*) installed",
            rboot.display()
        )));
    };
    let kernel = boot_dir.join("vmlinuz");
    let initrd = boot_dir.join("initrd.img");
    std::fs::rename(rboot.join(format!("vmlinuz-{version}")), &kernel).map_err(io(&kernel))?;
    std::fs::rename(rboot.join(format!("initrd.img-{version}")), &initrd).map_err(io(&initrd))?;
    for link in ["vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"] {
        let _ = std::fs::remove_file(root.join(link));
    }
    let os_release = boot_dir.join("os-release");
    std::fs::copy(root.join("usr/lib/os-release"), &os_release).map_err(io(&os_release))?;
    // The stub and loader of the tree's own systemd; the host's if the tree has none.
    let pick = |name: &str| -> Result<PathBuf> {
        for base in [
            root.join("usr/lib/systemd/boot/efi"),
            PathBuf::from("/usr/lib/systemd/boot/efi"),
        ] {
            let p = base.join(name);
            if p.is_file() {
                let dst = boot_dir.join(name);
                std::fs::copy(&p, &dst).map_err(io(&dst))?;
                return Ok(dst);
            }
        }
        Err(cmd::Error::Other(format!(
            "{name} not found (install systemd-boot-efi)"
        )))
    };
    Ok(BootFiles {
        kernel,
        initrd,
        os_release,
        stub: pick("linuxx64.efi.stub")?,
        systemd_boot: pick("systemd-bootx64.efi")?,
        kernel_version: version,
    })
}

fn write(root: &Path, rel: &str, contents: &[u8], mode: u32) -> Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, contents).map_err(io(&p))?;
    set_mode(&p, mode)
}

fn install_stripped(src: &Path, dst: &Path) -> Result<()> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let _ = std::fs::remove_file(dst);
    cmd::run(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(src)
            .arg(dst),
    )?;
    set_mode(dst, 0o755)
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_key_follows_the_package_list() {
        let key = cache_key();
        println!("rootfs cache key {key}");
        assert_eq!(key.len(), 16);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
        // the order of the list does not matter; its contents do
        assert_eq!(key_of(&["a", "b"], &[]), key_of(&["b", "a"], &[]));
        assert_ne!(key_of(&["a", "b"], &[]), key_of(&["a", "b", "c"], &[]));
        assert_ne!(key_of(&["a"], &[]), key_of(&["a"], &["path-exclude=/x"]));
    }
}
