//! Device identity from a verified client certificate.
//!
//! The certificate has already passed the TLS verifier (chain, validity, key usage, CRL);
//! this module only reads fields from it, in the configured order of [`IdentitySource`]s:
//!
//! - PermanentIdentifier (RFC 4043 §2), an otherName SAN (RFC 5280 §4.2.1.6) with type-id
//!   `id-on-permanentIdentifier` 1.3.6.1.5.5.7.8.3 and value
//!   `SEQUENCE { identifierValue UTF8String OPTIONAL, assigner OBJECT IDENTIFIER OPTIONAL }`:
//!   what ACME device-attest-01 issues, carrying the serial number.
//! - Apple's attestation extensions (Managed Device Attestation): 1.2.840.113635.100.8.9.1
//!   (serial), .8.9.2 (UDID), .8.10.1 (OS version). Apple writes the string's bytes directly
//!   as the extension value; a DER OCTET STRING or character string wrapping them is accepted
//!   too.
//! - The subject's commonName (2.5.4.3) or serialNumber (2.5.4.5) attribute.
//!
//! Every read is length-checked; malformed fields make that source yield nothing, never a
//! panic.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use crate::{DeviceIdentity, IdentitySource};

/// id-ce-subjectAltName (RFC 5280 §4.2.1.6).
const OID_SUBJECT_ALT_NAME: &str = "2.5.29.17";
/// id-on-permanentIdentifier (RFC 4043 §2), DER content octets of 1.3.6.1.5.5.7.8.3.
const OID_PERMANENT_IDENTIFIER_DER: [u8; 8] = [0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03];
/// Apple Managed Device Attestation: serial number.
pub const OID_APPLE_SERIAL: &str = "1.2.840.113635.100.8.9.1";
/// Apple Managed Device Attestation: UDID.
pub const OID_APPLE_UDID: &str = "1.2.840.113635.100.8.9.2";
/// Apple Managed Device Attestation: OS version.
pub const OID_APPLE_OS_VERSION: &str = "1.2.840.113635.100.8.10.1";
const OID_COMMON_NAME: &str = "2.5.4.3";
const OID_SERIAL_NUMBER: &str = "2.5.4.5";

/// The longest identity value accepted; anything longer is not a device serial.
const MAX_VALUE_LEN: usize = 128;

/// Why no identity could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate does not parse: {0}")]
    Certificate(String),
    #[error("the client certificate carries no device identity (looked in: {})", list(.tried))]
    NotFound { tried: Vec<IdentitySource> },
}

fn list(sources: &[IdentitySource]) -> String {
    sources
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The device identity of the verified end-entity certificate of a TLS peer's `chain` (the
/// first certificate), as either listener's TLS layer hands it over; the reason as text for
/// the connection close and the log when there is none.
pub(crate) fn chain_identity(
    chain: Option<&[rustls_pki_types::CertificateDer<'_>]>,
    sources: &[IdentitySource],
) -> Result<DeviceIdentity, String> {
    let chain = chain.ok_or_else(|| "no client certificate".to_string())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "empty client certificate chain".to_string())?;
    device_identity(leaf, sources).map_err(|e| e.to_string())
}

/// Reads the device identity from a DER certificate, trying `sources` in order.
pub fn device_identity(
    cert_der: &[u8],
    sources: &[IdentitySource],
) -> Result<DeviceIdentity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| IdentityError::Certificate(e.to_string()))?;
    let (serial, source) = sources
        .iter()
        .find_map(|source| read_source(&cert, *source).map(|serial| (serial, *source)))
        .ok_or_else(|| IdentityError::NotFound {
            tried: sources.to_vec(),
        })?;
    let validity = cert.validity();
    Ok(DeviceIdentity {
        serial,
        source,
        udid: extension_string(&cert, OID_APPLE_UDID),
        os_version: extension_string(&cert, OID_APPLE_OS_VERSION),
        not_before: system_time(validity.not_before.timestamp()),
        not_after: system_time(validity.not_after.timestamp()),
        certificate_serial: cert.raw_serial().to_vec(),
    })
}

