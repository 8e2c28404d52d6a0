//! Which domains the device sends through the relay.
//!
//! The rule (the policy engine's, `appliance::policy`, read backwards):
//! - An app is decided by the first policy that names it; an app no policy names follows
//!   `[defaults] egress`, which is never trusted, so relaying it gains nothing: it is left out.
//! - An app whose policy gives `direct` both when the device passes and when it fails (egress
//!   and fallback) would only be told to go direct: it is *excluded*. Every other policed app
//!   (trusted egress, deny, a public egress as fallback…) is *relayed*: the relay must see its
//!   traffic to decide it.
//! - Apple's `MatchDomains` and `ExcludedDomains` match a domain and every name below it
//!   (`com.apple.relay.managed`, MatchDomains). A relayed `*.example.com` and a relayed
//!   `example.com` both become `example.com`; names below a relayed exact host are relayed too,
//!   and the relay decides them by its own rules (usually `[defaults] egress`). A domain below
//!   another relayed domain is dropped as redundant.
//! - Excluded apps: a `*.suffix` becomes an `ExcludedDomains` entry, an exact host an
//!   `ExcludedFQDNs` entry (exact match only; iOS 18.4 / macOS 15.4 and later — older systems
//!   relay the name and the relay tells them to go direct). An exclusion is written only when it
//!   lies strictly below a match domain (anything else is not relayed anyway) and covers no
//!   relayed name (an exclusion wins over a match, and would switch a policed app off).
//! - The appliance's own name and the ACME directory's host are excluded when a match domain
//!   covers them: a device needs the ACME server to get the certificate the relay requires.
//! - Apps with only `cidrs` cannot be expressed (the payload matches names only); they are
//!   reported in the notes. Ports are not expressible either: the whole name is relayed.

use config::{units::HostPattern, Config, Outcome};
use std::collections::BTreeSet;

/// The domain lists of the relay payload, sorted (so that reordering apps changes nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayDomains {
    pub match_domains: Vec<String>,
    pub excluded_domains: Vec<String>,
    pub excluded_fqdns: Vec<String>,
    /// What could not be expressed, for the admin.
    pub notes: Vec<String>,
}

/// `child` is `parent` or a name below it.
fn covers(parent: &str, child: &str) -> bool {
    child == parent
        || child
            .strip_suffix(parent)
            .is_some_and(|head| head.ends_with('.'))
}

/// `child` is strictly below `parent`.
fn below(parent: &str, child: &str) -> bool {
    child != parent && covers(parent, child)
}

fn base(p: &HostPattern) -> &str {
    match p {
        HostPattern::Exact(n) | HostPattern::Suffix(n) => n,
    }
}

pub fn relay_domains(cfg: &Config, public_name: &str, acme_directory: &str) -> RelayDomains {
    let mut relayed: Vec<&HostPattern> = Vec::new();
    let mut direct: Vec<&HostPattern> = Vec::new();
    let mut notes = Vec::new();
    for app in &cfg.apps {
        let name = &app.name.value;
        let Some(policy) = cfg
            .policies
            .iter()
            .find(|p| p.apps.iter().any(|a| a.value == *name))
        else {
            continue;
        };
        let only_direct =
            policy.egress.value == Outcome::Direct && policy.fallback.value == Outcome::Direct;
        if only_direct {
            direct.extend(app.hosts.iter());
            continue;
        }
        if app.hosts.is_empty() && !app.cidrs.is_empty() {
            notes.push(format!(
                "app {name} has only cidrs: the relay payload matches domain names only, so \
                 devices relay its traffic only when they connect by a relayed name"
            ));
        }
        relayed.extend(app.hosts.iter());
    }
    // shortest first, so a parent is kept before any name below it
    let mut by_depth: Vec<String> = relayed.iter().map(|p| base(p).to_string()).collect();
    by_depth.sort_by_key(|d| (d.matches('.').count(), d.clone()));
    let mut match_domains: Vec<String> = Vec::new();
    for d in by_depth {
        if !match_domains.iter().any(|m| covers(m, &d)) {
            match_domains.push(d);
        }
    }
    match_domains.sort();

    let mut excluded_domains = BTreeSet::new();
    let mut excluded_fqdns = BTreeSet::new();
    let mut exclude = |name: &str, exact: bool, why: &str, notes: &mut Vec<String>| {
        if !match_domains.iter().any(|m| below(m, name)) {
            return;
        }
        // an exclusion wins over a match: it must not take a relayed name (or any name below
        // a relayed suffix) away from its app
        let shadowed = relayed.iter().find(|r| match (exact, r) {
            (true, HostPattern::Exact(n)) => n == name,
            (true, HostPattern::Suffix(_)) => false,
            (false, r) => covers(name, base(r)),
        });
        if let Some(r) = shadowed {
            notes.push(format!(
                "{name} ({why}) is not excluded: that would also exclude the relayed {r}"
            ));
            return;
        }
        if exact {
            excluded_fqdns.insert(name.to_string());
        } else {
            excluded_domains.insert(name.to_string());
        }
    };
    for p in direct {
        let exact = matches!(p, HostPattern::Exact(_));
        exclude(base(p), exact, "a direct-only app", &mut notes);
    }
    exclude(public_name, false, "the appliance itself", &mut notes);
    if let Some(host) = url_host(acme_directory) {
        exclude(&host, false, "the ACME server", &mut notes);
    }
    RelayDomains {
        match_domains,
        excluded_domains: excluded_domains.into_iter().collect(),
        excluded_fqdns: excluded_fqdns.into_iter().collect(),
        notes,
    }
}

/// The host of an `https://host[:port]/…` URL, lower case.
fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    (!host.is_empty()).then(|| host.trim_end_matches('.').to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage() {
        assert!(covers("example.com", "example.com"));
        assert!(covers("example.com", "a.example.com"));
        assert!(!covers("example.com", "badexample.com"));
        assert!(!below("example.com", "example.com"));
        assert_eq!(
            url_host("https://GW.example.com:8443/acme/directory").as_deref(),
            Some("gw.example.com")
        );
        assert_eq!(url_host("https://gw/").as_deref(), Some("gw"));
    }
}
