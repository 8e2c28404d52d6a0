//! A Jamf Pro stand-in.
//!
//! Routes (shapes from Jamf's developer documentation):
//! - `POST /api/oauth/token` — form `grant_type=client_credentials`, `client_id`,
//!   `client_secret` → `{access_token, scope, token_type: "Bearer", expires_in}`; a wrong client
//!   → 401 `{"error": "invalid_client"}`.
//! - `GET /JSSResource/computergroups/id/{id}` and `/JSSResource/mobiledevicegroups/id/{id}` —
//!   with `Accept: application/json` → `{"computer_group": {"id", "name", "is_smart", "site",
//!   "criteria", "computers": [{"id", "name", "mac_address", "alt_mac_address",
//!   "serial_number"}]}}` / `{"mobile_device_group": {…, "mobile_devices": [{"id", "name",
//!   "mac_address", "udid", "wifi_mac_address", "serial_number"}]}}`; without it, XML; unknown
//!   id → 404.
//! - `GET /api/v1/computers-inventory` — `section` (GENERAL, HARDWARE, EXTENSION_ATTRIBUTES;
//!   sections not asked for are `null`), `page`, `page-size` (≤ 2000), `sort` (results are
//!   always in id order), `filter` (`id=="N"`, `hardware.serialNumber=="S"`) →
//!   `{"totalCount", "results": [{"id": "N", "udid", "general": {"name", "platform",
//!   "remoteManagement": {"managed", "managementUsername"}, …}, "hardware": {"serialNumber",
//!   "model", …}, "extensionAttributes": [{"definitionId", "name", "values", …}]}]}`.
//! - `GET /api/v2/mobile-devices/detail` — likewise with `filter` on `mobileDeviceId` or
//!   `serialNumber` → `{"totalCount", "results": [{"mobileDeviceId", "deviceType", "general":
//!   {"udid", "displayName", "managed", "supervised", …}, "hardware": {"serialNumber", …}}]}`.
//! - Everything but the token needs `Authorization: Bearer <unexpired token>`, else 401.
//!
//! Webhook bodies for every event the appliance reads are built by [`JamfStandin::webhook`]
//! from the current device set, in the documented shapes.

