//! NoCloud seeds: a volume labelled `cidata` (FAT or ISO 9660) holding `meta-data` and
//! `user-data`, as cloud-init's NoCloud data source defines them. attestgate reads no
//! cloud-config: the user data *is* the attestgate TOML configuration. Anything cloud-init
//! would run instead (`#cloud-config`, scripts, MIME multipart, gzip, `#include`) is refused
//! with a message saying so, never half-applied.
//!
//! Files the configuration refers to (relay certificate and key, PSKs, device CAs) may ride in
//! an `attestgate/` directory on the seed; they are installed next to the configuration.
//!
//! `meta-data` may list SSH keys (`public-keys`, as cloud-init's NoCloud accepts them: one
//! string, a YAML block list of strings, or in JSON a string, list or name → key object).
//!
//! This module only parses; [`super::install`] validates and installs.

use super::seed::{
    check_hostname, parse_user_data, text, MetaData, Seed, SeedError, SeedFile, UserData,
    CONFIG_NAME, FILES_DIR, MAX_USER_DATA,
};
use std::path::Path;

/// Largest `meta-data`.
pub const MAX_META_DATA: usize = 64 << 10;
/// Largest extra file, and how many may ride along.
pub const MAX_FILE: usize = 1 << 20;
pub const MAX_FILES: usize = 64;

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
        notes: Vec::new(),
    })
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
    // Inside `public-keys:` with its items on the indented lines below.
    let mut in_keys = false;
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        if raw.trim().is_empty() || raw.trim_start().starts_with('#') || raw == "---" {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            if in_keys {
                // `- KEY` (a block sequence) or `name: KEY` (a block mapping), YAML 1.2 §8.2.
                let item = raw.trim_start();
                let value = match item.strip_prefix('-') {
                    Some(v) => v,
                    None => match item.split_once(':') {
                        Some((_, v)) => v,
                        None => {
                            return Err(SeedError::MetaData {
                                line,
                                reason: format!("public-keys: expected `- KEY`, found {item:?}"),
                            })
                        }
                    },
                };
                let key = scalar(value).map_err(|reason| SeedError::MetaData { line, reason })?;
                meta.public_keys.push(key);
            }
            continue;
        }
        in_keys = false;
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
            "public-keys" | "public_keys" => {
                let v = value.trim();
                if v.is_empty() || v.starts_with('#') {
                    in_keys = true;
                } else {
                    let key =
                        scalar(value).map_err(|reason| SeedError::MetaData { line, reason })?;
                    meta.public_keys.push(key);
                }
                continue;
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
    let mut public_keys = Vec::new();
    for key in ["public-keys", "public_keys"] {
        let bad = |what: &serde_json::Value| SeedError::MetaData {
            line: 1,
            reason: format!("{key}: expected a string, a list or an object of strings, not {what}"),
        };
        let mut push = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => {
                public_keys.push(s.clone());
                Ok(())
            }
            other => Err(bad(other)),
        };
        match object.get(key) {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Array(items)) => items.iter().try_for_each(&mut push)?,
            Some(serde_json::Value::Object(items)) => items.values().try_for_each(&mut push)?,
            Some(other) => push(other)?,
        }
    }
    let meta = MetaData {
        instance_id: get(&["instance-id", "instance_id"])?,
        local_hostname: get(&["local-hostname", "local_hostname", "hostname"])?,
        public_keys,
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
    fn meta_data_public_keys() {
        let m = parse_meta_data(
            b"instance-id: i\npublic-keys:\n  - ssh-ed25519 AAAA a@b\n  # c\n  - 'ssh-rsa BBBB'\nlocal-hostname: h\n",
        )
        .unwrap();
        assert_eq!(m.public_keys, ["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB"]);
        assert_eq!(m.local_hostname.as_deref(), Some("h"));
        let m = parse_meta_data(b"public-keys: ssh-ed25519 AAAA\n").unwrap();
        assert_eq!(m.public_keys, ["ssh-ed25519 AAAA"]);
        let m = parse_meta_data(b"public-keys:\n  mykey: ssh-ed25519 CCCC\n").unwrap();
        assert_eq!(m.public_keys, ["ssh-ed25519 CCCC"]);
        // Indented lines under another key are not keys.
        let m = parse_meta_data(b"other:\n  - ssh-ed25519 AAAA\n").unwrap();
        assert!(m.public_keys.is_empty());
        assert!(parse_meta_data(b"public-keys:\n  ssh-rsa-without-dash\n").is_err());
        let m = parse_meta_data(br#"{"public-keys": ["ssh-ed25519 A", "ssh-rsa B"]}"#).unwrap();
        assert_eq!(m.public_keys, ["ssh-ed25519 A", "ssh-rsa B"]);
        let m = parse_meta_data(br#"{"public-keys": {"k": "ssh-ed25519 A"}}"#).unwrap();
        assert_eq!(m.public_keys, ["ssh-ed25519 A"]);
        assert!(parse_meta_data(br#"{"public-keys": [1]}"#).is_err());
    }

    #[test]
    fn file_names() {
        assert!(valid_file_name("relay.crt").is_ok());
        for bad in ["", ".hidden", "../x", "a/b", CONFIG_NAME, "sp ace"] {
            assert!(valid_file_name(bad).is_err(), "{bad}");
        }
    }
}
