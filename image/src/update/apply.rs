//! `attestgate update apply`: writes a signed bundle into the slot that is not running and
//! makes it the next boot with a boot counter. Order matters, so that a power cut at any point
//! leaves a bootable appliance: the target slot's old boot entry goes first (a half-written
//! root is never bootable), then the root is written, read back and checked, and only then the
//! new entry appears on the ESP (written under a temporary name and renamed).

use super::bundle::{self, BundleError, Manifest};
use super::pe;
use super::slots::{self, Disk, Entry, Slot};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Slots(#[from] slots::SlotError),
    #[error("the kernel image: {0}")]
    Pe(#[from] pe::PeError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Refused(String),
}

fn io_err(what: &Path) -> impl FnOnce(std::io::Error) -> ApplyError + '_ {
    move |e| ApplyError::Io(format!("{}: {e}", what.display()))
}

#[derive(Debug, Clone)]
pub struct Options {
    /// The bundle: a file, or a block device holding one (e.g. an attached disk).
    pub bundle: PathBuf,
    /// Boot attempts the new entry gets before it counts as bad.
    pub tries: u32,
    pub keys_dir: PathBuf,
    /// The mounted EFI system partition.
    pub esp: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub slot: Slot,
    pub device: PathBuf,
    pub version: String,
    pub entry: String,
    pub root_bytes: u64,
    pub key: PathBuf,
    #[serde(skip)]
    pub took: Duration,
}

/// Applies `opts.bundle` to the slot of `disk` that is not running. `say` gets one line per
/// step (the CLI prints them).
pub fn apply(
    opts: &Options,
    disk: &Disk,
    say: &mut dyn FnMut(&str),
) -> Result<Applied, ApplyError> {
    let started = Instant::now();
    let target = disk.current.other();
    let part = disk.slot(target).clone();
    if opts.tries == 0 || opts.tries > 9 {
        return Err(ApplyError::Refused(format!(
            "--tries {}: give 1 to 9 boot attempts",
            opts.tries
        )));
    }
    let keys = bundle::trusted_keys(&opts.keys_dir)?;
    if keys.is_empty() {
        return Err(ApplyError::Refused(format!(
            "no update signing key in {}: this appliance accepts no updates",
            opts.keys_dir.display()
        )));
    }
    let f = std::fs::File::open(&opts.bundle).map_err(io_err(&opts.bundle))?;
    let mut archive = tar::Archive::new(BufReader::with_capacity(1 << 20, f));
    let mut members = archive
        .entries()
        .map_err(|e| BundleError::Format(e.to_string()))?;
    let json = bundle::read_small(
        &mut next(&mut members, bundle::MANIFEST)?,
        bundle::MANIFEST,
        bundle::MAX_MANIFEST,
    )?;
    let sig = bundle::read_small(
        &mut next(&mut members, bundle::SIGNATURE)?,
        bundle::SIGNATURE,
        1024,
    )?;
    let (manifest, key) = bundle::verify_manifest(&json, &sig, &keys, &opts.keys_dir)?;
    say(&format!(
        "bundle: version {} signed by {} — verified",
        manifest.version,
        key.display()
    ));
    if manifest.root.size > part.size {
        return Err(ApplyError::Refused(format!(
            "the root file system is {} bytes, slot {target} ({}) holds {}",
            manifest.root.size,
            part.device.display(),
            part.size
        )));
    }

    // 1. the target slot stops being bootable before anything is written to it
    let removed = retire(&opts.esp, target)?;
    if !removed.is_empty() {
        say(&format!(
            "slot {target}: boot entry {} removed",
            removed.join(", ")
        ));
    }
    // ... and on an ESP with the legacy-BIOS path, out of GRUB's order
    let bios = has_bios(&opts.esp);
    if bios {
        crate::bios::retire(&opts.esp, bios_slot(target))
            .map_err(|e| ApplyError::Io(format!("legacy-BIOS boot state: {e}")))?;
    }

    // 2. the kernel image, checked, pointed at the target's root
    let mut uki = {
        let mut e = next(&mut members, bundle::UKI)?;
        bundle::read_small(&mut e, bundle::UKI, bundle::MAX_UKI)?
    };
    check(&manifest.uki, &uki, "attestgate.efi")?;
    pe::set_root_partuuid(&mut uki, &part.partuuid)?;

    // 3. the root file system
    let mut root = next(&mut members, bundle::ROOT)?;
    let name = root
        .path()
        .map_err(|e| BundleError::Format(e.to_string()))?
        .to_string_lossy()
        .into_owned();
    if name != bundle::ROOT {
        return Err(BundleError::Format(format!(
            "expected member {}, found {name:?}",
            bundle::ROOT
        ))
        .into());
    }
    say(&format!(
        "slot {target}: writing {} MiB to {}",
        manifest.root.size >> 20,
        part.device.display()
    ));
    let t = Instant::now();
    if let Err(e) = write_root(&mut root, &manifest, &part.device) {
        spoil(&part.device);
        return Err(e);
    }
    say(&format!(
        "slot {target}: written and read back in {:.1} s, SHA-256 matches",
        t.elapsed().as_secs_f64()
    ));

    // 4. the new boot entry, newest generation, with its boot counter
    let generation = slots::entries(&opts.esp)
        .map_err(io_err(&opts.esp))?
        .iter()
        .map(|e| e.generation)
        .max()
        .unwrap_or(0)
        + 1;
    let entry = Entry::name(generation, target, Some(opts.tries));
    let dir = opts.esp.join("EFI/Linux");
    let tmp = dir.join(format!(".{entry}.tmp"));
    write_synced(&tmp, &uki)?;
    std::fs::rename(&tmp, dir.join(&entry)).map_err(io_err(&dir))?;
    sync_dir(&dir)?;
    if bios {
        install_bios(&opts.esp, target, &uki, opts.tries)?;
        say(&format!(
            "legacy BIOS: /{}/{target} installed and first in GRUB's order",
            crate::bios::ESP_DIR
        ));
    }
    say(&format!(
        "boot entry EFI/Linux/{entry}: the next boot runs slot {target} ({} {}; the running \
         slot {} stays as the fallback)",
        opts.tries,
        if opts.tries == 1 { "try" } else { "tries" },
        disk.current
    ));
    Ok(Applied {
        slot: target,
        device: part.device,
        version: manifest.version,
        entry,
        root_bytes: manifest.root.size,
        key,
        took: started.elapsed(),
    })
}

