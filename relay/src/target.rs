//! The `host:port` target of a classic CONNECT (RFC 9114 §4.4, RFC 9110 §9.3.6).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

/// A validated CONNECT target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// A DNS name (ASCII, lowercased, without a trailing dot) or an IP address literal (an IPv6
    /// literal without its brackets).
    pub host: String,
    pub port: u16,
}

/// Why an authority is not a usable CONNECT target; answered with `400`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the authority is empty")]
    Empty,
    #[error("the authority carries userinfo (`@`), which CONNECT does not allow")]
    UserInfo,
    #[error("the authority has no port (CONNECT needs host:port)")]
    MissingPort,
    #[error("`{0}` is not a port number between 1 and 65535")]
    BadPort(String),
    #[error("`{0}` is not a valid IPv6 literal")]
    BadIpv6(String),
    #[error("`{0}` is not a valid host name")]
    BadHost(String),
}

/// The longest DNS name in its textual form (RFC 1035 §2.3.4: 255 octets on the wire).
const MAX_HOST_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

impl Target {
    /// Parses the `:authority` of a classic CONNECT: `host:port` or `[v6]:port`.
    pub fn parse_authority(authority: &str) -> Result<Target, TargetError> {
        if authority.is_empty() {
            return Err(TargetError::Empty);
        }
        // RFC 9110 §9.3.6: the request target of CONNECT is host and port only.
        if authority.contains('@') {
            return Err(TargetError::UserInfo);
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (literal, after) = rest
                .split_once(']')
                .ok_or_else(|| TargetError::BadIpv6(authority.to_string()))?;
            let address: Ipv6Addr = literal
                .parse()
                .map_err(|_| TargetError::BadIpv6(literal.to_string()))?;
            let port = after.strip_prefix(':').ok_or(TargetError::MissingPort)?;
            (address.to_string(), port)
        } else {
            let (host, port) = authority.rsplit_once(':').ok_or(TargetError::MissingPort)?;
            if host.contains(':') {
                // An unbracketed IPv6 literal: ambiguous with the port separator.
                return Err(TargetError::BadIpv6(authority.to_string()));
            }
            (parse_host(host)?, port)
        };
        Ok(Target {
            host,
            port: parse_port(port)?,
        })
    }

    /// Builds a target from a host and a port given apart, as in the connect-udp URI template
    /// (RFC 9298 §2): the host is a DNS name, an IPv4 literal or an IPv6 literal without
    /// brackets (already percent-decoded).
    pub fn from_parts(host: &str, port: &str) -> Result<Target, TargetError> {
        let host = if host.contains(':') {
            let literal = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            literal
                .parse::<Ipv6Addr>()
                .map_err(|_| TargetError::BadIpv6(host.to_string()))?
                .to_string()
        } else {
            parse_host(host)?
        };
        Ok(Target {
            host,
            port: parse_port(port)?,
        })
    }

    /// The host as an IP address, when it is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

fn parse_port(port: &str) -> Result<u16, TargetError> {
    let bad = || TargetError::BadPort(port.to_string());
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// A DNS name (letters, digits, `-`, `_`, dots between labels) or a dotted IPv4 literal;
/// lowercased, a trailing dot removed.
fn parse_host(host: &str) -> Result<String, TargetError> {
    let bad = || TargetError::BadHost(host.to_string());
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > MAX_HOST_LEN {
        return Err(bad());
    }
    for label in name.split('.') {
        let valid = !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !valid {
            return Err(bad());
        }
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(authority: &str) -> (String, u16) {
        let target = Target::parse_authority(authority).unwrap();
        (target.host, target.port)
    }

    #[test]
    fn names_and_literals() {
        assert_eq!(
            ok("login.Example.com:443"),
            ("login.example.com".into(), 443)
        );
        assert_eq!(
            ok("login.example.com.:443"),
            ("login.example.com".into(), 443)
        );
        assert_eq!(ok("192.0.2.7:8443"), ("192.0.2.7".into(), 8443));
        assert_eq!(ok("[2001:db8::1]:443"), ("2001:db8::1".into(), 443));
        assert_eq!(ok("[2001:DB8:0::1]:1"), ("2001:db8::1".into(), 1));
        assert_eq!(ok("_srv.example:65535"), ("_srv.example".into(), 65535));
    }

    #[test]
    fn from_parts() {
        let t = Target::from_parts("2001:db8::1", "53").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("2001:db8::1", 53));
        let t = Target::from_parts("[::1]", "53").unwrap();
        assert_eq!(t.host, "::1");
        let t = Target::from_parts("DNS.Example", "853").unwrap();
        assert_eq!(t.host, "dns.example");
        assert!(Target::from_parts("a:b", "53").is_err());
        assert!(Target::from_parts("", "53").is_err());
        assert!(Target::from_parts("x.example", "0").is_err());
        assert!(Target::from_parts("x/y", "53").is_err());
    }

    #[test]
    fn display_brackets_ipv6() {
        let target = Target::parse_authority("[::1]:80").unwrap();
        assert_eq!(target.to_string(), "[::1]:80");
        assert_eq!(target.ip(), Some("::1".parse().unwrap()));
        let target = Target::parse_authority("example.com:80").unwrap();
        assert_eq!(target.to_string(), "example.com:80");
        assert_eq!(target.ip(), None);
    }

    #[test]
    fn malformed_authorities() {
        use TargetError::*;
        let cases: &[(&str, TargetError)] = &[
            ("", Empty),
            ("example.com", MissingPort),
            ("example.com:", BadPort(String::new())),
            ("example.com:0", BadPort("0".into())),
            ("example.com:65536", BadPort("65536".into())),
            ("example.com:+80", BadPort("+80".into())),
            ("example.com:123456", BadPort("123456".into())),
            ("user@example.com:443", UserInfo),
            ("2001:db8::1:443", BadIpv6("2001:db8::1:443".into())),
            ("[2001:db8::1:443", BadIpv6("[2001:db8::1:443".into())),
            ("[not-v6]:443", BadIpv6("not-v6".into())),
            ("[::1]", MissingPort),
            ("[::1]443", MissingPort),
            (":443", BadHost(String::new())),
            ("exa mple.com:443", BadHost("exa mple.com".into())),
            ("a..b:443", BadHost("a..b".into())),
            ("-a.b:443", BadHost("-a.b".into())),
            ("a/b:443", BadHost("a/b".into())),
        ];
        for (authority, expected) in cases {
            assert_eq!(
                Target::parse_authority(authority).as_ref(),
                Err(expected),
                "{authority}"
            );
        }
        let long = format!("{}.example:443", "a".repeat(64));
        assert!(matches!(
            Target::parse_authority(&long),
            Err(TargetError::BadHost(_))
        ));
        let too_long = format!("{}:443", ["abc"; 70].join("."));
        assert!(matches!(
            Target::parse_authority(&too_long),
            Err(TargetError::BadHost(_))
        ));
    }
}
