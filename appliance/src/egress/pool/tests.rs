#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use proptest::prelude::*;

fn pools(net: &str, mode: NatMode) -> NatPools {
    let p = NatPools::in_memory();
    p.set_pools(BTreeMap::from([(
        "corp".to_string(),
        (net.parse().unwrap(), mode),
    )]));
    p
}

fn none() -> BTreeSet<String> {
    BTreeSet::new()
}

#[test]
fn usable_addresses_skip_network_and_broadcast_of_short_v4_pools() {
    let s = Slots::new("198.18.100.0/26".parse().unwrap());
    assert_eq!(s.count, 62);
    assert_eq!(s.address(0), "198.18.100.1".parse::<IpAddr>().unwrap());
    assert_eq!(s.address(61), "198.18.100.62".parse::<IpAddr>().unwrap());
    assert_eq!(s.index("198.18.100.0".parse().unwrap()), None);
    assert_eq!(s.index("198.18.100.63".parse().unwrap()), None);
    assert_eq!(s.index("198.18.100.64".parse().unwrap()), None);
    assert_eq!(Slots::new("198.18.100.0/31".parse().unwrap()).count, 2);
    assert_eq!(Slots::new("198.18.100.7/32".parse().unwrap()).count, 1);
    let v6 = Slots::new("2001:db8::/120".parse().unwrap());
    assert_eq!(v6.count, 256);
    assert_eq!(v6.address(0), "2001:db8::".parse::<IpAddr>().unwrap());
    assert_eq!(Slots::new("::/0".parse().unwrap()).count, u128::MAX);
}

#[test]
fn per_device_addresses_are_sticky_distinct_and_in_the_pool() {
    let p = pools("198.18.100.0/26", NatMode::PerDevice);
    let net: IpNet = "198.18.100.0/26".parse().unwrap();
    let a = p.address("corp", "SERIAL-A", none).unwrap();
    let b = p.address("corp", "SERIAL-B", none).unwrap();
    assert_ne!(a, b);
    assert!(net.contains(&a) && net.contains(&b));
    // reconnects: the same address
    for _ in 0..5 {
        assert_eq!(p.address("corp", "SERIAL-A", none).unwrap(), a);
    }
    // the preferred slot comes from the serial's hash
    let slots = Slots::new(net);
    assert_eq!(a, slots.address(slots.preferred("SERIAL-A")));
    assert_eq!(p.address("nope", "SERIAL-A", none), Err(PoolError::Unknown));
}

#[test]
fn leases_survive_a_restart_and_a_corrupt_file_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let wanted = BTreeMap::from([(
        "corp".to_string(),
        ("198.18.100.0/26".parse().unwrap(), NatMode::PerDevice),
    )]);
    let (a, b) = {
        let p = Arc::new(NatPools::open(dir.path()));
        p.set_pools(wanted.clone());
        // many devices: some probe past their preferred slot
        for i in 0..40 {
            p.address("corp", &format!("D{i}"), none).unwrap();
        }
        let ab = (
            p.address("corp", "D3", none).unwrap(),
            p.address("corp", "D37", none).unwrap(),
        );
        // written once the gateway asks (here, outside a runtime: at once)
        assert!(!std::fs::read_to_string(dir.path().join(LEASE_FILE))
            .unwrap_or_default()
            .contains("\"D37\""));
        p.save_if_changed();
        ab
    };
    let text = std::fs::read_to_string(dir.path().join(LEASE_FILE)).unwrap();
    assert!(text.contains("\"D37\""), "{text}");
    let p = NatPools::open(dir.path());
    let log_dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::default());
    log.set_file(Some(log_dir.path().join("events.jsonl")));
    p.set_events(log);
    p.set_pools(wanted.clone());
    assert_eq!(p.lease_of("corp", "D3"), Some(a));
    assert_eq!(p.address("corp", "D37", none).unwrap(), b);
    p.address("corp", "D37", none).unwrap();
    // the first use after the restart is reported once, as restored
    let events = std::fs::read_to_string(log_dir.path().join("events.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 1, "{events}");
    assert!(
        events.contains("\"reason\":\"restored\"")
            && events.contains(&format!("\"address\":\"{b}\"")),
        "{events}"
    );
    assert_eq!(p.leases("corp").len(), 40);
    // no temporary file is left next to it
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [LEASE_FILE]);

    std::fs::write(dir.path().join(LEASE_FILE), b"{\"version\": 1, \"egre").unwrap();
    let p = NatPools::open(dir.path());
    p.set_pools(wanted);
    assert!(p.leases("corp").is_empty());
    assert!(dir.path().join("nat-leases.json.corrupt").exists());
    // and it works from there
    p.address("corp", "D3", none).unwrap();
}

