//! Certificate authentication for IKE_AUTH: our certificate chain and private key, the CAs we
//! trust for the peer, signing and verifying AUTH payloads.
//!
//! - AUTH with Digital Signature (method 14, RFC 7427 §3): one octet of AlgorithmIdentifier
//!   length, the DER AlgorithmIdentifier, then the signature (DER `ECDSA-Sig-Value` for ECDSA,
//!   RFC 7427 §3; PKCS#1 v1.5 or PSS for RSA). Used when the peer announced the hash in
//!   SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4); otherwise ECDSA keys fall back to the methods of
//!   RFC 4754 (9: P-256/SHA-256, 10: P-384/SHA-384, fixed-width `r | s`).
//! - The peer's chain (CERT payloads, encoding 4, end-entity first, RFC 7296 §3.6) is checked
//!   against the configured CAs: validity windows, signatures, basicConstraints and keyUsage of
//!   every issuer (RFC 5280 §4.2.1.9, §4.2.1.3), and the peer's ID must be the certificate's
//!   subject DN or one of its subjectAltNames (RFC 7296 §3.5, RFC 4945 §3.1).
//! - CERTREQ carries the SHA-1 hashes of the trusted CAs' SubjectPublicKeyInfo (RFC 7296 §3.7).
//!
//! Signing and signature checks use `ring`; certificates are parsed with `x509-parser`. Private
//! keys live in zeroized buffers and are never logged.

use crate::wire::{dn_from_der, AuthMethod, IdPayload, IdType};
use crate::Identity;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::Path;
use std::time::SystemTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;
use zeroize::Zeroizing;

/// Hash algorithm identifiers of SIGNATURE_HASH_ALGORITHMS (RFC 7427 §7; IANA "IKEv2 Hash
/// Algorithms").
pub const HASH_SHA2_256: u16 = 2;
pub const HASH_SHA2_384: u16 = 3;
pub const HASH_SHA2_512: u16 = 4;

/// The hashes we can sign and verify with, announced in IKE_SA_INIT.
pub const SUPPORTED_HASHES: [u16; 3] = [HASH_SHA2_256, HASH_SHA2_384, HASH_SHA2_512];

/// An issuer chain longer than this is refused.
const MAX_CHAIN: usize = 8;

// DER content octets of the OIDs we use.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const OID_RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];

/// Why certificates or keys could not be loaded, or a signature not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
    #[error("{what}: {why}")]
    Invalid { what: String, why: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> CertError {
    CertError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// The key types we sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    Rsa,
}

/// A private key, kept as DER in a zeroized buffer; `ring` key pairs are made when signing.
struct PrivateKey {
    kind: KeyKind,
    /// PKCS#8 for ECDSA, PKCS#8 or PKCS#1 (see `pkcs1`) for RSA.
    der: Zeroizing<Vec<u8>>,
    pkcs1: bool,
    /// For SEC1 keys: the scalar and the uncompressed public point (ring takes these apart).
    sec1: Option<(Zeroizing<Vec<u8>>, Vec<u8>)>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({:?}, <redacted>)", self.kind)
    }
}

impl PrivateKey {
    fn ecdsa(
        &self,
        alg: &'static signature::EcdsaSigningAlgorithm,
    ) -> Result<EcdsaKeyPair, CertError> {
        let rng = SystemRandom::new();
        let pair = match &self.sec1 {
            Some((scalar, public)) => {
                EcdsaKeyPair::from_private_key_and_public_key(alg, scalar, public, &rng)
            }
            None => EcdsaKeyPair::from_pkcs8(alg, &self.der, &rng),
        };
        pair.map_err(|e| CertError::Sign(format!("ECDSA key rejected: {e}")))
    }

    fn rsa(&self) -> Result<RsaKeyPair, CertError> {
        let pair = if self.pkcs1 {
            RsaKeyPair::from_der(&self.der)
        } else {
            RsaKeyPair::from_pkcs8(&self.der)
        };
        pair.map_err(|e| CertError::Sign(format!("RSA key rejected: {e}")))
    }

