//! The lab harness against real strongSwan: two charons in two namespaces establish a tunnel
//! with each suite issue 3 must interoperate with, carry pings and an iperf3 stream, and every
//! namespace is gone afterwards. This is also the strongSwan↔strongSwan baseline the IKE
//! benchmarks compare against.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::time::Duration;
use tests::netns::{veth, Netns};
use tests::strongswan::{iperf3, Auth, Charon, PeerConfig};

fn tunnel(ike: &str, esp: &str) {
    let a = Netns::new("gw");
    let b = Netns::new("peer");
    veth(&a, "203.0.113.1/24", &b, "203.0.113.2/24");
    a.addr("lo", "198.18.1.1/24");
    b.addr("lo", "198.19.0.1/24");
    let cfg = PeerConfig {
        local_addr: "203.0.113.1".into(),
        remote_addr: "203.0.113.2".into(),
        local_id: "gw.attestgate.lab".into(),
        remote_id: "vpn.corp.lab".into(),
        auth: Auth::Psk("lab-psk-0123456789abcdef".into()),
        ike_proposal: ike.into(),
        esp_proposal: esp.into(),
        local_ts: "198.18.1.0/24".into(),
        remote_ts: "198.19.0.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    };
    let ca = Charon::start(&a, &cfg);
    let cb = Charon::start(&b, &cfg.mirrored());
    let out = ca.initiate();
    assert!(
        out.contains("initiate completed successfully"),
        "{out}\n{}",
        ca.log()
    );
    let sas = ca.list_sas();
    assert!(sas.contains("state=ESTABLISHED"), "{sas}");
    assert!(sas.contains("state=INSTALLED"), "{sas}");
    let ping = a.ok(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.1.1",
        "198.19.0.1",
    ]);
    assert!(String::from_utf8_lossy(&ping.stdout).contains("3 received"));
    let bps = iperf3(&b, "198.19.0.1", &a, "198.18.1.1", 2);
    eprintln!(
        "strongSwan↔strongSwan {ike} / {esp}: {:.3} Gbit/s (single TCP stream, kernel-libipsec)",
        bps / 1e9
    );
    assert!(bps > 1e6, "the tunnel carried almost nothing: {bps} bit/s");
    // the peer saw the packets through ESP, not around the tunnel
    let peer = cb.list_sas();
    assert!(peer.contains("packets-in="), "{peer}");
    assert!(
        !peer.contains("packets-in=0 "),
        "peer saw no ESP packets: {peer}"
    );
}

#[test]
fn strongswan_pair_chacha20_x25519() {
    if tests::require_root("strongswan_pair_chacha20_x25519") {
        tunnel("chacha20poly1305-prfsha256-x25519", "chacha20poly1305");
    }
}

#[test]
fn strongswan_pair_aes256gcm_ecp384() {
    if tests::require_root("strongswan_pair_aes256gcm_ecp384") {
        tunnel("aes256gcm16-prfsha384-ecp384", "aes256gcm16");
    }
}

#[test]
fn strongswan_pair_aes128cbc_modp2048() {
    if tests::require_root("strongswan_pair_aes128cbc_modp2048") {
        tunnel("aes128-sha256-modp2048", "aes128gcm16-modp2048");
    }
}

#[test]
fn namespaces_are_removed_even_when_a_test_panics() {
    if !tests::require_root("namespaces_are_removed_even_when_a_test_panics") {
        return;
    }
    let name = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("boom");
        *name.lock().unwrap() = ns.name.clone();
        std::thread::sleep(Duration::from_millis(10));
        panic!("deliberate");
    });
    assert!(result.is_err());
    let name = name.into_inner().unwrap();
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&name),
        "{name} left behind"
    );
}
