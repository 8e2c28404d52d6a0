//! What every first-boot platform yields: the instance's identity, its host name, its SSH
//! keys and its user data, which attestgate reads as its TOML configuration. NoCloud, AWS,
//! GCP and Azure each fill a [`Seed`]; [`super::install`] validates and installs it.

/// Largest user-data accepted (cloud platforms cap theirs at 16–64 KiB; a seed volume has no
/// cap, so keep one that no configuration comes near).
pub const MAX_USER_DATA: usize = 1 << 20;
/// The configuration's file name; an extra file may not take it.
pub const CONFIG_NAME: &str = "attestgate.toml";
/// The extra files' directory on a NoCloud seed.
pub const FILES_DIR: &str = "attestgate";

/// What a platform says about this instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seed {
    pub meta: MetaData,
    pub user_data: UserData,
    /// Files installed next to the configuration, sorted by name (NoCloud's `attestgate/`).
    pub files: Vec<SeedFile>,
    /// What the platform gave that was set aside, for the console (e.g. GCP keys of other
    /// users, an Azure password).
    pub notes: Vec<String>,
}

/// The instance's identity and the keys that may log in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaData {
    /// Identifies this deployment: a seed is applied once per instance id.
    pub instance_id: Option<String>,
    pub local_hostname: Option<String>,
    /// OpenSSH public key lines as the platform gave them, in its order; validated when
    /// installed (see [`super::ssh_keys`]).
    pub public_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UserData {
    /// No user data, or empty: the appliance boots unconfigured (closed).
    #[default]
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
    /// A metadata service (IMDS, GCP metadata, Azure WireServer) could not be read or answered
    /// something unusable.
    #[error("{service}: {reason}")]
    Service { service: String, reason: String },
    /// A platform document (Azure's ovf-env.xml) is malformed.
    #[error("{file}: {reason}")]
    Malformed { file: String, reason: String },
}

/// Parses user data: the attestgate configuration, or nothing. What cloud-init would run
/// instead is refused by name.
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

/// RFC 1123 §2.1 host names: labels of letters, digits and hyphens, at most 63 each, 253 in all.
pub fn check_hostname(host: &str) -> Result<(), String> {
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
pub fn text(file: &str, bytes: &[u8], max: usize) -> Result<String, SeedError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

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
    fn hostnames() {
        assert!(check_hostname("ip-10-0-0-5.ec2.internal").is_ok());
        for bad in ["", "a_b", "-a", "a..b", &"x".repeat(64)] {
            assert!(check_hostname(bad).is_err(), "{bad}");
        }
    }
}
