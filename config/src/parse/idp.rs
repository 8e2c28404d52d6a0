//! `[idp]`: identity providers whose trusted location follows the trusted egress addresses.

use super::Reader;
use crate::model::*;
use crate::tree::{self, parsed, Fields, Node, NodeValue, Spanned};

/// Longest display name we write (Entra's portal refuses longer names; Graph documents none).
const MAX_NAME: usize = 256;

impl Reader<'_, '_> {
    pub(super) fn idp(&mut self, node: &Node) -> Option<Idp> {
        let f = Fields::open(self.sink, node, "idp", &["entra"])?;
        let entra = match f.get("entra") {
            Some(e) if !matches!(e.node.value, NodeValue::Table(_)) => {
                tree::wrong_type(
                    self.sink,
                    &e.node,
                    "idp.entra",
                    "a table ([idp.entra] with tenant_id, client_id, client_secret_file)",
                );
                return None;
            }
            Some(e) => Some(self.entra(&e.node)?),
            None => None,
        };
        Some(Idp { entra })
    }

    fn entra(&mut self, node: &Node) -> Option<EntraIdp> {
        let f = Fields::open(
            self.sink,
            node,
            "idp.entra",
            &[
                "tenant_id",
                "client_id",
                "client_secret_file",
                "named_location",
                "graph_url",
                "login_url",
                "extra_addresses",
            ],
        )?;
        let tenant_id = match f.get("tenant_id") {
            Some(e) => parsed(
                self.sink,
                &e.node,
                "idp.entra.tenant_id",
                "the directory (tenant) id, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47, or a verified domain such as contoso.onmicrosoft.com",
                |s| {
                    let s = s.trim();
                    if s.is_empty() {
                        return Err("empty tenant id".to_string());
                    }
                    if ["common", "organizations", "consumers"].contains(&s.to_ascii_lowercase().as_str()) {
                        // Microsoft identity platform: client credentials need a real tenant.
                        return Err("not a tenant: the client credentials grant needs the tenant's own id or domain".to_string());
                    }
                    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                        return Err("only letters, digits, `-` and `.` may appear in a tenant id or domain".to_string());
                    }
                    Ok(s.to_string())
                },
            ),
            None => {
                f.missing(self.sink, "tenant_id", "the directory (tenant) id");
                None
            }
        };
        let client_id = self.string_key(&f, "client_id", true);
        let client_secret_file = self.path_key(&f, "client_secret_file", true);
        let named_location = match f.get("named_location") {
            Some(e) => parsed(
                self.sink,
                &e.node,
                "idp.entra.named_location",
                "a display name such as \"attestgate trusted egress\"",
                |s| {
                    if s.trim().is_empty() {
                        Err("empty name".to_string())
                    } else if s.trim() != s {
                        Err("leading or trailing blanks".to_string())
                    } else if s.chars().any(char::is_control) {
                        Err("control characters".to_string())
                    } else if s.chars().count() > MAX_NAME {
                        Err(format!("longer than {MAX_NAME} characters"))
                    } else {
                        Ok(s.to_string())
                    }
                },
            ),
            None => Some(Spanned::new(
                DEFAULT_ENTRA_NAMED_LOCATION.to_string(),
                f.span.clone(),
            )),
        };
        let graph_url = match f.get("graph_url") {
            Some(_) => self.https_url(&f, "graph_url"),
            None => Some(DEFAULT_GRAPH_URL.to_string()),
        };
        let login_url = match f.get("login_url") {
            Some(_) => self.https_url(&f, "login_url"),
            None => Some(DEFAULT_LOGIN_URL.to_string()),
        };
        let extra_addresses = self.ip_list(&f, "extra_addresses");
        Some(EntraIdp {
            tenant_id: tenant_id?,
            client_id: client_id?.value,
            client_secret_file: client_secret_file?,
            named_location: named_location?,
            graph_url: graph_url?,
            login_url: login_url?,
            extra_addresses,
        })
    }
}
