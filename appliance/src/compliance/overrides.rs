//! Operator overrides (`attestgate device block|risk|unblock|clear`): for labs and
//! emergencies, persisted with an optional expiry, shown as their own source `override`.
//!
//! Overrides only ever tighten (DESIGN.md invariant 1): a block takes the device out of every
//! compliant group and sets its risk to high; a risk override counts as one more risk
//! opinion and the worst opinion wins, so `device risk SERIAL secure` cannot mask what an MDM
//! or a threat-defence product says. To loosen, fix the source (or clear the override). An
//! override never makes an unknown device known.

use config::RiskLevel;
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The pseudo-source name overrides show under.
pub const OVERRIDE_SOURCE: &str = "override";

/// One override.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideEntry {
    /// The risk level of a risk override; `None` for a block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<RiskLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds.
    pub set_at: i64,
    /// Unix seconds; `None`: until cleared.
    #[serde(default)]
    pub until: Option<i64>,
}

impl OverrideEntry {
    pub fn active(&self, now: SystemTime) -> bool {
        self.until.is_none_or(|u| crate::timefmt::unix(now) < u)
    }
}

/// A device's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<OverrideEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<OverrideEntry>,
}

impl Overrides {
    pub fn is_empty(&self) -> bool {
        self.block.is_none() && self.risk.is_none()
    }

    /// Drops entries that have lapsed; true when something was dropped.
    pub fn expire(&mut self, now: SystemTime) -> bool {
        let mut changed = false;
        for slot in [&mut self.block, &mut self.risk] {
            if slot.as_ref().is_some_and(|e| !e.active(now)) {
                *slot = None;
                changed = true;
            }
        }
        changed
    }
}

/// What an override request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OverrideAction {
    /// Block (with an optional expiry).
    Block,
    /// Set a risk level (with an optional expiry).
    Risk,
    /// Remove the block.
    Unblock,
    /// Remove every override of the device.
    Clear,
}

impl OverrideAction {
    pub fn as_str(self) -> &'static str {
        match self {
            OverrideAction::Block => "block",
            OverrideAction::Risk => "risk",
            OverrideAction::Unblock => "unblock",
            OverrideAction::Clear => "clear",
        }
    }
}

/// Applies `action` to `current`; `Err` for a request that makes no sense.
pub fn apply(
    current: &Overrides,
    action: OverrideAction,
    level: Option<RiskLevel>,
    reason: Option<String>,
    until: Option<i64>,
    now: SystemTime,
) -> Result<Overrides, String> {
    let now_secs = crate::timefmt::unix(now);
    if let Some(u) = until {
        if u <= now_secs {
            return Err(format!(
                "the expiry {} is not in the future",
                crate::timefmt::rfc3339(u)
            ));
        }
    }
    let reason = reason
        .map(|r| r.trim().chars().take(500).collect::<String>())
        .filter(|r| !r.is_empty());
    let entry = |level| OverrideEntry {
        level,
        reason: reason.clone(),
        set_at: now_secs,
        until,
    };
    let mut next = current.clone();
    match action {
        OverrideAction::Block => next.block = Some(entry(None)),
        OverrideAction::Risk => {
            let Some(level) = level else {
                return Err("a risk override needs a level (secure, low, medium, high)".into());
            };
            next.risk = Some(entry(Some(level)));
        }
        OverrideAction::Unblock => next.block = None,
        OverrideAction::Clear => next = Overrides::default(),
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn overrides_expire_and_refuse_nonsense() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let t = crate::timefmt::unix(now);
        let o = apply(
            &Overrides::default(),
            OverrideAction::Block,
            None,
            Some("  lost in a taxi ".into()),
            Some(t + 60),
            now,
        )
        .unwrap();
        assert_eq!(
            o.block.as_ref().unwrap().reason.as_deref(),
            Some("lost in a taxi")
        );
        let o = apply(
            &o,
            OverrideAction::Risk,
            Some(RiskLevel::High),
            None,
            None,
            now,
        )
        .unwrap();
        assert_eq!(o.risk.as_ref().unwrap().level, Some(RiskLevel::High));
        let later = now + Duration::from_secs(61);
        assert!(!o.block.as_ref().unwrap().active(later));
        let mut e = o.clone();
        assert!(e.expire(later));
        assert!(e.block.is_none() && e.risk.is_some());
        assert!(!e.expire(later));
        assert!(apply(&o, OverrideAction::Risk, None, None, None, now).is_err());
        assert!(apply(&o, OverrideAction::Block, None, None, Some(t), now).is_err());
        assert!(apply(&o, OverrideAction::Unblock, None, None, None, now)
            .unwrap()
            .block
            .is_none());
        assert!(apply(&o, OverrideAction::Clear, None, None, None, now)
            .unwrap()
            .is_empty());
    }
}
