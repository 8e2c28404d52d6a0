//! The disk: unified kernel images, the EFI system partition, ext4 file systems made from
//! directories, and the GPT, all on plain files (no loop devices, no mounts).
//!
//! Layout (1 MiB aligned):
//!
//! | # | label  | type (UAPI discoverable partitions spec) | size          | contents        |
//! |---|--------|------------------------------------------|---------------|-----------------|
//! | 1 | esp    | EFI system                               | 256 MiB       | systemd-boot, UKIs |
//! | 2 | root-a | root x86-64                              | 1 GiB         | ext4, read-only |
//! | 3 | root-b | root x86-64                              | 1 GiB         | empty until the first update |
//! | 4 | data   | Linux generic                            | 512 MiB → disk | ext4, /var, grown on first boot |
//! | 5 | bios   | BIOS boot (GRUB), LBA 40–2047            | 1004 KiB      | GRUB core.img (legacy BIOS) |
//!
//! The MBR carries GRUB's boot code under the protective partition table (see `bios`).

use crate::bios;
use crate::cmd::{self, io, Result};
use crate::rootfs::BootFiles;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1024 * 1024;
pub const ESP_MIB: u64 = 256;
pub const ROOT_MIB: u64 = 1024;
pub const DATA_MIB: u64 = 512;
/// Boot attempts a new entry gets before systemd-boot counts it bad (Boot Loader Spec, "Boot
/// counting").
pub const BOOT_TRIES: u32 = 3;
/// Slot A's entry on a new disk: generation 1 (updates count up; see update::slots::Entry).
pub const FIRST_ENTRY: &str = "attestgate-1-a+3.efi";

const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
const TYPE_LINUX: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// Partition identities, chosen per build.
#[derive(Debug, Clone)]
pub struct Identities {
    pub root_a: String,
    pub root_b: String,
    pub esp: String,
    pub data: String,
    pub root_a_fs: String,
    pub data_fs: String,
}

impl Identities {
    pub fn random() -> Result<Identities> {
        Ok(Identities {
            root_a: cmd::uuid()?,
            root_b: cmd::uuid()?,
            esp: cmd::uuid()?,
            data: cmd::uuid()?,
            root_a_fs: cmd::uuid()?,
            data_fs: cmd::uuid()?,
        })
    }
}

/// The kernel command line of a slot: its root by PARTUUID, read-only, the serial console last
/// (it becomes /dev/console, where the first-boot and health lines go).
pub fn cmdline(root_partuuid: &str) -> String {
    format!(
        "root=PARTUUID={root_partuuid} ro rootfstype=ext4 rootwait panic=10 quiet \
         console=tty0 console=ttyS0,115200"
    )
}

/// One PE section to add to the stub.
struct Section<'a> {
    name: &'a str,
    file: &'a Path,
}

/// A unified kernel image: systemd's EFI stub with .osrel, .cmdline, .linux and .initrd
/// sections, placed after the stub's own sections (ukify is not in bookworm; objcopy is).
pub fn uki(boot: &BootFiles, osrel: &Path, cmdline: &str, work: &Path, out: &Path) -> Result<()> {
    let cmdline_file = work.join("cmdline.txt");
    std::fs::write(&cmdline_file, format!("{cmdline}\0")).map_err(io(&cmdline_file))?;
    let dump = cmd::run(Command::new("objdump").arg("-h").arg(&boot.stub))?;
    let mut end = stub_end(&dump)?;
    let sections = [
        Section {
            name: ".osrel",
            file: osrel,
        },
        Section {
            name: ".cmdline",
            file: &cmdline_file,
        },
        Section {
            name: ".linux",
            file: &boot.kernel,
        },
        Section {
            name: ".initrd",
            file: &boot.initrd,
        },
    ];
    let mut c = Command::new("objcopy");
    for s in &sections {
        let vma = align(end, 0x1000);
        c.arg("--add-section")
            .arg(format!("{}={}", s.name, s.file.display()))
            .arg("--change-section-vma")
            .arg(format!("{}={vma:#x}", s.name));
        end = vma + cmd::size(s.file);
    }
    c.arg(&boot.stub).arg(out);
    cmd::run(&mut c)?;
    Ok(())
}

