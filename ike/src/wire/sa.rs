//! Security Association payload (RFC 7296 §3.3): proposals, transforms and attributes.
//!
//! Parsing keeps every transform, including ones this crate does not implement, so that a
//! responder can tell which proposals it can accept (§3.3.6). [`Proposal::to_ike`] and
//! [`Proposal::to_esp`] (in `suite.rs`) map a proposal onto [`crate::IkeProposal`] /
//! [`crate::EspProposal`] with the transforms we support, or say why the proposal is
//! unacceptable.

use std::fmt;

use super::{len16, Reader, WireError};

/// Transform types (RFC 7296 §3.3.2).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransformType(pub u8);

impl TransformType {
    pub const ENCR: TransformType = TransformType(1);
    pub const PRF: TransformType = TransformType(2);
    pub const INTEG: TransformType = TransformType(3);
    /// Diffie-Hellman group (renamed Key Exchange Method by RFC 9370).
    pub const DH: TransformType = TransformType(4);
    pub const ESN: TransformType = TransformType(5);

    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "ENCR",
            2 => "PRF",
            3 => "INTEG",
            4 => "D-H",
            5 => "ESN",
            _ => return None,
        })
    }
}

impl fmt::Debug for TransformType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "TransformType({})", self.0),
        }
    }
}

impl fmt::Display for TransformType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Security protocol identifiers (RFC 7296 §3.3.1; 0 only in Notify payloads, §3.10).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolId(pub u8);

impl ProtocolId {
    pub const NONE: ProtocolId = ProtocolId(0);
    pub const IKE: ProtocolId = ProtocolId(1);
    pub const AH: ProtocolId = ProtocolId(2);
    pub const ESP: ProtocolId = ProtocolId(3);
}

impl fmt::Debug for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            0 => f.write_str("NONE"),
            1 => f.write_str("IKE"),
            2 => f.write_str("AH"),
            3 => f.write_str("ESP"),
            n => write!(f, "ProtocolId({n})"),
        }
    }
}

impl fmt::Display for ProtocolId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The Key Length attribute type (RFC 7296 §3.3.5), always in TV format.
pub const ATTR_KEY_LENGTH: u16 = 14;

const AF_TV: u16 = 0x8000;

/// A transform attribute's value: TV (AF = 1, two octets) or TLV (AF = 0) (§3.3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttributeValue {
    Short(u16),
    Long(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransformAttribute {
    /// Attribute type without the AF bit.
    pub kind: u16,
    pub value: AttributeValue,
}

/// One transform (§3.3.2), with its ID as sent and all its attributes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Transform {
    pub kind: TransformType,
    pub id: u16,
    pub attributes: Vec<TransformAttribute>,
}

/// One proposal (§3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub number: u8,
    pub protocol: ProtocolId,
    /// Empty in IKE_SA_INIT, 8 octets when rekeying an IKE SA, 4 octets for ESP (§3.3.1).
    pub spi: Vec<u8>,
    pub transforms: Vec<Transform>,
}

/// The SA payload: one or more proposals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaPayload {
    pub proposals: Vec<Proposal>,
}

impl Transform {
    pub fn new(kind: TransformType, id: u16, key_length: Option<u16>) -> Transform {
        Transform {
            kind,
            id,
            attributes: key_length
                .map(|bits| TransformAttribute {
                    kind: ATTR_KEY_LENGTH,
                    value: AttributeValue::Short(bits),
                })
                .into_iter()
                .collect(),
        }
    }

    /// The Key Length attribute, if present in TV format.
    pub fn key_length(&self) -> Option<u16> {
        self.attributes.iter().find_map(|a| match a.value {
            AttributeValue::Short(bits) if a.kind == ATTR_KEY_LENGTH => Some(bits),
            _ => None,
        })
    }

