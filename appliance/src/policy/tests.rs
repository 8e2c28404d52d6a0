use super::*;
use config::{load_str, FileChecks};
use std::path::Path;
use std::sync::Arc;

pub(crate) fn engine_from(text: &str) -> PolicyEngine {
    match load_str(
        text,
        Path::new("test.toml"),
        Path::new("/"),
        FileChecks::Skip,
    ) {
        Ok(l) => PolicyEngine::new(Arc::new(l.config)),
        Err(e) => panic!("test config invalid:\n{e}"),
    }
}

fn lab() -> PolicyEngine {
    engine_from(include_str!("../../../config/examples/lab.toml"))
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn device(groups: &[&str], managed: bool, risk: RiskLevel, age: u64) -> DeviceState {
    DeviceState {
        serial: "C02LAB0001".into(),
        record: Some(DeviceRecord {
            managed,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            risk,
            source: "lab".into(),
            confirmed_at: now() - Duration::from_secs(age),
        }),
        cert_not_before: now() - Duration::from_secs(86_400),
        cert_not_after: now() + Duration::from_secs(13 * 86_400),
    }
}

fn compliant() -> DeviceState {
    device(&["Compliant Macs"], true, RiskLevel::Secure, 42)
}

fn tcp(t: &str) -> Target {
    Target::parse(t, Protocol::Tcp).unwrap()
}

fn failed_checks(d: &Decision) -> Vec<&'static str> {
    d.reasons
        .iter()
        .filter(|r| r.passed == Some(false))
        .map(|r| r.check)
        .collect()
}

#[test]
fn compliant_device_gets_the_trusted_egresses() {
    let e = lab();
    let d = e.decide(&compliant(), &tcp("login.idp.lab:443"), now());
    assert_eq!(d.verdict.name(), "idp-pair");
    assert!(d.verdict.is_trusted());
    assert_eq!(d.policy.as_deref(), Some("idp-sign-in"));
    assert!(
        matches!(&d.verdict, Verdict::Egress { source: SourceSelection::Addresses { addresses }, .. } if addresses.len() == 2)
    );
    let d = e.decide(&compliant(), &tcp("app.corp.lab:8443"), now());
    assert_eq!(d.verdict.name(), "corp");
    assert!(matches!(
        &d.verdict,
        Verdict::Egress {
            source: SourceSelection::NatPool {
                mode: NatModeName::PerDevice,
                ..
            },
            ..
        }
    ));
    let d = e.decide(&compliant(), &tcp("198.19.0.10:22"), now());
    assert_eq!((d.app.as_deref(), d.verdict.name()), (Some("corp"), "corp"));
}

#[test]
fn each_failing_check_takes_the_fallback_and_says_why() {
    let e = lab();
    let target = tcp("login.idp.lab:443");
    let cases: Vec<(DeviceState, &str)> = vec![
        (
            device(&["Engineering"], true, RiskLevel::Secure, 10),
            "compliant",
        ),
        (
            device(&["Compliant Macs"], false, RiskLevel::Secure, 10),
            "managed",
        ),
        (
            device(&["Compliant Macs"], true, RiskLevel::High, 10),
            "risk",
        ),
        (
            device(&["Compliant Macs"], true, RiskLevel::Low, 16 * 60),
            "fresh",
        ),
        (
            DeviceState {
                record: None,
                ..compliant()
            },
            "known",
        ),
        (
            DeviceState {
                cert_not_after: now() - Duration::from_secs(1),
                ..compliant()
            },
            "certificate",
        ),
        (
            DeviceState {
                cert_not_before: now() + Duration::from_secs(60),
                ..compliant()
            },
            "certificate",
        ),
    ];
    for (dev, why) in cases {
        let d = e.decide(&dev, &target, now());
        assert_eq!(d.verdict.name(), "public", "{why}: {d:?}");
        assert!(!d.verdict.is_trusted());
        assert_eq!(failed_checks(&d), vec![why], "{d:#?}");
        assert_eq!(d.failed().map(|r| r.check), Some(why));
    }
}

#[test]
fn data_from_the_future_beyond_skew_is_not_fresh() {
    let e = lab();
    let mut dev = compliant();
    if let Some(r) = dev.record.as_mut() {
        r.confirmed_at = now() + Duration::from_secs(3600);
    }
    let d = e.decide(&dev, &tcp("idp.lab:443"), now());
    assert_eq!(failed_checks(&d), vec!["fresh"]);
    if let Some(r) = dev.record.as_mut() {
        r.confirmed_at = now() + Duration::from_secs(60);
    }
    assert!(e
        .decide(&dev, &tcp("idp.lab:443"), now())
        .verdict
        .is_trusted());
}

