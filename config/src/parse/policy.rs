//! `[apps.NAME]`, `[[policy]]`, `[defaults]`, `[events]`, `[logging]`.

use super::{entries, Reader};
use crate::diagnostics::did_you_mean;
use crate::model::*;
use crate::tree::{self, array, integer, parsed, string, Entry, Fields, Node, NodeValue};
use crate::units::{check_name, HostPattern, PortRange};
use ipnet::IpNet;

impl Reader<'_, '_> {
    pub(super) fn apps(&mut self, section: Option<&Entry>) -> Vec<App> {
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

    pub(super) fn policies(&mut self, section: Option<&Entry>) -> Vec<Policy> {
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

    pub(super) fn defaults(&mut self, node: &Node) -> Option<Defaults> {
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

    pub(super) fn events(&mut self, node: &Node) -> Option<Events> {
        let f = Fields::open(self.sink, node, "events", &["file"])?;
        let file = match f.get("file") {
            Some(e) => Some(self.path(&e.node, &f.key_path("file"))?.value),
            None => None,
        };
        Some(Events { file })
    }

    pub(super) fn logging(&mut self, node: &Node) -> Option<Logging> {
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
