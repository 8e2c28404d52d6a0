//! Installs a seed's configuration: the extra files, then the configuration itself only once
//! `attestgate config check --strict` accepts it. A seed is applied once per instance id, so a
//! configuration changed later on the appliance (`attestgate config apply`) survives reboots
//! with the same seed attached.
//!
//! The seed's SSH keys go to [`Layout::authorized_keys`] whatever becomes of the configuration
//! (an operator can then log in to fix a refused one), also once per instance id: on a new one
//! the file is replaced by exactly the seed's keys (removed when it has none), so a disk cloned
//! to a new instance keeps no earlier owner's keys.

use super::seed::{Seed, UserData, CONFIG_NAME};
use super::ssh_keys;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Where things go on the appliance.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `/etc/attestgate` (a link into the writable `/var` on the read-only root).
    pub etc_dir: PathBuf,
    /// Records the instance id of the last seed applied.
    pub applied_file: PathBuf,
    /// `/etc/attestgate/ssh/authorized_keys` (mode 0600 in a 0700 directory); sshd is pointed
    /// at it by the image.
    pub authorized_keys: PathBuf,
    /// Records the instance id whose keys are in `authorized_keys`.
    pub keys_applied_file: PathBuf,
}

impl Layout {
    pub fn appliance() -> Layout {
        Layout {
            etc_dir: PathBuf::from("/etc/attestgate"),
            applied_file: PathBuf::from("/var/lib/attestgate-firstboot/applied-instance-id"),
            authorized_keys: PathBuf::from("/etc/attestgate/ssh/authorized_keys"),
            keys_applied_file: PathBuf::from("/var/lib/attestgate-firstboot/keys-instance-id"),
        }
    }
    pub fn config(&self) -> PathBuf {
        self.etc_dir.join(CONFIG_NAME)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Installed {
        instance_id: String,
        files: usize,
    },
    /// This instance id was applied on an earlier boot; nothing changed.
    AlreadyApplied {
        instance_id: String,
    },
    /// The seed carries no configuration.
    NoConfig,
}

#[derive(Debug, PartialEq, Eq)]
pub enum KeysOutcome {
    /// A new instance id: `authorized_keys` now holds exactly these keys (none: removed).
    Replaced {
        installed: usize,
        /// Why each refused line was refused.
        refused: Vec<String>,
    },
    /// This instance id's keys were installed on an earlier boot; the file was left as it is.
    Unchanged,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the configuration in user-data is invalid, not installed:\n{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// What `attestgate config check --strict FILE` says: `Err` carries its report.
pub type Check<'a> = &'a dyn Fn(&Path) -> Result<(), String>;

/// The seed's identity: its `instance-id`, else a digest of what it carries.
pub fn instance_id(seed: &Seed) -> String {
    if let Some(id) = &seed.meta.instance_id {
        return id.clone();
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    if let UserData::Config(text) = &seed.user_data {
        ctx.update(text.as_bytes());
    }
    // Keys count only when present, so digests of seeds without keys stay what they were.
    for key in &seed.meta.public_keys {
        ctx.update(b"key");
        ctx.update(&(key.len() as u64).to_be_bytes());
        ctx.update(key.as_bytes());
    }
    for f in &seed.files {
        ctx.update(&(f.name.len() as u64).to_be_bytes());
        ctx.update(f.name.as_bytes());
        ctx.update(&(f.contents.len() as u64).to_be_bytes());
        ctx.update(&f.contents);
    }
    let digest = ctx.finish();
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

pub fn install(seed: &Seed, layout: &Layout, check: Check<'_>) -> Result<Outcome, InstallError> {
    let UserData::Config(config) = &seed.user_data else {
        return Ok(Outcome::NoConfig);
    };
    let id = instance_id(seed);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| InstallError::Io { path, source }
    };
    if let Ok(done) = std::fs::read_to_string(&layout.applied_file) {
        if done.trim_end() == id && layout.config().exists() {
            return Ok(Outcome::AlreadyApplied { instance_id: id });
        }
    }
    std::fs::create_dir_all(&layout.etc_dir).map_err(io(&layout.etc_dir))?;
    // The files first: `--strict` checks that the files the configuration names exist. They are
    // data for the configuration only; the daemon starts after this, and not at all if the
    // configuration is refused.
    for f in &seed.files {
        write_atomic(&layout.etc_dir.join(&f.name), &f.contents)?;
    }
    let staged = layout.etc_dir.join(format!("{CONFIG_NAME}.new"));
    write_private(&staged, config.as_bytes())?;
    if let Err(report) = check(&staged) {
        let _ = std::fs::remove_file(&staged);
        return Err(InstallError::Invalid(report));
    }
    let target = layout.config();
    std::fs::rename(&staged, &target).map_err(io(&target))?;
    if let Some(parent) = layout.applied_file.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_atomic(&layout.applied_file, format!("{id}\n").as_bytes())?;
    Ok(Outcome::Installed {
        instance_id: id,
        files: seed.files.len(),
    })
}

/// Installs the seed's SSH keys once per instance id (see the module doc).
pub fn install_keys(seed: &Seed, layout: &Layout) -> Result<KeysOutcome, InstallError> {
    let id = instance_id(seed);
    if let Ok(done) = std::fs::read_to_string(&layout.keys_applied_file) {
        if done.trim_end() == id {
            return Ok(KeysOutcome::Unchanged);
        }
    }
    let checked = ssh_keys::check_keys(&seed.meta.public_keys);
    let target = &layout.authorized_keys;
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| InstallError::Io { path, source }
    };
    if checked.accepted.is_empty() {
        match std::fs::remove_file(target) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(target)(e)),
            _ => {}
        }
    } else {
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(dir))?;
        }
        let mut text = checked.accepted.join("\n");
        text.push('\n');
        write_atomic(target, text.as_bytes())?;
    }
    if let Some(parent) = layout.keys_applied_file.parent() {
        std::fs::create_dir_all(parent).map_err(io(parent))?;
    }
    write_atomic(&layout.keys_applied_file, format!("{id}\n").as_bytes())?;
    Ok(KeysOutcome::Replaced {
        installed: checked.accepted.len(),
        refused: checked.refused,
    })
}

