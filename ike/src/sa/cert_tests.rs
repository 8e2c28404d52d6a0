//! Certificate authentication between our own initiator and responder (RFC 7427 signatures,
//! CERT/CERTREQ, chain and identity checks), on the pair harness of `tests.rs`.

use super::*;
use crate::cert::tests::{auth, Ca, Spec, P256, P384};
use crate::cert::CertAuth;
use crate::wire::CertEncoding;

const IKE: &str = "aes256gcm16-prfsha384-ecp384";
const ESP: &str = "aes256gcm16";

/// The harness's configuration (initiator gw.attestgate.lab, responder vpn.corp.lab) with
/// certificate authentication and a PSK that would not match, so only the certificates count.
fn with_cert(initiator: bool, cert: CertAuth, local_id: Option<&str>) -> Arc<SaConfig> {
    let mut c = (*config(IKE, ESP, if initiator { "i" } else { "r" }, initiator)).clone();
    c.cert = Some(Arc::new(cert));
    if let Some(id) = local_id {
        c.local_id = Identity::parse(id).unwrap();
    }
    Arc::new(c)
}

const GW: &[&str] = &["gw.attestgate.lab"];
const VPN: &[&str] = &["vpn.corp.lab"];

fn both(
    ca_i: &Ca,
    alg_i: &'static rcgen::SignatureAlgorithm,
    ca_r: &Ca,
    alg_r: &'static rcgen::SignatureAlgorithm,
) -> Pair {
    Pair::new(
        with_cert(
            true,
            auth(&ca_i.issue(&Spec::ee(alg_i, GW)), &[], &[ca_r]),
            None,
        ),
        with_cert(
            false,
            auth(&ca_r.issue(&Spec::ee(alg_r, VPN)), &[], &[ca_i]),
            None,
        ),
    )
}

fn assert_up(p: &Pair) {
    assert!(p.i.is_established(), "initiator: {:?}", p.events_i);
    let r = p.r.as_ref().unwrap();
    assert!(r.is_established(), "responder: {:?}", p.events_r);
    let ci = Pair::child(&p.events_i).unwrap();
    let cr = Pair::child(&p.events_r).unwrap();
    assert_eq!((ci.spi_in, ci.spi_out), (cr.spi_out, cr.spi_in));
}

#[test]
fn p256_and_p384_certificates_establish() {
    for (alg_i, alg_r) in [(&P256, &P256), (&P384, &P384), (&P256, &P384)] {
        let ca_i = Ca::new(alg_i, "Lab CA one");
        let ca_r = Ca::new(alg_r, "Lab CA two");
        let mut p = both(&ca_i, alg_i, &ca_r, alg_r);
        // the IKE_SA_INIT request announces SHA2-256/384/512 (RFC 7427 §4)
        let init = p.i.transmits.front().unwrap().data.clone();
        let msg = Message::parse(&init).unwrap();
        let hashes = find_notify(&msg.payloads, NotifyType::SIGNATURE_HASH_ALGORITHMS)
            .and_then(|n| n.signature_hashes());
        assert_eq!(hashes, Some(vec![2, 3, 4]));
        p.run();
        assert_up(&p);
    }
}

#[test]
fn the_responder_sends_certreq_naming_the_trusted_ca() {
    let ca = Ca::new(&P256, "Lab CA");
    let mut p = both(&ca, &P256, &ca, &P256);
    let request = p.i.poll_transmit().unwrap();
    let r = IkeSa::accept(
        p.r_config.clone(),
        &request.data,
        R.parse().unwrap(),
        I.parse().unwrap(),
        p.now,
    );
    let answer = Message::parse(&r.transmits[0].data).unwrap();
    let certreq = answer.payloads.iter().find_map(|p| match p {
        Payload::CertReq(c) => Some(c.clone()),
        _ => None,
    });
    let certreq = certreq.expect("CERTREQ in the IKE_SA_INIT response");
    assert_eq!(certreq.encoding, CertEncoding::X509_SIGNATURE);
    let hash = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        x509_parser::parse_x509_certificate(ca.issuer.der())
            .unwrap()
            .1
            .public_key()
            .raw,
    );
    assert_eq!(certreq.data, hash.as_ref());
}

