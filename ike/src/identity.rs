//! IKE identities (RFC 7296 §3.5) written as strongSwan writes them.
//!
//! | written                     | ID type          |
//! |-----------------------------|------------------|
//! | `198.51.100.1`, `2001:db8::1` | ID_IPV4_ADDR / ID_IPV6_ADDR |
//! | `vpn.example.com`, `@vpn.example.com`, `fqdn:vpn.example.com` | ID_FQDN |
//! | `user@example.com`, `email:user@example.com` | ID_RFC822_ADDR |
//! | `keyid:0a1b2c…`, `@#0a1b2c…`  | ID_KEY_ID (hex)  |
//! | `CN=vpn, O=Example`          | ID_DER_ASN1_DN   |

use std::fmt;
use std::net::IpAddr;

/// One IKE identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR (1) or ID_IPV6_ADDR (5).
    Ip(IpAddr),
    /// ID_FQDN (2), stored without a leading `@`.
    Fqdn(String),
    /// ID_RFC822_ADDR (3).
    Email(String),
    /// ID_DER_ASN1_DN (9), kept in its textual RFC 4514-like form.
    Dn(String),
    /// ID_KEY_ID (11), opaque octets.
    KeyId(Vec<u8>),
}

/// Why an identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity is empty")]
    Empty,
    #[error("key id `{0}` is not an even number of hex digits")]
    BadKeyId(String),
    #[error(
        "`{0}` is not a valid FQDN (letters, digits, `-` and `.` only, labels of 1..=63 octets)"
    )]
    BadFqdn(String),
    #[error("distinguished name `{0}` has a part without `=` (write `CN=name, O=org`)")]
    BadDn(String),
    #[error("`{0}` is not a valid e-mail identity")]
    BadEmail(String),
}

impl Identity {
    /// Parses strongSwan's notation (see the module documentation).
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(IdentityError::Empty);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(Identity::Ip(ip));
        }
        if let Some(hex) = text
            .strip_prefix("keyid:")
            .or_else(|| text.strip_prefix("@#"))
        {
            return parse_hex(hex)
                .map(Identity::KeyId)
                .ok_or_else(|| IdentityError::BadKeyId(hex.to_string()));
        }
        if let Some(name) = text
            .strip_prefix("fqdn:")
            .or_else(|| text.strip_prefix('@'))
        {
            return fqdn(name);
        }
        if let Some(mail) = text.strip_prefix("email:") {
            return email(mail);
        }
        if text.contains('=') {
            for part in text.split([',', '/']).filter(|p| !p.trim().is_empty()) {
                if !part.contains('=') {
                    return Err(IdentityError::BadDn(text.to_string()));
                }
            }
            return Ok(Identity::Dn(text.to_string()));
        }
        if text.contains('@') {
            return email(text);
        }
        fqdn(text)
    }

    /// The IKE ID type number (RFC 7296 §3.5).
    pub fn id_type(&self) -> u8 {
        match self {
            Identity::Ip(IpAddr::V4(_)) => 1,
            Identity::Fqdn(_) => 2,
            Identity::Email(_) => 3,
            Identity::Ip(IpAddr::V6(_)) => 5,
            Identity::Dn(_) => 9,
            Identity::KeyId(_) => 11,
        }
    }
}

fn fqdn(name: &str) -> Result<Identity, IdentityError> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(Identity::Fqdn(name.to_ascii_lowercase()))
    } else {
        Err(IdentityError::BadFqdn(name.to_string()))
    }
}

fn email(text: &str) -> Result<Identity, IdentityError> {
    match text.split_once('@') {
        Some((user, domain)) if !user.is_empty() && fqdn(domain).is_ok() => {
            Ok(Identity::Email(text.to_string()))
        }
        _ => Err(IdentityError::BadEmail(text.to_string())),
    }
}

fn parse_hex(hex: &str) -> Option<Vec<u8>> {
    let hex = hex.trim_start_matches("0x");
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ip(ip) => write!(f, "{ip}"),
            Identity::Fqdn(name) => write!(f, "{name}"),
            Identity::Email(mail) => write!(f, "{mail}"),
            Identity::Dn(dn) => write!(f, "{dn}"),
            Identity::KeyId(bytes) => {
                f.write_str("keyid:")?;
                bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_notation() {
        assert_eq!(Identity::parse("198.51.100.1").map(|i| i.id_type()), Ok(1));
        assert_eq!(Identity::parse("2001:db8::1").map(|i| i.id_type()), Ok(5));
        assert_eq!(
            Identity::parse("@VPN.Example.com"),
            Ok(Identity::Fqdn("vpn.example.com".into()))
        );
        assert_eq!(
            Identity::parse("gw.lab"),
            Ok(Identity::Fqdn("gw.lab".into()))
        );
        assert_eq!(
            Identity::parse("keyid:0a0B"),
            Ok(Identity::KeyId(vec![0x0a, 0x0b]))
        );
        assert_eq!(Identity::parse("@#01").map(|i| i.id_type()), Ok(11));
        assert_eq!(
            Identity::parse("CN=vpn, O=Example").map(|i| i.id_type()),
            Ok(9)
        );
        assert_eq!(
            Identity::parse("ops@example.com").map(|i| i.id_type()),
            Ok(3)
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(Identity::parse(" "), Err(IdentityError::Empty));
        assert!(matches!(
            Identity::parse("keyid:abc"),
            Err(IdentityError::BadKeyId(_))
        ));
        assert!(matches!(
            Identity::parse("bad name!"),
            Err(IdentityError::BadFqdn(_))
        ));
        assert!(matches!(
            Identity::parse("CN=x, junk"),
            Err(IdentityError::BadDn(_))
        ));
        assert!(matches!(
            Identity::parse("@"),
            Err(IdentityError::BadFqdn(_))
        ));
    }
}