/// Mode 0600: configurations and the files beside them hold keys.
fn write_private(path: &Path, contents: &[u8]) -> Result<(), InstallError> {
    let err = |source| InstallError::Io {
        path: path.display().to_string(),
        source,
    };
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)
}

fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), InstallError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    write_private(&tmp, contents)?;
    std::fs::rename(&tmp, path).map_err(|source| InstallError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Printed on the console when no configuration is installed.
pub const NOT_CONFIGURED: &str = "\
attestgate: NOT CONFIGURED - the gateway is closed (no relay, no egress).
attestgate: to configure it, give the instance the attestgate TOML configuration as its user
attestgate: data (AWS user data, GCP metadata `attestgate-config` or `user-data`, Azure custom
attestgate: data) and a new instance; or attach a NoCloud seed: a FAT or ISO 9660 volume
attestgate: labelled CIDATA holding `meta-data` (instance-id: ...) and `user-data` = the
attestgate: configuration (files it names may go in an `attestgate/` directory), then reboot;
attestgate: or log in, write /etc/attestgate/attestgate.toml, check it with
attestgate: `attestgate config check --strict` and run `systemctl start attestgate`.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::firstboot::seed::{MetaData, SeedFile};

    fn seed(config: &str, id: Option<&str>) -> Seed {
        Seed {
            meta: MetaData {
                instance_id: id.map(String::from),
                ..MetaData::default()
            },
            user_data: UserData::Config(config.into()),
            files: vec![SeedFile {
                name: "relay.key".into(),
                contents: b"k".to_vec(),
            }],
            notes: Vec::new(),
        }
    }

    fn layout(dir: &Path) -> Layout {
        Layout {
            etc_dir: dir.join("etc"),
            applied_file: dir.join("state/applied"),
            authorized_keys: dir.join("etc/ssh/authorized_keys"),
            keys_applied_file: dir.join("state/keys"),
        }
    }

    #[test]
    fn valid_is_installed_once_per_instance() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let ok = |_: &Path| Ok(());
        let out = install(&seed("a = 1\n", Some("i-1")), &l, &ok).unwrap();
        assert_eq!(
            out,
            Outcome::Installed {
                instance_id: "i-1".into(),
                files: 1
            }
        );
        assert_eq!(std::fs::read_to_string(l.config()).unwrap(), "a = 1\n");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(l.config()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(l.etc_dir.join("relay.key")).unwrap(), b"k");
        // Changed locally afterwards: the same seed does not overwrite it.
        std::fs::write(l.config(), "local = 1\n").unwrap();
        let out = install(&seed("a = 1\n", Some("i-1")), &l, &ok).unwrap();
        assert!(matches!(out, Outcome::AlreadyApplied { .. }));
        assert_eq!(std::fs::read_to_string(l.config()).unwrap(), "local = 1\n");
        // A new instance id applies again.
        install(&seed("a = 2\n", Some("i-2")), &l, &ok).unwrap();
        assert_eq!(std::fs::read_to_string(l.config()).unwrap(), "a = 2\n");
    }

    #[test]
    fn invalid_changes_no_config() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        std::fs::create_dir_all(&l.etc_dir).unwrap();
        std::fs::write(l.config(), "old = 1\n").unwrap();
        let bad = |p: &Path| Err(format!("{}: error: nope", p.display()));
        let err = install(&seed("a = \n", None), &l, &bad).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        assert_eq!(std::fs::read_to_string(l.config()).unwrap(), "old = 1\n");
        assert!(!l.etc_dir.join("attestgate.toml.new").exists());
        assert!(!l.applied_file.exists());
    }

    #[test]
    fn keys_replaced_once_per_instance() {
        use base64::Engine as _;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let l = layout(dir.path());
        let mut raw = 11u32.to_be_bytes().to_vec();
        raw.extend_from_slice(b"ssh-ed25519\0\0\0\x20");
        raw.extend_from_slice(&[1; 32]);
        let good = format!(
            "ssh-ed25519 {} a@b",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        let mut s = seed("a = 1\n", Some("i-1"));
        s.meta.public_keys = vec![good.clone(), "from=\"x\" ssh-ed25519 AAAA".into()];
        let out = install_keys(&s, &l).unwrap();
        let KeysOutcome::Replaced { installed, refused } = out else {
            panic!("{out:?}")
        };
        assert_eq!(installed, 1);
        assert_eq!(refused.len(), 1);
        assert_eq!(
            std::fs::read_to_string(&l.authorized_keys).unwrap(),
            format!("{good}\n")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&l.authorized_keys), 0o600);
        assert_eq!(mode(l.authorized_keys.parent().unwrap()), 0o700);
        // Same instance: a key added by hand stays.
        std::fs::write(&l.authorized_keys, "by hand\n").unwrap();
        assert_eq!(install_keys(&s, &l).unwrap(), KeysOutcome::Unchanged);
        assert_eq!(
            std::fs::read_to_string(&l.authorized_keys).unwrap(),
            "by hand\n"
        );
        // A new instance without keys: replaced by nothing.
        let s2 = seed("a = 1\n", Some("i-2"));
        assert_eq!(
            install_keys(&s2, &l).unwrap(),
            KeysOutcome::Replaced {
                installed: 0,
                refused: vec![]
            }
        );
        assert!(!l.authorized_keys.exists());
    }

    #[test]
    fn digest_id_without_instance_id() {
        let a = instance_id(&seed("a = 1\n", None));
        let b = instance_id(&seed("a = 2\n", None));
        assert!(a.starts_with("sha256:") && a != b);
    }
}