    /// The public key octets as they appear in a certificate's subjectPublicKey.
    fn public_key(&self) -> Result<Vec<u8>, CertError> {
        Ok(match self.kind {
            KeyKind::EcdsaP256 => self
                .ecdsa(&signature::ECDSA_P256_SHA256_ASN1_SIGNING)?
                .public_key()
                .as_ref()
                .to_vec(),
            KeyKind::EcdsaP384 => self
                .ecdsa(&signature::ECDSA_P384_SHA384_ASN1_SIGNING)?
                .public_key()
                .as_ref()
                .to_vec(),
            KeyKind::Rsa => self.rsa()?.public().as_ref().to_vec(),
        })
    }
}

/// Our certificate chain and key, and the CAs the peer's certificate must chain to.
#[derive(Debug)]
pub struct CertAuth {
    /// DER certificates: ours first, then intermediates, each sent in a CERT payload.
    chain: Vec<Vec<u8>>,
    key: PrivateKey,
    /// DER certificates of the trusted CAs for the peer.
    anchors: Vec<Vec<u8>>,
    /// Wall-clock time for validity checks (replaceable in tests; the SA core reads no clock
    /// of its own otherwise).
    pub clock: fn() -> SystemTime,
}

fn read(path: &Path) -> Result<Zeroizing<Vec<u8>>, CertError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| CertError::Read {
            path: path.display().to_string(),
            why: e.to_string(),
        })
}

/// Every certificate in a PEM text (or one DER certificate).
fn certificates(what: &str, data: &[u8]) -> Result<Vec<Vec<u8>>, CertError> {
    if data.first() == Some(&0x30) {
        return Ok(vec![data.to_vec()]);
    }
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(data)
        .map(|c| c.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(what, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, "no CERTIFICATE block found"));
    }
    for c in &certs {
        X509Certificate::from_der(c)
            .map_err(|e| invalid(what, format!("not an X.509 certificate: {e}")))?;
    }
    Ok(certs)
}

fn private_key(what: &str, data: &[u8]) -> Result<PrivateKey, CertError> {
    let mut parsed = PrivateKeyDer::from_pem_slice(data).map_err(|e| {
        invalid(
            what,
            format!("no PKCS#8, SEC1 or PKCS#1 private key in PEM: {e}"),
        )
    })?;
    let key = match &parsed {
        PrivateKeyDer::Pkcs8(k) => {
            let der = Zeroizing::new(k.secret_pkcs8_der().to_vec());
            let algorithm =
                pkcs8_algorithm(&der).ok_or_else(|| invalid(what, "malformed PKCS#8"))?;
            let kind = match algorithm {
                (OID_EC_PUBLIC_KEY, Some(OID_P256)) => KeyKind::EcdsaP256,
                (OID_EC_PUBLIC_KEY, Some(OID_P384)) => KeyKind::EcdsaP384,
                (OID_RSA, _) => KeyKind::Rsa,
                _ => {
                    return Err(invalid(
                        what,
                        "only ECDSA P-256, P-384 and RSA keys are supported",
                    ))
                }
            };
            PrivateKey {
                kind,
                der,
                pkcs1: false,
                sec1: None,
            }
        }
        PrivateKeyDer::Sec1(k) => {
            let (curve, scalar, public) = sec1_parts(k.secret_sec1_der())
                .ok_or_else(|| invalid(what, "malformed EC PRIVATE KEY"))?;
            let (kind, public) = match curve {
                OID_P256 => (
                    KeyKind::EcdsaP256,
                    public
                        .map(<[u8]>::to_vec)
                        .or_else(|| ec_public::<p256::NistP256>(&scalar)),
                ),
                OID_P384 => (
                    KeyKind::EcdsaP384,
                    public
                        .map(<[u8]>::to_vec)
                        .or_else(|| ec_public::<p384::NistP384>(&scalar)),
                ),
                _ => {
                    return Err(invalid(
                        what,
                        "only the P-256 and P-384 curves are supported",
                    ))
                }
            };
            let public =
                public.ok_or_else(|| invalid(what, "private scalar is not on the curve"))?;
            PrivateKey {
                kind,
                der: Zeroizing::new(Vec::new()),
                pkcs1: false,
                sec1: Some((scalar, public)),
            }
        }
        PrivateKeyDer::Pkcs1(k) => PrivateKey {
            kind: KeyKind::Rsa,
            der: Zeroizing::new(k.secret_pkcs1_der().to_vec()),
            pkcs1: true,
            sec1: None,
        },
        _ => return Err(invalid(what, "unsupported private key format")),
    };
    // the DER copy the PEM decoder made
    zeroize::Zeroize::zeroize(&mut parsed);
    // a key ring refuses is refused now, not at the first IKE_AUTH
    key.public_key().map_err(|e| invalid(what, e.to_string()))?;
    Ok(key)
}

