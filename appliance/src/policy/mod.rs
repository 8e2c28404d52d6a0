//! The policy engine: a pure function from (device state, requested target, now) to a
//! [`Decision`] — the egress, how its source address is chosen, and the chain of reasons.
//!
//! How a target is decided:
//! 1. The apps matching the target are ranked by specificity (an exact host name beats any
//!    `*.suffix`, a longer suffix beats a shorter one, a longer CIDR prefix beats a shorter one;
//!    ties go to the app written first). Ports narrow an app when it lists any.
//! 2. For the most specific app that some policy names, the first such policy in file order
//!    applies. No app, or no policy: `[defaults] egress`, which is never trusted.
//! 3. The policy checks the device. Passing every check gives the policy's egress; failing any
//!    gives its fallback (never trusted; validation refuses a trusted one).
//!
//! Fail closed (DESIGN.md invariant 1): a trusted egress (tunnel or internet) is only ever
//! handed out when *all* of these hold, whatever the policy says: the certificate is inside its
//! validity window, the device is known, its data is at most `compliance.max_age` old (and not
//! from the future), it is managed, it is in a compliant group, it is in one of the policy's
//! groups if the policy names any, and its risk is at most the policy's `max_risk`. The property
//! tests in `proptests.rs` generate inputs to break this.

#[cfg(test)]
mod proptests;
mod target;

pub use target::{Protocol, Target, TargetHost};

use config::{Config, EgressKind, NatMode, Outcome, RiskLevel};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Clock skew tolerated on `confirmed_at` before data counts as from the future (and unknown).
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// What the compliance store knows of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceRecord {
    pub managed: bool,
    pub groups: BTreeSet<String>,
    pub risk: RiskLevel,
    /// The source that said so.
    pub source: String,
    /// When a source last confirmed this record.
    #[serde(with = "unix_secs")]
    pub confirmed_at: SystemTime,
}

/// The device a request comes from, as far as the decision is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceState {
    /// Serial number from the certificate.
    pub serial: String,
    /// `None`: no source knows this device.
    pub record: Option<DeviceRecord>,
    /// The client certificate's validity window.
    #[serde(with = "unix_secs")]
    pub cert_not_before: SystemTime,
    #[serde(with = "unix_secs")]
    pub cert_not_after: SystemTime,
}

/// How the source address of an outgoing connection is chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceSelection {
    /// From the tunnel's NAT pool.
    NatPool { pool: IpNet, mode: NatModeName },
    /// The first usable of these, in order (the dedicated pair).
    Addresses { addresses: Vec<IpAddr> },
    /// This address.
    Fixed { address: IpAddr },
    /// The address of the default route.
    DefaultRoute,
}

/// [`NatMode`] for output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatModeName {
    PerDevice,
    Shared,
}

/// Where the flow goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Verdict {
    /// Out through a named egress.
    Egress {
        egress: String,
        /// `tunnel`, `internet` or `public`.
        egress_type: &'static str,
        trusted: bool,
        source: SourceSelection,
    },
    /// Refused with this HTTP status.
    Deny { status: u16 },
    /// The client is told to go direct (503, Proxy-Status destination_unavailable).
    Direct,
}

impl Verdict {
    /// True when the flow would leave from a trusted address.
    pub fn is_trusted(&self) -> bool {
        matches!(self, Verdict::Egress { trusted: true, .. })
    }
    /// A short name: the egress, `deny` or `direct`.
    pub fn name(&self) -> &str {
        match self {
            Verdict::Egress { egress, .. } => egress,
            Verdict::Deny { .. } => "deny",
            Verdict::Direct => "direct",
        }
    }
}

/// One step of the reasoning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// What was checked: `app`, `policy`, `certificate`, `known`, `fresh`, `managed`,
    /// `compliant`, `groups`, `risk`, `outcome`.
    pub check: &'static str,
    /// `None` for steps that are not pass/fail (which app, which policy).
    pub passed: Option<bool>,
    pub detail: String,
}

/// The answer for one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub verdict: Verdict,
    pub app: Option<String>,
    pub policy: Option<String>,
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// The first failed check, if any: the short "why" for logs.
    pub fn failed(&self) -> Option<&Reason> {
        self.reasons.iter().find(|r| r.passed == Some(false))
    }
}

/// The compiled policy of one configuration.
#[derive(Debug, Clone)]
pub struct PolicyEngine {
    config: std::sync::Arc<Config>,
}

enum Match {
    Host { pattern: String, rank: (u8, usize) },
    Cidr { net: IpNet },
}

impl Match {
    fn rank(&self) -> (u8, usize) {
        match self {
            Match::Host { rank, .. } => *rank,
            Match::Cidr { net } => (1, usize::from(net.prefix_len())),
        }
    }
    fn describe(&self) -> String {
        match self {
            Match::Host { pattern, .. } => pattern.clone(),
            Match::Cidr { net } => net.to_string(),
        }
    }
}

