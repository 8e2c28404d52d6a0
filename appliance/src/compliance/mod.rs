//! Compliance sources and the device table the policy engine reads.
//!
//! Every source says what it knows about each device as a [`SourceFact`]: enrolment
//! (managed), groups, risk with its reasons, UDIDs, platform, and when it last confirmed it.
//! The [`DeviceTable`] keeps those facts per source (write-through into the persisted
//! [`store`]), the operators' [`overrides`], and each source's sync state, and merges them into
//! the [`DeviceRecord`] the policy engine decides on:
//!
//! - a device is *known* when an inventory source (file, Jamf Pro, Intune) lists it; a risk
//!   feed or an override never makes a device known;
//! - managed only if every inventory source that lists it says so (an MDM that unenrolled the
//!   device outvotes one that still lists it: fail closed), groups are the union over the
//!   sources that say it is managed, risk the worst opinion of
//!   any source (inventory, risk feed, override), confirmed at the *oldest* inventory
//!   confirmation, so staleness is never hidden (data older than `max_age` counts as unknown);
//! - an active block takes the device out of every group and sets its risk to high.
//!
//! Every change of a device's merged state is returned as a [`Change`] (the daemon turns each
//! into a `compliance.changed` event and re-decides that device's open flows at once).
//!
//! Sources: `file` ([`file`]), Jamf Pro ([`jamf`]) and Intune ([`intune`]), the last two over
//! [`http`] with [`mdm`] their common shape; all are read through [`fetch`], outside the
//! table's lock. A failed or malformed sync keeps the source's previous facts (they age out
//! through `max_age`) and is reported, never applied.

pub mod admin;
pub mod file;
// The client's request counters are for tests and benchmarks.
#[allow(dead_code)]
pub mod http;
pub mod intune;
pub mod jamf;
pub mod mdm;
pub mod overrides;
pub mod report;
pub mod store;

pub use overrides::{OverrideAction, Overrides, OVERRIDE_SOURCE};

use crate::policy::DeviceRecord;
use config::{Config, RiskLevel, SourceKind};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use store::{DeviceStore, SourceState, Write};

/// The source name risk-feed facts are kept under.
pub const RISK_FEED_SOURCE: &str = "risk-feed";

/// The state of one source, for `status`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// `ok`, `error`, `not-synced`, `snapshot` (loaded from the store, not synced since the
    /// start), `active` (risk feed, overrides).
    pub state: &'static str,
    pub devices: usize,
    #[serde(with = "crate::timefmt::opt_unix")]
    pub last_sync: Option<SystemTime>,
    pub message: Option<String>,
}

/// What one source says about one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFact {
    /// Enrolled and managed; `None`: this source does not say (a risk feed). Only facts that
    /// say make a device known.
    pub managed: Option<bool>,
    #[serde(default)]
    pub groups: BTreeSet<String>,
    /// `None`: this source has no risk opinion.
    #[serde(default)]
    pub risk: Option<RiskLevel>,
    #[serde(default)]
    pub risk_reasons: Vec<String>,
    #[serde(default)]
    pub udids: BTreeSet<String>,
    #[serde(default)]
    pub platform: Option<String>,
    /// When the source last confirmed this.
    #[serde(with = "unix_time")]
    pub confirmed_at: SystemTime,
    /// A risk-feed fact lapses then.
    #[serde(default, with = "opt_unix_time")]
    pub expires: Option<SystemTime>,
}

impl SourceFact {
    /// An inventory source's record (what the MDM clients return).
    pub fn inventory(
        managed: bool,
        groups: BTreeSet<String>,
        risk: Option<RiskLevel>,
        confirmed_at: SystemTime,
    ) -> SourceFact {
        SourceFact {
            managed: Some(managed),
            groups,
            risk,
            risk_reasons: Vec::new(),
            udids: BTreeSet::new(),
            platform: None,
            confirmed_at,
            expires: None,
        }
    }

    fn active(&self, now: SystemTime) -> bool {
        self.expires.is_none_or(|e| now < e)
    }
}

