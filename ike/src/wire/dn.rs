//! Distinguished names for ID_DER_ASN1_DN (RFC 7296 §3.5): the DER `Name` of RFC 5280 §4.1.2.4
//! to and from the text form [`crate::Identity::Dn`] keeps (`C=CH, O=Example, CN=vpn`).
//!
//! The text follows strongSwan, not RFC 4514: relative distinguished names in DER order,
//! separated by `, ` (or `/`), strongSwan's attribute names (`SN` is serialNumber, `S` is
//! surname, `E` is emailAddress), unknown attributes as dotted OIDs, no escaping. Only what an
//! IKE identity needs: the `SEQUENCE OF SET OF AttributeTypeAndValue` with string values.

use super::{Reader, WireError};

/// strongSwan's names and the DER content octets of their OIDs.
const ATTRIBUTES: &[(&str, &[u8])] = &[
    ("CN", &[0x55, 0x04, 0x03]),
    ("S", &[0x55, 0x04, 0x04]),
    ("SN", &[0x55, 0x04, 0x05]),
    ("C", &[0x55, 0x04, 0x06]),
    ("L", &[0x55, 0x04, 0x07]),
    ("ST", &[0x55, 0x04, 0x08]),
    ("O", &[0x55, 0x04, 0x0a]),
    ("OU", &[0x55, 0x04, 0x0b]),
    ("T", &[0x55, 0x04, 0x0c]),
    ("N", &[0x55, 0x04, 0x29]),
    ("G", &[0x55, 0x04, 0x2a]),
    ("I", &[0x55, 0x04, 0x2b]),
    ("dnQualifier", &[0x55, 0x04, 0x2e]),
    ("E", &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
    (
        "DC",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
    ),
    (
        "UID",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
    ),
];

const ALIASES: &[(&str, &str)] = &[
    ("emailAddress", "E"),
    ("Email", "E"),
    ("serialNumber", "SN"),
];

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTF8_STRING: u8 = 0x0c;
const PRINTABLE_STRING: u8 = 0x13;
const TELETEX_STRING: u8 = 0x14;
const IA5_STRING: u8 = 0x16;
const UNIVERSAL_STRING: u8 = 0x1c;
const BMP_STRING: u8 = 0x1e;

fn invalid(why: &'static str) -> WireError {
    WireError::Invalid {
        what: "distinguished name",
        why,
    }
}

/// Reads one DER TLV with a one-octet tag and a definite length of at most 3 octets.
fn tlv<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a [u8]), WireError> {
    let tag = r.u8()?;
    if tag & 0x1f == 0x1f {
        return Err(invalid("multi-octet tags are not used in names"));
    }
    let first = r.u8()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let octets = first & 0x7f;
        if octets == 0 || octets > 3 {
            return Err(invalid("indefinite or oversized length"));
        }
        let mut len = 0usize;
        for _ in 0..octets {
            len = (len << 8) | usize::from(r.u8()?);
        }
        len
    };
    Ok((tag, r.take(len)?))
}

fn push_tlv(out: &mut Vec<u8>, tag: u8, content: &[u8]) -> Result<(), WireError> {
    out.push(tag);
    let len = content.len();
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => {
            return Err(WireError::TooLong {
                what: "distinguished name",
                length: len,
                max: 0xffff,
            })
        }
    }
    out.extend_from_slice(content);
    Ok(())
}

fn oid_to_text(oid: &[u8]) -> Result<String, WireError> {
    let mut arcs: Vec<u64> = Vec::new();
    let mut value: u64 = 0;
    let mut pending = false;
    for &b in oid {
        if value > (u64::MAX >> 7) {
            return Err(invalid("OID arc too large"));
        }
        value = (value << 7) | u64::from(b & 0x7f);
        pending = true;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                // X.690 §8.19.4: the first subidentifier packs the first two arcs.
                let (first, second) = match value {
                    0..=39 => (0, value),
                    40..=79 => (1, value - 40),
                    _ => (2, value - 80),
                };
                arcs.extend([first, second]);
            } else {
                arcs.push(value);
            }
            value = 0;
            pending = false;
        }
    }
    if pending || arcs.is_empty() {
        return Err(invalid("truncated OID"));
    }
    Ok(arcs
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("."))
}

