//! The SA lifecycle against strongSwan 5.9 (kernel-libipsec) in namespaces: attestgate rekeys
//! the IKE SA itself every few seconds while pings cross the tunnel; both ends with short
//! lifetimes rekey at nearly the same moments and the tunnel survives; and when strongSwan is
//! killed, `dpd_action = clear` keeps the tunnel down until traffic asks for it, while
//! `restart` brings it back by itself.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::time::Duration;
use tests::ike_lab::{count, last, TunnelLab};
use tests::strongswan::Charon;

/// strongSwan's IKE SA carries the SPIs of our latest `ike_rekeyed` (or establishment).
fn strongswan_has_ike_spis(sw: &Charon, e: &Value) -> String {
    let sas = sw.list_sas();
    for key in ["spi_i", "spi_r"] {
        let spi = e[key].as_str().unwrap();
        assert!(sas.contains(spi), "{key} {spi} not in {sas}\n{}", sw.log());
    }
    sas
}

#[test]
fn attestgate_rekeys_the_ike_sa_every_three_seconds_while_pings_pass() {
    if !tests::require_root("attestgate_rekeys_the_ike_sa_every_three_seconds_while_pings_pass") {
        return;
    }
    let lab = TunnelLab::new("aes256gcm16-prfsha384-ecp384", "aes256gcm16");
    let sw = Charon::start(&lab.b, &lab.ours.mirrored());
    let peer = lab.start_initiator(&["--ike-rekey-every", "3", "--rekey-every", "5"]);
    peer.wait_for("child_established", Duration::from_secs(20));
    let (sent, received) = lab.ping(70, "0.2");
    let events = peer.collect(Duration::from_millis(1500));
    let ike: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "ike_rekeyed")
        .collect();
    eprintln!(
        "{} IKE rekeys, {} child rekeys in {sent} pings ({received} answered)",
        ike.len(),
        events
            .iter()
            .filter(|e| e["event"] == "child_established" && !e["rekeys"].is_null())
            .count()
    );
    assert!(ike.len() >= 3, "{events:?}\n{}", sw.log());
    assert!(
        ike.iter().all(|e| e["reason"] == "rekeyed by us"),
        "{ike:?}"
    );
    assert_eq!(
        count(&events, "closed") + count(&events, "ike_rekey_failed"),
        0,
        "{events:?}"
    );
    // child SAs rekeyed on the rekeyed IKE SA: keys derived from the new SK_d match
    assert_eq!(count(&events, "child_rekey_failed"), 0, "{events:?}");
    assert_eq!(received, sent, "pings lost across IKE rekeys");
    let sas = strongswan_has_ike_spis(&sw, ike.last().unwrap());
    // the old IKE SAs were deleted: strongSwan holds one
    assert_eq!(
        sas.matches("initiator-spi=").count(),
        1,
        "old IKE SAs left behind: {sas}"
    );
}

#[test]
fn short_lifetimes_on_both_ends_rekey_together_and_the_tunnel_survives() {
    if !tests::require_root("short_lifetimes_on_both_ends_rekey_together_and_the_tunnel_survives") {
        return;
    }
    let mut lab = TunnelLab::new(
        "chacha20poly1305-prfsha256-x25519",
        "chacha20poly1305-x25519",
    );
    lab.ours.child_rekey = "4s".into();
    lab.ours.ike_rekey = "6s".into();
    let sw = Charon::start(&lab.b, &lab.ours.mirrored());
    // ours: child rekey at 4.0–4.5 s, IKE rekey at 5.6–6.3 s: around strongSwan's moments
    let peer = lab.start_initiator(&["--child-lifetime", "5", "--ike-lifetime", "7", "--dpd", "2"]);
    peer.wait_for("child_established", Duration::from_secs(20));
    let (sent, received) = lab.ping(100, "0.2");
    let events = peer.collect(Duration::from_millis(1500));
    let reasons: Vec<&str> = events.iter().filter_map(|e| e["reason"].as_str()).collect();
    eprintln!(
        "20 s: {} IKE rekeys, {} child SAs, {received}/{sent} pings; reasons {reasons:?}",
        count(&events, "ike_rekeyed"),
        count(&events, "child_established"),
    );
    assert_eq!(count(&events, "closed"), 0, "{events:?}\n{}", sw.log());
    assert!(count(&events, "ike_rekeyed") >= 2, "{events:?}");
    assert!(count(&events, "child_established") >= 4, "{events:?}");
    assert!(
        received * 100 >= sent * 95,
        "{received}/{sent} pings answered\n{events:?}"
    );
    // both ends agree on the IKE SA and on the child SA in use
    let ike = last(&events, "ike_rekeyed").unwrap();
    let sas = strongswan_has_ike_spis(&sw, ike);
    assert!(sas.contains("state=INSTALLED"), "{sas}");
    let (_, again) = lab.ping(5, "0.2");
    assert_eq!(again, 5);
}

fn kill_strongswan(dpd_action: &str) -> (TunnelLab, tests::ike_peer::Peer, Charon) {
    let lab = TunnelLab::new("aes256gcm16-prfsha256-ecp256", "aes256gcm16");
    let sw = Charon::start(&lab.b, &lab.ours.mirrored());
    let peer = lab.start_initiator(&[
        "--restart",
        "yes",
        "--dpd",
        "1",
        "--retransmit-tries",
        "3",
        "--dpd-action",
        dpd_action,
    ]);
    peer.wait_for("child_established", Duration::from_secs(20));
    assert_eq!(lab.ping(2, "0.2").1, 2);
    drop(sw); // killed: no delete, no goodbye
    let closed = peer.wait_for("closed", Duration::from_secs(15));
    assert!(
        closed["reason"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{closed}"
    );
    let sw = Charon::start(&lab.b, &lab.ours.mirrored());
    (lab, peer, sw)
}

#[test]
fn dpd_action_clear_waits_for_traffic_before_bringing_the_tunnel_back() {
    if !tests::require_root("dpd_action_clear_waits_for_traffic_before_bringing_the_tunnel_back") {
        return;
    }
    let (lab, peer, sw) = kill_strongswan("clear");
    // strongSwan is back, but nothing asks for the tunnel: it stays down
    let quiet = peer.collect(Duration::from_secs(6));
    assert_eq!(count(&quiet, "cleared"), 1, "{quiet:?}");
    assert_eq!(count(&quiet, "ike_established"), 0, "{quiet:?}");
    // traffic for the tunnel brings it up
    let _ = lab.ping(3, "0.3");
    peer.wait_for("child_established", Duration::from_secs(20));
    assert_eq!(lab.ping(3, "0.2").1, 3, "{}", sw.list_sas());
}

#[test]
fn dpd_action_restart_brings_the_tunnel_back_without_traffic() {
    if !tests::require_root("dpd_action_restart_brings_the_tunnel_back_without_traffic") {
        return;
    }
    let (lab, peer, sw) = kill_strongswan("restart");
    let back = peer.collect(Duration::from_secs(15));
    assert_eq!(count(&back, "cleared"), 0, "{back:?}");
    assert!(
        count(&back, "child_established") >= 1,
        "{back:?}\n{}",
        sw.log()
    );
    assert_eq!(lab.ping(3, "0.2").1, 3, "{}", sw.list_sas());
}
