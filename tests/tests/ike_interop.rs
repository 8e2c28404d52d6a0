//! attestgate's IKEv2 against strongSwan 5.9 (kernel-libipsec) in namespaces: as initiator and
//! as responder, PSK, with the suites issue 3 names. strongSwan's `--list-sas --raw` must show
//! the IKE SA ESTABLISHED and the child SA INSTALLED with the SPIs we negotiated.
//! ESP then carries ping and iperf3 between attestgate's TUN device and strongSwan.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::time::Duration;
use tests::ike_peer::Peer;
use tests::netns::{veth, Netns};
use tests::strongswan::{Auth, Charon, PeerConfig};

fn lab(ike: &str, esp: &str) -> (Netns, Netns, PeerConfig) {
    let l = tests::ike_lab::TunnelLab::new(ike, esp);
    (l.a, l.b, l.ours)
}

fn check_strongswan(sw: &Charon, child: &Value) {
    let sas = sw.list_sas();
    assert!(sas.contains("state=ESTABLISHED"), "{sas}\n{}", sw.log());
    assert!(sas.contains("state=INSTALLED"), "{sas}\n{}", sw.log());
    // strongSwan's inbound SPI is our outbound one and vice versa
    let out = child["spi_out"].as_str().unwrap();
    let inn = child["spi_in"].as_str().unwrap();
    assert!(
        sas.contains(&format!("spi-in={out}")),
        "spi-in={out} missing in {sas}"
    );
    assert!(
        sas.contains(&format!("spi-out={inn}")),
        "spi-out={inn} missing in {sas}"
    );
}

fn attestgate_initiates(ike: &str, esp: &str) {
    let (a, b, ours) = lab(ike, esp);
    let sw = Charon::start(&b, &ours.mirrored());
    let peer = Peer::start(&a, "initiator", &ours);
    let ike_up = peer.wait_for("ike_established", Duration::from_secs(20));
    assert_eq!(ike_up["proposal"], ike_canonical(ike), "{ike_up}");
    let child = peer.wait_for("child_established", Duration::from_secs(5));
    assert_eq!(child["local_ts"][0], "198.18.100.0-198.18.100.255");
    assert_eq!(child["remote_ts"][0], "198.19.0.0-198.19.0.255");
    check_strongswan(&sw, &child);
}

fn strongswan_initiates(ike: &str, esp: &str) {
    let (a, b, ours) = lab(ike, esp);
    let peer = Peer::start(&a, "responder", &ours);
    let sw = Charon::start(&b, &ours.mirrored());
    let out = sw.initiate();
    assert!(
        out.contains("initiate completed successfully"),
        "{out}\n{}",
        sw.log()
    );
    peer.wait_for("ike_established", Duration::from_secs(5));
    let child = peer.wait_for("child_established", Duration::from_secs(5));
    check_strongswan(&sw, &child);
}

fn ike_canonical(p: &str) -> String {
    ike::IkeProposal::parse(p).unwrap().to_string()
}

macro_rules! interop {
    ($name:ident, $f:ident, $ike:expr, $esp:expr) => {
        #[test]
        fn $name() {
            if tests::require_root(stringify!($name)) {
                $f($ike, $esp);
            }
        }
    };
}

interop!(
    initiator_chacha20_x25519,
    attestgate_initiates,
    "chacha20poly1305-prfsha256-x25519",
    "chacha20poly1305"
);
interop!(
    initiator_aes256gcm_ecp384,
    attestgate_initiates,
    "aes256gcm16-prfsha384-ecp384",
    "aes256gcm16"
);
interop!(
    initiator_aes128cbc_modp2048,
    attestgate_initiates,
    "aes128-sha256-modp2048",
    "aes128gcm16"
);
interop!(
    responder_chacha20_x25519,
    strongswan_initiates,
    "chacha20poly1305-prfsha256-x25519",
    "chacha20poly1305"
);
interop!(
    responder_aes256gcm_ecp384,
    strongswan_initiates,
    "aes256gcm16-prfsha384-ecp384",
    "aes256gcm16"
);
interop!(
    responder_aes128cbc_modp2048,
    strongswan_initiates,
    "aes128-sha256-modp2048",
    "aes128gcm16"
);

fn count(events: &[Value], kind: &str) -> usize {
    events.iter().filter(|e| e["event"] == kind).count()
}

