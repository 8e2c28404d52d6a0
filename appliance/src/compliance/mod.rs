//! Compliance sources and the device table the policy engine reads.
//!
//! Sources: `file` (a TOML list of devices, re-read every refresh interval and on reload), and
//! Jamf Pro and Intune (`jamf`, `intune`, over `http`, with `mdm` their common shape), fetched
//! asynchronously outside the table's lock and handed in through `set_mdm_results`. The table
//! is in memory.

pub mod file;
// Per-device refreshes, webhook hints and the client's counters are for the webhook endpoint
// and the store (wired on the `store` branch); the daemon uses full syncs.
#[allow(dead_code)]
pub mod http;
#[allow(dead_code)]
pub mod intune;
#[allow(dead_code)]
pub mod jamf;
#[allow(dead_code)]
pub mod mdm;

use crate::policy::DeviceRecord;
use config::{Config, SourceKind};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The state of one source, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `ok`, `error`, `not-synced`, `not-implemented`.
    pub state: &'static str,
    pub devices: usize,
    #[serde(with = "crate::timefmt::opt_unix")]
    pub last_sync: Option<SystemTime>,
    pub message: Option<String>,
}

/// Devices by serial, merged over all sources.
#[derive(Debug, Default)]
pub struct DeviceTable {
    per_source: BTreeMap<String, BTreeMap<String, DeviceRecord>>,
    status: Vec<SourceStatus>,
    /// Answers of the MDM sources fetched (outside the table's lock) for the next `sync`.
    mdm_results: mdm::FetchResults,
}

/// Serials are compared upper case without surrounding blanks (Apple prints them upper case).
pub fn normalize_serial(serial: &str) -> String {
    serial.trim().to_ascii_uppercase()
}

impl DeviceTable {
    /// Re-reads every source of `cfg`. A source that fails keeps what it had (its data ages
    /// out through `max_age`); sources no longer configured are dropped.
    pub fn sync(&mut self, cfg: &Config, now: SystemTime) -> Vec<SourceStatus> {
        let mut status = Vec::new();
        let mut kept = BTreeMap::new();
        for source in &cfg.compliance.sources {
            let name = source.name.value.clone();
            let previous = self.per_source.remove(&name);
            let (records, st) = match &source.kind {
                SourceKind::File { path } => match file::read(&path.value, &name, now) {
                    Ok(records) => {
                        let n = records.len();
                        (
                            Some(records),
                            SourceStatus {
                                name: name.clone(),
                                kind: "file",
                                state: "ok",
                                devices: n,
                                last_sync: Some(now),
                                message: None,
                            },
                        )
                    }
                    Err(e) => {
                        let prev_n = previous.as_ref().map_or(0, BTreeMap::len);
                        let prev_sync = self.last_sync(&name);
                        (
                            previous,
                            SourceStatus {
                                name: name.clone(),
                                kind: "file",
                                state: "error",
                                devices: prev_n,
                                last_sync: prev_sync,
                                message: Some(e.to_string()),
                            },
                        )
                    }
                },
                SourceKind::JamfPro { .. } | SourceKind::Intune { .. } => {
                    self.mdm_arm(&name, source.kind.type_name(), previous)
                }
            };
            if let Some(r) = records {
                kept.insert(name, r);
            }
            status.push(st);
        }
        self.per_source = kept;
        self.status = status.clone();
        status
    }

    /// Hands the next `sync` what the MDM sources answered (see [`mdm::MdmSources::fetch_all`]).
    pub fn set_mdm_results(&mut self, results: mdm::FetchResults) {
        self.mdm_results = results;
    }

    /// A Jamf Pro or Intune source: its fetched answer replaces its devices (confirmed when
    /// fetched); an error or no answer keeps what it had (aging out through `max_age`).
    fn mdm_arm(
        &mut self,
        name: &str,
        kind: &'static str,
        previous: Option<BTreeMap<String, DeviceRecord>>,
    ) -> (Option<BTreeMap<String, DeviceRecord>>, SourceStatus) {
        let (state, message, records, last_sync) = match self.mdm_results.remove(name) {
            Some(Ok((devices, at))) => {
                let records: BTreeMap<String, DeviceRecord> = devices
                    .iter()
                    .map(|d| (d.serial.clone(), d.to_record(name, at)))
                    .collect();
                ("ok", None, Some(records), Some(at))
            }
            Some(Err(e)) => ("error", Some(e.to_string()), previous, self.last_sync(name)),
            None => ("not-synced", None, previous, self.last_sync(name)),
        };
        let status = SourceStatus {
            name: name.to_string(),
            kind,
            state,
            devices: records.as_ref().map_or(0, BTreeMap::len),
            last_sync,
            message,
        };
        (records, status)
    }

    fn last_sync(&self, name: &str) -> Option<SystemTime> {
        self.status
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.last_sync)
    }

    /// The merged record of a device: groups are the union, risk the worst, managed if any
    /// source says so, confirmed at the oldest confirmation (so staleness is never hidden).
    pub fn get(&self, serial: &str) -> Option<DeviceRecord> {
        let serial = normalize_serial(serial);
        let mut merged: Option<DeviceRecord> = None;
        for records in self.per_source.values() {
            let Some(r) = records.get(&serial) else {
                continue;
            };
            merged = Some(match merged {
                None => r.clone(),
                Some(mut m) => {
                    m.groups.extend(r.groups.iter().cloned());
                    m.risk = m.risk.max(r.risk);
                    m.managed |= r.managed;
                    m.confirmed_at = m.confirmed_at.min(r.confirmed_at);
                    m.source = format!("{}+{}", m.source, r.source);
                    m
                }
            });
        }
        merged
    }

    pub fn status(&self) -> &[SourceStatus] {
        &self.status
    }

    pub fn device_count(&self) -> usize {
        let mut serials: Vec<&String> = self.per_source.values().flat_map(|r| r.keys()).collect();
        serials.sort();
        serials.dedup();
        serials.len()
    }
}

impl DeviceTable {
    /// Every device, merged, by serial.
    pub fn all(&self) -> Vec<(String, DeviceRecord)> {
        let mut serials: Vec<&String> = self.per_source.values().flat_map(|r| r.keys()).collect();
        serials.sort();
        serials.dedup();
        serials
            .into_iter()
            .filter_map(|s| self.get(s).map(|r| (s.clone(), r)))
            .collect()
    }
}
