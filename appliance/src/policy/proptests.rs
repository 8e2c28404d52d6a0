//! Generated inputs against the fail-closed invariant (DESIGN.md invariant 1): no device that
//! is unknown, unmanaged, outside the compliant groups, over its risk limit, holding a
//! certificate outside its validity window, or whose data is older than the maximum age ever
//! gets a trusted egress — whatever the policies say.

use super::tests::engine_from;
use super::*;
use proptest::prelude::*;

const GROUPS: [&str; 4] = [
    "Compliant Macs",
    "Compliant iPhones",
    "Engineering",
    "Contractors",
];
const RISKS: [RiskLevel; 4] = [
    RiskLevel::Secure,
    RiskLevel::Low,
    RiskLevel::Medium,
    RiskLevel::High,
];
const EGRESSES: [&str; 5] = ["corp", "pair", "public", "deny", "direct"];
const FALLBACKS: [&str; 3] = ["public", "deny", "direct"];
const APPS: [&str; 4] = ["idp", "corp", "wild", "ips"];
const MAX_AGE: u64 = 900;

#[derive(Debug, Clone)]
struct PolicySpec {
    apps: Vec<usize>,
    groups: Vec<usize>,
    managed: bool,
    max_risk: usize,
    egress: usize,
    fallback: usize,
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    (
        proptest::sample::subsequence(vec![0usize, 1, 2, 3], 1..=4),
        proptest::sample::subsequence(vec![0usize, 1, 2, 3], 0..=2),
        any::<bool>(),
        0usize..4,
        0usize..5,
        0usize..3,
    )
        .prop_map(
            |(apps, groups, managed, max_risk, egress, fallback)| PolicySpec {
                apps,
                groups,
                managed,
                max_risk,
                egress,
                fallback,
            },
        )
}

