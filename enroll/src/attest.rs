//! Apple Managed Device Attestation statements (the `attObj` of an ACME `device-attest-01`
//! challenge response): CBOR `{fmt: "apple", attStmt: {x5c: [leaf, intermediates…]}}`, the
//! chain verified to the Apple Enterprise Attestation Root CA (bundled) or configured roots,
//! and the attested facts read from the leaf's Apple extensions.
//!
//! [`Verifier::verify`] takes the `attObj`, the challenge token and `now`, and either returns what
//! the attestation says ([`Attestation`]) or why it is refused ([`AttestError`], the detail of an
//! ACME `badAttestationStatement`). It reads no clock and does no I/O. The ACME server still has
//! to match the serial or UDID to the order's identifier, the attested key to the CSR's key, and
//! refuse a leaf it has seen before (`leaf_sha256`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod cbor;
mod chain;
mod facts;
/// Synthetic attestation chains for tests (cargo feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

/// Apple Enterprise Attestation Root CA (P-384, ECDSA with SHA-384, valid 2022-02-16 to
/// 2047-02-20), as published on <https://www.apple.com/certificateauthority/private/>
/// (`Apple_Enterprise_Attestation_Root_CA.pem`), stored as DER. SHA-256 fingerprint
/// CC:F5:9E:F8:FC:B3:01:7D:97:F8:B5:FA:6F:A9:0E:7A:3F:92:83:F7:6B:55:AC:6C:F6:ED:A8:B8:B9:49:F0:5B
/// (checked by a test).
pub const APPLE_ENTERPRISE_ATTESTATION_ROOT_CA: &[u8] =
    include_bytes!("attest/apple_enterprise_attestation_root_ca.der");

/// What a verified attestation says about the device and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attestation {
    /// Attested serial number (OID 1.2.840.113635.100.8.9.1).
    pub serial: Option<String>,
    /// Attested UDID (1.2.840.113635.100.8.9.2).
    pub udid: Option<String>,
    /// OS version (1.2.840.113635.100.8.10.1).
    pub os_version: Option<String>,
    /// macOS: System Integrity Protection enabled (1.2.840.113635.100.8.13.1).
    pub sip_enabled: Option<bool>,
    /// macOS: Secure Boot level (1.2.840.113635.100.8.13.2), as Apple encodes it.
    pub secure_boot: Option<String>,
    /// The attested (Secure Enclave) key: the leaf's SubjectPublicKeyInfo, DER.
    pub public_key_spki: Vec<u8>,
    /// SHA-256 of the leaf certificate's DER: the same attestation presented twice is a replay.
    pub leaf_sha256: [u8; 32],
    /// The leaf's extensions under 1.2.840.113635.100.8 (dotted OID, the extension's value
    /// octets), to copy into the issued device certificate.
    pub apple_extensions: Vec<(String, Vec<u8>)>,
    /// The leaf's notAfter.
    pub not_after: SystemTime,
}

/// Why an attestation is refused (an ACME `badAttestationStatement` problem's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("attObj is not valid CBOR: {0}")]
    Cbor(String),
    #[error("attestation format {0:?} is not supported (only \"apple\")")]
    Format(String),
    #[error("attestation certificate chain: {0}")]
    Chain(String),
    #[error("the attestation carries no freshness code (OID 1.2.840.113635.100.8.11.1)")]
    NoNonce,
    #[error("the attestation's freshness code is not SHA-256 of this challenge's token")]
    WrongNonce,
    #[error("attestation certificate: {0}")]
    Certificate(String),
}

/// Verifies Apple attestation statements against a set of trusted roots: Apple's bundled root,
/// and for tests and labs roots of their own in its place.
#[derive(Debug, Clone)]
pub struct Verifier {
    /// Trusted roots, DER; each parsed when the verifier was made.
    roots: Vec<Vec<u8>>,
}

impl Verifier {
    /// Trusts only the bundled Apple Enterprise Attestation Root CA.
    pub fn apple() -> Verifier {
        Verifier {
            roots: vec![APPLE_ENTERPRISE_ATTESTATION_ROOT_CA.to_vec()],
        }
    }

    /// Trusts `extra_roots_der` (DER certificates), and Apple's root too when `include_apple`.
    /// Each root must parse; at least one root must remain.
    pub fn with_roots(
        extra_roots_der: Vec<Vec<u8>>,
        include_apple: bool,
    ) -> Result<Verifier, AttestError> {
        for (i, der) in extra_roots_der.iter().enumerate() {
            chain::parse(&format!("configured root {i}"), der)?;
        }
        let mut roots = extra_roots_der;
        if include_apple {
            roots.push(APPLE_ENTERPRISE_ATTESTATION_ROOT_CA.to_vec());
        }
        if roots.is_empty() {
            return Err(AttestError::Chain("no trusted attestation roots".into()));
        }
        Ok(Verifier { roots })
    }

    /// Verifies an `attObj` (draft-ietf-acme-device-attest §4, format "apple") for the challenge
    /// `token` at `now`: the chain to a trusted root, the freshness code equal to SHA-256 of the
    /// token's UTF-8 bytes (Apple Platform Deployment, "Managed Device Attestation"), an EC P-256
    /// or P-384 attested key; then the attested facts.
    pub fn verify(
        &self,
        att_obj: &[u8],
        token: &str,
        now: SystemTime,
    ) -> Result<Attestation, AttestError> {
        let x5c_der = cbor::apple_x5c(att_obj)?;
        let x5c = x5c_der
            .iter()
            .enumerate()
            .map(|(i, der)| chain::parse(&format!("x5c[{i}]"), der))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = self
            .roots
            .iter()
            .enumerate()
            .map(|(i, der)| chain::parse(&format!("trusted root {i}"), der))
            .collect::<Result<Vec<_>, _>>()?;
        chain::verify(&x5c, &roots, chain::unix(now), facts::is_apple)?;

        let (leaf, leaf_der) = match (x5c.first(), x5c_der.first()) {
            (Some(leaf), Some(der)) => (leaf, der),
            _ => return Err(AttestError::Chain("x5c is empty".into())),
        };
        let public_key_spki = facts::attested_key(leaf)?;
        let facts = facts::read(leaf)?;
        let expected = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        match &facts.freshness {
            None => return Err(AttestError::NoNonce),
            Some(code) if code.as_slice() != expected.as_ref() => {
                return Err(AttestError::WrongNonce)
            }
            Some(_) => {}
        }
        let mut leaf_sha256 = [0u8; 32];
        leaf_sha256.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf_der).as_ref());
        let not_after = system_time(leaf.validity().not_after.timestamp()).ok_or_else(|| {
            AttestError::Certificate("the leaf's notAfter is out of range".into())
        })?;
        Ok(Attestation {
            serial: facts.serial,
            udid: facts.udid,
            os_version: facts.os_version,
            sip_enabled: facts.sip_enabled,
            secure_boot: facts.secure_boot,
            public_key_spki,
            leaf_sha256,
            apple_extensions: facts.extensions,
            not_after,
        })
    }
}

/// Unix seconds to a `SystemTime`.
fn system_time(unix: i64) -> Option<SystemTime> {
    if unix >= 0 {
        UNIX_EPOCH.checked_add(Duration::from_secs(unix.unsigned_abs()))
    } else {
        UNIX_EPOCH.checked_sub(Duration::from_secs(unix.unsigned_abs()))
    }
}
