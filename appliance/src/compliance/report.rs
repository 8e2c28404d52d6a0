//! What the operator sees of a device: compliant or not and why (`attestgate devices`),
//! every fact with its source and age (`attestgate device show`).

use super::{normalize_serial, DeviceTable, OVERRIDE_SOURCE};
use config::{Config, RiskLevel};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::time::SystemTime;

/// `attestgate devices` filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFilter {
    /// Only devices that are not compliant.
    #[serde(default)]
    pub noncompliant: bool,
    /// Only devices in this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Only devices this source (or `override`, `risk-feed`) says something about.
    #[serde(default)]
    pub source: Option<String>,
    /// Only devices at this risk level or worse.
    #[serde(default)]
    pub risk: Option<RiskLevel>,
}

fn age_secs(now: SystemTime, t: SystemTime) -> u64 {
    now.duration_since(t).unwrap_or_default().as_secs()
}

impl DeviceTable {
    /// One line of `attestgate devices`; `None` when the filter drops it.
    pub fn list_entry(
        &self,
        serial: &str,
        cfg: &Config,
        now: SystemTime,
        filter: &DeviceFilter,
    ) -> Option<Value> {
        let view = self.view(serial);
        let record = self.get(serial);
        let verdict = self.verdict(serial, cfg, now);
        if filter.noncompliant && verdict.compliant {
            return None;
        }
        if filter
            .group
            .as_ref()
            .is_some_and(|g| !view.groups.contains(g))
        {
            return None;
        }
        if filter
            .source
            .as_ref()
            .is_some_and(|s| !view.sources.contains(s))
        {
            return None;
        }
        if let Some(min) = filter.risk {
            if record.as_ref().is_none_or(|r| r.risk < min) {
                return None;
            }
        }
        Some(json!({
            "serial": normalize_serial(serial),
            "known": view.known,
            "compliant": verdict.compliant,
            "why": verdict.why,
            "managed": view.managed,
            "groups": view.groups,
            "risk": record.as_ref().map(|r| r.risk),
            "blocked": view.blocked.is_some(),
            "sources": view.sources,
            "source": record.as_ref().map(|r| r.source.clone()),
            "age_secs": record.as_ref().map(|r| age_secs(now, r.confirmed_at)),
        }))
    }

    /// `attestgate devices`.
    pub fn list(&self, cfg: &Config, now: SystemTime, filter: &DeviceFilter) -> Value {
        let devices: Vec<Value> = self
            .serials()
            .iter()
            .filter_map(|s| self.list_entry(s, cfg, now, filter))
            .collect();
        json!({ "devices": devices, "filter": filter })
    }

    /// `attestgate device show`: the verdict, the merged record, every fact with its source
    /// and age, and the overrides.
    pub fn show(&self, serial: &str, cfg: &Config, now: SystemTime) -> Value {
        let serial = normalize_serial(serial);
        let facts: Vec<Value> = self
            .facts(&serial)
            .into_iter()
            .map(|(source, f)| {
                json!({
                    "source": source,
                    "type": self.kind_of(source),
                    "managed": f.managed,
                    "groups": f.groups,
                    "risk": f.risk,
                    "risk_reasons": f.risk_reasons,
                    "udids": f.udids,
                    "platform": f.platform,
                    "confirmed_at": crate::timefmt::unix(f.confirmed_at),
                    "age_secs": age_secs(now, f.confirmed_at),
                    "stale": now.duration_since(f.confirmed_at).unwrap_or_default() > cfg.compliance.max_age,
                    "expires": f.expires.map(crate::timefmt::unix),
                })
            })
            .collect();
        let o = self.overrides(&serial);
        let overrides: Vec<Value> = [("block", &o.block), ("risk", &o.risk)]
            .into_iter()
            .filter_map(|(kind, e)| {
                e.as_ref().map(|e| {
                    json!({
                        "source": OVERRIDE_SOURCE,
                        "kind": kind,
                        "level": e.level,
                        "reason": e.reason,
                        "set_at": e.set_at,
                        "age_secs": u64::try_from(crate::timefmt::unix(now) - e.set_at).unwrap_or(0),
                        "until": e.until,
                    })
                })
            })
            .collect();
        json!({
            "serial": serial,
            "verdict": self.verdict(&serial, cfg, now),
            "view": self.view(&serial),
            "record": self.get(&serial),
            "facts": facts,
            "overrides": overrides,
            "max_age_secs": cfg.compliance.max_age.as_secs(),
        })
    }