#[test]
fn a_certificate_from_another_ca_is_refused_with_authentication_failed() {
    let ca = Ca::new(&P256, "Lab CA");
    let rogue = Ca::new(&P256, "Rogue CA");
    // the initiator's certificate comes from a CA the responder does not trust
    let mut p = Pair::new(
        with_cert(
            true,
            auth(&rogue.issue(&Spec::ee(&P256, GW)), &[], &[&ca]),
            None,
        ),
        with_cert(
            false,
            auth(&ca.issue(&Spec::ee(&P256, VPN)), &[], &[&ca]),
            None,
        ),
    );
    p.run();
    let r = Pair::closed(&p.events_r).unwrap();
    assert!(
        r.contains("issued by CN=Rogue CA") && r.contains("not a trusted CA"),
        "{r}"
    );
    let i = Pair::closed(&p.events_i).unwrap();
    assert!(i.contains("refused our authentication"), "{i}");
    assert!(!p.i.was_established());
    // and the other way round: the initiator refuses the responder
    let mut p = Pair::new(
        with_cert(
            true,
            auth(&ca.issue(&Spec::ee(&P256, GW)), &[], &[&ca]),
            None,
        ),
        with_cert(
            false,
            auth(&rogue.issue(&Spec::ee(&P256, VPN)), &[], &[&ca]),
            None,
        ),
    );
    p.run();
    let i = Pair::closed(&p.events_i).unwrap();
    assert!(i.contains("not a trusted CA"), "{i}");
    assert!(!p.i.was_established());
    // told with AUTHENTICATION_FAILED in an INFORMATIONAL, the responder gives up too
    let r = Pair::closed(&p.events_r).unwrap();
    assert!(r.contains("peer refused our authentication"), "{r}");
}

#[test]
fn an_expired_certificate_is_refused() {
    let ca = Ca::new(&P384, "Lab CA");
    let mut old = Spec::ee(&P384, GW);
    old.expired = true;
    let mut p = Pair::new(
        with_cert(true, auth(&ca.issue(&old), &[], &[&ca]), None),
        with_cert(
            false,
            auth(&ca.issue(&Spec::ee(&P384, VPN)), &[], &[&ca]),
            None,
        ),
    );
    p.run();
    let r = Pair::closed(&p.events_r).unwrap();
    assert!(
        r.contains("CN=gw.attestgate.lab") && r.contains("expired"),
        "{r}"
    );
    assert!(p.i.is_closed());
}

#[test]
fn an_identity_the_certificate_does_not_name_is_refused() {
    let ca = Ca::new(&P256, "Lab CA");
    // the initiator claims an identity its certificate does not carry; the responder expects it
    let i = with_cert(
        true,
        auth(&ca.issue(&Spec::ee(&P256, GW)), &[], &[&ca]),
        Some("other.attestgate.lab"),
    );
    let mut r = (*with_cert(
        false,
        auth(&ca.issue(&Spec::ee(&P256, VPN)), &[], &[&ca]),
        None,
    ))
    .clone();
    r.remote_id = Identity::parse("other.attestgate.lab").unwrap();
    let mut p = Pair::new(i, Arc::new(r));
    p.run();
    let r = Pair::closed(&p.events_r).unwrap();
    assert!(
        r.contains("other.attestgate.lab is neither the subject"),
        "{r}"
    );
    assert!(Pair::closed(&p.events_i)
        .unwrap()
        .contains("refused our authentication"));
}

#[test]
fn dn_identities_and_intermediate_chains_establish() {
    let root = Ca::new(&P384, "Lab Root");
    let mut spec = Spec::ee(&P256, &["Lab Intermediate"]);
    spec.ca = true;
    spec.sans = &[];
    let (inter, inter_pem) = root.intermediate(&spec);
    let i = auth(&inter.issue(&Spec::ee(&P256, GW)), &[&inter_pem], &[&root]);
    let r = auth(&root.issue(&Spec::ee(&P384, VPN)), &[], &[&root]);
    let mut ic = (*with_cert(true, i, Some("CN=gw.attestgate.lab, O=attestgate lab"))).clone();
    ic.remote_id = Identity::parse("CN=vpn.corp.lab, O=attestgate lab").unwrap();
    let mut rc = (*with_cert(false, r, Some("CN=vpn.corp.lab, O=attestgate lab"))).clone();
    rc.remote_id = Identity::parse("CN=gw.attestgate.lab, O=attestgate lab").unwrap();
    let mut p = Pair::new(Arc::new(ic), Arc::new(rc));
    p.run();
    assert_up(&p);
}

#[test]
fn rsa_and_ecdsa_certificates_establish_together() {
    let ca = Ca::new(&P384, "Lab CA");
    let mut p = Pair::new(
        with_cert(true, auth(&ca.issue_rsa(GW, false), &[], &[&ca]), None),
        with_cert(
            false,
            auth(&ca.issue(&Spec::ee(&P256, VPN)), &[], &[&ca]),
            None,
        ),
    );
    p.run();
    assert_up(&p);
}
