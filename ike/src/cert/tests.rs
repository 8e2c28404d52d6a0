//! A lab PKI made at test time (rcgen), and the certificate checks one by one; the SA pair
//! tests in `sa/cert_tests.rs` use the same PKI.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};

pub(crate) use rcgen::{PKCS_ECDSA_P256_SHA256 as P256, PKCS_ECDSA_P384_SHA384 as P384};

/// A CA of the lab PKI.
pub(crate) struct Ca {
    pub(crate) issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub(crate) struct Issued {
    pub(crate) cert: String,
    pub(crate) key: String,
}

/// How a certificate is made.
pub(crate) struct Spec<'a> {
    /// An unknown extension marked critical (RFC 5280 §4.2).
    pub(crate) unknown_critical: bool,
    pub(crate) alg: &'static SignatureAlgorithm,
    pub(crate) cn: &'a str,
    pub(crate) sans: &'a [&'a str],
    pub(crate) expired: bool,
    pub(crate) ca: bool,
}

impl<'a> Spec<'a> {
    pub(crate) fn ee(alg: &'static SignatureAlgorithm, name: &'a [&'a str]) -> Spec<'a> {
        Spec {
            unknown_critical: false,
            alg,
            cn: name[0],
            sans: name,
            expired: false,
            ca: false,
        }
    }
}

fn params(spec: &Spec) -> CertificateParams {
    let sans: Vec<String> = spec.sans.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(sans).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.cn);
    dn.push(DnType::OrganizationName, "attestgate lab");
    p.distinguished_name = dn;
    let (from, to) = if spec.expired {
        (2001, 2002)
    } else {
        (2020, 2090)
    };
    p.not_before = rcgen::date_time_ymd(from, 1, 1);
    p.not_after = rcgen::date_time_ymd(to, 1, 1);
    if spec.unknown_critical {
        let mut ext =
            rcgen::CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![5, 0]);
        ext.set_criticality(true);
        p.custom_extensions.push(ext);
    }
    if spec.ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
    } else {
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    p
}

impl Ca {
    pub(crate) fn new(alg: &'static SignatureAlgorithm, name: &str) -> Ca {
        let spec = Spec {
            unknown_critical: false,
            alg,
            cn: name,
            sans: &[],
            expired: false,
            ca: true,
        };
        let key = KeyPair::generate_for(alg).unwrap();
        Ca {
            issuer: CertifiedIssuer::self_signed(params(&spec), key).unwrap(),
        }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    pub(crate) fn issue(&self, spec: &Spec) -> Issued {
        let key = KeyPair::generate_for(spec.alg).unwrap();
        self.issue_for(spec, &key, key.serialize_pem())
    }

    /// A certificate for `key`, whose PEM is `key_pem`.
    pub(crate) fn issue_for(&self, spec: &Spec, key: &KeyPair, key_pem: String) -> Issued {
        let cert = params(spec).signed_by(key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key_pem,
        }
    }

    /// An RSA-2048 certificate (ring makes no RSA keys: `openssl genpkey` does); with
    /// `pkcs1` its key is written as `RSA PRIVATE KEY`.
    pub(crate) fn issue_rsa(&self, name: &[&str], pkcs1: bool) -> Issued {
        let run = |args: &[&str], input: &[u8]| -> Vec<u8> {
            use std::io::Write;
            let mut child = std::process::Command::new("openssl")
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("openssl (the lab's certificate tool) must be installed");
            child.stdin.take().unwrap().write_all(input).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "openssl {args:?}");
            out.stdout
        };
        let pkcs8 = run(
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ],
            b"",
        );
        let pkcs8 = String::from_utf8(pkcs8).unwrap();
        let key = KeyPair::from_pem_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256).unwrap();
        let pem = if pkcs1 {
            String::from_utf8(run(&["rsa", "-traditional"], pkcs8.as_bytes())).unwrap()
        } else {
            pkcs8
        };
        self.issue_for(&Spec::ee(&rcgen::PKCS_RSA_SHA256, name), &key, pem)
    }

    /// An intermediate CA signed by this one (`ca: false` makes a broken one).
    pub(crate) fn intermediate(&self, spec: &Spec) -> (Ca, String) {
        let key = KeyPair::generate_for(spec.alg).unwrap();
        let issuer = CertifiedIssuer::signed_by(params(spec), key, &self.issuer).unwrap();
        let pem = issuer.pem();
        (Ca { issuer }, pem)
    }
}

pub(crate) fn auth(issued: &Issued, chain_extra: &[&str], trusted: &[&Ca]) -> CertAuth {
    let cert = [issued.cert.as_str()]
        .iter()
        .chain(chain_extra)
        .copied()
        .collect::<String>();
    let cas: Vec<String> = trusted.iter().map(|c| c.pem()).collect();
    let cas: Vec<&[u8]> = cas.iter().map(|c| c.as_bytes()).collect();
    CertAuth::from_pem(cert.as_bytes(), issued.key.as_bytes(), &cas).unwrap()
}

