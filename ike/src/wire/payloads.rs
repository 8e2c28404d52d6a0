//! The small payloads: Key Exchange (RFC 7296 §3.4), Certificate and Certificate Request
//! (§3.6, §3.7, opaque), Authentication (§3.8), Nonce (§3.9) and Delete (§3.11).
//! Vendor ID (§3.12) is opaque octets and lives directly in [`super::Payload`].

use std::fmt;

use super::suite::dh_group;
use super::{len16, ProtocolId, Reader, WireError};
use crate::proposal::DhGroup;

/// Key Exchange payload (§3.4): the D-H group and the sender's public value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KePayload {
    /// IANA D-H group number (transform type 4 IDs).
    pub group: u16,
    pub data: Vec<u8>,
}

impl KePayload {
    pub fn new(group: DhGroup, data: Vec<u8>) -> KePayload {
        KePayload {
            group: group.transform_id(),
            data,
        }
    }

    /// The group, if we implement it.
    pub fn dh_group(&self) -> Option<DhGroup> {
        dh_group(self.group)
    }

    /// Public value length of the groups we implement: §3.4 (MODP values padded to the
    /// prime's length), RFC 5903 §7 (ECP x‖y), RFC 8031 §3.1 (Curve25519).
    pub fn expected_len(group: DhGroup) -> usize {
        match group {
            DhGroup::Modp2048 => 256,
            DhGroup::Ecp256 => 64,
            DhGroup::Ecp384 => 96,
            DhGroup::Curve25519 => 32,
        }
    }

    /// Parses the body; for a group we implement, the value must have its exact length.
    pub fn parse(body: &[u8]) -> Result<KePayload, WireError> {
        let mut r = Reader::new(body, "KE payload");
        let group = r.u16()?;
        let _reserved = r.u16()?;
        let data = r.rest().to_vec();
        if data.is_empty() {
            return Err(WireError::Invalid {
                what: "KE payload",
                why: "empty key exchange data",
            });
        }
        if let Some(g) = dh_group(group) {
            if data.len() != Self::expected_len(g) {
                return Err(WireError::Invalid {
                    what: "KE payload",
                    why: "key exchange data length does not match its group (RFC 7296 §3.4)",
                });
            }
        }
        Ok(KePayload { group, data })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend_from_slice(&self.group.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.data);
        Ok(())
    }
}

/// Certificate encodings (§3.6).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertEncoding(pub u8);

impl CertEncoding {
    pub const X509_SIGNATURE: CertEncoding = CertEncoding(4);
    pub const CRL: CertEncoding = CertEncoding(7);
    pub const RAW_RSA_KEY: CertEncoding = CertEncoding(11);
    pub const HASH_URL_X509: CertEncoding = CertEncoding(12);
    pub const HASH_URL_BUNDLE: CertEncoding = CertEncoding(13);
}

impl fmt::Debug for CertEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            4 => f.write_str("X509_SIGNATURE"),
            7 => f.write_str("CRL"),
            11 => f.write_str("RAW_RSA_KEY"),
            12 => f.write_str("HASH_URL_X509"),
            13 => f.write_str("HASH_URL_BUNDLE"),
            n => write!(f, "CertEncoding({n})"),
        }
    }
}

/// Certificate (§3.6) or Certificate Request (§3.7): an encoding and opaque data. For CERTREQ
/// with X509_SIGNATURE the data is concatenated SHA-1 hashes of trusted CAs' public keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPayload {
    pub encoding: CertEncoding,
    pub data: Vec<u8>,
}