    fn parse(body: &[u8]) -> Result<Transform, WireError> {
        let mut r = Reader::new(body, "transform");
        let kind = TransformType(r.u8()?);
        let _reserved = r.u8()?;
        let id = r.u16()?;
        let mut attributes = Vec::new();
        while !r.is_empty() {
            let word = r.u16()?;
            let kind = word & !AF_TV;
            let value = if word & AF_TV != 0 {
                AttributeValue::Short(r.u16()?)
            } else {
                let len = usize::from(r.u16()?);
                AttributeValue::Long(r.take(len)?.to_vec())
            };
            attributes.push(TransformAttribute { kind, value });
        }
        Ok(Transform {
            kind,
            id,
            attributes,
        })
    }

    fn emit(&self, out: &mut Vec<u8>, last: bool) -> Result<(), WireError> {
        let mut body = vec![self.kind.0, 0];
        body.extend_from_slice(&self.id.to_be_bytes());
        for a in &self.attributes {
            if a.kind & AF_TV != 0 {
                return Err(WireError::Invalid {
                    what: "transform attribute",
                    why: "attribute type above 32767",
                });
            }
            match &a.value {
                AttributeValue::Short(v) => {
                    out_u16(&mut body, a.kind | AF_TV);
                    out_u16(&mut body, *v);
                }
                AttributeValue::Long(v) => {
                    out_u16(&mut body, a.kind);
                    out_u16(&mut body, len16("transform attribute", v.len())?);
                    body.extend_from_slice(v);
                }
            }
        }
        // §3.3.2: Last Substruc is 3 when more transforms follow, 0 for the last.
        out.push(if last { 0 } else { 3 });
        out.push(0);
        out_u16(out, len16("transform", body.len() + 4)?);
        out.extend_from_slice(&body);
        Ok(())
    }
}

fn out_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

impl Proposal {
    fn parse(body: &[u8]) -> Result<Proposal, WireError> {
        let mut r = Reader::new(body, "proposal");
        let number = r.u8()?;
        let protocol = ProtocolId(r.u8()?);
        let spi_size = usize::from(r.u8()?);
        let count = r.u8()?;
        let spi = r.take(spi_size)?.to_vec();
        let mut transforms = Vec::with_capacity(usize::from(count));
        for i in 0..count {
            let more = r.u8()?;
            let _reserved = r.u8()?;
            let len = usize::from(r.u16()?);
            if len < 8 {
                return Err(WireError::LengthTooSmall {
                    what: "transform",
                    length: len,
                    minimum: 8,
                });
            }
            transforms.push(Transform::parse(r.take(len - 4)?)?);
            // §3.3.2: 3 while more transforms follow, 0 on the last.
            let expected = if i + 1 == count { 0 } else { 3 };
            if more != expected {
                return Err(WireError::Invalid {
                    what: "transform",
                    why: "Last Substruc does not match Num Transforms",
                });
            }
        }
        if !r.is_empty() {
            return Err(WireError::Invalid {
                what: "proposal",
                why: "octets after the last transform",
            });
        }
        Ok(Proposal {
            number,
            protocol,
            spi,
            transforms,
        })
    }

    fn emit(&self, out: &mut Vec<u8>, last: bool) -> Result<(), WireError> {
        let spi_size = u8::try_from(self.spi.len()).map_err(|_| WireError::TooLong {
            what: "proposal SPI",
            length: self.spi.len(),
            max: 255,
        })?;
        let count = u8::try_from(self.transforms.len()).map_err(|_| WireError::TooLong {
            what: "transform list",
            length: self.transforms.len(),
            max: 255,
        })?;
        let mut body = vec![self.number, self.protocol.0, spi_size, count];
        body.extend_from_slice(&self.spi);
        for (i, t) in self.transforms.iter().enumerate() {
            t.emit(&mut body, i + 1 == self.transforms.len())?;
        }
        // §3.3.1: Last Substruc is 2 when more proposals follow, 0 for the last.
        out.push(if last { 0 } else { 2 });
        out.push(0);
        out_u16(out, len16("proposal", body.len() + 4)?);
        out.extend_from_slice(&body);
        Ok(())
    }
}

