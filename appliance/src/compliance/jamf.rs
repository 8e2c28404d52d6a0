//! The Jamf Pro source: smart-group membership and inventory through the Jamf Pro and Classic
//! APIs, and the parser of Jamf webhooks (which are hints, never the truth).
//!
//! # What we call and which fields we rely on
//!
//! Every request carries `Accept: application/json` and `Authorization: Bearer <token>`.
//! "Required" means a missing field or a wrong type fails the whole sync (nothing applied);
//! unknown fields are ignored.
//!
//! - `POST {url}/api/oauth/token`, form `grant_type=client_credentials&client_id=…&client_secret=…`
//!   → `{access_token, token_type: "Bearer", expires_in}` (required; `scope` ignored).
//! - `GET {url}/JSSResource/computergroups/id/{id}` →
//!   `{"computer_group": {"id", "name", "computers": [{"id", "serial_number"}]}}`: `name`,
//!   `computers[].id` required; `serial_number` optional (used when inventory lacks the member).
//! - `GET {url}/JSSResource/mobiledevicegroups/id/{id}` →
//!   `{"mobile_device_group": {"id", "name", "mobile_devices": [{"id", "serial_number", "udid"}]}}`,
//!   likewise.
//! - `GET {url}/api/v1/computers-inventory?section=GENERAL&section=HARDWARE[&section=EXTENSION_ATTRIBUTES]
//!   &page=N&page-size=M&sort=id%3Aasc[&filter=…]` → `{"totalCount", "results": [{"id" (string of
//!   digits), "udid", "general": {"remoteManagement": {"managed"}, "platform"}, "hardware":
//!   {"serialNumber"}, "extensionAttributes": [{"name", "values"}]}]}`: `totalCount`, `results`,
//!   `id`, `general`, `general.remoteManagement.managed`, `hardware` required; `udid`,
//!   `serialNumber`, `platform`, `extensionAttributes` optional (a record without a serial is
//!   skipped: we key devices by serial). Filters: `hardware.serialNumber=="…"`, `id=="…"` (RSQL).
//! - `GET {url}/api/v2/mobile-devices/detail?section=GENERAL&section=HARDWARE&page=N&page-size=M
//!   &sort=mobileDeviceId%3Aasc[&filter=…]` → `{"totalCount", "results": [{"mobileDeviceId",
//!   "deviceType", "general": {"udid", "managed"}, "hardware": {"serialNumber"}}]}`:
//!   `mobileDeviceId`, `general.managed`, `general`, `hardware` required. Filters:
//!   `serialNumber=="…"`, `mobileDeviceId=="…"`.
//!
//! Paging: pages from 0 until `totalCount` records are read or a page comes back empty; ids
//! seen twice (records shifting between pages) count once; at most 100 000 pages.
//!
//! # Meaning
//!
//! A device's groups are the names of the configured smart groups whose member list holds its
//! Jamf id; `managed` is `remoteManagement.managed` (computers) or `general.managed` (mobile).
//! With `risk_attribute` set, the computer extension attribute of that name holds `secure`,
//! `low`, `medium` or `high`; an absent, empty or other value is `high` (fail closed). Mobile
//! devices carry no risk from Jamf (`None`). Only the kinds with configured groups are read.
//!
//! # Webhooks
//!
//! Jamf signs nothing, so [`parse_webhook`] only extracts what to re-read: for
//! `SmartGroupComputerMembershipChange` / `SmartGroupMobileDeviceMembershipChange` the group
//! (`event.jssid`) and the devices in `event.groupAddedDevicesIds` and
//! `event.groupRemovedDevicesIds`; for `ComputerAdded`, `ComputerInventoryCompleted`,
//! `ComputerPushCapabilityChanged` the computer's `event.jssID` / `serialNumber` / `udid`; for
//! `ComputerCheckIn` and `ComputerPolicyFinished` the same inside `event.computer`; for
//! `MobileDeviceEnrolled`, `MobileDeviceUnEnrolled`, `MobileDeviceCheckIn`,
//! `MobileDeviceCommandCompleted`, `MobileDevicePushSent`, `MobileDeviceInventoryCompleted`
//! the mobile device's `event.jssID` / `serialNumber` / `udid`. [`JamfSource::refresh_hint`]
//! then reads those devices from the API.