fn text_to_oid(text: &str) -> Option<Vec<u8>> {
    let arcs: Vec<u64> = text
        .split('.')
        .map(|a| a.parse().ok())
        .collect::<Option<_>>()?;
    let (&first, &second) = (arcs.first()?, arcs.get(1)?);
    if first > 2 || (first < 2 && second >= 40) {
        return None;
    }
    let mut out = Vec::new();
    let head = first.checked_mul(40)?.checked_add(second)?;
    for arc in std::iter::once(head).chain(arcs.iter().skip(2).copied()) {
        let mut groups = vec![(arc & 0x7f) as u8];
        let mut rest = arc >> 7;
        while rest != 0 {
            groups.push((rest & 0x7f) as u8 | 0x80);
            rest >>= 7;
        }
        out.extend(groups.iter().rev());
    }
    Some(out)
}

fn value_to_text(tag: u8, value: &[u8]) -> Result<String, WireError> {
    let text = match tag {
        UTF8_STRING => String::from_utf8(value.to_vec()).ok(),
        PRINTABLE_STRING | IA5_STRING => value
            .is_ascii()
            .then(|| value.iter().map(|&b| char::from(b)).collect()),
        // Teletex in practice carries Latin-1.
        TELETEX_STRING => Some(value.iter().map(|&b| char::from(b)).collect()),
        BMP_STRING => {
            let units = value
                .chunks(2)
                .map(|c| match c {
                    [hi, lo] => Some(u16::from_be_bytes([*hi, *lo])),
                    _ => None,
                })
                .collect::<Option<Vec<u16>>>();
            units.and_then(|u| char::decode_utf16(u).collect::<Result<String, _>>().ok())
        }
        UNIVERSAL_STRING => value
            .chunks(4)
            .map(|c| match c {
                [a, b, c, d] => char::from_u32(u32::from_be_bytes([*a, *b, *c, *d])),
                _ => None,
            })
            .collect::<Option<String>>(),
        _ => {
            // RFC 4514 §2.4: other types as `#` and the hex of their DER encoding.
            let mut der = Vec::new();
            push_tlv(&mut der, tag, value)?;
            Some(
                std::iter::once("#".to_string())
                    .chain(der.iter().map(|b| format!("{b:02x}")))
                    .collect(),
            )
        }
    };
    text.ok_or_else(|| invalid("attribute value is not a valid string"))
}

/// The text form of a DER-encoded name (RFC 5280 §4.1.2.4).
pub fn dn_from_der(der: &[u8]) -> Result<String, WireError> {
    let mut outer = Reader::new(der, "distinguished name");
    let (tag, name) = tlv(&mut outer)?;
    if tag != SEQUENCE || !outer.is_empty() {
        return Err(invalid("not a single SEQUENCE"));
    }
    let mut parts = Vec::new();
    let mut rdns = Reader::new(name, "distinguished name");
    while !rdns.is_empty() {
        let (tag, rdn) = tlv(&mut rdns)?;
        if tag != SET {
            return Err(invalid("relative distinguished name is not a SET"));
        }
        let mut atvs = Reader::new(rdn, "distinguished name");
        if atvs.is_empty() {
            return Err(invalid("empty relative distinguished name"));
        }
        while !atvs.is_empty() {
            let (tag, atv) = tlv(&mut atvs)?;
            if tag != SEQUENCE {
                return Err(invalid("attribute is not a SEQUENCE"));
            }
            let mut fields = Reader::new(atv, "distinguished name");
            let (oid_tag, oid) = tlv(&mut fields)?;
            let (value_tag, value) = tlv(&mut fields)?;
            if oid_tag != OID || !fields.is_empty() {
                return Err(invalid("attribute is not an OID and one value"));
            }
            let key = match ATTRIBUTES.iter().find(|(_, o)| *o == oid) {
                Some((name, _)) => (*name).to_string(),
                None => oid_to_text(oid)?,
            };
            parts.push(format!("{key}={}", value_to_text(value_tag, value)?));
        }
    }
    if parts.is_empty() {
        return Err(invalid("empty name"));
    }
    Ok(parts.join(", "))
}

fn printable(c: char) -> bool {
    // X.680 §41.4 PrintableString characters.
    c.is_ascii_alphanumeric() || " '()+,-./:=?".contains(c)
}

