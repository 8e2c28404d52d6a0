//! Identification payloads IDi / IDr (RFC 7296 §3.5).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{dn_from_der, dn_to_der, Reader, WireError};
use crate::Identity;

/// ID types (§3.5; RFC 7619 for ID_NULL).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdType(pub u8);

impl IdType {
    pub const IPV4_ADDR: IdType = IdType(1);
    pub const FQDN: IdType = IdType(2);
    pub const RFC822_ADDR: IdType = IdType(3);
    pub const IPV6_ADDR: IdType = IdType(5);
    pub const DER_ASN1_DN: IdType = IdType(9);
    pub const DER_ASN1_GN: IdType = IdType(10);
    pub const KEY_ID: IdType = IdType(11);
    pub const NULL: IdType = IdType(13);
}

impl fmt::Debug for IdType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("ID_IPV4_ADDR"),
            2 => f.write_str("ID_FQDN"),
            3 => f.write_str("ID_RFC822_ADDR"),
            5 => f.write_str("ID_IPV6_ADDR"),
            9 => f.write_str("ID_DER_ASN1_DN"),
            10 => f.write_str("ID_DER_ASN1_GN"),
            11 => f.write_str("ID_KEY_ID"),
            13 => f.write_str("ID_NULL"),
            n => write!(f, "IdType({n})"),
        }
    }
}

/// An IDi or IDr payload body.
///
/// The RESERVED octets are kept as received: the AUTH payload signs the ID payload body as
/// sent (§2.15, "RestOfInitIDPayload"), reserved octets included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdPayload {
    pub id_type: IdType,
    pub reserved: [u8; 3],
    pub data: Vec<u8>,
}

impl IdPayload {
    pub fn parse(body: &[u8]) -> Result<IdPayload, WireError> {
        let mut r = Reader::new(body, "ID payload");
        let id_type = IdType(r.u8()?);
        let reserved = r.array()?;
        Ok(IdPayload {
            id_type,
            reserved,
            data: r.rest().to_vec(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.push(self.id_type.0);
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.data);
        Ok(())
    }

    /// The body octets the AUTH computation uses (§2.15).
    pub fn auth_octets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.data.len());
        out.push(self.id_type.0);
        out.extend_from_slice(&self.reserved);
        out.extend_from_slice(&self.data);
        out
    }

    /// Our identity on the wire. A DN is DER-encoded from its text form.
    pub fn from_identity(identity: &Identity) -> Result<IdPayload, WireError> {
        let (id_type, data) = match identity {
            Identity::Ip(IpAddr::V4(a)) => (IdType::IPV4_ADDR, a.octets().to_vec()),
            Identity::Ip(IpAddr::V6(a)) => (IdType::IPV6_ADDR, a.octets().to_vec()),
            Identity::Fqdn(name) => (IdType::FQDN, name.as_bytes().to_vec()),
            Identity::Email(mail) => (IdType::RFC822_ADDR, mail.as_bytes().to_vec()),
            Identity::Dn(dn) => (IdType::DER_ASN1_DN, dn_to_der(dn)?),
            Identity::KeyId(bytes) => (IdType::KEY_ID, bytes.clone()),
        };
        Ok(IdPayload {
            id_type,
            reserved: [0; 3],
            data,
        })
    }