/// The uncompressed public point of a private scalar (for SEC1 keys without one).
fn ec_public<C>(scalar: &[u8]) -> Option<Vec<u8>>
where
    C: p256::elliptic_curve::CurveArithmetic + p256::elliptic_curve::point::PointCompression,
    p256::elliptic_curve::AffinePoint<C>: p256::elliptic_curve::sec1::ToEncodedPoint<C>
        + p256::elliptic_curve::sec1::FromEncodedPoint<C>,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
{
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p256::elliptic_curve::SecretKey::<C>::from_slice(scalar).ok()?;
    let point = secret.public_key().to_encoded_point(false);
    Some(point.as_bytes().to_vec())
}

impl CertAuth {
    /// Loads PEM files: our certificate (optionally followed by intermediates), our private
    /// key (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`), and one
    /// or more files of trusted CA certificates for the peer.
    pub fn from_files(
        certificate: &Path,
        key: &Path,
        peer_ca: &[impl AsRef<Path>],
    ) -> Result<CertAuth, CertError> {
        let cert = read(certificate)?;
        let key_pem = read(key)?;
        let mut cas = Vec::new();
        for p in peer_ca {
            let p = p.as_ref();
            cas.extend(certificates(&p.display().to_string(), &read(p)?)?);
        }
        let (cert_name, key_name) = (certificate.display().to_string(), key.display().to_string());
        Self::build(
            certificates(&cert_name, &cert)?,
            private_key(&key_name, &key_pem)?,
            cas,
            [&cert_name, &key_name],
        )
    }

    /// The same from PEM text in memory.
    pub fn from_pem(
        certificate: &[u8],
        key: &[u8],
        peer_ca: &[&[u8]],
    ) -> Result<CertAuth, CertError> {
        let mut cas = Vec::new();
        for p in peer_ca {
            cas.extend(certificates("peer CA", p)?);
        }
        Self::build(
            certificates("certificate", certificate)?,
            private_key("private key", key)?,
            cas,
            ["certificate", "private key"],
        )
    }

