//! A Microsoft identity platform + Graph (Intune managed devices) stand-in, on one server.
//!
//! Routes (shapes from Microsoft's documentation):
//! - `POST /{tenant}/oauth2/v2.0/token` — form `grant_type=client_credentials`, `client_id`,
//!   `client_secret`, `scope` ending in `/.default` → `{token_type: "Bearer", expires_in,
//!   ext_expires_in, access_token}`; a wrong secret → 401 `{"error": "invalid_client",
//!   "error_description": "AADSTS7000215: …"}`; an unknown tenant → 400 `invalid_request`.
//! - `GET /v1.0/deviceManagement/managedDevices` — `$select` (only those properties and `id`
//!   are returned), `$filter` (`serialNumber eq '…'` only), `$skiptoken` (from the next link)
//!   → `{"@odata.context", "value": [managedDevice…], "@odata.nextLink"}` with
//!   [`IntuneStandin::set_page_size`] devices a page.
//! - Graph needs `Authorization: Bearer <unexpired token>`, else 401 with an
//!   `InvalidAuthenticationToken` error object.

use super::{percent_decode, serve, Common, Handler, Req, Resp, Server, Tokens};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One managed device (the properties the appliance selects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedDevice {
    pub serial: String,
    /// `compliant`, `noncompliant`, `inGracePeriod`, `unknown`, …
    pub compliance_state: String,
    /// `secured`, `lowSeverity`, …, `unknown`.
    pub threat_state: String,
    /// `iOS`, `macOS`, `Windows`, …
    pub os: String,
    /// `managed`, `retirePending`, …
    pub management_state: String,
    pub udid: Option<String>,
    /// ISO 8601, e.g. `2026-01-01T00:00:00Z`.
    pub last_sync: String,
}

impl ManagedDevice {
    pub fn compliant(serial: &str) -> ManagedDevice {
        ManagedDevice {
            serial: serial.into(),
            compliance_state: "compliant".into(),
            threat_state: "secured".into(),
            os: "macOS".into(),
            management_state: "managed".into(),
            udid: Some(format!("UDID-{serial}")),
            last_sync: "2026-01-01T00:00:00Z".into(),
        }
    }
}

#[derive(Debug)]
struct State {
    tenant: String,
    client_id: String,
    client_secret: String,
    tokens: Tokens,
    /// Graph id → device.
    devices: BTreeMap<String, ManagedDevice>,
    page_size: usize,
    base_url: String,
    /// Where next links point (default: this server); a test sets another origin.
    next_link_base: Option<String>,
}

#[derive(Debug)]
struct IntuneHandler {
    state: Mutex<State>,
    common: Mutex<Common>,
}

/// A running Intune stand-in (login and Graph at the same base URL).
#[derive(Debug)]
pub struct IntuneStandin {
    pub server: Server,
    handler: Arc<IntuneHandler>,
}

impl IntuneStandin {
    /// Serves on 127.0.0.1:`port` (0: a random one).
    pub async fn start(
        port: u16,
        tenant: &str,
        client_id: &str,
        client_secret: &str,
        devices: Vec<ManagedDevice>,
        token_lifetime: Duration,
    ) -> IntuneStandin {
        let handler = Arc::new(IntuneHandler {
            state: Mutex::new(State {
                tenant: tenant.into(),
                client_id: client_id.into(),
                client_secret: client_secret.into(),
                tokens: Tokens::new(token_lifetime),
                devices: BTreeMap::new(),
                page_size: 100,
                base_url: String::new(),
                next_link_base: None,
            }),
            common: Mutex::new(Common::default()),
        });
        let server = serve("intune", port, handler.clone()).await;
        {
            let mut st = handler.state.lock().unwrap();
            st.base_url = server.base_url.clone();
            for (i, d) in devices.into_iter().enumerate() {
                st.devices.insert(graph_id(i as u32 + 1), d);
            }
        }
        IntuneStandin { server, handler }
    }

    pub fn url(&self) -> &str {
        &self.server.base_url
    }

    /// Changes the devices (by Graph id; ids from [`graph_id`]).
    pub fn with_devices<R>(&self, f: impl FnOnce(&mut BTreeMap<String, ManagedDevice>) -> R) -> R {
        f(&mut self.handler.state.lock().unwrap().devices)
    }

    pub fn set_page_size(&self, n: usize) {
        self.handler.state.lock().unwrap().page_size = n.max(1);
    }

    /// Next links point at `base` instead of this server (a misbehaving or hostile answer).
    pub fn set_next_link_base(&self, base: &str) {
        self.handler.state.lock().unwrap().next_link_base = Some(base.to_string());
    }

    pub fn set_token_lifetime(&self, d: Duration) {
        self.handler.state.lock().unwrap().tokens.lifetime = d;
    }

    pub fn tokens_issued(&self) -> u64 {
        self.handler.state.lock().unwrap().tokens.count()
    }

    pub fn common(&self) -> MutexGuard<'_, Common> {
        self.handler.common.lock().unwrap()
    }
}