#[test]
fn a_changed_pool_keeps_only_the_leases_inside_it() {
    let p = pools("198.18.100.0/26", NatMode::PerDevice);
    let addresses: Vec<(String, IpAddr)> = (0..30)
        .map(|i| {
            let s = format!("D{i}");
            let a = p.address("corp", &s, none).unwrap();
            (s, a)
        })
        .collect();
    // shrink to the lower half
    let half: IpNet = "198.18.100.0/27".parse().unwrap();
    p.set_pools(BTreeMap::from([(
        "corp".to_string(),
        (half, NatMode::PerDevice),
    )]));
    let kept = p.leases("corp");
    for (serial, address) in &addresses {
        let usable = half.contains(address) && *address != half.broadcast();
        assert_eq!(
            kept.get(serial) == Some(address),
            usable,
            "{serial} {address}"
        );
        assert_eq!(kept.contains_key(serial), usable);
    }
}

#[test]
fn exhaustion_reclaims_an_idle_lease_else_refuses() {
    // a /30: two usable addresses
    let p = pools("198.18.100.0/30", NatMode::PerDevice);
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(EventLog::default());
    log.set_file(Some(dir.path().join("events.jsonl")));
    p.set_events(log);
    let a = p.address("corp", "A", none).unwrap();
    std::thread::sleep(Duration::from_millis(1100)); // A is the older lease
    let b = p.address("corp", "B", none).unwrap();
    assert_ne!(a, b);
    let both = || BTreeSet::from(["A".to_string(), "B".to_string()]);
    assert_eq!(p.address("corp", "C", both), Err(PoolError::Exhausted));
    assert_eq!(p.address("corp", "C", both), Err(PoolError::Exhausted));
    // A and B idle: the least recently used (A) goes to C
    assert_eq!(p.address("corp", "C", none).unwrap(), a);
    assert_eq!(p.lease_of("corp", "A"), None);
    assert_eq!(p.lease_of("corp", "B"), Some(b));
    // B busy, C idle: D takes C's
    let only_b = || BTreeSet::from(["B".to_string()]);
    assert_eq!(p.address("corp", "D", only_b).unwrap(), a);
    assert_eq!(p.lease_of("corp", "C"), None);
    // every assignment named the device; exhaustion was reported once, not per request
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert_eq!(events.matches("\"nat.exhausted\"").count(), 1, "{events}");
    assert_eq!(events.matches("\"nat.reclaimed\"").count(), 2, "{events}");
    let assigned: Vec<&str> = events
        .lines()
        .filter(|l| l.contains("nat.assigned"))
        .collect();
    assert_eq!(assigned.len(), 4, "{events}");
    assert!(assigned[0].contains("\"serial\":\"A\"") && assigned[0].contains("\"reason\":\"new\""));
    assert!(
        assigned[2].contains("\"serial\":\"C\"")
            && assigned[2].contains("\"reason\":\"reclaimed\"")
    );
    assert!(assigned[2].contains(&format!("\"address\":\"{a}\"")));
}

#[test]
fn shared_mode_spreads_without_leases() {
    let p = pools("198.18.100.0/30", NatMode::Shared);
    let mut seen = BTreeSet::new();
    for i in 0..50 {
        let s = format!("D{i}");
        let x = p.address("corp", &s, || panic!("never exhausted")).unwrap();
        assert_eq!(p.address("corp", &s, none).unwrap(), x, "stable per device");
        seen.insert(x);
    }
    assert_eq!(
        seen,
        BTreeSet::from([
            "198.18.100.1".parse::<IpAddr>().unwrap(),
            "198.18.100.2".parse().unwrap()
        ])
    );
    assert!(p.leases("corp").is_empty());
}

proptest! {
    /// Whatever devices ask, in whatever order, with whatever flows open: no two devices ever
    /// hold the same per-device address, every address is a usable one of the pool, a device
    /// keeps its address while it holds a lease, and a device with an open flow never loses it.
    #[test]
    fn two_devices_never_share_a_per_device_address(
        ops in proptest::collection::vec((0u8..12, proptest::collection::btree_set(0u8..12, 0..12)), 1..80)
    ) {
        let p = pools("198.18.100.0/29", NatMode::PerDevice); // 6 usable addresses
        let net: IpNet = "198.18.100.0/29".parse().unwrap();
        for (device, busy) in ops {
            let serial = format!("D{device}");
            let busy: BTreeSet<String> = busy.iter().map(|b| format!("D{b}")).collect();
            let before = p.leases("corp");
            match p.address("corp", &serial, || busy.clone()) {
                Ok(address) => {
                    prop_assert!(net.contains(&address));
                    prop_assert!(address != net.network() && address != net.broadcast());
                    if let Some(old) = before.get(&serial) {
                        prop_assert_eq!(*old, address);
                    }
                    prop_assert_eq!(p.lease_of("corp", &serial), Some(address));
                }
                Err(e) => {
                    prop_assert_eq!(e, PoolError::Exhausted);
                    prop_assert!(before.len() == 6 && before.keys().all(|s| busy.contains(s)));
                }
            }
            let after = p.leases("corp");
            let distinct: BTreeSet<IpAddr> = after.values().copied().collect();
            prop_assert_eq!(distinct.len(), after.len(), "shared address: {:?}", after);
            for (s, a) in &before {
                if busy.contains(s) {
                    prop_assert_eq!(after.get(s), Some(a), "a busy device lost its lease");
                }
            }
        }
    }
}
