//! The Microsoft Intune source: managed devices through Microsoft Graph.
//!
//! # What we call and which fields we rely on
//!
//! - `POST {login_url}/{tenant_id}/oauth2/v2.0/token`, form `grant_type=client_credentials&
//!   client_id=…&client_secret=…&scope=https://graph.microsoft.com/.default` (the scope's host
//!   follows `graph_url`) → `{access_token, token_type: "Bearer", expires_in}` (required).
//! - `GET {graph_url}/v1.0/deviceManagement/managedDevices?$select=id,serialNumber,
//!   complianceState,partnerReportedThreatState,operatingSystem,managementState,
//!   azureADDeviceId,lastSyncDateTime,udid[&$filter=serialNumber eq '…']` →
//!   `{"value": [ … ], "@odata.nextLink": "…"}`. Per device `id`, `complianceState`,
//!   `partnerReportedThreatState` and `managementState` are required (strings; a missing one or
//!   a wrong type fails the whole sync); `serialNumber`, `operatingSystem`, `lastSyncDateTime`,
//!   `udid` may be absent or null. `value` is required.
//! - Paging follows `@odata.nextLink` until it is absent; a next link outside `graph_url` is
//!   refused (it would receive our token); at most 100 000 pages.
//!
//! # Mapping
//!
//! - `complianceState == "compliant"` → the device is in the configured `compliant_group`;
//!   every other state (`noncompliant`, `inGracePeriod`, `conflict`, `error`, `unknown`,
//!   `configManager`) → in no group (fail closed).
//! - `managementState == "managed"` → managed; any other (`retirePending`, `wipePending`,
//!   `discovered`, `unhealthy`, …) → not managed.
//! - `partnerReportedThreatState` (Graph enum `managedDevicePartnerReportedHealthState`) → risk:
//!
//!   | Graph value | risk | why |
//!   |---|---|---|
//!   | `secured` | secure | the MTD partner says so |
//!   | `lowSeverity` / `mediumSeverity` / `highSeverity` | low / medium / high | as reported |
//!   | `compromised` | high | active threat the user cannot fix |
//!   | `misconfigured` | high | the partner cannot assess the device (fail closed) |
//!   | `activated`, `deactivated`, `unresponsive` | high | a partner exists but the health is not known (fail closed) |
//!   | `unknown` | none | no MTD partner reports on this device: Intune says nothing about risk |
//!   | anything else | high | a value we do not know (fail closed) |
//!
//! - Devices without a serial number are skipped (we key devices by serial). When several
//!   records share a serial (a re-enrolled device leaves its old record until clean-up), the
//!   one with the latest `lastSyncDateTime` wins (ISO 8601 UTC strings as Graph prints them
//!   compare in time order).

use super::http::{deadline_from_now, query_escape, ApiClient, HttpSettings, Secret, TokenRequest};
use super::mdm::{platform_name, MdmDevice, SourceError};
use super::normalize_serial;
use config::{RiskLevel, SourceKind};
use serde::Deserialize;
use std::collections::BTreeMap;

const MAX_PAGES: u32 = 100_000;
const SELECT: &str = "id,serialNumber,complianceState,partnerReportedThreatState,operatingSystem,managementState,azureADDeviceId,lastSyncDateTime,udid";

#[derive(Deserialize)]
struct GraphPage {
    value: Vec<ManagedDevice>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManagedDevice {
    #[allow(dead_code)]
    id: String,
    #[serde(default)]
    serial_number: Option<String>,
    compliance_state: String,
    partner_reported_threat_state: String,
    #[serde(default)]
    operating_system: Option<String>,
    management_state: String,
    #[serde(default)]
    last_sync_date_time: Option<String>,
    #[serde(default)]
    udid: Option<String>,
}

/// The risk Intune's `partnerReportedThreatState` means (see the table in the module docs),
/// with the reason in words.
pub fn threat_risk(state: &str) -> (Option<RiskLevel>, Option<String>) {
    let (risk, why) = match state {
        "secured" => (Some(RiskLevel::Secure), "secured by the MTD partner"),
        "lowSeverity" => (
            Some(RiskLevel::Low),
            "low threat reported by the MTD partner",
        ),
        "mediumSeverity" => (
            Some(RiskLevel::Medium),
            "medium threat reported by the MTD partner",
        ),
        "highSeverity" => (
            Some(RiskLevel::High),
            "high threat reported by the MTD partner",
        ),
        "compromised" => (Some(RiskLevel::High), "compromised, says the MTD partner"),
        "misconfigured" => (
            Some(RiskLevel::High),
            "misconfigured for the MTD partner: health not assessed (fail closed)",
        ),
        "activated" | "deactivated" | "unresponsive" => (
            Some(RiskLevel::High),
            "the MTD partner has not reported health (fail closed)",
        ),
        "unknown" => return (None, None),
        _ => (
            Some(RiskLevel::High),
            "unrecognised partnerReportedThreatState (fail closed)",
        ),
    };
    (
        risk,
        Some(format!(
            "Intune partnerReportedThreatState `{}`: {why}",
            state.chars().take(40).collect::<String>()
        )),
    )
}

/// An Intune tenant.
#[derive(Debug)]
pub struct IntuneSource {
    graph: String,
    compliant_group: String,
    client: ApiClient,
}

impl IntuneSource {
    pub fn from_config(kind: &SourceKind, settings: &HttpSettings) -> Result<Self, SourceError> {
        let SourceKind::Intune {
            tenant_id,
            client_id,
            client_secret_file,
            compliant_group,
            graph_url,
            login_url,
        } = kind
        else {
            return Err(SourceError::Config("not an intune source".into()));
        };
        let secret = Secret::read(&client_secret_file.value)?;
        Self::new(
            login_url,
            graph_url,
            tenant_id,
            client_id,
            secret,
            compliant_group,
            settings.clone(),
        )
    }

