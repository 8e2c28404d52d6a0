//! What the leaf attests: Apple's extensions under 1.2.840.113635.100.8 and the attested key.
//!
//! Encoding (Apple Platform Deployment, "Managed Device Attestation"; the same reading as the
//! open ACME servers that accept real devices): the extnValue OCTET STRING holds the value itself
//! — the serial, UDID and OS version as plain UTF-8 text, the freshness code as the 32 bytes of
//! SHA-256 — with no inner DER. An inner DER string (UTF8String, PrintableString, IA5String, OCTET
//! STRING) is unwrapped too: it cannot be mistaken for plain text, whose first byte is printable.

use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};

use super::AttestError;

/// Apple's arc for device attestation properties.
pub(super) const APPLE_ARC: &str = "1.2.840.113635.100.8.";
pub(super) const OID_SERIAL: &str = "1.2.840.113635.100.8.9.1";
pub(super) const OID_UDID: &str = "1.2.840.113635.100.8.9.2";
pub(super) const OID_OS_VERSION: &str = "1.2.840.113635.100.8.10.1";
pub(super) const OID_FRESHNESS: &str = "1.2.840.113635.100.8.11.1";
pub(super) const OID_SIP: &str = "1.2.840.113635.100.8.13.1";
pub(super) const OID_SECURE_BOOT: &str = "1.2.840.113635.100.8.13.2";

/// Longest attested text value accepted (serials are 10–12 characters, UDIDs 25–40).
const MAX_TEXT: usize = 256;

pub(super) fn is_apple(oid: &Oid<'_>) -> bool {
    oid.to_id_string().starts_with(APPLE_ARC)
}

fn certificate(what: impl Into<String>) -> AttestError {
    AttestError::Certificate(what.into())
}

