//! `[egress.NAME]`: tunnels, internet and public egresses.

use super::{entries, Reader};
use crate::model::*;
use crate::tree::{
    self, array, choice, integer, parsed, string, Entry, Fields, Node, NodeValue, Spanned,
};
use ike::{EspProposal, Identity, IkeProposal};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

impl Reader<'_, '_> {
    pub(super) fn egresses(&mut self, section: Option<&Entry>) -> Vec<Egress> {
        if let Some(e) = section {
            if !matches!(e.node.value, NodeValue::Table(_)) {
                tree::wrong_type(
                    self.sink,
                    &e.node,
                    "egress",
                    "a table of named egresses ([egress.NAME])",
                );
            }
        }
        let mut out = Vec::new();
        for entry in entries(section) {
            let path = format!("egress.{}", entry.key);
            if RESERVED_OUTCOMES.contains(&entry.key.as_str()) {
                self.sink
                    .error(&entry.key_span, &path, format!("`{}` is a built-in outcome, not an egress name", entry.key))
                    .help("policies can name `deny` and `direct` without defining them; pick another name");
                continue;
            }
            let name = self.name(entry, &path);
            if let Some(egress) = self.egress(&entry.node, &path) {
                if let Some(name) = name {
                    out.push(Egress { name, ..egress });
                }
            }
        }
        if !out.iter().any(|e| matches!(e.kind, EgressKind::Public(_))) {
            if let Some(e) = out.iter().find(|e| e.name.value == "public") {
                let span = e.name.span.clone();
                self.sink
                    .error(
                        &span,
                        "egress.public",
                        "the name `public` is kept for the untrusted default egress",
                    )
                    .help("give this egress another name, or make it `type = \"public\"`");
            }
            out.push(Egress {
                name: Spanned::new("public".into(), 0..0),
                kind: EgressKind::Public(Public {
                    source_address: None,
                }),
                dns: Vec::new(),
                hosts: BTreeMap::new(),
            });
        }
        out
    }

    pub(super) fn egress(&mut self, node: &Node, path: &str) -> Option<Egress> {
        const TYPES: &[(&str, u8)] = &[("tunnel", 0), ("internet", 1), ("public", 2)];
        const COMMON: &[&str] = &["type", "dns", "hosts"];
        const TUNNEL: &[&str] = &[
            "local_address",
            "remote_address",
            "local_id",
            "remote_id",
            "psk_file",
            "certificate",
            "private_key",
            "peer_ca",
            "ike_proposals",
            "esp_proposals",
            "local_ts",
            "remote_ts",
            "nat_pool",
            "nat_mode",
            "mtu",
            "initiate",
            "dpd_interval",
            "dpd_action",
            "ike_lifetime",
            "child_lifetime",
            "child_lifetime_bytes",
            "fragment_size",
            "cookie_threshold",
            "encap",
        ];
        const INTERNET: &[&str] = &["source_addresses"];
        const PUBLIC: &[&str] = &["source_address"];
        let NodeValue::Table(entries) = &node.value else {
            tree::wrong_type(
                self.sink,
                node,
                path,
                "a table with `type = \"tunnel\" | \"internet\" | \"public\"`",
            );
            return None;
        };
        let kind = match entries.iter().find(|e| e.key == "type") {
            Some(e) => choice(self.sink, &e.node, &format!("{path}.type"), TYPES)?,
            None => {
                self.sink
                    .error(
                        &node.span,
                        &format!("{path}.type"),
                        "required key is missing",
                    )
                    .expected("type = \"tunnel\", \"internet\" or \"public\"");
                return None;
            }
        };
        let specific = [TUNNEL, INTERNET, PUBLIC][usize::from(kind)];
        let allowed: Vec<&str> = COMMON.iter().chain(specific).copied().collect();
        let f = Fields::open(self.sink, node, path, &allowed)?;
        let dns = self
            .ip_list(&f, "dns")
            .into_iter()
            .map(|s| s.value)
            .collect();
        let hosts = self.static_hosts(&f);
        let kind = match kind {
            0 => EgressKind::Tunnel(Box::new(self.tunnel(&f)?)),
            1 => {
                let source_addresses = self.ip_list(&f, "source_addresses");
                if f.get("source_addresses").is_none() {
                    f.missing(
                        self.sink,
                        "source_addresses",
                        "the dedicated addresses, e.g. [\"203.0.113.30\", \"203.0.113.31\"]",
                    );
                    return None;
                }
                if source_addresses.is_empty() {
                    self.sink
                        .error(
                            &f.span,
                            &f.key_path("source_addresses"),
                            "no usable source address",
                        )
                        .expected("at least one IP address");
                    return None;
                }
                for (i, a) in source_addresses.iter().enumerate() {
                    if source_addresses[..i].iter().any(|b| b.value == a.value) {
                        self.sink.error(
                            &a.span,
                            &f.key_path("source_addresses"),
                            format!("{} is listed twice", a.value),
                        );
                    }
                }
                EgressKind::Internet(Internet { source_addresses })
            }
            _ => EgressKind::Public(Public {
                source_address: self.ip_key(&f, "source_address", false).map(|s| s.value),
            }),
        };
        Some(Egress {
            name: Spanned::new(String::new(), 0..0),
            kind,
            dns,
            hosts,
        })
    }