    fn build(
        chain: Vec<Vec<u8>>,
        key: PrivateKey,
        anchors: Vec<Vec<u8>>,
        [cert_name, key_name]: [&str; 2],
    ) -> Result<CertAuth, CertError> {
        if anchors.is_empty() {
            return Err(invalid("peer_ca", "no CA certificate to trust"));
        }
        let ours = chain.first().ok_or_else(|| invalid(cert_name, "empty"))?;
        let (_, cert) =
            X509Certificate::from_der(ours).map_err(|e| invalid(cert_name, e.to_string()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key()?.as_slice() {
            return Err(invalid(
                key_name,
                format!("does not belong to the certificate {}", cert.subject()),
            ));
        }
        Ok(CertAuth {
            chain,
            key,
            anchors,
            clock: SystemTime::now,
        })
    }

    /// Our certificate and intermediates, DER, end-entity first.
    pub fn chain(&self) -> &[Vec<u8>] {
        &self.chain
    }

    pub fn key_kind(&self) -> KeyKind {
        self.key.kind
    }

    /// The CERTREQ data: SHA-1 of each trusted CA's SubjectPublicKeyInfo (RFC 7296 §3.7).
    pub fn certreq(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for a in &self.anchors {
            if let Ok((_, c)) = X509Certificate::from_der(a) {
                let h = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    c.public_key().raw,
                );
                out.extend_from_slice(h.as_ref());
            }
        }
        out
    }

    /// Whether `id` names our certificate; a peer checks this, so a mismatch is a
    /// configuration error worth reporting before any exchange.
    pub fn check_identity(&self, id: &Identity) -> Result<(), String> {
        let payload = IdPayload::from_identity(id).map_err(|e| e.to_string())?;
        let (_, cert) = X509Certificate::from_der(&self.chain[0]).map_err(|e| e.to_string())?;
        if id_matches(&cert, &payload) {
            Ok(())
        } else {
            Err(format!(
                "identity {id} is neither the subject ({}) nor a subjectAltName of our certificate",
                cert.subject()
            ))
        }
    }

    /// Signs `octets` (RFC 7296 §2.15). `peer_hashes` are the hashes the peer announced in
    /// SIGNATURE_HASH_ALGORITHMS; without them only RFC 4754 methods are possible.
    pub fn sign(
        &self,
        octets: &[u8],
        peer_hashes: &[u16],
    ) -> Result<(AuthMethod, Vec<u8>), CertError> {
        let rng = SystemRandom::new();
        let wants = |h: u16| peer_hashes.contains(&h);
        match self.key.kind {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => {
                let p256 = self.key.kind == KeyKind::EcdsaP256;
                let (hash, asn1, fixed, oid, method) = if p256 {
                    (
                        HASH_SHA2_256,
                        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        OID_ECDSA_SHA256,
                        AuthMethod::ECDSA_SHA256_P256,
                    )
                } else {
                    (
                        HASH_SHA2_384,
                        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                        &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                        OID_ECDSA_SHA384,
                        AuthMethod::ECDSA_SHA384_P384,
                    )
                };
                if wants(hash) {
                    let sig = self
                        .key
                        .ecdsa(asn1)?
                        .sign(&rng, octets)
                        .map_err(|_| CertError::Sign("ECDSA failed".into()))?;
                    Ok((
                        AuthMethod::DIGITAL_SIGNATURE,
                        digital_signature(oid, &[], sig.as_ref()),
                    ))
                } else {
                    // RFC 4754 §7: r and s, each the curve's size, concatenated
                    let sig = self
                        .key
                        .ecdsa(fixed)?
                        .sign(&rng, octets)
                        .map_err(|_| CertError::Sign("ECDSA failed".into()))?;
                    Ok((method, sig.as_ref().to_vec()))
                }
            }
            KeyKind::Rsa => {
                let (alg, oid): (&'static dyn signature::RsaEncoding, _) = if wants(HASH_SHA2_256) {
                    (&signature::RSA_PKCS1_SHA256, OID_RSA_SHA256)
                } else if wants(HASH_SHA2_384) {
                    (&signature::RSA_PKCS1_SHA384, OID_RSA_SHA384)
                } else if wants(HASH_SHA2_512) {
                    (&signature::RSA_PKCS1_SHA512, OID_RSA_SHA512)
                } else {
                    return Err(CertError::Sign(
                        "the peer announced no SHA-2 hash for RFC 7427 signatures, and RSA with SHA-1 is not offered".into(),
                    ));
                };
                let pair = self.key.rsa()?;
                let mut sig = vec![0u8; pair.public().modulus_len()];
                pair.sign(alg, &rng, octets, &mut sig)
                    .map_err(|_| CertError::Sign("RSA failed".into()))?;
                // RFC 7427 Appendix A.1: PKCS#1 v1.5 AlgorithmIdentifiers carry NULL parameters
                Ok((
                    AuthMethod::DIGITAL_SIGNATURE,
                    digital_signature(oid, &[0x05, 0x00], &sig),
                ))
            }
        }
    }

    /// Checks the peer: its certificate chain against our CAs, its ID against the
    /// certificate, and its AUTH signature over `octets` with the certificate's key.
    /// `certs` are the CERT payloads' X.509 data, end-entity first.
    pub fn verify_peer(
        &self,
        certs: &[&[u8]],
        id: &IdPayload,
        method: AuthMethod,
        auth: &[u8],
        octets: &[u8],
    ) -> Result<(), String> {
        let Some(ee_der) = certs.first() else {
            return Err("peer sent no certificate (CERT payload)".into());
        };
        let (_, ee) = X509Certificate::from_der(ee_der)
            .map_err(|e| format!("peer's certificate does not parse: {e}"))?;
        let now = unix((self.clock)());
        self.validate_chain(&ee, &certs[1..], now)?;
        if !id_matches(&ee, id) {
            let shown = id
                .to_identity()
                .map(|i| i.to_string())
                .unwrap_or_else(|_| format!("{:?}", id.id_type));
            return Err(format!(
                "peer identity {shown} is neither the subject ({}) nor a subjectAltName of its certificate",
                ee.subject()
            ));
        }
        verify_auth(ee.public_key(), method, auth, octets).map_err(|why| {
            format!(
                "peer's AUTH signature does not verify with the key of {}: {why}",
                ee.subject()
            )
        })
    }

    /// RFC 5280 §6 in the small: from the end-entity up through the peer's intermediates to
    /// one of our anchors, each link's signature, validity and issuer constraints.
    fn validate_chain(
        &self,
        ee: &X509Certificate,
        extra: &[&[u8]],
        now: i64,
    ) -> Result<(), String> {
        check_validity(ee, now)?;
        let anchors: Vec<X509Certificate> = self
            .anchors
            .iter()
            .filter_map(|a| X509Certificate::from_der(a).ok().map(|(_, c)| c))
            .collect();
        // a self-signed peer certificate configured as a CA itself
        if anchors.iter().any(|a| a.as_raw() == ee.as_raw()) {
            return Ok(());
        }
        let intermediates: Vec<X509Certificate> = extra
            .iter()
            .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
            .collect();
        let mut current = ee;
        for depth in 0..MAX_CHAIN {
            let issuer = current.issuer().as_raw();
            for a in anchors.iter().filter(|a| a.subject().as_raw() == issuer) {
                if current.verify_signature(Some(a.public_key())).is_ok() {
                    check_validity(a, now)?;
                    check_issuer(a, depth)?;
                    return Ok(());
                }
            }
            let Some(next) = intermediates.iter().find(|c| {
                c.subject().as_raw() == issuer
                    && current.verify_signature(Some(c.public_key())).is_ok()
            }) else {
                let signer_known = anchors
                    .iter()
                    .chain(&intermediates)
                    .any(|a| a.subject().as_raw() == issuer);
                return Err(if signer_known {
                    format!(
                        "signature on certificate {} does not verify with its issuer {}'s key",
                        current.subject(),
                        current.issuer()
                    )
                } else {
                    format!(
                        "certificate {} is issued by {}, which is not a trusted CA (peer_ca)",
                        current.subject(),
                        current.issuer()
                    )
                });
            };
            check_validity(next, now)?;
            check_issuer(next, depth)?;
            current = next;
        }
        Err("certificate chain is too long".into())
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// The validity window (RFC 5280 §4.1.2.5), and no critical extension we do not know
/// (§4.2: such a certificate must be rejected).
fn check_validity(c: &X509Certificate, now: i64) -> Result<(), String> {
    if let Some(e) = c.extensions().iter().find(|e| {
        e.critical
            && matches!(
                e.parsed_extension(),
                ParsedExtension::UnsupportedExtension { .. }
            )
    }) {
        return Err(format!(
            "certificate {} has a critical extension we do not know ({})",
            c.subject(),
            e.oid
        ));
    }
    let v = c.validity();
    if now < v.not_before.timestamp() {
        return Err(format!(
            "certificate {} is not valid before {}",
            c.subject(),
            v.not_before
        ));
    }
    if now > v.not_after.timestamp() {
        return Err(format!(
            "certificate {} expired on {}",
            c.subject(),
            v.not_after
        ));
    }
    Ok(())
}

/// An issuer must be a CA (basicConstraints cA, RFC 5280 §4.2.1.9) allowed to sign
/// certificates (keyUsage keyCertSign when present, §4.2.1.3), within its path length.
/// `below` counts the intermediates between it and the end-entity.
fn check_issuer(c: &X509Certificate, below: usize) -> Result<(), String> {
    match c.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            if let Some(max) = bc.value.path_len_constraint {
                if below > max as usize {
                    return Err(format!(
                        "CA {} allows only {max} intermediates below it",
                        c.subject()
                    ));
                }
            }
        }
        _ => {
            return Err(format!(
                "certificate {} is not a CA (basicConstraints)",
                c.subject()
            ))
        }
    }
    match c.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => Err(format!(
            "CA {} may not sign certificates (keyUsage lacks keyCertSign)",
            c.subject()
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("CA {}: bad keyUsage: {e}", c.subject())),
    }
}

/// The peer's ID is its certificate's subject DN or one of its subjectAltNames of the same
/// type (RFC 4945 §3.1; ID_KEY_ID against the subjectKeyIdentifier).
fn id_matches(c: &X509Certificate, id: &IdPayload) -> bool {
    let san = || -> Vec<GeneralName> {
        c.subject_alternative_name()
            .ok()
            .flatten()
            .map(|s| s.value.general_names.clone())
            .unwrap_or_default()
    };
    match id.id_type {
        IdType::DER_ASN1_DN => {
            let subject = c.subject().as_raw();
            id.data == subject
                || matches!((dn_from_der(&id.data), dn_from_der(subject)), (Ok(a), Ok(b)) if a == b)
        }
        IdType::FQDN => san().iter().any(|n| {
            matches!(n, GeneralName::DNSName(d) if d.trim_end_matches('.').as_bytes().eq_ignore_ascii_case(&id.data))
        }),
        IdType::RFC822_ADDR => san()
            .iter()
            .any(|n| matches!(n, GeneralName::RFC822Name(m) if m.as_bytes().eq_ignore_ascii_case(&id.data))),
        IdType::IPV4_ADDR | IdType::IPV6_ADDR => san()
            .iter()
            .any(|n| matches!(n, GeneralName::IPAddress(a) if *a == id.data.as_slice())),
        IdType::KEY_ID => c.extensions().iter().any(|e| {
            matches!(e.parsed_extension(), ParsedExtension::SubjectKeyIdentifier(k) if k.0 == id.data.as_slice())
        }),
        _ => false,
    }
}

/// RFC 7427 §3: `len(AlgorithmIdentifier) | AlgorithmIdentifier | signature`.
fn digital_signature(oid: &[u8], params: &[u8], sig: &[u8]) -> Vec<u8> {
    let mut inner = vec![0x06, oid.len() as u8];
    inner.extend_from_slice(oid);
    inner.extend_from_slice(params);
    let mut out = vec![(inner.len() + 2) as u8, 0x30, inner.len() as u8];
    out.extend_from_slice(&inner);
    out.extend_from_slice(sig);
    out
}

/// Reads one DER TLV (short tags, definite lengths up to 4 octets): (tag, content, rest).
fn tlv(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |a, &b| (a << 8) | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The algorithm OID and its OID parameter (the curve), of a PKCS#8 PrivateKeyInfo
/// (RFC 5208 §5).
fn pkcs8_algorithm(der: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (0x30, info, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _version, rest) = tlv(info)? else {
        return None;
    };
    let (0x30, alg, _) = tlv(rest)? else {
        return None;
    };
    let (0x06, oid, params) = tlv(alg)? else {
        return None;
    };
    let curve = match tlv(params) {
        Some((0x06, c, _)) => Some(c),
        _ => None,
    };
    Some((oid, curve))
}

/// SEC1 ECPrivateKey (RFC 5915 §3): the curve OID, the scalar and the public point if present.
#[allow(clippy::type_complexity)]
fn sec1_parts(der: &[u8]) -> Option<(&[u8], Zeroizing<Vec<u8>>, Option<&[u8]>)> {
    let (0x30, key, _) = tlv(der)? else {
        return None;
    };
    let (0x02, _version, rest) = tlv(key)? else {
        return None;
    };
    let (0x04, scalar, mut rest) = tlv(rest)? else {
        return None;
    };
    let (mut curve, mut public) = (None, None);
    while let Some((tag, content, next)) = tlv(rest) {
        match tag {
            0xa0 => curve = tlv(content).filter(|t| t.0 == 0x06).map(|t| t.1),
            0xa1 => {
                public = tlv(content)
                    .filter(|t| t.0 == 0x03)
                    .and_then(|t| t.1.split_first())
                    .filter(|(unused, _)| **unused == 0)
                    .map(|(_, p)| p)
            }
            _ => {}
        }
        rest = next;
    }
    Some((curve?, Zeroizing::new(scalar.to_vec()), public))
}

/// The hash OID inside RSASSA-PSS-params (RFC 4055 §3.1): `[0] hashAlgorithm`, SHA-1 when
/// absent.
fn pss_hash(params: &[u8]) -> Option<&[u8]> {
    let (0x30, mut fields, _) = tlv(params)? else {
        return None;
    };
    while let Some((tag, content, rest)) = tlv(fields) {
        if tag == 0xa0 {
            let (0x30, alg, _) = tlv(content)? else {
                return None;
            };
            let (0x06, oid, _) = tlv(alg)? else {
                return None;
            };
            return Some(oid);
        }
        fields = rest;
    }
    None
}

/// Checks an AUTH payload's signature with the peer's public key (RFC 7427 §3, RFC 4754 §7).
fn verify_auth(
    spki: &SubjectPublicKeyInfo,
    method: AuthMethod,
    auth: &[u8],
    octets: &[u8],
) -> Result<(), String> {
    let key_alg = spki.algorithm.algorithm.as_bytes();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.as_bytes().to_vec());
    let kind = match (key_alg, curve.as_deref()) {
        (OID_EC_PUBLIC_KEY, Some(OID_P256)) => KeyKind::EcdsaP256,
        (OID_EC_PUBLIC_KEY, Some(OID_P384)) => KeyKind::EcdsaP384,
        (OID_RSA, _) => KeyKind::Rsa,
        _ => {
            return Err(
                "the certificate's key type is not supported (ECDSA P-256/P-384, RSA)".into(),
            )
        }
    };
    use signature::VerificationAlgorithm as V;
    let (alg, sig): (&'static dyn V, &[u8]) = match method {
        AuthMethod::DIGITAL_SIGNATURE => {
            let (&len, rest) = auth.split_first().ok_or("empty AUTH")?;
            let len = usize::from(len);
            if rest.len() < len {
                return Err("AUTH shorter than its AlgorithmIdentifier".into());
            }
            let (alg_id, sig) = rest.split_at(len);
            let (0x30, alg_id, _) = tlv(alg_id).ok_or("bad AlgorithmIdentifier")? else {
                return Err("bad AlgorithmIdentifier".into());
            };
            let (0x06, oid, params) = tlv(alg_id).ok_or("bad AlgorithmIdentifier")? else {
                return Err("bad AlgorithmIdentifier".into());
            };
            let alg: &'static dyn V = match (oid, kind) {
                (OID_ECDSA_SHA256, KeyKind::EcdsaP256) => &signature::ECDSA_P256_SHA256_ASN1,
                (OID_ECDSA_SHA384, KeyKind::EcdsaP256) => &signature::ECDSA_P256_SHA384_ASN1,
                (OID_ECDSA_SHA256, KeyKind::EcdsaP384) => &signature::ECDSA_P384_SHA256_ASN1,
                (OID_ECDSA_SHA384, KeyKind::EcdsaP384) => &signature::ECDSA_P384_SHA384_ASN1,
                (OID_ECDSA_SHA512, _) => return Err("ECDSA with SHA-512 is not supported".into()),
                (OID_RSA_SHA256, KeyKind::Rsa) => &signature::RSA_PKCS1_2048_8192_SHA256,
                (OID_RSA_SHA384, KeyKind::Rsa) => &signature::RSA_PKCS1_2048_8192_SHA384,
                (OID_RSA_SHA512, KeyKind::Rsa) => &signature::RSA_PKCS1_2048_8192_SHA512,
                (OID_RSA_PSS, KeyKind::Rsa) => match pss_hash(params) {
                    Some(OID_SHA256) => &signature::RSA_PSS_2048_8192_SHA256,
                    Some(OID_SHA384) => &signature::RSA_PSS_2048_8192_SHA384,
                    Some(OID_SHA512) => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return Err("RSASSA-PSS with an unsupported hash".into()),
                },
                _ => return Err("signature algorithm does not fit the certificate's key or is not supported".into()),
            };
            (alg, sig)
        }
        AuthMethod::ECDSA_SHA256_P256 if kind == KeyKind::EcdsaP256 => {
            (&signature::ECDSA_P256_SHA256_FIXED, auth)
        }
        AuthMethod::ECDSA_SHA384_P384 if kind == KeyKind::EcdsaP384 => {
            (&signature::ECDSA_P384_SHA384_FIXED, auth)
        }
        other => return Err(format!("authentication method {other:?} does not fit the certificate's key or is not supported")),
    };
    signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(octets, sig)
        .map_err(|_| "bad signature".into())
}

#[cfg(test)]
pub(crate) mod tests;
