//! The shipped examples load, and say what they mean.

use config::{load, EgressKind, FileChecks, NatMode, Outcome};
use std::path::Path;

fn example(name: &str) -> config::Loaded {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    match load(&path, FileChecks::Lenient) {
        Ok(l) => l,
        Err(e) => panic!("{name} does not load:\n{e}"),
    }
}

#[test]
fn lab_example_loads_with_every_section() {
    let l = example("lab.toml");
    let c = &l.config;
    assert_eq!(c.appliance.name, "lab-gw-1");
    assert_eq!(c.egresses.len(), 3);
    let corp = c.egress("corp").map(|e| &e.kind);
    let Some(EgressKind::Tunnel(t)) = corp else {
        panic!("corp is not a tunnel: {corp:?}")
    };
    assert_eq!(t.nat_pool.value.to_string(), "198.18.100.0/26");
    assert_eq!(t.nat_mode, NatMode::PerDevice);
    assert_eq!(t.ike_proposals.len(), 2);
    assert_eq!(
        t.ike_proposals[0].to_string(),
        "chacha20poly1305-prfsha256-x25519"
    );
    assert_eq!(c.policies.len(), 3);
    assert_eq!(c.policies[0].fallback.value, Outcome::Deny);
    // a policy without fallback takes [defaults] fallback
    assert_eq!(
        c.policies[2].fallback.value,
        Outcome::Egress("public".into())
    );
    assert_eq!(c.compliance.compliant_groups.len(), 2);
    assert_eq!(
        c.acme_directory().as_deref(),
        Some("https://gw.attestgate.lab/acme/directory")
    );
    // the lab files are made at start-up: on a bare checkout they are only warnings
    assert!(
        l.warnings
            .warnings()
            .all(|w| w.message.contains("does not exist")),
        "{}",
        l.warnings
    );
}

#[test]
fn cloud_example_uses_what_cloud_gateways_accept() {
    let l = example("cloud-tunnel.toml");
    let Some(EgressKind::Tunnel(t)) = l.config.egress("aws-vpc").map(|e| &e.kind) else {
        panic!("aws-vpc is not a tunnel")
    };
    assert!(matches!(t.auth, config::TunnelAuth::Psk { .. }));
    let ike = t.ike_proposals[0].to_string();
    assert_eq!(ike, "aes256gcm16-prfsha256-ecp256");
    assert!(t
        .ike_proposals
        .iter()
        .all(|p| !p.to_string().contains("chacha")));
    assert_eq!(t.mtu, 1399);
    assert_eq!(t.fragment_size, 1280);
}

#[test]
fn strict_mode_turns_missing_files_into_errors() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/lab.toml");
    let Err(config::ConfigError::Invalid(d)) = load(&path, FileChecks::Strict) else {
        panic!("strict load of the lab example should fail on this host (its files are made by the lab)")
    };
    assert!(
        d.errors()
            .any(|e| e.path == "relay.private_key" && e.message.contains("does not exist")),
        "{d}"
    );
}