/// The Graph id (a GUID) of the n-th device.
pub fn graph_id(n: u32) -> String {
    format!("{n:08x}-0000-4000-8000-000000000000")
}

impl IntuneHandler {
    fn token(&self, req: &Req, tenant: &str) -> Resp {
        let form = req.form();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let mut st = self.state.lock().unwrap();
        if tenant != st.tenant {
            return Resp::Json(
                400,
                json!({"error": "invalid_request", "error_description": "AADSTS90002: Tenant not found."}),
            );
        }
        if get("grant_type") != Some("client_credentials") {
            return Resp::Json(400, json!({"error": "unsupported_grant_type"}));
        }
        if !get("scope").is_some_and(|s| s.ends_with("/.default")) {
            return Resp::Json(
                400,
                json!({"error": "invalid_scope", "error_description": "AADSTS1002012: scope must end in /.default"}),
            );
        }
        if get("client_id") != Some(st.client_id.as_str())
            || get("client_secret") != Some(st.client_secret.as_str())
        {
            return Resp::Json(
                401,
                json!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}),
            );
        }
        let (token, expires_in) = st.tokens.issue();
        Resp::Json(
            200,
            json!({"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}),
        )
    }

    fn managed_devices(&self, req: &Req) -> Resp {
        let st = self.state.lock().unwrap();
        let select: Option<Vec<String>> = req
            .param("$select")
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
        let filter_serial = match req.param("$filter") {
            None => None,
            Some(f) => match f
                .strip_prefix("serialNumber eq '")
                .and_then(|r| r.strip_suffix('\''))
            {
                Some(v) => Some(v.replace("''", "'")),
                None => {
                    return Resp::Json(
                        400,
                        json!({"error": {"code": "BadRequest", "message": "Invalid filter clause"}}),
                    )
                }
            },
        };
        let skip: usize = req
            .param("$skiptoken")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let all: Vec<(&String, &ManagedDevice)> = st
            .devices
            .iter()
            .filter(|(_, d)| filter_serial.as_ref().is_none_or(|s| d.serial == *s))
            .collect();
        let page: Vec<Value> = all
            .iter()
            .skip(skip)
            .take(st.page_size)
            .map(|(id, d)| {
                let full = json!({
                    "id": id, "userId": "", "deviceName": format!("dev-{}", d.serial),
                    "managedDeviceOwnerType": "company", "enrolledDateTime": "2025-01-01T00:00:00Z",
                    "lastSyncDateTime": d.last_sync, "operatingSystem": d.os,
                    "complianceState": d.compliance_state, "jailBroken": "False",
                    "managementAgent": "mdm", "osVersion": "15.0",
                    "azureADDeviceId": format!("aad-{}", d.serial),
                    "partnerReportedThreatState": d.threat_state,
                    "managementState": d.management_state,
                    "serialNumber": d.serial, "udid": d.udid, "model": "MacBookPro"
                });
                match &select {
                    None => full,
                    Some(fields) => {
                        let mut m = Map::new();
                        if let Value::Object(o) = full {
                            for (k, v) in o {
                                if k == "id" || fields.contains(&k) {
                                    m.insert(k, v);
                                }
                            }
                        }
                        Value::Object(m)
                    }
                }
            })
            .collect();
        let mut body = json!({
            "@odata.context": format!("{}/v1.0/$metadata#deviceManagement/managedDevices", st.base_url),
            "value": page,
        });
        if skip + st.page_size < all.len() {
            // Keep the caller's other options, as Graph does, with a new skip token.
            let mut q: Vec<String> = req
                .raw_query
                .split('&')
                .filter(|p| !p.is_empty() && !percent_decode(p).starts_with("$skiptoken="))
                .map(str::to_string)
                .collect();
            q.push(format!("$skiptoken={}", skip + st.page_size));
            body["@odata.nextLink"] = json!(format!(
                "{}/v1.0/deviceManagement/managedDevices?{}",
                st.next_link_base.as_deref().unwrap_or(&st.base_url),
                q.join("&")
            ));
        }
        Resp::Json(200, body)
    }
}

impl Handler for IntuneHandler {
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
        if !self.state.lock().unwrap().tokens.valid(req) {
            return Resp::Json(
                401,
                json!({"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}}),
            );
        }
        match (req.method.as_str(), req.path.as_str()) {
            ("GET", "/v1.0/deviceManagement/managedDevices") => self.managed_devices(req),
            _ => Resp::Json(
                404,
                json!({"error": {"code": "ResourceNotFound", "message": "not found"}}),
            ),
        }
    }

    fn common(&self) -> &Mutex<Common> {
        &self.common
    }

    fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.revoke_all();
    }
}
