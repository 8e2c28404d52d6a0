//! What the MDM sources (Jamf Pro, Intune) have in common: the device they report, the error
//! they fail with, and one enum over both so the store can hold a list of sources.
//!
//! A source answers a full sync with every device it knows, or with an error: never with a
//! part. A device the answer does not name is one the MDM no longer knows; a failed sync leaves
//! the caller's previous state untouched (it ages out through `compliance.max_age`).

#[cfg(test)]
#[path = "mdm_sources_tests.rs"]
mod mdm_sources_tests;

use super::http::HttpSettings;
use super::intune::IntuneSource;
use super::jamf::{JamfHint, JamfSource};
use crate::policy::DeviceRecord;
use config::{Config, RiskLevel, SourceKind};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// One device as an MDM reports it, keyed by serial number (upper case, trimmed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdmDevice {
    pub serial: String,
    /// Every UDID the MDM has for this serial (a re-enrolled device can have several).
    pub udids: Vec<String>,
    /// `macos`, `ios`, `tvos`, `watchos`, `visionos`, `windows`, `android`, … lower case.
    pub platform: String,
    /// Enrolled and under management now.
    pub managed: bool,
    /// Names of the groups it is in (matched against `compliance.compliant_groups`).
    pub groups: Vec<String>,
    /// `None`: this source says nothing about risk.
    pub risk: Option<RiskLevel>,
    /// Why `risk` is what it is, in words, for `attestgate device show`.
    pub risk_reasons: Vec<String>,
}

impl MdmDevice {
    /// The record the policy engine reads. A source that says nothing about risk contributes
    /// `secure`; the table merges sources taking the worst risk, so another source's risk is
    /// never lowered by this one.
    pub fn to_record(&self, source: &str, confirmed_at: SystemTime) -> DeviceRecord {
        DeviceRecord {
            managed: self.managed,
            groups: self.groups.iter().cloned().collect(),
            risk: self.risk.unwrap_or(RiskLevel::Secure),
            source: source.to_string(),
            confirmed_at,
        }
    }
}

/// Why a source could not answer. The message never holds a secret or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The configuration cannot work (unreadable secret file, bad URL).
    #[error("configuration: {0}")]
    Config(String),
    /// The token endpoint refused our credentials, or the API refused the token twice.
    #[error("authentication failed at {url}: HTTP {status}: {message}")]
    Auth {
        url: String,
        status: u16,
        message: String,
    },
    /// Connecting, TLS or reading failed after the retries.
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
    /// An HTTP status we do not retry, or still failing after the retries.
    #[error("{url}: HTTP {status} after {attempts} attempt(s)")]
    Status {
        url: String,
        status: u16,
        attempts: u32,
    },
    /// The whole operation took longer than its deadline.
    #[error("{url}: deadline of {secs} s exceeded")]
    Deadline { url: String, secs: u64 },
    /// The answer is not the JSON we rely on (malformed, a missing field, a wrong type).
    #[error("{url}: unexpected answer: {message}")]
    Decode { url: String, message: String },
    /// The answers are well-formed but do not fit together (paging, origins).
    #[error("inconsistent answer: {0}")]
    Inconsistent(String),
}

/// The platform names we print, from what the MDMs say.
pub fn platform_name(raw: &str) -> String {
    let lower = raw.trim().to_ascii_lowercase();
    match lower.as_str() {
        "mac" | "macos" | "mac os x" | "osx" => "macos".into(),
        "ios" | "iphone" | "iphoneos" => "ios".into(),
        "ipados" | "ipad" => "ipados".into(),
        "tvos" | "appletv" | "apple tv" => "tvos".into(),
        "watchos" | "watch" => "watchos".into(),
        "visionos" | "vision" => "visionos".into(),
        "" => "unknown".into(),
        _ => lower,
    }
}

/// Merges two reports of the same serial (a device with two MDM records), failing closed:
/// UDIDs are the union, but a group counts only if both records are in it, managed only if
/// both are, and the risk is the worse one with both reasons.
pub fn merge_same_serial(into: &mut MdmDevice, other: MdmDevice) {
    for u in other.udids {
        if !into.udids.contains(&u) {
            into.udids.push(u);
        }
    }
    into.groups.retain(|g| other.groups.contains(g));
    into.managed &= other.managed;
    into.risk = match (into.risk, other.risk) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    into.risk_reasons.extend(other.risk_reasons);
    into.risk_reasons
        .push("the MDM has several records with this serial (merged, failing closed)".into());
    if into.platform == "unknown" {
        into.platform = other.platform;
    }
}