/// The DER encoding of a name written as [`dn_from_der`] writes it (or with `/` separators).
/// Each `key=value` becomes its own RDN; values are PrintableString where they fit, IA5String
/// for `E` and `DC`, UTF8String otherwise.
pub fn dn_to_der(text: &str) -> Result<Vec<u8>, WireError> {
    let mut rdns = Vec::new();
    for part in text
        .split([',', '/'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| invalid("a part has no `=`"))?;
        let (key, value) = (key.trim(), value.trim());
        let key = ALIASES
            .iter()
            .find(|(alias, _)| alias.eq_ignore_ascii_case(key))
            .map_or(key, |(_, name)| name);
        let oid = match ATTRIBUTES.iter().find(|(n, _)| n.eq_ignore_ascii_case(key)) {
            Some((_, oid)) => oid.to_vec(),
            None => text_to_oid(key).ok_or_else(|| invalid("unknown attribute name"))?,
        };
        let tag = if matches!(key.to_ascii_uppercase().as_str(), "E" | "DC") && value.is_ascii() {
            IA5_STRING
        } else if value.chars().all(printable) {
            PRINTABLE_STRING
        } else {
            UTF8_STRING
        };
        let mut atv = Vec::new();
        push_tlv(&mut atv, OID, &oid)?;
        push_tlv(&mut atv, tag, value.as_bytes())?;
        let mut seq = Vec::new();
        push_tlv(&mut seq, SEQUENCE, &atv)?;
        push_tlv(&mut rdns, SET, &seq)?;
    }
    if rdns.is_empty() {
        return Err(invalid("empty name"));
    }
    let mut out = Vec::new();
    push_tlv(&mut out, SEQUENCE, &rdns)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encoding() {
        let der = dn_to_der("CN=vpn").unwrap();
        assert_eq!(
            der,
            [
                0x30, 0x0e, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x03, b'v',
                b'p', b'n'
            ]
        );
        assert_eq!(dn_from_der(&der).unwrap(), "CN=vpn");
    }

    #[test]
    fn round_trips_strongswan_text() {
        for text in [
            "C=CH, O=strongSwan, CN=moon.strongswan.org",
            "C=US, O=Example Inc., OU=VPN, CN=gw1.example.com, E=ops@example.com",
            "DC=com, DC=example, UID=jdoe, SN=1234",
            "CN=Grüße, O=Ä",
            "2.5.4.97=VATDE-123, CN=x",
        ] {
            let der = dn_to_der(text).unwrap();
            assert_eq!(dn_from_der(&der).unwrap(), text);
        }
        let slashes = dn_to_der("/C=CH/O=strongSwan/CN=moon").unwrap();
        assert_eq!(
            dn_from_der(&slashes).unwrap(),
            "C=CH, O=strongSwan, CN=moon"
        );
        let aliases = dn_to_der("emailAddress=a@b.c, serialNumber=7").unwrap();
        assert_eq!(dn_from_der(&aliases).unwrap(), "E=a@b.c, SN=7");
    }

    #[test]
    fn other_string_types_decode() {
        // BMPString "ab" and TeletexString "é" as CN.
        let bmp = [
            0x30, 0x0f, 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x1e, 0x04, 0, b'a',
            0, b'b',
        ];
        assert_eq!(dn_from_der(&bmp).unwrap(), "CN=ab");
        let t61 = [
            0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x14, 0x01, 0xe9,
        ];
        assert_eq!(dn_from_der(&t61).unwrap(), "CN=é");
        let octets = [
            0x30, 0x0c, 0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x03, 0x04, 0x01, 0xab,
        ];
        assert_eq!(dn_from_der(&octets).unwrap(), "CN=#0401ab");
    }

    #[test]
    fn refuses_malformed() {
        let der = dn_to_der("C=CH, O=strongSwan, CN=moon").unwrap();
        for cut in 0..der.len() {
            assert!(dn_from_der(&der[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = der.clone();
        trailing.push(0);
        assert!(dn_from_der(&trailing).is_err());
        assert!(dn_from_der(&[0x30, 0x80]).is_err());
        assert!(dn_from_der(&[0x30, 0x00]).is_err());
        assert!(dn_to_der("CN").is_err());
        assert!(dn_to_der("XYZ=1").is_err());
        assert!(dn_to_der(" , ").is_err());
        assert_eq!(oid_to_text(&[0x55, 0x84]), Err(invalid("truncated OID")));
        assert!(oid_to_text(&[0xff; 12]).is_err());
    }
}