/// Whether the ESP carries the legacy-BIOS path (images built before it do not).
pub fn has_bios(esp: &Path) -> bool {
    crate::bios::env_path(esp).is_file()
}

pub fn bios_slot(s: Slot) -> crate::bios::Slot {
    match s {
        Slot::A => crate::bios::Slot::A,
        Slot::B => crate::bios::Slot::B,
    }
}

/// The BIOS path boots the kernel and initrd as files: they come out of the UKI's sections,
/// with its command line (already pointed at the target's root).
fn install_bios(esp: &Path, target: Slot, uki: &[u8], tries: u32) -> Result<(), ApplyError> {
    let tmp = std::env::temp_dir().join(format!("attestgate-update-{}", std::process::id()));
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        let kernel = tmp.join("vmlinuz");
        let initrd = tmp.join("initrd.img");
        write_synced(&kernel, &uki[pe::section(uki, ".linux")?])?;
        write_synced(&initrd, &uki[pe::section(uki, ".initrd")?])?;
        let cmdline = pe::cmdline(uki)?;
        let slot = bios_slot(target);
        crate::bios::install_slot(esp, slot, &kernel, &initrd, &cmdline)
            .and_then(|()| crate::bios::arm(esp, slot, tries))
            .map_err(|e| ApplyError::Io(format!("legacy-BIOS boot state: {e}")))
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn next<'a, R: Read>(
    members: &mut tar::Entries<'a, R>,
    name: &'static str,
) -> Result<tar::Entry<'a, R>, ApplyError> {
    match members.next() {
        Some(Ok(e)) => Ok(e),
        Some(Err(e)) => Err(BundleError::Format(format!("reading {name}: {e}")).into()),
        None => Err(BundleError::Format(format!("it ends before {name}")).into()),
    }
}

