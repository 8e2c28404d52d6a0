//! `[enroll]`: how devices reach the appliance's enrollment services (issue 8).

use super::Reader;
use crate::model::*;
use crate::tree::{parsed, Fields, Node};
use crate::units::normalize_host;

impl Reader<'_, '_> {
    pub(super) fn enroll(&mut self, node: &Node) -> Option<Enroll> {
        let f = Fields::open(
            self.sink,
            node,
            "enroll",
            &["public_name", "acme_directory"],
        )?;
        let public_name = match f.get("public_name") {
            Some(e) => Some(parsed(
                self.sink,
                &e.node,
                &f.key_path("public_name"),
                "the DNS name devices reach the appliance at, as in the relay certificate, e.g. \"gw.example.com\" (no scheme, no port)",
                public_name,
            )?),
            None => None,
        };
        let acme_directory = match f.get("acme_directory") {
            Some(e) => Some(parsed(
                self.sink,
                &e.node,
                &f.key_path("acme_directory"),
                "an https URL such as \"https://gw.example.com/acme/directory\"",
                https_url,
            )?),
            None => None,
        };
        Some(Enroll {
            public_name,
            acme_directory,
        })
    }
}

fn public_name(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.contains("://") {
        return Err("write the host name only, without a scheme".into());
    }
    if text.contains(':') || text.contains('/') {
        return Err("write the host name only: ports come from the relay listeners".into());
    }
    if text.contains('*') {
        return Err("a wildcard cannot be reached".into());
    }
    normalize_host(text)
}

/// RFC 8555 §7.1.1: the directory is fetched over HTTPS; Apple's ACME payload requires the
/// `https` scheme for `DirectoryURL`.
fn https_url(text: &str) -> Result<String, String> {
    let text = text.trim();
    let Some(rest) = text.strip_prefix("https://") else {
        return Err("must use the https scheme".into());
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("not a URL with a host".into());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names() {
        assert_eq!(public_name("GW.Example.com."), Ok("gw.example.com".into()));
        assert!(public_name("https://gw.example.com").is_err());
        assert!(public_name("gw.example.com:443").is_err());
        assert!(public_name("*.example.com").is_err());
        assert!(public_name("bad name").is_err());
    }

    #[test]
    fn directory_urls() {
        assert!(https_url("https://gw.example.com/acme/directory").is_ok());
        assert!(https_url("http://gw.example.com/acme/directory").is_err());
        assert!(https_url("https:///acme").is_err());
        assert!(https_url("https://gw.example.com/a b").is_err());
    }
}