impl CertPayload {
    pub fn parse(body: &[u8]) -> Result<CertPayload, WireError> {
        let mut r = Reader::new(body, "CERT payload");
        let encoding = CertEncoding(r.u8()?);
        Ok(CertPayload {
            encoding,
            data: r.rest().to_vec(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.push(self.encoding.0);
        out.extend_from_slice(&self.data);
        Ok(())
    }

    /// The 20-octet CA key hashes of a CERTREQ (§3.7); `None` if the data is not a whole
    /// number of hashes.
    pub fn authorities(&self) -> Option<impl Iterator<Item = &[u8]>> {
        self.data
            .len()
            .is_multiple_of(20)
            .then(|| self.data.chunks_exact(20))
    }
}

/// Authentication methods (§3.8; RFC 7427 §3 for Digital Signature).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuthMethod(pub u8);

impl AuthMethod {
    pub const RSA_SIGNATURE: AuthMethod = AuthMethod(1);
    pub const SHARED_KEY_MIC: AuthMethod = AuthMethod(2);
    pub const DSS_SIGNATURE: AuthMethod = AuthMethod(3);
    pub const ECDSA_SHA256_P256: AuthMethod = AuthMethod(9);
    pub const ECDSA_SHA384_P384: AuthMethod = AuthMethod(10);
    pub const ECDSA_SHA512_P521: AuthMethod = AuthMethod(11);
    pub const DIGITAL_SIGNATURE: AuthMethod = AuthMethod(14);
}

impl fmt::Debug for AuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            1 => f.write_str("RSA_SIGNATURE"),
            2 => f.write_str("SHARED_KEY_MIC"),
            3 => f.write_str("DSS_SIGNATURE"),
            9 => f.write_str("ECDSA_SHA256_P256"),
            10 => f.write_str("ECDSA_SHA384_P384"),
            11 => f.write_str("ECDSA_SHA512_P521"),
            14 => f.write_str("DIGITAL_SIGNATURE"),
            n => write!(f, "AuthMethod({n})"),
        }
    }
}

/// Authentication payload (§3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPayload {
    pub method: AuthMethod,
    pub data: Vec<u8>,
}

impl AuthPayload {
    pub fn parse(body: &[u8]) -> Result<AuthPayload, WireError> {
        let mut r = Reader::new(body, "AUTH payload");
        let method = AuthMethod(r.u8()?);
        let _reserved = r.take(3)?;
        let data = r.rest().to_vec();
        if data.is_empty() {
            return Err(WireError::Invalid {
                what: "AUTH payload",
                why: "empty authentication data",
            });
        }
        Ok(AuthPayload { method, data })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.push(self.method.0);
        out.extend_from_slice(&[0, 0, 0]);
        out.extend_from_slice(&self.data);
        Ok(())
    }
}

/// Nonce payload (§3.9): 16 to 256 octets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoncePayload {
    pub data: Vec<u8>,
}

impl NoncePayload {
    pub const MIN_LEN: usize = 16;
    pub const MAX_LEN: usize = 256;

