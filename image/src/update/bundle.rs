//! The update bundle `image build` writes and `attestgate update apply` reads: a plain ustar
//! archive (inspectable with `tar tvf`), members in this order:
//!
//! 1. `manifest.json` — format, version, and the size and SHA-256 of every other member;
//! 2. `manifest.sig`  — Ed25519 signature of `manifest.json` (RFC 8032), by the build's update
//!    signing key; the appliance accepts only keys under `/usr/lib/attestgate/update-keys/`;
//! 3. `attestgate.efi` — the unified kernel image (its `.cmdline` names slot A's root; apply
//!    points it at the slot it writes);
//! 4. `root.ext4.zst` — the read-only root file system, zstd-compressed.
//!
//! Nothing is written before the manifest's signature is verified, and every member is checked
//! against the manifest while it streams (the root is decompressed by the appliance's `zstd`).

use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const FORMAT: &str = "attestgate-update/1";
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
pub const UKI: &str = "attestgate.efi";
pub const ROOT: &str = "root.ext4.zst";
/// Where the appliance keeps the public keys it accepts (one per file, 64 hex digits).
pub const KEYS_DIR: &str = "/usr/lib/attestgate/update-keys";
/// Limits a hostile bundle cannot exceed before its signature is checked.
pub const MAX_MANIFEST: u64 = 64 << 10;
pub const MAX_UKI: u64 = 256 << 20;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// The appliance version, e.g. `0.1.0+g5c7b376.20261127T1327Z`.
    pub version: String,
    pub architecture: String,
    pub uki: Member,
    /// The root file system: `size` and `sha256` are of the decompressed ext4 image.
    pub root: Member,
    /// SHA-256 of the compressed root as it is in the bundle.
    pub root_compressed_sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Io(String),
    #[error("not an update bundle: {0}")]
    Format(String),
    #[error("the bundle's signature does not verify with any key in {0} (not built by a trusted build?)")]
    Untrusted(String),
    #[error("{member}: {what} (the bundle is corrupt or was changed after it was signed)")]
    Mismatch { member: &'static str, what: String },
}

fn io_err(what: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |e| BundleError::Io(format!("{}: {e}", what.display()))
}

/// The build's signing key: read from `path`, or made there (PKCS#8, 0600) when absent.
pub fn signing_key(path: &Path) -> Result<(Ed25519KeyPair, bool), BundleError> {
    let (pkcs8, made) = match std::fs::read(path) {
        Ok(b) => (b, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let rng = ring::rand::SystemRandom::new();
            let doc = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| BundleError::Io("cannot generate an Ed25519 key".into()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io_err(path))?;
            std::io::Write::write_all(&mut f, doc.as_ref()).map_err(io_err(path))?;
            (doc.as_ref().to_vec(), true)
        }
        Err(e) => return Err(io_err(path)(e)),
    };
    let key = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|e| {
        BundleError::Format(format!(
            "{}: not an Ed25519 PKCS#8 key: {e}",
            path.display()
        ))
    })?;
    Ok((key, made))
}

/// The public key as the appliance stores it.
pub fn public_key_hex(key: &Ed25519KeyPair) -> String {
    crate::cmd::hex(key.public_key().as_ref())
}

