//! Installs a seed's configuration: the extra files, then the configuration itself only once
//! `attestgate config check --strict` accepts it. A seed is applied once per instance id, so a
//! configuration changed later on the appliance (`attestgate config apply`) survives reboots
//! with the same seed attached.

use super::nocloud::{Seed, UserData, CONFIG_NAME};
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
}

impl Layout {
    pub fn appliance() -> Layout {
        Layout {
            etc_dir: PathBuf::from("/etc/attestgate"),
            applied_file: PathBuf::from("/var/lib/attestgate-firstboot/applied-instance-id"),
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
attestgate: to configure it, attach a NoCloud seed: a FAT or ISO 9660 volume labelled CIDATA
attestgate: holding `meta-data` (instance-id: ...) and `user-data` = the attestgate TOML
attestgate: configuration (files it names may go in an `attestgate/` directory), then reboot;
attestgate: or log in, write /etc/attestgate/attestgate.toml, check it with
attestgate: `attestgate config check --strict` and run `systemctl start attestgate`.";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::firstboot::nocloud::{MetaData, SeedFile};

    fn seed(config: &str, id: Option<&str>) -> Seed {
        Seed {
            meta: MetaData {
                instance_id: id.map(String::from),
                local_hostname: None,
            },
            user_data: UserData::Config(config.into()),
            files: vec![SeedFile {
                name: "relay.key".into(),
                contents: b"k".to_vec(),
            }],
        }
    }

    fn layout(dir: &Path) -> Layout {
        Layout {
            etc_dir: dir.join("etc"),
            applied_file: dir.join("state/applied"),
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
    fn digest_id_without_instance_id() {
        let a = instance_id(&seed("a = 1\n", None));
        let b = instance_id(&seed("a = 2\n", None));
        assert!(a.starts_with("sha256:") && a != b);
    }
}