#[test]
fn corp_fallback_is_deny_with_the_configured_status() {
    let d = lab().decide(
        &device(&[], true, RiskLevel::Secure, 1),
        &tcp("app.corp.lab:443"),
        now(),
    );
    assert_eq!(d.verdict, Verdict::Deny { status: 502 });
}

#[test]
fn unmatched_targets_take_the_default_public_egress() {
    let d = lab().decide(&compliant(), &tcp("example.org:443"), now());
    assert_eq!(d.verdict.name(), "public");
    assert_eq!(d.policy, None);
    assert!(matches!(
        &d.verdict,
        Verdict::Egress {
            source: SourceSelection::Fixed { .. },
            trusted: false,
            ..
        }
    ));
    // port outside the app's ports: idp lists only 443
    let d = lab().decide(&compliant(), &tcp("idp.lab:80"), now());
    assert_eq!((d.app.as_deref(), d.verdict.name()), (None, "public"));
}

#[test]
fn names_match_case_insensitively_without_trailing_dot_and_in_punycode() {
    let e = engine_from(&format!(
        "{}\n[apps.intl]\nhosts = [\"bücher.example\"]\n[[policy]]\nname = \"intl\"\napps = [\"intl\"]\negress = \"idp-pair\"\n",
        include_str!("../../../config/examples/lab.toml")
    ));
    for t in ["LOGIN.IDP.LAB.:443", "Login.Idp.Lab:443"] {
        assert_eq!(
            e.decide(&compliant(), &tcp(t), now()).verdict.name(),
            "idp-pair",
            "{t}"
        );
    }
    for t in [
        "bücher.example:443",
        "BÜCHER.example.:443",
        "xn--bcher-kva.example:443",
    ] {
        assert_eq!(
            e.decide(&compliant(), &tcp(t), now()).app.as_deref(),
            Some("intl"),
            "{t}"
        );
    }
}

const SPECIFIC: &str = r#"
[relay]
certificate = "c"
private_key = "k"
device_ca = ["ca"]
[egress.t]
type = "tunnel"
local_address = "203.0.113.10"
remote_address = "203.0.113.20"
psk_file = "psk"
local_ts = ["198.18.0.0/24"]
remote_ts = ["198.19.0.0/16"]
nat_pool = "198.18.0.0/28"
[egress.i]
type = "internet"
source_addresses = ["203.0.113.30"]
[apps.wide]
hosts = ["*.example.com"]
cidrs = ["198.19.0.0/16"]
[apps.narrow]
hosts = ["*.login.example.com"]
cidrs = ["198.19.7.0/24"]
[apps.exact]
hosts = ["sso.login.example.com"]
[apps.orphan]
hosts = ["orphan.login.example.com"]
[compliance]
compliant_groups = ["ok"]
[[policy]]
name = "p-wide"
apps = ["wide"]
egress = "t"
[[policy]]
name = "p-narrow"
apps = ["narrow"]
egress = "i"
fallback = "deny"
[[policy]]
name = "p-exact"
apps = ["exact"]
egress = "direct"
"#;

#[test]
fn the_most_specific_app_wins_regardless_of_policy_order() {
    let e = engine_from(SPECIFIC);
    let dev = device(&["ok"], true, RiskLevel::Low, 1);
    let pick = |t: &str| {
        let d = e.decide(&dev, &tcp(t), now());
        (d.app, d.policy)
    };
    assert_eq!(
        pick("www.example.com:443"),
        (Some("wide".into()), Some("p-wide".into()))
    );
    assert_eq!(
        pick("a.login.example.com:443"),
        (Some("narrow".into()), Some("p-narrow".into()))
    );
    assert_eq!(
        pick("sso.login.example.com:443"),
        (Some("exact".into()), Some("p-exact".into()))
    );
    // an app no policy names falls through to the next most specific one that has a policy
    assert_eq!(
        pick("orphan.login.example.com:443"),
        (Some("narrow".into()), Some("p-narrow".into()))
    );
    assert_eq!(
        pick("198.19.7.9:443"),
        (Some("narrow".into()), Some("p-narrow".into()))
    );
    assert_eq!(
        pick("198.19.8.9:443"),
        (Some("wide".into()), Some("p-wide".into()))
    );
    assert_eq!(pick("example.com:443"), (None, None));
}

#[test]
fn the_reason_chain_reads_as_an_explanation() {
    let d = lab().decide(
        &device(&["Compliant Macs"], true, RiskLevel::High, 30),
        &tcp("idp.lab:443"),
        now(),
    );
    let text: Vec<String> = d.reasons.iter().map(|r| r.detail.clone()).collect();
    assert_eq!(text[0], "idp.lab:443 matches app idp (idp.lab)");
    assert!(
        text[1].starts_with("policy idp-sign-in (#2) applies"),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t == "risk high over max medium"),
        "{text:?}"
    );
    assert_eq!(text.last().map(String::as_str), Some("fallback: public"));
}