    pub(super) fn static_hosts(&mut self, f: &Fields) -> BTreeMap<String, Vec<IpAddr>> {
        let mut out = BTreeMap::new();
        let Some(e) = f.get("hosts") else { return out };
        let path = f.key_path("hosts");
        let NodeValue::Table(entries) = &e.node.value else {
            tree::wrong_type(
                self.sink,
                &e.node,
                &path,
                "a table of host name = address(es)",
            );
            return out;
        };
        for entry in entries {
            let p = tree::join(&path, &entry.key);
            let name = match crate::units::normalize_host(&entry.key) {
                Ok(n) => n,
                Err(err) => {
                    self.sink
                        .error(&entry.key_span, &p, err)
                        .expected("a host name");
                    continue;
                }
            };
            let addrs = array(self.sink, &entry.node, &p, true, |sink, n, p| {
                Reader {
                    sink,
                    base: PathBuf::new(),
                }
                .ip(n, p)
                .map(|s| s.value)
            })
            .unwrap_or_default();
            if !addrs.is_empty() {
                out.insert(name, addrs);
            }
        }
        out
    }

    pub(super) fn identity(&mut self, f: &Fields, key: &str, default: IpAddr) -> Option<Identity> {
        match f.get(key) {
            None => Some(Identity::Ip(default)),
            Some(e) => parsed(
                self.sink,
                &e.node,
                &f.key_path(key),
                "an IKE identity: an IP address, an FQDN (`vpn.example.com`), `keyid:hex`, an e-mail or a DN (`CN=…, O=…`)",
                Identity::parse,
            )
            .map(|s| s.value),
        }
    }

