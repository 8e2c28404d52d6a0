//! The MASQUE relay terminator: HTTP/3 (quinn + h3) and HTTP/2 (h2 + tokio-rustls) listeners with
//! mutual TLS, classic CONNECT and connect-udp (RFC 9298), revocable flows.
//!
//! Not written yet (issue 4). Today this crate holds only the seam the appliance will implement:
//! the identity the relay extracts from a device certificate and the [`Authorizer`] question it
//! asks for every request. Nothing here listens or relays.

use std::time::SystemTime;

/// Where a device's identity is read from in its client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// The PermanentIdentifier otherName SAN (RFC 4043), what ACME device-attest-01 issues.
    PermanentIdentifier,
    /// Apple's attested serial number extension, OID 1.2.840.113635.100.8.9.1.
    AppleSerialOid,
    /// The subject's common name.
    SubjectCn,
    /// The subject's serialNumber attribute (OID 2.5.4.5).
    SubjectSerialNumber,
}

/// A device as the relay knows it from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The serial number (devices are keyed by serial: on Macs the attested UDID differs from
    /// the MDM's).
    pub serial: String,
    /// Which certificate field it came from.
    pub source: IdentitySource,
    /// The certificate's validity window.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// The question the relay asks for every CONNECT / connect-udp. Implemented by the appliance.
pub trait Authorizer: Send + Sync + 'static {
    /// What the appliance decided; opaque to the relay except for how to answer.
    type Decision: Send;
    /// Decides one request for `device` to `host:port`.
    fn authorize(
        &self,
        device: &DeviceIdentity,
        host: &str,
        port: u16,
        now: SystemTime,
    ) -> Self::Decision;
}