use super::{rsql_eq, serve, Common, Handler, Req, Resp, Server, Tokens};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Computer {
    pub serial: String,
    pub udid: String,
    pub name: String,
    pub managed: bool,
    /// Extension attributes by name.
    pub attributes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MobileDevice {
    pub serial: String,
    pub udid: String,
    pub name: String,
    pub managed: bool,
    /// `iOS`, `tvOS`, `watchOS`, `visionOS`.
    pub device_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub members: BTreeSet<u32>,
}

/// What the stand-in knows; tests change it while it runs.
#[derive(Debug, Clone, Default)]
pub struct JamfData {
    pub computers: BTreeMap<u32, Computer>,
    pub mobile_devices: BTreeMap<u32, MobileDevice>,
    pub computer_groups: BTreeMap<u32, Group>,
    pub mobile_device_groups: BTreeMap<u32, Group>,
}

impl JamfData {
    /// `computers` Macs (ids 1…, serials `C02STAND0001`…) and `mobiles` iPhones (ids 1…,
    /// serials `DMPSTAND0001`…); every other device of each kind is in group 1 "Compliant
    /// Macs" / "Compliant iPhones"; all managed, risk attribute `Risk` = secure.
    pub fn sample(computers: u32, mobiles: u32) -> JamfData {
        let mut d = JamfData::default();
        let mut cg = Group {
            name: "Compliant Macs".into(),
            members: BTreeSet::new(),
        };
        for i in 1..=computers {
            d.computers.insert(
                i,
                Computer {
                    serial: format!("C02STAND{i:04}"),
                    udid: format!("0000{i:04}-AAAA-BBBB-CCCC-000000000000"),
                    name: format!("mac-{i}"),
                    managed: true,
                    attributes: BTreeMap::from([("Risk".to_string(), "secure".to_string())]),
                },
            );
            if i % 2 == 1 {
                cg.members.insert(i);
            }
        }
        let mut mg = Group {
            name: "Compliant iPhones".into(),
            members: BTreeSet::new(),
        };
        for i in 1..=mobiles {
            d.mobile_devices.insert(
                i,
                MobileDevice {
                    serial: format!("DMPSTAND{i:04}"),
                    udid: format!("{i:040x}"),
                    name: format!("iphone-{i}"),
                    managed: true,
                    device_type: "iOS".into(),
                },
            );
            if i % 2 == 1 {
                mg.members.insert(i);
            }
        }
        d.computer_groups.insert(1, cg);
        d.mobile_device_groups.insert(1, mg);
        d
    }
}

#[derive(Debug)]
struct State {
    data: JamfData,
    tokens: Tokens,
    client_id: String,
    client_secret: String,
}

#[derive(Debug)]
struct JamfHandler {
    state: Mutex<State>,
    common: Mutex<Common>,
}

/// A running Jamf Pro stand-in.
#[derive(Debug)]
pub struct JamfStandin {
    pub server: Server,
    handler: Arc<JamfHandler>,
}

impl JamfStandin {
    /// Serves `data` on a random port; tokens live `token_lifetime`.
    pub async fn start(
        client_id: &str,
        client_secret: &str,
        data: JamfData,
        token_lifetime: Duration,
    ) -> JamfStandin {
        Self::start_on(0, client_id, client_secret, data, token_lifetime).await
    }

    pub async fn start_on(
        port: u16,
        client_id: &str,
        client_secret: &str,
        data: JamfData,
        token_lifetime: Duration,
    ) -> JamfStandin {
        let handler = Arc::new(JamfHandler {
            state: Mutex::new(State {
                data,
                tokens: Tokens::new(token_lifetime),
                client_id: client_id.into(),
                client_secret: client_secret.into(),
            }),
            common: Mutex::new(Common::default()),
        });
        let server = serve("jamf", port, handler.clone()).await;
        JamfStandin { server, handler }
    }

    pub fn url(&self) -> &str {
        &self.server.base_url
    }

    /// Changes the device set.
    pub fn with_data<R>(&self, f: impl FnOnce(&mut JamfData) -> R) -> R {
        f(&mut self.handler.state.lock().unwrap().data)
    }

    /// Faults, log and latency.
    pub fn common(&self) -> MutexGuard<'_, Common> {
        self.handler.common.lock().unwrap()
    }

    pub fn set_token_lifetime(&self, d: Duration) {
        self.handler.state.lock().unwrap().tokens.lifetime = d;
    }

    /// Tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.handler.state.lock().unwrap().tokens.count()
    }

    /// A webhook body as Jamf Pro would POST it for `event`, about computer or mobile device
    /// `id` (or smart group `id` for the membership events, with `added` / `removed` device
    /// ids). `None` for an event this stand-in does not build or an unknown id.
    pub fn webhook(&self, event: &str, id: u32, added: &[u32], removed: &[u32]) -> Option<Value> {
        let st = self.handler.state.lock().unwrap();
        let d = &st.data;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_millis() as u64)
            .unwrap_or(0);
        let computer = |cid: u32| -> Option<Value> {
            let c = d.computers.get(&cid)?;
            Some(json!({
                "alternateMacAddress": "", "building": "", "department": "",
                "deviceName": c.name, "emailAddress": "", "ipAddress": "192.0.2.10",
                "jssID": cid, "macAddress": "00:00:5E:00:53:01", "model": "MacBook Pro",
                "osBuild": "24A335", "osVersion": "15.0", "phone": "", "position": "",
                "realName": "", "reportedIpAddress": "192.0.2.10", "room": "",
                "serialNumber": c.serial, "udid": c.udid, "userDirectoryID": "-1",
                "username": "", "managementId": format!("mgmt-{cid}")
            }))
        };
        let mobile = |mid: u32| -> Option<Value> {
            let m = d.mobile_devices.get(&mid)?;
            Some(json!({
                "bluetoothMacAddress": "00:00:5E:00:53:02", "deviceName": m.name,
                "icciID": "", "imei": "", "ipAddress": "192.0.2.11", "jssID": mid,
                "model": "iPhone 15", "modelDisplay": "iPhone 15", "osBuild": "22A3354",
                "osVersion": "18.0", "product": "", "room": "", "serialNumber": m.serial,
                "udid": m.udid, "userDirectoryID": "-1", "username": "", "version": "",
                "wifiMacAddress": "00:00:5E:00:53:03", "managementId": format!("mgmt-m{mid}")
            }))
        };
        let event_body = match event {
            "SmartGroupComputerMembershipChange" | "SmartGroupMobileDeviceMembershipChange" => {
                let is_computer = event == "SmartGroupComputerMembershipChange";
                let group = if is_computer {
                    d.computer_groups.get(&id)?
                } else {
                    d.mobile_device_groups.get(&id)?
                };
                let describe = |ids: &[u32]| -> Vec<Value> {
                    ids.iter()
                        .filter_map(|i| {
                            if is_computer {
                                computer(*i)
                            } else {
                                mobile(*i)
                            }
                        })
                        .collect()
                };
                json!({
                    "computer": is_computer,
                    "groupAddedDevices": describe(added),
                    "groupAddedDevicesIds": added,
                    "groupRemovedDevices": describe(removed),
                    "groupRemovedDevicesIds": removed,
                    "jssid": id,
                    "name": group.name,
                    "smartGroup": true
                })
            }
            "ComputerAdded" | "ComputerInventoryCompleted" | "ComputerPushCapabilityChanged" => {
                computer(id)?
            }
            "ComputerCheckIn" => {
                json!({"computer": computer(id)?, "trigger": "CLIENT_CHECKIN", "username": ""})
            }
            "ComputerPolicyFinished" => {
                json!({"computer": computer(id)?, "policyId": 7, "successful": true})
            }
            "MobileDeviceEnrolled"
            | "MobileDeviceUnEnrolled"
            | "MobileDeviceCheckIn"
            | "MobileDeviceCommandCompleted"
            | "MobileDevicePushSent"
            | "MobileDeviceInventoryCompleted" => mobile(id)?,
            "JSSStartup" | "JSSShutdown" => json!({
                "hostAddress": "127.0.0.1", "institution": "attestgate lab",
                "isClusterMaster": true, "jssUrl": "https://jamf.test/", "webApplicationPath": "/"
            }),
            _ => return None,
        };
        Some(json!({
            "webhook": {"eventTimestamp": ts, "id": 1, "name": "attestgate", "webhookEvent": event},
            "event": event_body
        }))
    }
}

