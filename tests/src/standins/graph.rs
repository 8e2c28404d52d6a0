//! A Microsoft Graph stand-in for Conditional Access: the token endpoint, named locations and
//! policies, built from the documented shapes (Graph v1.0 reference pages "Create
//! namedLocation", "List namedLocations", "Update ipNamedLocation", "List policies",
//! "ipRange"; Microsoft identity platform "client credentials flow"; Graph "error responses").
//!
//! - `POST /{tenant}/oauth2/v2.0/token` (form `grant_type=client_credentials`, `client_id`,
//!   `client_secret`, `scope` ending in `/.default`) → `{token_type, expires_in, access_token}`,
//!   or OAuth errors `{"error": "invalid_client", …}`.
//! - Everything else needs `Authorization: Bearer <unexpired token>`, else 401
//!   `InvalidAuthenticationToken`. Graph errors are `{"error": {"code", "message"}}`.
//! - `GET /v1.0/identity/conditionalAccess/namedLocations[?$filter=displayName eq '…']`:
//!   only that filter form (OData: a quote in the literal written twice; `eq` on strings
//!   ignores case, as directory queries do); others → 400 `BadRequest`. Pages of `page_size`
//!   with `@odata.nextLink` (`$skiptoken`).
//! - `POST …/namedLocations`: `@odata.type` must be `#microsoft.graph.ipNamedLocation` or
//!   `#microsoft.graph.countryNamedLocation`; an IP location needs `displayName` and at least one
//!   range, each `#microsoft.graph.iPv4CidrRange` / `iPv6CidrRange` whose `cidrAddress` is a CIDR
//!   of that family → 201 with the object (`id`, `createdDateTime`, `modifiedDateTime`).
//! - `PATCH …/namedLocations/{id}`: `@odata.type` is required and must be the location's own
//!   type ("You must specify the @odata.type"); `ipRanges` replaces the list → 204.
//! - `GET /v1.0/identity/conditionalAccess/policies` → the policies tests set.
//! - Permission switches: reads or writes answer 403 `AccessDenied` as Graph does when the
//!   token lacks Policy.Read.All / Policy.ReadWrite.ConditionalAccess.

use super::{serve, Common, Handler, Req, Resp, Server, Tokens};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const LOCATIONS: &str = "/v1.0/identity/conditionalAccess/namedLocations";
const POLICIES: &str = "/v1.0/identity/conditionalAccess/policies";

/// A write the stand-in accepted.
#[derive(Debug, Clone)]
pub struct Write {
    pub method: String,
    pub path: String,
    pub body: Value,
}

/// The tenant's state, for tests to read and change.
#[derive(Debug, Default)]
pub struct GraphState {
    /// id → the named location as Graph returns it.
    pub locations: BTreeMap<String, Value>,
    pub policies: Vec<Value>,
    pub writes: Vec<Write>,
    /// Reads answer 403 (no Policy.Read.All).
    pub deny_reads: bool,
    /// Writes answer 403 (no Policy.ReadWrite.ConditionalAccess).
    pub deny_writes: bool,
    pub page_size: usize,
    next_id: u32,
}

#[derive(Debug)]
struct Tenant {
    tenant: String,
    client_id: String,
    client_secret: String,
    tokens: Tokens,
    base_url: String,
}

#[derive(Debug)]
struct GraphHandler {
    tenant: Mutex<Tenant>,
    state: Mutex<GraphState>,
    common: Mutex<Common>,
}

/// A running Graph stand-in (login and Graph at the same base URL).
#[derive(Debug)]
pub struct GraphStandin {
    pub server: Server,
    handler: Arc<GraphHandler>,
}

fn error(status: u16, code: &str, message: &str) -> Resp {
    Resp::Json(status, json!({"error": {"code": code, "message": message}}))
}

/// A well-formed CIDR of the family `v6`, as Graph checks `cidrAddress`.
fn cidr_ok(text: &str, v6: bool) -> bool {
    let Some((addr, len)) = text.split_once('/') else {
        return false;
    };
    let (Ok(addr), Ok(len)) = (addr.parse::<IpAddr>(), len.parse::<u8>()) else {
        return false;
    };
    match addr {
        IpAddr::V4(_) => !v6 && len <= 32,
        IpAddr::V6(_) => v6 && len <= 128,
    }
}

fn check_ranges(ranges: &Value) -> Result<(), Resp> {
    let Some(list) = ranges.as_array() else {
        return Err(error(400, "BadRequest", "ipRanges must be a collection"));
    };
    if list.is_empty() {
        return Err(error(
            400,
            "BadRequest",
            "ipRanges must contain at least one range",
        ));
    }
    for r in list {
        let v6 = match r["@odata.type"].as_str() {
            Some("#microsoft.graph.iPv4CidrRange") => false,
            Some("#microsoft.graph.iPv6CidrRange") => true,
            _ => {
                return Err(error(
                    400,
                    "BadRequest",
                    "each ipRange needs @odata.type #microsoft.graph.iPv4CidrRange or #microsoft.graph.iPv6CidrRange",
                ))
            }
        };
        if !r["cidrAddress"].as_str().is_some_and(|c| cidr_ok(c, v6)) {
            return Err(error(
                400,
                "BadRequest",
                &format!("invalid cidrAddress {}", r["cidrAddress"]),
            ));
        }
    }
    Ok(())
}