/// A device's merged state, as events and `device show` report it (no times, so that a
/// source re-confirming the same facts is not a change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    /// Some inventory source lists it.
    pub known: bool,
    pub managed: bool,
    pub groups: BTreeSet<String>,
    pub risk: Option<RiskLevel>,
    pub risk_reasons: Vec<String>,
    /// The reason of an active block (`""` when none was given).
    pub blocked: Option<String>,
    pub sources: Vec<String>,
}

/// One change of a device's merged state.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub serial: String,
    pub before: DeviceView,
    pub after: DeviceView,
    /// What caused it: `sync of source mdm`, `override block`, `risk feed`, `expired` …
    pub reason: String,
}

/// Why a risk fact was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RiskFeedError {
    #[error("device {0} is unknown to every inventory source; nothing changed")]
    UnknownDevice(String),
}

/// Devices by serial, merged over all sources.
#[derive(Debug, Default)]
pub struct DeviceTable {
    per_source: BTreeMap<String, BTreeMap<String, SourceFact>>,
    overrides: BTreeMap<String, Overrides>,
    status: Vec<SourceStatus>,
    store: Option<Arc<DeviceStore>>,
    /// Store writes not yet committed (see [`DeviceTable::take_writes`]).
    pending: Vec<Write>,
    /// Store failures not yet reported (the daemon raises each as an alert).
    store_errors: Vec<String>,
}

/// Serials are compared upper case without surrounding blanks (Apple prints them upper case).
pub fn normalize_serial(serial: &str) -> String {
    serial.trim().to_ascii_uppercase()
}

/// A serial from outside (CLI, risk feed): normalized, 1–128 printable characters.
pub fn checked_serial(serial: &str) -> Result<String, String> {
    let s = normalize_serial(serial);
    if s.is_empty() {
        return Err("empty serial".into());
    }
    if s.len() > 128 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "`{}` is not a serial number (1–128 printable characters, no blanks)",
            s.escape_debug()
        ));
    }
    Ok(s)
}

/// What fetching one source gave.
#[derive(Debug)]
pub enum Fetched {
    Devices(BTreeMap<String, SourceFact>),
    /// Unreachable, refused, malformed: the source keeps its previous facts.
    Failed(String),
}

/// Reads one source now (`now`: when the sync began, the confirmation time of what it
/// returns). Jamf Pro and Intune go through `mdm`, whose clients (and tokens) are kept between
/// syncs; the `file` source reads a local file.
pub async fn fetch(
    source: &config::ComplianceSource,
    now: SystemTime,
    mdm: &mut mdm::MdmSources,
) -> Fetched {
    if let SourceKind::File { path } = &source.kind {
        return match file::read(&path.value, now) {
            Ok(records) => Fetched::Devices(records),
            Err(e) => Fetched::Failed(e.to_string()),
        };
    }
    match mdm.fetch_one(source).await {
        Some(Ok(devices)) => Fetched::Devices(
            devices
                .iter()
                .map(|d| (normalize_serial(&d.serial), d.to_fact(now)))
                .collect(),
        ),
        Some(Err(e)) => Fetched::Failed(e.to_string()),
        None => Fetched::Failed(format!(
            "{} source without a client",
            source.kind.type_name()
        )),
    }
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "file" => "file",
        "jamf-pro" => "jamf-pro",
        "intune" => "intune",
        RISK_FEED_SOURCE => RISK_FEED_SOURCE,
        _ => "unknown",
    }
}

