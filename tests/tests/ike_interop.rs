//! attestgate's IKEv2 against strongSwan 5.9 (kernel-libipsec) in namespaces: as initiator and
//! as responder, PSK, with the suites issue 3 names. strongSwan's `--list-sas --raw` must show
//! the IKE SA ESTABLISHED and the child SA INSTALLED with the SPIs we negotiated.
//! ESP then carries ping and iperf3 between attestgate's TUN device and strongSwan.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::time::Duration;
use tests::ike_peer::Peer;
use tests::interop::{check_strongswan, lab, lab_with, ping_across, route_into_tun};
use tests::netns::{veth, Netns};
use tests::pki::{LabPki, P256};
use tests::strongswan::{Auth, Charon, PeerConfig};

/// Runs `body` with PSK, or with ECDSA P-256 certificates from a fresh lab CA
/// (gw.attestgate.lab ours, vpn.corp.lab strongSwan's); the PKI's files live while it runs.
fn with_auth(ecdsa: bool, body: impl FnOnce(Auth)) {
    if ecdsa {
        let pki = LabPki::new("attestgate lab CA", &P256);
        body(Auth::Cert {
            ours: pki.issue("gw.attestgate.lab"),
            theirs: pki.issue("vpn.corp.lab"),
            ca: pki.ca.clone(),
            strongswan_signs: None,
        });
    } else {
        body(Auth::Psk("interop-psk-6f1c2a9e".into()));
    }
}

/// With certificates, strongSwan must have checked our AUTH as an RFC 7427 ECDSA signature.
fn check_auth(sw: &Charon, auth: &Auth) {
    if let Auth::Cert { .. } = auth {
        let log = sw.log();
        let ok = "authentication of 'gw.attestgate.lab' with ECDSA_WITH_SHA256_DER successful";
        assert!(log.contains(ok), "{ok} not in:\n{log}");
    }
}

/// Two tests from one body taking an `Auth`: `$psk` with PSK, `$ecdsa` with ECDSA P-256.
macro_rules! psk_and_ecdsa {
    ($body:ident, $psk:ident, $ecdsa:ident) => {
        #[test]
        fn $psk() {
            if tests::require_root(stringify!($psk)) {
                with_auth(false, $body);
            }
        }

        #[test]
        fn $ecdsa() {
            if tests::require_root(stringify!($ecdsa)) {
                with_auth(true, $body);
            }
        }
    };
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
    tests::interop::esp_traffic(&a, &b, &ours, role);
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

psk_and_ecdsa!(
    initiator_behind_a_masquerading_nat,
    initiator_behind_a_masquerading_nat_psk,
    initiator_behind_a_masquerading_nat_ecdsa
);

/// attestgate behind an nftables masquerading NAT box: NAT detection moves IKE and ESP to
/// UDP 4500, strongSwan sees the NAT's address, and ping and iperf3 cross the tunnel.
fn initiator_behind_a_masquerading_nat(auth: Auth) {
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
        auth,
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
    route_into_tun(&a, &tun);
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
    check_auth(&sw, &ours.auth);
    ping_across(&a, 3);
    let bps = tests::strongswan::iperf3(&b, "198.19.0.1", &a, "198.18.100.1", 2);
    eprintln!(
        "attestgate behind NAT ↔ strongSwan: {:.3} Gbit/s",
        bps / 1e9
    );
    assert!(bps > 1e6);
}

psk_and_ecdsa!(
    tunnel_comes_back_after_strongswan_restarts,
    tunnel_comes_back_after_strongswan_restarts_psk,
    tunnel_comes_back_after_strongswan_restarts_ecdsa
);

/// strongSwan is killed in the middle of a session and started again: attestgate notices with
/// its liveness checks and brings the tunnel back by itself; traffic flows again.
fn tunnel_comes_back_after_strongswan_restarts(auth: Auth) {
    let (a, b, ours) = lab_with("aes256gcm16-prfsha256-ecp256", "aes256gcm16", auth);
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
    route_into_tun(&a, &tun);
    let first = peer.wait_for("child_established", Duration::from_secs(20));
    ping_across(&a, 2);
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
    ping_across(&a, 3);
    check_strongswan(&sw, &second);
    check_auth(&sw, &ours.auth);
}

psk_and_ecdsa!(
    iperf3_stream_survives_rekeys_every_two_seconds,
    iperf3_stream_survives_rekeys_every_two_seconds_psk,
    iperf3_stream_survives_rekeys_every_two_seconds_ecdsa
);

/// A TCP stream through the tunnel survives child SA rekeys every two seconds
/// (make-before-break on both ends).
fn iperf3_stream_survives_rekeys_every_two_seconds(auth: Auth) {
    let (a, b, ours) = lab_with("aes256gcm16-prfsha256-ecp256", "aes256gcm16", auth);
    let sw = Charon::start(&b, &ours.mirrored());
    let tun = tests::netns::unique("t");
    let peer = Peer::start_with(
        &a,
        "initiator",
        &ours,
        &["--tun", &tun, "--rekey-every", "2"],
    );
    route_into_tun(&a, &tun);
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
    check_auth(&sw, &ours.auth);
}