/// strongSwan rekeys the child SA every ~3 s (with PFS) and the IKE SA every ~7 s; our
/// responder follows, and the tunnel stays up with the latest SPIs on both ends.
#[test]
fn responder_follows_strongswan_rekeys_of_child_and_ike_sa() {
    if !tests::require_root("responder_follows_strongswan_rekeys_of_child_and_ike_sa") {
        return;
    }
    let (a, b, mut ours) = lab("aes256gcm16-prfsha256-ecp256", "aes256gcm16-ecp256");
    ours.child_rekey = "3s".into();
    ours.ike_rekey = "7s".into();
    let peer = Peer::start(&a, "responder", &ours);
    let sw = Charon::start(&b, &ours.mirrored());
    assert!(sw.initiate().contains("initiate completed successfully"));
    peer.wait_for("child_established", Duration::from_secs(5));
    let events = peer.collect(Duration::from_secs(12));
    let rekeyed = events
        .iter()
        .filter(|e| e["event"] == "child_established" && !e["rekeys"].is_null())
        .count();
    assert!(
        rekeyed >= 2,
        "expected ≥2 child rekeys in 12 s: {events:?}\n{}",
        sw.log()
    );
    assert!(count(&events, "child_deleted") >= 2, "{events:?}");
    assert!(
        count(&events, "ike_rekeyed") >= 1,
        "{events:?}\n{}",
        sw.log()
    );
    assert_eq!(count(&events, "closed"), 0, "{events:?}");
    let last = events
        .iter()
        .rev()
        .find(|e| e["event"] == "child_established")
        .unwrap();
    let sas = sw.list_sas();
    assert!(sas.contains("state=ESTABLISHED"), "{sas}");
    assert!(
        sas.contains(&format!("spi-in={}", last["spi_out"].as_str().unwrap())),
        "latest {last} not in {sas}"
    );
}

/// Our initiator rekeys its child SA every 2 s and checks liveness every second.
#[test]
fn initiator_rekeys_children_and_checks_liveness() {
    if !tests::require_root("initiator_rekeys_children_and_checks_liveness") {
        return;
    }
    let (a, b, ours) = lab(
        "chacha20poly1305-prfsha256-x25519",
        "chacha20poly1305-x25519",
    );
    let sw = Charon::start(&b, &ours.mirrored());
    let peer = Peer::start_with(
        &a,
        "initiator",
        &ours,
        &["--rekey-every", "2", "--dpd-every", "1"],
    );
    peer.wait_for("child_established", Duration::from_secs(20));
    let events = peer.collect(Duration::from_secs(7));
    let rekeyed: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "child_established" && !e["rekeys"].is_null())
        .collect();
    assert!(rekeyed.len() >= 2, "{events:?}\n{}", sw.log());
    assert!(count(&events, "child_deleted") >= 2, "{events:?}");
    assert!(count(&events, "alive") >= 3, "{events:?}");
    assert_eq!(
        count(&events, "child_rekey_failed") + count(&events, "closed"),
        0,
        "{events:?}"
    );
    let last = rekeyed.last().unwrap();
    let sas = sw.list_sas();
    assert!(
        sas.contains(&format!("spi-in={}", last["spi_out"].as_str().unwrap())),
        "latest {last} not in {sas}"
    );
    assert!(
        sas.contains(&format!("spi-out={}", last["spi_in"].as_str().unwrap())),
        "latest {last} not in {sas}"
    );
}

/// ESP from attestgate's TUN device to strongSwan and back: ping and an iperf3 stream through
/// the tunnel, with the SPIs strongSwan counts packets on.
fn esp_traffic(ike: &str, esp: &str, role: &str) {
    let (a, b, ours) = lab(ike, esp);
    let tun = tests::netns::unique("t");
    let peer = if role == "initiator" {
        let sw = Charon::start(&b, &ours.mirrored());
        (
            Peer::start_with(&a, role, &ours, &["--tun", &tun]),
            Some(sw),
        )
    } else {
        (Peer::start_with(&a, role, &ours, &["--tun", &tun]), None)
    };
    let (peer, sw) = peer;
    a.ip(&["link", "set", &tun, "mtu", "1400", "up"]);
    a.ip(&[
        "route",
        "add",
        "198.19.0.0/24",
        "dev",
        &tun,
        "src",
        "198.18.100.1",
    ]);
    let sw = match sw {
        Some(sw) => sw,
        None => {
            let sw = Charon::start(&b, &ours.mirrored());
            assert!(sw.initiate().contains("initiate completed successfully"));
            sw
        }
    };
    let child = peer.wait_for("child_established", Duration::from_secs(20));
    check_strongswan(&sw, &child);
    let ping = a.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.100.1",
        "198.19.0.1",
    ]);
    let text = String::from_utf8_lossy(&ping.stdout);
    assert!(text.contains(" 3 received"), "{text}\n{}", sw.list_sas());
    let bps = tests::strongswan::iperf3(&b, "198.19.0.1", &a, "198.18.100.1", 3);
    eprintln!(
        "attestgate ({role}) ↔ strongSwan {ike} / {esp}: {:.3} Gbit/s (single TCP stream)",
        bps / 1e9
    );
    assert!(bps > 1e6, "the tunnel carried almost nothing: {bps} bit/s");
    let sas = sw.list_sas();
    assert!(
        !sas.contains("packets-in=0 "),
        "strongSwan counted no ESP: {sas}"
    );
}