/// A Jamf Pro or Intune source, ready to sync.
#[derive(Debug)]
pub enum MdmSource {
    Jamf(JamfSource),
    Intune(IntuneSource),
}

impl MdmSource {
    /// Builds the source for a configured `jamf-pro` or `intune` source; `None` for other
    /// types. Reads the client secret file now.
    pub fn from_config(
        kind: &SourceKind,
        settings: &HttpSettings,
    ) -> Result<Option<MdmSource>, SourceError> {
        Ok(match kind {
            SourceKind::JamfPro { .. } => {
                Some(MdmSource::Jamf(JamfSource::from_config(kind, settings)?))
            }
            SourceKind::Intune { .. } => Some(MdmSource::Intune(IntuneSource::from_config(
                kind, settings,
            )?)),
            SourceKind::File { .. } => None,
        })
    }

    /// Every device the MDM knows, or an error (never a part).
    pub async fn full_sync(&mut self) -> Result<Vec<MdmDevice>, SourceError> {
        match self {
            MdmSource::Jamf(s) => s.full_sync().await,
            MdmSource::Intune(s) => s.full_sync().await,
        }
    }

    /// Re-reads one device; `Ok(None)`: the MDM does not know this serial.
    pub async fn refresh_device(&mut self, serial: &str) -> Result<Option<MdmDevice>, SourceError> {
        match self {
            MdmSource::Jamf(s) => s.refresh_device(serial).await,
            MdmSource::Intune(s) => s.refresh_device(serial).await,
        }
    }

    /// Re-reads what a Jamf webhook names (Intune sends none: an empty answer).
    pub async fn refresh_hint(&mut self, hint: &JamfHint) -> Result<Vec<MdmDevice>, SourceError> {
        match self {
            MdmSource::Jamf(s) => s.refresh_hint(hint).await,
            MdmSource::Intune(_) => Ok(Vec::new()),
        }
    }
}

/// What each MDM source answered, by source name, with when it was asked.
pub type FetchResults = BTreeMap<String, Result<(Vec<MdmDevice>, SystemTime), SourceError>>;

/// The configured MDM sources, kept between syncs so their tokens are reused.
#[derive(Debug, Default)]
pub struct MdmSources {
    /// Source name → (its configuration, printed, to notice a change; the source).
    by_name: BTreeMap<String, (String, MdmSource)>,
    settings: HttpSettings,
}

impl MdmSources {
    pub fn new(settings: HttpSettings) -> Self {
        MdmSources {
            by_name: BTreeMap::new(),
            settings,
        }
    }

    /// Full sync of every Jamf Pro and Intune source of `cfg`, one after another. A source
    /// whose configuration changed, or whose last answer was an authentication failure, is
    /// rebuilt (re-reading its secret file). Sources no longer configured are dropped.
    pub async fn fetch_all(&mut self, cfg: &Config) -> FetchResults {
        let mut results = BTreeMap::new();
        let mut kept = BTreeMap::new();
        for s in &cfg.compliance.sources {
            let name = s.name.value.clone();
            let fingerprint = format!("{:?}", s.kind);
            let existing = self
                .by_name
                .remove(&name)
                .filter(|(f, _)| *f == fingerprint);
            let mut source = match existing {
                Some((_, src)) => src,
                None => match MdmSource::from_config(&s.kind, &self.settings) {
                    Ok(Some(src)) => src,
                    Ok(None) => continue,
                    Err(e) => {
                        results.insert(name, Err(e));
                        continue;
                    }
                },
            };
            let started = std::time::Instant::now();
            // Confirmed when the sync began: the data can be no newer than that (fail closed
            // as it ages).
            let asked_at = SystemTime::now();
            let answer = source.full_sync().await;
            tracing::debug!(source = %name, ms = started.elapsed().as_millis() as u64, ok = answer.is_ok(), "MDM full sync");
            let rebuild = matches!(answer, Err(SourceError::Auth { .. }));
            results.insert(name.clone(), answer.map(|d| (d, asked_at)));
            if !rebuild {
                kept.insert(name, (fingerprint, source));
            }
        }
        self.by_name = kept;
        results
    }

    /// The source of this name, if it is a Jamf Pro or Intune one built by a previous fetch.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut MdmSource> {
        self.by_name.get_mut(name).map(|(_, s)| s)
    }
}
