//! attestgate's IKEv2 certificate authentication against strongSwan 5.9 (kernel-libipsec) in
//! namespaces: a lab CA and ECDSA certificates made at start-up, `auth = pubkey` on
//! strongSwan's side, attestgate as initiator and as responder. strongSwan must report an
//! RFC 7427 signature (ECDSA_WITH_SHA…_DER) for our AUTH, and ping and an iperf3 stream must
//! cross the tunnel.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::time::Duration;
use tests::ike_peer::Peer;
use tests::interop::{esp_traffic, lab_with};
use tests::pki::{LabPki, P256, P384};
use tests::strongswan::{Auth, Charon};

const GW: &str = "gw.attestgate.lab";
const VPN: &str = "vpn.corp.lab";

fn certificates(pki: &LabPki) -> Auth {
    Auth::Cert {
        ours: pki.issue(GW),
        theirs: pki.issue(VPN),
        ca: pki.ca.clone(),
    }
}

fn certificate_tunnel(alg: &'static rcgen::SignatureAlgorithm, hash: &str, role: &str) {
    let pki = LabPki::new("attestgate lab CA", alg);
    let (a, b, ours) = lab_with(
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16",
        certificates(&pki),
    );
    let sw = esp_traffic(&a, &b, &ours, role);
    // strongSwan checked our signature as RFC 7427 (method 14), with the key's own hash
    let log = sw.log();
    let ours_checked = format!("authentication of '{GW}' with ECDSA_WITH_{hash}_DER successful");
    assert!(log.contains(&ours_checked), "{ours_checked} not in:\n{log}");
}

#[test]
fn ecdsa_p256_certificates_attestgate_initiates() {
    if tests::require_root("ecdsa_p256_certificates_attestgate_initiates") {
        certificate_tunnel(&P256, "SHA256", "initiator");
    }
}

#[test]
fn ecdsa_p384_certificates_attestgate_responds() {
    if tests::require_root("ecdsa_p384_certificates_attestgate_responds") {
        certificate_tunnel(&P384, "SHA384", "responder");
    }
}

/// strongSwan's certificate comes from a CA attestgate does not trust: attestgate refuses
/// it and says why.
#[test]
fn a_strongswan_certificate_from_an_untrusted_ca_is_refused() {
    if !tests::require_root("a_strongswan_certificate_from_an_untrusted_ca_is_refused") {
        return;
    }
    let pki = LabPki::new("attestgate lab CA", &P256);
    let rogue = LabPki::new("rogue CA", &P256);
    let (a, b, ours) = lab_with(
        "aes256gcm16-prfsha256-ecp256",
        "aes256gcm16",
        Auth::Cert {
            ours: pki.issue(GW),
            theirs: rogue.issue(VPN),
            ca: pki.ca.clone(),
        },
    );
    // strongSwan itself trusts our CA (the same `ca`), so only attestgate's check can fail
    let _sw = Charon::start(&b, &ours.mirrored());
    let peer = Peer::start(&a, "initiator", &ours);
    let closed = peer.wait_for("closed", Duration::from_secs(20));
    let reason = closed["reason"].as_str().unwrap();
    assert!(
        reason.contains("CN=rogue CA") && reason.contains("not a trusted CA"),
        "{closed}"
    );
}