fn system_time(unix_seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(unix_seconds.unsigned_abs());
    if unix_seconds >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

fn read_source(cert: &X509Certificate<'_>, source: IdentitySource) -> Option<String> {
    match source {
        IdentitySource::PermanentIdentifier => permanent_identifier(cert),
        IdentitySource::AppleSerialOid => extension_string(cert, OID_APPLE_SERIAL),
        IdentitySource::SubjectCn => subject_attribute(cert, OID_COMMON_NAME),
        IdentitySource::SubjectSerialNumber => subject_attribute(cert, OID_SERIAL_NUMBER),
    }
}

fn extension_value<'a>(cert: &'a X509Certificate<'_>, oid: &str) -> Option<&'a [u8]> {
    cert.extensions()
        .iter()
        .find(|ext| ext.oid.to_id_string() == oid)
        .map(|ext| ext.value)
}

/// The string in one of Apple's attestation extensions: raw bytes, or a DER OCTET STRING /
/// character string around them.
fn extension_string(cert: &X509Certificate<'_>, oid: &str) -> Option<String> {
    let value = extension_value(cert, oid)?;
    // A serial, UDID or version string never starts with a DER tag byte below 0x20, so a
    // value that parses whole as one of these tags is a wrapper.
    if let Some((tlv, rest)) = der::read_tlv(value) {
        if rest.is_empty()
            && matches!(
                tlv.tag,
                der::OCTET_STRING | der::UTF8_STRING | der::PRINTABLE_STRING | der::IA5_STRING
            )
        {
            return clean(tlv.value);
        }
    }
    clean(value)
}

/// The first PermanentIdentifier otherName with an identifierValue.
fn permanent_identifier(cert: &X509Certificate<'_>) -> Option<String> {
    let san = extension_value(cert, OID_SUBJECT_ALT_NAME)?;
    permanent_identifier_in_san(san)
}

/// `GeneralNames ::= SEQUENCE SIZE (1..MAX) OF GeneralName` (RFC 5280 §4.2.1.6), read by
/// hand so that a malformed or unusual SAN never hides a well-formed PermanentIdentifier.
fn permanent_identifier_in_san(san: &[u8]) -> Option<String> {
    let (names, _) = der::read_tlv(san)?;
    if names.tag != der::SEQUENCE {
        return None;
    }
    let mut rest = names.value;
    while !rest.is_empty() {
        let (name, after) = der::read_tlv(rest)?;
        rest = after;
        // otherName [0] IMPLICIT OtherName: constructed, context-specific 0.
        if name.tag != 0xa0 {
            continue;
        }
        let Some((type_id, after_oid)) = der::read_tlv(name.value) else {
            continue;
        };
        if type_id.tag != der::OID || type_id.value != OID_PERMANENT_IDENTIFIER_DER {
            continue;
        }
        // value [0] EXPLICIT ANY DEFINED BY type-id.
        let Some((explicit, _)) = der::read_tlv(after_oid) else {
            continue;
        };
        if explicit.tag != 0xa0 {
            continue;
        }
        if let Some(value) = permanent_identifier_value(explicit.value) {
            return Some(value);
        }
    }
    None
}

/// `PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String OPTIONAL, assigner OBJECT
/// IDENTIFIER OPTIONAL }` (RFC 4043 §2): the identifierValue, when present.
fn permanent_identifier_value(input: &[u8]) -> Option<String> {
    let (sequence, _) = der::read_tlv(input)?;
    if sequence.tag != der::SEQUENCE {
        return None;
    }
    let (first, _) = der::read_tlv(sequence.value)?;
    match first.tag {
        der::UTF8_STRING | der::PRINTABLE_STRING | der::IA5_STRING => clean(first.value),
        _ => None,
    }
}

fn subject_attribute(cert: &X509Certificate<'_>, oid: &str) -> Option<String> {
    cert.subject()
        .iter_attributes()
        .filter(|attr| attr.attr_type().to_id_string() == oid)
        .find_map(|attr| attr.as_str().ok().and_then(|s| clean(s.as_bytes())))
}

/// UTF-8, trimmed, non-empty, at most [`MAX_VALUE_LEN`] bytes, no control characters (the
/// value ends up in logs and the appliance's device table).
fn clean(bytes: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?.trim();
    if text.is_empty() || text.len() > MAX_VALUE_LEN || text.chars().any(char::is_control) {
        return None;
    }
    Some(text.to_string())
}

/// A minimal DER reader (X.690 §8.1): one TLV at a time, every length checked.
mod der {
    pub const OID: u8 = 0x06;
    pub const OCTET_STRING: u8 = 0x04;
    pub const UTF8_STRING: u8 = 0x0c;
    pub const PRINTABLE_STRING: u8 = 0x13;
    pub const IA5_STRING: u8 = 0x16;
    pub const SEQUENCE: u8 = 0x30;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Tlv<'a> {
        pub tag: u8,
        pub value: &'a [u8],
    }

    /// One TLV from the start of `input` and what follows it; `None` for anything malformed:
    /// high tag numbers, indefinite or non-minimal lengths, lengths past the input.
    pub fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
        let tag = *input.first()?;
        if tag & 0x1f == 0x1f {
            return None;
        }
        let first = *input.get(1)?;
        let (length, header) = if first < 0x80 {
            (usize::from(first), 2)
        } else {
            let count = usize::from(first & 0x7f);
            // 0x80 is the indefinite form, forbidden in DER (X.690 §10.1); four length
            // bytes are more than any certificate field needs.
            if count == 0 || count > 4 {
                return None;
            }
            let bytes = input.get(2..2 + count)?;
            if bytes.first() == Some(&0) {
                return None;
            }
            let length = bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            if length < 0x80 {
                return None;
            }
            (length, 2 + count)
        };
        let end = header.checked_add(length)?;
        let value = input.get(header..end)?;
        let rest = input.get(end..)?;
        Some((Tlv { tag, value }, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::{self, DeviceCert, TestCa};

    const ALL: [IdentitySource; 4] = IdentitySource::ALL;

    fn issue(device: DeviceCert) -> Vec<u8> {
        let ca = TestCa::new("Test Device CA");
        ca.issue_device(&device).cert_der
    }

    #[test]
    fn permanent_identifier_first() {
        let der = issue(DeviceCert {
            permanent_identifier: Some("C02PERM0001".into()),
            apple_serial: Some("C02APPLE001".into()),
            common_name: Some("cn-value".into()),
            ..DeviceCert::default()
        });
        let id = device_identity(&der, &ALL).unwrap();
        assert_eq!(id.serial, "C02PERM0001");
        assert_eq!(id.source, IdentitySource::PermanentIdentifier);
        let id = device_identity(&der, &[IdentitySource::AppleSerialOid]).unwrap();
        assert_eq!(id.serial, "C02APPLE001");
        let id = device_identity(&der, &[IdentitySource::SubjectCn]).unwrap();
        assert_eq!(id.serial, "cn-value");
    }

    #[test]
    fn permanent_identifier_without_assigner_and_among_other_names() {
        let der = issue(DeviceCert {
            permanent_identifier: Some("C02PERM0002".into()),
            permanent_identifier_assigner: false,
            dns_names: vec!["device.example".into()],
            ..DeviceCert::default()
        });
        let id = device_identity(&der, &[IdentitySource::PermanentIdentifier]).unwrap();
        assert_eq!(id.serial, "C02PERM0002");
    }

    #[test]
    fn apple_extensions_raw_and_wrapped() {
        for wrapping in [
            test_certs::Wrapping::Raw,
            test_certs::Wrapping::OctetString,
            test_certs::Wrapping::Utf8String,
        ] {
            let der = issue(DeviceCert {
                apple_serial: Some("DMPLAB0002".into()),
                apple_udid: Some("00008030-001A2B3C4D5E6F70".into()),
                apple_os_version: Some("17.4".into()),
                apple_wrapping: wrapping,
                ..DeviceCert::default()
            });
            let id = device_identity(&der, &ALL).unwrap();
            assert_eq!(id.serial, "DMPLAB0002", "{wrapping:?}");
            assert_eq!(id.source, IdentitySource::AppleSerialOid);
            assert_eq!(id.udid.as_deref(), Some("00008030-001A2B3C4D5E6F70"));
            assert_eq!(id.os_version.as_deref(), Some("17.4"));
        }
    }

    #[test]
    fn subject_fields() {
        let der = issue(DeviceCert {
            common_name: Some("C02CN000001".into()),
            subject_serial: Some("C02SN000001".into()),
            ..DeviceCert::default()
        });
        let id = device_identity(&der, &ALL).unwrap();
        assert_eq!(
            (id.serial.as_str(), id.source),
            ("C02CN000001", IdentitySource::SubjectCn)
        );
        let id = device_identity(&der, &[IdentitySource::SubjectSerialNumber]).unwrap();
        assert_eq!(
            (id.serial.as_str(), id.source),
            ("C02SN000001", IdentitySource::SubjectSerialNumber)
        );
        assert_eq!(id.udid, None);
    }

    #[test]
    fn validity_window() {
        let der = issue(DeviceCert {
            common_name: Some("x".into()),
            validity: test_certs::Validity::Expired,
            ..DeviceCert::default()
        });
        let id = device_identity(&der, &ALL).unwrap();
        // Expired: 2000-01-01 to 2001-01-01 (test_certs::Validity::Expired).
        assert_eq!(id.not_before, UNIX_EPOCH + Duration::from_secs(946_684_800));
        assert_eq!(id.not_after, UNIX_EPOCH + Duration::from_secs(978_307_200));
        assert_eq!(system_time(-10), UNIX_EPOCH - Duration::from_secs(10));
        // the serial number's content octets, as x509-parser reads them
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert!(!id.certificate_serial.is_empty());
        assert_eq!(id.certificate_serial, cert.raw_serial());
    }

    #[test]
    fn no_identity() {
        let der = issue(DeviceCert {
            common_name: Some("cn".into()),
            ..DeviceCert::default()
        });
        let err = device_identity(
            &der,
            &[
                IdentitySource::PermanentIdentifier,
                IdentitySource::AppleSerialOid,
            ],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the client certificate carries no device identity (looked in: permanent-identifier, apple-serial)"
        );
        assert!(matches!(
            device_identity(b"\x30\x03\x02\x01\x00", &ALL),
            Err(IdentityError::Certificate(_))
        ));
        assert!(matches!(
            device_identity(&[], &ALL),
            Err(IdentityError::Certificate(_))
        ));
    }

    #[test]
    fn malformed_values_are_ignored() {
        let der = issue(DeviceCert {
            apple_serial: Some("bad\nserial".into()),
            common_name: Some("fallback".into()),
            ..DeviceCert::default()
        });
        let id = device_identity(&der, &ALL).unwrap();
        assert_eq!(id.serial, "fallback");
        let der = issue(DeviceCert {
            apple_serial_raw: Some(vec![0xff, 0xfe, 0x00]),
            common_name: Some("fallback".into()),
            ..DeviceCert::default()
        });
        assert_eq!(device_identity(&der, &ALL).unwrap().serial, "fallback");
        let der = issue(DeviceCert {
            apple_serial: Some("x".repeat(MAX_VALUE_LEN + 1)),
            ..DeviceCert::default()
        });
        assert!(device_identity(&der, &[IdentitySource::AppleSerialOid]).is_err());
    }

    #[test]
    fn hand_made_sans() {
        let pi = |inner: &[u8]| -> Vec<u8> {
            // otherName { OID 1.3.6.1.5.5.7.8.3, [0] { inner } }
            let mut oid = vec![0x06, 0x08];
            oid.extend_from_slice(&OID_PERMANENT_IDENTIFIER_DER);
            let explicit = [&[0xa0, inner.len() as u8][..], inner].concat();
            let body = [oid, explicit].concat();
            let other = [&[0xa0, body.len() as u8][..], &body].concat();
            [&[0x30, other.len() as u8][..], &other].concat()
        };
        let good = pi(b"\x30\x05\x0c\x03ABC");
        assert_eq!(permanent_identifier_in_san(&good).as_deref(), Some("ABC"));
        // assigner only: no identifierValue.
        assert_eq!(
            permanent_identifier_in_san(&pi(b"\x30\x03\x06\x01\x2a")),
            None
        );
        // Empty sequence, wrong inner tag, truncated lengths, indefinite length.
        assert_eq!(permanent_identifier_in_san(&pi(b"\x30\x00")), None);
        assert_eq!(
            permanent_identifier_in_san(&pi(b"\x31\x05\x0c\x03ABC")),
            None
        );
        assert_eq!(
            permanent_identifier_in_san(&pi(b"\x30\x09\x0c\x03ABC")),
            None
        );
        assert_eq!(
            permanent_identifier_in_san(&pi(b"\x30\x80\x0c\x03ABC\x00\x00")),
            None
        );
        assert_eq!(permanent_identifier_in_san(&good[..good.len() - 1]), None);
        assert_eq!(permanent_identifier_in_san(&[]), None);
        assert_eq!(permanent_identifier_in_san(&[0x30]), None);
        assert_eq!(
            permanent_identifier_in_san(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
            None
        );
        // A DNS name before it is skipped.
        let mut with_dns = vec![0x82, 0x01, b'a'];
        with_dns.extend_from_slice(&good[2..]);
        let san = [&[0x30, with_dns.len() as u8][..], &with_dns].concat();
        assert_eq!(permanent_identifier_in_san(&san).as_deref(), Some("ABC"));
    }

    #[test]
    fn der_lengths() {
        assert_eq!(
            der::read_tlv(&[0x04, 0x81, 0x05]),
            None,
            "non-minimal long form"
        );
        assert_eq!(
            der::read_tlv(&[0x04, 0x82, 0x00, 0x80]),
            None,
            "leading zero"
        );
        assert_eq!(der::read_tlv(&[0x1f, 0x01, 0x00]), None, "high tag number");
        let long = [&[0x04, 0x81, 0x80][..], &[7u8; 0x80]].concat();
        let (tlv, rest) = der::read_tlv(&long).unwrap();
        assert_eq!((tlv.tag, tlv.value.len(), rest.len()), (0x04, 0x80, 0));
    }
}