    pub(super) fn proposals<T>(
        &mut self,
        f: &Fields,
        key: &str,
        default: &str,
        parse: fn(&str) -> Result<T, ike::ProposalError>,
    ) -> Option<Vec<T>> {
        let Some(e) = f.get(key) else {
            return parse(default).ok().map(|p| vec![p]);
        };
        let path = f.key_path(key);
        let kind = if key.starts_with("ike") { "IKE" } else { "ESP" };
        let expected = if kind == "IKE" {
            "strongSwan proposal syntax, e.g. \"aes256gcm16-prfsha256-ecp256\""
        } else {
            "strongSwan proposal syntax, e.g. \"aes256gcm16\" or \"aes128-sha256-modp2048\""
        };
        let items = array(self.sink, &e.node, &path, true, string)?;
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            // strongSwan writes several proposals comma-separated in one string.
            for text in item.value.split(',').map(str::trim) {
                match parse(text) {
                    Ok(p) => out.push(p),
                    Err(err) => {
                        ok = false;
                        let p = if items.len() > 1 {
                            format!("{path}[{i}]")
                        } else {
                            path.clone()
                        };
                        self.sink
                            .error(&item.span, &p, format!("{kind} proposal `{text}`: {err}"))
                            .expected(expected);
                    }
                }
            }
        }
        if out.is_empty() && ok {
            self.sink
                .error(&e.node.span, &path, "no proposal")
                .expected(expected);
            return None;
        }
        ok.then_some(out)
    }

    pub(super) fn tunnel(&mut self, f: &Fields) -> Option<Tunnel> {
        let local_address = self.ip_key(f, "local_address", true);
        let remote_address = self.ip_key(f, "remote_address", true);
        let local_id = local_address
            .as_ref()
            .and_then(|a| self.identity(f, "local_id", a.value));
        let remote_id = remote_address
            .as_ref()
            .and_then(|a| self.identity(f, "remote_id", a.value));
        let psk = self.path_key(f, "psk_file", false);
        let certificate = self.path_key(f, "certificate", false);
        let private_key = self.path_key(f, "private_key", false);
        let peer_ca = self.path_list(f, "peer_ca", false);
        let auth = match (psk, certificate, private_key) {
            (Some(file), None, None) => {
                if !peer_ca.is_empty() {
                    self.sink.warning(
                        &f.span,
                        &f.key_path("peer_ca"),
                        "has no effect with PSK authentication",
                    );
                }
                Some(TunnelAuth::Psk { file })
            }
            (None, Some(certificate), Some(private_key)) => {
                if peer_ca.is_empty() {
                    f.missing(
                        self.sink,
                        "peer_ca",
                        "the CA bundle that signs the peer's certificate",
                    );
                    None
                } else {
                    Some(TunnelAuth::Certificate {
                        certificate,
                        private_key,
                        peer_ca,
                    })
                }
            }
            (None, None, None) => {
                self.sink
                    .error(&f.span, &f.path, "no authentication configured")
                    .expected("psk_file, or certificate + private_key + peer_ca");
                None
            }
            (Some(_), _, _) => {
                self.sink
                    .error(
                        &f.span,
                        &f.path,
                        "both a PSK and a certificate are configured",
                    )
                    .expected("psk_file, or certificate + private_key + peer_ca, not both");
                None
            }
            (None, cert, _) => {
                let missing = if cert.is_some() {
                    "private_key"
                } else {
                    "certificate"
                };
                f.missing(
                    self.sink,
                    missing,
                    "certificate authentication needs certificate, private_key and peer_ca",
                );
                None
            }
        };
        let ike_proposals = self.proposals(
            f,
            "ike_proposals",
            "aes256gcm16-prfsha256-ecp256",
            IkeProposal::parse,
        );
        let esp_proposals = self.proposals(f, "esp_proposals", "aes256gcm16", EspProposal::parse);
        let local_ts = self.cidr_list(f, "local_ts", true);
        let remote_ts = self.cidr_list(f, "remote_ts", true);
        let nat_pool = match f.get("nat_pool") {
            Some(e) => self.cidr(&e.node, &f.key_path("nat_pool")),
            None => {
                f.missing(
                    self.sink,
                    "nat_pool",
                    "the private subnet device traffic is sourced from, e.g. \"198.18.100.0/26\"",
                );
                None
            }
        };
        let nat_mode = self.choice_key(
            f,
            "nat_mode",
            &[
                ("per-device", NatMode::PerDevice),
                ("shared", NatMode::Shared),
            ],
            NatMode::PerDevice,
        );
        let mtu = self.int_key(f, "mtu", 576, 9000, 1400);
        let fragment_size = self.int_key(f, "fragment_size", 576, 9000, 1280);
        let initiate = self.bool_key(f, "initiate", true);
        let cookie_threshold = self.int_key(f, "cookie_threshold", 0, 100_000, 10);
        let encap = self.bool_key(f, "encap", true);
        let dpd_interval = self.duration_key(f, "dpd_interval", Duration::from_secs(30));
        let dpd_action = self.choice_key(
            f,
            "dpd_action",
            &[("restart", DpdAction::Restart), ("clear", DpdAction::Clear)],
            DpdAction::Restart,
        );
        let ike_lifetime = self.duration_key(f, "ike_lifetime", Duration::from_secs(4 * 3600));
        let child_lifetime = self.duration_key(f, "child_lifetime", Duration::from_secs(3600));
        let child_lifetime_bytes = match f.get("child_lifetime_bytes") {
            Some(e) => Some(
                integer(
                    self.sink,
                    &e.node,
                    &f.key_path("child_lifetime_bytes"),
                    1 << 20,
                    i64::MAX,
                )
                .and_then(|v| u64::try_from(v).ok()),
            ),
            None => Some(None),
        };
        for (key, value, min) in [
            ("ike_lifetime", ike_lifetime, 300),
            ("child_lifetime", child_lifetime, 60),
        ] {
            if let Some(v) = value {
                if v < Duration::from_secs(min) {
                    self.sink
                        .error(
                            &f.value_span(key),
                            &f.key_path(key),
                            format!(
                                "{} is too short to rekey safely",
                                crate::units::format_duration(v)
                            ),
                        )
                        .expected(format!(
                            "at least {}",
                            crate::units::format_duration(Duration::from_secs(min))
                        ));
                }
            }
        }
        if let (Some(child), Some(ike)) = (child_lifetime, ike_lifetime) {
            if child > ike {
                self.sink.warning(
                    &f.value_span("child_lifetime"),
                    &f.key_path("child_lifetime"),
                    "is longer than ike_lifetime; child SAs will be rekeyed with the IKE SA",
                );
            }
        }
        Some(Tunnel {
            local_address: local_address?.value,
            remote_address: remote_address?,
            local_id: local_id?,
            remote_id: remote_id?,
            auth: auth?,
            ike_proposals: ike_proposals?,
            esp_proposals: esp_proposals?,
            local_ts,
            remote_ts,
            nat_pool: nat_pool?,
            nat_mode: nat_mode?,
            mtu: u16::try_from(mtu?).ok()?,
            initiate: initiate?,
            dpd_interval: dpd_interval?,
            dpd_action: dpd_action?,
            ike_lifetime: ike_lifetime?,
            child_lifetime: child_lifetime?,
            child_lifetime_bytes: child_lifetime_bytes?,
            fragment_size: u16::try_from(fragment_size?).ok()?,
            cookie_threshold: u32::try_from(cookie_threshold?).ok()?,
            encap: encap?,
        })
    }
}