impl DeviceTable {
    /// A table over the store at `path`, starting from what it holds for the sources `cfg`
    /// configures. A store that cannot be opened leaves an empty in-memory table (every device
    /// unknown: fail closed) and an error to report.
    pub fn open(path: &Path, cfg: &Config) -> DeviceTable {
        let mut table = DeviceTable::default();
        let opened = DeviceStore::open(path).and_then(|s| s.load().map(|snap| (s, snap)));
        let (store, snap) = match opened {
            Ok(x) => x,
            Err(e) => {
                table.store_errors.push(format!(
                    "{e}; starting without persisted state (every device unknown until the first sync)"
                ));
                table.prune(cfg);
                return table;
            }
        };
        if snap.skipped > 0 {
            table.store_errors.push(format!(
                "device store {}: {} unreadable row(s) ignored",
                path.display(),
                snap.skipped
            ));
        }
        table.per_source = snap.facts;
        table.overrides = snap.overrides;
        table.store = Some(Arc::new(store));
        for s in &cfg.compliance.sources {
            let name = &s.name.value;
            let persisted = snap.sources.get(name);
            let devices = table.per_source.get(name).map_or(0, BTreeMap::len);
            let last_sync = persisted
                .and_then(|p| p.last_sync)
                .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0).unsigned_abs()));
            table.status.push(SourceStatus {
                name: name.clone(),
                kind: s.kind.type_name(),
                state: if persisted.is_some() {
                    "snapshot"
                } else {
                    "not-synced"
                },
                devices,
                last_sync,
                message: persisted.is_some().then(|| {
                    "loaded from the device store; not synced since the start".to_string()
                }),
            });
        }
        table.prune(cfg);
        table
    }

    /// Store failures since the last call (each should be raised as an alert).
    pub fn take_store_errors(&mut self) -> Vec<String> {
        std::mem::take(&mut self.store_errors)
    }

    pub fn store_path(&self) -> Option<&Path> {
        self.store.as_deref().map(DeviceStore::path)
    }

    /// Queues a store write (built only when there is a store).
    fn queue(&mut self, w: impl FnOnce() -> Write) {
        if self.store.is_some() {
            self.pending.push(w());
        }
    }

    /// The writes queued since the last call, to commit outside the table's lock (after the
    /// affected flows were re-decided: persistence never delays enforcement). Callers commit
    /// batches in the order they took them.
    pub fn take_writes(&mut self) -> Option<PendingWrites> {
        if self.pending.is_empty() {
            return None;
        }
        Some(PendingWrites {
            store: self.store.clone()?,
            writes: std::mem::take(&mut self.pending),
        })
    }

    /// Commits what is queued now (tests, shutdown).
    pub fn flush(&mut self) {
        if let Some(p) = self.take_writes() {
            if let Err(e) = p.commit() {
                self.store_errors.push(e);
            }
        }
    }

    /// Takes what a source returned: on success its facts replace everything it said before;
    /// on failure it keeps its previous facts and its status says why.
    pub fn apply_fetch(
        &mut self,
        name: &str,
        kind: &str,
        fetched: Fetched,
        now: SystemTime,
    ) -> Vec<Change> {
        let kind = kind_name(kind);
        let previous_sync = self
            .status
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.last_sync);
        let (state, message, last_sync, records) = match fetched {
            Fetched::Devices(records) => ("ok", None, Some(now), Some(records)),
            Fetched::Failed(e) => ("error", Some(e), previous_sync, None),
        };
        let mut changes = Vec::new();
        if let Some(records) = records {
            let old_serials: BTreeSet<String> = self
                .per_source
                .get(name)
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default();
            let affected: BTreeSet<String> = old_serials
                .union(&records.keys().cloned().collect())
                .cloned()
                .collect();
            let before = self.views(&affected);
            self.queue(|| Write::ReplaceSource {
                source: name.to_string(),
                facts: records.clone(),
                state: SourceState {
                    kind: kind.to_string(),
                    last_sync: Some(crate::timefmt::unix(now)),
                    last_error: None,
                },
            });
            self.per_source.insert(name.to_string(), records);
            changes = self.diff(before, &format!("sync of source {name}"));
        } else if state == "error" {
            self.queue(|| Write::SourceState {
                source: name.to_string(),
                state: SourceState {
                    kind: kind.to_string(),
                    last_sync: previous_sync.map(crate::timefmt::unix),
                    last_error: message.clone(),
                },
            });
        }
        let devices = self.per_source.get(name).map_or(0, BTreeMap::len);
        let st = SourceStatus {
            name: name.to_string(),
            kind,
            state,
            devices,
            last_sync,
            message,
        };
        match self.status.iter_mut().find(|s| s.name == name) {
            Some(s) => *s = st,
            None => self.status.push(st),
        }
        changes
    }

    /// Sets (`Some`) or removes (`None`) some devices' facts of one source, leaving its other
    /// devices alone: a targeted re-read after a webhook.
    pub fn update_devices(
        &mut self,
        name: &str,
        updates: Vec<(String, Option<SourceFact>)>,
        reason: &str,
    ) -> Vec<Change> {
        let updates: Vec<(String, Option<SourceFact>)> = updates
            .into_iter()
            .map(|(s, f)| (normalize_serial(&s), f))
            .collect();
        let affected: BTreeSet<String> = updates.iter().map(|(s, _)| s.clone()).collect();
        let before = self.views(&affected);
        self.queue(|| Write::Facts {
            source: name.to_string(),
            updates: updates.clone(),
        });
        let facts = self.per_source.entry(name.to_string()).or_default();
        for (serial, fact) in updates {
            match fact {
                Some(f) => {
                    facts.insert(serial, f);
                }
                None => {
                    facts.remove(&serial);
                }
            }
        }
        if let Some(st) = self.status.iter_mut().find(|s| s.name == name) {
            st.devices = self.per_source.get(name).map_or(0, BTreeMap::len);
        }
        self.diff(before, reason)
    }

    /// A risk opinion from the risk feed. Refused for a device no inventory source knows.
    pub fn set_risk_feed(
        &mut self,
        serial: &str,
        fact: SourceFact,
    ) -> Result<Vec<Change>, RiskFeedError> {
        let serial = normalize_serial(serial);
        if !self.known(&serial) {
            return Err(RiskFeedError::UnknownDevice(serial));
        }
        let changes =
            self.update_devices(RISK_FEED_SOURCE, vec![(serial, Some(fact))], "risk feed");
        Ok(changes)
    }

    /// Replaces a device's overrides.
    pub fn set_overrides(&mut self, serial: &str, o: Overrides, reason: &str) -> Vec<Change> {
        let serial = normalize_serial(serial);
        let affected: BTreeSet<String> = [serial.clone()].into_iter().collect();
        let before = self.views(&affected);
        self.queue(|| Write::Overrides {
            serial: serial.clone(),
            overrides: o.clone(),
        });
        if o.is_empty() {
            self.overrides.remove(&serial);
        } else {
            self.overrides.insert(serial, o);
        }
        self.diff(before, reason)
    }

    pub fn overrides(&self, serial: &str) -> Overrides {
        self.overrides
            .get(&normalize_serial(serial))
            .cloned()
            .unwrap_or_default()
    }

    /// Drops lapsed overrides and risk-feed facts.
    pub fn expire(&mut self, now: SystemTime) -> Vec<Change> {
        let mut changes = Vec::new();
        let lapsed: Vec<(String, Overrides)> = self
            .overrides
            .iter()
            .filter_map(|(s, o)| {
                let mut o = o.clone();
                o.expire(now).then(|| (s.clone(), o))
            })
            .collect();
        for (serial, o) in lapsed {
            changes.extend(self.set_overrides(&serial, o, "override expired"));
        }
        let lapsed: Vec<(String, Option<SourceFact>)> = self
            .per_source
            .get(RISK_FEED_SOURCE)
            .map(|f| {
                f.iter()
                    .filter(|(_, f)| !f.active(now))
                    .map(|(s, _)| (s.clone(), None))
                    .collect()
            })
            .unwrap_or_default();
        if !lapsed.is_empty() {
            changes.extend(self.update_devices(RISK_FEED_SOURCE, lapsed, "risk feed fact expired"));
        }
        changes
    }

    /// Forgets sources no longer configured (the risk feed stays).
    pub fn prune(&mut self, cfg: &Config) -> Vec<Change> {
        let configured: BTreeSet<&str> = cfg
            .compliance
            .sources
            .iter()
            .map(|s| s.name.value.as_str())
            .chain([RISK_FEED_SOURCE])
            .collect();
        let gone: Vec<String> = self
            .per_source
            .keys()
            .filter(|n| !configured.contains(n.as_str()))
            .cloned()
            .collect();
        self.status.retain(|s| configured.contains(s.name.as_str()));
        let mut changes = Vec::new();
        for name in gone {
            let affected: BTreeSet<String> = self
                .per_source
                .get(&name)
                .map(|r| r.keys().cloned().collect())
                .unwrap_or_default();
            let before = self.views(&affected);
            self.per_source.remove(&name);
            self.queue(|| Write::RemoveSource {
                source: name.clone(),
            });
            changes.extend(self.diff(before, &format!("source {name} removed")));
        }
        // sources newly configured show up as not synced
        for s in &cfg.compliance.sources {
            if !self.status.iter().any(|st| st.name == s.name.value) {
                self.status.push(SourceStatus {
                    name: s.name.value.clone(),
                    kind: s.kind.type_name(),
                    state: "not-synced",
                    devices: 0,
                    last_sync: None,
                    message: None,
                });
            }
        }
        changes
    }

    fn views(&self, serials: &BTreeSet<String>) -> Vec<(String, DeviceView)> {
        serials.iter().map(|s| (s.clone(), self.view(s))).collect()
    }

    fn diff(&self, before: Vec<(String, DeviceView)>, reason: &str) -> Vec<Change> {
        before
            .into_iter()
            .filter_map(|(serial, before)| {
                let after = self.view(&serial);
                (after != before).then(|| Change {
                    serial,
                    before,
                    after,
                    reason: reason.to_string(),
                })
            })
            .collect()
    }

    /// Every fact about `serial`, by source (inventory sources, the risk feed).
    pub fn facts(&self, serial: &str) -> Vec<(&str, &SourceFact)> {
        let serial = normalize_serial(serial);
        self.per_source
            .iter()
            .filter_map(|(name, f)| f.get(&serial).map(|f| (name.as_str(), f)))
            .collect()
    }

    /// The type of a source (`file`, `jamf-pro`, `intune`, `risk-feed`).
    pub fn kind_of(&self, source: &str) -> &'static str {
        if source == RISK_FEED_SOURCE {
            return RISK_FEED_SOURCE;
        }
        self.status
            .iter()
            .find(|s| s.name == source)
            .map_or("unknown", |s| s.kind)
    }

    fn known(&self, serial: &str) -> bool {
        self.per_source
            .values()
            .any(|f| f.get(serial).is_some_and(|f| f.managed.is_some()))
    }

    /// The merged state of a device. Lapsed overrides and risk facts count until
    /// [`DeviceTable::expire`] drops them (the daemon runs it every second), so that their
    /// lapse is a change like any other: an event and a re-decision.
    pub fn view(&self, serial: &str) -> DeviceView {
        let serial = normalize_serial(serial);
        let mut v = DeviceView {
            known: false,
            managed: false,
            groups: BTreeSet::new(),
            risk: None,
            risk_reasons: Vec::new(),
            blocked: None,
            sources: Vec::new(),
        };
        let mut unmanaged_somewhere = false;
        for (name, f) in self.facts(&serial) {
            v.sources.push(name.to_string());
            if let Some(m) = f.managed {
                v.known = true;
                if m {
                    v.groups.extend(f.groups.iter().cloned());
                } else {
                    unmanaged_somewhere = true;
                }
            }
            if let Some(r) = f.risk {
                if v.risk.is_none_or(|cur| r > cur) {
                    v.risk = Some(r);
                }
                v.risk_reasons
                    .extend(f.risk_reasons.iter().map(|x| format!("{name}: {x}")));
            }
        }
        v.managed = v.known && !unmanaged_somewhere;
        if let Some(o) = self.overrides.get(&serial) {
            let mut used = false;
            if let Some(level) = o.risk.as_ref().and_then(|e| e.level) {
                used = true;
                if v.risk.is_none_or(|cur| level > cur) {
                    v.risk = Some(level);
                }
                let why = o.risk.as_ref().and_then(|e| e.reason.clone());
                v.risk_reasons.push(format!(
                    "override: risk {}{}",
                    level.as_str(),
                    why.map(|w| format!(" ({w})")).unwrap_or_default()
                ));
            }
            if let Some(b) = &o.block {
                used = true;
                v.blocked = Some(b.reason.clone().unwrap_or_default());
            }
            if used {
                v.sources.push(OVERRIDE_SOURCE.to_string());
            }
        }
        v
    }

    /// The record the policy engine decides on (see the module doc for the merge).
    pub fn get(&self, serial: &str) -> Option<DeviceRecord> {
        let serial = normalize_serial(serial);
        let confirmed_at = self
            .facts(&serial)
            .into_iter()
            .filter(|(_, f)| f.managed.is_some())
            .map(|(_, f)| f.confirmed_at)
            .min()?;
        let v = self.view(&serial);
        let blocked = v.blocked.is_some();
        Some(DeviceRecord {
            managed: v.managed,
            groups: if blocked { BTreeSet::new() } else { v.groups },
            risk: if blocked {
                RiskLevel::High
            } else {
                v.risk.unwrap_or(RiskLevel::Secure)
            },
            source: if blocked {
                format!("{} (blocked by an override)", v.sources.join("+"))
            } else {
                v.sources.join("+")
            },
            confirmed_at,
        })
    }

    /// Every source's state: the configured ones, then the risk feed and overrides when they
    /// hold anything.
    pub fn status(&self) -> Vec<SourceStatus> {
        let mut out = self.status.clone();
        if let Some(f) = self
            .per_source
            .get(RISK_FEED_SOURCE)
            .filter(|f| !f.is_empty())
        {
            out.push(SourceStatus {
                name: RISK_FEED_SOURCE.into(),
                kind: RISK_FEED_SOURCE,
                state: "active",
                devices: f.len(),
                last_sync: f.values().map(|f| f.confirmed_at).max(),
                message: None,
            });
        }
        if !self.overrides.is_empty() {
            out.push(SourceStatus {
                name: OVERRIDE_SOURCE.into(),
                kind: OVERRIDE_SOURCE,
                state: "active",
                devices: self.overrides.len(),
                last_sync: None,
                message: None,
            });
        }
        out
    }

    /// Devices some inventory source lists.
    pub fn device_count(&self) -> usize {
        self.serials().into_iter().filter(|s| self.known(s)).count()
    }

    /// Every serial any source or override names.
    pub fn serials(&self) -> Vec<String> {
        let mut serials: BTreeSet<String> = self
            .per_source
            .values()
            .flat_map(|r| r.keys().cloned())
            .collect();
        serials.extend(self.overrides.keys().cloned());
        serials.into_iter().collect()
    }
}

/// Store writes taken from the table, committed in one transaction.
#[derive(Debug)]
pub struct PendingWrites {
    store: Arc<DeviceStore>,
    writes: Vec<Write>,
}

impl PendingWrites {
    /// Commits; the error is worded for an alert.
    pub fn commit(self) -> Result<(), String> {
        self.store.commit(&self.writes).map_err(|e| {
            tracing::error!(error = %e, "device store write failed; the in-memory state is current");
            format!("{e}; the running state is current but a restart would lose these changes")
        })
    }
}

impl Drop for DeviceTable {
    fn drop(&mut self) {
        self.flush();
    }
}

mod unix_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(crate::timefmt::unix(*t))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = i64::deserialize(d)?;
        Ok(from_unix(secs))
    }
    pub fn from_unix(secs: i64) -> SystemTime {
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
        } else {
            UNIX_EPOCH
        }
    }
}

mod opt_unix_time {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_some(&crate::timefmt::unix(*t)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        Ok(Option::<i64>::deserialize(d)?.map(super::unix_time::from_unix))
    }
}

#[cfg(test)]
mod tests;
