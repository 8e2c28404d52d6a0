use super::*;
use std::time::Duration;

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
}

fn inv(groups: &[&str], risk: RiskLevel, at: SystemTime) -> SourceFact {
    SourceFact::inventory(
        true,
        groups.iter().map(|g| g.to_string()).collect(),
        Some(risk),
        at,
    )
}

fn config(dir: &Path, sources: &[&str], max_age: &str) -> Config {
    config_with(dir, sources, max_age, "")
}

fn config_with(dir: &Path, sources: &[&str], max_age: &str, extra: &str) -> Config {
    let mut text = format!(
        "[appliance]\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/c.sock\"\n\
         [relay]\nhttp3_listen = [\"127.0.0.1:4433\"]\ncertificate = \"{d}/r.crt\"\n\
         private_key = \"{d}/r.key\"\ndevice_ca = [\"{d}/ca.crt\"]\n\
         [egress.pair]\ntype = \"internet\"\nsource_addresses = [\"127.0.0.1\"]\n\
         [apps.echo]\ncidrs = [\"127.0.0.0/8\"]\n\
         [compliance]\nmax_age = \"{max_age}\"\nrefresh_interval = \"1s\"\ncompliant_groups = [\"Compliant\"]\n{extra}",
        d = dir.display()
    );
    for s in sources {
        text.push_str(&format!(
            "[compliance.sources.{s}]\ntype = \"file\"\npath = \"{}/{s}.toml\"\n",
            dir.display()
        ));
    }
    text.push_str(
        "[[policy]]\nname = \"p\"\napps = [\"echo\"]\negress = \"pair\"\nmax_risk = \"medium\"\n",
    );
    config::load_str(&text, &dir.join("t.toml"), dir, config::FileChecks::Skip)
        .unwrap()
        .config
}

fn devices(map: &[(&str, SourceFact)]) -> Fetched {
    Fetched::Devices(
        map.iter()
            .map(|(s, f)| (s.to_string(), f.clone()))
            .collect(),
    )
}

#[test]
fn merges_sources_risk_feed_and_overrides_tightening_only() {
    let mut table = DeviceTable::default();
    let now = t(0);
    let c = table.apply_fetch(
        "jamf",
        "jamf-pro",
        devices(&[("A1", inv(&["Compliant"], RiskLevel::Secure, now))]),
        now,
    );
    assert_eq!(c.len(), 1);
    assert!(!c[0].before.known && c[0].after.known);
    table.apply_fetch(
        "intune",
        "intune",
        devices(&[("A1", inv(&["Other"], RiskLevel::Low, t(1)))]),
        t(1),
    );
    let r = table.get("a1").unwrap();
    assert_eq!(r.groups.len(), 2);
    assert_eq!(r.risk, RiskLevel::Low);
    assert_eq!(r.confirmed_at, now, "the oldest confirmation counts");
    assert_eq!(r.source, "intune+jamf");

    // the risk feed: refused for unknown devices, worst opinion wins, lapses
    let feed = SourceFact {
        managed: None,
        groups: BTreeSet::new(),
        risk: Some(RiskLevel::High),
        risk_reasons: vec!["malware".into()],
        udids: BTreeSet::new(),
        platform: None,
        confirmed_at: t(2),
        expires: Some(t(100)),
    };
    assert_eq!(
        table.set_risk_feed("ZZ", feed.clone()).unwrap_err(),
        RiskFeedError::UnknownDevice("ZZ".into())
    );
    assert!(table.get("ZZ").is_none());
    let c = table.set_risk_feed("a1", feed).unwrap();
    assert_eq!(c[0].after.risk, Some(RiskLevel::High));
    assert_eq!(c[0].reason, "risk feed");
    assert_eq!(table.get("A1").unwrap().risk, RiskLevel::High);
    let c = table.expire(t(100));
    assert_eq!(c.len(), 1);
    assert_eq!(table.get("A1").unwrap().risk, RiskLevel::Low);

    // a risk override can only make things worse
    let o = overrides::apply(
        &Overrides::default(),
        OverrideAction::Risk,
        Some(RiskLevel::Secure),
        None,
        None,
        t(5),
    )
    .unwrap();
    let c = table.set_overrides("A1", o, "override risk");
    // the override shows as a source (a change of the view), the risk stays the worst
    assert_eq!(c[0].after.risk, Some(RiskLevel::Low), "{c:?}");
    assert!(c[0].after.sources.contains(&OVERRIDE_SOURCE.to_string()));
    assert_eq!(table.get("A1").unwrap().risk, RiskLevel::Low);

    // a block: out of every group, risk high; an override never makes a device known
    let o = overrides::apply(
        &table.overrides("A1"),
        OverrideAction::Block,
        None,
        Some("stolen".into()),
        Some(crate::timefmt::unix(t(200))),
        t(6),
    )
    .unwrap();
    let c = table.set_overrides("A1", o.clone(), "override block");
    assert_eq!(c[0].after.blocked.as_deref(), Some("stolen"));
    let r = table.get("A1").unwrap();
    assert!(r.groups.is_empty() && r.risk == RiskLevel::High);
    table.set_overrides("NOBODY", o, "override block");
    assert!(table.get("NOBODY").is_none());
    assert!(table.serials().contains(&"NOBODY".to_string()));
    assert_eq!(table.device_count(), 1);
    // expiry lifts the block
    let c = table.expire(t(200));
    assert!(c
        .iter()
        .any(|c| c.serial == "A1" && c.after.blocked.is_none()));
    assert_eq!(table.get("A1").unwrap().groups.len(), 2);
}

