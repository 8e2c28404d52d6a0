//! Notify payload (RFC 7296 §3.10) and the notify message types we use (§3.10.1, IANA "IKEv2
//! Notify Message Types").

use std::fmt;

use super::{ProtocolId, Reader, WireError};

/// A notify message type. Types below 16384 report errors; an unrecognised error type in a
/// response means the request failed, an unrecognised status type is ignored (§3.10.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotifyType(pub u16);

macro_rules! notify_types {
    ($($name:ident = $value:expr, $doc:expr;)*) => {
        impl NotifyType {
            $(#[doc = $doc] pub const $name: NotifyType = NotifyType($value);)*

            /// The IANA name of the types this crate knows.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }
        }
    };
}

notify_types! {
    UNSUPPORTED_CRITICAL_PAYLOAD = 1, "RFC 7296 §2.5; data: the one-octet payload type.";
    INVALID_IKE_SPI = 4, "RFC 7296 §3.10.1.";
    INVALID_MAJOR_VERSION = 5, "RFC 7296 §1.5.";
    INVALID_SYNTAX = 7, "RFC 7296 §3.10.1; only sent in encrypted messages.";
    INVALID_MESSAGE_ID = 9, "RFC 7296 §3.10.1.";
    INVALID_SPI = 11, "RFC 7296 §3.10.1; data: the SPI.";
    NO_PROPOSAL_CHOSEN = 14, "RFC 7296 §3.10.1.";
    INVALID_KE_PAYLOAD = 17, "RFC 7296 §1.2; data: the two-octet accepted D-H group.";
    AUTHENTICATION_FAILED = 24, "RFC 7296 §3.10.1.";
    SINGLE_PAIR_REQUIRED = 34, "RFC 7296 §3.10.1.";
    NO_ADDITIONAL_SAS = 35, "RFC 7296 §3.10.1.";
    INTERNAL_ADDRESS_FAILURE = 36, "RFC 7296 §3.10.1.";
    FAILED_CP_REQUIRED = 37, "RFC 7296 §3.10.1.";
    TS_UNACCEPTABLE = 38, "RFC 7296 §3.10.1.";
    INVALID_SELECTORS = 39, "RFC 7296 §3.10.1.";
    TEMPORARY_FAILURE = 43, "RFC 7296 §2.25.";
    CHILD_SA_NOT_FOUND = 44, "RFC 7296 §2.25.";
    INITIAL_CONTACT = 16384, "RFC 7296 §2.4.";
    SET_WINDOW_SIZE = 16385, "RFC 7296 §2.3.";
    ADDITIONAL_TS_POSSIBLE = 16386, "RFC 7296 §2.9.";
    IPCOMP_SUPPORTED = 16387, "RFC 7296 §2.22.";
    NAT_DETECTION_SOURCE_IP = 16388, "RFC 7296 §2.23; data: a 20-octet SHA-1 hash.";
    NAT_DETECTION_DESTINATION_IP = 16389, "RFC 7296 §2.23; data: a 20-octet SHA-1 hash.";
    COOKIE = 16390, "RFC 7296 §2.6; data: 1 to 64 octets.";
    USE_TRANSPORT_MODE = 16391, "RFC 7296 §1.3.1.";
    HTTP_CERT_LOOKUP_SUPPORTED = 16392, "RFC 7296 §3.6.";
    REKEY_SA = 16393, "RFC 7296 §1.3.3; SPI: the Child SA being rekeyed.";
    ESP_TFC_PADDING_NOT_SUPPORTED = 16394, "RFC 7296 §1.3.1.";
    NON_FIRST_FRAGMENTS_ALSO = 16395, "RFC 7296 §1.3.1.";
    MOBIKE_SUPPORTED = 16396, "RFC 4555 §4.";
    MULTIPLE_AUTH_SUPPORTED = 16404, "RFC 4739.";
    REDIRECT_SUPPORTED = 16406, "RFC 5685.";
    CHILDLESS_IKEV2_SUPPORTED = 16418, "RFC 6023.";
    IKEV2_FRAGMENTATION_SUPPORTED = 16430, "RFC 7383 §2.3.";
    SIGNATURE_HASH_ALGORITHMS = 16431, "RFC 7427 §4; data: two-octet hash algorithm IDs.";
}

impl NotifyType {
    /// Error types are 0..16383 (§3.10.1).
    pub fn is_error(self) -> bool {
        self.0 < 16384
    }
}

impl fmt::Debug for NotifyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "NotifyType({})", self.0),
        }
    }
}

