//! Apple Managed Device Attestation statements (the `attObj` of an ACME `device-attest-01`
//! challenge response): CBOR `{fmt: "apple", attStmt: {x5c: [leaf, intermediates…]}}`, the
//! chain verified to the Apple Enterprise Attestation Root CA (bundled) or configured roots,
//! and the attested facts read from the leaf's Apple extensions.
//!
//! This file fixes the interface the ACME server uses; the verification is built behind it.

use std::time::SystemTime;

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