impl PolicyEngine {
    pub fn new(config: std::sync::Arc<Config>) -> Self {
        PolicyEngine { config }
    }

    /// Decides one request. Pure: the same inputs give the same decision.
    pub fn decide(&self, device: &DeviceState, target: &Target, now: SystemTime) -> Decision {
        let cfg = &*self.config;
        let mut reasons = Vec::new();

        // 1. apps, most specific first
        let mut candidates: Vec<(usize, Match)> = cfg
            .apps
            .iter()
            .enumerate()
            .filter_map(|(i, app)| {
                if !app.ports.is_empty() && !app.ports.iter().any(|p| p.contains(target.port)) {
                    return None;
                }
                let m = match &target.host {
                    TargetHost::Name(name) => app
                        .hosts
                        .iter()
                        .filter(|p| p.matches(name))
                        .max_by_key(|p| p.specificity())
                        .map(|p| Match::Host {
                            pattern: p.to_string(),
                            rank: p.specificity(),
                        }),
                    TargetHost::Ip(ip) => app
                        .cidrs
                        .iter()
                        .filter(|n| n.contains(ip))
                        .max_by_key(|n| n.prefix_len())
                        .map(|n| Match::Cidr { net: *n }),
                }?;
                Some((i, m))
            })
            .collect();
        candidates.sort_by(|(ia, a), (ib, b)| b.rank().cmp(&a.rank()).then(ia.cmp(ib)));

        let chosen = candidates.iter().find_map(|(i, m)| {
            let app = &cfg.apps[*i];
            cfg.policies
                .iter()
                .position(|p| p.apps.iter().any(|a| a.value == app.name.value))
                .map(|pi| (app, m, pi))
        });

        let Some((app, m, pi)) = chosen else {
            let detail = match candidates.first() {
                Some((i, m)) => format!(
                    "{target} matches app {} ({}), which no policy names",
                    cfg.apps[*i].name.value,
                    m.describe()
                ),
                None => format!("{target} matches no app"),
            };
            reasons.push(Reason {
                check: "app",
                passed: None,
                detail,
            });
            let verdict = self.verdict(&cfg.defaults.egress.value);
            let verdict = self.never_trusted(verdict, &mut reasons);
            reasons.push(Reason {
                check: "outcome",
                passed: None,
                detail: format!("[defaults] egress: {}", verdict.name()),
            });
            return Decision {
                verdict,
                app: None,
                policy: None,
                reasons,
            };
        };

        reasons.push(Reason {
            check: "app",
            passed: None,
            detail: format!("{target} matches app {} ({})", app.name.value, m.describe()),
        });
        let policy = &cfg.policies[pi];
        reasons.push(Reason {
            check: "policy",
            passed: None,
            detail: format!(
                "policy {} (#{}) applies: egress {}, fallback {}",
                policy.name.value,
                pi + 1,
                policy.egress.value,
                policy.fallback.value
            ),
        });

        // 2. the device
        let egress_trusted = self.outcome_trusted(&policy.egress.value);
        let mut ok = true;
        let mut check =
            |reasons: &mut Vec<Reason>, name: &'static str, passed: bool, detail: String| {
                ok &= passed;
                reasons.push(Reason {
                    check: name,
                    passed: Some(passed),
                    detail,
                });
            };

        let cert_ok = device.cert_not_before <= now && now <= device.cert_not_after;
        check(
            &mut reasons,
            "certificate",
            cert_ok,
            if cert_ok {
                format!(
                    "certificate valid for another {}",
                    human(
                        device
                            .cert_not_after
                            .duration_since(now)
                            .unwrap_or_default()
                    )
                )
            } else if now < device.cert_not_before {
                "certificate not yet valid".to_string()
            } else {
                format!(
                    "certificate expired {} ago",
                    human(
                        now.duration_since(device.cert_not_after)
                            .unwrap_or_default()
                    )
                )
            },
        );

