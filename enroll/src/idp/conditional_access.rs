//! Our evaluation of Conditional Access policy documents for a sign-in from one address.
//!
//! This reads the policies as Graph v1.0 returns them (`GET /identity/conditionalAccess/
//! policies`, resource "conditionalAccessPolicy") and applies the documented semantics of the
//! parts that decide between a trusted and an untrusted network position. It is not Entra's own
//! evaluation: Graph has a What If evaluation (`POST /identity/conditionalAccess/evaluate`,
//! resource "whatIfAnalysisResult"), but only in the beta API, which Microsoft does not support
//! for production use, so we do not depend on it. What we evaluate:
//!
//! - `state`: only `enabled` policies are enforced; `enabledForReportingButNotEnforced`
//!   (report-only) and `disabled` are listed and ignored.
//! - `conditions.locations` (conditionalAccessLocations): absent or null → the policy ignores
//!   the location. `includeLocations` / `excludeLocations` hold named-location ids, `All`
//!   (any location) or `AllTrusted` (every location marked trusted). Exclusion wins.
//!   Country locations never match an address here (we cannot geolocate); Entra's legacy MFA
//!   "trusted IPs" (`00000000-0000-0000-0000-000000000000`) are not visible through this API.
//! - `grantControls` (conditionalAccessGrantControls): `builtInControls` `block` blocks;
//!   `compliantDevice` and `domainJoinedDevice` are the managed-device requirements; with
//!   `operator` `AND` any of them is required, with `OR` only when every alternative (built-in
//!   controls, custom factors, terms of use, an authentication strength) is one.
//! - Every enforced policy that applies must be satisfied, so a block anywhere blocks.
//! - Users and applications are not evaluated per user: a policy whose `includeUsers` is `All`
//!   and whose `includeApplications` is `All` or `Office365` *covers* sign-ins (exclusions,
//!   e.g. break-glass accounts, are reported). A policy with a narrower scope, or with other
//!   conditions (platforms, client apps, risk, device filters…), may not apply to a given
//!   sign-in: it is reported, and never counted as protecting the untrusted position.

use super::named_location::NamedLocation;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::net::IpAddr;