/// The query of an inventory endpoint: paging, sections, an RSQL equality on the id or the
/// serial field.
struct InvQuery {
    page: usize,
    size: usize,
    sections: Vec<String>,
    /// (by id, value)
    filter: Option<(bool, String)>,
}

impl InvQuery {
    fn parse(req: &Req, id_field: &str, serial_field: &str) -> Result<InvQuery, Resp> {
        let page = req.param("page").unwrap_or("0").parse::<usize>();
        let size = req.param("page-size").unwrap_or("100").parse::<usize>();
        let (page, size) = match (page, size) {
            (Ok(p), Ok(s)) if (1..=2000).contains(&s) => (p, s),
            _ => return Err(bad_request("INVALID_FIELD", "page or page-size")),
        };
        let filter = match req.param("filter").map(rsql_eq) {
            None => None,
            Some(Some((f, v))) if f == id_field => Some((true, v)),
            Some(Some((f, v))) if f == serial_field => Some((false, v)),
            Some(_) => return Err(bad_request("INVALID_RSQL_FILTER_FIELD", "filter")),
        };
        Ok(InvQuery {
            page,
            size,
            sections: req
                .params("section")
                .into_iter()
                .map(str::to_string)
                .collect(),
            filter,
        })
    }

    /// Sections not asked for are `null`; none asked for means GENERAL.
    fn wants(&self, section: &str) -> bool {
        (self.sections.is_empty() && section == "GENERAL")
            || self.sections.iter().any(|s| s == section)
    }

    fn matches(&self, id: u32, serial: &str) -> bool {
        match &self.filter {
            None => true,
            Some((true, v)) => id.to_string() == *v,
            Some((false, v)) => serial == v,
        }
    }
}

