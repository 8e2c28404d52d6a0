//! `image build`: the stages, in order, each reported with its time and size.

use crate::bios;
use crate::cmd::{self, io, mib, Result, Stages};
use crate::convert;
use crate::disk::{self, Identities, Outputs};
use crate::rootfs;
use crate::update::bundle;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Targets from issue 7, printed beside the measured figures.
pub const TARGET_COLD_BUILD: Duration = Duration::from_secs(5 * 60);
pub const TARGET_QCOW2_BYTES: u64 = 150 * 1000 * 1000;

#[derive(Debug, Clone)]
pub struct Options {
    /// Outputs here; the cache and the work tree under it.
    pub out: PathBuf,
    /// A release `attestgate` binary; built with cargo when absent.
    pub binary: Option<PathBuf>,
    /// An `attestgate-firstboot` binary; built with cargo when absent.
    pub firstboot: Option<PathBuf>,
    /// The update signing key (Ed25519 PKCS#8); made there when absent.
    pub signing_key: PathBuf,
    /// The image's version (default: the workspace version, the git commit and the time).
    pub version: Option<String>,
    /// Only the update bundle (no disk images): for a new version of a deployed appliance.
    pub update_only: bool,
}

/// The default signing key: one per build machine, shared by every output directory so that
/// images and bundles built here accept each other. Keep a release key elsewhere.
pub fn default_signing_key() -> PathBuf {
    target_dir().join("image-keys/update-signing.pk8")
}