impl fmt::Display for NotifyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Notify payload (§3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyPayload {
    /// The kind of SA `spi` names; [`ProtocolId::NONE`] when there is no SPI (§3.10: sent
    /// as zero and ignored on receipt then, so parsing normalises it).
    pub protocol: ProtocolId,
    pub spi: Vec<u8>,
    pub kind: NotifyType,
    pub data: Vec<u8>,
}

impl NotifyPayload {
    /// A notification about the IKE SA or the message: no SPI.
    pub fn new(kind: NotifyType, data: Vec<u8>) -> NotifyPayload {
        NotifyPayload {
            protocol: ProtocolId::NONE,
            spi: Vec::new(),
            kind,
            data,
        }
    }

    /// A notification about a Child SA (REKEY_SA, INVALID_SELECTORS, CHILD_SA_NOT_FOUND).
    pub fn child(protocol: ProtocolId, spi: u32, kind: NotifyType, data: Vec<u8>) -> Self {
        NotifyPayload {
            protocol,
            spi: spi.to_be_bytes().to_vec(),
            kind,
            data,
        }
    }

    /// INVALID_KE_PAYLOAD naming the group the responder wants (§1.2).
    pub fn invalid_ke(group: u16) -> NotifyPayload {
        Self::new(NotifyType::INVALID_KE_PAYLOAD, group.to_be_bytes().to_vec())
    }

    /// The group of an INVALID_KE_PAYLOAD notify.
    pub fn invalid_ke_group(&self) -> Option<u16> {
        if self.kind != NotifyType::INVALID_KE_PAYLOAD {
            return None;
        }
        let bytes: [u8; 2] = self.data.as_slice().try_into().ok()?;
        Some(u16::from_be_bytes(bytes))
    }

    /// The hash algorithm IDs of SIGNATURE_HASH_ALGORITHMS (RFC 7427 §4).
    pub fn signature_hashes(&self) -> Option<Vec<u16>> {
        if self.kind != NotifyType::SIGNATURE_HASH_ALGORITHMS || !self.data.len().is_multiple_of(2)
        {
            return None;
        }
        Some(
            self.data
                .chunks_exact(2)
                .filter_map(|c| c.try_into().ok().map(u16::from_be_bytes))
                .collect(),
        )
    }

    /// The 4-octet SPI of a Child SA notification.
    pub fn child_spi(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.spi.as_slice().try_into().ok()?;
        Some(u32::from_be_bytes(bytes))
    }

    /// Parses the body, checking the data length of the types whose data has a fixed form:
    /// NAT detection hashes are 20 octets (§2.23), cookies 1 to 64 (§2.6), INVALID_KE_PAYLOAD
    /// 2 (§1.2). (IKEV2_FRAGMENTATION_SUPPORTED should carry no data, RFC 7383 §2.3, but
    /// data there is harmless and ignored rather than failing the IKE_SA_INIT.)
    pub fn parse(body: &[u8]) -> Result<NotifyPayload, WireError> {
        let mut r = Reader::new(body, "Notify payload");
        let protocol = ProtocolId(r.u8()?);
        let spi_size = usize::from(r.u8()?);
        let kind = NotifyType(r.u16()?);
        let spi = r.take(spi_size)?.to_vec();
        let data = r.rest().to_vec();
        let ok = match kind {
            NotifyType::NAT_DETECTION_SOURCE_IP | NotifyType::NAT_DETECTION_DESTINATION_IP => {
                data.len() == 20
            }
            NotifyType::COOKIE => (1..=64).contains(&data.len()),
            NotifyType::INVALID_KE_PAYLOAD => data.len() == 2,
            NotifyType::SIGNATURE_HASH_ALGORITHMS => data.len().is_multiple_of(2),
            _ => true,
        };
        if !ok {
            return Err(WireError::Invalid {
                what: "Notify payload",
                why: "notification data has the wrong length for its type",
            });
        }
        Ok(NotifyPayload {
            protocol: if spi.is_empty() {
                ProtocolId::NONE
            } else {
                protocol
            },
            spi,
            kind,
            data,
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let spi_size = u8::try_from(self.spi.len()).map_err(|_| WireError::TooLong {
            what: "notify SPI",
            length: self.spi.len(),
            max: 255,
        })?;
        // §3.10: Protocol ID is zero when there is no SPI.
        let protocol = if self.spi.is_empty() {
            ProtocolId::NONE
        } else {
            self.protocol
        };
        out.push(protocol.0);
        out.push(spi_size);
        out.extend_from_slice(&self.kind.0.to_be_bytes());
        out.extend_from_slice(&self.spi);
        out.extend_from_slice(&self.data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iana_numbers() {
        assert_eq!(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD.0, 1);
        assert_eq!(NotifyType::INVALID_SYNTAX.0, 7);
        assert_eq!(NotifyType::NO_PROPOSAL_CHOSEN.0, 14);
        assert_eq!(NotifyType::INVALID_KE_PAYLOAD.0, 17);
        assert_eq!(NotifyType::AUTHENTICATION_FAILED.0, 24);
        assert_eq!(NotifyType::TS_UNACCEPTABLE.0, 38);
        assert_eq!(NotifyType::INITIAL_CONTACT.0, 16384);
        assert_eq!(NotifyType::NAT_DETECTION_SOURCE_IP.0, 16388);
        assert_eq!(NotifyType::NAT_DETECTION_DESTINATION_IP.0, 16389);
        assert_eq!(NotifyType::COOKIE.0, 16390);
        assert_eq!(NotifyType::USE_TRANSPORT_MODE.0, 16391);
        assert_eq!(NotifyType::REKEY_SA.0, 16393);
        assert_eq!(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED.0, 16430);
        assert_eq!(NotifyType::SIGNATURE_HASH_ALGORITHMS.0, 16431);
        assert!(NotifyType::TS_UNACCEPTABLE.is_error());
        assert!(!NotifyType::COOKIE.is_error());
        assert_eq!(
            format!("{:?}", NotifyType(16388)),
            "NAT_DETECTION_SOURCE_IP"
        );
        assert_eq!(format!("{}", NotifyType(40000)), "NotifyType(40000)");
    }

    #[test]
    fn round_trips() {
        let cases = [
            NotifyPayload::new(NotifyType::COOKIE, vec![1; 32]),
            NotifyPayload::invalid_ke(19),
            NotifyPayload::new(NotifyType::INITIAL_CONTACT, vec![]),
            NotifyPayload::new(
                NotifyType::SIGNATURE_HASH_ALGORITHMS,
                vec![0, 2, 0, 3, 0, 4],
            ),
            NotifyPayload::child(ProtocolId::ESP, 0x1234_5678, NotifyType::REKEY_SA, vec![]),
            NotifyPayload::new(NotifyType(40000), b"private".to_vec()),
        ];
        for n in cases {
            let mut out = Vec::new();
            n.emit(&mut out).unwrap();
            assert_eq!(NotifyPayload::parse(&out).unwrap(), n);
        }
        assert_eq!(NotifyPayload::invalid_ke(19).invalid_ke_group(), Some(19));
        let rekey = NotifyPayload::child(ProtocolId::ESP, 7, NotifyType::REKEY_SA, vec![]);
        assert_eq!(rekey.child_spi(), Some(7));
        let sig = NotifyPayload::new(NotifyType::SIGNATURE_HASH_ALGORITHMS, vec![0, 2, 0, 4]);
        assert_eq!(sig.signature_hashes(), Some(vec![2, 4]));
    }

    #[test]
    fn bad_data_lengths_and_truncation() {
        let mut out = Vec::new();
        NotifyPayload::new(NotifyType::NAT_DETECTION_SOURCE_IP, vec![0; 19])
            .emit(&mut out)
            .unwrap();
        assert!(NotifyPayload::parse(&out).is_err());
        let mut out = Vec::new();
        NotifyPayload::new(NotifyType::COOKIE, vec![0; 65])
            .emit(&mut out)
            .unwrap();
        assert!(NotifyPayload::parse(&out).is_err());
        // SPI size larger than the body.
        assert!(NotifyPayload::parse(&[3, 4, 0x40, 0x09, 1, 2]).is_err());
        for cut in 0..4 {
            assert!(NotifyPayload::parse(&[0, 0, 0x40, 0][..cut]).is_err());
        }
        // Protocol ID without an SPI is ignored on receipt (§3.10).
        let n = NotifyPayload::parse(&[3, 0, 0x40, 0x00]).unwrap();
        assert_eq!(n.protocol, ProtocolId::NONE);
    }
}
