//! The legacy-BIOS boot path, for hypervisors without UEFI: GRUB for i386-pc on the same GPT
//! disk the UEFI firmware boots with systemd-boot.
//!
//! - The MBR holds GRUB's boot.img code; the GPT's protective MBR partition table (bytes
//!   440–511: disk signature, table, 0x55AA) stays as sfdisk wrote it.
//! - GPT entry 5, a "BIOS boot" partition in the gap before sector 2048, holds core.img (made by
//!   `grub-mkimage -O i386-pc` with every module it needs, so nothing else of GRUB is on disk).
//!   UEFI firmware ignores that partition type.
//! - core.img's prefix is `(,gpt1)/bios`: partition 1 (the ESP) of the disk the BIOS booted.
//!   There, `grub.cfg` (static, written once by the build) boots slot A or B from
//!   `/bios/<slot>/vmlinuz` + `initrd.img` with the slot's command line, and counts boot attempts
//!   in `/bios/grubenv` the way systemd-boot counts them for the UKIs (Boot Loader Spec, "Boot
//!   counting"): `order=a b` lists the slots to try, `<slot>_tries=N` is an attempt budget
//!   (absent: known good; 0: bad, skipped), decremented and saved by GRUB before it boots.
//!
//! The functions on an ESP directory ([`install_slot`], [`arm`], [`bless`], [`read_state`]) are
//! what an update writes on the running appliance (the ESP is mounted at /efi); the build calls
//! them on a staging directory that it copies into the FAT image.

use crate::cmd::{self, io, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory on the ESP with grub.cfg, grubenv and the slots' kernels.
pub const ESP_DIR: &str = "bios";
/// core.img's prefix: partition 1 of the boot drive (GRUB replaces an empty disk name with the
/// drive the BIOS booted from, kern/main.c `grub_set_prefix_and_root`).
pub const CORE_PREFIX: &str = "(,gpt1)/bios";
/// GRUB modules built into core.img (their dependencies are added by grub-mkimage).
pub const CORE_MODULES: &[&str] = &[
    "biosdisk", "part_gpt", "fat", "normal", "linux", "loadenv", "test", "echo", "serial",
    "terminal", "boot", "reboot",
];
/// Where GRUB's i386-pc images and modules are (Debian package grub-pc-bin).
pub const GRUB_I386_PC: &str = "/usr/lib/grub/i386-pc";

/// GPT entry 5, the GRUB "BIOS boot" partition (GRUB manual, "BIOS installation": type
/// 21686148-6449-6E6F-744E-656564454649): 4 KiB aligned, after the 128-entry partition array
/// (LBA 2–33), up to the first partition at LBA 2048.
pub const BIOS_BOOT_START: u64 = 40;
pub const BIOS_BOOT_SECTORS: u64 = 2048 - BIOS_BOOT_START;
pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";

/// grub.cfg decrements tries with a table (GRUB script has no arithmetic), so budgets above
/// this are refused.
pub const MAX_TRIES: u32 = 9;

const SECTOR: usize = 512;

/// An A/B root slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub const ALL: [Slot; 2] = [Slot::A, Slot::B];

    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    pub fn parse(s: &str) -> Option<Slot> {
        Slot::ALL.into_iter().find(|x| x.name() == s)
    }

    fn tries_key(self) -> String {
        format!("{}_tries", self.name())
    }

    fn cmdline_key(self) -> String {
        format!("{}_cmdline", self.name())
    }
}

// --- grubenv ---------------------------------------------------------------------------------

/// GRUB's environment block (grub-core/lib/envblk.c): exactly 1024 bytes, this header, then
/// `key=value\n` lines, then `#` to the end. In values a backslash escapes the next byte (GRUB
/// writes `\\` and a backslash before a newline).
pub const ENV_SIZE: usize = 1024;
const ENV_HEADER: &str = "# GRUB Environment Block\n";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrubEnv {
    lines: Vec<Line>,
}

/// A line of the block: a variable, or a comment (grub-editenv writes a "# WARNING" line after
/// the header; GRUB skips lines that start with `#` and keeps them when it saves).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Var(String, String),
    Comment(String),
}

fn valid_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn malformed(why: &str) -> cmd::Error {
    cmd::Error::Other(format!("grubenv: {why}"))
}

