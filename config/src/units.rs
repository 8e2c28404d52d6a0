//! Small value types of the configuration: durations, port ranges, host patterns, names.

use std::fmt;
use std::time::Duration;

/// Parses `90s`, `15m`, `1h30m`, `14d`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!("expected a number at `{rest}`"));
        }
        let (num, tail) = rest.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("number `{num}` is too large"))?;
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let piece = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86_400)),
            "" => return Err(format!("`{num}` has no unit (write e.g. `{num}s`)")),
            other => return Err(format!("unknown unit `{other}` (use ms, s, m, h or d)")),
        };
        total = total.saturating_add(piece);
        rest = tail;
    }
    Ok(total)
}

/// Writes a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// An inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
    /// Parses `443` or `8000-8100`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let one = |s: &str| -> Result<u16, String> {
            match s.trim().parse::<u16>() {
                Ok(0) | Err(_) => Err(format!("`{}` is not a port from 1 to 65535", s.trim())),
                Ok(p) => Ok(p),
            }
        };
        match text.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (one(a)?, one(b)?);
                if first > last {
                    return Err(format!(
                        "range {first}-{last} runs backwards (write {last}-{first})"
                    ));
                }
                Ok(PortRange { first, last })
            }
            None => one(text).map(|p| PortRange { first: p, last: p }),
        }
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// A hostname pattern of an app: an exact name, or `*.suffix` (every name strictly below the
/// suffix; write the bare name too to match the suffix itself).
///
/// Names are stored normalized: ASCII lower case, internationalized labels as punycode
/// (`xn--…`, UTS #46), no trailing dot, so that matching is a plain comparison.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    Exact(String),
    Suffix(String),
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(rest) = text.strip_prefix("*.") {
            return normalize_host(rest).map(HostPattern::Suffix);
        }
        if text.contains('*') {
            return Err(
                "a wildcard is allowed only as the whole first label (`*.example.com`)".into(),
            );
        }
        normalize_host(text).map(HostPattern::Exact)
    }

    /// True when `host` (already normalized with [`normalize_host`]) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => host == name,
            HostPattern::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }

    /// How specific the pattern is: exact names beat any suffix, longer suffixes beat shorter.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(name) => (2, name.len()),
            HostPattern::Suffix(suffix) => (1, suffix.len()),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
        }
    }
}

/// Normalizes a DNS name for comparison: UTS #46 to ASCII (punycode), lower case, one trailing
/// dot removed. Refuses names that are not valid hostnames.
pub fn normalize_host(text: &str) -> Result<String, String> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() {
        return Err("empty host name".into());
    }
    let ascii =
        idna::domain_to_ascii(text).map_err(|_| format!("`{text}` is not a valid host name"))?;
    let ok = ascii.len() <= 253
        && ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    if !ok {
        return Err(format!("`{text}` is not a valid host name"));
    }
    Ok(ascii.to_ascii_lowercase())
}

/// Checks a name given to an egress, app, source or policy: it is used in CLI arguments, logs
/// and routing table names.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a valid name: use 1 to 32 of a-z, 0-9, `-`, `_`, starting with a letter or digit"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("14d"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15x").is_err());
        assert!(parse_duration("m").is_err());
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn ports() {
        assert_eq!(
            PortRange::parse("443"),
            Ok(PortRange {
                first: 443,
                last: 443
            })
        );
        assert_eq!(
            PortRange::parse("8000-8100").map(|r| r.contains(8050)),
            Ok(true)
        );
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("70000").is_err());
        assert!(PortRange::parse("9-1").is_err());
    }

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.Example.COM.").unwrap_or_else(|e| panic!("{e}"));
        assert!(p.matches("a.example.com"));
        assert!(p.matches("b.a.example.com"));
        assert!(!p.matches("example.com"));
        assert!(!p.matches("badexample.com"));
        assert!(!p.matches(".example.com"));
        let idn = HostPattern::parse("bücher.example").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(idn, HostPattern::Exact("xn--bcher-kva.example".into()));
        assert!(HostPattern::parse("a.*.com").is_err());
        assert!(HostPattern::parse("bad host").is_err());
        assert!(HostPattern::parse("").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("corp-1").is_ok());
        assert!(check_name("Corp").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name(&"a".repeat(33)).is_err());
    }
}