fn bad_request(code: &str, field: &str) -> Resp {
    Resp::Json(
        400,
        json!({"httpStatus": 400, "errors": [{"code": code, "field": field, "description": "invalid", "id": "0"}]}),
    )
}

fn paged(items: Vec<Value>, page: usize, size: usize) -> Resp {
    let total = items.len();
    let results: Vec<Value> = items.into_iter().skip(page * size).take(size).collect();
    Resp::Json(200, json!({"totalCount": total, "results": results}))
}

impl JamfHandler {
    fn token(&self, req: &Req) -> Resp {
        let form = req.form();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let mut st = self.state.lock().unwrap();
        if get("grant_type") != Some("client_credentials") {
            return Resp::Json(400, json!({"error": "unsupported_grant_type"}));
        }
        if get("client_id") != Some(st.client_id.as_str())
            || get("client_secret") != Some(st.client_secret.as_str())
        {
            return Resp::Json(401, json!({"error": "invalid_client"}));
        }
        let (token, expires_in) = st.tokens.issue();
        Resp::Json(
            200,
            json!({"access_token": token, "scope": "api-role:1", "token_type": "Bearer", "expires_in": expires_in}),
        )
    }

    fn group(&self, req: &Req, computer: bool, id: &str) -> Resp {
        let st = self.state.lock().unwrap();
        let groups = if computer {
            &st.data.computer_groups
        } else {
            &st.data.mobile_device_groups
        };
        let Some(g) = id
            .parse::<u32>()
            .ok()
            .and_then(|i| groups.get(&i).map(|g| (i, g)))
        else {
            return Resp::Raw {
                status: 404,
                content_type: "text/html".into(),
                headers: Vec::new(),
                body: b"<html><body>Not Found</body></html>".to_vec(),
            };
        };
        let (gid, g) = g;
        if !req
            .header("accept")
            .unwrap_or("")
            .contains("application/json")
        {
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><{0}><id>{gid}</id><name>{1}</name></{0}>",
                if computer { "computer_group" } else { "mobile_device_group" },
                g.name
            );
            return Resp::Raw {
                status: 200,
                content_type: "application/xml".into(),
                headers: Vec::new(),
                body: xml.into_bytes(),
            };
        }
        let site = json!({"id": -1, "name": "None"});
        let criteria = json!([{"name": "Compliance", "priority": 0, "and_or": "and", "search_type": "is", "value": "ok", "opening_paren": false, "closing_paren": false}]);
        if computer {
            let members: Vec<Value> = g
                .members
                .iter()
                .filter_map(|i| st.data.computers.get(i).map(|c| (i, c)))
                .map(|(i, c)| json!({"id": i, "name": c.name, "mac_address": "00:00:5E:00:53:01", "alt_mac_address": "", "serial_number": c.serial}))
                .collect();
            Resp::Json(
                200,
                json!({"computer_group": {"id": gid, "name": g.name, "is_smart": true, "site": site, "criteria": criteria, "computers": members}}),
            )
        } else {
            let members: Vec<Value> = g
                .members
                .iter()
                .filter_map(|i| st.data.mobile_devices.get(i).map(|m| (i, m)))
                .map(|(i, m)| json!({"id": i, "name": m.name, "mac_address": "00:00:5E:00:53:02", "udid": m.udid, "wifi_mac_address": "00:00:5E:00:53:02", "serial_number": m.serial}))
                .collect();
            Resp::Json(
                200,
                json!({"mobile_device_group": {"id": gid, "name": g.name, "is_smart": true, "site": site, "criteria": criteria, "mobile_devices": members}}),
            )
        }
    }

    /// One page of an inventory list, each record drawn by `render`.
    fn inventory<T>(
        &self,
        req: &Req,
        fields: (&str, &str),
        list: impl Fn(&JamfData) -> &BTreeMap<u32, T>,
        serial: impl Fn(&T) -> &str,
        render: impl Fn(&dyn Fn(&str) -> bool, u32, &T) -> Value,
    ) -> Resp {
        let q = match InvQuery::parse(req, fields.0, fields.1) {
            Ok(q) => q,
            Err(r) => return r,
        };
        let want = |s: &str| q.wants(s);
        let st = self.state.lock().unwrap();
        let items: Vec<Value> = list(&st.data)
            .iter()
            .filter(|(id, d)| q.matches(**id, serial(d)))
            .map(|(id, d)| render(&want, *id, d))
            .collect();
        paged(items, q.page, q.size)
    }

    fn computers_inventory(&self, req: &Req) -> Resp {
        self.inventory(
            req,
            ("id", "hardware.serialNumber"),
            |d| &d.computers,
            |c| &c.serial,
            |want, id, c| {
                let eas: Vec<Value> = c
                    .attributes
                    .iter()
                    .enumerate()
                    .map(|(i, (n, v))| json!({"definitionId": (i + 1).to_string(), "name": n, "description": "", "enabled": true, "multiValue": false, "values": [v], "dataType": "STRING", "options": [], "inputType": "TEXT"}))
                    .collect();
                json!({
                    "id": id.to_string(),
                    "udid": c.udid,
                    "general": if want("GENERAL") { json!({
                        "name": c.name, "lastIpAddress": "192.0.2.10", "platform": "Mac",
                        "supervised": true, "mdmCapable": {"capable": c.managed, "capableUsers": []},
                        "remoteManagement": {"managed": c.managed, "managementUsername": "jamfadmin"},
                        "site": {"id": "-1", "name": "None"}, "extensionAttributes": []
                    }) } else { Value::Null },
                    "hardware": if want("HARDWARE") { json!({
                        "make": "Apple", "model": "MacBook Pro", "modelIdentifier": "Mac15,3",
                        "serialNumber": c.serial, "processorType": "Apple M3", "extensionAttributes": []
                    }) } else { Value::Null },
                    "extensionAttributes": if want("EXTENSION_ATTRIBUTES") { Value::Array(eas) } else { Value::Null },
                    "diskEncryption": Value::Null, "userAndLocation": Value::Null
                })
            },
        )
    }

    fn mobile_inventory(&self, req: &Req) -> Resp {
        self.inventory(
            req,
            ("mobileDeviceId", "serialNumber"),
            |d| &d.mobile_devices,
            |m| &m.serial,
            |want, id, m| {
                json!({
                    "mobileDeviceId": id.to_string(),
                    "deviceType": m.device_type,
                    "general": if want("GENERAL") { json!({
                        "udid": m.udid, "displayName": m.name, "assetTag": "", "osVersion": "18.0",
                        "managed": m.managed, "supervised": true, "deviceOwnershipType": "Institutional",
                        "extensionAttributes": []
                    }) } else { Value::Null },
                    "hardware": if want("HARDWARE") { json!({
                        "serialNumber": m.serial, "model": "iPhone 15", "modelIdentifier": "iPhone15,4",
                        "wifiMacAddress": "00:00:5E:00:53:02"
                    }) } else { Value::Null },
                    "userAndLocation": Value::Null
                })
            },
        )
    }
}

impl Handler for JamfHandler {
    fn handle(&self, req: &Req) -> Resp {
        if req.method == "POST" && req.path == "/api/oauth/token" {
            return self.token(req);
        }
        if !self.state.lock().unwrap().tokens.valid(req) {
            return Resp::Json(401, json!({"httpStatus": 401, "errors": []}));
        }
        if req.method != "GET" {
            return Resp::Json(405, json!({"httpStatus": 405, "errors": []}));
        }
        let path = req.path.as_str();
        if let Some(id) = path.strip_prefix("/JSSResource/computergroups/id/") {
            return self.group(req, true, id);
        }
        if let Some(id) = path.strip_prefix("/JSSResource/mobiledevicegroups/id/") {
            return self.group(req, false, id);
        }
        match path {
            "/api/v1/computers-inventory" => self.computers_inventory(req),
            "/api/v2/mobile-devices/detail" => self.mobile_inventory(req),
            _ => Resp::Json(404, json!({"httpStatus": 404, "errors": []})),
        }
    }

    fn common(&self) -> &Mutex<Common> {
        &self.common
    }

    fn revoke_tokens(&self) {
        self.state.lock().unwrap().tokens.revoke_all();
    }
}