/// The end (VMA + size) of the stub's last section, from `objdump -h`.
fn stub_end(objdump: &str) -> Result<u64> {
    let mut end = 0u64;
    for line in objdump.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        // "  0 .text  0000c9e8  0000000000001000  0000000000001000  00000400  2**4"
        if f.len() >= 4 && f[0].parse::<u32>().is_ok() {
            let size = u64::from_str_radix(f[2], 16);
            let vma = u64::from_str_radix(f[3], 16);
            if let (Ok(size), Ok(vma)) = (size, vma) {
                end = end.max(vma + size);
            }
        }
    }
    if end == 0 {
        return Err(cmd::Error::Other(
            "objdump -h: no sections in the stub".into(),
        ));
    }
    Ok(end)
}

/// The UKI's `.osrel`. systemd-boot sorts type #2 entries by IMAGE_ID, then by version, then
/// by file name, newest first (systemd 252 `config_entry_compare`); the entry carries no
/// version keys so that the file name's install generation alone decides — an update to an
/// older version (a rollback) must still boot first. The version is in ATTESTGATE_VERSION,
/// which systemd ignores and `attestgate update status` shows.
pub fn osrel(version: &str, debian: &Path) -> Result<String> {
    let text = std::fs::read_to_string(debian).map_err(io(debian))?;
    let debian_name = text
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Debian".into());
    if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+-._~".contains(&b))
    {
        return Err(cmd::Error::Other(format!(
            "version {version:?}: use letters, digits and + - . _ ~ only"
        )));
    }
    Ok(format!(
        "NAME=\"attestgate\"\nID=attestgate\nID_LIKE=debian\nIMAGE_ID=attestgate\n\
         PRETTY_NAME=\"attestgate {version} ({debian_name})\"\nATTESTGATE_VERSION={version}\n"
    ))
}

/// The root file system's size: what the tree allocates, a fifth more for ext4's own
/// structures, rounded up to 16 MiB; it must fit the slot.
pub fn root_size_mib(allocated: u64) -> Result<u64> {
    let mib = (allocated + allocated / 5 + 64 * MIB).div_ceil(16 * MIB) * 16;
    if mib > ROOT_MIB {
        return Err(cmd::Error::Other(format!(
            "the root file system needs {mib} MiB, a slot holds {ROOT_MIB} MiB"
        )));
    }
    Ok(mib)
}

fn align(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// The EFI system partition as a FAT32 image: systemd-boot as the removable-media loader and
/// slot A's UKI with its boot counter; for legacy BIOS, `bios_tree`'s `bios/` directory (see
/// [`bios_tree`]).
pub fn esp(boot: &BootFiles, uki_a: &Path, bios_tree: &Path, out: &Path) -> Result<()> {
    let _ = std::fs::remove_file(out);
    cmd::run(
        Command::new("mkfs.fat")
            .args(["-F", "32", "-n", "ESP", "-C"])
            .arg(out)
            .arg((ESP_MIB * 1024).to_string()),
    )?;
    let img = out.to_string_lossy().into_owned();
    cmd::run(Command::new("mmd").args([
        "-i",
        &img,
        "::EFI",
        "::EFI/BOOT",
        "::EFI/systemd",
        "::EFI/Linux",
        "::loader",
    ]))?;
    let loader_conf = out.with_extension("loader.conf");
    // timeout 0: boot the default at once; the newest attestgate entry that is not bad.
    std::fs::write(
        &loader_conf,
        "timeout 0\ndefault attestgate-*\neditor no\nconsole-mode keep\n",
    )
    .map_err(io(&loader_conf))?;
    let uki_name = format!("::EFI/Linux/{FIRST_ENTRY}");
    for (src, dst) in [
        (boot.systemd_boot.as_path(), "::EFI/BOOT/BOOTX64.EFI"),
        (
            boot.systemd_boot.as_path(),
            "::EFI/systemd/systemd-bootx64.efi",
        ),
        (loader_conf.as_path(), "::loader/loader.conf"),
        (uki_a, uki_name.as_str()),
    ] {
        cmd::run(Command::new("mcopy").args(["-i", &img]).arg(src).arg(dst))?;
    }
    cmd::run(
        Command::new("mcopy")
            .args(["-s", "-i", &img])
            .arg(bios_tree.join(bios::ESP_DIR))
            .arg("::"),
    )?;
    Ok(())
}

/// The ESP's `bios/` directory under `dir`: grub.cfg, and slot A's kernel, initrd and command
/// line armed with [`BOOT_TRIES`] like its UKI.
pub fn bios_tree(boot: &BootFiles, cmdline_a: &str, dir: &Path) -> Result<()> {
    crate::rootfs::remove_tree(dir)?;
    bios::init(dir)?;
    bios::install_slot(dir, bios::Slot::A, &boot.kernel, &boot.initrd, cmdline_a)?;
    bios::arm(dir, bios::Slot::A, BOOT_TRIES)
}

/// The initrd recompressed with `zstd -19` (initramfs-tools uses level 9): it is on the ESP
/// twice, in the UKI and for BIOS, and level 19 takes about 1.5 MB off each copy. Slow (about
/// 20 s), so kept in `cache` under the original's digest; the original when zstd cannot read it
/// (e.g. an uncompressed early-microcode archive in front).
pub fn smaller_initrd(initrd: &Path, cache: &Path) -> Result<PathBuf> {
    let digest = cmd::sha256_file(initrd)?;
    let cached = cache.join(format!("initrd-{}.zst19", &digest[..16]));
    if cached.is_file() {
        return Ok(cached);
    }
    let partial = cached.with_extension("partial");
    let r = recompress(initrd, &partial);
    match r {
        Ok(_) if cmd::size(&partial) > 0 && cmd::size(&partial) < cmd::size(initrd) => {
            std::fs::rename(&partial, &cached).map_err(io(&cached))?;
            Ok(cached)
        }
        other => {
            let _ = std::fs::remove_file(&partial);
            eprintln!(
                "image: initrd kept as built ({})",
                other
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "not smaller".into())
            );
            Ok(initrd.to_path_buf())
        }
    }
}