impl SaPayload {
    /// Parses the SA payload body. At least one proposal; the Last Substruc values must
    /// agree with where the proposals end (§3.3.1).
    pub fn parse(body: &[u8]) -> Result<SaPayload, WireError> {
        let mut r = Reader::new(body, "SA payload");
        let mut proposals = Vec::new();
        loop {
            let more = r.u8()?;
            let _reserved = r.u8()?;
            let len = usize::from(r.u16()?);
            if len < 8 {
                return Err(WireError::LengthTooSmall {
                    what: "proposal",
                    length: len,
                    minimum: 8,
                });
            }
            proposals.push(Proposal::parse(r.take(len - 4)?)?);
            match more {
                0 => break,
                2 => continue,
                _ => {
                    return Err(WireError::Invalid {
                        what: "proposal",
                        why: "Last Substruc is neither 0 nor 2",
                    })
                }
            }
        }
        if !r.is_empty() {
            return Err(WireError::Invalid {
                what: "SA payload",
                why: "octets after the last proposal",
            });
        }
        Ok(SaPayload { proposals })
    }

    /// Appends the SA payload body.
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        if self.proposals.is_empty() {
            return Err(WireError::Invalid {
                what: "SA payload",
                why: "no proposal",
            });
        }
        for (i, p) in self.proposals.iter().enumerate() {
            p.emit(out, i + 1 == self.proposals.len())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IkeProposal;

    fn ike(text: &str) -> IkeProposal {
        IkeProposal::parse(text).unwrap()
    }

    #[test]
    fn ike_proposal_bytes_match_rfc_layout() {
        let sa = SaPayload {
            proposals: vec![Proposal::from_ike(
                1,
                &[],
                &ike("aes256gcm16-prfsha256-ecp256"),
            )],
        };
        let mut out = Vec::new();
        sa.emit(&mut out).unwrap();
        #[rustfmt::skip]
        let expected = [
            0x00, 0x00, 0x00, 0x24, 0x01, 0x01, 0x00, 0x03, // last, len 36, #1, IKE, no SPI, 3
            0x03, 0x00, 0x00, 0x0c, 0x01, 0x00, 0x00, 0x14, 0x80, 0x0e, 0x01, 0x00, // ENCR 20, KL 256
            0x03, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x05, // PRF 5
            0x00, 0x00, 0x00, 0x08, 0x04, 0x00, 0x00, 0x13, // D-H 19
        ];
        assert_eq!(out, expected);
        assert_eq!(SaPayload::parse(&out).unwrap(), sa);
    }

    #[test]
    fn malformed_sa_payloads_are_refused() {
        let sa = SaPayload {
            proposals: vec![
                Proposal::from_ike(1, &[], &ike("aes256gcm16-prfsha256-ecp256")),
                Proposal::from_ike(2, &[], &ike("aes128-sha256-modp2048")),
            ],
        };
        let mut good = Vec::new();
        sa.emit(&mut good).unwrap();
        for cut in 0..good.len() {
            assert!(SaPayload::parse(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(SaPayload::parse(&trailing).is_err());
        // First proposal marked "last" although another follows.
        let mut bad_more = good.clone();
        bad_more[0] = 0;
        assert!(SaPayload::parse(&bad_more).is_err());
        // Last Substruc 1 is not defined.
        let mut bad_flag = good.clone();
        bad_flag[0] = 1;
        assert!(SaPayload::parse(&bad_flag).is_err());
        // Proposal length below 8; transform length below 8; Num Transforms too high.
        let mut short = good.clone();
        short[3] = 7;
        assert!(SaPayload::parse(&short).is_err());
        let mut short_t = good.clone();
        short_t[11] = 4;
        assert!(SaPayload::parse(&short_t).is_err());
        let mut count = good.clone();
        count[7] = 4;
        assert!(SaPayload::parse(&count).is_err());
        assert!(SaPayload { proposals: vec![] }
            .emit(&mut Vec::new())
            .is_err());
    }
}
