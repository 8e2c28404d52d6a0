//! Test fixtures: a synthetic attestation CA in Apple's place (P-384 root → P-384 intermediate →
//! leaf with Apple's extensions encoded as Apple does, see `facts`) and a small CBOR encoder for
//! `attObj`s. For the attest tests, the ACME server's tests, and (cargo feature `testing`) the
//! appliance's end-to-end tests.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
    PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256,
};

use super::Verifier;

/// The fixed "now" of the tests: 2025-06-01T00:00:00Z.
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_748_736_000)
}

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Apple's arc, 1.2.840.113635.100.8, and a property under it.
pub fn apple_oid(tail: &[u64]) -> Vec<u64> {
    let mut oid = vec![1, 2, 840, 113_635, 100, 8];
    oid.extend_from_slice(tail);
    oid
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// The attested key of a synthetic leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKey {
    P256,
    P384,
    /// A 2048-bit RSA public key (not a real key pair: the verifier must refuse it anyway).
    Rsa,
}

/// What a synthetic leaf carries.
#[derive(Debug, Clone)]
pub struct LeafSpec {
    pub key: LeafKey,
    pub serial: Option<String>,
    pub udid: Option<String>,
    pub os_version: Option<String>,
    /// The freshness extension's value (extnValue octets); `None` leaves it out.
    pub freshness: Option<Vec<u8>>,
    /// Further extensions: (OID arcs, extnValue octets).
    pub extra: Vec<(Vec<u64>, Vec<u8>)>,
    /// Marks the `extra` extensions critical.
    pub extra_critical: bool,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Marks the leaf a CA (it must be refused).
    pub ca: bool,
}

impl LeafSpec {
    /// A good leaf for `token`: P-256 key, serial, UDID, OS version, freshness SHA-256(token),
    /// valid from an hour before [`now`] to a week after it.
    pub fn for_token(token: &str) -> LeafSpec {
        LeafSpec {
            key: LeafKey::P256,
            serial: Some("C02TEST0001".into()),
            udid: Some("00008103-001A2B3C4D5E6F70".into()),
            os_version: Some("17.4".into()),
            freshness: Some(sha256(token.as_bytes())),
            extra: Vec::new(),
            extra_critical: false,
            not_before: now() - HOUR,
            not_after: now() + 7 * DAY,
            ca: false,
        }
    }
}

/// A synthetic leaf and its private key (none for [`LeafKey::Rsa`]).
#[derive(Debug)]
pub struct Leaf {
    pub der: Vec<u8>,
    pub key: Option<KeyPair>,
}

/// Public key data of the RSA test leaf.
struct RsaPublic(Vec<u8>);

impl PublicKeyData for RsaPublic {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_RSA_SHA256
    }
}

/// RSAPublicKey (RFC 8017 §A.1.1) with a 2048-bit modulus and e = 65537.
fn rsa_public() -> RsaPublic {
    let mut der = vec![0x30, 0x82, 0x01, 0x0a, 0x02, 0x82, 0x01, 0x01, 0x00];
    der.extend((0..256u32).map(|i| (i as u8) | 0x81));
    der.extend_from_slice(&[0x02, 0x03, 0x01, 0x00, 0x01]);
    RsaPublic(der)
}

/// A test root and intermediate, named like Apple's with `tag` appended.
#[derive(Debug)]
pub struct TestCa {
    root_params: CertificateParams,
    root_key: KeyPair,
    pub root_der: Vec<u8>,
    intermediate_params: CertificateParams,
    intermediate_key: KeyPair,
    pub intermediate_der: Vec<u8>,
}

fn ca_params(cn: &str, path_len: Option<u8>, valid: (SystemTime, SystemTime)) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Apple Inc.");
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = valid.0.into();
    params.not_after = valid.1.into();
    params
}

impl TestCa {
    /// Root "Test Enterprise Attestation Root CA{tag}" → "Test Enterprise Attestation Sub CA
    /// 1{tag}", both P-384, valid for years around [`now`].
    pub fn new(tag: &str) -> TestCa {
        Self::build(tag, None, (now() - 365 * DAY, now() + 3650 * DAY))
    }

    /// Like [`TestCa::new`] with a root pathLenConstraint and the intermediate's validity.
    pub fn build(
        tag: &str,
        root_path_len: Option<u8>,
        intermediate_valid: (SystemTime, SystemTime),
    ) -> TestCa {
        let years = (now() - 365 * DAY, now() + 3650 * DAY);
        let root_params = ca_params(
            &format!("Test Enterprise Attestation Root CA{tag}"),
            root_path_len,
            years,
        );
        let root_key = key(&PKCS_ECDSA_P384_SHA384);
        let root_der = root_params
            .self_signed(&root_key)
            .map(|c| c.der().to_vec())
            .unwrap_or_else(|e| panic!("root: {e}"));
        let intermediate_params = ca_params(
            &format!("Test Enterprise Attestation Sub CA 1{tag}"),
            Some(0),
            intermediate_valid,
        );
        let intermediate_key = key(&PKCS_ECDSA_P384_SHA384);
        let intermediate_der = intermediate_params
            .signed_by(
                &intermediate_key,
                &Issuer::from_params(&root_params, &root_key),
            )
            .map(|c| c.der().to_vec())
            .unwrap_or_else(|e| panic!("intermediate: {e}"));
        TestCa {
            root_params,
            root_key,
            root_der,
            intermediate_params,
            intermediate_key,
            intermediate_der,
        }
    }