/// Writes the bundle. `root` is the uncompressed ext4 image; it is compressed here with `zstd`.
pub fn write(
    out: &Path,
    version: &str,
    uki: &Path,
    root: &Path,
    key: &Ed25519KeyPair,
    work: &Path,
) -> Result<Manifest, BundleError> {
    let compressed = work.join(ROOT);
    let _ = std::fs::remove_file(&compressed);
    let status = crate::cmd::nice("zstd")
        .args(["-q", "-T0", "-6", "-o"])
        .arg(&compressed)
        .arg(root)
        .status()
        .map_err(|e| BundleError::Io(format!("zstd: {e} (see image/ci-deps.sh)")))?;
    if !status.success() {
        return Err(BundleError::Io(format!("zstd: {status}")));
    }
    let member = |p: &Path| -> Result<Member, BundleError> {
        Ok(Member {
            size: crate::cmd::size(p),
            sha256: crate::cmd::sha256_file(p).map_err(|e| BundleError::Io(e.to_string()))?,
        })
    };
    let manifest = Manifest {
        format: FORMAT.into(),
        version: version.into(),
        architecture: "x86_64".into(),
        uki: member(uki)?,
        root: member(root)?,
        root_compressed_sha256: member(&compressed)?.sha256,
    };
    let json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| BundleError::Format(e.to_string()))?;
    let sig = key.sign(&json);
    let partial = out.with_extension("partial");
    let f = std::fs::File::create(&partial).map_err(io_err(&partial))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::new(f));
    tar.mode(tar::HeaderMode::Deterministic);
    let mut add_bytes = |name: &str, bytes: &[u8]| -> Result<(), BundleError> {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes).map_err(io_err(out))
    };
    add_bytes(MANIFEST, &json)?;
    add_bytes(SIGNATURE, sig.as_ref())?;
    for (name, path) in [(UKI, uki), (ROOT, compressed.as_path())] {
        let mut f = std::fs::File::open(path).map_err(io_err(path))?;
        let mut h = tar::Header::new_ustar();
        h.set_size(crate::cmd::size(path));
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, &mut f).map_err(io_err(out))?;
    }
    let w = tar.into_inner().map_err(io_err(out))?;
    let f = w
        .into_inner()
        .map_err(|e| BundleError::Io(format!("{}: {}", out.display(), e.error())))?;
    f.sync_all().map_err(io_err(out))?;
    std::fs::rename(&partial, out).map_err(io_err(out))?;
    let _ = std::fs::remove_file(&compressed);
    Ok(manifest)
}

/// The public keys the appliance trusts, from `dir` (files of 64 hex digits).
pub fn trusted_keys(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, BundleError> {
    let mut keys = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for e in entries.flatten() {
        let p = e.path();
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        if let Some(k) = parse_hex32(text.trim()) {
            keys.push((p, k));
        }
    }
    keys.sort();
    Ok(keys)
}

fn parse_hex32(s: &str) -> Option<Vec<u8>> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..32)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// Checks the signature over the manifest's exact bytes, then parses it.
pub fn verify_manifest(
    json: &[u8],
    sig: &[u8],
    keys: &[(PathBuf, Vec<u8>)],
    keys_dir: &Path,
) -> Result<(Manifest, PathBuf), BundleError> {
    let trusted = keys.iter().find(|(_, k)| {
        signature::UnparsedPublicKey::new(&signature::ED25519, k)
            .verify(json, sig)
            .is_ok()
    });
    let Some((key_path, _)) = trusted else {
        return Err(BundleError::Untrusted(keys_dir.display().to_string()));
    };
    let m: Manifest = serde_json::from_slice(json)
        .map_err(|e| BundleError::Format(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT {
        return Err(BundleError::Format(format!(
            "{MANIFEST}: format {:?}, this appliance reads {FORMAT:?}",
            m.format
        )));
    }
    if m.architecture != std::env::consts::ARCH {
        return Err(BundleError::Format(format!(
            "built for {}, this appliance is {}",
            m.architecture,
            std::env::consts::ARCH
        )));
    }
    if m.uki.size > MAX_UKI {
        return Err(BundleError::Format(format!(
            "kernel image of {} bytes (at most {MAX_UKI})",
            m.uki.size
        )));
    }
    Ok((m, key_path.clone()))
}

/// Reads one whole member (bounded) and checks its name.
pub fn read_small(
    entry: &mut tar::Entry<'_, impl Read>,
    name: &'static str,
    limit: u64,
) -> Result<Vec<u8>, BundleError> {
    let path = entry
        .path()
        .map_err(|e| BundleError::Format(e.to_string()))?
        .to_string_lossy()
        .into_owned();
    if path != name {
        return Err(BundleError::Format(format!(
            "expected member {name}, found {path:?}"
        )));
    }
    if entry.size() > limit {
        return Err(BundleError::Format(format!(
            "{name} is {} bytes (at most {limit})",
            entry.size()
        )));
    }
    let mut buf = Vec::with_capacity(entry.size() as usize);
    entry
        .take(limit)
        .read_to_end(&mut buf)
        .map_err(|e| BundleError::Io(format!("{name}: {e}")))?;
    Ok(buf)
}

/// SHA-256, lower-case hex.
pub fn sha256(bytes: &[u8]) -> String {
    crate::cmd::hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}
