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
use super::SourceFact;
use config::{ComplianceSource, Config, RiskLevel, SourceKind};
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
    /// What this source says about the device, for the device store. A source that says
    /// nothing about risk has no risk opinion (`None`); the table merges sources taking the
    /// worst risk, so another source's risk is never lowered by this one.
    pub fn to_fact(&self, confirmed_at: SystemTime) -> SourceFact {
        SourceFact {
            managed: Some(self.managed),
            groups: self.groups.iter().cloned().collect(),
            risk: self.risk,
            risk_reasons: self.risk_reasons.clone(),
            udids: self.udids.iter().cloned().collect(),
            platform: Some(self.platform.clone()),
            confirmed_at,
            expires: None,
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

/// The configured MDM sources, kept between syncs so their tokens are reused.
#[derive(Debug, Default)]
pub struct MdmSources {
    /// Source name → (its configuration, printed, to notice a change; the source).
    by_name: BTreeMap<String, (String, MdmSource)>,
    settings: HttpSettings,
}

impl MdmSources {
    /// Sources with these client settings (tests: the stand-ins' CA); the daemon uses the
    /// defaults (the OS roots, which honour `SSL_CERT_FILE`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn new(settings: HttpSettings) -> Self {
        MdmSources {
            by_name: BTreeMap::new(),
            settings,
        }
    }

    /// The client for `source`, built now (reading its secret file) when there is none yet or
    /// its configuration changed. `Ok(None)`: not a Jamf Pro or Intune source.
    pub fn source_mut(
        &mut self,
        source: &ComplianceSource,
    ) -> Result<Option<&mut MdmSource>, SourceError> {
        let name = &source.name.value;
        let fingerprint = format!("{:?}", source.kind);
        if self
            .by_name
            .get(name)
            .is_none_or(|(f, _)| *f != fingerprint)
        {
            self.by_name.remove(name);
            match MdmSource::from_config(&source.kind, &self.settings)? {
                Some(src) => {
                    self.by_name.insert(name.clone(), (fingerprint, src));
                }
                None => return Ok(None),
            }
        }
        Ok(self.by_name.get_mut(name).map(|(_, s)| s))
    }

    /// Runs `op` on the client for `source`. An authentication failure drops the client, so
    /// the next use rebuilds it (re-reading its secret file). `None`: not an MDM source.
    async fn with_source<T>(
        &mut self,
        source: &ComplianceSource,
        op: impl AsyncFnOnce(&mut MdmSource) -> Result<T, SourceError>,
    ) -> Option<Result<T, SourceError>> {
        let answer = match self.source_mut(source) {
            Ok(Some(src)) => op(src).await,
            Ok(None) => return None,
            Err(e) => Err(e),
        };
        if matches!(
            answer,
            Err(SourceError::Auth { .. }) | Err(SourceError::Config(_))
        ) {
            self.by_name.remove(&source.name.value);
        }
        Some(answer)
    }

    /// Full sync of one Jamf Pro or Intune source; `None` for other types.
    pub async fn fetch_one(
        &mut self,
        source: &ComplianceSource,
    ) -> Option<Result<Vec<MdmDevice>, SourceError>> {
        let started = std::time::Instant::now();
        let answer = self
            .with_source(source, async |s| s.full_sync().await)
            .await;
        if let Some(a) = &answer {
            tracing::debug!(source = %source.name.value, ms = started.elapsed().as_millis() as u64, ok = a.is_ok(), "MDM full sync");
        }
        answer
    }

    /// Re-reads what a Jamf webhook names; `None` for other types.
    pub async fn refresh_hint(
        &mut self,
        source: &ComplianceSource,
        hint: &JamfHint,
    ) -> Option<Result<Vec<MdmDevice>, SourceError>> {
        self.with_source(source, async |s| s.refresh_hint(hint).await)
            .await
    }

    /// Re-reads one device; `Ok(None)`: the MDM does not know it. `None` for other types.
    pub async fn refresh_device(
        &mut self,
        source: &ComplianceSource,
        serial: &str,
    ) -> Option<Result<Option<MdmDevice>, SourceError>> {
        self.with_source(source, async |s| s.refresh_device(serial).await)
            .await
    }

    /// Drops the clients of sources `cfg` no longer configures.
    pub fn prune(&mut self, cfg: &Config) {
        self.by_name
            .retain(|name, _| cfg.compliance.sources.iter().any(|s| s.name.value == *name));
    }
}