impl GraphStandin {
    pub async fn start(port: u16, tenant: &str, client_id: &str, secret: &str) -> GraphStandin {
        let handler = Arc::new(GraphHandler {
            tenant: Mutex::new(Tenant {
                tenant: tenant.into(),
                client_id: client_id.into(),
                client_secret: secret.into(),
                tokens: Tokens::new(Duration::from_secs(3600)),
                base_url: String::new(),
            }),
            state: Mutex::new(GraphState {
                page_size: 100,
                ..GraphState::default()
            }),
            common: Mutex::new(Common::default()),
        });
        let server = serve("graph", port, handler.clone()).await;
        handler.tenant.lock().unwrap().base_url = server.base_url.clone();
        GraphStandin { server, handler }
    }

    pub fn url(&self) -> &str {
        &self.server.base_url
    }

    pub fn state(&self) -> MutexGuard<'_, GraphState> {
        self.handler.state.lock().unwrap()
    }

    pub fn common(&self) -> MutexGuard<'_, Common> {
        self.handler.common.lock().unwrap()
    }

    pub fn tokens_issued(&self) -> u64 {
        self.handler.tenant.lock().unwrap().tokens.count()
    }

    /// Adds a location as someone else would (through the portal); returns its id.
    pub fn insert_location(&self, mut location: Value) -> String {
        let mut st = self.state();
        st.next_id += 1;
        let id = format!("{:08x}-1111-4000-8000-000000000000", st.next_id);
        location["id"] = json!(id);
        st.locations.insert(id.clone(), location);
        id
    }

    /// The CIDRs of the location called `name` (case-insensitive), sorted.
    pub fn ranges_of(&self, name: &str) -> Option<Vec<String>> {
        let st = self.state();
        let l = st.locations.values().find(|l| {
            l["displayName"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(name))
        })?;
        let mut v: Vec<String> = l["ipRanges"]
            .as_array()?
            .iter()
            .filter_map(|r| r["cidrAddress"].as_str().map(str::to_string))
            .collect();
        v.sort();
        Some(v)
    }
}