fn check(m: &bundle::Member, bytes: &[u8], name: &'static str) -> Result<(), ApplyError> {
    if bytes.len() as u64 != m.size || bundle::sha256(bytes) != m.sha256 {
        return Err(BundleError::Mismatch {
            member: name,
            what: "size or SHA-256 differs from the manifest".into(),
        }
        .into());
    }
    Ok(())
}

/// Removes the slot's entries from the ESP; returns their names.
fn retire(esp: &Path, slot: Slot) -> Result<Vec<String>, ApplyError> {
    let dir = esp.join("EFI/Linux");
    let mut gone = Vec::new();
    for e in slots::entries(esp).map_err(io_err(&dir))? {
        if e.slot == slot {
            let p = dir.join(&e.file);
            std::fs::remove_file(&p).map_err(io_err(&p))?;
            gone.push(e.file);
        }
    }
    if !gone.is_empty() {
        sync_dir(&dir)?;
    }
    Ok(gone)
}

/// Decompresses the root into the partition (streaming through `zstd -dc`), checking both
/// digests and the size, then reads it back.
fn write_root(member: &mut impl Read, m: &Manifest, device: &Path) -> Result<(), ApplyError> {
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(device)
        .map_err(io_err(device))?;
    let mut child = std::process::Command::new("zstd")
        .args(["-dc", "-q"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| ApplyError::Io(format!("zstd: {e}")))?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        let _ = child.kill();
        return Err(ApplyError::Io("zstd: no pipes".into()));
    };
    let sink = std::thread::scope(|s| -> Result<(u64, String), ApplyError> {
        let dev = &mut dev;
        let limit = m.root.size;
        let writer = s.spawn(move || -> Result<(u64, String), ApplyError> {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut buf = vec![0u8; 1 << 20];
            let mut written = 0u64;
            loop {
                let n = stdout
                    .read(&mut buf)
                    .map_err(|e| ApplyError::Io(format!("zstd: {e}")))?;
                if n == 0 {
                    break;
                }
                written += n as u64;
                if written > limit {
                    // more than the manifest says: stop (zstd then fails on its closed pipe)
                    break;
                }
                ctx.update(&buf[..n]);
                dev.write_all(&buf[..n]).map_err(io_err(device))?;
            }
            Ok((written, crate::cmd::hex(ctx.finish().as_ref())))
        });
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 1 << 20];
        let mut fed = Ok(());
        loop {
            let n = match member.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    fed = Err(ApplyError::Io(format!("reading the bundle: {e}")));
                    break;
                }
            };
            ctx.update(&buf[..n]);
            // zstd gone (it failed or the writer stopped): its status says why
            if stdin.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        drop(stdin);
        let out = writer
            .join()
            .map_err(|_| ApplyError::Io("the slot writer stopped".into()))??;
        fed?;
        if crate::cmd::hex(ctx.finish().as_ref()) != m.root_compressed_sha256 {
            return Err(BundleError::Mismatch {
                member: "root.ext4.zst",
                what: "SHA-256 differs from the manifest".into(),
            }
            .into());
        }
        Ok(out)
    });
    let status = child
        .wait()
        .map_err(|e| ApplyError::Io(format!("zstd: {e}")))?;
    let (written, digest) = sink?;
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        return Err(ApplyError::Io(format!("zstd -d: {status} {}", err.trim())));
    }
    if written != m.root.size || digest != m.root.sha256 {
        return Err(BundleError::Mismatch {
            member: "root.ext4.zst",
            what: format!(
                "decompressed to {written} bytes with another SHA-256 than the manifest's {} bytes",
                m.root.size
            ),
        }
        .into());
    }
    dev.sync_all().map_err(io_err(device))?;
    // read back what the disk holds now
    dev.seek(SeekFrom::Start(0)).map_err(io_err(device))?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut left = m.root.size;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        dev.read_exact(&mut buf[..want]).map_err(io_err(device))?;
        ctx.update(&buf[..want]);
        left -= want as u64;
    }
    if crate::cmd::hex(ctx.finish().as_ref()) != m.root.sha256 {
        return Err(ApplyError::Io(format!(
            "{}: what was read back differs from what was written (failing disk?)",
            device.display()
        )));
    }
    Ok(())
}

