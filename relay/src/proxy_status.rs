//! The `Proxy-Status` response field (RFC 9209).
//!
//! The field is a Structured Fields List (RFC 8941 §3.1) whose members name the intermediary
//! (a Token or String) with parameters; the relay writes one member:
//! `attestgate; error=connection_refused; details="…"` (RFC 9209 §2.1.1 `error`, §2.1.5
//! `details`).

use std::fmt;

/// The proxy error types the relay reports (RFC 9209 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProxyError {
    /// The target name did not resolve in time (RFC 9209 §2.3, `dns_timeout`); 504.
    DnsTimeout,
    /// The target name did not resolve (RFC 9209 §2.3, `dns_error`); 502.
    DnsError,
    /// The relay will not carry this request; the device may go direct (RFC 9209 §2.3,
    /// `destination_unavailable`); 503.
    DestinationUnavailable,
    /// No route to the target address (RFC 9209 §2.3, `destination_ip_unroutable`); 502.
    DestinationIpUnroutable,
    /// The target or the policy refused the connection (RFC 9209 §2.3, `connection_refused`).
    ConnectionRefused,
    /// The TCP connection was not established in time (RFC 9209 §2.3, `connection_timeout`);
    /// 504.
    ConnectionTimeout,
    /// The request itself was malformed (RFC 9209 §2.3, `http_request_error`); 400.
    HttpRequestError,
    /// The relay failed internally (RFC 9209 §2.3, `proxy_internal_error`); 500 or 502.
    ProxyInternalError,
}

impl ProxyError {
    /// The registered error type name.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyError::DnsTimeout => "dns_timeout",
            ProxyError::DnsError => "dns_error",
            ProxyError::DestinationUnavailable => "destination_unavailable",
            ProxyError::DestinationIpUnroutable => "destination_ip_unroutable",
            ProxyError::ConnectionRefused => "connection_refused",
            ProxyError::ConnectionTimeout => "connection_timeout",
            ProxyError::HttpRequestError => "http_request_error",
            ProxyError::ProxyInternalError => "proxy_internal_error",
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `name` can be written as a bare sf-token (RFC 8941 §3.3.4):
/// `( ALPHA / "*" ) *( tchar / ":" / "/" )`.
pub fn is_token(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'*');
    first_ok && bytes.all(|b| is_tchar(b) || b == b':' || b == b'/')
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Writes `text` as an sf-string (RFC 8941 §3.3.3): printable ASCII with `"` and `\`
/// escaped. Anything else (control characters, non-ASCII) becomes `?` so that an error
/// message from the OS can never produce an invalid field.
fn push_sf_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// Builds one `Proxy-Status` member for this relay.
///
/// `name` is written as a token when it is one, else as a string (RFC 9209 §2: "a String or
/// Token"). `details` is optional free text (RFC 9209 §2.1.5).
pub fn proxy_status(name: &str, error: ProxyError, details: Option<&str>) -> String {
    let mut value = String::with_capacity(64);
    if is_token(name) {
        value.push_str(name);
    } else {
        push_sf_string(&mut value, name);
    }
    value.push_str("; error=");
    value.push_str(error.as_str());
    if let Some(details) = details {
        value.push_str("; details=");
        push_sf_string(&mut value, details);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_with_token_name() {
        assert_eq!(
            proxy_status("attestgate", ProxyError::ConnectionRefused, None),
            "attestgate; error=connection_refused"
        );
        assert_eq!(
            proxy_status(
                "attestgate",
                ProxyError::DnsError,
                Some("no address for \"x\\y\"")
            ),
            r#"attestgate; error=dns_error; details="no address for \"x\\y\"""#
        );
    }

    #[test]
    fn non_token_names_become_strings() {
        assert!(is_token("attestgate"));
        assert!(is_token("relay.example:443/x"));
        assert!(!is_token("9relay"));
        assert!(!is_token("my relay"));
        assert!(!is_token(""));
        assert_eq!(
            proxy_status("my relay", ProxyError::DestinationUnavailable, None),
            r#""my relay"; error=destination_unavailable"#
        );
    }

    #[test]
    fn details_never_break_the_field() {
        let value = proxy_status(
            "attestgate",
            ProxyError::ProxyInternalError,
            Some("bad\r\nline \u{e9}\t"),
        );
        assert_eq!(
            value,
            r#"attestgate; error=proxy_internal_error; details="bad??line ??""#
        );
        assert!(http::HeaderValue::from_str(&value).is_ok());
    }

    #[test]
    fn every_error_name() {
        let names: Vec<&str> = [
            ProxyError::DnsTimeout,
            ProxyError::DnsError,
            ProxyError::DestinationUnavailable,
            ProxyError::DestinationIpUnroutable,
            ProxyError::ConnectionRefused,
            ProxyError::ConnectionTimeout,
            ProxyError::HttpRequestError,
            ProxyError::ProxyInternalError,
        ]
        .iter()
        .map(|e| e.as_str())
        .collect();
        assert!(names.iter().all(|n| is_token(n)));
    }
}
