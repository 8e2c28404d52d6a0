//! Output files appear whole or not at all: each is written to a temporary file next to its
//! place, flushed, and renamed over it (rename(2) is atomic within a file system). On any
//! failure the temporary files are removed and the old files stay as they were.

use super::ProfileError;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "profile".into());
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to a fresh temporary file beside `path`; returns its path.
fn write_temp(path: &Path, bytes: &[u8], private: bool) -> Result<PathBuf, ProfileError> {
    let tmp = temp_path(path);
    let err = |source| ProfileError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(tmp)
}

/// Writes one file atomically. `private`: mode 0600 (the content holds a secret), else 0644.
pub fn write_file_atomically(path: &Path, bytes: &[u8], private: bool) -> Result<(), ProfileError> {
    if path.is_dir() {
        return Err(ProfileError::Write {
            path: path.to_path_buf(),
            source: std::io::Error::other("is a directory"),
        });
    }
    let tmp = write_temp(path, bytes, private)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        ProfileError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Writes several files into `dir` (made if missing): all temporary files first, then the
/// renames, so a failure while writing leaves no new file behind.
pub fn write_dir_atomically(
    dir: &Path,
    files: &[(&str, Vec<u8>)],
    private: bool,
) -> Result<(), ProfileError> {
    let werr = |path: &Path, source| ProfileError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some((name, _)) = files.iter().find(|(n, _)| dir.join(n).is_dir()) {
        return Err(werr(
            &dir.join(name),
            std::io::Error::other("is a directory"),
        ));
    }
    let created = if dir.is_dir() {
        false
    } else {
        fs::create_dir(dir).map_err(|e| werr(dir, e))?;
        true
    };
    let mut temps: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |temps: &[(PathBuf, PathBuf)]| {
        for (tmp, _) in temps {
            let _ = fs::remove_file(tmp);
        }
        if created {
            let _ = fs::remove_dir(dir);
        }
    };
    for (name, bytes) in files {
        let path = dir.join(name);
        match write_temp(&path, bytes, private) {
            Ok(tmp) => temps.push((tmp, path)),
            Err(e) => {
                cleanup(&temps);
                return Err(e);
            }
        }
    }
    for (i, (tmp, path)) in temps.iter().enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            cleanup(&temps[i..]);
            return Err(werr(path, e));
        }
    }
    Ok(())
}