impl GraphHandler {
    fn token(&self, req: &Req, tenant: &str) -> Resp {
        let form = req.form();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let mut t = self.tenant.lock().unwrap();
        let oauth = |status: u16, code: &str, description: &str| {
            Resp::Json(
                status,
                json!({"error": code, "error_description": description}),
            )
        };
        if tenant != t.tenant {
            return oauth(400, "invalid_request", "AADSTS90002: Tenant not found.");
        }
        if get("grant_type") != Some("client_credentials") {
            return oauth(
                400,
                "unsupported_grant_type",
                "only client_credentials here",
            );
        }
        if get("scope") != Some(&format!("{}/.default", t.base_url)) {
            return oauth(
                400,
                "invalid_scope",
                "AADSTS1002012: the scope must be the resource's /.default",
            );
        }
        if get("client_id") != Some(t.client_id.as_str())
            || get("client_secret") != Some(t.client_secret.as_str())
        {
            return oauth(
                401,
                "invalid_client",
                "AADSTS7000215: Invalid client secret provided.",
            );
        }
        let (token, expires_in) = t.tokens.issue();
        Resp::Json(
            200,
            json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}),
        )
    }

    fn page(&self, req: &Req, path: &str, all: Vec<Value>, page_size: usize) -> Resp {
        let base = self.tenant.lock().unwrap().base_url.clone();
        let skip: usize = req
            .param("$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let value: Vec<Value> = all.iter().skip(skip).take(page_size).cloned().collect();
        let mut body = json!({"@odata.context": format!("{base}/v1.0/$metadata#{}", path.trim_start_matches("/v1.0/")), "value": value});
        if skip + page_size < all.len() {
            let mut q: Vec<String> = req
                .raw_query
                .split('&')
                .filter(|p| {
                    !p.is_empty()
                        && !p.starts_with("$skiptoken=")
                        && !p.starts_with("%24skiptoken=")
                })
                .map(str::to_string)
                .collect();
            q.push(format!("$skiptoken={}", skip + page_size));
            body["@odata.nextLink"] = json!(format!("{base}{path}?{}", q.join("&")));
        }
        Resp::Json(200, body)
    }

    fn list_locations(&self, req: &Req) -> Resp {
        let name = match req.param("$filter") {
            None => None,
            Some(f) => match f
                .strip_prefix("displayName eq '")
                .and_then(|r| r.strip_suffix('\''))
            {
                Some(v) if !v.replace("''", "").contains('\'') => Some(v.replace("''", "'")),
                _ => return error(400, "BadRequest", "Invalid filter clause"),
            },
        };
        let st = self.state.lock().unwrap();
        let all: Vec<Value> = st
            .locations
            .values()
            .filter(|l| {
                name.as_ref().is_none_or(|n| {
                    l["displayName"]
                        .as_str()
                        .is_some_and(|d| d.eq_ignore_ascii_case(n))
                })
            })
            .cloned()
            .collect();
        let size = st.page_size;
        drop(st);
        self.page(req, LOCATIONS, all, size)
    }

    fn create_location(&self, req: &Req) -> Resp {
        let Ok(mut body) = serde_json::from_slice::<Value>(&req.body) else {
            return error(400, "BadRequest", "Unable to read JSON request payload.");
        };
        match body["@odata.type"].as_str() {
            Some("#microsoft.graph.ipNamedLocation") => {
                if let Err(r) = check_ranges(&body["ipRanges"]) {
                    return r;
                }
            }
            Some("#microsoft.graph.countryNamedLocation") => {}
            _ => {
                return error(
                    400,
                    "BadRequest",
                    "Request body must contain @odata.type of a namedLocation subtype",
                )
            }
        }
        if body["displayName"]
            .as_str()
            .is_none_or(|n| n.trim().is_empty())
        {
            return error(400, "BadRequest", "displayName is required");
        }
        if body.get("isTrusted").is_none() {
            body["isTrusted"] = json!(false);
        }
        body["createdDateTime"] = json!("2026-01-01T00:00:00Z");
        body["modifiedDateTime"] = json!("2026-01-01T00:00:00Z");
        let mut st = self.state.lock().unwrap();
        st.next_id += 1;
        let id = format!("{:08x}-0000-4000-8000-000000000000", st.next_id);
        body["id"] = json!(id);
        st.locations.insert(id, body.clone());
        Resp::Json(201, body)
    }

    fn update_location(&self, req: &Req, id: &str) -> Resp {
        let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
            return error(400, "BadRequest", "Unable to read JSON request payload.");
        };
        let mut st = self.state.lock().unwrap();
        let Some(current) = st.locations.get_mut(id) else {
            return error(
                404,
                "ResourceNotFound",
                &format!("Resource '{id}' does not exist."),
            );
        };
        if body["@odata.type"] != current["@odata.type"] {
            return error(
                400,
                "BadRequest",
                "Request body must contain @odata.type matching the location's type",
            );
        }
        if let Some(r) = body.get("ipRanges") {
            if let Err(resp) = check_ranges(r) {
                return resp;
            }
        }
        for key in ["displayName", "isTrusted", "ipRanges"] {
            if let Some(v) = body.get(key) {
                current[key] = v.clone();
            }
        }
        current["modifiedDateTime"] = json!("2026-01-02T00:00:00Z");
        Resp::Raw {
            status: 204,
            content_type: "application/json".into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
}

impl Handler for GraphHandler {
    fn handle(&self, req: &Req) -> Resp {
        if req.method == "POST" {
            if let Some(tenant) = req
                .path
                .strip_prefix('/')
                .and_then(|p| p.strip_suffix("/oauth2/v2.0/token"))
            {
                return self.token(req, tenant);
            }
        }
        if !self.tenant.lock().unwrap().tokens.valid(req) {
            return error(
                401,
                "InvalidAuthenticationToken",
                "Access token is empty or invalid.",
            );
        }
        let (deny_reads, deny_writes) = {
            let st = self.state.lock().unwrap();
            (st.deny_reads, st.deny_writes)
        };
        let write = req.method != "GET";
        if (write && deny_writes) || (!write && deny_reads) {
            return error(
                403,
                "AccessDenied",
                "You cannot perform the requested operation, required scopes are missing in the token.",
            );
        }
        let resp = match (req.method.as_str(), req.path.as_str()) {
            ("GET", LOCATIONS) => self.list_locations(req),
            ("POST", LOCATIONS) => self.create_location(req),
            ("GET", POLICIES) => {
                let st = self.state.lock().unwrap();
                let (all, size) = (st.policies.clone(), st.page_size);
                drop(st);
                self.page(req, POLICIES, all, size)
            }
            (m, p) => match p.strip_prefix(LOCATIONS).and_then(|r| r.strip_prefix('/')) {
                Some(id) if m == "PATCH" => self.update_location(req, id),
                Some(id) if m == "GET" => match self.state.lock().unwrap().locations.get(id) {
                    Some(l) => Resp::Json(200, l.clone()),
                    None => error(404, "ResourceNotFound", "not found"),
                },
                _ => error(
                    404,
                    "ResourceNotFound",
                    "Resource not found for the segment.",
                ),
            },
        };
        if write && (200..300).contains(&resp.status()) {
            self.state.lock().unwrap().writes.push(Write {
                method: req.method.clone(),
                path: req.path.clone(),
                body: serde_json::from_slice(&req.body).unwrap_or(Value::Null),
            });
        }
        resp
    }

    fn common(&self) -> &Mutex<Common> {
        &self.common
    }

    fn revoke_tokens(&self) {
        self.tenant.lock().unwrap().tokens.revoke_all();
    }
}