/// A page of the policies collection.
#[derive(Debug, Deserialize)]
pub struct PolicyPage {
    pub value: Vec<Policy>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

/// The parts of a conditionalAccessPolicy we read. Unknown fields are ignored (Graph adds
/// conditions over time); a field of the wrong type fails the decoding (fail closed).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub id: String,
    #[serde(default)]
    pub display_name: String,
    /// `enabled`, `disabled`, `enabledForReportingButNotEnforced`.
    pub state: String,
    #[serde(default)]
    pub conditions: Option<Conditions>,
    #[serde(default)]
    pub grant_controls: Option<GrantControls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Conditions {
    #[serde(default)]
    pub users: Option<Users>,
    #[serde(default)]
    pub applications: Option<Applications>,
    #[serde(default)]
    pub locations: Option<Locations>,
    /// The remaining conditions, only to say that they exist.
    #[serde(flatten)]
    pub other: serde_json::Map<String, Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Users {
    #[serde(default)]
    pub include_users: Vec<String>,
    #[serde(default)]
    pub exclude_users: Vec<String>,
    #[serde(default)]
    pub include_groups: Vec<String>,
    #[serde(default)]
    pub exclude_groups: Vec<String>,
    #[serde(default)]
    pub include_roles: Vec<String>,
    #[serde(default)]
    pub exclude_roles: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Applications {
    #[serde(default)]
    pub include_applications: Vec<String>,
    #[serde(default)]
    pub exclude_applications: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Locations {
    #[serde(default)]
    pub include_locations: Vec<String>,
    #[serde(default)]
    pub exclude_locations: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantControls {
    #[serde(default)]
    pub operator: Option<String>,
    #[serde(default)]
    pub built_in_controls: Vec<String>,
    #[serde(default)]
    pub custom_authentication_factors: Vec<String>,
    #[serde(default)]
    pub terms_of_use: Vec<String>,
    #[serde(default)]
    pub authentication_strength: Option<Value>,
}

/// What a policy demands of a sign-in it applies to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Demand {
    /// Grant controls absent (session controls only): nothing to satisfy.
    Nothing,
    /// Controls other than a managed device (MFA, terms of use…), or a managed device as one
    /// alternative among others.
    Controls,
    /// A compliant or hybrid-joined device, unavoidably.
    ManagedDevice,
    Block,
}

impl GrantControls {
    fn demand(&self) -> (Demand, String) {
        let device = |c: &String| c == "compliantDevice" || c == "domainJoinedDevice";
        if self.built_in_controls.iter().any(|c| c == "block") {
            return (Demand::Block, "block".into());
        }
        let mut alternatives: Vec<String> = self.built_in_controls.clone();
        alternatives.extend(self.custom_authentication_factors.iter().cloned());
        alternatives.extend(self.terms_of_use.iter().map(|t| format!("termsOfUse {t}")));
        if self
            .authentication_strength
            .as_ref()
            .is_some_and(|v| !v.is_null())
        {
            alternatives.push("authenticationStrength".into());
        }
        if alternatives.is_empty() {
            return (Demand::Nothing, "no grant controls".into());
        }
        let and = self
            .operator
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case("AND"));
        let joiner = if and { " and " } else { " or " };
        let text = format!("require {}", alternatives.join(joiner));
        let managed = if and {
            self.built_in_controls.iter().any(device)
        } else {
            alternatives.iter().all(device)
        };
        (
            if managed {
                Demand::ManagedDevice
            } else {
                Demand::Controls
            },
            text,
        )
    }
}

/// How a policy bears on a sign-in from one address.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyEffect {
    pub id: String,
    pub name: String,
    /// Enforced and its location condition matches the address.
    pub applies: bool,
    /// Why it applies or not, in words.
    pub why: String,
    pub demand: Demand,
    /// The grant controls in words.
    pub grant: String,
    /// All users and all (or Office 365) apps, without other conditions.
    pub covers_all_sign_ins: bool,
    /// What limits the scope, for the operator.
    pub scope: String,
}

/// The outcome for one address.
#[derive(Debug, Clone, Serialize)]
pub struct AddressVerdict {
    pub address: IpAddr,
    /// The named locations the address is in (display names).
    pub in_locations: Vec<String>,
    /// The worst demand of the policies that apply and cover every sign-in.
    pub outcome: Demand,
    /// The worst demand of every policy that applies (narrow ones included).
    pub outcome_any_scope: Demand,
    pub policies: Vec<PolicyEffect>,
}

fn location_matches(
    id: &str,
    addr: IpAddr,
    locations: &[NamedLocation],
    notes: &mut Vec<String>,
) -> bool {
    match id {
        "All" => true,
        "AllTrusted" => locations.iter().any(|l| l.is_trusted && l.contains(addr)),
        _ => match locations.iter().find(|l| l.id == id) {
            Some(l) if l.is_ip() => l.contains(addr),
            Some(l) => {
                notes.push(format!(
                    "country location \"{}\" not evaluated",
                    l.display_name
                ));
                false
            }
            None => {
                notes.push(format!("location id {id} not found"));
                false
            }
        },
    }
}

fn location_name(id: &str, locations: &[NamedLocation]) -> String {
    match id {
        "All" | "AllTrusted" => id.to_string(),
        _ => locations
            .iter()
            .find(|l| l.id == id)
            .map(|l| format!("\"{}\"", l.display_name))
            .unwrap_or_else(|| format!("unknown location {id}")),
    }
}

fn scope(c: Option<&Conditions>) -> (bool, String) {
    let Some(c) = c else {
        return (false, "no conditions".into());
    };
    let mut notes = Vec::new();
    let users = c.users.clone().unwrap_or_default();
    let all_users = users.include_users.iter().any(|u| u == "All");
    if !all_users {
        notes.push(format!(
            "only some users ({} users, {} groups, {} roles)",
            users.include_users.len(),
            users.include_groups.len(),
            users.include_roles.len()
        ));
    }
    let excluded =
        users.exclude_users.len() + users.exclude_groups.len() + users.exclude_roles.len();
    if excluded > 0 {
        notes.push(format!("{excluded} users/groups/roles excluded"));
    }
    let apps = c.applications.clone().unwrap_or_default();
    let all_apps = apps
        .include_applications
        .iter()
        .any(|a| a == "All" || a == "Office365");
    if !all_apps {
        notes.push(format!(
            "only some applications ({})",
            apps.include_applications.join(", ")
        ));
    }
    if !apps.exclude_applications.is_empty() {
        notes.push(format!(
            "{} applications excluded",
            apps.exclude_applications.len()
        ));
    }
    let others: Vec<&String> = c
        .other
        .iter()
        .filter(|(k, v)| !is_empty_condition(k, v))
        .map(|(k, _)| k)
        .collect();
    if !others.is_empty() {
        notes.push(format!(
            "also conditions on {}",
            others
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let covers = all_users && all_apps && others.is_empty();
    let text = if notes.is_empty() {
        "all users, all applications".into()
    } else {
        notes.join("; ")
    };
    (covers, text)
}

/// Graph prints unused conditions as null or empty lists, and `clientAppTypes: ["all"]`.
fn is_empty_condition(key: &str, v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => {
            a.is_empty() || (key == "clientAppTypes" && a.iter().all(|x| x.as_str() == Some("all")))
        }
        Value::Object(o) => o.values().all(|x| is_empty_condition("", x)),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Evaluates every policy for a sign-in from `addr`.
pub fn evaluate(addr: IpAddr, policies: &[Policy], locations: &[NamedLocation]) -> AddressVerdict {
    let mut effects = Vec::new();
    let mut outcome = Demand::Nothing;
    let mut outcome_any = Demand::Nothing;
    for p in policies {
        let (demand, grant) = p
            .grant_controls
            .as_ref()
            .map(GrantControls::demand)
            .unwrap_or((Demand::Nothing, "no grant controls".into()));
        let (covers, scope_text) = scope(p.conditions.as_ref());
        let (applies, why) = if p.state != "enabled" {
            let what = if p.state == "enabledForReportingButNotEnforced" {
                "report-only: not enforced".to_string()
            } else {
                format!("{}: not enforced", p.state)
            };
            (false, what)
        } else {
            match p.conditions.as_ref().and_then(|c| c.locations.as_ref()) {
                None => (true, "no location condition: applies everywhere".into()),
                Some(l) => {
                    let mut notes = Vec::new();
                    let inc = l
                        .include_locations
                        .iter()
                        .find(|id| location_matches(id, addr, locations, &mut notes));
                    let exc = l
                        .exclude_locations
                        .iter()
                        .find(|id| location_matches(id, addr, locations, &mut notes));
                    let mut why = match (inc, exc) {
                        (Some(_), Some(e)) => (
                            false,
                            format!("excluded by location {}", location_name(e, locations)),
                        ),
                        (Some(i), None) => (
                            true,
                            format!("included by location {}", location_name(i, locations)),
                        ),
                        (None, _) => (false, "in none of its included locations".to_string()),
                    };
                    if !notes.is_empty() {
                        why.1 = format!("{} ({})", why.1, notes.join("; "));
                    }
                    why
                }
            }
        };
        if applies {
            outcome_any = outcome_any.max(demand.clone());
            if covers {
                outcome = outcome.max(demand.clone());
            }
        }
        effects.push(PolicyEffect {
            id: p.id.clone(),
            name: p.display_name.clone(),
            applies,
            why,
            demand,
            grant,
            covers_all_sign_ins: covers,
            scope: scope_text,
        });
    }
    AddressVerdict {
        address: addr,
        in_locations: locations
            .iter()
            .filter(|l| l.contains(addr))
            .map(|l| l.display_name.clone())
            .collect(),
        outcome,
        outcome_any_scope: outcome_any,
        policies: effects,
    }
}

/// The check: does Conditional Access treat the two positions differently, as intended?
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub trusted: AddressVerdict,
    pub untrusted: AddressVerdict,
    /// True when they differ as intended.
    pub ok: bool,
    /// Why not (empty when ok).
    pub problems: Vec<String>,
    /// Worth knowing even when ok.
    pub warnings: Vec<String>,
}

/// Intended: from the trusted address, sign-in works without a managed-device requirement;
/// from the untrusted one, every sign-in is blocked or needs a managed device.
pub fn check(
    trusted: IpAddr,
    untrusted: IpAddr,
    ours: Option<&NamedLocation>,
    policies: &[Policy],
    locations: &[NamedLocation],
) -> CheckReport {
    let t = evaluate(trusted, policies, locations);
    let u = evaluate(untrusted, policies, locations);
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    match ours {
        None => problems.push(
            "the named location does not exist: run `attestgate idp entra sync` first".into(),
        ),
        Some(l) => {
            if !l.is_trusted {
                problems.push(format!(
                    "the named location \"{}\" is not marked trusted, so `AllTrusted` does not include it: run `attestgate idp entra sync`",
                    l.display_name
                ));
            }
            if !l.contains(trusted) {
                problems.push(format!(
                    "the trusted address {trusted} is not in the named location \"{}\": run `attestgate idp entra sync`",
                    l.display_name
                ));
            }
            if l.contains(untrusted) {
                problems.push(format!(
                    "the untrusted address {untrusted} is in the named location \"{}\"",
                    l.display_name
                ));
            }
        }
    }
    let enforced: Vec<&Policy> = policies.iter().filter(|p| p.state == "enabled").collect();
    if t.outcome >= Demand::ManagedDevice {
        for e in t
            .policies
            .iter()
            .filter(|e| e.applies && e.covers_all_sign_ins && e.demand >= Demand::ManagedDevice)
        {
            problems.push(format!(
                "from the trusted address {trusted}, policy \"{}\" applies ({}) and would {}: exclude the named location (or AllTrusted) from it",
                e.name, e.why, e.grant
            ));
        }
    } else if t.outcome_any_scope >= Demand::ManagedDevice {
        for e in t
            .policies
            .iter()
            .filter(|e| e.applies && !e.covers_all_sign_ins && e.demand >= Demand::ManagedDevice)
        {
            warnings.push(format!(
                "from the trusted address, policy \"{}\" ({}) would still {} for the sign-ins it covers",
                e.name, e.scope, e.grant
            ));
        }
    }
    if u.outcome < Demand::ManagedDevice {
        let location_aware = enforced.iter().any(|p| {
            p.conditions
                .as_ref()
                .and_then(|c| c.locations.as_ref())
                .is_some()
        });
        let mut why = format!(
            "from the untrusted address {untrusted}, sign-in is {} by the policies that cover every sign-in",
            match u.outcome {
                Demand::Nothing => "allowed with no requirement",
                _ => "allowed without a managed device",
            }
        );
        if enforced.is_empty() {
            why.push_str(": no Conditional Access policy is enabled");
        } else if !location_aware {
            why.push_str(": no enabled policy has a location condition, so the trusted egress changes nothing");
        } else if u.outcome_any_scope >= Demand::ManagedDevice {
            why.push_str(": only policies limited to some users, applications or conditions block or need a managed device there");
        }
        why.push_str(". Intended: a policy for all users and applications that includes All locations, excludes the named location (or AllTrusted), and grants block or require compliantDevice");
        problems.push(why);
    }
    if t.outcome == u.outcome && problems.is_empty() {
        problems.push("both addresses get the same treatment".into());
    }
    CheckReport {
        ok: problems.is_empty(),
        trusted: t,
        untrusted: u,
        problems,
        warnings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idp::named_location::{IpRange, IP_NAMED_LOCATION};
    use serde_json::json;

    fn ours(trusted: bool) -> NamedLocation {
        NamedLocation {
            id: "loc-1".into(),
            odata_type: Some(IP_NAMED_LOCATION.into()),
            display_name: "attestgate trusted egress".into(),
            is_trusted: trusted,
            ip_ranges: vec![IpRange {
                odata_type: None,
                cidr_address: Some("203.0.113.30/32".into()),
                lower_address: None,
                upper_address: None,
            }],
        }
    }

    fn policies(v: Value) -> Vec<Policy> {
        serde_json::from_value::<PolicyPage>(json!({ "value": v }))
            .unwrap()
            .value
    }

    fn policy(name: &str, state: &str, locations: Value, grant: Value) -> Value {
        json!({
            "id": format!("p-{name}"), "displayName": name, "state": state,
            "conditions": {
                "users": {"includeUsers": ["All"], "excludeUsers": [], "includeGroups": []},
                "applications": {"includeApplications": ["All"], "excludeApplications": []},
                "clientAppTypes": ["all"], "platforms": null, "signInRiskLevels": [],
                "locations": locations,
            },
            "grantControls": grant,
        })
    }

    fn t() -> IpAddr {
        "203.0.113.30".parse().unwrap()
    }
    fn u() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn block_outside_trusted_passes() {
        let p = policies(json!([policy(
            "block untrusted",
            "enabled",
            json!({"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]}),
            json!({"operator": "OR", "builtInControls": ["block"]})
        )]));
        let l = [ours(true)];
        let r = check(t(), u(), Some(&l[0]), &p, &l);
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!(r.trusted.outcome, Demand::Nothing);
        assert_eq!(r.untrusted.outcome, Demand::Block);
        assert!(r.trusted.policies[0]
            .why
            .contains("excluded by location AllTrusted"));
        // the same policy with our location untrusted no longer excludes it
        let l = [ours(false)];
        let r = check(t(), u(), Some(&l[0]), &p, &l);
        assert!(!r.ok);
        assert!(
            r.problems.iter().any(|x| x.contains("not marked trusted")),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn compliant_device_by_id_and_mfa_inside_passes() {
        let p = policies(json!([
            policy(
                "device outside",
                "enabled",
                json!({"includeLocations": ["All"], "excludeLocations": ["loc-1"]}),
                json!({"operator": "OR", "builtInControls": ["compliantDevice", "domainJoinedDevice"]})
            ),
            policy(
                "mfa",
                "enabled",
                Value::Null,
                json!({"operator": "OR", "builtInControls": ["mfa"]})
            ),
        ]));
        let l = [ours(true)];
        let r = check(t(), u(), Some(&l[0]), &p, &l);
        assert!(r.ok, "{:?}", r.problems);
        assert_eq!(r.trusted.outcome, Demand::Controls);
        assert_eq!(r.untrusted.outcome, Demand::ManagedDevice);
    }

    #[test]
    fn location_blind_policies_fail_with_explanation() {
        let p = policies(json!([
            policy(
                "mfa or device",
                "enabled",
                Value::Null,
                json!({"operator": "OR", "builtInControls": ["mfa", "compliantDevice"]})
            ),
            policy(
                "report only",
                "enabledForReportingButNotEnforced",
                json!({"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]}),
                json!({"operator": "OR", "builtInControls": ["block"]})
            ),
        ]));
        let l = [ours(true)];
        let r = check(t(), u(), Some(&l[0]), &p, &l);
        assert!(!r.ok);
        let all = r.problems.join("\n");
        assert!(
            all.contains("no enabled policy has a location condition"),
            "{all}"
        );
        assert!(r.untrusted.policies[1].why.contains("report-only"));
    }

    #[test]
    fn device_required_everywhere_fails_on_the_trusted_side() {
        let p = policies(json!([policy(
            "device everywhere",
            "enabled",
            json!({"includeLocations": ["All"], "excludeLocations": []}),
            json!({"operator": "AND", "builtInControls": ["mfa", "compliantDevice"]})
        )]));
        let l = [ours(true)];
        let r = check(t(), u(), Some(&l[0]), &p, &l);
        assert!(!r.ok);
        assert!(
            r.problems[0].contains("from the trusted address"),
            "{:?}",
            r.problems
        );
    }

    #[test]
    fn narrow_policy_does_not_count_as_protection() {
        let mut narrow = policy(
            "admins only",
            "enabled",
            json!({"includeLocations": ["All"], "excludeLocations": ["AllTrusted"]}),
            json!({"operator": "OR", "builtInControls": ["block"]}),
        );
        narrow["conditions"]["users"]["includeUsers"] = json!([]);
        narrow["conditions"]["users"]["includeRoles"] =
            json!(["62e90394-69f5-4237-9190-012177145e10"]);
        let p = policies(json!([narrow]));
        let l = [ours(true)];
        let r = check(t(), u(), Some(&l[0]), &p, &l);
        assert!(!r.ok);
        assert!(
            r.problems.join(" ").contains("only policies limited"),
            "{:?}",
            r.problems
        );
        assert_eq!(r.untrusted.outcome_any_scope, Demand::Block);
    }

    #[test]
    fn missing_location_is_reported() {
        let r = check(t(), u(), None, &[], &[]);
        assert!(!r.ok);
        assert!(r.problems[0].contains("does not exist"));
    }
}
