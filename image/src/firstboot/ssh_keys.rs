//! Checks the SSH public keys a platform hands over before they go into
//! `/etc/attestgate/ssh/authorized_keys`. A line must be `TYPE BASE64 [COMMENT]` as sshd(8)
//! "AUTHORIZED_KEYS FILE FORMAT" describes it, without the options prefix (a platform has no
//! business setting `command=` or `from=`), with a type we accept and a key blob that says the
//! same type (RFC 4253 §6.6: the blob starts with the key type as an SSH string). A bad line is
//! refused with the reason and the others are kept.

use base64::Engine as _;

/// Key types accepted: sshd's current defaults less certificates and DSA.
pub const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "ssh-rsa",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];
/// Longest line accepted (a 16384-bit RSA key is about 2.8 KB).
pub const MAX_LINE: usize = 8 << 10;
/// Most keys installed.
pub const MAX_KEYS: usize = 100;

/// The lines to install and what was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckedKeys {
    /// Normalised lines: `TYPE BASE64` or `TYPE BASE64 COMMENT`.
    pub accepted: Vec<String>,
    /// One message per refused line, naming the line (its position and start).
    pub refused: Vec<String>,
}

/// Checks each line; blank lines and `#` comments are skipped silently.
pub fn check_keys(lines: &[String]) -> CheckedKeys {
    let mut out = CheckedKeys::default();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let result = if out.accepted.len() == MAX_KEYS {
            Err(format!("more than {MAX_KEYS} keys"))
        } else {
            check_key_line(trimmed)
        };
        match result {
            Ok(key) if !out.accepted.contains(&key) => out.accepted.push(key),
            Ok(_) => {}
            Err(reason) => out.refused.push(format!(
                "SSH key {} ({}): {reason}",
                i + 1,
                preview(trimmed)
            )),
        }
    }
    out
}

/// One authorized_keys line, normalised, or why it is refused.
pub fn check_key_line(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.len() > MAX_LINE {
        return Err(format!("longer than {MAX_LINE} bytes"));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("contains control characters".into());
    }
    let mut parts = line.splitn(3, [' ', '\t']);
    let kind = parts.next().unwrap_or("");
    let blob = parts.next().unwrap_or("").trim();
    let comment = parts.next().unwrap_or("").trim();
    if !KEY_TYPES.contains(&kind) {
        if kind.contains('=') || kind.contains(',') || kind.contains('"') {
            return Err("options before the key (e.g. command=, from=) are not accepted".into());
        }
        return Err(format!(
            "key type {kind:?} is not one of {}",
            KEY_TYPES.join(", ")
        ));
    }
    if blob.is_empty() {
        return Err("no key data after the type".into());
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .map_err(|e| format!("the key data is not base64: {e}"))?;
    // RFC 4251 §5 `string`: uint32 length, then the bytes.
    let named = raw
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|len| raw.get(4..4 + len));
    if named != Some(kind.as_bytes()) {
        return Err(format!("the key data is not a {kind} key"));
    }
    Ok(if comment.is_empty() {
        format!("{kind} {blob}")
    } else {
        format!("{kind} {blob} {comment}")
    })
}

/// The start of a line, enough to recognise it without printing a whole key.
fn preview(line: &str) -> String {
    let mut p: String = line.chars().take(24).collect();
    if p.len() < line.len() {
        p.push('…');
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn blob(kind: &str) -> String {
        let mut raw = (kind.len() as u32).to_be_bytes().to_vec();
        raw.extend_from_slice(kind.as_bytes());
        raw.extend_from_slice(&[0, 0, 0, 32]);
        raw.extend_from_slice(&[7; 32]);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn accepted_and_refused() {
        let ed = blob("ssh-ed25519");
        let lines = vec![
            format!("ssh-ed25519 {ed} alice@laptop"),
            format!("  ssh-ed25519\t{ed}  "),
            "# comment".to_string(),
            String::new(),
            format!("command=\"/bin/sh\" ssh-ed25519 {ed}"),
            format!("ssh-dss {ed}"),
            format!("ssh-rsa {ed}"),
            "ssh-ed25519 not*base64".to_string(),
            "ssh-ed25519".to_string(),
            format!("ssh-ed25519 {ed} alice@laptop"),
            format!(
                "sk-ssh-ed25519@openssh.com {}",
                blob("sk-ssh-ed25519@openssh.com")
            ),
        ];
        let c = check_keys(&lines);
        assert_eq!(
            c.accepted,
            [
                format!("ssh-ed25519 {ed} alice@laptop"),
                format!("ssh-ed25519 {ed}"),
                format!(
                    "sk-ssh-ed25519@openssh.com {}",
                    blob("sk-ssh-ed25519@openssh.com")
                ),
            ]
        );
        assert_eq!(c.refused.len(), 5, "{:?}", c.refused);
        assert!(c.refused[0].starts_with("SSH key 5 (command=\"/bin/sh\" ssh-ed…)"));
        assert!(c.refused[0].contains("options"), "{}", c.refused[0]);
        assert!(c.refused[1].contains("\"ssh-dss\" is not one of"));
        assert!(c.refused[2].contains("not a ssh-rsa key"));
        assert!(c.refused[3].contains("not base64"));
        assert!(c.refused[4].contains("no key data"));
    }
}
