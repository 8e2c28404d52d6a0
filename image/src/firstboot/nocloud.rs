//! NoCloud seeds: a volume labelled `cidata` (FAT or ISO 9660) holding `meta-data` and
//! `user-data`, as cloud-init's NoCloud data source defines them. attestgate reads no
//! cloud-config: the user data *is* the attestgate TOML configuration. Anything cloud-init
//! would run instead (`#cloud-config`, scripts, MIME multipart, gzip, `#include`) is refused
//! with a message saying so, never half-applied.
//!
//! Files the configuration refers to (relay certificate and key, PSKs, device CAs) may ride in
//! an `attestgate/` directory on the seed; they are installed next to the configuration.
//!
//! This module only parses; [`super::install`] validates and installs.

use std::path::Path;

/// Largest user-data accepted (cloud platforms cap theirs at 16–64 KiB; a seed volume has no
/// cap, so keep one that no configuration comes near).
pub const MAX_USER_DATA: usize = 1 << 20;
/// Largest `meta-data`.
pub const MAX_META_DATA: usize = 64 << 10;
/// Largest extra file, and how many may ride along.
pub const MAX_FILE: usize = 1 << 20;
pub const MAX_FILES: usize = 64;
/// The extra files' directory on the seed.
pub const FILES_DIR: &str = "attestgate";
/// The configuration's file name; an extra file may not take it.
pub const CONFIG_NAME: &str = "attestgate.toml";

/// What a seed says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub meta: MetaData,
    pub user_data: UserData,
    /// `attestgate/NAME` files, sorted by name.
    pub files: Vec<SeedFile>,
}

/// The keys of `meta-data` attestgate uses; others are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaData {
    /// Identifies this deployment: a seed is applied once per instance id.
    pub instance_id: Option<String>,
    pub local_hostname: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserData {
    /// No user-data file, or an empty one: the appliance boots unconfigured (closed).
    Absent,
    /// An attestgate TOML configuration, line endings normalised to `\n`.
    Config(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedFile {
    pub name: String,
    pub contents: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeedError {
    #[error("the seed has no meta-data file (NoCloud requires one, even empty)")]
    NoMetaData,
    #[error("{file}: {size} bytes is more than the {max} accepted")]
    TooLarge {
        file: String,
        size: usize,
        max: usize,
    },
    #[error("{file}: not UTF-8 text (byte {offset})")]
    NotUtf8 { file: String, offset: usize },
    #[error("{file}: contains a NUL byte (binary data?)")]
    Nul { file: String },
    #[error(
        "user-data is {kind}, which attestgate does not run: user-data must be the attestgate \
         TOML configuration itself (see `attestgate config check`)"
    )]
    Unsupported { kind: &'static str },
    #[error("meta-data line {line}: {reason}")]
    MetaData { line: usize, reason: String },
    #[error("{FILES_DIR}/{name}: {reason}")]
    File { name: String, reason: String },
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
}

/// Reads a seed mounted (or copied) at `dir`.
pub fn read_seed(dir: &Path) -> Result<Seed, SeedError> {
    let meta = match read_limited(&dir.join("meta-data"), "meta-data", MAX_META_DATA)? {
        Some(bytes) => parse_meta_data(&bytes)?,
        None => return Err(SeedError::NoMetaData),
    };
    let user_data = match read_limited(&dir.join("user-data"), "user-data", MAX_USER_DATA)? {
        Some(bytes) => parse_user_data(&bytes)?,
        None => UserData::Absent,
    };
    let files = read_files(&dir.join(FILES_DIR))?;
    Ok(Seed {
        meta,
        user_data,
        files,
    })
}

/// Parses `user-data`.
pub fn parse_user_data(bytes: &[u8]) -> Result<UserData, SeedError> {
    // gzip magic (RFC 1952 §2.3.1): cloud-init inflates these; we do not.
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(SeedError::Unsupported {
            kind: "gzip-compressed",
        });
    }
    let text = text("user-data", bytes, MAX_USER_DATA)?;
    if text.trim().is_empty() {
        return Ok(UserData::Absent);
    }
    let first = text.lines().next().unwrap_or("").trim_end();
    let kind = if first.starts_with("#cloud-config") {
        Some("cloud-config")
    } else if first.starts_with("#!") {
        Some("a script")
    } else if first.starts_with("#include") {
        Some("an #include list")
    } else if first.starts_with("#cloud-boothook") {
        Some("a cloud-boothook")
    } else if first.starts_with("## template:") {
        Some("a Jinja template")
    } else if first.to_ascii_lowercase().starts_with("content-type:")
        || first.to_ascii_lowercase().starts_with("mime-version:")
    {
        Some("MIME multipart")
    } else {
        None
    };
    match kind {
        Some(kind) => Err(SeedError::Unsupported { kind }),
        None => Ok(UserData::Config(text)),
    }
}

/// Parses `meta-data`: the flat `key: value` YAML that NoCloud seeds use, or a JSON object.
/// Nested blocks (indented lines) and unknown keys are ignored; a known key with a value we
/// cannot read is an error rather than a guess.
pub fn parse_meta_data(bytes: &[u8]) -> Result<MetaData, SeedError> {
    let text = text("meta-data", bytes, MAX_META_DATA)?;
    if text.trim_start().starts_with('{') {
        return parse_meta_json(&text);
    }
    let mut meta = MetaData::default();
    let mut host_line = 0;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty()
            || raw.trim_start().starts_with('#')
            || raw.starts_with([' ', '\t'])
            || raw == "---"
        {
            continue;
        }
        let Some((key, value)) = raw.split_once(':') else {
            return Err(SeedError::MetaData {
                line,
                reason: format!("expected `key: value`, found {raw:?}"),
            });
        };
        let slot = match key.trim() {
            "instance-id" | "instance_id" => &mut meta.instance_id,
            "local-hostname" | "local_hostname" | "hostname" => {
                host_line = line;
                &mut meta.local_hostname
            }
            _ => continue,
        };
        let value = scalar(value).map_err(|reason| SeedError::MetaData { line, reason })?;
        *slot = Some(value);
    }
    if let Some(host) = &meta.local_hostname {
        check_hostname(host).map_err(|reason| SeedError::MetaData {
            line: host_line,
            reason,
        })?;
    }
    Ok(meta)
}

