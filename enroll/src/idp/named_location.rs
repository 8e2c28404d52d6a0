//! Microsoft Graph's named locations (v1.0), and the plan that makes ours hold exactly the
//! trusted addresses.
//!
//! Shapes relied on (Microsoft Graph v1.0 reference: "namedLocation", "ipNamedLocation",
//! "ipRange", "List namedLocations", "Create namedLocation", "Update ipNamedLocation"):
//!
//! - `GET /identity/conditionalAccess/namedLocations[?$filter=displayName eq '…']` →
//!   `{"value": [ … ], "@odata.nextLink"?}`; each item has `id`, `displayName` and, for the
//!   derived types, `@odata.type` (`#microsoft.graph.ipNamedLocation` or
//!   `#microsoft.graph.countryNamedLocation`); an IP location has `isTrusted` and `ipRanges`,
//!   each `{"@odata.type": "#microsoft.graph.iPv4CidrRange" | "#microsoft.graph.iPv6CidrRange",
//!   "cidrAddress": "…"}`.
//! - Create: `POST` the collection with `@odata.type`, `displayName`, `isTrusted`, `ipRanges`
//!   → 201 with the object.
//! - Update: `PATCH /identity/conditionalAccess/namedLocations/{id}`; "You must specify the
//!   @odata.type as #microsoft.graph.ipNamedLocation"; `ipRanges` replaces the whole list
//!   ("to remove any ipRange objects, exclude them") → 204.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::IpAddr;

pub const IP_NAMED_LOCATION: &str = "#microsoft.graph.ipNamedLocation";
pub const IPV4_CIDR_RANGE: &str = "#microsoft.graph.iPv4CidrRange";
pub const IPV6_CIDR_RANGE: &str = "#microsoft.graph.iPv6CidrRange";

/// A page of the namedLocations collection.
#[derive(Debug, Deserialize)]
pub struct NamedLocationPage {
    pub value: Vec<NamedLocation>,
    #[serde(rename = "@odata.nextLink", default)]
    pub next_link: Option<String>,
}

/// A named location as Graph lists it (IP or country; fields of the other kinds ignored).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamedLocation {
    pub id: String,
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    pub display_name: String,
    #[serde(default)]
    pub is_trusted: bool,
    #[serde(default)]
    pub ip_ranges: Vec<IpRange>,
}

impl NamedLocation {
    /// An `ipNamedLocation`. Graph names the derived type in lists; a location with IP ranges
    /// and no type is taken as one too.
    pub fn is_ip(&self) -> bool {
        match &self.odata_type {
            Some(t) => t == IP_NAMED_LOCATION,
            None => !self.ip_ranges.is_empty(),
        }
    }

    /// The ranges we can read, and the raw text of those we cannot.
    pub fn nets(&self) -> (BTreeSet<IpNet>, Vec<String>) {
        let mut nets = BTreeSet::new();
        let mut other = Vec::new();
        for r in &self.ip_ranges {
            match r.net() {
                Some(n) => {
                    nets.insert(n);
                }
                None => other.push(r.describe()),
            }
        }
        (nets, other)
    }

    /// True when `addr` is in one of the ranges (CIDR or lower/upper).
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.ip_ranges.iter().any(|r| r.contains(addr))
    }
}

/// One `ipRange`. v1.0 has the CIDR forms; beta adds `iPv4Range`/`iPv6Range` with
/// `lowerAddress`/`upperAddress`, read here so a location someone edited that way is still
/// understood.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    #[serde(rename = "@odata.type", default)]
    pub odata_type: Option<String>,
    #[serde(default)]
    pub cidr_address: Option<String>,
    #[serde(default)]
    pub lower_address: Option<String>,
    #[serde(default)]
    pub upper_address: Option<String>,
}

impl IpRange {
    /// The CIDR, normalised (a bare address is a host route; Graph accepts any RFC 5952 form
    /// of IPv6, so text is compared only after parsing).
    pub fn net(&self) -> Option<IpNet> {
        let text = self.cidr_address.as_deref()?.trim();
        text.parse::<IpNet>()
            .ok()
            .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
            .map(|n| n.trunc())
    }

    fn bounds(&self) -> Option<(IpAddr, IpAddr)> {
        let lo = self.lower_address.as_deref()?.trim().parse().ok()?;
        let hi = self.upper_address.as_deref()?.trim().parse().ok()?;
        Some((lo, hi))
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        if let Some(n) = self.net() {
            return n.contains(&addr);
        }
        match self.bounds() {
            Some((IpAddr::V4(lo), IpAddr::V4(hi))) => {
                matches!(addr, IpAddr::V4(a) if lo <= a && a <= hi)
            }
            Some((IpAddr::V6(lo), IpAddr::V6(hi))) => {
                matches!(addr, IpAddr::V6(a) if lo <= a && a <= hi)
            }
            _ => false,
        }
    }

