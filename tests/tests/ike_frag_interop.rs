//! IKE fragmentation (RFC 7383) and cookies (RFC 7296 §2.6) between attestgate and
//! strongSwan 5.9 (kernel-libipsec) in namespaces: each side made to fragment its IKE_AUTH with
//! a small fragment size, in both roles, with ping across the tunnel afterwards; strongSwan
//! asked for a cookie by our responder, and our initiator asked for one by strongSwan.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::time::{Duration, Instant};
use tests::ike_peer::Peer;
use tests::interop::{check_strongswan, lab, ping_across, route_into_tun};
use tests::netns::Netns;
use tests::strongswan::{Charon, CharonOptions, PeerConfig};

const IKE: &str = "aes256gcm16-prfsha256-ecp256";
const ESP: &str = "aes256gcm16";

/// An IP datagram size that makes every PSK IKE_AUTH message (about 250–350 octets) go out in
/// fragments.
const SMALL: u32 = 200;

/// Brings a tunnel up with attestgate in `role`, strongSwan with `sw` and `ike-peer` with
/// `extra` arguments; checks strongSwan's view and pings across. Returns strongSwan's log.
fn tunnel(role: &str, sw: &CharonOptions, extra: &[&str]) -> String {
    let (a, b, ours) = lab(IKE, ESP);
    let tun = tests::netns::unique("t");
    let mut args = vec!["--tun", tun.as_str()];
    args.extend_from_slice(extra);
    let (peer, charon) = if role == "initiator" {
        let charon = Charon::start_with(&b, &ours.mirrored(), sw);
        (Peer::start_with(&a, role, &ours, &args), charon)
    } else {
        let peer = Peer::start_with(&a, role, &ours, &args);
        let charon = Charon::start_with(&b, &ours.mirrored(), sw);
        let out = charon.initiate();
        assert!(
            out.contains("initiate completed successfully"),
            "{out}\n{}",
            charon.log()
        );
        (peer, charon)
    };
    route_into_tun(&a, &tun);
    let child = peer.wait_for("child_established", Duration::from_secs(20));
    check_strongswan(&charon, &child);
    ping_across(&a, 3);
    charon.log()
}

/// strongSwan cut its IKE_AUTH message into fragments and sent them.
fn strongswan_fragmented(log: &str) -> bool {
    log.contains("splitting IKE message")
}

/// strongSwan put fragments of ours back together.
fn strongswan_reassembled(log: &str) -> bool {
    log.contains("reassembled fragmented IKE message")
}

/// A tunnel with attestgate in `role` where one side, and only that one, sends its IKE_AUTH
/// messages in fragments of at most [`SMALL`] octets: strongSwan (`charon.fragment_size`) when
/// `strongswan_cuts`, else attestgate (`--fragment-size`).
fn fragmented_tunnel(role: &str, strongswan_cuts: bool) {
    let size = SMALL.to_string();
    let (options, extra) = if strongswan_cuts {
        let options = CharonOptions {
            fragment_size: Some(SMALL),
            fragmentation: Some("yes"),
            ..CharonOptions::default()
        };
        (options, vec![])
    } else {
        let mut extra = vec!["--fragment-size", size.as_str()];
        if role == "initiator" {
            // through `ike::tunnel::supervise`, as the daemon runs a tunnel
            extra.extend(["--restart", "yes"]);
        }
        (CharonOptions::default(), extra)
    };
    let log = tunnel(role, &options, &extra);
    assert_eq!(strongswan_fragmented(&log), strongswan_cuts, "{log}");
    assert_eq!(strongswan_reassembled(&log), !strongswan_cuts, "{log}");
}

macro_rules! lab_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            if tests::require_root(stringify!($name)) {
                $body;
            }
        }
    };
}

lab_test!(
    strongswan_fragments_to_our_initiator,
    fragmented_tunnel("initiator", true)
);
lab_test!(
    strongswan_fragments_to_our_responder,
    fragmented_tunnel("responder", true)
);
lab_test!(
    strongswan_takes_our_fragments_as_responder,
    fragmented_tunnel("initiator", false)
);
lab_test!(
    strongswan_takes_our_fragments_as_initiator,
    fragmented_tunnel("responder", false)
);

/// strongSwan's log shows a COOKIE answer to an IKE_SA_INIT and a request sent again with the
/// cookie first (RFC 7296 §2.6).
fn cookie_returned(log: &str) -> bool {
    log.contains("IKE_SA_INIT response 0 [ N(COOKIE) ]")
        && log.contains("IKE_SA_INIT request 0 [ N(COOKIE) SA")
}

// Our responder asks every initiator for a cookie (threshold 0): strongSwan returns it in a
// second IKE_SA_INIT and the tunnel comes up.
lab_test!(strongswan_returns_our_cookie, {
    let cookie = ["--cookie-threshold", "0"];
    let log = tunnel("responder", &CharonOptions::default(), &cookie);
    assert!(cookie_returned(&log), "{log}");
});

/// strongSwan with a cookie threshold of 1 and one half-open IKE SA (a decoy initiator whose
/// answers a firewall drops) asks our initiator for a cookie; we retry with it.
#[test]
fn our_initiator_returns_strongswans_cookie() {
    if !tests::require_root("our_initiator_returns_strongswans_cookie") {
        return;
    }
    let (a, b, ours) = lab(IKE, ESP);
    // strongSwan 5.9 treats a threshold of 0 as "never"; 1 needs one half-open SA
    let options = CharonOptions {
        cookie_threshold: Some(1),
        ..CharonOptions::default()
    };
    let mut theirs = ours.mirrored();
    theirs.remote_addr = "%any".into();
    let charon = Charon::start_with(&b, &theirs, &options);
    let decoy = half_open_decoy(&a, &ours, &charon);
    let peer = Peer::start(&a, "initiator", &ours);
    let child = peer.wait_for("child_established", Duration::from_secs(20));
    check_strongswan(&charon, &child);
    // it asked for a cookie, and a request came back with it (the decoy never sees answers)
    let log = charon.log();
    assert!(cookie_returned(&log), "{log}");
    drop(decoy);
}

/// An attestgate initiator at 203.0.113.11 whose IKE_SA_INIT reaches strongSwan but whose
/// answers are dropped, so strongSwan keeps one half-open IKE SA.
fn half_open_decoy(a: &Netns, ours: &PeerConfig, charon: &Charon) -> Peer {
    a.ip(&["addr", "add", "203.0.113.11/24", "dev", &veth_of(a)]);
    for rule in [
        "add table inet decoy",
        "add chain inet decoy input { type filter hook input priority 0 ; }",
        "add rule inet decoy input ip daddr 203.0.113.11 udp sport { 500, 4500 } drop",
    ] {
        let mut args = vec!["nft"];
        args.extend(rule.split(' '));
        a.ok(&args);
    }
    let mut decoy_cfg = ours.clone();
    decoy_cfg.local_addr = "203.0.113.11".into();
    let decoy = Peer::start(a, "initiator", &decoy_cfg);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !charon.list_sas().contains("state=CONNECTING") {
        assert!(
            Instant::now() < deadline,
            "no half-open SA: {}",
            charon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    decoy
}

/// The name of the veth device in `ns` (the one holding 203.0.113.10).
fn veth_of(ns: &Netns) -> String {
    let out = ns.ok(&["ip", "-o", "-4", "addr", "show", "to", "203.0.113.10"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let dev = text.split_whitespace().nth(1).unwrap();
    dev.split('@').next().unwrap().to_string()
}