    pub fn new(
        login_url: &str,
        graph_url: &str,
        tenant_id: &str,
        client_id: &str,
        secret: Secret,
        compliant_group: &str,
        settings: HttpSettings,
    ) -> Result<Self, SourceError> {
        if tenant_id.is_empty() || tenant_id.contains(['/', '?', '#']) {
            return Err(SourceError::Config(format!(
                "tenant_id `{tenant_id}` is not a tenant id or domain"
            )));
        }
        let graph = graph_url.trim_end_matches('/').to_string();
        let client = ApiClient::new(
            TokenRequest {
                url: format!(
                    "{}/{tenant_id}/oauth2/v2.0/token",
                    login_url.trim_end_matches('/')
                ),
                client_id: client_id.to_string(),
                secret,
                scope: Some(format!("{graph}/.default")),
            },
            settings,
        )?;
        Ok(IntuneSource {
            graph,
            compliant_group: compliant_group.to_string(),
            client,
        })
    }

    #[cfg(test)]
    pub fn client_mut_for_tests(&mut self) -> &mut ApiClient {
        &mut self.client
    }

    /// Every managed device with a serial number.
    pub async fn full_sync(&mut self) -> Result<Vec<MdmDevice>, SourceError> {
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices?$select={SELECT}",
            self.graph
        );
        self.read_all(url).await
    }

    /// Re-reads one device by serial.
    pub async fn refresh_device(&mut self, serial: &str) -> Result<Option<MdmDevice>, SourceError> {
        let serial = normalize_serial(serial);
        if serial.is_empty() {
            return Ok(None);
        }
        // OData string literal: a quote is written twice.
        let filter = format!("serialNumber eq '{}'", serial.replace('\'', "''"));
        let url = format!(
            "{}/v1.0/deviceManagement/managedDevices?$select={SELECT}&$filter={}",
            self.graph,
            query_escape(&filter)
        );
        Ok(self
            .read_all(url)
            .await?
            .into_iter()
            .find(|d| d.serial == serial))
    }

    async fn read_all(&mut self, first: String) -> Result<Vec<MdmDevice>, SourceError> {
        let deadline = deadline_from_now(self.client.settings());
        let mut newest: BTreeMap<String, (String, MdmDevice)> = BTreeMap::new();
        let mut next = Some(first);
        let mut pages = 0u32;
        while let Some(url) = next.take() {
            pages += 1;
            if pages > MAX_PAGES {
                return Err(SourceError::Inconsistent(format!(
                    "more than {MAX_PAGES} pages of managed devices"
                )));
            }
            let page: GraphPage = self.client.get_json(&url, deadline).await?;
            for d in page.value {
                let synced = d.last_sync_date_time.clone().unwrap_or_default();
                let Some(dev) = self.map(d) else { continue };
                match newest.get(&dev.serial) {
                    Some((t, _)) if *t >= synced => {}
                    _ => {
                        newest.insert(dev.serial.clone(), (synced, dev));
                    }
                }
            }
            if let Some(link) = page.next_link {
                if !link.starts_with(&format!("{}/", self.graph)) {
                    return Err(SourceError::Inconsistent(format!(
                        "@odata.nextLink leaves {} (refused: it would receive our token)",
                        self.graph
                    )));
                }
                next = Some(link);
            }
        }
        Ok(newest.into_values().map(|(_, d)| d).collect())
    }

    fn map(&self, d: ManagedDevice) -> Option<MdmDevice> {
        let serial = normalize_serial(d.serial_number.as_deref().unwrap_or(""));
        if serial.is_empty() {
            return None;
        }
        let (risk, reason) = threat_risk(&d.partner_reported_threat_state);
        Some(MdmDevice {
            serial,
            udids: d
                .udid
                .filter(|u| !u.trim().is_empty())
                .into_iter()
                .collect(),
            platform: platform_name(d.operating_system.as_deref().unwrap_or("")),
            managed: d.management_state == "managed",
            groups: if d.compliance_state == "compliant" {
                vec![self.compliant_group.clone()]
            } else {
                Vec::new()
            },
            risk,
            risk_reasons: reason.into_iter().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threat_states_map_fail_closed() {
        let cases = [
            ("secured", Some(RiskLevel::Secure)),
            ("lowSeverity", Some(RiskLevel::Low)),
            ("mediumSeverity", Some(RiskLevel::Medium)),
            ("highSeverity", Some(RiskLevel::High)),
            ("compromised", Some(RiskLevel::High)),
            ("misconfigured", Some(RiskLevel::High)),
            ("activated", Some(RiskLevel::High)),
            ("deactivated", Some(RiskLevel::High)),
            ("unresponsive", Some(RiskLevel::High)),
            ("unknown", None),
            ("somethingNew", Some(RiskLevel::High)),
        ];
        for (state, want) in cases {
            let (risk, why) = threat_risk(state);
            assert_eq!(risk, want, "{state}");
            assert_eq!(why.is_some(), want.is_some(), "{state}");
        }
    }
}
