//! Test certificates made at test time with rcgen: CAs, device certificates with the identity
//! fields the relay reads (RFC 4043 PermanentIdentifier SAN, Apple attestation extensions,
//! subject fields), server certificates and CRLs.
//!
//! Shared by the unit tests (`src/identity.rs`), the integration tests and the benchmark.

#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer,
    CustomExtension, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SerialNumber,
};

/// Apple Managed Device Attestation OIDs.
const APPLE_SERIAL: &[u64] = &[1, 2, 840, 113_635, 100, 8, 9, 1];
const APPLE_UDID: &[u64] = &[1, 2, 840, 113_635, 100, 8, 9, 2];
const APPLE_OS_VERSION: &[u64] = &[1, 2, 840, 113_635, 100, 8, 10, 1];
const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

static NEXT_SERIAL: AtomicU64 = AtomicU64::new(1000);

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Validity {
    /// 2020-01-01 to 2090-01-01.
    #[default]
    Current,
    /// 2000-01-01 to 2001-01-01.
    Expired,
}

/// How Apple extension values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Wrapping {
    /// The string's bytes as the extension value (what Apple does).
    #[default]
    Raw,
    OctetString,
    Utf8String,
}

/// What a device certificate carries.
#[derive(Debug, Clone)]
pub struct DeviceCert {
    pub permanent_identifier: Option<String>,
    pub permanent_identifier_assigner: bool,
    pub dns_names: Vec<String>,
    pub apple_serial: Option<String>,
    pub apple_serial_raw: Option<Vec<u8>>,
    pub apple_udid: Option<String>,
    pub apple_os_version: Option<String>,
    pub apple_wrapping: Wrapping,
    pub common_name: Option<String>,
    pub subject_serial: Option<String>,
    pub validity: Validity,
}

impl Default for DeviceCert {
    fn default() -> Self {
        DeviceCert {
            permanent_identifier: None,
            permanent_identifier_assigner: true,
            dns_names: Vec::new(),
            apple_serial: None,
            apple_serial_raw: None,
            apple_udid: None,
            apple_os_version: None,
            apple_wrapping: Wrapping::Raw,
            common_name: None,
            subject_serial: None,
            validity: Validity::Current,
        }
    }
}

impl DeviceCert {
    /// A typical ACME device-attest-01 certificate: the serial as PermanentIdentifier and as
    /// Apple's serial extension.
    pub fn attested(serial: &str) -> DeviceCert {
        DeviceCert {
            permanent_identifier: Some(serial.to_string()),
            apple_serial: Some(serial.to_string()),
            ..DeviceCert::default()
        }
    }
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
    pub serial_number: Vec<u8>,
}

/// A certificate authority.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TestCa")
    }
}

/// DER TLV with a definite length (X.690 §8.1.3).
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// DER content octets of an OID (X.690 §8.19).
fn oid_content(arcs: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut arcs = arcs.iter().copied();
    let first = arcs.next().unwrap() * 40 + arcs.next().unwrap();
    for arc in std::iter::once(first).chain(arcs) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest > 0 {
            groups.push(0x80 | (rest & 0x7f) as u8);
            rest >>= 7;
        }
        groups.reverse();
        out.extend_from_slice(&groups);
    }
    out
}

/// January 1st of `year` (rcgen's date type, which this crate does not name).
macro_rules! date {
    ($year:expr) => {
        rcgen::date_time_ymd($year, 1, 1)
    };
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "attestgate tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date!(1999);
        params.not_after = date!(2099);
        let key = KeyPair::generate().unwrap();
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).unwrap(),
        }
    }

    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    fn issue(&self, mut params: CertificateParams, validity: Validity) -> IssuedCert {
        let serial = NEXT_SERIAL.fetch_add(1, Ordering::Relaxed);
        params.serial_number = Some(SerialNumber::from(serial));
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = match validity {
            Validity::Current => (date!(2020), date!(2090)),
            Validity::Expired => (date!(2000), date!(2001)),
        };
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        IssuedCert {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial_number: SerialNumber::from(serial).to_bytes(),
        }
    }

    /// A TLS server certificate for `localhost` and 127.0.0.1.
    pub fn issue_server(&self) -> IssuedCert {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "relay.test");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, Validity::Current)
    }

    /// A device (TLS client) certificate.
    pub fn issue_device(&self, device: &DeviceCert) -> IssuedCert {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        if let Some(cn) = &device.common_name {
            dn.push(DnType::CommonName, cn.as_str());
        }
        if let Some(serial) = &device.subject_serial {
            dn.push(DnType::CustomDnType(vec![2, 5, 4, 5]), serial.as_str());
        }
        dn.push(DnType::OrganizationName, "attestgate test devices");
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];

        // The SAN is written by hand: rcgen's otherName only holds a UTF8String, and a
        // PermanentIdentifier is a SEQUENCE (RFC 4043 §2).
        let mut names = Vec::new();
        for dns in &device.dns_names {
            names.extend(tlv(0x82, dns.as_bytes()));
        }
        if let Some(serial) = &device.permanent_identifier {
            let mut value = tlv(0x0c, serial.as_bytes());
            if device.permanent_identifier_assigner {
                value.extend(tlv(0x06, &oid_content(&[1, 2, 840, 113_635, 100, 8, 9])));
            }
            let other_name = [
                tlv(0x06, &oid_content(&[1, 3, 6, 1, 5, 5, 7, 8, 3])),
                tlv(0xa0, &tlv(0x30, &value)),
            ]
            .concat();
            names.extend(tlv(0xa0, &other_name));
        }
        if !names.is_empty() {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    SUBJECT_ALT_NAME,
                    tlv(0x30, &names),
                ));
        }

        let wrap = |value: &str| -> Vec<u8> {
            match device.apple_wrapping {
                Wrapping::Raw => value.as_bytes().to_vec(),
                Wrapping::OctetString => tlv(0x04, value.as_bytes()),
                Wrapping::Utf8String => tlv(0x0c, value.as_bytes()),
            }
        };
        if let Some(serial) = &device.apple_serial {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    APPLE_SERIAL,
                    wrap(serial),
                ));
        }
        if let Some(raw) = &device.apple_serial_raw {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(APPLE_SERIAL, raw.clone()));
        }
        if let Some(udid) = &device.apple_udid {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(APPLE_UDID, wrap(udid)));
        }
        if let Some(version) = &device.apple_os_version {
            params
                .custom_extensions
                .push(CustomExtension::from_oid_content(
                    APPLE_OS_VERSION,
                    wrap(version),
                ));
        }
        self.issue(params, device.validity)
    }

    /// A CRL (PEM) revoking the given certificate serial numbers.
    pub fn crl_pem(&self, revoked: &[&[u8]]) -> String {
        let params = CertificateRevocationListParams {
            this_update: date!(2020),
            next_update: date!(2090),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: date!(2021),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().pem().unwrap()
    }
}

/// Writes `contents` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}
