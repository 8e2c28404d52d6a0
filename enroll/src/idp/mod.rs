//! Identity providers: keeping the IdP's trusted location equal to the trusted egress.
//!
//! This is the logic without I/O (the appliance's `idp` module does the HTTPS calls through
//! the same Graph client the Intune source uses):
//!
//! - [`trusted_addresses`]: which addresses the IdP should trust, from the configuration;
//! - [`named_location`]: Microsoft Graph's `ipNamedLocation` documents, and the plan that
//!   turns what Entra holds into exactly the trusted set (create, update, or nothing);
//! - [`conditional_access`]: our evaluation of Conditional Access policy documents for one
//!   source address, and the check that a trusted and an untrusted address differ as intended.
//!
//! # Which addresses are trusted
//!
//! Every source address of every `internet` egress (the dedicated public pair), as a /32 or
//! /128, plus `[idp.entra] extra_addresses`. An internet egress address Entra cannot see
//! (RFC 1918, RFC 6598, ULA, link-local: a cloud 1:1-NATs it to a public address) is left out
//! and reported; its public address belongs in `extra_addresses`.
//!
//! Tunnel egresses add nothing by themselves: their flows leave with a NAT-pool address inside
//! the enterprise network, and reach Entra (if they do) from the enterprise's own internet edge,
//! whose address the appliance does not know and which every other machine in the office
//! shares. An operator who routes sign-in traffic that way lists that edge address in
//! `extra_addresses`, knowing it trusts the whole office. The `public` egress is never trusted
//! (the configuration refuses its address in `extra_addresses`).

pub mod conditional_access;
pub mod named_location;

use config::{not_internet_visible, Config, EgressKind};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One address the IdP should trust, with where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TrustedAddress {
    /// A /32 or /128.
    pub net: IpNet,
    /// `egress idp-pair`, `extra_addresses`, or both joined with `, `.
    pub from: String,
}

/// An egress address left out of the trusted set, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SkippedAddress {
    pub address: IpAddr,
    pub egress: String,
    pub why: String,
}

/// The trusted set (sorted, each address once) and the egress addresses left out.
pub fn trusted_addresses(cfg: &Config) -> (Vec<TrustedAddress>, Vec<SkippedAddress>) {
    let mut set: BTreeMap<IpNet, Vec<String>> = BTreeMap::new();
    let mut skipped = Vec::new();
    for e in &cfg.egresses {
        let EgressKind::Internet(i) = &e.kind else {
            continue;
        };
        for a in &i.source_addresses {
            match not_internet_visible(a.value) {
                Some(why) => skipped.push(SkippedAddress {
                    address: a.value,
                    egress: e.name.value.clone(),
                    why: why.to_string(),
                }),
                None => set
                    .entry(IpNet::from(a.value))
                    .or_default()
                    .push(format!("egress {}", e.name.value)),
            }
        }
    }
    if let Some(entra) = &cfg.idp.entra {
        for a in &entra.extra_addresses {
            // The configuration refuses invisible extra addresses; keep the rule here too.
            if not_internet_visible(a.value).is_none() {
                set.entry(IpNet::from(a.value))
                    .or_default()
                    .push("extra_addresses".into());
            }
        }
    }
    let trusted = set
        .into_iter()
        .map(|(net, mut from)| {
            from.dedup();
            TrustedAddress {
                net,
                from: from.join(", "),
            }
        })
        .collect();
    (trusted, skipped)
}

/// Percent-encodes a query value (RFC 3986 §2.1: unreserved characters stay).
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An OData string literal: quoted, a quote inside written twice (OData URL conventions
/// §5.1.1.6.1, `SQUOTE-in-string`).
pub fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use config::{load_str, FileChecks};
    use std::path::Path;

    fn cfg(extra: &str) -> Config {
        let text = format!(
            r#"[relay]
certificate = "c"
private_key = "k"
device_ca = ["d"]
[egress.pair]
type = "internet"
source_addresses = ["203.0.113.31", "10.0.0.5", "2001:db8::30", "203.0.113.30"]
[egress.pair2]
type = "internet"
source_addresses = ["203.0.113.30"]
[egress.public]
type = "public"
source_address = "198.51.100.9"
[compliance]
{extra}"#
        );
        match load_str(&text, Path::new("t"), Path::new("/"), FileChecks::Skip) {
            Ok(l) => l.config,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn internet_pairs_and_extras_host_routes_sorted_once() {
        let c = cfg("[idp.entra]\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret_file = \"/s\"\nextra_addresses = [\"192.0.2.40\", \"203.0.113.31\"]\n");
        let (t, skipped) = trusted_addresses(&c);
        let nets: Vec<String> = t.iter().map(|a| a.net.to_string()).collect();
        assert_eq!(
            nets,
            [
                "192.0.2.40/32",
                "203.0.113.30/32",
                "203.0.113.31/32",
                "2001:db8::30/128"
            ]
        );
        assert_eq!(t[0].from, "extra_addresses");
        assert_eq!(t[1].from, "egress pair, egress pair2");
        assert_eq!(t[2].from, "egress pair, extra_addresses");
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].address.to_string(), "10.0.0.5");
        assert!(skipped[0].why.contains("RFC 1918"));
        // the public egress is never trusted
        assert!(!nets.iter().any(|n| n.starts_with("198.51.100.9")));
    }

    #[test]
    fn odata_literals_double_quotes() {
        assert_eq!(odata_string("it's"), "'it''s'");
        assert_eq!(
            query_escape("displayName eq 'a b'"),
            "displayName%20eq%20%27a%20b%27"
        );
    }
}