impl GrubEnv {
    /// Parses a block, refusing anything GRUB would not have written: a wrong size or header,
    /// a line without `=`, a key other than `[A-Za-z0-9_]+`, an unterminated line, padding
    /// other than `#`, NUL bytes or invalid UTF-8.
    pub fn parse(block: &[u8]) -> Result<GrubEnv> {
        if block.len() != ENV_SIZE {
            return Err(malformed(&format!("{} bytes, not {ENV_SIZE}", block.len())));
        }
        let Some(mut rest) = block.strip_prefix(ENV_HEADER.as_bytes()) else {
            return Err(malformed("no \"# GRUB Environment Block\" header"));
        };
        let mut env = GrubEnv::default();
        while let Some(&first) = rest.first() {
            if first == b'#' {
                // A comment line, or the padding: `#` to the end without a newline.
                match rest.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        let text = std::str::from_utf8(&rest[..nl])
                            .map_err(|_| malformed("a comment that is not UTF-8"))?;
                        env.lines.push(Line::Comment(text.to_string()));
                        rest = &rest[nl + 1..];
                        continue;
                    }
                    None if rest.iter().all(|&b| b == b'#') => break,
                    None => return Err(malformed("padding that is not all '#'")),
                }
            }
            let Some(eq) = rest.iter().position(|&b| b == b'=') else {
                return Err(malformed("a line without '='"));
            };
            let key = std::str::from_utf8(&rest[..eq])
                .ok()
                .filter(|k| valid_key(k))
                .ok_or_else(|| malformed("a key that is not [A-Za-z0-9_]+"))?;
            let mut value = Vec::new();
            let mut i = eq + 1;
            loop {
                match rest.get(i) {
                    None => return Err(malformed(&format!("{key}: unterminated line"))),
                    Some(b'\n') => break,
                    Some(b'\\') => {
                        let Some(&c) = rest.get(i + 1) else {
                            return Err(malformed(&format!("{key}: dangling backslash")));
                        };
                        value.push(c);
                        i += 2;
                    }
                    Some(&c) => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            if value.contains(&0) {
                return Err(malformed(&format!("{key}: NUL in the value")));
            }
            let value = String::from_utf8(value)
                .map_err(|_| malformed(&format!("{key}: value is not UTF-8")))?;
            if env.get(key).is_some() {
                return Err(malformed(&format!("{key} appears twice")));
            }
            env.lines.push(Line::Var(key.to_string(), value));
            rest = &rest[i + 1..];
        }
        Ok(env)
    }

    /// The 1024-byte block; an error when the lines do not fit.
    pub fn serialize(&self) -> Result<Vec<u8>> {
        let mut out = ENV_HEADER.as_bytes().to_vec();
        for line in &self.lines {
            match line {
                Line::Comment(c) => out.extend_from_slice(c.as_bytes()),
                Line::Var(k, v) => {
                    out.extend_from_slice(k.as_bytes());
                    out.push(b'=');
                    for &b in v.as_bytes() {
                        if b == b'\\' || b == b'\n' {
                            out.push(b'\\');
                        }
                        out.push(b);
                    }
                }
            }
            out.push(b'\n');
        }
        if out.len() > ENV_SIZE {
            return Err(malformed(&format!(
                "the variables take {} bytes, more than the block's {ENV_SIZE}",
                out.len()
            )));
        }
        out.resize(ENV_SIZE, b'#');
        Ok(out)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Var(k, v) if k == key => Some(v.as_str()),
            _ => None,
        })
    }

    /// Sets `key` (in place when present, else appended).
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        if !valid_key(key) {
            return Err(malformed(&format!("{key:?} is not a valid key")));
        }
        if value.contains('\0') {
            return Err(malformed(&format!("{key}: NUL in the value")));
        }
        for l in &mut self.lines {
            if let Line::Var(k, v) = l {
                if k == key {
                    *v = value.to_string();
                    return Ok(());
                }
            }
        }
        self.lines
            .push(Line::Var(key.to_string(), value.to_string()));
        Ok(())
    }

    pub fn remove(&mut self, key: &str) {
        self.lines
            .retain(|l| !matches!(l, Line::Var(k, _) if k == key));
    }
}

// --- A/B state on the ESP --------------------------------------------------------------------

/// Boot counting state of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tries {
    /// No counter: the slot booted and was blessed (or was never armed).
    Good,
    /// Attempts left; 0 means bad (GRUB skips it).
    Left(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub slot: Slot,
    /// vmlinuz and initrd.img are on the ESP and the env has a command line.
    pub installed: bool,
    pub cmdline: Option<String>,
    pub tries: Tries,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub order: Vec<Slot>,
    pub slots: [SlotState; 2],
}

impl State {
    pub fn slot(&self, s: Slot) -> &SlotState {
        match s {
            Slot::A => &self.slots[0],
            Slot::B => &self.slots[1],
        }
    }

    /// The slot grub.cfg boots next: the first in order whose tries are absent or above 0; when
    /// every slot is bad, the first in order anyway (systemd-boot also boots bad entries last).
    pub fn next_boot(&self) -> Option<Slot> {
        self.order
            .iter()
            .copied()
            .find(|&s| self.slot(s).tries != Tries::Left(0))
            .or_else(|| self.order.first().copied())
    }
}

fn bios_dir(esp: &Path) -> PathBuf {
    esp.join(ESP_DIR)
}

pub fn env_path(esp: &Path) -> PathBuf {
    bios_dir(esp).join("grubenv")
}

fn slot_dir(esp: &Path, slot: Slot) -> PathBuf {
    bios_dir(esp).join(slot.name())
}

/// The kernel command line a slot boots with under BIOS: the UKI's, plus markers that tell the
/// running system how and from which slot it was booted.
pub fn slot_cmdline(base: &str, slot: Slot) -> String {
    format!(
        "{base} attestgate.boot=bios attestgate.slot={}",
        slot.name()
    )
}

