//! attestgate ↔ attestgate through the ESP data path, in namespaces: with UDP encapsulation
//! (forced, as with every strongSwan 5.9.8 kernel-libipsec peer here) and as raw ESP (IP
//! protocol 50) when no NAT is on the path (RFC 7296 §2.23). strongSwan 5.9.8's
//! kernel-libipsec always encapsulates in UDP (raw ESP came in 5.9.11), so raw ESP is tested
//! between two attestgate peers. nftables counters in the responder's namespace show which
//! of the two carried the traffic.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::time::Duration;
use tests::ike_peer::Peer;
use tests::netns::{unique, veth, Netns};
use tests::strongswan::{Auth, PeerConfig};

fn config() -> PeerConfig {
    PeerConfig {
        local_addr: "203.0.113.10".into(),
        remote_addr: "203.0.113.20".into(),
        local_id: "gw.attestgate.lab".into(),
        remote_id: "vpn.corp.lab".into(),
        auth: Auth::Psk("datapath-psk-0b5f3a".into()),
        ike_proposal: "aes256gcm16-prfsha384-ecp384".into(),
        esp_proposal: "aes256gcm16".into(),
        local_ts: "198.18.100.0/24".into(),
        remote_ts: "198.19.0.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    }
}

/// Packets counted by the rule of the namespace's `agdp` table whose comment is `name`.
fn counted(ns: &Netns, name: &str) -> u64 {
    let out = ns.ok(&["nft", "list", "table", "inet", "agdp"]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.contains(&format!("comment \"{name}\"")))
        .and_then(|l| {
            let after = l.split("packets ").nth(1)?;
            after.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or_else(|| panic!("no counter {name} in {text}"))
}

fn two_attestgates(raw_esp: bool) {
    if !tests::require_root("datapath") {
        return;
    }
    let a = Netns::new("da");
    let b = Netns::new("db");
    veth(&a, "203.0.113.10/24", &b, "203.0.113.20/24");
    a.addr("lo", "198.18.100.1/24");
    b.addr("lo", "198.19.0.1/24");
    b.ok(&["nft", "add", "table", "inet", "agdp"]);
    b.ok(&[
        "nft",
        "add chain inet agdp input { type filter hook input priority 0 ; }",
    ]);
    b.ok(&[
        "nft",
        "add rule inet agdp input meta l4proto esp counter comment \"esp\"",
    ]);
    b.ok(&[
        "nft",
        "add rule inet agdp input udp dport 4500 counter comment \"udp4500\"",
    ]);
    let cfg = config();
    let mut extra: Vec<&str> = vec!["--exit-after", "120"];
    if raw_esp {
        extra.extend(["--raw-esp", "1"]);
    }
    let (tun_a, tun_b) = (unique("t"), unique("t"));
    let mut rb = vec!["--tun", tun_b.as_str()];
    rb.extend(&extra);
    let r = Peer::start_with(&b, "responder", &cfg.mirrored(), &rb);
    let mut ia = vec!["--tun", tun_a.as_str()];
    ia.extend(&extra);
    let i = Peer::start_with(&a, "initiator", &cfg, &ia);
    for (ns, tun, route) in [
        (&a, &tun_a, "198.19.0.0/24"),
        (&b, &tun_b, "198.18.100.0/24"),
    ] {
        ns.ip(&["link", "set", tun, "mtu", "1400", "up"]);
        ns.ip(&["route", "add", route, "dev", tun]);
    }
    let child = i.wait_for("child_established", Duration::from_secs(20));
    r.wait_for("child_established", Duration::from_secs(5));
    assert_eq!(child["udp_encap"], !raw_esp, "{child}");
    let text = a.ping("198.18.100.1", "198.19.0.1", 3);
    assert!(text.contains(" 3 received"), "{text}");
    let bps = tests::strongswan::iperf3(&b, "198.19.0.1", &a, "198.18.100.1", 2);
    eprintln!(
        "attestgate ↔ attestgate, {}: {:.3} Gbit/s",
        if raw_esp {
            "raw ESP"
        } else {
            "ESP in UDP 4500"
        },
        bps / 1e9
    );
    assert!(bps > 1e6, "the tunnel carried almost nothing: {bps} bit/s");
    let (esp, udp) = (counted(&b, "esp"), counted(&b, "udp4500"));
    if raw_esp {
        assert!(esp > 1000, "raw ESP packets: {esp}");
        // IKE stays on port 500 without a NAT: nothing on 4500
        assert_eq!(udp, 0, "UDP 4500 packets with raw ESP: {udp}");
    } else {
        assert!(udp > 1000, "UDP 4500 packets: {udp}");
        assert_eq!(esp, 0, "raw ESP packets with UDP encapsulation: {esp}");
    }
}

#[test]
fn esp_in_udp_between_two_attestgates() {
    two_attestgates(false);
}

#[test]
fn raw_esp_between_two_attestgates_without_nat() {
    two_attestgates(true);
}
