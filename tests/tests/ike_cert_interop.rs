//! attestgate's IKEv2 certificate authentication against strongSwan 5.9 (kernel-libipsec) in
//! namespaces: a lab CA and ECDSA (and RSA) certificates made at start-up, `auth = pubkey` on
//! strongSwan's side, attestgate as initiator and as responder. strongSwan must report an
//! RFC 7427 signature (ECDSA_WITH_SHA…_DER, RSA_EMSA_PKCS1_SHA2_256) for our AUTH, and ping and an iperf3 stream must
//! cross the tunnel.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::time::Duration;
use tests::ike_peer::Peer;
use tests::interop::{esp_traffic, lab_with};
use tests::pki::{LabCert, LabPki, P256, P384};
use tests::strongswan::{Auth, Charon};

const GW: &str = "gw.attestgate.lab";
const VPN: &str = "vpn.corp.lab";

/// Certificates for both ends from the lab CA; strongSwan signs with its default scheme.
fn certs(pki: &LabPki, ours: LabCert, theirs: LabCert) -> Auth {
    Auth::Cert {
        ours,
        theirs,
        ca: pki.ca.clone(),
        strongswan_signs: None,
    }
}

/// A tunnel authenticated with `auth`, traffic across it, and strongSwan's word that it
/// checked our AUTH as the RFC 7427 `scheme` (method 14, the key's own hash).
fn certificate_tunnel(auth: Auth, scheme: &str, role: &str) -> Charon {
    let (a, b, ours) = lab_with("aes256gcm16-prfsha384-ecp384", "aes256gcm16", auth);
    let sw = esp_traffic(&a, &b, &ours, role);
    let log = sw.log();
    let ours_checked = format!("authentication of '{GW}' with {scheme} successful");
    assert!(log.contains(&ours_checked), "{ours_checked} not in:\n{log}");
    // our CERTREQ's SHA-1 of the CA's SubjectPublicKeyInfo named the CA strongSwan has
    let certreq = "received cert request for \"O=attestgate lab, CN=attestgate lab";
    assert!(log.contains(certreq), "{certreq} not in:\n{log}");
    sw
}

#[test]
fn ecdsa_p256_certificates_attestgate_initiates() {
    if tests::require_root("ecdsa_p256_certificates_attestgate_initiates") {
        let pki = LabPki::new("attestgate lab CA", &P256);
        let auth = certs(&pki, pki.issue(GW), pki.issue(VPN));
        certificate_tunnel(auth, "ECDSA_WITH_SHA256_DER", "initiator");
    }
}

#[test]
fn ecdsa_p384_certificates_attestgate_responds() {
    if tests::require_root("ecdsa_p384_certificates_attestgate_responds") {
        let pki = LabPki::new("attestgate lab CA", &P384);
        let auth = certs(&pki, pki.issue(GW), pki.issue(VPN));
        certificate_tunnel(auth, "ECDSA_WITH_SHA384_DER", "responder");
    }
}

/// RSA on both ends: PKCS#1 v1.5 with SHA-256 from us; strongSwan signs with RSASSA-PSS
/// (`ike:rsa/pss-sha256`), which we verify.
#[test]
fn rsa_certificates_with_pss_from_strongswan() {
    if tests::require_root("rsa_certificates_with_pss_from_strongswan") {
        let pki = LabPki::new("attestgate lab CA", &P256);
        let mut auth = certs(&pki, pki.issue_rsa(GW), pki.issue_rsa(VPN));
        if let Auth::Cert {
            strongswan_signs, ..
        } = &mut auth
        {
            *strongswan_signs = Some("ike:rsa/pss-sha256".into());
        }
        let sw = certificate_tunnel(auth, "RSA_EMSA_PKCS1_SHA2_256", "initiator");
        let theirs = format!("authentication of '{VPN}' (myself) with RSA_EMSA_PSS");
        assert!(sw.log().contains(&theirs), "{theirs} not in:\n{}", sw.log());
    }
}

/// Identities of type DN (ID_DER_ASN1_DN), strongSwan's default with certificates: each end
/// names itself by its certificate's subject; strongSwan initiates.
#[test]
fn distinguished_name_identities() {
    if !tests::require_root("distinguished_name_identities") {
        return;
    }
    let pki = LabPki::new("attestgate lab CA", &P256);
    let auth = certs(&pki, pki.issue(GW), pki.issue(VPN));
    let (a, b, mut ours) = lab_with("aes128gcm16-prfsha256-ecp256", "aes128gcm16", auth);
    ours.local_id = format!("O=attestgate lab, CN={GW}");
    ours.remote_id = format!("O=attestgate lab, CN={VPN}");
    let sw = esp_traffic(&a, &b, &ours, "responder");
    let log = sw.log();
    let checked = format!(
        "authentication of 'O=attestgate lab, CN={GW}' with ECDSA_WITH_SHA256_DER successful"
    );
    assert!(log.contains(&checked), "{checked} not in:\n{log}");
}

/// Our certificate comes from an intermediate CA that strongSwan does not know: we send it
/// along (a second CERT payload) and strongSwan builds the chain to the root it trusts.
#[test]
fn our_certificate_from_an_intermediate_ca() {
    if !tests::require_root("our_certificate_from_an_intermediate_ca") {
        return;
    }
    let root = LabPki::new("attestgate lab root CA", &P384);
    let issuing = root.intermediate("attestgate lab issuing CA");
    let auth = certs(&root, issuing.issue(GW), root.issue(VPN));
    let sw = certificate_tunnel(auth, "ECDSA_WITH_SHA384_DER", "initiator");
    let log = sw.log();
    assert!(
        log.contains("received issuer cert \"O=attestgate lab, CN=attestgate lab issuing CA\""),
        "{log}"
    );
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
        certs(&pki, pki.issue(GW), rogue.issue(VPN)),
    );
    // strongSwan itself trusts our CA (the same `ca`), so only attestgate's check can fail
    let sw = Charon::start(&b, &ours.mirrored());
    let peer = Peer::start(&a, "initiator", &ours);
    let closed = peer.wait_for("closed", Duration::from_secs(20));
    let reason = closed["reason"].as_str().unwrap();
    assert!(
        reason.contains("CN=rogue CA") && reason.contains("not a trusted CA"),
        "{closed}"
    );
    // our AUTHENTICATION_FAILED notify (RFC 7296 §2.21.2) makes strongSwan drop its IKE SA
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sw.list_sas().contains("state=ESTABLISHED") {
        assert!(
            std::time::Instant::now() < deadline,
            "strongSwan kept the IKE SA: {}\n{}",
            sw.list_sas(),
            sw.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sw.log().contains("N(AUTH_FAILED)"), "{}", sw.log());
}