fn parse_order(value: &str) -> Result<Vec<Slot>> {
    let mut order = Vec::new();
    for w in value.split_whitespace() {
        let s = Slot::parse(w).ok_or_else(|| malformed(&format!("order: unknown slot {w:?}")))?;
        if order.contains(&s) {
            return Err(malformed(&format!("order: slot {w} twice")));
        }
        order.push(s);
    }
    Ok(order)
}

fn order_value(order: &[Slot]) -> String {
    order.iter().map(|s| s.name()).collect::<Vec<_>>().join(" ")
}

pub fn read_env(esp: &Path) -> Result<GrubEnv> {
    let p = env_path(esp);
    let block = std::fs::read(&p).map_err(io(&p))?;
    GrubEnv::parse(&block).map_err(|e| cmd::Error::Other(format!("{}: {e}", p.display())))
}

/// The state the env and the files on the ESP describe.
pub fn read_state(esp: &Path) -> Result<State> {
    state_of(esp, &read_env(esp)?)
}

fn state_of(esp: &Path, env: &GrubEnv) -> Result<State> {
    let order = parse_order(env.get("order").unwrap_or(""))?;
    let slot_state = |slot: Slot| -> Result<SlotState> {
        let tries =
            match env.get(&slot.tries_key()) {
                None => Tries::Good,
                Some(v) => Tries::Left(v.parse().map_err(|_| {
                    malformed(&format!("{}={v:?} is not a number", slot.tries_key()))
                })?),
            };
        let cmdline = env.get(&slot.cmdline_key()).map(str::to_string);
        let dir = slot_dir(esp, slot);
        let installed =
            cmdline.is_some() && dir.join("vmlinuz").is_file() && dir.join("initrd.img").is_file();
        Ok(SlotState {
            slot,
            installed,
            cmdline,
            tries,
        })
    };
    Ok(State {
        order,
        slots: [slot_state(Slot::A)?, slot_state(Slot::B)?],
    })
}

