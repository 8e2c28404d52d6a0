//! Reads each section of the document into the typed model, reporting every problem.
//!
//! This file holds the typed value readers; each section has its own file.

mod acme;
mod compliance;
mod egress;
mod enroll;
mod idp;
mod policy;
mod relay;

use crate::diagnostics::Sink;
use crate::model::*;
use crate::tree::{
    array, boolean, choice, integer, parsed, string, Entry, Fields, Node, NodeValue, Spanned,
};
use crate::units::{check_name, parse_duration};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) struct Reader<'a, 's> {
    pub sink: &'a mut Sink<'s>,
    pub base: PathBuf,
}

const TOP: &[&str] = &[
    "appliance",
    "relay",
    "egress",
    "apps",
    "compliance",
    "policy",
    "defaults",
    "events",
    "logging",
    "enroll",
    "acme",
    "idp",
];

/// A table's entries in file order; an absent section reads as empty.
pub(super) fn entries(node: Option<&Entry>) -> &[Entry] {
    match node.map(|e| &e.node.value) {
        Some(NodeValue::Table(entries)) => entries,
        _ => &[],
    }
}

impl Reader<'_, '_> {
    pub(crate) fn document(&mut self, root: &Node, origin: &Path) -> Option<Config> {
        let top = Fields::open(self.sink, root, "", TOP)?;
        let empty = Node {
            span: root.span.start..root.span.start,
            value: NodeValue::Table(Vec::new()),
        };
        let section = |key: &str| top.get(key).map(|e| &e.node).unwrap_or(&empty);

        let appliance = self.appliance(section("appliance"));
        let relay = match top.get("relay") {
            Some(e) => self.relay(&e.node),
            None => {
                top.missing(
                    self.sink,
                    "relay",
                    "a [relay] table with certificate, private_key and device_ca",
                );
                None
            }
        };
        let egresses = self.egresses(top.get("egress"));
        let apps = self.apps(top.get("apps"));
        let compliance = self.compliance(section("compliance"));
        let policies = self.policies(top.get("policy"));
        let defaults = self.defaults(section("defaults"));
        let events = self.events(section("events"));
        let logging = self.logging(section("logging"));
        let enroll = self.enroll(section("enroll"));
        let acme = match top.get("acme") {
            Some(e) => Some(self.acme(&e.node)?),
            None => None,
        };
        let idp = self.idp(section("idp"));
        Some(Config {
            origin: origin.to_path_buf(),
            appliance: appliance?,
            relay: relay?,
            egresses,
            apps,
            compliance: compliance?,
            policies,
            defaults: defaults?,
            events: events?,
            logging: logging?,
            enroll: enroll?,
            acme,
            idp: idp?,
        })
    }

    // ---- value readers -------------------------------------------------------------------

