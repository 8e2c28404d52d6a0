//! The destination a device asks for: `host:port` as it arrives in CONNECT or connect-udp.

use config::units::normalize_host;
use std::fmt;
use std::net::IpAddr;

/// Transport of the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Classic CONNECT.
    Tcp,
    /// connect-udp (RFC 9298).
    Udp,
}

/// A destination host: a normalized name or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TargetHost {
    /// ASCII lower case, punycode for international names, no trailing dot.
    Name(String),
    Ip(IpAddr),
}

/// A requested destination.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: TargetHost,
    pub port: u16,
    pub protocol: Protocol,
}

/// Why a target was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("`{0}` has no port (write HOST:PORT, [IPv6]:PORT)")]
    NoPort(String),
    #[error("`{0}` is not a port from 1 to 65535")]
    BadPort(String),
    #[error("{0}")]
    BadHost(String),
}

impl Target {
    /// Parses `host:port`, `[v6]:port` or `v4:port`, normalizing the host as apps are.
    pub fn parse(authority: &str, protocol: Protocol) -> Result<Self, TargetError> {
        let authority = authority.trim();
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| TargetError::NoPort(authority.to_string()))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| TargetError::NoPort(authority.to_string()))?
        };
        if !authority.starts_with('[') && host.contains(':') {
            return Err(TargetError::BadHost(format!(
                "`{host}` looks like an IPv6 address without brackets (write [{host}]:PORT)"
            )));
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(TargetError::BadPort(port.to_string())),
        };
        let host = Self::host(host)?;
        Ok(Target {
            host,
            port,
            protocol,
        })
    }

    /// Normalizes a host alone.
    pub fn host(text: &str) -> Result<TargetHost, TargetError> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Ok(TargetHost::Ip(ip));
        }
        if text.contains(':') {
            return Err(TargetError::BadHost(format!(
                "`{text}` looks like an IPv6 address without brackets (write [{text}]:PORT)"
            )));
        }
        normalize_host(text)
            .map(TargetHost::Name)
            .map_err(TargetError::BadHost)
    }
}

impl fmt::Display for TargetHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetHost::Name(n) => f.write_str(n),
            TargetHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            TargetHost::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)?;
        if self.protocol == Protocol::Udp {
            f.write_str("/udp")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_relay_clients_send() {
        let t = Target::parse("Login.Example.COM.:443", Protocol::Tcp).unwrap();
        assert_eq!(t.host, TargetHost::Name("login.example.com".into()));
        assert_eq!(t.port, 443);
        let t = Target::parse("[2001:db8::1]:8443", Protocol::Udp).unwrap();
        assert_eq!(t.host, TargetHost::Ip("2001:db8::1".parse().unwrap()));
        assert_eq!(t.to_string(), "[2001:db8::1]:8443/udp");
        let t = Target::parse("bücher.example:443", Protocol::Tcp).unwrap();
        assert_eq!(t.host, TargetHost::Name("xn--bcher-kva.example".into()));
        assert_eq!(
            Target::parse("198.51.100.7:53", Protocol::Udp)
                .unwrap()
                .host,
            TargetHost::Ip("198.51.100.7".parse().unwrap())
        );
    }

    #[test]
    fn refuses_malformed_authorities() {
        assert!(matches!(
            Target::parse("example.com", Protocol::Tcp),
            Err(TargetError::NoPort(_))
        ));
        assert!(matches!(
            Target::parse("example.com:0", Protocol::Tcp),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            Target::parse("example.com:99999", Protocol::Tcp),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            Target::parse("2001:db8::1:443", Protocol::Tcp),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            Target::parse("bad host:443", Protocol::Tcp),
            Err(TargetError::BadHost(_))
        ));
        assert!(matches!(
            Target::parse("[::1:443", Protocol::Tcp),
            Err(TargetError::NoPort(_))
        ));
        assert!(matches!(
            Target::parse(":443", Protocol::Tcp),
            Err(TargetError::BadHost(_))
        ));
    }
}