interop!(
    esp_chacha20_as_initiator,
    esp_traffic_initiator,
    "chacha20poly1305-prfsha256-x25519",
    "chacha20poly1305"
);
interop!(
    esp_aes256gcm_as_initiator,
    esp_traffic_initiator,
    "aes256gcm16-prfsha384-ecp384",
    "aes256gcm16"
);
interop!(
    esp_aes128gcm_as_responder,
    esp_traffic_responder,
    "aes128-sha256-modp2048",
    "aes128gcm16"
);

fn esp_traffic_initiator(ike: &str, esp: &str) {
    esp_traffic(ike, esp, "initiator");
}

fn esp_traffic_responder(ike: &str, esp: &str) {
    esp_traffic(ike, esp, "responder");
}

/// attestgate behind an nftables masquerading NAT box: NAT detection moves IKE and ESP to
/// UDP 4500, strongSwan sees the NAT's address, and ping and iperf3 cross the tunnel.
#[test]
fn initiator_behind_a_masquerading_nat() {
    if !tests::require_root("initiator_behind_a_masquerading_nat") {
        return;
    }
    let a = Netns::new("ag");
    let nat = Netns::new("nat");
    let b = Netns::new("sw");
    veth(&a, "198.51.100.10/24", &nat, "198.51.100.1/24");
    let (nat_out, _) = veth(&nat, "203.0.113.1/24", &b, "203.0.113.20/24");
    a.ip(&["route", "add", "default", "via", "198.51.100.1"]);
    a.addr("lo", "198.18.100.1/24");
    b.addr("lo", "198.19.0.1/24");
    nat.ok(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    nat.ok(&["nft", "add", "table", "ip", "lab"]);
    nat.ok(&[
        "nft",
        "add",
        "chain",
        "ip",
        "lab",
        "post",
        "{ type nat hook postrouting priority 100 ; }",
    ]);
    nat.ok(&[
        "nft",
        "add",
        "rule",
        "ip",
        "lab",
        "post",
        "oifname",
        &nat_out,
        "masquerade",
    ]);
    let ours = PeerConfig {
        local_addr: "198.51.100.10".into(),
        remote_addr: "203.0.113.20".into(),
        local_id: "gw.attestgate.lab".into(),
        remote_id: "vpn.corp.lab".into(),
        auth: Auth::Psk("nat-psk-9d2c4e1f".into()),
        ike_proposal: "aes256gcm16-prfsha256-ecp256".into(),
        esp_proposal: "aes256gcm16".into(),
        local_ts: "198.18.100.0/24".into(),
        remote_ts: "198.19.0.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    };
    let mut theirs = ours.mirrored();
    theirs.remote_addr = "%any".into();
    let sw = Charon::start(&b, &theirs);
    let tun = tests::netns::unique("t");
    let peer = Peer::start_with(&a, "initiator", &ours, &["--tun", &tun]);
    a.ip(&["link", "set", &tun, "mtu", "1400", "up"]);
    a.ip(&[
        "route",
        "add",
        "198.19.0.0/24",
        "dev",
        &tun,
        "src",
        "198.18.100.1",
    ]);
    let ike_up = peer.wait_for("ike_established", Duration::from_secs(20));
    assert_eq!(ike_up["nat"], true, "{ike_up}");
    let child = peer.wait_for("child_established", Duration::from_secs(5));
    assert_eq!(child["udp_encap"], true);
    let sas = sw.list_sas();
    assert!(
        sas.contains("remote-host=203.0.113.1"),
        "strongSwan should see the NAT's address: {sas}"
    );
    assert!(
        sas.contains("nat-local=yes")
            || sas.contains("nat-remote=yes")
            || sas.contains("nat-any=yes"),
        "{sas}"
    );
    let ping = a.run(&[
        "ping",
        "-c",
        "3",
        "-i",
        "0.2",
        "-W",
        "2",
        "-I",
        "198.18.100.1",
        "198.19.0.1",
    ]);
    assert!(
        String::from_utf8_lossy(&ping.stdout).contains(" 3 received"),
        "{}",
        String::from_utf8_lossy(&ping.stdout)
    );
    let bps = tests::strongswan::iperf3(&b, "198.19.0.1", &a, "198.18.100.1", 2);
    eprintln!(
        "attestgate behind NAT ↔ strongSwan: {:.3} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 1e6);
}

/// strongSwan is killed in the middle of a session and started again: attestgate notices with
/// its liveness checks and brings the tunnel back by itself; traffic flows again.
#[test]
fn tunnel_comes_back_after_strongswan_restarts() {
    if !tests::require_root("tunnel_comes_back_after_strongswan_restarts") {
        return;
    }
    let (a, b, ours) = lab("aes256gcm16-prfsha256-ecp256", "aes256gcm16");
    let sw = Charon::start(&b, &ours.mirrored());
    let tun = tests::netns::unique("t");
    let peer = Peer::start_with(
        &a,
        "initiator",
        &ours,
        &[
            "--tun",
            &tun,
            "--restart",
            "yes",
            "--dpd-every",
            "1",
            "--retransmit-tries",
            "3",
        ],
    );
    a.ip(&["link", "set", &tun, "mtu", "1400", "up"]);
    a.ip(&[
        "route",
        "add",
        "198.19.0.0/24",
        "dev",
        &tun,
        "src",
        "198.18.100.1",
    ]);
    let first = peer.wait_for("child_established", Duration::from_secs(20));
    let ping = |n: &str| {
        a.run(&[
            "ping",
            "-c",
            n,
            "-i",
            "0.2",
            "-W",
            "2",
            "-I",
            "198.18.100.1",
            "198.19.0.1",
        ])
    };
    assert!(String::from_utf8_lossy(&ping("2").stdout).contains(" 2 received"));
    drop(sw); // killed: no delete, no goodbye
    let closed = peer.wait_for("closed", Duration::from_secs(15));
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{closed}"
    );
    let sw = Charon::start(&b, &ours.mirrored());
    let second = peer.wait_for("child_established", Duration::from_secs(30));
    assert_ne!(first["spi_in"], second["spi_in"]);
    let out = ping("3");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 3 received"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    check_strongswan(&sw, &second);
}

/// A TCP stream through the tunnel survives child SA rekeys every two seconds
/// (make-before-break on both ends).
#[test]
fn iperf3_stream_survives_rekeys_every_two_seconds() {
    if !tests::require_root("iperf3_stream_survives_rekeys_every_two_seconds") {
        return;
    }
    let (a, b, ours) = lab("aes256gcm16-prfsha256-ecp256", "aes256gcm16");
    let sw = Charon::start(&b, &ours.mirrored());
    let tun = tests::netns::unique("t");
    let peer = Peer::start_with(
        &a,
        "initiator",
        &ours,
        &["--tun", &tun, "--rekey-every", "2"],
    );
    a.ip(&["link", "set", &tun, "mtu", "1400", "up"]);
    a.ip(&[
        "route",
        "add",
        "198.19.0.0/24",
        "dev",
        &tun,
        "src",
        "198.18.100.1",
    ]);
    peer.wait_for("child_established", Duration::from_secs(20));
    // iperf3 fails (non-zero exit, so `iperf3` panics) if the stream breaks
    let bps = tests::strongswan::iperf3(&b, "198.19.0.1", &a, "198.18.100.1", 8);
    let events = peer.collect(Duration::from_millis(200));
    let rekeys = events
        .iter()
        .filter(|e| e["event"] == "child_established" && !e["rekeys"].is_null())
        .count();
    eprintln!("iperf3 across {rekeys} rekeys: {:.3} Gbit/s", bps / 1e9);
    assert!(rekeys >= 3, "expected ≥3 rekeys during the run: {events:?}");
    assert!(bps > 1e6, "{bps}");
    assert_eq!(
        count(&events, "closed") + count(&events, "child_rekey_failed"),
        0,
        "{events:?}"
    );
    let _ = sw.list_sas();
}