fn parse_meta_json(text: &str) -> Result<MetaData, SeedError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| SeedError::MetaData {
        line: e.line(),
        reason: format!("invalid JSON: {e}"),
    })?;
    let Some(object) = value.as_object() else {
        return Err(SeedError::MetaData {
            line: 1,
            reason: "JSON meta-data must be an object".into(),
        });
    };
    let get = |keys: &[&str]| -> Result<Option<String>, SeedError> {
        for key in keys {
            match object.get(*key) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(s)) => return Ok(Some(s.clone())),
                Some(other) => {
                    return Err(SeedError::MetaData {
                        line: 1,
                        reason: format!("{key} must be a string, not {other}"),
                    })
                }
            }
        }
        Ok(None)
    };
    let meta = MetaData {
        instance_id: get(&["instance-id", "instance_id"])?,
        local_hostname: get(&["local-hostname", "local_hostname", "hostname"])?,
    };
    if let Some(host) = &meta.local_hostname {
        check_hostname(host).map_err(|reason| SeedError::MetaData { line: 1, reason })?;
    }
    Ok(meta)
}

/// A YAML plain, single- or double-quoted scalar on one line (YAML 1.2 §7.3), with an optional
/// trailing comment after a plain one.
fn scalar(value: &str) -> Result<String, String> {
    let v = value.trim();
    if let Some(rest) = v.strip_prefix('\'') {
        let Some(end) = rest.rfind('\'') else {
            return Err("unterminated single-quoted value".into());
        };
        let (inner, after) = rest.split_at(end);
        check_after_quote(&after[1..])?;
        return Ok(inner.replace("''", "'"));
    }
    if let Some(rest) = v.strip_prefix('"') {
        let Some(end) = rest.rfind('"') else {
            return Err("unterminated double-quoted value".into());
        };
        let (inner, after) = rest.split_at(end);
        check_after_quote(&after[1..])?;
        if inner.contains('\\') {
            return Err("escape sequences in quoted values are not supported".into());
        }
        return Ok(inner.to_string());
    }
    if v.starts_with(['|', '>', '[', '{', '&', '*', '!']) {
        return Err(format!("unsupported YAML value {v:?} (use a plain string)"));
    }
    let plain = match v.find(" #") {
        Some(i) => v[..i].trim_end(),
        None => v,
    };
    if plain.is_empty() {
        return Err("empty value".into());
    }
    Ok(plain.to_string())
}

fn check_after_quote(after: &str) -> Result<(), String> {
    let after = after.trim();
    if after.is_empty() || after.starts_with('#') {
        Ok(())
    } else {
        Err(format!("unexpected {after:?} after the quoted value"))
    }
}

/// RFC 1123 §2.1 host names: labels of letters, digits and hyphens, at most 63 each, 253 in all.
fn check_hostname(host: &str) -> Result<(), String> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("local-hostname {host:?} is not a valid host name"))
    }
}

