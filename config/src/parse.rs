//! Reads each section of the document into the typed model, reporting every problem.

use crate::diagnostics::{did_you_mean, Sink};
use crate::model::*;
use crate::tree::{
    self, array, boolean, choice, integer, parsed, string, Entry, Fields, Node, NodeValue, Spanned,
};
use crate::units::{check_name, parse_duration, HostPattern, PortRange};
use ike::{EspProposal, Identity, IkeProposal};
use ipnet::IpNet;
use std::collections::BTreeMap;
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
];

/// A table's entries in file order; an absent section reads as empty.
fn entries(node: Option<&Entry>) -> &[Entry] {
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
        })
    }

    // ---- value readers -------------------------------------------------------------------

    fn path(&mut self, node: &Node, path: &str) -> Option<Spanned<PathBuf>> {
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

    fn path_key(&mut self, f: &Fields, key: &str, required: bool) -> Option<Spanned<PathBuf>> {
        f.with(
            self.sink,
            key,
            required.then_some("a file path"),
            |_, _, _| Some(()),
        )?;
        let e = f.get(key)?;
        self.path(&e.node, &f.key_path(key))
    }

    fn path_list(&mut self, f: &Fields, key: &str, required: bool) -> Vec<Spanned<PathBuf>> {
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

    fn string_key(&mut self, f: &Fields, key: &str, required: bool) -> Option<Spanned<String>> {
        let s = f.with(self.sink, key, required.then_some("a string"), string)?;
        if s.value.trim().is_empty() {
            self.sink
                .error(&s.span, &f.key_path(key), "empty string")
                .expected("a non-empty string");
            return None;
        }
        Some(s)
    }

    fn duration_key(&mut self, f: &Fields, key: &str, default: Duration) -> Option<Duration> {
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

    fn int_key(&mut self, f: &Fields, key: &str, min: i64, max: i64, default: i64) -> Option<i64> {
        match f.get(key) {
            None => Some(default),
            Some(e) => integer(self.sink, &e.node, &f.key_path(key), min, max),
        }
    }

    fn bool_key(&mut self, f: &Fields, key: &str, default: bool) -> Option<bool> {
        match f.get(key) {
            None => Some(default),
            Some(e) => boolean(self.sink, &e.node, &f.key_path(key)),
        }
    }

    fn choice_key<T: Copy>(
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

    fn ip(&mut self, node: &Node, path: &str) -> Option<Spanned<IpAddr>> {
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

    fn ip_key(&mut self, f: &Fields, key: &str, required: bool) -> Option<Spanned<IpAddr>> {
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

    fn ip_list(&mut self, f: &Fields, key: &str) -> Vec<Spanned<IpAddr>> {
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

    fn cidr(&mut self, node: &Node, path: &str) -> Option<Spanned<IpNet>> {
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

    fn cidr_list(&mut self, f: &Fields, key: &str, required: bool) -> Vec<Spanned<IpNet>> {
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

    fn socket_list(&mut self, f: &Fields, key: &str, default: &str) -> Vec<SocketAddr> {
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

    fn string_list(&mut self, f: &Fields, key: &str) -> Vec<Spanned<String>> {
        match f.get(key) {
            Some(e) => {
                array(self.sink, &e.node, &f.key_path(key), false, string).unwrap_or_default()
            }
            None => Vec::new(),
        }
    }

    fn name(&mut self, entry: &Entry, path: &str) -> Option<Spanned<String>> {
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

    fn outcome(
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

    fn appliance(&mut self, node: &Node) -> Option<Appliance> {
        let f = Fields::open(
            self.sink,
            node,
            "appliance",
            &["name", "state_dir", "control_socket"],
        )?;
        let name = match f.get("name") {
            Some(_) => self.string_key(&f, "name", false).map(|s| s.value),
            None => Some("attestgate".to_string()),
        };
        let state_dir = match f.get("state_dir") {
            Some(e) => self
                .path(&e.node, &f.key_path("state_dir"))
                .map(|p| p.value),
            None => Some(PathBuf::from(DEFAULT_STATE_DIR)),
        };
        let control_socket = match f.get("control_socket") {
            Some(e) => self
                .path(&e.node, &f.key_path("control_socket"))
                .map(|p| p.value),
            None => Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        };
        Some(Appliance {
            name: name?,
            state_dir: state_dir?,
            control_socket: control_socket?,
        })
    }

    fn relay(&mut self, node: &Node) -> Option<Relay> {
        let f = Fields::open(
            self.sink,
            node,
            "relay",
            &[
                "http3_listen",
                "http2_listen",
                "certificate",
                "private_key",
                "device_ca",
                "crl",
                "identity",
                "udp_path",
                "header_secret_file",
                "header_name",
                "limits",
            ],
        )?;
        let http3_listen = self.socket_list(&f, "http3_listen", "[::]:443");
        let http2_listen = self.socket_list(&f, "http2_listen", "[::]:443");
        let certificate = self.path_key(&f, "certificate", true);
        let private_key = self.path_key(&f, "private_key", true);
        let device_ca = self.path_list(&f, "device_ca", true);
        let crl = self.path_list(&f, "crl", false);
        const IDS: &[(&str, IdentityField)] = &[
            ("permanent-identifier", IdentityField::PermanentIdentifier),
            ("apple-serial", IdentityField::AppleSerial),
            ("subject-cn", IdentityField::SubjectCn),
            ("subject-serial", IdentityField::SubjectSerial),
        ];
        let identity = match f.get("identity") {
            Some(e) => array(
                self.sink,
                &e.node,
                &f.key_path("identity"),
                true,
                |sink, n, p| choice(sink, n, p, IDS),
            )
            .unwrap_or_default(),
            None => vec![
                IdentityField::PermanentIdentifier,
                IdentityField::AppleSerial,
            ],
        };
        let udp_path = match f.get("udp_path") {
            Some(e) => parsed(
                self.sink,
                &e.node,
                &f.key_path("udp_path"),
                "an absolute path template with {target_host} and {target_port}",
                |s| {
                    if !s.starts_with('/') {
                        Err("must start with `/`".to_string())
                    } else if !s.contains("{target_host}") || !s.contains("{target_port}") {
                        Err(
                            "must contain both {target_host} and {target_port} (RFC 9298 §2)"
                                .to_string(),
                        )
                    } else {
                        Ok(s.to_string())
                    }
                },
            )
            .map(|s| s.value),
            None => Some(DEFAULT_UDP_PATH.to_string()),
        };
        let header_secret = match self.path_key(&f, "header_secret_file", false) {
            Some(file) => {
                let header = match f.get("header_name") {
                    Some(e) => parsed(
                        self.sink,
                        &e.node,
                        &f.key_path("header_name"),
                        "an HTTP header name",
                        |s| {
                            let ok = !s.is_empty()
                                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                            if ok {
                                Ok(s.to_ascii_lowercase())
                            } else {
                                Err("not a valid header name".to_string())
                            }
                        },
                    )
                    .map(|s| s.value),
                    None => Some("x-attestgate-secret".to_string()),
                };
                header.map(|header| HeaderSecret { header, file })
            }
            None => {
                if let Some(e) = f.get("header_name") {
                    self.sink.warning(
                        &e.key_span,
                        &f.key_path("header_name"),
                        "has no effect without header_secret_file",
                    );
                }
                None
            }
        };
        let limits = match f.get("limits") {
            Some(e) => self.relay_limits(&e.node),
            None => self.relay_limits(&Node {
                span: f.span.clone(),
                value: NodeValue::Table(Vec::new()),
            }),
        };
        if http3_listen.is_empty()
            && http2_listen.is_empty()
            && (f.get("http3_listen").is_some() || f.get("http2_listen").is_some())
        {
            self.sink
                .error(
                    &f.span,
                    "relay",
                    "no listener: both http3_listen and http2_listen are empty",
                )
                .expected("at least one listen address");
        }
        Some(Relay {
            http3_listen,
            http2_listen,
            certificate: certificate?,
            private_key: private_key?,
            device_ca,
            crl,
            identity,
            udp_path: udp_path?,
            header_secret,
            limits: limits?,
        })
    }

    fn relay_limits(&mut self, node: &Node) -> Option<RelayLimits> {
        let f = Fields::open(
            self.sink,
            node,
            "relay.limits",
            &[
                "max_connections_per_device",
                "max_streams_per_connection",
                "connection_idle_timeout",
                "keepalive_interval",
                "stream_idle_timeout",
                "max_header_bytes",
            ],
        )?;
        let max_connections_per_device =
            self.int_key(&f, "max_connections_per_device", 1, 10_000, 16);
        let max_streams_per_connection =
            self.int_key(&f, "max_streams_per_connection", 1, 100_000, 256);
        let connection_idle_timeout =
            self.duration_key(&f, "connection_idle_timeout", Duration::from_secs(600));
        let keepalive_interval =
            self.duration_key(&f, "keepalive_interval", Duration::from_secs(25));
        let stream_idle = self.duration_key(&f, "stream_idle_timeout", Duration::ZERO);
        let max_header_bytes = self.int_key(&f, "max_header_bytes", 1024, 1 << 20, 16 * 1024);
        if let (Some(idle), Some(keep)) = (connection_idle_timeout, keepalive_interval) {
            if keep >= idle {
                self.sink
                    .error(&f.value_span("keepalive_interval"), "relay.limits.keepalive_interval", "keepalives must come more often than the idle timeout, or idle connections drop")
                    .expected(format!("less than connection_idle_timeout ({})", crate::units::format_duration(idle)));
            }
        }
        Some(RelayLimits {
            max_connections_per_device: u32::try_from(max_connections_per_device?).ok()?,
            max_streams_per_connection: u32::try_from(max_streams_per_connection?).ok()?,
            connection_idle_timeout: connection_idle_timeout?,
            keepalive_interval: keepalive_interval?,
            stream_idle_timeout: stream_idle.map(|d| (!d.is_zero()).then_some(d))?,
            max_header_bytes: u32::try_from(max_header_bytes?).ok()?,
        })
    }

    fn egresses(&mut self, section: Option<&Entry>) -> Vec<Egress> {
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

    fn egress(&mut self, node: &Node, path: &str) -> Option<Egress> {
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

    fn static_hosts(&mut self, f: &Fields) -> BTreeMap<String, Vec<IpAddr>> {
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

    fn identity(&mut self, f: &Fields, key: &str, default: IpAddr) -> Option<Identity> {
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

    fn proposals<T>(
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

    fn tunnel(&mut self, f: &Fields) -> Option<Tunnel> {
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
        let initiate = self.bool_key(f, "initiate", true);
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
        })
    }

    fn apps(&mut self, section: Option<&Entry>) -> Vec<App> {
        if let Some(e) = section {
            if !matches!(e.node.value, NodeValue::Table(_)) {
                tree::wrong_type(
                    self.sink,
                    &e.node,
                    "apps",
                    "a table of named apps ([apps.NAME])",
                );
            }
        }
        let mut out = Vec::new();
        for entry in entries(section) {
            let path = format!("apps.{}", entry.key);
            let name = self.name(entry, &path);
            let Some(f) = Fields::open(
                self.sink,
                &entry.node,
                &path,
                &["description", "hosts", "cidrs", "ports"],
            ) else {
                continue;
            };
            let description = f
                .get("description")
                .and_then(|e| string(self.sink, &e.node, &f.key_path("description")))
                .map(|s| s.value);
            let hosts = match f.get("hosts") {
                Some(e) => array(
                    self.sink,
                    &e.node,
                    &f.key_path("hosts"),
                    false,
                    |sink, n, p| {
                        parsed(
                            sink,
                            n,
                            p,
                            "a host name (`login.example.com`) or `*.example.com`",
                            HostPattern::parse,
                        )
                        .map(|s| s.value)
                    },
                )
                .unwrap_or_default(),
                None => Vec::new(),
            };
            let cidrs: Vec<IpNet> = self
                .cidr_list(&f, "cidrs", false)
                .into_iter()
                .map(|s| s.value)
                .collect();
            let ports = match f.get("ports") {
                Some(e) => array(
                    self.sink,
                    &e.node,
                    &f.key_path("ports"),
                    false,
                    |sink, n, p| match &n.value {
                        NodeValue::Int(_) => integer(sink, n, p, 1, 65535)
                            .and_then(|v| u16::try_from(v).ok())
                            .map(|v| PortRange { first: v, last: v }),
                        _ => parsed(
                            sink,
                            n,
                            p,
                            "a port (443) or a range (\"8000-8100\")",
                            PortRange::parse,
                        )
                        .map(|s| s.value),
                    },
                )
                .unwrap_or_default(),
                None => Vec::new(),
            };
            // absent, or written as an empty list (a list whose items were all refused has
            // been reported item by item)
            let unset = |key: &str| match f.get(key).map(|e| &e.node.value) {
                None => true,
                Some(NodeValue::Array(items)) => items.is_empty(),
                Some(_) => false,
            };
            if unset("hosts") && unset("cidrs") {
                self.sink
                    .error(&entry.key_span, &path, "matches nothing: neither hosts nor cidrs")
                    .expected("hosts = [\"login.example.com\", \"*.example.com\"] and/or cidrs = [\"198.19.0.0/24\"]");
                continue;
            }
            if let Some(name) = name {
                out.push(App {
                    name,
                    description,
                    hosts,
                    cidrs,
                    ports,
                });
            }
        }
        out
    }

    fn compliance(&mut self, node: &Node) -> Option<Compliance> {
        let f = Fields::open(
            self.sink,
            node,
            "compliance",
            &[
                "max_age",
                "refresh_interval",
                "compliant_groups",
                "sources",
                "webhook",
            ],
        )?;
        let max_age = self.duration_key(&f, "max_age", Duration::from_secs(15 * 60));
        let refresh_interval =
            self.duration_key(&f, "refresh_interval", Duration::from_secs(5 * 60));
        if let (Some(age), Some(refresh)) = (max_age, refresh_interval) {
            if refresh >= age {
                let span = f
                    .get("refresh_interval")
                    .map(|e| e.node.span.clone())
                    .unwrap_or(f.span.clone());
                self.sink
                    .error(&span, "compliance.refresh_interval", format!(
                        "refreshing every {} lets data pass max_age ({}) between refreshes, which would close the trusted egress for everyone",
                        crate::units::format_duration(refresh),
                        crate::units::format_duration(age)
                    ))
                    .expected("a refresh_interval shorter than max_age");
            }
        }
        let compliant_groups: Vec<String> = self
            .string_list(&f, "compliant_groups")
            .into_iter()
            .map(|s| s.value)
            .collect();
        let sources_entry = f.get("sources");
        if let Some(e) = sources_entry {
            if !matches!(e.node.value, NodeValue::Table(_)) {
                tree::wrong_type(
                    self.sink,
                    &e.node,
                    "compliance.sources",
                    "a table of named sources ([compliance.sources.NAME])",
                );
            }
        }
        let mut sources = Vec::new();
        for entry in entries(sources_entry) {
            let path = format!("compliance.sources.{}", entry.key);
            let name = self.name(entry, &path);
            if let (Some(kind), Some(name)) = (self.source(&entry.node, &path), name) {
                sources.push(ComplianceSource { name, kind });
            }
        }
        let webhook = match f.get("webhook") {
            Some(e) => Some(self.webhook(&e.node)?),
            None => None,
        };
        Some(Compliance {
            max_age: max_age?,
            refresh_interval: refresh_interval?,
            compliant_groups,
            sources,
            webhook,
        })
    }

    fn source(&mut self, node: &Node, path: &str) -> Option<SourceKind> {
        const TYPES: &[(&str, u8)] = &[("jamf-pro", 0), ("intune", 1), ("file", 2)];
        let NodeValue::Table(entries) = &node.value else {
            tree::wrong_type(
                self.sink,
                node,
                path,
                "a table with `type = \"jamf-pro\" | \"intune\" | \"file\"`",
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
                    .expected("type = \"jamf-pro\", \"intune\" or \"file\"");
                return None;
            }
        };
        match kind {
            0 => {
                let f = Fields::open(
                    self.sink,
                    node,
                    path,
                    &[
                        "type",
                        "url",
                        "client_id",
                        "client_secret_file",
                        "computer_groups",
                        "mobile_device_groups",
                        "risk_attribute",
                    ],
                )?;
                let url = self.https_url(&f, "url");
                let client_id = self.string_key(&f, "client_id", true);
                let client_secret_file = self.path_key(&f, "client_secret_file", true);
                let ids = |r: &mut Self, key: &str| -> Vec<u32> {
                    match f.get(key) {
                        Some(e) => array(r.sink, &e.node, &f.key_path(key), false, |sink, n, p| {
                            integer(sink, n, p, 1, i64::from(u32::MAX))
                                .and_then(|v| u32::try_from(v).ok())
                        })
                        .unwrap_or_default(),
                        None => Vec::new(),
                    }
                };
                let computer_groups = ids(self, "computer_groups");
                let mobile_device_groups = ids(self, "mobile_device_groups");
                if computer_groups.is_empty() && mobile_device_groups.is_empty() {
                    self.sink
                        .error(&f.span, path, "no smart group to read")
                        .expected("computer_groups = [ID, …] and/or mobile_device_groups = [ID, …] (Jamf smart group IDs)");
                }
                let risk_attribute = f
                    .get("risk_attribute")
                    .and_then(|e| string(self.sink, &e.node, &f.key_path("risk_attribute")))
                    .map(|s| s.value);
                Some(SourceKind::JamfPro {
                    url: url?,
                    client_id: client_id?.value,
                    client_secret_file: client_secret_file?,
                    computer_groups,
                    mobile_device_groups,
                    risk_attribute,
                })
            }
            1 => {
                let f = Fields::open(
                    self.sink,
                    node,
                    path,
                    &[
                        "type",
                        "tenant_id",
                        "client_id",
                        "client_secret_file",
                        "compliant_group",
                        "graph_url",
                        "login_url",
                    ],
                )?;
                let tenant_id = self.string_key(&f, "tenant_id", true);
                let client_id = self.string_key(&f, "client_id", true);
                let client_secret_file = self.path_key(&f, "client_secret_file", true);
                let compliant_group = match f.get("compliant_group") {
                    Some(_) => self
                        .string_key(&f, "compliant_group", false)
                        .map(|s| s.value),
                    None => Some("intune-compliant".to_string()),
                };
                let graph_url = if f.get("graph_url").is_some() {
                    self.https_url(&f, "graph_url")
                } else {
                    Some("https://graph.microsoft.com".into())
                };
                let login_url = if f.get("login_url").is_some() {
                    self.https_url(&f, "login_url")
                } else {
                    Some("https://login.microsoftonline.com".into())
                };
                Some(SourceKind::Intune {
                    tenant_id: tenant_id?.value,
                    client_id: client_id?.value,
                    client_secret_file: client_secret_file?,
                    compliant_group: compliant_group?,
                    graph_url: graph_url?,
                    login_url: login_url?,
                })
            }
            _ => {
                let f = Fields::open(self.sink, node, path, &["type", "path"])?;
                Some(SourceKind::File {
                    path: self.path_key(&f, "path", true)?,
                })
            }
        }
    }

    fn https_url(&mut self, f: &Fields, key: &str) -> Option<String> {
        let Some(e) = f.get(key) else {
            f.missing(self.sink, key, "an https:// URL");
            return None;
        };
        parsed(
            self.sink,
            &e.node,
            &f.key_path(key),
            "an https:// URL such as https://corp.jamfcloud.com",
            |s| {
                let rest = s.strip_prefix("https://").ok_or_else(|| {
                    if s.starts_with("http://") {
                        "credentials must not travel over plain http; use https://".to_string()
                    } else {
                        "must start with https://".to_string()
                    }
                })?;
                let host = rest.split(['/', ':']).next().unwrap_or("");
                if host.is_empty() {
                    return Err("has no host".to_string());
                }
                Ok(s.trim_end_matches('/').to_string())
            },
        )
        .map(|s| s.value)
    }

    fn webhook(&mut self, node: &Node) -> Option<Webhook> {
        let f = Fields::open(
            self.sink,
            node,
            "compliance.webhook",
            &[
                "listen",
                "certificate",
                "private_key",
                "auth",
                "username",
                "password_file",
                "header_name",
                "token_file",
            ],
        )?;
        let listen = match f.get("listen") {
            Some(e) => parsed(
                self.sink,
                &e.node,
                &f.key_path("listen"),
                "an address and port such as \"0.0.0.0:8443\"",
                |s| {
                    s.parse::<SocketAddr>()
                        .map_err(|_| "not an address:port".to_string())
                },
            )
            .map(|s| s.value),
            None => {
                f.missing(
                    self.sink,
                    "listen",
                    "an address and port such as \"0.0.0.0:8443\"",
                );
                None
            }
        };
        let certificate = self.path_key(&f, "certificate", true);
        let private_key = self.path_key(&f, "private_key", true);
        let kind = match f.get("auth") {
            Some(e) => choice(
                self.sink,
                &e.node,
                &f.key_path("auth"),
                &[("basic", 0u8), ("header", 1u8)],
            ),
            None => {
                f.missing(
                    self.sink,
                    "auth",
                    "\"basic\" or \"header\" (Jamf webhooks carry no signature)",
                );
                None
            }
        };
        let auth = match kind? {
            0 => {
                let username = self.string_key(&f, "username", true);
                let password_file = self.path_key(&f, "password_file", true);
                WebhookAuth::Basic {
                    username: username?.value,
                    password_file: password_file?,
                }
            }
            _ => {
                let header = match f.get("header_name") {
                    Some(_) => self
                        .string_key(&f, "header_name", false)
                        .map(|s| s.value.to_ascii_lowercase()),
                    None => Some("authorization".to_string()),
                };
                let token_file = self.path_key(&f, "token_file", true);
                WebhookAuth::Header {
                    header: header?,
                    token_file: token_file?,
                }
            }
        };
        Some(Webhook {
            listen: listen?,
            certificate: certificate?,
            private_key: private_key?,
            auth,
        })
    }

    fn policies(&mut self, section: Option<&Entry>) -> Vec<Policy> {
        let Some(section) = section else {
            return Vec::new();
        };
        let NodeValue::Array(items) = &section.node.value else {
            tree::wrong_type(
                self.sink,
                &section.node,
                "policy",
                "an array of tables ([[policy]])",
            );
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, node) in items.iter().enumerate() {
            let path = format!("policy[{i}]");
            let Some(f) = Fields::open(
                self.sink,
                node,
                &path,
                &[
                    "name",
                    "description",
                    "apps",
                    "groups",
                    "managed",
                    "max_risk",
                    "egress",
                    "fallback",
                ],
            ) else {
                continue;
            };
            let name = match f.get("name") {
                Some(e) => parsed(
                    self.sink,
                    &e.node,
                    &f.key_path("name"),
                    "a name such as `idp-login`",
                    |s| check_name(s).map(|()| s.to_string()),
                ),
                None => {
                    f.missing(
                        self.sink,
                        "name",
                        "a name such as `idp-login` (shown in decisions and logs)",
                    );
                    None
                }
            };
            let description = f
                .get("description")
                .and_then(|e| string(self.sink, &e.node, &f.key_path("description")))
                .map(|s| s.value);
            let apps = self.string_list(&f, "apps");
            if f.get("apps").is_none() {
                f.missing(
                    self.sink,
                    "apps",
                    "the names of the apps this policy covers",
                );
            } else if apps.is_empty() {
                self.sink
                    .error(&f.span, &f.key_path("apps"), "the list is empty")
                    .expected("at least one app name");
            }
            let groups = self
                .string_list(&f, "groups")
                .into_iter()
                .map(|s| s.value)
                .collect();
            let managed = self.bool_key(&f, "managed", true);
            let max_risk = self.choice_key(&f, "max_risk", &RiskLevel::ALL, RiskLevel::Low);
            let egress = self.outcome(&f, "egress", None);
            let fallback = self.outcome(&f, "fallback", Some(""));
            if let (Some(name), Some(managed), Some(max_risk), Some(egress), Some(fallback)) =
                (name, managed, max_risk, egress, fallback)
            {
                out.push(Policy {
                    name,
                    description,
                    apps,
                    groups,
                    managed,
                    max_risk,
                    egress,
                    fallback,
                });
            }
        }
        out
    }

    fn defaults(&mut self, node: &Node) -> Option<Defaults> {
        let f = Fields::open(
            self.sink,
            node,
            "defaults",
            &["egress", "fallback", "deny_status"],
        )?;
        let egress = self.outcome(&f, "egress", Some("public"));
        let fallback = self.outcome(&f, "fallback", Some("public"));
        let deny_status = match f.get("deny_status") {
            Some(e) => match integer(self.sink, &e.node, &f.key_path("deny_status"), 100, 599)? {
                403 => Some(DenyStatus::Forbidden),
                502 => Some(DenyStatus::BadGateway),
                other => {
                    self.sink
                        .error(
                            &e.node.span,
                            &f.key_path("deny_status"),
                            format!("{other} is not a deny status"),
                        )
                        .expected("403, or 502 (sent with Proxy-Status error=connection_refused)");
                    None
                }
            },
            None => Some(DenyStatus::BadGateway),
        };
        Some(Defaults {
            egress: egress?,
            fallback: fallback?,
            deny_status: deny_status?,
        })
    }

    fn events(&mut self, node: &Node) -> Option<Events> {
        let f = Fields::open(self.sink, node, "events", &["file"])?;
        let file = match f.get("file") {
            Some(e) => Some(self.path(&e.node, &f.key_path("file"))?.value),
            None => None,
        };
        Some(Events { file })
    }

    fn logging(&mut self, node: &Node) -> Option<Logging> {
        let f = Fields::open(self.sink, node, "logging", &["level", "format"])?;
        const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
        let level = match f.get("level") {
            Some(e) => parsed(
                self.sink,
                &e.node,
                &f.key_path("level"),
                "error, warn, info, debug or trace, optionally with per-module directives",
                |s| {
                    let ok = s.split(',').all(|d| {
                        let lvl = d.rsplit('=').next().unwrap_or("").trim();
                        LEVELS.contains(&lvl)
                    });
                    if ok {
                        Ok(s.to_string())
                    } else {
                        let bad = s
                            .split(',')
                            .map(|d| d.rsplit('=').next().unwrap_or("").trim())
                            .find(|lvl| !LEVELS.contains(lvl))
                            .unwrap_or(s);
                        Err(match did_you_mean(bad, LEVELS) {
                            Some(m) => format!("unknown level `{bad}` (did you mean `{m}`?)"),
                            None => format!("unknown level `{bad}`"),
                        })
                    }
                },
            )
            .map(|s| s.value),
            None => Some("info".to_string()),
        };
        let format = self.choice_key(
            &f,
            "format",
            &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            LogFormat::Text,
        );
        Some(Logging {
            level: level?,
            format: format?,
        })
    }
}