    /// Compliant or not, and why: the checks every trusted egress needs (DESIGN.md invariant
    /// 1), independent of the target. Risk is held against the loosest `max_risk` of the
    /// policies that lead to a trusted egress.
    pub fn verdict(&self, serial: &str, cfg: &Config, now: SystemTime) -> ComplianceVerdict {
        let serial = normalize_serial(serial);
        let mut checks = Vec::new();
        let mut check = |name: &'static str, passed: bool, detail: String| {
            checks.push(Check {
                check: name,
                passed,
                detail,
            })
        };
        let record = self.get(&serial);
        let view = self.view(&serial);
        match &record {
            None => check(
                "known",
                false,
                format!("{serial} is unknown to every inventory source"),
            ),
            Some(r) => {
                let inventory: Vec<&str> = self
                    .facts(&serial)
                    .into_iter()
                    .filter(|(_, f)| f.managed.is_some())
                    .map(|(name, _)| name)
                    .collect();
                check("known", true, format!("listed by {}", inventory.join(", ")));
                let max_age = cfg.compliance.max_age;
                let human = crate::policy::human;
                match now.duration_since(r.confirmed_at) {
                    Ok(age) if age <= max_age => check(
                        "fresh",
                        true,
                        format!("confirmed {} ago (max {})", human(age), human(max_age)),
                    ),
                    Ok(age) => check(
                        "fresh",
                        false,
                        format!(
                            "confirmed {} ago, over the maximum age {}: counts as unknown",
                            human(age),
                            human(max_age)
                        ),
                    ),
                    Err(e) if e.duration() <= crate::policy::MAX_CLOCK_SKEW => {
                        check("fresh", true, "confirmed just now".into())
                    }
                    Err(e) => check(
                        "fresh",
                        false,
                        format!("confirmed {} in the future", human(e.duration())),
                    ),
                }
                check(
                    "managed",
                    r.managed,
                    if r.managed {
                        "managed by the MDM".into()
                    } else {
                        "not managed by the MDM".into()
                    },
                );
                if let Some(reason) = &view.blocked {
                    check(
                        "override",
                        false,
                        if reason.is_empty() {
                            "blocked by an operator override".to_string()
                        } else {
                            format!("blocked by an operator override: {reason}")
                        },
                    );
                }
                let hit = cfg
                    .compliance
                    .compliant_groups
                    .iter()
                    .find(|g| view.groups.contains(*g));
                check(
                    "compliant",
                    hit.is_some(),
                    match hit {
                        Some(g) => format!("in compliant group \"{g}\""),
                        None => format!(
                            "in no compliant group (needs one of: {})",
                            cfg.compliance.compliant_groups.join(", ")
                        ),
                    },
                );
                let loosest = cfg
                    .policies
                    .iter()
                    .filter(|p| match &p.egress.value {
                        config::Outcome::Egress(e) => cfg.egress(e).is_some_and(|e| e.is_trusted()),
                        _ => false,
                    })
                    .map(|p| p.max_risk)
                    .max();
                if let Some(max) = loosest {
                    let within = r.risk <= max;
                    check(
                        "risk",
                        within,
                        format!(
                            "risk {} {} the loosest trusted policy's max_risk {}{}",
                            r.risk.as_str(),
                            if within { "within" } else { "over" },
                            max.as_str(),
                            if view.risk_reasons.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", view.risk_reasons.join("; "))
                            }
                        ),
                    );
                }
            }
        }
        let why = checks.iter().find(|c| !c.passed).map(|c| c.detail.clone());
        ComplianceVerdict {
            compliant: why.is_none(),
            why,
            checks,
        }
    }
}

/// One check of [`DeviceTable::verdict`].
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub check: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Compliant or not, and why.
#[derive(Debug, Clone, Serialize)]
pub struct ComplianceVerdict {
    pub compliant: bool,
    /// The first failed check.
    pub why: Option<String>,
    pub checks: Vec<Check>,
}