/// Replaces a file by writing a sibling and renaming it over (a crash leaves the old or the new
/// file, never a torn one).
fn replace_file(path: &Path, write: impl FnOnce(&mut std::fs::File) -> Result<()>) -> Result<()> {
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    write(&mut f)?;
    f.sync_all().map_err(io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn write_env(esp: &Path, env: &GrubEnv) -> Result<()> {
    let block = env.serialize()?;
    let p = env_path(esp);
    replace_file(&p, |f| f.write_all(&block).map_err(io(&p)))
}

/// A fresh `bios/` directory on an ESP: grub.cfg and an empty env (no slot to boot yet).
pub fn init(esp: &Path) -> Result<()> {
    let dir = bios_dir(esp);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let cfg = dir.join("grub.cfg");
    std::fs::write(&cfg, grub_cfg()).map_err(io(&cfg))?;
    write_env(esp, &GrubEnv::default())
}

/// Puts a slot's kernel, initrd and command line (`base_cmdline` plus the BIOS markers) on the
/// ESP. The slot leaves the boot order first, so a half-written slot is never booted; [`arm`]
/// puts it back. Refused for the only slot in the order (that would leave nothing to boot).
pub fn install_slot(
    esp: &Path,
    slot: Slot,
    kernel: &Path,
    initrd: &Path,
    base_cmdline: &str,
) -> Result<()> {
    let mut env = read_env(esp)?;
    let state = state_of(esp, &env)?;
    if state.order == [slot] {
        return Err(cmd::Error::Other(format!(
            "slot {} is the only slot in the BIOS boot order; installing over it would leave \
             nothing to boot",
            slot.name()
        )));
    }
    let order: Vec<Slot> = state.order.into_iter().filter(|&s| s != slot).collect();
    env.set("order", &order_value(&order))?;
    env.remove(&slot.tries_key());
    env.remove(&slot.cmdline_key());
    write_env(esp, &env)?;
    let dir = slot_dir(esp, slot);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    for (src, name) in [(kernel, "vmlinuz"), (initrd, "initrd.img")] {
        let dst = dir.join(name);
        replace_file(&dst, |f| {
            let mut input = std::fs::File::open(src).map_err(io(src))?;
            std::io::copy(&mut input, f).map_err(io(&dst))?;
            Ok(())
        })?;
    }
    env.set(&slot.cmdline_key(), &slot_cmdline(base_cmdline, slot))?;
    write_env(esp, &env)
}

/// Takes a slot out of the BIOS boot order (its counter and command line go too) before an
/// update overwrites its root, so GRUB never boots it half-written. The running slot is never
/// retired by an update; retiring the only slot in the order is refused.
pub fn retire(esp: &Path, slot: Slot) -> Result<()> {
    let mut env = read_env(esp)?;
    let state = state_of(esp, &env)?;
    if state.order == [slot] {
        return Err(cmd::Error::Other(format!(
            "slot {} is the only slot in the BIOS boot order",
            slot.name()
        )));
    }
    let order: Vec<Slot> = state.order.into_iter().filter(|&s| s != slot).collect();
    env.set("order", &order_value(&order))?;
    env.remove(&slot.tries_key());
    env.remove(&slot.cmdline_key());
    write_env(esp, &env)
}

/// Makes `slot` the first to boot, with `tries` attempts before GRUB falls back to the next
/// slot in the order.
pub fn arm(esp: &Path, slot: Slot, tries: u32) -> Result<()> {
    if !(1..=MAX_TRIES).contains(&tries) {
        return Err(cmd::Error::Other(format!(
            "boot tries {tries}: must be 1..={MAX_TRIES}"
        )));
    }
    let mut env = read_env(esp)?;
    let state = state_of(esp, &env)?;
    if !state.slot(slot).installed {
        return Err(cmd::Error::Other(format!(
            "slot {} is not installed on {} (kernel, initrd and command line)",
            slot.name(),
            esp.display()
        )));
    }
    let mut order = vec![slot];
    order.extend(state.order.into_iter().filter(|&s| s != slot));
    env.set("order", &order_value(&order))?;
    env.set(&slot.tries_key(), &tries.to_string())?;
    write_env(esp, &env)
}

/// Marks the running slot good: its counter goes, so GRUB keeps booting it.
pub fn bless(esp: &Path, slot: Slot) -> Result<()> {
    let mut env = read_env(esp)?;
    let state = state_of(esp, &env)?;
    if !state.order.contains(&slot) {
        return Err(cmd::Error::Other(format!(
            "slot {} is not in the BIOS boot order",
            slot.name()
        )));
    }
    env.remove(&slot.tries_key());
    write_env(esp, &env)
}

// --- grub.cfg --------------------------------------------------------------------------------

/// The static grub.cfg (GRUB manual, "Shell-like scripting"; `load_env`/`save_env` with a
/// variable whitelist, "load_env").
pub fn grub_cfg() -> String {
    let vars: Vec<String> = std::iter::once("order".to_string())
        .chain(
            Slot::ALL
                .iter()
                .flat_map(|s| [s.tries_key(), s.cmdline_key()]),
        )
        .collect();
    let mut c = String::from(
        "# attestgate legacy-BIOS boot, written once by `image build`. Updates change only the\n\
         # slots' files and grubenv (see image/src/bios.rs).\n\
         serial --unit=0 --speed=115200\n\
         terminal_input serial console\n\
         terminal_output serial console\n\
         set envfile=\"${prefix}/grubenv\"\n",
    );
    c.push_str(&format!(
        "load_env --skip-sig --file \"$envfile\" {}\n",
        vars.join(" ")
    ));
    c.push_str(
        "echo \"attestgate-grub: grubenv order=[$order] a_tries=[$a_tries] b_tries=[$b_tries]\"\n\
         set slot=\"\"\n\
         for s in $order; do\n  if [ -z \"$slot\" ]; then\n",
    );
    for s in Slot::ALL {
        let (n, t) = (s.name(), s.tries_key());
        c.push_str(&format!(
            "    if [ \"$s\" = {n} ]; then\n      if [ -z \"${t}\" ]; then\n        set slot={n}\n"
        ));
        for left in (1..=MAX_TRIES).rev() {
            c.push_str(&format!(
                "      elif [ \"${t}\" = {left} ]; then\n        set {t}={}\n        \
                 save_env --file \"$envfile\" {t}\n        \
                 echo \"attestgate-grub: slot {n} tries {left} -> {}\"\n        set slot={n}\n",
                left - 1,
                left - 1
            ));
        }
        c.push_str(&format!(
            "      else\n        echo \"attestgate-grub: slot {n} is bad (tries ${t}), skipped\"\n      \
             fi\n    fi\n"
        ));
    }
    c.push_str(
        "  fi\ndone\n\
         if [ -z \"$slot\" ]; then\n  for s in $order; do\n    if [ -z \"$slot\" ]; then set slot=\"$s\"; fi\n  done\n  \
         echo \"attestgate-grub: every slot is bad; booting the first in order ($slot)\"\nfi\n",
    );
    for s in Slot::ALL {
        let n = s.name();
        c.push_str(&format!(
            "if [ \"$slot\" = {n} ]; then\n  echo \"attestgate-grub: booting slot {n}\"\n  \
             linux \"${{prefix}}/{n}/vmlinuz\" ${k}\n  initrd \"${{prefix}}/{n}/initrd.img\"\n  boot\nfi\n",
            k = s.cmdline_key()
        ));
    }
    c.push_str("echo \"attestgate-grub: nothing to boot (order=[$order])\"\nsleep 10\nreboot\n");
    c
}

// --- core.img and the MBR --------------------------------------------------------------------

/// `grub-mkimage -O i386-pc`: GRUB's kernel with the modules, lzma compressed behind
/// diskboot.img (its first sector).
pub fn core_img(out: &Path) -> Result<()> {
    cmd::run(
        Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-d", GRUB_I386_PC, "-p", CORE_PREFIX, "-o"])
            .arg(out)
            .args(CORE_MODULES),
    )?;
    Ok(())
}

/// Offsets in boot.img, GRUB include/grub/i386/pc/boot.h.
mod boot_h {
    /// GRUB_BOOT_MACHINE_BPB_START / _END: a BIOS parameter block area (kept from the disk, as
    /// grub-bios-setup does).
    pub const BPB_START: usize = 0x3;
    pub const BPB_END: usize = 0x5a;
    /// GRUB_BOOT_MACHINE_KERNEL_SECTOR: u64 LE, LBA of core.img's first sector.
    pub const KERNEL_SECTOR: usize = 0x5c;
    /// GRUB_BOOT_MACHINE_BOOT_DRIVE: 0xff = use the drive the BIOS passed in DL.
    pub const BOOT_DRIVE: usize = 0x64;
    /// GRUB_BOOT_MACHINE_DRIVE_CHECK: a 2-byte jmp over the "is DL a hard disk" fix-up;
    /// grub-bios-setup replaces it with two NOPs for hard disks (util/setup.c) so a BIOS that
    /// passes a bad DL still reads from 0x80.
    pub const DRIVE_CHECK: usize = 0x66;
    /// GRUB_BOOT_MACHINE_WINDOWS_NT_MAGIC: from here to the end of the sector (disk signature,
    /// partition table at GRUB_BOOT_MACHINE_PART_START 0x1be, 0x55AA) the disk's bytes stay.
    pub const WINDOWS_NT_MAGIC: usize = 0x1b8;
    pub const PART_START: usize = 0x1be;
    /// GRUB_BOOT_MACHINE_LIST_SIZE: `struct grub_pc_bios_boot_blocklist { u64 start; u16 len;
    /// u16 segment; }`, the entries diskboot.img reads, at the end of its sector, growing down.
    pub const LIST_SIZE: usize = 12;
}

/// The new MBR: boot.img's code with the disk's BPB area and everything from the NT disk
/// signature on (the protective MBR's partition table and 0x55AA) kept, pointed at `core_lba`.
pub fn patch_mbr(disk_mbr: &[u8], boot_img: &[u8], core_lba: u64) -> Result<[u8; SECTOR]> {
    use boot_h::*;
    if disk_mbr.len() != SECTOR || boot_img.len() != SECTOR {
        return Err(cmd::Error::Other(
            "boot.img and the MBR must be 512 bytes".into(),
        ));
    }
    if disk_mbr[510..] != [0x55, 0xaa] || disk_mbr[PART_START + 4] != 0xee {
        return Err(cmd::Error::Other(
            "sector 0 is not a GPT protective MBR (no 0x55AA or no type 0xEE entry)".into(),
        ));
    }
    let mut mbr = [0u8; SECTOR];
    mbr.copy_from_slice(boot_img);
    mbr[BPB_START..BPB_END].copy_from_slice(&disk_mbr[BPB_START..BPB_END]);
    mbr[WINDOWS_NT_MAGIC..].copy_from_slice(&disk_mbr[WINDOWS_NT_MAGIC..]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    mbr[BOOT_DRIVE] = 0xff;
    mbr[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    Ok(mbr)
}

/// Fills diskboot.img's blocklist (core.img's first sector) for core.img stored contiguously
/// from `core_lba`: one entry for the sectors after the first, then a terminating entry of
/// length 0. The segment each entry loads to (0x820, after diskboot at 0x8000) is
/// diskboot.img's own. Returns the image padded to whole sectors.
pub fn patch_core(core: &[u8], core_lba: u64) -> Result<Vec<u8>> {
    use boot_h::LIST_SIZE;
    if core.len() < SECTOR {
        return Err(cmd::Error::Other(
            "core.img is shorter than a sector".into(),
        ));
    }
    let mut img = core.to_vec();
    img.resize(core.len().div_ceil(SECTOR) * SECTOR, 0);
    let rest = u16::try_from(img.len() / SECTOR - 1)
        .map_err(|_| cmd::Error::Other("core.img is too large for one blocklist".into()))?;
    let first = SECTOR - LIST_SIZE;
    img[first..first + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    img[first + 8..first + 10].copy_from_slice(&rest.to_le_bytes());
    let next = first - LIST_SIZE;
    img[next..first].fill(0);
    Ok(img)
}

/// Writes core.img into the BIOS boot partition and boot.img into the MBR of `disk`.
pub fn install_boot_code(disk: &Path, boot_img: &Path, core_img: &Path) -> Result<()> {
    let boot = std::fs::read(boot_img).map_err(io(boot_img))?;
    let core = std::fs::read(core_img).map_err(io(core_img))?;
    let core = patch_core(&core, BIOS_BOOT_START)?;
    if core.len() as u64 > BIOS_BOOT_SECTORS * SECTOR as u64 {
        return Err(cmd::Error::Other(format!(
            "core.img ({} bytes) does not fit the {BIOS_BOOT_SECTORS}-sector BIOS boot partition",
            core.len()
        )));
    }
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io(disk))?;
    let mut mbr = [0u8; SECTOR];
    f.read_exact(&mut mbr).map_err(io(disk))?;
    let mbr = patch_mbr(&mbr, &boot, BIOS_BOOT_START)?;
    f.seek(SeekFrom::Start(BIOS_BOOT_START * SECTOR as u64))
        .map_err(io(disk))?;
    f.write_all(&core).map_err(io(disk))?;
    f.seek(SeekFrom::Start(0)).map_err(io(disk))?;
    f.write_all(&mbr).map_err(io(disk))?;
    f.sync_all().map_err(io(disk))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn block(body: &str) -> Vec<u8> {
        let mut b = format!("{ENV_HEADER}{body}").into_bytes();
        b.resize(ENV_SIZE, b'#');
        b
    }

    #[test]
    fn grubenv_round_trip_is_grubs_format() {
        let mut env = GrubEnv::default();
        env.set("order", "a b").unwrap();
        env.set("a_tries", "3").unwrap();
        env.set("odd", "back\\slash\nnewline").unwrap();
        let b = env.serialize().unwrap();
        assert_eq!(b.len(), ENV_SIZE);
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with(
            "# GRUB Environment Block\norder=a b\na_tries=3\nodd=back\\\\slash\\\nnewline\n###"
        ));
        assert!(text.ends_with('#'));
        assert_eq!(GrubEnv::parse(&b).unwrap(), env);
        // set replaces in place; remove removes
        env.set("order", "b a").unwrap();
        env.remove("odd");
        let back = GrubEnv::parse(&env.serialize().unwrap()).unwrap();
        assert_eq!(back.get("order"), Some("b a"));
        assert_eq!(back.get("odd"), None);
        // an empty block, as grub-editenv creates it
        assert_eq!(GrubEnv::parse(&block("")).unwrap(), GrubEnv::default());
    }

    #[test]
    fn grubenv_refuses_malformed_blocks() {
        assert!(GrubEnv::parse(&block("a=1\n")[..1023]).is_err());
        let mut long = block("a=1\n");
        long.push(b'#');
        assert!(GrubEnv::parse(&long).is_err());
        let mut bad_header = block("a=1\n");
        bad_header[2] = b'X';
        assert!(GrubEnv::parse(&bad_header).is_err());
        for body in [
            "noequals\n",
            "a=1",        // unterminated: runs into the padding without a newline
            "a=1\n#x",    // padding that is not all '#'
            "a b=1\n",    // bad key
            "=1\n",       // empty key
            "a=1\na=2\n", // duplicate
            "a=\u{0}x\n", // NUL
        ] {
            assert!(GrubEnv::parse(&block(body)).is_err(), "{body:?}");
        }
        let mut bad_utf8 = block("a=xx\n");
        bad_utf8[ENV_HEADER.len() + 2] = 0xff;
        assert!(GrubEnv::parse(&bad_utf8).is_err());
        // too much to fit
        let mut env = GrubEnv::default();
        env.set("big", &"x".repeat(1000)).unwrap();
        assert!(env.serialize().is_err());
        assert!(env.set("bad key", "1").is_err());
    }

    #[test]
    fn grubenv_reads_what_grub_editenv_writes() {
        // `grub-editenv F create; grub-editenv F set order="a b" a_tries=3` when installed.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("grubenv");
        let ok = Command::new("grub-editenv")
            .arg(&f)
            .arg("create")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("grub-editenv not installed; skipped");
            return;
        }
        let status = Command::new("grub-editenv")
            .arg(&f)
            .args(["set", "order=a b", "a_tries=3", "a_cmdline=root=x ro"])
            .status()
            .unwrap();
        assert!(status.success());
        let env = GrubEnv::parse(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(env.get("order"), Some("a b"));
        assert_eq!(env.get("a_tries"), Some("3"));
        assert_eq!(env.get("a_cmdline"), Some("root=x ro"));
        // and the other way: GRUB's comment line kept, ours byte-identical to GRUB's after the
        // same changes
        let mut ours = env.clone();
        ours.set("a_tries", "2").unwrap();
        ours.remove("order");
        let status = Command::new("grub-editenv")
            .arg(&f)
            .args(["set", "a_tries=2"])
            .status()
            .unwrap();
        assert!(status.success());
        let status = Command::new("grub-editenv")
            .arg(&f)
            .args(["unset", "order"])
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(ours.serialize().unwrap(), std::fs::read(&f).unwrap());
    }

    fn files(dir: &Path) -> (PathBuf, PathBuf) {
        let k = dir.join("vmlinuz-src");
        let i = dir.join("initrd-src");
        std::fs::write(&k, b"kernel").unwrap();
        std::fs::write(&i, b"initrd").unwrap();
        (k, i)
    }

    #[test]
    fn slots_install_arm_bless_like_an_update() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        let (k, i) = files(dir.path());
        init(&esp).unwrap();
        assert!(esp.join("bios/grub.cfg").is_file());
        let s = read_state(&esp).unwrap();
        assert!(s.order.is_empty());
        assert_eq!(s.next_boot(), None);

        // the build: slot a with 3 tries
        install_slot(&esp, Slot::A, &k, &i, "root=PARTUUID=aaa ro").unwrap();
        assert!(arm(&esp, Slot::B, 3).is_err(), "b is not installed");
        arm(&esp, Slot::A, 3).unwrap();
        let s = read_state(&esp).unwrap();
        assert_eq!(s.order, vec![Slot::A]);
        assert_eq!(s.slot(Slot::A).tries, Tries::Left(3));
        assert_eq!(
            s.slot(Slot::A).cmdline.as_deref(),
            Some("root=PARTUUID=aaa ro attestgate.boot=bios attestgate.slot=a")
        );
        assert_eq!(
            std::fs::read(esp.join("bios/a/vmlinuz")).unwrap(),
            b"kernel"
        );
        assert_eq!(s.next_boot(), Some(Slot::A));
        // the only bootable slot cannot be overwritten
        assert!(install_slot(&esp, Slot::A, &k, &i, "x").is_err());
        bless(&esp, Slot::A).unwrap();
        assert_eq!(read_state(&esp).unwrap().slot(Slot::A).tries, Tries::Good);

        // an update to b
        install_slot(&esp, Slot::B, &k, &i, "root=PARTUUID=bbb ro").unwrap();
        let s = read_state(&esp).unwrap();
        assert_eq!(
            s.order,
            vec![Slot::A],
            "installed but not armed: not booted"
        );
        assert!(s.slot(Slot::B).installed);
        arm(&esp, Slot::B, 2).unwrap();
        let s = read_state(&esp).unwrap();
        assert_eq!(s.order, vec![Slot::B, Slot::A]);
        assert_eq!(s.next_boot(), Some(Slot::B));
        // GRUB counted b down to 0 (what grub.cfg writes): a boots
        let mut env = read_env(&esp).unwrap();
        env.set("b_tries", "0").unwrap();
        write_env(&esp, &env).unwrap();
        assert_eq!(read_state(&esp).unwrap().next_boot(), Some(Slot::A));
        // installing over b again takes it out of the order until armed
        install_slot(&esp, Slot::B, &k, &i, "root=PARTUUID=bbb ro").unwrap();
        let s = read_state(&esp).unwrap();
        assert_eq!(s.order, vec![Slot::A]);
        assert_eq!(s.slot(Slot::B).tries, Tries::Good);

        assert!(arm(&esp, Slot::A, 0).is_err());
        assert!(arm(&esp, Slot::A, MAX_TRIES + 1).is_err());
        assert!(bless(&esp, Slot::B).is_err(), "b is not in the order");
    }

    #[test]
    fn state_refuses_malformed_values_and_falls_back_when_all_bad() {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp");
        init(&esp).unwrap();
        for (k, v) in [("order", "a c"), ("order", "a a"), ("a_tries", "x")] {
            let mut env = GrubEnv::default();
            env.set(k, v).unwrap();
            write_env(&esp, &env).unwrap();
            assert!(read_state(&esp).is_err(), "{k}={v}");
        }
        let mut env = GrubEnv::default();
        env.set("order", "b a").unwrap();
        env.set("a_tries", "0").unwrap();
        env.set("b_tries", "0").unwrap();
        write_env(&esp, &env).unwrap();
        assert_eq!(read_state(&esp).unwrap().next_boot(), Some(Slot::B));
    }

    #[test]
    fn grub_cfg_counts_down_saves_and_boots_with_the_slot_cmdline() {
        let c = grub_cfg();
        assert!(c.contains(
            "load_env --skip-sig --file \"$envfile\" order a_tries a_cmdline b_tries b_cmdline\n"
        ));
        for s in ["a", "b"] {
            for left in 1..=MAX_TRIES {
                let step = format!(
                    "elif [ \"${s}_tries\" = {left} ]; then\n        set {s}_tries={}\n        \
                     save_env --file \"$envfile\" {s}_tries\n",
                    left - 1
                );
                assert!(c.contains(&step), "{s} {left}");
            }
            // absent: good, booted without a save; 0 (no elif for it): skipped as bad
            assert!(c.contains(&format!(
                "if [ -z \"${s}_tries\" ]; then\n        set slot={s}\n"
            )));
            assert!(!c.contains(&format!("\"${s}_tries\" = 0")));
            assert!(c.contains(&format!(
                "linux \"${{prefix}}/{s}/vmlinuz\" ${s}_cmdline\n  initrd \"${{prefix}}/{s}/initrd.img\"\n  boot\n"
            )));
        }
        // the save happens before the boot command
        let save = c.find("save_env").unwrap();
        let boot = c.find("  boot\n").unwrap();
        assert!(save < boot);
        // output on the serial console (where the smoke test reads it)
        assert!(c.starts_with("# attestgate"));
        assert!(c.contains("terminal_output serial console\n"));
    }

    /// A protective MBR as sfdisk writes it for a GPT disk.
    fn protective_mbr() -> Vec<u8> {
        let mut m = vec![0u8; SECTOR];
        m[0x1b8..0x1bc].copy_from_slice(&[1, 2, 3, 4]);
        m[0x1be..0x1ce].copy_from_slice(&[
            0, 0, 2, 0, 0xee, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
        ]);
        m[510] = 0x55;
        m[511] = 0xaa;
        m
    }

    #[test]
    fn boot_code_keeps_the_protective_mbr_and_points_at_core() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.raw");
        let mut contents = protective_mbr();
        contents.resize(4096 * SECTOR, 0);
        std::fs::write(&disk, &contents).unwrap();
        // boot.img / diskboot.img stand-ins with GRUB's defaults in the patched fields
        let mut boot = vec![0xb0u8; SECTOR];
        boot[0x5c..0x64].copy_from_slice(&1u64.to_le_bytes());
        boot[0x66..0x68].copy_from_slice(&[0xeb, 0x05]);
        let boot_img = dir.path().join("boot.img");
        std::fs::write(&boot_img, &boot).unwrap();
        let mut core = vec![0xc0u8; 3 * SECTOR + 100];
        core[0x1f4..0x200].copy_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x08]);
        core[0x1e8..0x1f4].fill(0);
        let core_img = dir.path().join("core.img");
        std::fs::write(&core_img, &core).unwrap();

        install_boot_code(&disk, &boot_img, &core_img).unwrap();
        let out = std::fs::read(&disk).unwrap();
        let mbr = &out[..SECTOR];
        assert_eq!(
            &mbr[446..512],
            &protective_mbr()[446..512],
            "partition table"
        );
        assert_eq!(
            &mbr[0x1b8..0x1be],
            &protective_mbr()[0x1b8..0x1be],
            "disk signature"
        );
        assert_eq!(
            &mbr[0x5c..0x64],
            &BIOS_BOOT_START.to_le_bytes(),
            "kernel sector"
        );
        assert_eq!(mbr[0x64], 0xff);
        assert_eq!(&mbr[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&mbr[..3], &boot[..3], "boot.img's jump");
        assert_eq!(&mbr[0x5a..0x5c], &boot[0x5a..0x5c]);
        assert!(
            mbr[0x03..0x5a].iter().all(|&b| b == 0),
            "the disk's BPB area"
        );
        assert_eq!(&mbr[0x68..0x1b8], &boot[0x68..0x1b8], "boot.img's code");

        let at = BIOS_BOOT_START as usize * SECTOR;
        let first = &out[at..at + SECTOR];
        assert_eq!(
            &first[0x1f4..0x1fc],
            &(BIOS_BOOT_START + 1).to_le_bytes(),
            "start"
        );
        assert_eq!(&first[0x1fc..0x1fe], &3u16.to_le_bytes(), "3 more sectors");
        assert_eq!(&first[0x1fe..0x200], &[0x20, 0x08], "segment 0x820 kept");
        assert!(first[0x1e8..0x1f4].iter().all(|&b| b == 0), "terminator");
        assert_eq!(&out[at + SECTOR..at + 3 * SECTOR + 100], &core[SECTOR..]);
        assert!(out[at + 3 * SECTOR + 100..at + 4 * SECTOR]
            .iter()
            .all(|&b| b == 0));
        // sector 1 (the GPT header's place) untouched
        assert!(out[SECTOR..2 * SECTOR].iter().all(|&b| b == 0));

        // not a protective MBR: refused
        let plain = dir.path().join("plain.raw");
        std::fs::write(&plain, vec![0u8; 4096 * SECTOR]).unwrap();
        assert!(install_boot_code(&plain, &boot_img, &core_img).is_err());
        // core.img larger than the partition: refused
        std::fs::write(
            &core_img,
            vec![0u8; (BIOS_BOOT_SECTORS as usize + 1) * SECTOR],
        )
        .unwrap();
        assert!(install_boot_code(&disk, &boot_img, &core_img).is_err());
    }

    #[test]
    fn real_grub_images_patch_where_grub_bios_setup_would() {
        let boot = Path::new(GRUB_I386_PC).join("boot.img");
        let diskboot = Path::new(GRUB_I386_PC).join("diskboot.img");
        let (Ok(boot), Ok(diskboot)) = (std::fs::read(boot), std::fs::read(diskboot)) else {
            eprintln!("grub-pc-bin not installed; skipped");
            return;
        };
        // GRUB's defaults at the offsets named in boot_h: kernel sector 1, drive 0xff, the jmp
        assert_eq!(&boot[0x5c..0x64], &1u64.to_le_bytes());
        assert_eq!(boot[0x64], 0xff);
        assert_eq!(boot[0x66], 0xeb, "a short jmp at DRIVE_CHECK");
        assert_eq!(&diskboot[0x1fe..0x200], &0x820u16.to_le_bytes());
        let mbr = patch_mbr(&protective_mbr(), &boot, 40).unwrap();
        assert_eq!(&mbr[446..], &protective_mbr()[446..]);
        let mut core = diskboot.clone();
        core.resize(10 * SECTOR, 0);
        let core = patch_core(&core, 40).unwrap();
        assert_eq!(&core[0x1f4..0x1fc], &41u64.to_le_bytes());
        assert_eq!(&core[0x1fc..0x1fe], &9u16.to_le_bytes());
    }
}