#[test]
fn a_failed_source_keeps_its_facts_and_a_reconfirmation_is_no_change() {
    let mut table = DeviceTable::default();
    table.apply_fetch(
        "mdm",
        "file",
        devices(&[("A1", inv(&["Compliant"], RiskLevel::Secure, t(0)))]),
        t(0),
    );
    let c = table.apply_fetch("mdm", "file", Fetched::Failed("bad toml".into()), t(10));
    assert!(c.is_empty());
    let st = &table.status()[0];
    assert_eq!((st.state, st.devices), ("error", 1));
    assert_eq!(st.last_sync, Some(t(0)));
    assert_eq!(table.get("A1").unwrap().confirmed_at, t(0));
    // the same facts again: confirmed later, no change
    let c = table.apply_fetch(
        "mdm",
        "file",
        devices(&[("A1", inv(&["Compliant"], RiskLevel::Secure, t(20)))]),
        t(20),
    );
    assert!(c.is_empty());
    assert_eq!(table.get("A1").unwrap().confirmed_at, t(20));
    // dropped by the source: a change to unknown
    let c = table.apply_fetch("mdm", "file", devices(&[]), t(30));
    assert_eq!(c.len(), 1);
    assert!(c[0].before.known && !c[0].after.known);
}

#[test]
fn the_store_survives_a_restart_and_stale_data_fails_closed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["mdm", "extra"], "10m");
    let path = cfg.device_store();
    assert_eq!(path, dir.path().join("state/devices.redb"));
    let now = SystemTime::now();
    {
        let mut table = DeviceTable::open(&path, &cfg);
        assert!(table.take_store_errors().is_empty());
        assert_eq!(table.status()[0].state, "not-synced");
        assert!(!table.verdict("A1", &cfg, now).compliant);
        table.apply_fetch(
            "mdm",
            "file",
            devices(&[
                ("A1", inv(&["Compliant"], RiskLevel::Secure, now)),
                (
                    "B2",
                    inv(
                        &["Compliant"],
                        RiskLevel::Secure,
                        now - Duration::from_secs(3600),
                    ),
                ),
            ]),
            now,
        );
        table.apply_fetch(
            "extra",
            "file",
            devices(&[("C3", inv(&[], RiskLevel::Secure, now))]),
            now,
        );
        let o = overrides::apply(
            &Overrides::default(),
            OverrideAction::Block,
            None,
            None,
            None,
            now,
        )
        .unwrap();
        table.set_overrides("C3", o, "override block");
    }
    // restart with `extra` no longer configured
    let cfg = config(dir.path(), &["mdm"], "10m");
    let mut table = DeviceTable::open(&path, &cfg);
    assert!(table.take_store_errors().is_empty());
    assert_eq!(table.status()[0].state, "snapshot");
    let v = table.verdict("A1", &cfg, now + Duration::from_secs(1));
    assert!(v.compliant, "{v:?}");
    // B2's data was already an hour old: unknown for the policy, stale for the verdict
    let v = table.verdict("B2", &cfg, now);
    assert!(
        !v.compliant && v.why.as_deref().unwrap().contains("maximum age"),
        "{v:?}"
    );
    // after max_age nothing from the snapshot counts
    let v = table.verdict("A1", &cfg, now + Duration::from_secs(601));
    assert!(!v.compliant, "{v:?}");
    assert!(
        table.get("C3").is_none(),
        "the removed source's device is gone"
    );
    assert!(table.overrides("C3").block.is_some(), "overrides persist");
    assert_eq!(table.device_count(), 2);
}

#[test]
fn an_unusable_store_starts_empty_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["mdm"], "10m");
    let junk = dir.path().join("junk.redb");
    std::fs::write(&junk, b"not a database").unwrap();
    let mut table = DeviceTable::open(&junk, &cfg);
    assert_eq!(table.take_store_errors().len(), 1);
    assert!(table.store_path().is_none());
    assert_eq!(table.device_count(), 0);
}