fn list(items: impl Iterator<Item = String>) -> String {
    format!(
        "[{}]",
        items
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn render(policies: &[PolicySpec], compliant: &[usize]) -> String {
    let mut t = String::from(
        r#"
[relay]
certificate = "c"
private_key = "k"
device_ca = ["ca"]
[egress.corp]
type = "tunnel"
local_address = "203.0.113.10"
remote_address = "203.0.113.20"
psk_file = "psk"
local_ts = ["198.18.100.0/24"]
remote_ts = ["198.19.0.0/24"]
nat_pool = "198.18.100.0/26"
[egress.pair]
type = "internet"
source_addresses = ["203.0.113.30", "203.0.113.31"]
[apps.idp]
hosts = ["idp.lab", "*.idp.lab"]
ports = [443]
[apps.corp]
hosts = ["*.corp.lab"]
cidrs = ["198.19.0.0/24"]
[apps.wild]
hosts = ["*.lab"]
[apps.ips]
cidrs = ["198.19.0.0/25", "203.0.113.0/24"]
[compliance]
max_age = "15m"
"#,
    );
    t.push_str(&format!(
        "compliant_groups = {}\n",
        list(compliant.iter().map(|g| GROUPS[*g].to_string()))
    ));
    for (i, p) in policies.iter().enumerate() {
        t.push_str(&format!(
            "[[policy]]\nname = \"p{i}\"\napps = {}\ngroups = {}\nmanaged = {}\nmax_risk = \"{}\"\negress = \"{}\"\nfallback = \"{}\"\n",
            list(p.apps.iter().map(|a| APPS[*a].to_string())),
            list(p.groups.iter().map(|g| GROUPS[*g].to_string())),
            p.managed,
            RISKS[p.max_risk].as_str(),
            EGRESSES[p.egress],
            FALLBACKS[p.fallback],
        ));
    }
    t
}

#[derive(Debug, Clone)]
struct DeviceSpec {
    known: bool,
    managed: bool,
    groups: Vec<usize>,
    risk: usize,
    /// Seconds before now (negative: in the future).
    age: i64,
    /// Certificate window relative to now, in seconds.
    not_before: i64,
    not_after: i64,
}

fn device_spec() -> impl Strategy<Value = DeviceSpec> {
    (
        any::<bool>(),
        any::<bool>(),
        proptest::sample::subsequence(vec![0usize, 1, 2, 3], 0..=4),
        0usize..4,
        prop_oneof![
            -4000i64..0,
            0i64..(2 * MAX_AGE as i64),
            Just(MAX_AGE as i64),
            Just(MAX_AGE as i64 + 1)
        ],
        -100_000i64..100,
        -100i64..100_000,
    )
        .prop_map(
            |(known, managed, groups, risk, age, not_before, not_after)| DeviceSpec {
                known,
                managed,
                groups,
                risk,
                age,
                not_before,
                not_after,
            },
        )
}

fn at(now: SystemTime, offset: i64) -> SystemTime {
    if offset >= 0 {
        now + Duration::from_secs(offset as u64)
    } else {
        now - Duration::from_secs(offset.unsigned_abs())
    }
}

fn target() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("idp.lab:443".to_string()),
        Just("LOGIN.IDP.LAB.:443".to_string()),
        Just("idp.lab:80".to_string()),
        Just("app.corp.lab:8443".to_string()),
        Just("x.lab:443".to_string()),
        Just("example.org:443".to_string()),
        (0u8..=255, 1u16..=65535).prop_map(|(o, p)| format!("198.19.0.{o}:{p}")),
        (0u8..=255).prop_map(|o| format!("203.0.113.{o}:443")),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn no_trusted_egress_without_every_condition(
        policies in proptest::collection::vec(policy_spec(), 1..6),
        compliant in proptest::sample::subsequence(vec![0usize, 1, 2, 3], 1..=2),
        dev in device_spec(),
        target in target(),
        udp in any::<bool>(),
    ) {
        // managed = false with a trusted egress is refused by validation (see the next
        // property); keep the generated policies valid so every case reaches the engine.
        let mut policies = policies;
        for p in &mut policies {
            if p.egress < 2 {
                p.managed = true;
            }
        }
        let text = render(&policies, &compliant);
        let engine = engine_from(&text);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let groups: BTreeSet<String> = dev.groups.iter().map(|g| GROUPS[*g].to_string()).collect();
        let state = DeviceState {
            serial: "C02PROP0001".into(),
            record: dev.known.then(|| DeviceRecord {
                managed: dev.managed,
                groups: groups.clone(),
                risk: RISKS[dev.risk],
                source: "gen".into(),
                confirmed_at: at(now, -dev.age),
            }),
            cert_not_before: at(now, dev.not_before),
            cert_not_after: at(now, dev.not_after),
        };
        let proto = if udp { Protocol::Udp } else { Protocol::Tcp };
        let t = Target::parse(&target, proto).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let d = engine.decide(&state, &t, now);

        if d.verdict.is_trusted() {
            let in_compliant = compliant.iter().any(|g| groups.contains(GROUPS[*g]));
            let fresh = dev.age <= MAX_AGE as i64 && dev.age >= -(MAX_CLOCK_SKEW.as_secs() as i64);
            let cert = dev.not_before <= 0 && dev.not_after >= 0;
            prop_assert!(dev.known, "unknown device got {:?}", d);
            prop_assert!(dev.managed, "unmanaged device got {:?}", d);
            prop_assert!(in_compliant, "device outside compliant groups got {:?}", d);
            prop_assert!(fresh, "stale data (age {}s) got {:?}", dev.age, d);
            prop_assert!(cert, "certificate outside its window got {:?}", d);
            let pi: usize = d.policy.as_deref().and_then(|p| p.strip_prefix('p')).and_then(|n| n.parse().ok())
                .ok_or_else(|| TestCaseError::fail(format!("trusted egress without a policy: {d:?}")))?;
            let p = &policies[pi];
            prop_assert!(dev.risk <= p.max_risk, "risk over the limit got {:?}", d);
            prop_assert!(p.groups.is_empty() || p.groups.iter().any(|g| dev.groups.contains(g)), "outside policy groups got {:?}", d);
            prop_assert!(EGRESSES[p.egress] == d.verdict.name(), "trusted egress is not the policy's: {:?}", d);
        }
        // never trusted without a policy, and never from a fallback
        if d.policy.is_none() || d.reasons.iter().any(|r| r.passed == Some(false)) {
            prop_assert!(!d.verdict.is_trusted(), "{:?}", d);
        }
        // the chain always ends with the outcome
        prop_assert_eq!(d.reasons.last().map(|r| r.check), Some("outcome"));
    }

    #[test]
    fn validation_refuses_unmanaged_devices_on_trusted_egresses(
        policies in proptest::collection::vec(policy_spec(), 1..6),
        compliant in proptest::sample::subsequence(vec![0usize, 1, 2, 3], 1..=2),
    ) {
        let text = render(&policies, &compliant);
        let loaded = config::load_str(&text, std::path::Path::new("gen.toml"), std::path::Path::new("/"), config::FileChecks::Skip);
        let invalid_expected = policies.iter().any(|p| !p.managed && p.egress < 2);
        prop_assert_eq!(loaded.is_err(), invalid_expected, "validation disagreed for:\n{}", text);
    }

    #[test]
    fn decisions_are_pure(dev in device_spec(), target in target()) {
        let engine = engine_from(include_str!("../../../config/examples/lab.toml"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let state = DeviceState {
            serial: "C02PROP0002".into(),
            record: dev.known.then(|| DeviceRecord {
                managed: dev.managed,
                groups: dev.groups.iter().map(|g| GROUPS[*g].to_string()).collect(),
                risk: RISKS[dev.risk],
                source: "gen".into(),
                confirmed_at: at(now, -dev.age),
            }),
            cert_not_before: at(now, dev.not_before),
            cert_not_after: at(now, dev.not_after),
        };
        let t = Target::parse(&target, Protocol::Tcp).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(engine.decide(&state, &t, now), engine.decide(&state, &t, now));
    }
}