/// `zstd -d < src | zstd -19 > dst`, both exit statuses checked.
fn recompress(src: &Path, dst: &Path) -> Result<()> {
    let out = std::fs::File::create(dst).map_err(io(dst))?;
    let mut decompress = cmd::nice("zstd")
        .args(["-q", "-d", "-c", "--"])
        .arg(src)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(io(Path::new("zstd")))?;
    let Some(plain) = decompress.stdout.take() else {
        let _ = decompress.kill();
        let _ = decompress.wait();
        return Err(cmd::Error::Other("zstd -d: no output pipe".into()));
    };
    let compressed = cmd::nice("zstd")
        .args(["-q", "-19", "-T2", "-c"])
        .stdin(plain)
        .stdout(out)
        .status()
        .map_err(io(Path::new("zstd")));
    let decompressed = decompress.wait().map_err(io(Path::new("zstd")))?;
    let compressed = compressed?;
    if !decompressed.success() || !compressed.success() {
        return Err(cmd::Error::Tool {
            tool: format!("zstd -d {} | zstd -19", src.display()),
            reason: format!("{decompressed} / {compressed}"),
        });
    }
    Ok(())
}

/// An ext4 image of `size_mib` made from `dir` (owners, modes and xattrs kept).
pub fn ext4(dir: &Path, label: &str, uuid: &str, size_mib: u64, out: &Path) -> Result<()> {
    let _ = std::fs::remove_file(out);
    cmd::run(
        cmd::nice("mke2fs")
            .args([
                "-q", "-F", "-t", "ext4", "-m", "0", "-L", label, "-U", uuid, "-d",
            ])
            .arg(dir)
            .arg(out)
            .arg(format!("{size_mib}M")),
    )?;
    Ok(())
}