#[test]
fn serials_from_outside_are_checked() {
    assert_eq!(checked_serial(" c02x ").unwrap(), "C02X");
    assert!(checked_serial("").is_err());
    assert!(checked_serial("A B").is_err());
    assert!(checked_serial("A\u{7}").is_err());
    assert!(checked_serial(&"A".repeat(129)).is_err());
}

#[test]
fn the_store_path_is_configurable_and_relative_to_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config_with(dir.path(), &[], "10m", "store = \"db/devices.redb\"\n");
    assert_eq!(cfg.device_store(), dir.path().join("db/devices.redb"));
    let mut table = DeviceTable::open(&cfg.device_store(), &cfg);
    assert!(table.take_store_errors().is_empty());
    assert!(dir.path().join("db/devices.redb").exists());
}

mod merge_props {
    //! Generated sources, risk-feed facts and overrides against the merge's fail-closed
    //! rules: the merged record is never looser than the inventory sources alone.
    use super::*;
    use proptest::prelude::*;

    const GROUPS: [&str; 3] = ["Compliant", "Engineering", "Contractors"];
    const RISKS: [RiskLevel; 4] = [
        RiskLevel::Secure,
        RiskLevel::Low,
        RiskLevel::Medium,
        RiskLevel::High,
    ];

    #[derive(Debug, Clone)]
    struct Fact {
        source: usize,
        managed: Option<bool>,
        groups: Vec<usize>,
        risk: Option<usize>,
        age: u64,
    }

    fn fact() -> impl Strategy<Value = Fact> {
        (
            0usize..3,
            proptest::option::of(any::<bool>()),
            proptest::sample::subsequence(vec![0usize, 1, 2], 0..=3),
            proptest::option::of(0usize..4),
            0u64..2000,
        )
            .prop_map(|(source, managed, groups, risk, age)| Fact {
                source,
                managed,
                groups,
                risk,
                age,
            })
    }

    proptest! {
        #[test]
        fn the_merge_never_loosens(
            facts in proptest::collection::vec(fact(), 0..6),
            block in any::<bool>(),
            risk_override in proptest::option::of(0usize..4),
        ) {
            let now = t(10_000);
            let mut table = DeviceTable::default();
            let mut by_source: BTreeMap<String, SourceFact> = BTreeMap::new();
            for f in &facts {
                // source 2 plays the risk feed: never says managed
                let name = if f.source == 2 { RISK_FEED_SOURCE.to_string() } else { format!("s{}", f.source) };
                let managed = if f.source == 2 { None } else { f.managed };
                by_source.insert(name, SourceFact {
                    managed,
                    groups: f.groups.iter().map(|g| GROUPS[*g].to_string()).collect(),
                    risk: f.risk.map(|r| RISKS[r]),
                    risk_reasons: Vec::new(),
                    udids: BTreeSet::new(),
                    platform: None,
                    confirmed_at: now - Duration::from_secs(f.age),
                    expires: None,
                });
            }
            for (name, f) in &by_source {
                table.update_devices(name, vec![("D".into(), Some(f.clone()))], "test");
            }
            let level = risk_override.map(|r| RISKS[r]);
            let mut o = Overrides::default();
            if block {
                o = overrides::apply(&o, OverrideAction::Block, None, None, None, now).unwrap();
            }
            if let Some(l) = level {
                o = overrides::apply(&o, OverrideAction::Risk, Some(l), None, None, now).unwrap();
            }
            table.set_overrides("D", o, "test");

            let inventory: Vec<&SourceFact> = by_source.values().filter(|f| f.managed.is_some()).collect();
            let record = table.get("D");
            if inventory.is_empty() {
                prop_assert!(record.is_none(), "known without an inventory source");
                return Ok(());
            }
            let r = record.unwrap();
            // managed only if every inventory source says so (one saying unmanaged outvotes)
            prop_assert_eq!(r.managed, inventory.iter().all(|f| f.managed == Some(true)));
            // groups never beyond what the inventory sources saying managed say
            let union: BTreeSet<String> = inventory
                .iter()
                .filter(|f| f.managed == Some(true))
                .flat_map(|f| f.groups.iter().cloned())
                .collect();
            prop_assert!(r.groups.is_subset(&union));
            // the oldest inventory confirmation counts
            prop_assert_eq!(Some(r.confirmed_at), inventory.iter().map(|f| f.confirmed_at).min());
            // risk is at least every opinion, the override's included
            for f in by_source.values() {
                if let Some(x) = f.risk { prop_assert!(r.risk >= x); }
            }
            if let Some(l) = level { prop_assert!(r.risk >= l); }
            if block {
                prop_assert!(r.groups.is_empty());
                prop_assert_eq!(r.risk, RiskLevel::High);
            }
        }
    }
}