/// The content of `value` if it is exactly one DER primitive with tag `tag` (short or long
/// definite length), else `None`.
fn der_primitive<'a>(value: &'a [u8], tags: &[u8]) -> Option<(u8, &'a [u8])> {
    let (&tag, rest) = value.split_first()?;
    if !tags.contains(&tag) {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, body) = match first {
        n @ 0..=0x7f => (usize::from(n), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => {
            let bytes = rest.get(..2)?;
            (
                usize::from(bytes[0]) << 8 | usize::from(bytes[1]),
                rest.get(2..)?,
            )
        }
        _ => return None,
    };
    (body.len() == len).then_some((tag, body))
}

const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const IA5_STRING: u8 = 0x16;
const OCTET_STRING: u8 = 0x04;
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;

/// An attested text value: plain UTF-8, or one DER string around it; printable, bounded.
fn text(name: &str, oid: &str, value: &[u8]) -> Result<String, AttestError> {
    let raw = der_primitive(
        value,
        &[UTF8_STRING, PRINTABLE_STRING, IA5_STRING, OCTET_STRING],
    )
    .map_or(value, |(_, body)| body);
    let text = std::str::from_utf8(raw)
        .map_err(|_| certificate(format!("the attested {name} ({oid}) is not UTF-8 text")))?;
    if text.is_empty() || text.len() > MAX_TEXT || text.chars().any(char::is_control) {
        return Err(certificate(format!(
            "the attested {name} ({oid}) is empty, longer than {MAX_TEXT} bytes or holds control \
             characters"
        )));
    }
    Ok(text.to_owned())
}

/// SIP status: a DER BOOLEAN, or a single byte 0 / 1; anything else is unknown (`None`), so a
/// policy that requires SIP fails closed. The raw value stays in `apple_extensions`.
fn flag(value: &[u8]) -> Option<bool> {
    match der_primitive(value, &[BOOLEAN]).map(|(_, b)| b) {
        Some([0x00]) => Some(false),
        Some([0xff]) => Some(true),
        Some(_) => None,
        None => match value {
            [0] => Some(false),
            [1] => Some(true),
            _ => None,
        },
    }
}

/// Secure Boot level as Apple encodes it, rendered as text: a text value as is, a DER INTEGER
/// or BOOLEAN or a single byte as its number, anything else in hex.
fn level(value: &[u8]) -> String {
    if let Ok(t) = text("", "", value) {
        return t;
    }
    match der_primitive(value, &[INTEGER, BOOLEAN]) {
        Some((BOOLEAN, [0x00])) => "false".to_owned(),
        Some((BOOLEAN, [0xff])) => "true".to_owned(),
        Some((INTEGER, body)) if !body.is_empty() && body.len() <= 8 && body[0] < 0x80 => body
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
            .to_string(),
        _ => match value {
            [b] => b.to_string(),
            _ => format!(
                "0x{}",
                value.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
        },
    }
}

/// The freshness code: 32 bytes, raw or in one DER OCTET STRING.
fn freshness(value: &[u8]) -> &[u8] {
    der_primitive(value, &[OCTET_STRING])
        .filter(|_| value.len() != 32)
        .map_or(value, |(_, body)| body)
}

/// The attested key: only EC P-256 or P-384 (the keys an ACME payload with `HardwareBound` can
/// ask the Secure Enclave for), a valid point on its curve. Returns the SPKI DER.
pub(super) fn attested_key(leaf: &X509Certificate<'_>) -> Result<Vec<u8>, AttestError> {
    let spki = leaf.public_key();
    let algorithm = &spki.algorithm.algorithm;
    if *algorithm == OID_PKCS1_RSAENCRYPTION {
        return Err(certificate(
            "the attested key is RSA; only EC P-256 or P-384 keys are accepted",
        ));
    }
    if *algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(certificate(format!(
            "the attested key's algorithm {algorithm} is not accepted; only EC P-256 or P-384 keys"
        )));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let point: &[u8] = &spki.subject_public_key.data;
    let valid = match curve {
        Some(c) if c == OID_EC_P256 => p256::PublicKey::from_sec1_bytes(point).is_ok(),
        Some(c) if c == OID_NIST_EC_P384 => p384::PublicKey::from_sec1_bytes(point).is_ok(),
        Some(c) => {
            return Err(certificate(format!(
                "the attested EC key is on curve {c}; only P-256 or P-384 are accepted"
            )))
        }
        None => {
            return Err(certificate(
                "the attested EC key names no curve; only P-256 or P-384 are accepted",
            ))
        }
    };
    if !valid {
        return Err(certificate(
            "the attested EC key is not a valid point on its curve",
        ));
    }
    Ok(spki.raw.to_vec())
}

/// What the leaf's Apple extensions say.
#[derive(Debug, Default)]
pub(super) struct Facts {
    pub serial: Option<String>,
    pub udid: Option<String>,
    pub os_version: Option<String>,
    pub sip_enabled: Option<bool>,
    pub secure_boot: Option<String>,
    pub freshness: Option<Vec<u8>>,
    pub extensions: Vec<(String, Vec<u8>)>,
}

/// Reads the Apple extensions of the leaf (the chain code has already refused duplicates).
pub(super) fn read(leaf: &X509Certificate<'_>) -> Result<Facts, AttestError> {
    let mut facts = Facts::default();
    for ext in leaf.extensions() {
        let oid = ext.oid.to_id_string();
        if !oid.starts_with(APPLE_ARC) {
            continue;
        }
        let value = ext.value;
        match oid.as_str() {
            OID_SERIAL => facts.serial = Some(text("serial number", OID_SERIAL, value)?),
            OID_UDID => facts.udid = Some(text("UDID", OID_UDID, value)?),
            OID_OS_VERSION => {
                facts.os_version = Some(text("OS version", OID_OS_VERSION, value)?);
            }
            OID_FRESHNESS => facts.freshness = Some(freshness(value).to_vec()),
            OID_SIP => facts.sip_enabled = flag(value),
            OID_SECURE_BOOT => facts.secure_boot = Some(level(value)),
            _ => {}
        }
        facts.extensions.push((oid, value.to_vec()));
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_values_plain_or_wrapped() {
        assert_eq!(
            text("s", OID_SERIAL, b"C02XYZ123ABC").as_deref(),
            Ok("C02XYZ123ABC")
        );
        assert_eq!(
            text("s", OID_SERIAL, b"\x0c\x0cC02XYZ123ABC").as_deref(),
            Ok("C02XYZ123ABC")
        );
        assert_eq!(text("s", OID_SERIAL, b"\x13\x0217").as_deref(), Ok("17"));
        // A wrapper whose length does not match is not a wrapper: then control bytes are refused.
        assert!(text("s", OID_SERIAL, b"\x0c\x09C02").is_err());
        assert!(text("s", OID_SERIAL, b"").is_err());
        assert!(text("s", OID_SERIAL, &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn freshness_raw_or_wrapped() {
        let code = [7u8; 32];
        assert_eq!(freshness(&code), &code);
        let mut wrapped = vec![0x04, 0x20];
        wrapped.extend_from_slice(&code);
        assert_eq!(freshness(&wrapped), &code);
        // 32 raw bytes that happen to start like an OCTET STRING header stay raw.
        let mut tricky = [0u8; 32];
        tricky[0] = 0x04;
        tricky[1] = 30;
        assert_eq!(freshness(&tricky), &tricky);
    }

    #[test]
    fn flags_and_levels() {
        assert_eq!(flag(&[0x01, 0x01, 0xff]), Some(true));
        assert_eq!(flag(&[0x01, 0x01, 0x00]), Some(false));
        assert_eq!(flag(&[1]), Some(true));
        assert_eq!(flag(&[0]), Some(false));
        assert_eq!(flag(&[0x01, 0x01, 0x05]), None);
        assert_eq!(flag(b"yes"), None);
        assert_eq!(level(b"full"), "full");
        assert_eq!(level(&[0x02, 0x01, 0x02]), "2");
        assert_eq!(level(&[0x01, 0x01, 0xff]), "true");
        assert_eq!(level(&[3]), "3");
        assert_eq!(level(&[0x00, 0x81]), "0x0081");
    }
}