    /// The peer's identity, validated as the configuration's identities are (FQDNs
    /// lower-cased), so the two compare with `==`.
    pub fn to_identity(&self) -> Result<Identity, WireError> {
        let text = || match std::str::from_utf8(&self.data) {
            Ok(t) if t.trim() == t => Ok(t),
            _ => Err(WireError::BadIdentity(
                "identity is not UTF-8 without surrounding spaces".into(),
            )),
        };
        let parsed = |prefixed: String| {
            Identity::parse(&prefixed).map_err(|e| WireError::BadIdentity(e.to_string()))
        };
        match self.id_type {
            IdType::IPV4_ADDR => <[u8; 4]>::try_from(self.data.as_slice())
                .map(|a| Identity::Ip(IpAddr::V4(Ipv4Addr::from(a))))
                .map_err(|_| WireError::BadIdentity("ID_IPV4_ADDR is not 4 octets".into())),
            IdType::IPV6_ADDR => <[u8; 16]>::try_from(self.data.as_slice())
                .map(|a| Identity::Ip(IpAddr::V6(Ipv6Addr::from(a))))
                .map_err(|_| WireError::BadIdentity("ID_IPV6_ADDR is not 16 octets".into())),
            IdType::FQDN => match parsed(format!("fqdn:{}", text()?))? {
                id @ Identity::Fqdn(_) => Ok(id),
                _ => Err(WireError::BadIdentity("not an FQDN".into())),
            },
            IdType::RFC822_ADDR => match parsed(format!("email:{}", text()?))? {
                id @ Identity::Email(_) => Ok(id),
                _ => Err(WireError::BadIdentity("not an e-mail address".into())),
            },
            IdType::DER_ASN1_DN => Ok(Identity::Dn(dn_from_der(&self.data)?)),
            IdType::KEY_ID if !self.data.is_empty() => Ok(Identity::KeyId(self.data.clone())),
            IdType::KEY_ID => Err(WireError::BadIdentity("empty ID_KEY_ID".into())),
            other => Err(WireError::UnsupportedIdType(other.0)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_round_trips() {
        for text in [
            "198.51.100.1",
            "2001:db8::1",
            "vpn.example.com",
            "ops@example.com",
            "keyid:0a0b0c",
            "C=CH, O=strongSwan, CN=moon.strongswan.org",
        ] {
            let identity = Identity::parse(text).unwrap();
            let payload = IdPayload::from_identity(&identity).unwrap();
            assert_eq!(payload.id_type.0, identity.id_type(), "{text}");
            let mut out = Vec::new();
            payload.emit(&mut out).unwrap();
            assert_eq!(out, payload.auth_octets());
            let parsed = IdPayload::parse(&out).unwrap();
            assert_eq!(parsed, payload);
            assert_eq!(parsed.to_identity().unwrap(), identity, "{text}");
        }
    }

    #[test]
    fn known_bytes() {
        let payload = IdPayload::from_identity(&Identity::parse("198.51.100.1").unwrap()).unwrap();
        let mut out = Vec::new();
        payload.emit(&mut out).unwrap();
        assert_eq!(out, [1, 0, 0, 0, 198, 51, 100, 1]);
    }

    #[test]
    fn peer_identities_are_normalised_and_checked() {
        let fqdn = IdPayload {
            id_type: IdType::FQDN,
            reserved: [0xff; 3],
            data: b"VPN.Example.COM".to_vec(),
        };
        assert_eq!(
            fqdn.to_identity().unwrap(),
            Identity::Fqdn("vpn.example.com".into())
        );
        // Reserved octets are kept for AUTH.
        assert_eq!(&fqdn.auth_octets()[..4], &[2, 0xff, 0xff, 0xff]);
        for (id_type, data) in [
            (IdType::IPV4_ADDR, vec![1, 2, 3]),
            (IdType::IPV6_ADDR, vec![0; 4]),
            (IdType::FQDN, b"bad name!".to_vec()),
            (IdType::FQDN, vec![0xff, 0xfe]),
            (IdType::FQDN, b" vpn.example.com".to_vec()),
            (IdType::RFC822_ADDR, b"no-at-sign".to_vec()),
            (IdType::DER_ASN1_DN, vec![0x30, 0x05]),
            (IdType::KEY_ID, vec![]),
            (IdType::NULL, vec![]),
            (IdType::DER_ASN1_GN, vec![1]),
        ] {
            let p = IdPayload {
                id_type,
                reserved: [0; 3],
                data,
            };
            assert!(p.to_identity().is_err(), "{p:?}");
        }
        for cut in 0..4 {
            assert!(IdPayload::parse(&[2, 0, 0, 0][..cut]).is_err());
        }
    }
}
