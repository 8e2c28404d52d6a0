//! `[compliance]`: sources and the webhook.

use super::{entries, Reader};
use crate::model::*;
use crate::tree::{self, array, choice, integer, parsed, string, Fields, Node, NodeValue};
use std::net::SocketAddr;
use std::time::Duration;

impl Reader<'_, '_> {
    pub(super) fn compliance(&mut self, node: &Node) -> Option<Compliance> {
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
                "store",
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
        let store = match f.get("store") {
            Some(_) => Some(self.path_key(&f, "store", false)?.value),
            None => None,
        };
        Some(Compliance {
            store,
            max_age: max_age?,
            refresh_interval: refresh_interval?,
            compliant_groups,
            sources,
            webhook,
        })
    }

    pub(super) fn source(&mut self, node: &Node, path: &str) -> Option<SourceKind> {
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

    pub(super) fn https_url(&mut self, f: &Fields, key: &str) -> Option<String> {
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

    pub(super) fn webhook(&mut self, node: &Node) -> Option<Webhook> {
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
}