    pub fn describe(&self) -> String {
        match (&self.cidr_address, &self.lower_address, &self.upper_address) {
            (Some(c), _, _) => c.clone(),
            (None, Some(l), Some(u)) => format!("{l}-{u}"),
            _ => "(a range without an address)".into(),
        }
    }
}

/// The JSON of one range (v1.0 CIDR types).
pub fn range_json(net: &IpNet) -> Value {
    let kind = match net {
        IpNet::V4(_) => IPV4_CIDR_RANGE,
        IpNet::V6(_) => IPV6_CIDR_RANGE,
    };
    json!({"@odata.type": kind, "cidrAddress": net.to_string()})
}

/// What `sync` will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum Plan {
    /// No location of that name: create one.
    Create { added: Vec<IpNet> },
    /// Ours differs: PATCH it with the full list.
    Update {
        id: String,
        added: Vec<IpNet>,
        /// Ranges removed, as Graph wrote them.
        removed: Vec<String>,
        /// It was not marked trusted.
        made_trusted: bool,
    },
    /// Already exactly the trusted set, and trusted.
    Unchanged { id: String, ranges: usize },
}

impl Plan {
    /// The request body for a create or an update; `None` for unchanged.
    pub fn body(&self, display_name: &str, desired: &BTreeSet<IpNet>) -> Option<Value> {
        let ranges: Vec<Value> = desired.iter().map(range_json).collect();
        match self {
            Plan::Create { .. } => Some(json!({
                "@odata.type": IP_NAMED_LOCATION,
                "displayName": display_name,
                "isTrusted": true,
                "ipRanges": ranges,
            })),
            Plan::Update { .. } => Some(json!({
                "@odata.type": IP_NAMED_LOCATION,
                "isTrusted": true,
                "ipRanges": ranges,
            })),
            Plan::Unchanged { .. } => None,
        }
    }
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("no trusted egress address to put in the named location (Entra refuses an empty one): add an internet egress with public source_addresses, or [idp.entra] extra_addresses")]
    NothingToTrust,
    #[error("{} named locations are called \"{name}\" (ids {}): rename or delete all but one, so that it is clear which one attestgate keeps", ids.len(), ids.join(", "))]
    Ambiguous { name: String, ids: Vec<String> },
    #[error("the named location \"{name}\" (id {id}) is a {kind}, not an IP named location: rename it or choose another named_location")]
    NotIp {
        name: String,
        id: String,
        kind: String,
    },
}

