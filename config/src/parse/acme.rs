//! `[acme]`: the built-in ACME server (device-attest-01) and its device CA (issue 8).

use super::Reader;
use crate::model::*;
use crate::tree::{Fields, Node};
use std::time::Duration;

/// Shortest and longest device certificate lifetimes accepted.
const MIN_VALIDITY: Duration = Duration::from_secs(3600);
const MAX_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

impl Reader<'_, '_> {
    pub(super) fn acme(&mut self, node: &Node) -> Option<Acme> {
        let f = Fields::open(
            self.sink,
            node,
            "acme",
            &[
                "enabled",
                "base_url",
                "certificate_validity",
                "order_lifetime",
                "require_enrolled",
                "attestation_roots",
                "ca_certificate",
                "ca_private_key",
            ],
        )?;
        let enabled = self.bool_key(&f, "enabled", true);
        let base_url = self.string_key(&f, "base_url", true).and_then(|s| {
            match check_base_url(s.value.trim()) {
                Ok(()) => Some(s),
                Err(why) => {
                    self.sink
                        .error(&s.span, &f.key_path("base_url"), why)
                        .expected(
                            "the https URL devices reach the ACME server at, e.g. \
                             \"https://gate.example.com:8443/acme\"",
                        );
                    None
                }
            }
        });
        let validity = self.duration_key(&f, "certificate_validity", ACME_DEFAULT_VALIDITY);
        let validity = validity.and_then(|v| {
            if (MIN_VALIDITY..=MAX_VALIDITY).contains(&v) {
                Some(v)
            } else {
                let span = f
                    .get("certificate_validity")
                    .map_or_else(|| f.span.clone(), |e| e.node.span.clone());
                self.sink
                    .error(&span, &f.key_path("certificate_validity"), "out of range")
                    .expected("a duration from \"1h\" to \"365d\" (the default \"14d\")");
                None
            }
        });
        let order_lifetime = self.duration_key(&f, "order_lifetime", Duration::from_secs(3600));
        let require_enrolled = self.bool_key(&f, "require_enrolled", true);
        let attestation_roots = self.path_list(&f, "attestation_roots", false);
        let ca_certificate = self.path_key(&f, "ca_certificate", false);
        let ca_private_key = self.path_key(&f, "ca_private_key", false);
        let ca_import = match (ca_certificate, ca_private_key) {
            (Some(certificate), Some(private_key)) => Some(AcmeCaImport {
                certificate,
                private_key,
            }),
            (None, None) => None,
            (Some(_), None) => {
                f.missing(
                    self.sink,
                    "ca_private_key",
                    "the imported device CA's private key (PEM), next to ca_certificate",
                );
                return None;
            }
            (None, Some(_)) => {
                f.missing(
                    self.sink,
                    "ca_certificate",
                    "the imported device CA's certificate chain (PEM), next to ca_private_key",
                );
                return None;
            }
        };
        Some(Acme {
            enabled: enabled?,
            base_url: base_url?,
            certificate_validity: validity?,
            order_lifetime: order_lifetime?,
            require_enrolled: require_enrolled?,
            attestation_roots,
            ca_import,
        })
    }
}

/// `https://host[:port]/path`, no trailing slash, query or fragment.
fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("`{url}` is not an https URL"))?;
    let (host, path) = rest
        .split_once('/')
        .ok_or_else(|| format!("`{url}` has no path (devices need e.g. …/acme)"))?;
    if host.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if path.is_empty() || path.ends_with('/') {
        return Err(format!("`{url}` ends with a slash"));
    }
    if path.contains(['?', '#', ' ']) {
        return Err(format!("`{url}` has a query, fragment or blank"));
    }
    Ok(())
}