/// A failed write leaves no file system a later manual boot could half-mount.
fn spoil(device: &Path) {
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(device) {
        let _ = f.write_all(&vec![0u8; 1 << 20]);
        let _ = f.sync_all();
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ApplyError> {
    let mut f = std::fs::File::create(path).map_err(io_err(path))?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

fn sync_dir(dir: &Path) -> Result<(), ApplyError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::update::slots::Partition;

    const A: &str = "aaaaaaaa-1111-4111-8111-111111111111";
    const B: &str = "bbbbbbbb-2222-4222-8222-222222222222";

    struct Fixture {
        dir: tempfile::TempDir,
        disk: Disk,
        opts: Options,
        key: ring::signature::Ed25519KeyPair,
    }

    fn fixture(slot_size: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let (key, made) = bundle::signing_key(&p.join("keys/signing.pk8")).unwrap();
        assert!(made);
        std::fs::create_dir_all(p.join("trusted")).unwrap();
        std::fs::write(
            p.join("trusted/build.pub"),
            format!("{}\n", bundle::public_key_hex(&key)),
        )
        .unwrap();
        std::fs::create_dir_all(p.join("esp/EFI/Linux")).unwrap();
        std::fs::write(p.join("esp/EFI/Linux/attestgate-1-a.efi"), b"old a").unwrap();
        std::fs::write(p.join("esp/EFI/Linux/attestgate-0-b+0-3.efi"), b"old b").unwrap();
        for (name, fill) in [("slot-a", 0xaa), ("slot-b", 0xbb)] {
            std::fs::write(p.join(name), vec![fill; slot_size as usize]).unwrap();
        }
        let part = |name: &str, uuid: &str| Partition {
            device: p.join(name),
            partuuid: uuid.into(),
            size: slot_size,
        };
        let disk = Disk {
            disk: p.join("disk"),
            a: part("slot-a", A),
            b: part("slot-b", B),
            esp: part("esp", "eeeeeeee-0000-4000-8000-000000000000"),
            current: Slot::A,
        };
        let opts = Options {
            bundle: p.join("update.tar"),
            tries: 2,
            keys_dir: p.join("trusted"),
            esp: p.join("esp"),
        };
        Fixture {
            dir,
            disk,
            opts,
            key,
        }
    }

    /// A root image with some structure (not all one byte) and a UKI naming slot A's root.
    fn make_bundle(f: &Fixture, root_len: usize, key: &ring::signature::Ed25519KeyPair) {
        let p = f.dir.path();
        let root: Vec<u8> = (0..root_len)
            .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
            .collect();
        std::fs::write(p.join("root.ext4"), &root).unwrap();
        let cmdline = format!("root=PARTUUID={A} ro console=ttyS0,115200\0");
        let osrel = "ID=attestgate\nATTESTGATE_VERSION=9.9.9+test\n";
        let uki = crate::update::pe::tests::synthetic(&[
            (".osrel", osrel.as_bytes()),
            (".cmdline", cmdline.as_bytes()),
            (".linux", b"kernel"),
            (".initrd", b"initrd"),
        ]);
        std::fs::write(p.join("uki.efi"), &uki).unwrap();
        std::fs::create_dir_all(p.join("work")).unwrap();
        bundle::write(
            &f.opts.bundle,
            "9.9.9+test",
            &p.join("uki.efi"),
            &p.join("root.ext4"),
            key,
            &p.join("work"),
        )
        .unwrap();
    }

    fn names(esp: &Path) -> Vec<String> {
        let mut v: Vec<String> = slots::entries(esp)
            .unwrap()
            .into_iter()
            .map(|e| e.file)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_the_other_slot_and_a_counted_entry() {
        let f = fixture(8 << 20);
        make_bundle(&f, 3 << 20 | 12345, &f.key);
        let mut said = Vec::new();
        let done = apply(&f.opts, &f.disk, &mut |l| said.push(l.to_string())).unwrap();
        assert_eq!(done.slot, Slot::B);
        assert_eq!(done.version, "9.9.9+test");
        assert_eq!(done.entry, "attestgate-2-b+2.efi");
        // the slot holds the root, the rest of the slot is untouched
        let slot = std::fs::read(&f.disk.b.device).unwrap();
        let root = std::fs::read(f.dir.path().join("root.ext4")).unwrap();
        assert_eq!(&slot[..root.len()], &root[..]);
        assert!(slot[root.len()..].iter().all(|&b| b == 0xbb));
        // the running slot is untouched
        assert!(std::fs::read(&f.disk.a.device)
            .unwrap()
            .iter()
            .all(|&b| b == 0xaa));
        // the old (bad) b entry is gone, a stays, the new one points at b's root
        assert_eq!(
            names(&f.opts.esp),
            vec!["attestgate-1-a.efi", "attestgate-2-b+2.efi"]
        );
        let uki = std::fs::read(f.opts.esp.join("EFI/Linux/attestgate-2-b+2.efi")).unwrap();
        assert_eq!(pe::root_partuuid(&uki).unwrap(), B);
        assert_eq!(
            crate::update::entry_version(&uki).as_deref(),
            Some("9.9.9+test")
        );
        // the new entry is what systemd-boot starts next
        assert_eq!(
            slots::entries(&f.opts.esp).unwrap()[0].file,
            "attestgate-2-b+2.efi"
        );
        assert!(said.iter().any(|l| l.contains("verified")), "{said:?}");
        // no temporary file left behind
        assert!(std::fs::read_dir(f.opts.esp.join("EFI/Linux"))
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    }

    #[test]
    fn a_bundle_signed_by_another_key_changes_nothing() {
        let f = fixture(4 << 20);
        let other = ring::signature::Ed25519KeyPair::from_pkcs8(
            ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                .unwrap()
                .as_ref(),
        )
        .unwrap();
        make_bundle(&f, 1 << 20, &other);
        let before = names(&f.opts.esp);
        let err = apply(&f.opts, &f.disk, &mut |_| {}).unwrap_err();
        assert!(
            matches!(err, ApplyError::Bundle(BundleError::Untrusted(_))),
            "{err}"
        );
        assert_eq!(names(&f.opts.esp), before);
        assert!(std::fs::read(&f.disk.b.device)
            .unwrap()
            .iter()
            .all(|&b| b == 0xbb));
    }

    #[test]
    fn a_changed_root_is_caught_and_the_slot_left_unbootable() {
        let f = fixture(4 << 20);
        make_bundle(&f, 2 << 20, &f.key);
        // flip one byte inside the compressed root (the last member, before the tar trailer)
        let mut tar = std::fs::read(&f.opts.bundle).unwrap();
        let at = tar.len() - 1024 - 700;
        tar[at] ^= 0x55;
        std::fs::write(&f.opts.bundle, &tar).unwrap();
        let err = apply(&f.opts, &f.disk, &mut |_| {}).unwrap_err();
        assert!(
            matches!(
                err,
                ApplyError::Bundle(BundleError::Mismatch { .. }) | ApplyError::Io(_)
            ),
            "{err}"
        );
        // no entry for b; the first MiB of b wiped
        assert_eq!(names(&f.opts.esp), vec!["attestgate-1-a.efi"]);
        let b = std::fs::read(&f.disk.b.device).unwrap();
        assert!(b[..1 << 20].iter().all(|&x| x == 0));
    }

    #[test]
    fn refuses_a_root_larger_than_the_slot_and_bad_tries() {
        let f = fixture(1 << 20);
        make_bundle(&f, 2 << 20, &f.key);
        let err = apply(&f.opts, &f.disk, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("holds"), "{err}");
        let mut o = f.opts.clone();
        o.tries = 0;
        assert!(apply(&o, &f.disk, &mut |_| {}).is_err());
        // not a bundle at all
        std::fs::write(&f.opts.bundle, b"garbage, not a tar archive at all").unwrap();
        assert!(apply(&f.opts, &f.disk, &mut |_| {}).is_err());
        std::fs::write(&f.opts.bundle, b"").unwrap();
        assert!(apply(&f.opts, &f.disk, &mut |_| {}).is_err());
        // the running slot's entry is never touched by a failed apply
        assert!(names(&f.opts.esp).contains(&"attestgate-1-a.efi".to_string()));
    }

    #[test]
    fn an_esp_with_the_bios_path_gets_the_slot_in_grubs_order_too() {
        let f = fixture(8 << 20);
        let esp = &f.opts.esp;
        crate::bios::init(esp).unwrap();
        let (k, i) = (f.dir.path().join("k"), f.dir.path().join("i"));
        std::fs::write(&k, b"old kernel").unwrap();
        std::fs::write(&i, b"old initrd").unwrap();
        crate::bios::install_slot(esp, crate::bios::Slot::A, &k, &i, "root=PARTUUID=a ro").unwrap();
        crate::bios::arm(esp, crate::bios::Slot::A, 3).unwrap();
        crate::bios::bless(esp, crate::bios::Slot::A).unwrap();
        make_bundle(&f, 1 << 20, &f.key);
        let mut said = Vec::new();
        apply(&f.opts, &f.disk, &mut |l| said.push(l.to_string())).unwrap();
        let st = crate::bios::read_state(esp).unwrap();
        assert_eq!(st.order, vec![crate::bios::Slot::B, crate::bios::Slot::A]);
        assert_eq!(
            st.slot(crate::bios::Slot::B).tries,
            crate::bios::Tries::Left(2)
        );
        assert_eq!(
            st.slot(crate::bios::Slot::A).tries,
            crate::bios::Tries::Good
        );
        let b = st.slot(crate::bios::Slot::B);
        assert!(b.installed);
        // the UKI's command line, pointed at b's root, plus GRUB's markers
        let cmdline = b.cmdline.clone().unwrap();
        assert!(
            cmdline.starts_with(&format!("root=PARTUUID={B} ro")),
            "{cmdline}"
        );
        assert!(
            cmdline.ends_with("attestgate.boot=bios attestgate.slot=b"),
            "{cmdline}"
        );
        assert_eq!(
            std::fs::read(esp.join("bios/b/vmlinuz")).unwrap(),
            b"kernel"
        );
        assert_eq!(
            std::fs::read(esp.join("bios/b/initrd.img")).unwrap(),
            b"initrd"
        );
        assert!(said.iter().any(|l| l.contains("legacy BIOS")), "{said:?}");
        // a good boot of b under BIOS drops its counter
        let booted = crate::bios::slot_cmdline("root=PARTUUID=x", crate::bios::Slot::B);
        assert!(crate::update::mark_good(&booted, esp, Slot::B)
            .unwrap()
            .contains("marked good"));
        let st = crate::bios::read_state(esp).unwrap();
        assert_eq!(
            st.slot(crate::bios::Slot::B).tries,
            crate::bios::Tries::Good
        );
        assert!(crate::update::mark_good(&booted, esp, Slot::B)
            .unwrap()
            .contains("already"));
    }

    #[test]
    fn no_trusted_key_means_no_updates() {
        let f = fixture(4 << 20);
        make_bundle(&f, 1 << 20, &f.key);
        std::fs::remove_file(f.dir.path().join("trusted/build.pub")).unwrap();
        let err = apply(&f.opts, &f.disk, &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("accepts no updates"), "{err}");
    }
}