fn peer_check(ours: &CertAuth, theirs: &CertAuth, id: &str, hashes: &[u16]) -> Result<(), String> {
    let octets = b"RealMessage | Nonce | prf(SK_p, IDx')";
    let (method, sig) = theirs.sign(octets, hashes).unwrap();
    let certs: Vec<&[u8]> = theirs.chain().iter().map(Vec::as_slice).collect();
    let id = IdPayload::from_identity(&Identity::parse(id).unwrap()).unwrap();
    ours.verify_peer(&certs, &id, method, &sig, octets)
}

#[test]
fn ecdsa_signatures_verify_with_rfc7427_and_rfc4754() {
    for alg in [&P256, &P384] {
        let ca = Ca::new(alg, "Lab CA");
        let a = auth(&ca.issue(&Spec::ee(alg, &["a.lab"])), &[], &[&ca]);
        let b = auth(&ca.issue(&Spec::ee(alg, &["b.lab"])), &[], &[&ca]);
        let p256 = std::ptr::eq(alg, &P256);
        // RFC 7427 when the peer announced SHA-2, RFC 4754 (fixed r|s) otherwise
        let (m, sig) = b.sign(b"x", &SUPPORTED_HASHES).unwrap();
        assert_eq!(m, AuthMethod::DIGITAL_SIGNATURE);
        assert_eq!(usize::from(sig[0]), 12); // ecdsa-with-SHA256/384 AlgorithmIdentifier
        let (m, sig) = b.sign(b"x", &[]).unwrap();
        let (want, len) = if p256 {
            (AuthMethod::ECDSA_SHA256_P256, 64)
        } else {
            (AuthMethod::ECDSA_SHA384_P384, 96)
        };
        assert_eq!((m, sig.len()), (want, len));
        peer_check(&a, &b, "b.lab", &SUPPORTED_HASHES).unwrap();
        peer_check(&a, &b, "b.lab", &[]).unwrap();
        peer_check(&b, &a, "a.lab", &[HASH_SHA2_256, HASH_SHA2_384]).unwrap();
        // a signature over other octets fails
        let (m, sig) = b.sign(b"one", &SUPPORTED_HASHES).unwrap();
        let certs: Vec<&[u8]> = b.chain().iter().map(Vec::as_slice).collect();
        let id = IdPayload::from_identity(&Identity::parse("b.lab").unwrap()).unwrap();
        let err = a.verify_peer(&certs, &id, m, &sig, b"two").unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
    }
}