    pub fn parse(body: &[u8]) -> Result<NoncePayload, WireError> {
        Self::check(body.len())?;
        Ok(NoncePayload {
            data: body.to_vec(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        Self::check(self.data.len())?;
        out.extend_from_slice(&self.data);
        Ok(())
    }

    fn check(len: usize) -> Result<(), WireError> {
        // §3.9: "at least 128 bits in size … MUST NOT be more than 256 octets".
        if (Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            Ok(())
        } else {
            Err(WireError::NonceLength(len))
        }
    }
}

/// Delete payload (§3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeletePayload {
    /// Deletes the IKE SA the message belongs to: SPI size 0, no SPIs.
    Ike,
    /// Deletes Child SAs: ESP or AH, 4-octet SPIs as the recipient sends them (inbound for
    /// the sender of the Delete).
    Child {
        protocol: ProtocolId,
        spis: Vec<u32>,
    },
}

impl DeletePayload {
    pub fn parse(body: &[u8]) -> Result<DeletePayload, WireError> {
        let mut r = Reader::new(body, "Delete payload");
        let protocol = ProtocolId(r.u8()?);
        let spi_size = r.u8()?;
        let count = usize::from(r.u16()?);
        let invalid = |why| WireError::Invalid {
            what: "Delete payload",
            why,
        };
        // §3.11: SPI Size is zero for IKE and four for AH and ESP.
        let result = match (protocol, spi_size) {
            (ProtocolId::IKE, 0) if count == 0 => DeletePayload::Ike,
            (ProtocolId::IKE, _) => return Err(invalid("an IKE SA delete carries no SPI")),
            (ProtocolId::ESP | ProtocolId::AH, 4) => {
                let spis = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
                DeletePayload::Child { protocol, spis }
            }
            (ProtocolId::ESP | ProtocolId::AH, _) => {
                return Err(invalid("ESP and AH SPIs are 4 octets"))
            }
            _ => return Err(invalid("unknown protocol ID")),
        };
        if !r.is_empty() {
            return Err(invalid("octets after the last SPI"));
        }
        Ok(result)
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        match self {
            DeletePayload::Ike => out.extend_from_slice(&[ProtocolId::IKE.0, 0, 0, 0]),
            DeletePayload::Child { protocol, spis } => {
                out.push(protocol.0);
                out.push(4);
                out.extend_from_slice(&len16("Delete SPI list", spis.len())?.to_be_bytes());
                for spi in spis {
                    out.extend_from_slice(&spi.to_be_bytes());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ke_round_trip_and_length_checks() {
        let ke = KePayload::new(DhGroup::Curve25519, vec![9; 32]);
        let mut out = Vec::new();
        ke.emit(&mut out).unwrap();
        assert_eq!(&out[..4], &[0, 31, 0, 0]);
        assert_eq!(KePayload::parse(&out).unwrap(), ke);
        assert_eq!(ke.dh_group(), Some(DhGroup::Curve25519));
        // Wrong length for a group we implement, empty data, truncated header.
        assert!(KePayload::parse(&[0, 31, 0, 0, 1, 2, 3]).is_err());
        assert!(KePayload::parse(&[0, 99, 0, 0]).is_err());
        assert!(KePayload::parse(&[0, 31, 0]).is_err());
        // An unknown group keeps whatever length it has: the responder answers
        // INVALID_KE_PAYLOAD rather than INVALID_SYNTAX.
        let other = KePayload::parse(&[0, 2, 0, 0, 1, 2, 3]).unwrap();
        assert_eq!(other.group, 2);
        assert_eq!(other.dh_group(), None);
    }

    #[test]
    fn cert_auth_round_trip() {
        let cert = CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![0x30, 0x82, 1, 2],
        };
        let mut out = Vec::new();
        cert.emit(&mut out).unwrap();
        assert_eq!(CertPayload::parse(&out).unwrap(), cert);
        assert!(CertPayload::parse(&[]).is_err());
        let req = CertPayload {
            encoding: CertEncoding::X509_SIGNATURE,
            data: vec![7; 40],
        };
        assert_eq!(req.authorities().map(|a| a.count()), Some(2));
        assert!(cert.authorities().is_none());

        let auth = AuthPayload {
            method: AuthMethod::SHARED_KEY_MIC,
            data: vec![0xaa; 32],
        };
        let mut out = Vec::new();
        auth.emit(&mut out).unwrap();
        assert_eq!(&out[..4], &[2, 0, 0, 0]);
        assert_eq!(AuthPayload::parse(&out).unwrap(), auth);
        for cut in 0..5 {
            assert!(AuthPayload::parse(&out[..cut]).is_err());
        }
    }

    #[test]
    fn nonce_bounds() {
        for len in [0, 15, 257, 1000] {
            assert_eq!(
                NoncePayload::parse(&vec![1; len]),
                Err(WireError::NonceLength(len))
            );
            assert!(NoncePayload { data: vec![1; len] }
                .emit(&mut Vec::new())
                .is_err());
        }
        for len in [16, 32, 256] {
            let nonce = NoncePayload::parse(&vec![1; len]).unwrap();
            let mut out = Vec::new();
            nonce.emit(&mut out).unwrap();
            assert_eq!(out.len(), len);
        }
    }

    #[test]
    fn delete_round_trip_and_checks() {
        for d in [
            DeletePayload::Ike,
            DeletePayload::Child {
                protocol: ProtocolId::ESP,
                spis: vec![0x1000, 0xdead_beef],
            },
        ] {
            let mut out = Vec::new();
            d.emit(&mut out).unwrap();
            assert_eq!(DeletePayload::parse(&out).unwrap(), d);
            for cut in 0..out.len() {
                assert!(DeletePayload::parse(&out[..cut]).is_err());
            }
        }
        assert!(DeletePayload::parse(&[1, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(DeletePayload::parse(&[3, 8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(DeletePayload::parse(&[3, 4, 0, 1, 0, 0, 0, 1, 9]).is_err());
        assert!(DeletePayload::parse(&[9, 4, 0, 0]).is_err());
    }
}