/// Decides what to do, given the locations Graph returned for our display name. Graph's `eq`
/// on `displayName` ignores case, so the candidates are compared the same way.
pub fn plan(
    name: &str,
    desired: &BTreeSet<IpNet>,
    found: &[NamedLocation],
) -> Result<Plan, PlanError> {
    if desired.is_empty() {
        return Err(PlanError::NothingToTrust);
    }
    let ours: Vec<&NamedLocation> = found
        .iter()
        .filter(|l| l.display_name.to_lowercase() == name.to_lowercase())
        .collect();
    let current = match ours.as_slice() {
        [] => {
            return Ok(Plan::Create {
                added: desired.iter().copied().collect(),
            })
        }
        [one] => *one,
        many => {
            return Err(PlanError::Ambiguous {
                name: name.to_string(),
                ids: many.iter().map(|l| l.id.clone()).collect(),
            })
        }
    };
    if !current.is_ip() {
        return Err(PlanError::NotIp {
            name: name.to_string(),
            id: current.id.clone(),
            kind: current
                .odata_type
                .as_deref()
                .unwrap_or("location of unknown type")
                .trim_start_matches("#microsoft.graph.")
                .to_string(),
        });
    }
    let (have, unreadable) = current.nets();
    let added: Vec<IpNet> = desired.difference(&have).copied().collect();
    let mut removed: Vec<String> = have.difference(desired).map(|n| n.to_string()).collect();
    removed.extend(unreadable);
    // Graph's list may hold one CIDR twice in different spellings; a rewrite cleans that up.
    let readable = current
        .ip_ranges
        .iter()
        .filter(|r| r.net().is_some())
        .count();
    let duplicates = readable != have.len();
    if added.is_empty() && removed.is_empty() && current.is_trusted && !duplicates {
        return Ok(Plan::Unchanged {
            id: current.id.clone(),
            ranges: have.len(),
        });
    }
    Ok(Plan::Update {
        id: current.id.clone(),
        added,
        removed,
        made_trusted: !current.is_trusted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<IpNet> {
        items.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn loc(name: &str, trusted: bool, ranges: &[&str]) -> NamedLocation {
        NamedLocation {
            id: format!("id-{name}"),
            odata_type: Some(IP_NAMED_LOCATION.into()),
            display_name: name.into(),
            is_trusted: trusted,
            ip_ranges: ranges
                .iter()
                .map(|r| IpRange {
                    odata_type: Some(IPV4_CIDR_RANGE.into()),
                    cidr_address: Some((*r).into()),
                    lower_address: None,
                    upper_address: None,
                })
                .collect(),
        }
    }

    #[test]
    fn create_when_absent_with_typed_body() {
        let want = set(&["203.0.113.30/32", "2001:db8::30/128"]);
        let p = plan("ag", &want, &[loc("other", true, &["192.0.2.1/32"])]).unwrap();
        assert!(matches!(&p, Plan::Create { added } if added.len() == 2));
        let body = p.body("ag", &want).unwrap();
        assert_eq!(body["@odata.type"], IP_NAMED_LOCATION);
        assert_eq!(body["isTrusted"], true);
        assert_eq!(body["displayName"], "ag");
        assert_eq!(body["ipRanges"][0]["@odata.type"], IPV4_CIDR_RANGE);
        assert_eq!(body["ipRanges"][0]["cidrAddress"], "203.0.113.30/32");
        assert_eq!(body["ipRanges"][1]["@odata.type"], IPV6_CIDR_RANGE);
        assert_eq!(body["ipRanges"][1]["cidrAddress"], "2001:db8::30/128");
    }

    #[test]
    fn unchanged_ignores_spelling_and_case() {
        let want = set(&["203.0.113.30/32", "2001:db8::30/128"]);
        let mut l = loc("AG", true, &["203.0.113.30/32", "2001:0DB8:0:0::30/128"]);
        l.ip_ranges[1].odata_type = Some(IPV6_CIDR_RANGE.into());
        let p = plan("ag", &want, &[l]).unwrap();
        assert_eq!(
            p,
            Plan::Unchanged {
                id: "id-AG".into(),
                ranges: 2
            }
        );
        assert!(p.body("ag", &want).is_none());
    }

    #[test]
    fn update_lists_added_and_removed_and_carries_the_type() {
        let want = set(&["203.0.113.30/32", "203.0.113.32/32"]);
        let l = loc(
            "ag",
            true,
            &["203.0.113.30/32", "203.0.113.31/32", "0.0.0.0/0"],
        );
        let p = plan("ag", &want, &[l]).unwrap();
        let Plan::Update {
            added,
            removed,
            made_trusted,
            ..
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!(added, &vec!["203.0.113.32/32".parse::<IpNet>().unwrap()]);
        assert_eq!(
            removed,
            &vec!["0.0.0.0/0".to_string(), "203.0.113.31/32".to_string()]
        );
        assert!(!made_trusted);
        let body = p.body("ag", &want).unwrap();
        assert_eq!(body["@odata.type"], IP_NAMED_LOCATION);
        assert_eq!(body["ipRanges"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn untrusted_or_duplicated_is_rewritten() {
        let want = set(&["203.0.113.30/32"]);
        let p = plan("ag", &want, &[loc("ag", false, &["203.0.113.30/32"])]).unwrap();
        assert!(
            matches!(
                p,
                Plan::Update {
                    made_trusted: true,
                    ..
                }
            ),
            "{p:?}"
        );
        let p = plan(
            "ag",
            &want,
            &[loc("ag", true, &["203.0.113.30/32", "203.0.113.30"])],
        )
        .unwrap();
        assert!(
            matches!(p, Plan::Update { ref added, ref removed, .. } if added.is_empty() && removed.is_empty()),
            "{p:?}"
        );
    }

    #[test]
    fn refusals() {
        let want = set(&["203.0.113.30/32"]);
        assert_eq!(
            plan("ag", &BTreeSet::new(), &[]),
            Err(PlanError::NothingToTrust)
        );
        let e = plan("ag", &want, &[loc("ag", true, &[]), loc("AG", true, &[])]).unwrap_err();
        assert!(e.to_string().contains("2 named locations"), "{e}");
        let mut c = loc("ag", true, &[]);
        c.odata_type = Some("#microsoft.graph.countryNamedLocation".into());
        let e = plan("ag", &want, &[c]).unwrap_err();
        assert!(e.to_string().contains("countryNamedLocation"), "{e}");
    }

    #[test]
    fn ranges_contain() {
        let l = loc("x", true, &["198.51.100.0/24"]);
        assert!(l.contains("198.51.100.7".parse().unwrap()));
        assert!(!l.contains("198.51.101.7".parse().unwrap()));
        let r = IpRange {
            odata_type: None,
            cidr_address: None,
            lower_address: Some("192.0.2.10".into()),
            upper_address: Some("192.0.2.20".into()),
        };
        assert!(r.contains("192.0.2.15".parse().unwrap()));
        assert!(!r.contains("192.0.2.21".parse().unwrap()));
        assert_eq!(r.describe(), "192.0.2.10-192.0.2.20");
    }
}