/// UTF-8 text without a byte-order mark, `\r\n` (and lone `\r`) turned into `\n`.
fn text(file: &str, bytes: &[u8], max: usize) -> Result<String, SeedError> {
    if bytes.len() > max {
        return Err(SeedError::TooLarge {
            file: file.into(),
            size: bytes.len(),
            max,
        });
    }
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let s = std::str::from_utf8(bytes).map_err(|e| SeedError::NotUtf8 {
        file: file.into(),
        offset: e.valid_up_to(),
    })?;
    if s.contains('\0') {
        return Err(SeedError::Nul { file: file.into() });
    }
    Ok(s.replace("\r\n", "\n").replace('\r', "\n"))
}

fn read_limited(path: &Path, file: &str, max: usize) -> Result<Option<Vec<u8>>, SeedError> {
    let io = |e: std::io::Error| SeedError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !meta.is_file() {
        return Err(SeedError::Io {
            path: path.display().to_string(),
            reason: "not a regular file".into(),
        });
    }
    let size = usize::try_from(meta.len()).unwrap_or(usize::MAX);
    if size > max {
        return Err(SeedError::TooLarge {
            file: file.into(),
            size,
            max,
        });
    }
    std::fs::read(path).map(Some).map_err(io)
}

/// A name an extra file may have: it becomes `/etc/attestgate/NAME`, so no separators, no dot
/// files, no `..`.
pub fn valid_file_name(name: &str) -> Result<(), String> {
    if name == CONFIG_NAME {
        return Err(format!(
            "{CONFIG_NAME} comes from user-data, not from {FILES_DIR}/"
        ));
    }
    if name.is_empty() || name.len() > 128 || name.starts_with('.') {
        return Err("names must be 1–128 characters and not start with a dot".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("names may contain only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

fn read_files(dir: &Path) -> Result<Vec<SeedFile>, SeedError> {
    let io = |e: std::io::Error| SeedError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        valid_file_name(&name).map_err(|reason| SeedError::File {
            name: name.clone(),
            reason,
        })?;
        if !entry.file_type().map_err(io)?.is_file() {
            return Err(SeedError::File {
                name,
                reason: "not a regular file".into(),
            });
        }
        if files.len() == MAX_FILES {
            return Err(SeedError::File {
                name,
                reason: format!("more than {MAX_FILES} files"),
            });
        }
        let contents = read_limited(&entry.path(), &format!("{FILES_DIR}/{name}"), MAX_FILE)?
            .unwrap_or_default();
        files.push(SeedFile { name, contents });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn meta_data_forms() {
        let m = parse_meta_data(b"instance-id: iid-1\nlocal-hostname: gw-1\n").unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("iid-1"));
        assert_eq!(m.local_hostname.as_deref(), Some("gw-1"));
        let m = parse_meta_data(b"instance-id: 'it''s' # c\nfoo:\n  bar: 1\n").unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("it's"));
        let m = parse_meta_data(br#"{"instance-id": "j", "local-hostname": "h"}"#).unwrap();
        assert_eq!(m.instance_id.as_deref(), Some("j"));
        assert!(parse_meta_data(b"local-hostname: bad_host\n").is_err());
        assert!(parse_meta_data(b"instance-id: |\n  x\n").is_err());
        assert!(parse_meta_data(b"instance-id: \"a\" b\n").is_err());
        assert!(parse_meta_data(b"no colon here\n").is_err());
        assert_eq!(parse_meta_data(b"").unwrap(), MetaData::default());
    }

    #[test]
    fn user_data_kinds() {
        assert_eq!(parse_user_data(b"").unwrap(), UserData::Absent);
        assert_eq!(parse_user_data(b" \r\n\n").unwrap(), UserData::Absent);
        assert_eq!(
            parse_user_data(b"\xef\xbb\xbf[a]\r\nb = 1\r\n").unwrap(),
            UserData::Config("[a]\nb = 1\n".into())
        );
        for refused in [
            &b"#cloud-config\nusers: []\n"[..],
            b"#!/bin/sh\nrm -rf /\n",
            b"Content-Type: multipart/mixed\n",
            b"\x1f\x8b\x08\x00",
            b"#include\nhttp://x\n",
        ] {
            assert!(matches!(
                parse_user_data(refused),
                Err(SeedError::Unsupported { .. })
            ));
        }
        assert!(matches!(
            parse_user_data(b"a = \xff\n"),
            Err(SeedError::NotUtf8 { offset: 4, .. })
        ));
        assert!(matches!(
            parse_user_data(b"a\0"),
            Err(SeedError::Nul { .. })
        ));
        let big = vec![b'#'; MAX_USER_DATA + 1];
        assert!(matches!(
            parse_user_data(&big),
            Err(SeedError::TooLarge { .. })
        ));
    }

    #[test]
    fn file_names() {
        assert!(valid_file_name("relay.crt").is_ok());
        for bad in ["", ".hidden", "../x", "a/b", CONFIG_NAME, "sp ace"] {
            assert!(valid_file_name(bad).is_err(), "{bad}");
        }
    }
}