#[test]
fn chain_failures_are_named() {
    let ca = Ca::new(&P256, "Lab CA");
    let other = Ca::new(&P256, "Other CA");
    let ours = auth(&ca.issue(&Spec::ee(&P256, &["a.lab"])), &[], &[&ca]);
    let stranger = auth(&other.issue(&Spec::ee(&P256, &["b.lab"])), &[], &[&other]);
    let e = peer_check(&ours, &stranger, "b.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(e.contains("not a trusted CA"), "{e}");
    // same name, different key: the signature does not verify
    let impostor = Ca::new(&P256, "Lab CA");
    let forged = auth(
        &impostor.issue(&Spec::ee(&P256, &["b.lab"])),
        &[],
        &[&impostor],
    );
    let e = peer_check(&ours, &forged, "b.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(e.contains("does not verify with its issuer"), "{e}");
    let mut spec = Spec::ee(&P256, &["b.lab"]);
    spec.unknown_critical = true;
    let odd = auth(&ca.issue(&spec), &[], &[&ca]);
    let e = peer_check(&ours, &odd, "b.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(
        e.contains("critical extension we do not know (1.3.6.1.4.1.99999.1)"),
        "{e}"
    );
    let mut spec = Spec::ee(&P256, &["b.lab"]);
    spec.expired = true;
    let old = auth(&ca.issue(&spec), &[], &[&ca]);
    let e = peer_check(&ours, &old, "b.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(e.contains("expired"), "{e}");
    let fine = auth(
        &ca.issue(&Spec::ee(&P256, &["b.lab", "198.51.100.7"])),
        &[],
        &[&ca],
    );
    peer_check(&ours, &fine, "198.51.100.7", &SUPPORTED_HASHES).unwrap();
    let e = peer_check(&ours, &fine, "c.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(e.contains("neither the subject"), "{e}");
    // the subject DN as ID_DER_ASN1_DN (strongSwan's text form, rcgen's DER)
    peer_check(
        &ours,
        &fine,
        "CN=b.lab, O=attestgate lab",
        &SUPPORTED_HASHES,
    )
    .unwrap();
    let e = peer_check(
        &ours,
        &fine,
        "CN=c.lab, O=attestgate lab",
        &SUPPORTED_HASHES,
    )
    .unwrap_err();
    assert!(e.contains("neither the subject"), "{e}");
    // a clock before the validity window
    let mut early = auth(&ca.issue(&Spec::ee(&P256, &["a.lab"])), &[], &[&ca]);
    early.clock = || SystemTime::UNIX_EPOCH;
    let e = peer_check(&early, &fine, "b.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(e.contains("not valid before"), "{e}");
}

#[test]
fn intermediates_must_be_cas_and_be_sent() {
    let root = Ca::new(&P384, "Lab Root");
    let mut spec = Spec::ee(&P256, &["Lab Intermediate"]);
    spec.ca = true;
    spec.sans = &[];
    let (inter, inter_pem) = root.intermediate(&spec);
    let ours = auth(&root.issue(&Spec::ee(&P256, &["a.lab"])), &[], &[&root]);
    let leaf = inter.issue(&Spec::ee(&P256, &["b.lab"]));
    let with_chain = auth(&leaf, &[&inter_pem], &[&root]);
    assert_eq!(with_chain.chain().len(), 2);
    peer_check(&ours, &with_chain, "b.lab", &SUPPORTED_HASHES).unwrap();
    let without = auth(&leaf, &[], &[&root]);
    let e = peer_check(&ours, &without, "b.lab", &SUPPORTED_HASHES).unwrap_err();
    assert!(e.contains("not a trusted CA"), "{e}");
    spec.ca = false;
    let (fake, fake_pem) = root.intermediate(&spec);
    let leaf = fake.issue(&Spec::ee(&P256, &["b.lab"]));
    let e = peer_check(
        &ours,
        &auth(&leaf, &[&fake_pem], &[&root]),
        "b.lab",
        &SUPPORTED_HASHES,
    )
    .unwrap_err();
    assert!(e.contains("is not a CA"), "{e}");
}

fn base64(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = c
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= c.len() {
                char::from(A[(n >> (18 - 6 * i)) as usize & 63])
            } else {
                '='
            });
        }
    }
    out
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    [&[tag, content.len() as u8][..], content].concat()
}

#[test]
fn keys_load_from_pkcs8_and_sec1_and_must_match_the_certificate() {
    let ca = Ca::new(&P256, "Lab CA");
    let issued = ca.issue(&Spec::ee(&P256, &["a.lab"]));
    let pkcs8 = auth(&issued, &[], &[&ca]);
    assert_eq!(pkcs8.key_kind(), KeyKind::EcdsaP256);
    // the same key as SEC1 `EC PRIVATE KEY`, with and without its public point
    let key = PrivateKeyDer::from_pem_slice(issued.key.as_bytes()).unwrap();
    let PrivateKeyDer::Pkcs8(k) = &key else {
        panic!()
    };
    let (_, info, _) = tlv(k.secret_pkcs8_der()).unwrap();
    let (_, _, rest) = tlv(info).unwrap();
    let (_, _, rest) = tlv(rest).unwrap();
    let (_, sec1_no_params, _) = tlv(rest).unwrap();
    let (_, fields, _) = tlv(sec1_no_params).unwrap();
    let (_, _, rest) = tlv(fields).unwrap();
    let (_, scalar, rest) = tlv(rest).unwrap();
    let (_, public, _) = tlv(rest).unwrap();
    let curve = der(0xa0, &der(0x06, OID_P256));
    for with_public in [true, false] {
        let mut body = [der(0x02, &[1]), der(0x04, scalar), curve.clone()].concat();
        if with_public {
            body.extend(der(0xa1, public));
        }
        let sec1 = der(0x30, &body);
        let pem = format!(
            "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
            base64(&sec1)
        );
        let loaded = CertAuth::from_pem(
            issued.cert.as_bytes(),
            pem.as_bytes(),
            &[ca.pem().as_bytes()],
        )
        .unwrap();
        peer_check(&pkcs8, &loaded, "a.lab", &SUPPORTED_HASHES).unwrap();
    }
    let other = ca.issue(&Spec::ee(&P256, &["b.lab"]));
    let e = CertAuth::from_pem(
        issued.cert.as_bytes(),
        other.key.as_bytes(),
        &[ca.pem().as_bytes()],
    )
    .unwrap_err();
    assert!(e.to_string().contains("does not belong"), "{e}");
    assert!(CertAuth::from_pem(b"junk", issued.key.as_bytes(), &[ca.pem().as_bytes()]).is_err());
    assert!(CertAuth::from_pem(issued.cert.as_bytes(), b"junk", &[ca.pem().as_bytes()]).is_err());
    assert!(format!("{pkcs8:?}").contains("redacted"));
    pkcs8
        .check_identity(&Identity::parse("a.lab").unwrap())
        .unwrap();
    assert!(pkcs8
        .check_identity(&Identity::parse("b.lab").unwrap())
        .is_err());
    // CERTREQ: one SHA-1 per trusted CA
    assert_eq!(pkcs8.certreq().len(), 20);
}

#[test]
fn garbage_auth_and_certificates_are_refused_without_panicking() {
    let ca = Ca::new(&P256, "Lab CA");
    let a = auth(&ca.issue(&Spec::ee(&P256, &["a.lab"])), &[], &[&ca]);
    let b = auth(&ca.issue(&Spec::ee(&P256, &["b.lab"])), &[], &[&ca]);
    let id = IdPayload::from_identity(&Identity::parse("b.lab").unwrap()).unwrap();
    let certs: Vec<&[u8]> = b.chain().iter().map(Vec::as_slice).collect();
    for (method, data) in [
        (AuthMethod::DIGITAL_SIGNATURE, vec![]),
        (AuthMethod::DIGITAL_SIGNATURE, vec![200, 1, 2]),
        (AuthMethod::DIGITAL_SIGNATURE, vec![2, 0x30, 0x05]),
        (
            AuthMethod::DIGITAL_SIGNATURE,
            vec![4, 0x30, 0x02, 0x06, 0x00, 1],
        ),
        (AuthMethod::ECDSA_SHA384_P384, vec![0; 96]),
        (AuthMethod::SHARED_KEY_MIC, vec![0; 32]),
        (AuthMethod::RSA_SIGNATURE, vec![0; 256]),
    ] {
        assert!(a.verify_peer(&certs, &id, method, &data, b"x").is_err());
    }
    assert!(a
        .verify_peer(&[], &id, AuthMethod::DIGITAL_SIGNATURE, &[1], b"x")
        .is_err());
    assert!(a
        .verify_peer(
            &[&[0x30, 0x03, 1]],
            &id,
            AuthMethod::DIGITAL_SIGNATURE,
            &[1],
            b"x"
        )
        .is_err());
}

#[test]
fn rsa_pkcs1_signatures_and_pss_verification() {
    let ca = Ca::new(&P256, "Lab CA");
    let a = auth(&ca.issue_rsa(&["a.lab"], false), &[], &[&ca]);
    let b = auth(&ca.issue_rsa(&["b.lab"], true), &[], &[&ca]);
    assert_eq!((a.key_kind(), b.key_kind()), (KeyKind::Rsa, KeyKind::Rsa));
    for (hashes, oid) in [
        (&SUPPORTED_HASHES[..], OID_RSA_SHA256),
        (&[HASH_SHA2_384][..], OID_RSA_SHA384),
        (&[HASH_SHA2_512][..], OID_RSA_SHA512),
    ] {
        let (m, sig) = b.sign(b"x", hashes).unwrap();
        assert_eq!(m, AuthMethod::DIGITAL_SIGNATURE);
        assert_eq!(&sig[5..5 + oid.len()], oid);
        peer_check(&a, &b, "b.lab", hashes).unwrap();
    }
    // without RFC 7427 there is no RSA signature we make (SHA-1 is not offered)
    assert!(matches!(b.sign(b"x", &[]), Err(CertError::Sign(_))));
    // RSASSA-PSS with SHA-256, AlgorithmIdentifier from RFC 7427 Appendix A.4.3
    let pss_id: &[u8] = &[
        0x30, 0x41, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, 0x30, 0x34,
        0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01,
        0x01, 0x08, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
        0x05, 0x00, 0xa2, 0x03, 0x02, 0x01, 0x20,
    ];
    let pair = b.key.rsa().unwrap();
    let mut sig = vec![0u8; pair.public().modulus_len()];
    let octets = b"signed octets";
    pair.sign(
        &signature::RSA_PSS_SHA256,
        &SystemRandom::new(),
        octets,
        &mut sig,
    )
    .unwrap();
    let auth_data = [&[pss_id.len() as u8][..], pss_id, &sig].concat();
    let certs: Vec<&[u8]> = b.chain().iter().map(Vec::as_slice).collect();
    let id = IdPayload::from_identity(&Identity::parse("b.lab").unwrap()).unwrap();
    a.verify_peer(
        &certs,
        &id,
        AuthMethod::DIGITAL_SIGNATURE,
        &auth_data,
        octets,
    )
    .unwrap();
    assert!(a
        .verify_peer(
            &certs,
            &id,
            AuthMethod::DIGITAL_SIGNATURE,
            &auth_data,
            b"other"
        )
        .is_err());
}