use super::http::{deadline_from_now, query_escape, ApiClient, HttpSettings, Secret, TokenRequest};
use super::mdm::{merge_same_serial, platform_name, MdmDevice, SourceError};
use super::normalize_serial;
use config::{RiskLevel, SourceKind};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

const MAX_PAGES: u32 = 100_000;

#[derive(Deserialize)]
struct ComputerGroupAnswer {
    computer_group: ComputerGroup,
}

#[derive(Deserialize)]
struct ComputerGroup {
    name: String,
    computers: Vec<GroupMember>,
}

#[derive(Deserialize)]
struct MobileGroupAnswer {
    mobile_device_group: MobileGroup,
}

#[derive(Deserialize)]
struct MobileGroup {
    name: String,
    mobile_devices: Vec<GroupMember>,
}

#[derive(Deserialize)]
struct GroupMember {
    id: u32,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    udid: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page<T> {
    total_count: u64,
    results: Vec<T>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputerInventory {
    id: String,
    #[serde(default)]
    udid: Option<String>,
    general: ComputerGeneral,
    hardware: Hardware,
    #[serde(default)]
    extension_attributes: Option<Vec<ExtensionAttribute>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputerGeneral {
    remote_management: RemoteManagement,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    extension_attributes: Option<Vec<ExtensionAttribute>>,
}

#[derive(Deserialize)]
struct RemoteManagement {
    managed: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Hardware {
    #[serde(default)]
    serial_number: Option<String>,
}

#[derive(Deserialize)]
struct ExtensionAttribute {
    name: String,
    #[serde(default)]
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MobileInventory {
    mobile_device_id: String,
    #[serde(default)]
    device_type: Option<String>,
    general: MobileGeneral,
    hardware: Hardware,
}

#[derive(Deserialize)]
struct MobileGeneral {
    #[serde(default)]
    udid: Option<String>,
    managed: bool,
}

/// What inventory says about one Jamf record.
#[derive(Debug, Clone)]
struct InvRecord {
    id: u32,
    serial: String,
    udid: Option<String>,
    platform: String,
    managed: bool,
    risk: Option<RiskLevel>,
    risk_reasons: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Computer,
    Mobile,
}

/// A Jamf Pro instance and the groups to read from it.
#[derive(Debug)]
pub struct JamfSource {
    base: String,
    computer_groups: Vec<u32>,
    mobile_device_groups: Vec<u32>,
    risk_attribute: Option<String>,
    client: ApiClient,
}

/// What a webhook asks us to re-read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JamfHint {
    /// `webhook.webhookEvent`.
    pub event: String,
    /// `webhook.name` (which webhook of the Jamf instance sent it).
    pub webhook_name: String,
    /// The smart group that changed, for membership events.
    pub group_id: Option<u32>,
    pub computer_ids: Vec<u32>,
    pub mobile_device_ids: Vec<u32>,
    /// Serials the payload names (upper case).
    pub serials: Vec<String>,
    pub udids: Vec<String>,
}

impl JamfHint {
    /// False for events that concern no device (e.g. `JSSStartup`).
    #[cfg_attr(not(test), allow(dead_code))] // tests
    pub fn names_devices(&self) -> bool {
        !(self.computer_ids.is_empty()
            && self.mobile_device_ids.is_empty()
            && self.serials.is_empty())
    }
}

/// Why a webhook body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Jamf webhook: {0}")]
pub struct WebhookError(pub String);

#[derive(Deserialize)]
struct WebhookBody {
    webhook: WebhookHeader,
    event: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebhookHeader {
    #[serde(default)]
    name: Option<String>,
    webhook_event: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MembershipEvent {
    jssid: u32,
    group_added_devices_ids: Vec<u32>,
    group_removed_devices_ids: Vec<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceEvent {
    #[serde(rename = "jssID")]
    jss_id: u32,
    #[serde(default)]
    serial_number: Option<String>,
    #[serde(default)]
    udid: Option<String>,
}

#[derive(Deserialize)]
struct NestedComputerEvent {
    computer: DeviceEvent,
}

fn decode_event<T: serde::de::DeserializeOwned>(
    event: serde_json::Value,
    name: &str,
) -> Result<T, WebhookError> {
    serde_json::from_value(event).map_err(|e| WebhookError(format!("{name}: {e}")))
}

fn device_hint(hint: &mut JamfHint, d: DeviceEvent, kind: Kind) {
    match kind {
        Kind::Computer => hint.computer_ids.push(d.jss_id),
        Kind::Mobile => hint.mobile_device_ids.push(d.jss_id),
    }
    if let Some(s) = d.serial_number.map(|s| normalize_serial(&s)) {
        if !s.is_empty() {
            hint.serials.push(s);
        }
    }
    if let Some(u) = d.udid.filter(|u| !u.trim().is_empty()) {
        hint.udids.push(u.trim().to_string());
    }
}

/// Reads a Jamf webhook body (JSON) into what to re-read. Events that concern no device give
/// a hint naming nothing; a body that is not a Jamf webhook, or a device event without the
/// device's `jssID`, is an error.
pub fn parse_webhook(body: &[u8]) -> Result<JamfHint, WebhookError> {
    let parsed: WebhookBody =
        serde_json::from_slice(body).map_err(|e| WebhookError(e.to_string()))?;
    let name = parsed.webhook.webhook_event;
    let mut hint = JamfHint {
        event: name.clone(),
        webhook_name: parsed.webhook.name.unwrap_or_default(),
        ..JamfHint::default()
    };
    match name.as_str() {
        "SmartGroupComputerMembershipChange" | "SmartGroupMobileDeviceMembershipChange" => {
            let e: MembershipEvent = decode_event(parsed.event, &name)?;
            hint.group_id = Some(e.jssid);
            let mut ids: Vec<u32> = e.group_added_devices_ids;
            ids.extend(e.group_removed_devices_ids);
            ids.sort_unstable();
            ids.dedup();
            if name == "SmartGroupComputerMembershipChange" {
                hint.computer_ids = ids;
            } else {
                hint.mobile_device_ids = ids;
            }
        }
        "ComputerAdded" | "ComputerInventoryCompleted" | "ComputerPushCapabilityChanged" => {
            let e: DeviceEvent = decode_event(parsed.event, &name)?;
            device_hint(&mut hint, e, Kind::Computer);
        }
        "ComputerCheckIn" | "ComputerPolicyFinished" => {
            let e: NestedComputerEvent = decode_event(parsed.event, &name)?;
            device_hint(&mut hint, e.computer, Kind::Computer);
        }
        "MobileDeviceEnrolled"
        | "MobileDeviceUnEnrolled"
        | "MobileDeviceCheckIn"
        | "MobileDeviceCommandCompleted"
        | "MobileDevicePushSent"
        | "MobileDeviceInventoryCompleted" => {
            let e: DeviceEvent = decode_event(parsed.event, &name)?;
            device_hint(&mut hint, e, Kind::Mobile);
        }
        _ => {}
    }
    Ok(hint)
}

fn parse_id(raw: &str, what: &str) -> Result<u32, SourceError> {
    raw.trim()
        .parse()
        .map_err(|_| SourceError::Inconsistent(format!("{what} id `{raw}` is not a number")))
}

fn risk_from_attribute(
    attr: &str,
    eas: Option<&Vec<ExtensionAttribute>>,
) -> (Option<RiskLevel>, Vec<String>) {
    let value = eas
        .and_then(|list| list.iter().find(|e| e.name == attr))
        .and_then(|e| e.values.as_ref())
        .and_then(|v| v.iter().find(|s| !s.trim().is_empty()))
        .map(|s| s.trim().to_string());
    match value {
        None => (
            Some(RiskLevel::High),
            vec![format!(
                "Jamf attribute `{attr}` has no value (fail closed)"
            )],
        ),
        Some(v) => match v.parse::<RiskLevel>() {
            Ok(r) => (
                Some(r),
                vec![format!("Jamf attribute `{attr}` = {}", r.as_str())],
            ),
            Err(_) => (
                Some(RiskLevel::High),
                vec![format!(
                    "Jamf attribute `{attr}` = `{}` is not a risk level (fail closed)",
                    v.chars().take(40).collect::<String>()
                )],
            ),
        },
    }
}

impl JamfSource {
    pub fn from_config(kind: &SourceKind, settings: &HttpSettings) -> Result<Self, SourceError> {
        let SourceKind::JamfPro {
            url,
            client_id,
            client_secret_file,
            computer_groups,
            mobile_device_groups,
            risk_attribute,
        } = kind
        else {
            return Err(SourceError::Config("not a jamf-pro source".into()));
        };
        let secret = Secret::read(&client_secret_file.value)?;
        Self::new(
            url,
            client_id,
            secret,
            computer_groups.clone(),
            mobile_device_groups.clone(),
            risk_attribute.clone(),
            settings.clone(),
        )
    }

    pub fn new(
        url: &str,
        client_id: &str,
        secret: Secret,
        computer_groups: Vec<u32>,
        mobile_device_groups: Vec<u32>,
        risk_attribute: Option<String>,
        settings: HttpSettings,
    ) -> Result<Self, SourceError> {
        let base = url.trim_end_matches('/').to_string();
        let client = ApiClient::new(
            TokenRequest {
                url: format!("{base}/api/oauth/token"),
                client_id: client_id.to_string(),
                secret,
                scope: None,
            },
            settings,
        )?;
        Ok(JamfSource {
            base,
            computer_groups,
            mobile_device_groups,
            risk_attribute,
            client,
        })
    }

    #[cfg_attr(not(test), allow(dead_code))] // tests
    pub fn client(&self) -> &ApiClient {
        &self.client
    }

    #[cfg(test)]
    pub fn client_mut_for_tests(&mut self) -> &mut ApiClient {
        &mut self.client
    }

    /// Every device in the inventories of the configured kinds, with its groups.
    pub async fn full_sync(&mut self) -> Result<Vec<MdmDevice>, SourceError> {
        let deadline = deadline_from_now(self.client.settings());
        let mut out: Vec<MdmDevice> = Vec::new();
        if !self.computer_groups.is_empty() {
            let groups = self.read_groups(Kind::Computer, deadline).await?;
            let inv = self.inventory(Kind::Computer, None, deadline).await?;
            out.extend(self.assemble(Kind::Computer, &groups, inv, true));
        }
        if !self.mobile_device_groups.is_empty() {
            let groups = self.read_groups(Kind::Mobile, deadline).await?;
            let inv = self.inventory(Kind::Mobile, None, deadline).await?;
            out.extend(self.assemble(Kind::Mobile, &groups, inv, true));
        }
        Ok(merge_by_serial(out))
    }

    /// Re-reads one device by serial (computer and mobile inventories).
    pub async fn refresh_device(&mut self, serial: &str) -> Result<Option<MdmDevice>, SourceError> {
        let serial = normalize_serial(serial);
        if serial.is_empty() {
            return Ok(None);
        }
        let deadline = deadline_from_now(self.client.settings());
        let mut found = Vec::new();
        for kind in self.kinds() {
            let field = match kind {
                Kind::Computer => "hardware.serialNumber",
                Kind::Mobile => "serialNumber",
            };
            let filter = format!("{field}==\"{serial}\"");
            let inv = self.inventory(kind, Some(&filter), deadline).await?;
            if inv.is_empty() {
                continue;
            }
            let groups = self.read_groups(kind, deadline).await?;
            found.extend(self.assemble(kind, &groups, inv, false));
        }
        Ok(merge_by_serial(found)
            .into_iter()
            .find(|d| d.serial == serial))
    }

    /// Re-reads the devices a webhook names. Devices Jamf no longer knows are left out, and so
    /// are membership changes of smart groups this source does not read.
    pub async fn refresh_hint(&mut self, hint: &JamfHint) -> Result<Vec<MdmDevice>, SourceError> {
        let deadline = deadline_from_now(self.client.settings());
        let mut found = Vec::new();
        for (kind, ids) in [
            (Kind::Computer, &hint.computer_ids),
            (Kind::Mobile, &hint.mobile_device_ids),
        ] {
            if ids.is_empty() || !self.kinds().contains(&kind) {
                continue;
            }
            // A smart group we do not read changes nothing we decide on.
            let configured = match kind {
                Kind::Computer => &self.computer_groups,
                Kind::Mobile => &self.mobile_device_groups,
            };
            if hint.group_id.is_some_and(|g| !configured.contains(&g)) {
                continue;
            }
            let groups = self.read_groups(kind, deadline).await?;
            let field = match kind {
                Kind::Computer => "id",
                Kind::Mobile => "mobileDeviceId",
            };
            let mut inv = Vec::new();
            for id in ids {
                let filter = format!("{field}==\"{id}\"");
                inv.extend(self.inventory(kind, Some(&filter), deadline).await?);
            }
            found.extend(self.assemble(kind, &groups, inv, false));
        }
        let mut devices = merge_by_serial(found);
        if hint.computer_ids.is_empty() && hint.mobile_device_ids.is_empty() {
            for s in &hint.serials {
                if let Some(d) = self.refresh_device(s).await? {
                    devices.push(d);
                }
            }
        }
        Ok(merge_by_serial(devices))
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k = Vec::new();
        if !self.computer_groups.is_empty() {
            k.push(Kind::Computer);
        }
        if !self.mobile_device_groups.is_empty() {
            k.push(Kind::Mobile);
        }
        k
    }

    /// Group name and member list (id → serial from the group answer) of each configured group.
    async fn read_groups(
        &mut self,
        kind: Kind,
        deadline: Instant,
    ) -> Result<Vec<(String, BTreeMap<u32, GroupMember>)>, SourceError> {
        let ids = match kind {
            Kind::Computer => self.computer_groups.clone(),
            Kind::Mobile => self.mobile_device_groups.clone(),
        };
        let mut out = Vec::new();
        for id in ids {
            let (name, members) = match kind {
                Kind::Computer => {
                    let url = format!("{}/JSSResource/computergroups/id/{id}", self.base);
                    let a: ComputerGroupAnswer = self.client.get_json(&url, deadline).await?;
                    (a.computer_group.name, a.computer_group.computers)
                }
                Kind::Mobile => {
                    let url = format!("{}/JSSResource/mobiledevicegroups/id/{id}", self.base);
                    let a: MobileGroupAnswer = self.client.get_json(&url, deadline).await?;
                    (
                        a.mobile_device_group.name,
                        a.mobile_device_group.mobile_devices,
                    )
                }
            };
            out.push((name, members.into_iter().map(|m| (m.id, m)).collect()));
        }
        Ok(out)
    }

    /// Every inventory record of a kind (all pages), optionally filtered.
    async fn inventory(
        &mut self,
        kind: Kind,
        filter: Option<&str>,
        deadline: Instant,
    ) -> Result<Vec<InvRecord>, SourceError> {
        let page_size = self.client.settings().page_size.max(1);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let mut read = 0u64;
        for page in 0..MAX_PAGES {
            let mut url = match kind {
                Kind::Computer => {
                    let mut u = format!(
                        "{}/api/v1/computers-inventory?section=GENERAL&section=HARDWARE",
                        self.base
                    );
                    if self.risk_attribute.is_some() {
                        u.push_str("&section=EXTENSION_ATTRIBUTES");
                    }
                    u.push_str("&sort=id%3Aasc");
                    u
                }
                Kind::Mobile => format!(
                    "{}/api/v2/mobile-devices/detail?section=GENERAL&section=HARDWARE&sort=mobileDeviceId%3Aasc",
                    self.base
                ),
            };
            url.push_str(&format!("&page={page}&page-size={page_size}"));
            if let Some(f) = filter {
                url.push_str("&filter=");
                url.push_str(&query_escape(f));
            }
            let (total, records) = match kind {
                Kind::Computer => {
                    let p: Page<ComputerInventory> = self.client.get_json(&url, deadline).await?;
                    let mut recs = Vec::with_capacity(p.results.len());
                    for c in p.results {
                        recs.push(self.computer_record(c)?);
                    }
                    (p.total_count, recs)
                }
                Kind::Mobile => {
                    let p: Page<MobileInventory> = self.client.get_json(&url, deadline).await?;
                    let mut recs = Vec::with_capacity(p.results.len());
                    for m in p.results {
                        recs.push(mobile_record(m)?);
                    }
                    (p.total_count, recs)
                }
            };
            let empty = records.is_empty();
            read += records.len() as u64;
            for r in records.into_iter().flatten() {
                if seen.insert(r.id) {
                    out.push(r);
                }
            }
            if empty || read >= total {
                return Ok(out);
            }
        }
        Err(SourceError::Inconsistent(format!(
            "more than {MAX_PAGES} pages of inventory"
        )))
    }

    fn computer_record(&self, c: ComputerInventory) -> Result<Option<InvRecord>, SourceError> {
        let id = parse_id(&c.id, "computer")?;
        let serial = normalize_serial(c.hardware.serial_number.as_deref().unwrap_or(""));
        if serial.is_empty() {
            tracing::debug!(id, "Jamf computer without a serial number skipped");
            return Ok(None);
        }
        let (risk, risk_reasons) = match &self.risk_attribute {
            Some(attr) => risk_from_attribute(
                attr,
                c.extension_attributes
                    .as_ref()
                    .or(c.general.extension_attributes.as_ref()),
            ),
            None => (None, Vec::new()),
        };
        Ok(Some(InvRecord {
            id,
            serial,
            udid: c.udid.filter(|u| !u.trim().is_empty()),
            platform: platform_name(c.general.platform.as_deref().unwrap_or("macos")),
            managed: c.general.remote_management.managed,
            risk,
            risk_reasons,
        }))
    }

    /// Devices of one kind: each inventory record with the names of the groups holding it,
    /// plus (with `members_without_inventory`) group members inventory did not list, as
    /// unmanaged (fail closed).
    fn assemble(
        &self,
        kind: Kind,
        groups: &[(String, BTreeMap<u32, GroupMember>)],
        inv: Vec<InvRecord>,
        members_without_inventory: bool,
    ) -> Vec<MdmDevice> {
        let platform_default = match kind {
            Kind::Computer => "macos",
            Kind::Mobile => "unknown",
        };
        let mut ids_seen = BTreeSet::new();
        let mut out = Vec::new();
        for r in inv {
            ids_seen.insert(r.id);
            let groups_of: Vec<String> = groups
                .iter()
                .filter(|(_, m)| m.contains_key(&r.id))
                .map(|(n, _)| n.clone())
                .collect();
            out.push(MdmDevice {
                serial: r.serial,
                udids: r.udid.into_iter().collect(),
                platform: r.platform,
                managed: r.managed,
                groups: groups_of,
                risk: r.risk,
                risk_reasons: r.risk_reasons,
            });
        }
        if members_without_inventory {
            let mut extra: BTreeMap<u32, MdmDevice> = BTreeMap::new();
            for (name, members) in groups {
                for (id, m) in members {
                    if ids_seen.contains(id) {
                        continue;
                    }
                    let serial = normalize_serial(m.serial_number.as_deref().unwrap_or(""));
                    if serial.is_empty() {
                        continue;
                    }
                    let d = extra.entry(*id).or_insert_with(|| MdmDevice {
                        serial,
                        udids: m.udid.iter().filter(|u| !u.is_empty()).cloned().collect(),
                        platform: platform_default.into(),
                        managed: false,
                        groups: Vec::new(),
                        risk: None,
                        risk_reasons: vec!["in a Jamf group but not in inventory".into()],
                    });
                    d.groups.push(name.clone());
                }
            }
            out.extend(extra.into_values());
        }
        out
    }
}

fn mobile_record(m: MobileInventory) -> Result<Option<InvRecord>, SourceError> {
    let id = parse_id(&m.mobile_device_id, "mobile device")?;
    let serial = normalize_serial(m.hardware.serial_number.as_deref().unwrap_or(""));
    if serial.is_empty() {
        return Ok(None);
    }
    Ok(Some(InvRecord {
        id,
        serial,
        udid: m.general.udid.filter(|u| !u.trim().is_empty()),
        platform: platform_name(m.device_type.as_deref().unwrap_or("")),
        managed: m.general.managed,
        risk: None,
        risk_reasons: Vec::new(),
    }))
}

/// One device per serial (see [`merge_same_serial`]), sorted by serial.
pub(crate) fn merge_by_serial(devices: Vec<MdmDevice>) -> Vec<MdmDevice> {
    let mut by: BTreeMap<String, MdmDevice> = BTreeMap::new();
    for d in devices {
        match by.get_mut(&d.serial) {
            Some(existing) => merge_same_serial(existing, d),
            None => {
                by.insert(d.serial.clone(), d);
            }
        }
    }
    by.into_values()
        .map(|mut d| {
            d.groups.sort();
            d.groups.dedup();
            d
        })
        .collect()
}