    pub(super) fn path(&mut self, node: &Node, path: &str) -> Option<Spanned<PathBuf>> {
        let s = string(self.sink, node, path)?;
        if s.value.trim().is_empty() {
            self.sink
                .error(&node.span, path, "empty path")
                .expected("a file path");
            return None;
        }
        let p = Path::new(&s.value);
        let resolved = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        };
        Some(Spanned::new(resolved, s.span))
    }

    pub(super) fn path_key(
        &mut self,
        f: &Fields,
        key: &str,
        required: bool,
    ) -> Option<Spanned<PathBuf>> {
        f.with(
            self.sink,
            key,
            required.then_some("a file path"),
            |_, _, _| Some(()),
        )?;
        let e = f.get(key)?;
        self.path(&e.node, &f.key_path(key))
    }

    pub(super) fn path_list(
        &mut self,
        f: &Fields,
        key: &str,
        required: bool,
    ) -> Vec<Spanned<PathBuf>> {
        let Some(e) = f.get(key) else {
            if required {
                f.missing(self.sink, key, "one or more file paths");
            }
            return Vec::new();
        };
        let items: Vec<Node> = match &e.node.value {
            NodeValue::Array(items) => items.clone(),
            _ => vec![e.node.clone()],
        };
        let key_path = f.key_path(key);
        let out: Vec<_> = items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| self.path(n, &format!("{key_path}[{i}]")))
            .collect();
        if required && out.is_empty() && items.is_empty() {
            self.sink
                .error(&e.node.span, &key_path, "the list is empty")
                .expected("one or more file paths");
        }
        out
    }

    pub(super) fn string_key(
        &mut self,
        f: &Fields,
        key: &str,
        required: bool,
    ) -> Option<Spanned<String>> {
        let s = f.with(self.sink, key, required.then_some("a string"), string)?;
        if s.value.trim().is_empty() {
            self.sink
                .error(&s.span, &f.key_path(key), "empty string")
                .expected("a non-empty string");
            return None;
        }
        Some(s)
    }

    pub(super) fn duration_key(
        &mut self,
        f: &Fields,
        key: &str,
        default: Duration,
    ) -> Option<Duration> {
        const EXPECTED: &str = "a duration such as \"30s\", \"15m\", \"4h\" or \"1h30m\"";
        match f.get(key) {
            None => Some(default),
            Some(e) => {
                if let NodeValue::Int(secs) = e.node.value {
                    let path = f.key_path(key);
                    self.sink
                        .error(
                            &e.node.span,
                            &path,
                            format!("a bare number is ambiguous ({secs})"),
                        )
                        .expected(EXPECTED)
                        .help(format!("write `{key} = \"{secs}s\"`"));
                    return None;
                }
                parsed(
                    self.sink,
                    &e.node,
                    &f.key_path(key),
                    EXPECTED,
                    parse_duration,
                )
                .map(|s| s.value)
            }
        }
    }

    pub(super) fn int_key(
        &mut self,
        f: &Fields,
        key: &str,
        min: i64,
        max: i64,
        default: i64,
    ) -> Option<i64> {
        match f.get(key) {
            None => Some(default),
            Some(e) => integer(self.sink, &e.node, &f.key_path(key), min, max),
        }
    }

    pub(super) fn bool_key(&mut self, f: &Fields, key: &str, default: bool) -> Option<bool> {
        match f.get(key) {
            None => Some(default),
            Some(e) => boolean(self.sink, &e.node, &f.key_path(key)),
        }
    }

    pub(super) fn choice_key<T: Copy>(
        &mut self,
        f: &Fields,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        match f.get(key) {
            None => Some(default),
            Some(e) => choice(self.sink, &e.node, &f.key_path(key), choices),
        }
    }

    pub(super) fn ip(&mut self, node: &Node, path: &str) -> Option<Spanned<IpAddr>> {
        parsed(
            self.sink,
            node,
            path,
            "an IPv4 or IPv6 address such as 203.0.113.10",
            |s| {
                s.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| "not an IP address".to_string())
            },
        )
    }

    pub(super) fn ip_key(
        &mut self,
        f: &Fields,
        key: &str,
        required: bool,
    ) -> Option<Spanned<IpAddr>> {
        match f.get(key) {
            Some(e) => self.ip(&e.node, &f.key_path(key)),
            None => {
                if required {
                    f.missing(self.sink, key, "an IP address");
                }
                None
            }
        }
    }

    pub(super) fn ip_list(&mut self, f: &Fields, key: &str) -> Vec<Spanned<IpAddr>> {
        match f.get(key) {
            Some(e) => array(self.sink, &e.node, &f.key_path(key), false, |sink, n, p| {
                Reader {
                    sink,
                    base: PathBuf::new(),
                }
                .ip(n, p)
            })
            .unwrap_or_default(),
            None => Vec::new(),
        }
    }

    pub(super) fn cidr(&mut self, node: &Node, path: &str) -> Option<Spanned<IpNet>> {
        let s = string(self.sink, node, path)?;
        let text = s.value.trim();
        let net = match text.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match text.parse::<IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    let help = text.split_once('/').and_then(|(addr, len)| {
                        let bits: u8 = len.parse().ok()?;
                        let max = if addr.contains(':') { 128 } else { 32 };
                        (bits > max).then(|| {
                            format!(
                                "an {} prefix length is at most {max}",
                                if max == 32 { "IPv4" } else { "IPv6" }
                            )
                        })
                    });
                    self.sink
                        .error(&node.span, path, format!("`{text}` is not a valid CIDR"))
                        .expected("an address with a prefix length, e.g. 198.18.100.0/24 or 2001:db8::/64")
                        .help_opt(help);
                    return None;
                }
            },
        };
        if net.trunc() != net {
            self.sink
                .error(&node.span, path, format!("`{text}` has host bits set"))
                .expected("a network address")
                .help(format!("did you mean `{}`?", net.trunc()));
            return None;
        }
        Some(Spanned::new(net, s.span))
    }

    pub(super) fn cidr_list(
        &mut self,
        f: &Fields,
        key: &str,
        required: bool,
    ) -> Vec<Spanned<IpNet>> {
        let Some(e) = f.get(key) else {
            if required {
                f.missing(
                    self.sink,
                    key,
                    "a list of CIDRs such as [\"198.18.100.0/24\"]",
                );
            }
            return Vec::new();
        };
        let key_path = f.key_path(key);
        let list = array(self.sink, &e.node, &key_path, true, |sink, n, p| {
            Reader {
                sink,
                base: PathBuf::new(),
            }
            .cidr(n, p)
        })
        .unwrap_or_default();
        if required
            && list.is_empty()
            && matches!(&e.node.value, NodeValue::Array(a) if a.is_empty())
        {
            self.sink
                .error(&e.node.span, &key_path, "the list is empty")
                .expected("at least one CIDR");
        }
        list
    }

    pub(super) fn socket_list(&mut self, f: &Fields, key: &str, default: &str) -> Vec<SocketAddr> {
        let Some(e) = f.get(key) else {
            return default.parse().into_iter().collect();
        };
        array(self.sink, &e.node, &f.key_path(key), true, |sink, n, p| {
            parsed(
                sink,
                n,
                p,
                "an address and port such as \"0.0.0.0:443\" or \"[::]:443\"",
                |s| {
                    s.trim()
                        .parse::<SocketAddr>()
                        .map_err(|_| "not an address:port".to_string())
                },
            )
            .map(|s| s.value)
        })
        .unwrap_or_default()
    }

    pub(super) fn string_list(&mut self, f: &Fields, key: &str) -> Vec<Spanned<String>> {
        match f.get(key) {
            Some(e) => {
                array(self.sink, &e.node, &f.key_path(key), false, string).unwrap_or_default()
            }
            None => Vec::new(),
        }
    }

    pub(super) fn name(&mut self, entry: &Entry, path: &str) -> Option<Spanned<String>> {
        match check_name(&entry.key) {
            Ok(()) => Some(Spanned::new(entry.key.clone(), entry.key_span.clone())),
            Err(e) => {
                self.sink
                    .error(&entry.key_span, path, e)
                    .expected("a name such as `corp` or `idp-pair`");
                None
            }
        }
    }

    pub(super) fn outcome(
        &mut self,
        f: &Fields,
        key: &str,
        default: Option<&str>,
    ) -> Option<Spanned<Outcome>> {
        match f.get(key) {
            Some(e) => {
                let s = string(self.sink, &e.node, &f.key_path(key))?;
                Some(Spanned::new(Outcome::parse(s.value.trim()), s.span))
            }
            None => match default {
                Some(d) => Some(Spanned::new(Outcome::parse(d), f.span.clone())),
                None => {
                    f.missing(self.sink, key, "an egress name, `deny` or `direct`");
                    None
                }
            },
        }
    }

    // ---- sections ------------------------------------------------------------------------
}