    /// A verifier trusting only this root.
    pub fn verifier(&self) -> Verifier {
        Verifier::with_roots(vec![self.root_der.clone()], false)
            .unwrap_or_else(|e| panic!("test root refused: {e}"))
    }

    /// A leaf issued by the intermediate.
    pub fn leaf(&self, spec: &LeafSpec) -> Leaf {
        let issuer = Issuer::from_params(&self.intermediate_params, &self.intermediate_key);
        leaf(spec, &issuer)
    }

    /// A leaf issued directly by the root.
    pub fn leaf_from_root(&self, spec: &LeafSpec) -> Leaf {
        leaf(
            spec,
            &Issuer::from_params(&self.root_params, &self.root_key),
        )
    }

    /// `{fmt: "apple", attStmt: {x5c: [leaf, intermediate]}}` for `spec`, and the leaf.
    pub fn att_obj(&self, spec: &LeafSpec) -> (Vec<u8>, Leaf) {
        let leaf = self.leaf(spec);
        let att = att_obj("apple", &[leaf.der.clone(), self.intermediate_der.clone()]);
        (att, leaf)
    }
}

fn key(alg: &'static SignatureAlgorithm) -> KeyPair {
    KeyPair::generate_for(alg).unwrap_or_else(|e| panic!("key: {e}"))
}

fn leaf(spec: &LeafSpec, issuer: &Issuer<'_, &KeyPair>) -> Leaf {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "test-attestation-leaf");
    params.not_before = spec.not_before.into();
    params.not_after = spec.not_after.into();
    params.is_ca = if spec.ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::NoCa
    };
    let mut push = |tail: &[u64], value: &Option<String>| {
        if let Some(v) = value {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    &apple_oid(tail),
                    v.as_bytes().to_vec(),
                ));
        }
    };
    push(&[9, 1], &spec.serial);
    push(&[9, 2], &spec.udid);
    push(&[10, 1], &spec.os_version);
    if let Some(code) = &spec.freshness {
        params
            .custom_extensions
            .push(CustomExtension::from_oid_content(
                &apple_oid(&[11, 1]),
                code.clone(),
            ));
    }
    for (oid, value) in &spec.extra {
        let mut ext = CustomExtension::from_oid_content(oid, value.clone());
        ext.set_criticality(spec.extra_critical);
        params.custom_extensions.push(ext);
    }
    let signed = |cert: Result<rcgen::Certificate, rcgen::Error>| {
        cert.map(|c| c.der().to_vec())
            .unwrap_or_else(|e| panic!("leaf: {e}"))
    };
    match spec.key {
        LeafKey::Rsa => Leaf {
            der: signed(params.signed_by(&rsa_public(), issuer)),
            key: None,
        },
        LeafKey::P256 | LeafKey::P384 => {
            let alg = if spec.key == LeafKey::P256 {
                &PKCS_ECDSA_P256_SHA256
            } else {
                &PKCS_ECDSA_P384_SHA384
            };
            let pair = key(alg);
            Leaf {
                der: signed(params.signed_by(&pair, issuer)),
                key: Some(pair),
            }
        }
    }
}

/// A CBOR value to encode (RFC 8949, definite lengths unless said).
#[derive(Debug, Clone)]
pub enum Cbor {
    Int(u64),
    Bytes(Vec<u8>),
    Text(String),
    Array(Vec<Cbor>),
    Map(Vec<(Cbor, Cbor)>),
    /// An indefinite-length array (§3.2.2).
    IndefiniteArray(Vec<Cbor>),
    /// An indefinite-length byte string of these chunks (§3.2.3).
    IndefiniteBytes(Vec<Vec<u8>>),
    /// Bytes written as they are.
    Raw(Vec<u8>),
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

impl Cbor {
    pub fn text(s: &str) -> Cbor {
        Cbor::Text(s.to_owned())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Cbor::Int(n) => head(out, 0, *n),
            Cbor::Bytes(b) => {
                head(out, 2, b.len() as u64);
                out.extend_from_slice(b);
            }
            Cbor::Text(t) => {
                head(out, 3, t.len() as u64);
                out.extend_from_slice(t.as_bytes());
            }
            Cbor::Array(items) => {
                head(out, 4, items.len() as u64);
                items.iter().for_each(|i| i.write(out));
            }
            Cbor::Map(entries) => {
                head(out, 5, entries.len() as u64);
                for (k, v) in entries {
                    k.write(out);
                    v.write(out);
                }
            }
            Cbor::IndefiniteArray(items) => {
                out.push(0x9f);
                items.iter().for_each(|i| i.write(out));
                out.push(0xff);
            }
            Cbor::IndefiniteBytes(chunks) => {
                out.push(0x5f);
                for c in chunks {
                    head(out, 2, c.len() as u64);
                    out.extend_from_slice(c);
                }
                out.push(0xff);
            }
            Cbor::Raw(bytes) => out.extend_from_slice(bytes),
        }
    }
}

/// The `attObj` of an Apple attestation with this `fmt` and `x5c`, plus an `authData` that the
/// verifier ignores.
pub fn att_obj(fmt: &str, x5c: &[Vec<u8>]) -> Vec<u8> {
    Cbor::Map(vec![
        (Cbor::text("fmt"), Cbor::text(fmt)),
        (
            Cbor::text("attStmt"),
            Cbor::Map(vec![(
                Cbor::text("x5c"),
                Cbor::Array(x5c.iter().cloned().map(Cbor::Bytes).collect()),
            )]),
        ),
        (Cbor::text("authData"), Cbor::Bytes(vec![0u8; 37])),
    ])
    .encode()
}