/// The whole disk: a sparse raw file with the GPT written by sfdisk, the partition images
/// copied in (zero blocks skipped, so the file stays sparse), and GRUB's boot code in the MBR
/// and the BIOS boot partition.
pub fn assemble(
    ids: &Identities,
    esp: &Path,
    root_a: &Path,
    data: &Path,
    core_img: &Path,
    out: &Path,
) -> Result<()> {
    let starts = [
        1,
        1 + ESP_MIB,
        1 + ESP_MIB + ROOT_MIB,
        1 + ESP_MIB + 2 * ROOT_MIB,
    ];
    let total_mib = starts[3] + DATA_MIB + 1;
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out).map_err(io(out))?;
    f.set_len(total_mib * MIB).map_err(io(out))?;
    drop(f);
    let sectors = |mib: u64| mib * MIB / 512;
    // first-lba 34: right after the 128-entry partition array, so the BIOS boot partition
    // (entry 5) fits before partition 1; entries 1-4 are where they always were.
    let script = format!(
        "label: gpt\nunit: sectors\nfirst-lba: 34\n\
         start={}, size={}, type={TYPE_ESP}, name=\"esp\", uuid={}\n\
         start={}, size={}, type={TYPE_ROOT_X86_64}, name=\"root-a\", uuid={}\n\
         start={}, size={}, type={TYPE_ROOT_X86_64}, name=\"root-b\", uuid={}\n\
         start={}, size={}, type={TYPE_LINUX}, name=\"data\", uuid={}\n\
         start={}, size={}, type={}, name=\"bios\"\n",
        sectors(starts[0]),
        sectors(ESP_MIB),
        ids.esp,
        sectors(starts[1]),
        sectors(ROOT_MIB),
        ids.root_a,
        sectors(starts[2]),
        sectors(ROOT_MIB),
        ids.root_b,
        sectors(starts[3]),
        sectors(DATA_MIB),
        ids.data,
        bios::BIOS_BOOT_START,
        bios::BIOS_BOOT_SECTORS,
        bios::TYPE_BIOS_BOOT,
    );
    let mut child = Command::new("sfdisk")
        .args([
            "--quiet",
            "--no-reread",
            "--no-tell-kernel",
            "--wipe",
            "always",
        ])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io(Path::new("sfdisk")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(io(Path::new("sfdisk")))?;
    }
    let outp = child.wait_with_output().map_err(io(Path::new("sfdisk")))?;
    if !outp.status.success() {
        return Err(cmd::Error::Tool {
            tool: "sfdisk".into(),
            reason: String::from_utf8_lossy(&outp.stderr).into_owned(),
        });
    }
    for (image, start, max) in [
        (esp, starts[0], ESP_MIB),
        (root_a, starts[1], ROOT_MIB),
        (data, starts[3], DATA_MIB),
    ] {
        if cmd::size(image) > max * MIB {
            return Err(cmd::Error::Other(format!(
                "{} is larger than its {max} MiB partition",
                image.display()
            )));
        }
        copy_sparse(image, out, start * MIB)?;
    }
    bios::install_boot_code(
        out,
        &Path::new(bios::GRUB_I386_PC).join("boot.img"),
        core_img,
    )
}

/// Copies `src` into `dst` at `offset`, skipping all-zero blocks.
fn copy_sparse(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    let mut input = std::fs::File::open(src).map_err(io(src))?;
    let mut output = std::fs::OpenOptions::new()
        .write(true)
        .open(dst)
        .map_err(io(dst))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = offset;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = input.read(&mut buf[filled..]).map_err(io(src))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        for chunk in buf[..filled].chunks(64 * 1024) {
            if chunk.iter().any(|&b| b != 0) {
                output.seek(SeekFrom::Start(pos)).map_err(io(dst))?;
                output.write_all(chunk).map_err(io(dst))?;
            }
            pos += chunk.len() as u64;
        }
        if filled < buf.len() {
            break;
        }
    }
    output.sync_all().map_err(io(dst))
}

/// qcow2 with zstd compression when this qemu-img has it, zlib otherwise. Returns which.
pub fn qcow2(raw: &Path, out: &Path) -> Result<&'static str> {
    let _ = std::fs::remove_file(out);
    for kind in ["zstd", "zlib"] {
        let r = cmd::run(
            cmd::nice("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o"])
                .arg(format!("compression_type={kind}"))
                .arg(raw)
                .arg(out),
        );
        match r {
            Ok(_) => return Ok(kind),
            Err(e) if kind == "zstd" => {
                eprintln!("image: qemu-img has no zstd compression ({e}); using zlib");
            }
            Err(e) => return Err(e),
        }
    }
    Err(cmd::Error::Other("qemu-img convert failed".into()))
}

/// Where a build puts things.
#[derive(Debug, Clone)]
pub struct Outputs {
    pub dir: PathBuf,
}