/// `0.1.0+g5c7b376.20261127T1327Z`: the workspace version, the commit (when built from git)
/// and the UTC build time.
pub fn default_version() -> String {
    let mut v = env!("CARGO_PKG_VERSION").to_string();
    let commit = Command::new("git")
        .arg("-C")
        .arg(workspace_root())
        .args(["rev-parse", "--short=7", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    v.push('+');
    if let Some(c) = commit.filter(|c| !c.is_empty()) {
        v.push_str(&format!("g{c}."));
    }
    let stamp = Command::new("date")
        .args(["-u", "+%Y%m%dT%H%MZ"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    v.push_str(&stamp);
    v
}

#[derive(Debug)]
pub struct Report {
    pub stages: Stages,
    pub rootfs_cached: bool,
    pub raw: PathBuf,
    pub qcow2: PathBuf,
    pub compression: &'static str,
    pub vhd: PathBuf,
    pub ova: PathBuf,
    pub gcp: PathBuf,
    pub version: String,
    pub bundle: PathBuf,
    pub update_only: bool,
}

/// The workspace this crate belongs to (for `cargo build --release`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn build(opts: &Options) -> Result<Report> {
    let mut st = Stages::default();
    let out = Outputs {
        dir: opts.out.clone(),
    };
    let work = opts.out.join("work");
    // one cache for every output directory (updates are built beside the image)
    let cache = target_dir().join("image-cache");
    std::fs::create_dir_all(&work).map_err(io(&work))?;

    // 1. binaries
    let t = st.start("binaries");
    let (attestgate, firstboot) = binaries(opts)?;
    st.finish(
        "binaries",
        t,
        Some(cmd::size(&attestgate) + cmd::size(&firstboot)),
        if opts.binary.is_some() {
            "attestgate given by --binary + attestgate-firstboot"
        } else {
            "release attestgate + attestgate-firstboot"
        },
    );

    // 2. rootfs
    let t = st.start("rootfs");
    let version = opts.version.clone().unwrap_or_else(default_version);
    let (key, key_made) = bundle::signing_key(&opts.signing_key)
        .map_err(|e| cmd::Error::Other(format!("update signing key: {e}")))?;
    if key_made {
        eprintln!(
            "image: made a new update signing key {} (images built with another key refuse \
             this build's updates)",
            opts.signing_key.display()
        );
    }
    let (tarball, cached) = rootfs::debian_tarball(&cache)?;
    let root = work.join("rootfs");
    let var = work.join("var");
    let boot_dir = work.join("boot");
    rootfs::unpack(&tarball, &root)?;
    let mut boot = rootfs::customize(
        &root,
        &var,
        &boot_dir,
        &rootfs::Payload {
            attestgate: &attestgate,
            firstboot: &firstboot,
            version: &version,
            update_key: &bundle::public_key_hex(&key),
        },
    )?;
    st.finish(
        "rootfs",
        t,
        Some(cmd::allocated(&root) + cmd::allocated(&var)),
        &format!(
            "{} mmdebstrap {}, kernel {}",
            if cached { "cached" } else { "fresh" },
            tarball.display(),
            boot.kernel_version
        ),
    );

    // 3. UKI + ESP, GRUB for legacy BIOS
    let t = st.start("boot");
    let initrd_as_built = cmd::size(&boot.initrd);
    boot.initrd = disk::smaller_initrd(&boot.initrd, &cache)?;
    let ids = Identities::random()?;
    let uki_a = work.join("attestgate-a.efi");
    let osrel = work.join("osrel");
    std::fs::write(&osrel, disk::osrel(&version, &boot.os_release)?).map_err(io(&osrel))?;
    let cmdline_a = disk::cmdline(&ids.root_a);
    disk::uki(&boot, &osrel, &cmdline_a, &work, &uki_a)?;
    let bios_tree = work.join("esp-bios");
    let core_img = work.join("core.img");
    let esp = work.join("esp.img");
    if !opts.update_only {
        disk::bios_tree(&boot, &cmdline_a, &bios_tree)?;
        bios::core_img(&core_img)?;
        disk::esp(&boot, &uki_a, &bios_tree, &esp)?;
    }
    st.finish(
        "boot",
        t,
        Some(cmd::size(&uki_a) + cmd::allocated(&bios_tree) + cmd::size(&core_img)),
        &format!(
            "systemd-boot + UKI EFI/Linux/{}; GRUB i386-pc core.img {} KiB + /bios/a; initrd {} \
             -> {}",
            disk::FIRST_ENTRY,
            cmd::size(&core_img) / 1024,
            mib(initrd_as_built),
            mib(cmd::size(&boot.initrd))
        ),
    );

    // 4. the root file system, sized to its contents (the slot has room to grow)
    let t = st.start("root");
    let root_img = work.join("root-a.ext4");
    let root_mib = disk::root_size_mib(cmd::allocated(&root))?;
    disk::ext4(&root, "root-a", &ids.root_a_fs, root_mib, &root_img)?;
    st.finish(
        "root",
        t,
        Some(cmd::size(&root_img)),
        &format!("ext4 of {root_mib} MiB in a {} MiB slot", disk::ROOT_MIB),
    );

    // 5. the signed update bundle
    let t = st.start("update");
    let bundle_path = out.bundle();
    let manifest = bundle::write(&bundle_path, &version, &uki_a, &root_img, &key, &work)
        .map_err(|e| cmd::Error::Other(format!("update bundle: {e}")))?;
    st.finish(
        "update",
        t,
        Some(cmd::size(&bundle_path)),
        &format!("{}, version {}", bundle_path.display(), manifest.version),
    );
    if opts.update_only {
        let _ = std::fs::remove_file(&root_img);
        return Ok(Report {
            stages: st,
            rootfs_cached: cached,
            raw: out.raw(),
            qcow2: out.qcow2(),
            compression: "",
            vhd: PathBuf::new(),
            ova: PathBuf::new(),
            gcp: PathBuf::new(),
            version,
            bundle: bundle_path,
            update_only: true,
        });
    }

    // 6. file systems + GPT
    let t = st.start("disk");
    let data_img = work.join("data.ext4");
    disk::ext4(&var, "data", &ids.data_fs, disk::DATA_MIB, &data_img)?;
    disk::assemble(&ids, &esp, &root_img, &data_img, &core_img, &out.raw())?;
    for tmp in [&root_img, &data_img, &esp] {
        let _ = std::fs::remove_file(tmp);
    }
    st.finish(
        "disk",
        t,
        Some(cmd::allocated(&out.raw())),
        &format!(
            "GPT esp/root-a/root-b/data/bios + GRUB MBR, raw {} apparent",
            mib(cmd::size(&out.raw()))
        ),
    );

    // 7. qcow2
    let t = st.start("qcow2");
    let compression = disk::qcow2(&out.raw(), &out.qcow2())?;
    st.finish(
        "qcow2",
        t,
        Some(cmd::size(&out.qcow2())),
        &format!("{compression} compression"),
    );

    // 8.–10. the cloud formats
    let (vhd, ova, gcp) = convert::outputs(&out.dir);
    let t = st.start("vhd");
    let made = convert::vhd(&out.raw(), &vhd)?;
    st.finish(
        "vhd",
        t,
        Some(cmd::allocated(&vhd)),
        &format!(
            "Azure fixed VHD, {} virtual, footer checked",
            mib(made.virtual_size)
        ),
    );
    let t = st.start("ova");
    let made = convert::ova(&out.raw(), &work.join("ova"), &ova, &version)?;
    st.finish(
        "ova",
        t,
        Some(cmd::size(&ova)),
        &format!(
            "VMware OVF + streamOptimized VMDK of {}",
            mib(made.vmdk_size)
        ),
    );
    let t = st.start("gcp");
    let made = convert::gcp(&out.raw(), &work.join("gcp"), &gcp)?;
    st.finish(
        "gcp",
        t,
        Some(cmd::size(&gcp)),
        &format!("GCP disk.raw of {} in tar.gz", mib(made.disk_size)),
    );

    // 11. manifest
    let t = st.start("manifest");
    let files = [
        out.raw(),
        out.qcow2(),
        vhd.clone(),
        ova.clone(),
        gcp.clone(),
        out.bundle(),
    ];
    let mut manifest = String::new();
    for (f, sum) in files.iter().zip(sha256_all(&files)) {
        let name = f.file_name().map(|n| n.to_string_lossy().into_owned());
        manifest.push_str(&format!("{}  {}\n", sum?, name.unwrap_or_default()));
    }
    std::fs::write(out.manifest(), &manifest).map_err(io(&out.manifest()))?;
    st.finish("manifest", t, None, "SHA256SUMS");

    Ok(Report {
        stages: st,
        rootfs_cached: cached,
        raw: out.raw(),
        qcow2: out.qcow2(),
        compression,
        vhd,
        ova,
        gcp,
        version,
        bundle: out.bundle(),
        update_only: false,
    })
}

/// SHA-256 of each file, one thread per file: the raw and the VHD are 2.8 GB each, and hashing
/// them one after the other on one core took 13 s.
fn sha256_all(files: &[PathBuf]) -> Vec<Result<String>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = files
            .iter()
            .map(|f| s.spawn(move || cmd::sha256_file(f)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(cmd::Error::Other(
                        "sha256: a hashing thread panicked".into(),
                    ))
                })
            })
            .collect()
    })
}