        // Every other check needs data about the device, unless the policy asks for nothing
        // (an untrusted egress with managed = false, no groups and max_risk = high).
        let needs_data = egress_trusted
            || policy.managed
            || !policy.groups.is_empty()
            || policy.max_risk < RiskLevel::High;
        let max_age = cfg.compliance.max_age;
        match &device.record {
            None => {
                if needs_data {
                    check(
                        &mut reasons,
                        "known",
                        false,
                        format!(
                            "device {} is unknown to every compliance source",
                            device.serial
                        ),
                    );
                }
            }
            Some(rec) => {
                check(
                    &mut reasons,
                    "known",
                    true,
                    format!("device {} known to source {}", device.serial, rec.source),
                );
                let fresh = match now.duration_since(rec.confirmed_at) {
                    Ok(age) if age <= max_age => {
                        Ok(format!("data {} old (max {})", human(age), human(max_age)))
                    }
                    Ok(age) => Err(format!(
                        "data {} old, over the maximum age {}",
                        human(age),
                        human(max_age)
                    )),
                    Err(e) if e.duration() <= MAX_CLOCK_SKEW => {
                        Ok("data confirmed just now".to_string())
                    }
                    Err(e) => Err(format!(
                        "data claims to be from {} in the future",
                        human(e.duration())
                    )),
                };
                if needs_data {
                    match fresh {
                        Ok(d) => check(&mut reasons, "fresh", true, d),
                        Err(d) => check(&mut reasons, "fresh", false, d),
                    }
                }
                if policy.managed || egress_trusted {
                    check(
                        &mut reasons,
                        "managed",
                        rec.managed,
                        if rec.managed {
                            "managed by the MDM".into()
                        } else {
                            "not managed by the MDM".into()
                        },
                    );
                }
                if egress_trusted {
                    let hit = cfg
                        .compliance
                        .compliant_groups
                        .iter()
                        .find(|g| rec.groups.contains(*g));
                    check(
                        &mut reasons,
                        "compliant",
                        hit.is_some(),
                        match hit {
                            Some(g) => format!("in compliant group \"{g}\""),
                            None => format!(
                                "in no compliant group (needs one of: {})",
                                quoted(&cfg.compliance.compliant_groups)
                            ),
                        },
                    );
                }
                if !policy.groups.is_empty() {
                    let hit = policy.groups.iter().find(|g| rec.groups.contains(*g));
                    check(
                        &mut reasons,
                        "groups",
                        hit.is_some(),
                        match hit {
                            Some(g) => format!("in policy group \"{g}\""),
                            None => format!(
                                "in none of the policy's groups ({})",
                                quoted(&policy.groups)
                            ),
                        },
                    );
                }
                if policy.max_risk < RiskLevel::High || egress_trusted {
                    let within = rec.risk <= policy.max_risk;
                    check(
                        &mut reasons,
                        "risk",
                        within,
                        format!(
                            "risk {} {} max {}",
                            rec.risk.as_str(),
                            if within { "within" } else { "over" },
                            policy.max_risk.as_str()
                        ),
                    );
                }
            }
        }

        // 3. the outcome
        let (which, outcome) = if ok {
            ("egress", &policy.egress.value)
        } else {
            ("fallback", &policy.fallback.value)
        };
        let mut verdict = self.verdict(outcome);
        if !ok {
            verdict = self.never_trusted(verdict, &mut reasons);
        }
        reasons.push(Reason {
            check: "outcome",
            passed: None,
            detail: format!("{which}: {}", verdict.name()),
        });
        Decision {
            verdict,
            app: Some(app.name.value.clone()),
            policy: Some(policy.name.value.clone()),
            reasons,
        }
    }

    fn outcome_trusted(&self, outcome: &Outcome) -> bool {
        match outcome {
            Outcome::Egress(n) => self.config.egress(n).is_none_or(|e| e.is_trusted()),
            Outcome::Deny | Outcome::Direct => false,
        }
    }

    /// Defence in depth behind validation: a path that must not be trusted never is.
    fn never_trusted(&self, verdict: Verdict, reasons: &mut Vec<Reason>) -> Verdict {
        if verdict.is_trusted() {
            reasons.push(Reason {
                check: "outcome",
                passed: Some(false),
                detail: format!(
                    "refusing trusted egress {} on an untrusted path",
                    verdict.name()
                ),
            });
            return Verdict::Deny {
                status: self.config.defaults.deny_status.code(),
            };
        }
        verdict
    }

    fn verdict(&self, outcome: &Outcome) -> Verdict {
        let deny = Verdict::Deny {
            status: self.config.defaults.deny_status.code(),
        };
        match outcome {
            Outcome::Deny => deny,
            Outcome::Direct => Verdict::Direct,
            Outcome::Egress(name) => match self.config.egress(name) {
                // Validation makes this impossible; fail closed anyway.
                None => deny,
                Some(e) => Verdict::Egress {
                    egress: name.clone(),
                    egress_type: e.type_name(),
                    trusted: e.is_trusted(),
                    source: match &e.kind {
                        EgressKind::Tunnel(t) => SourceSelection::NatPool {
                            pool: t.nat_pool.value,
                            mode: match t.nat_mode {
                                NatMode::PerDevice => NatModeName::PerDevice,
                                NatMode::Shared => NatModeName::Shared,
                            },
                        },
                        EgressKind::Internet(i) => SourceSelection::Addresses {
                            addresses: i.source_addresses.iter().map(|a| a.value).collect(),
                        },
                        EgressKind::Public(p) => match p.source_address {
                            Some(address) => SourceSelection::Fixed { address },
                            None => SourceSelection::DefaultRoute,
                        },
                    },
                },
            },
        }
    }
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A duration for people: `42s`, `3m12s`, `2h5m`, `3d4h`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

mod unix_secs {
    use serde::Serializer;
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(crate::timefmt::unix(*t))
    }
}

#[cfg(test)]
mod tests;