impl Outputs {
    pub fn raw(&self) -> PathBuf {
        self.dir.join("attestgate.raw")
    }
    pub fn qcow2(&self) -> PathBuf {
        self.dir.join("attestgate.qcow2")
    }
    /// The signed update bundle (`attestgate update apply`).
    pub fn bundle(&self) -> PathBuf {
        self.dir.join("attestgate-update.tar")
    }
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("SHA256SUMS")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn stub_end_reads_objdump() {
        let dump = "\nlinuxx64.efi.stub:     file format pei-x86-64\n\nSections:\n\
            Idx Name          Size      VMA               LMA               File off  Algn\n  \
            0 .text         0000c9e8  0000000000001000  0000000000001000  00000400  2**4\n                  \
            CONTENTS, ALLOC, LOAD, READONLY, CODE\n  \
            1 .data         00001000  0000000000010000  0000000000010000  00010000  2**4\n";
        assert_eq!(stub_end(dump).unwrap(), 0x11000);
        assert!(stub_end("nothing").is_err());
    }

    #[test]
    fn first_entry_is_generation_one_of_slot_a_with_the_counter() {
        let e = crate::update::slots::Entry::parse(FIRST_ENTRY).unwrap();
        assert_eq!(e.generation, 1);
        assert_eq!(e.slot, crate::update::slots::Slot::A);
        assert_eq!(e.tries_left, Some(BOOT_TRIES));
    }

    #[test]
    fn osrel_has_no_version_keys_systemd_boot_would_sort_by() {
        let dir = tempfile::tempdir().unwrap();
        let deb = dir.path().join("os-release");
        std::fs::write(
            &deb,
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nID=debian\n",
        )
        .unwrap();
        let o = osrel("0.1.0+g1234567.20261127T1300Z", &deb).unwrap();
        assert!(o.contains("IMAGE_ID=attestgate\n"));
        assert!(o.contains("ATTESTGATE_VERSION=0.1.0+g1234567.20261127T1300Z\n"));
        assert!(o.contains("(Debian GNU/Linux 12 (bookworm))"));
        for key in ["VERSION=", "VERSION_ID=", "IMAGE_VERSION=", "BUILD_ID="] {
            assert!(!o.lines().any(|l| l.starts_with(key)), "{key}");
        }
        assert!(osrel("1.0\nID=evil", &deb).is_err());
        assert_eq!(
            crate::update::entry_version(&crate::update::pe::tests::synthetic(&[(
                ".osrel",
                o.as_bytes()
            )])),
            Some("0.1.0+g1234567.20261127T1300Z".into())
        );
    }

    #[test]
    fn root_is_sized_to_its_contents() {
        assert_eq!(root_size_mib(300 * MIB).unwrap(), 432);
        assert!(root_size_mib(900 * MIB).is_err());
    }

    #[test]
    fn smaller_initrd_recompresses_once_and_keeps_what_zstd_cannot_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        std::fs::create_dir_all(&cache).unwrap();
        // 1 MiB of noise three times: the repeats are further apart than level 1's window
        // (512 KiB) and within level 19's (8 MiB)
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let cpio = noise.repeat(3);
        let raw = dir.path().join("initrd.cpio");
        std::fs::write(&raw, &cpio).unwrap();
        let fast = dir.path().join("initrd.img");
        let made = Command::new("zstd")
            .args(["-q", "-1", "-c"])
            .arg(&raw)
            .output();
        let Ok(made) = made
            .map(|o| o.stdout)
            .map_err(|e| eprintln!("no zstd ({e}); skipped"))
        else {
            return;
        };
        std::fs::write(&fast, &made).unwrap();
        let small = smaller_initrd(&fast, &cache).unwrap();
        assert!(small.starts_with(&cache));
        assert!(cmd::size(&small) < cmd::size(&fast));
        let back = Command::new("zstd")
            .args(["-q", "-d", "-c"])
            .arg(&small)
            .output()
            .unwrap();
        assert_eq!(back.stdout, cpio, "the same archive");
        // the second build takes it from the cache
        let modified = std::fs::metadata(&small).unwrap().modified().unwrap();
        assert_eq!(smaller_initrd(&fast, &cache).unwrap(), small);
        assert_eq!(
            std::fs::metadata(&small).unwrap().modified().unwrap(),
            modified
        );
        // not zstd: used as it is
        assert_eq!(smaller_initrd(&raw, &cache).unwrap(), raw);
    }

    #[test]
    fn cmdline_has_serial_console_last() {
        let c = cmdline("u");
        assert!(c.starts_with("root=PARTUUID=u ro "));
        assert!(c.ends_with("console=ttyS0,115200"));
    }
}