fn binaries(opts: &Options) -> Result<(PathBuf, PathBuf)> {
    let release = target_dir().join("release");
    // One cargo run per package: building both in one invocation unifies their dependencies'
    // features differently from a plain `cargo build --release -p attestgate` and rebuilds
    // the whole tree.
    if opts.binary.is_none() {
        cargo_release("attestgate", "attestgate")?;
    }
    if opts.firstboot.is_none() {
        cargo_release("image", "attestgate-firstboot")?;
    }
    let attestgate = opts
        .binary
        .clone()
        .unwrap_or_else(|| release.join("attestgate"));
    let firstboot = opts
        .firstboot
        .clone()
        .unwrap_or_else(|| release.join("attestgate-firstboot"));
    for b in [&attestgate, &firstboot] {
        if !b.is_file() {
            return Err(cmd::Error::Other(format!(
                "{}: no such binary",
                b.display()
            )));
        }
    }
    Ok((attestgate, firstboot))
}

fn cargo_release(package: &str, bin: &str) -> Result<()> {
    eprintln!("image: cargo build --release -p {package} --bin {bin}");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", package, "--bin", bin])
        .status()
        .map_err(io(Path::new("cargo")))?;
    if status.success() {
        Ok(())
    } else {
        Err(cmd::Error::Tool {
            tool: format!("cargo build --release -p {package}"),
            reason: status.to_string(),
        })
    }
}

/// The summary after a build: every stage, the outputs, and the targets beside the figures.
pub fn print_report(r: &Report) {
    println!("image build: version {}", r.version);
    for (name, took, size, note) in &r.stages.done {
        let size = size.map(mib).unwrap_or_default();
        println!(
            "  {name:<9} {:>7.1} s  {size:>10}  {note}",
            took.as_secs_f64()
        );
    }
    let total = r.stages.total();
    let qcow2 = cmd::size(&r.qcow2);
    // The cold-build target is about the image: cargo's release build is reported apart (it
    // is shared with the rest of CI and cached by cargo).
    let cargo_time: Duration = r
        .stages
        .done
        .iter()
        .filter(|s| s.0 == "binaries")
        .map(|s| s.1)
        .sum();
    let image_time = total.saturating_sub(cargo_time);
    println!(
        "  total     {:>7.1} s  (image stages {:.1} s with a {} rootfs, cargo {:.1} s; target for \
         a cold build: <= {} s{})",
        total.as_secs_f64(),
        image_time.as_secs_f64(),
        if r.rootfs_cached { "cached" } else { "cold" },
        cargo_time.as_secs_f64(),
        TARGET_COLD_BUILD.as_secs(),
        if r.rootfs_cached {
            ""
        } else if image_time <= TARGET_COLD_BUILD {
            ", met"
        } else {
            ", MISSED"
        }
    );
    println!(
        "  update    {} ({})",
        r.bundle.display(),
        mib(cmd::size(&r.bundle))
    );
    if r.update_only {
        return;
    }
    println!(
        "  raw       {} ({} apparent, {} allocated)",
        r.raw.display(),
        mib(cmd::size(&r.raw)),
        mib(cmd::allocated(&r.raw))
    );
    println!(
        "  qcow2     {} ({:.1} MB, {} compression; target <= 150 MB: {})",
        r.qcow2.display(),
        qcow2 as f64 / 1e6,
        r.compression,
        if qcow2 <= TARGET_QCOW2_BYTES {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "  vhd       {} ({} apparent, {} allocated; Azure)",
        r.vhd.display(),
        mib(cmd::size(&r.vhd)),
        mib(cmd::allocated(&r.vhd))
    );
    println!(
        "  ova       {} ({:.1} MB; VMware)",
        r.ova.display(),
        cmd::size(&r.ova) as f64 / 1e6
    );
    println!(
        "  gcp       {} ({:.1} MB; GCP image import)",
        r.gcp.display(),
        cmd::size(&r.gcp) as f64 / 1e6
    );
}
