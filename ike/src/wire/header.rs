//! The 28-octet IKE header (RFC 7296 §3.1).
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Initiator's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                       IKE SA Responder's SPI                  |
//! |                                                               |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  Next Payload | MjVer | MnVer | Exchange Type |     Flags     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                          Message ID                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                            Length                             |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::fmt;

use super::{be32, be64, byte, PayloadType, WireError};

/// Length of the IKE header.
pub const HEADER_LEN: usize = 28;

mod field {
    pub const SPI_I: usize = 0;
    pub const SPI_R: usize = 8;
    pub const NEXT_PAYLOAD: usize = 16;
    pub const VERSION: usize = 17;
    pub const EXCHANGE: usize = 18;
    pub const FLAGS: usize = 19;
    pub const MESSAGE_ID: usize = 20;
    pub const LENGTH: usize = 24;
}

/// IKEv2 version octet: major 2, minor 0 (RFC 7296 §3.1).
const VERSION_2_0: u8 = 0x20;

/// Exchange types (RFC 7296 §3.1; IANA "IKEv2 Exchange Types").
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeType(pub u8);

impl ExchangeType {
    pub const IKE_SA_INIT: ExchangeType = ExchangeType(34);
    pub const IKE_AUTH: ExchangeType = ExchangeType(35);
    pub const CREATE_CHILD_SA: ExchangeType = ExchangeType(36);
    pub const INFORMATIONAL: ExchangeType = ExchangeType(37);

    /// The name of the exchanges RFC 7296 defines.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            34 => "IKE_SA_INIT",
            35 => "IKE_AUTH",
            36 => "CREATE_CHILD_SA",
            37 => "INFORMATIONAL",
            _ => return None,
        })
    }
}

impl fmt::Debug for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "ExchangeType({})", self.0),
        }
    }
}

impl fmt::Display for ExchangeType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Header flags (RFC 7296 §3.1). The other five bits are sent as zero and ignored on receipt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    /// I: set by the original initiator of the IKE SA.
    pub initiator: bool,
    /// V: the sender speaks a higher major version; never set by IKEv2.
    pub version: bool,
    /// R: the message is a response.
    pub response: bool,
}

impl Flags {
    const INITIATOR: u8 = 0x08;
    const VERSION: u8 = 0x10;
    const RESPONSE: u8 = 0x20;

    /// Reads the defined bits, ignoring the others (RFC 7296 §3.1).
    pub fn from_bits(bits: u8) -> Flags {
        Flags {
            initiator: bits & Self::INITIATOR != 0,
            version: bits & Self::VERSION != 0,
            response: bits & Self::RESPONSE != 0,
        }
    }

    pub fn bits(self) -> u8 {
        let mut bits = 0;
        if self.initiator {
            bits |= Self::INITIATOR;
        }
        if self.version {
            bits |= Self::VERSION;
        }
        if self.response {
            bits |= Self::RESPONSE;
        }
        bits
    }
}

/// A checked view of an IKE message: the header, and the payload chain after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Checks that the buffer holds a whole header and that the Length field equals the
    /// buffer's length (RFC 7296 §3.1: the length of the total message). The caller strips
    /// the non-ESP marker on port 4500 first.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let data = buffer.as_ref();
        if data.len() < HEADER_LEN {
            return Err(WireError::Truncated {
                what: "IKE header",
                needed: HEADER_LEN,
                available: data.len(),
            });
        }
        let length = be32(data, field::LENGTH);
        if (length as usize) < HEADER_LEN {
            return Err(WireError::LengthTooSmall {
                what: "IKE message",
                length: length as usize,
                minimum: HEADER_LEN,
            });
        }
        if length as usize != data.len() {
            return Err(WireError::LengthMismatch {
                header: length,
                actual: data.len(),
            });
        }
        Ok(Header { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn initiator_spi(&self) -> u64 {
        be64(self.buffer.as_ref(), field::SPI_I)
    }

    pub fn responder_spi(&self) -> u64 {
        be64(self.buffer.as_ref(), field::SPI_R)
    }

    pub fn next_payload(&self) -> PayloadType {
        PayloadType(byte(self.buffer.as_ref(), field::NEXT_PAYLOAD))
    }

    pub fn major_version(&self) -> u8 {
        byte(self.buffer.as_ref(), field::VERSION) >> 4
    }

    pub fn minor_version(&self) -> u8 {
        byte(self.buffer.as_ref(), field::VERSION) & 0x0f
    }

    pub fn exchange_type(&self) -> ExchangeType {
        ExchangeType(byte(self.buffer.as_ref(), field::EXCHANGE))
    }

    pub fn flags(&self) -> Flags {
        Flags::from_bits(byte(self.buffer.as_ref(), field::FLAGS))
    }

    pub fn message_id(&self) -> u32 {
        be32(self.buffer.as_ref(), field::MESSAGE_ID)
    }

    pub fn length(&self) -> u32 {
        be32(self.buffer.as_ref(), field::LENGTH)
    }

    /// The octets after the header: the payload chain.
    pub fn payloads(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or_default()
    }
}

/// The IKE header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderRepr {
    pub initiator_spi: u64,
    pub responder_spi: u64,
    /// Type of the first payload; [`super::MessageBuilder`] fills it in.
    pub next_payload: PayloadType,
    pub exchange_type: ExchangeType,
    pub flags: Flags,
    pub message_id: u32,
    /// Length of the whole message; [`super::MessageBuilder`] fills it in.
    pub length: u32,
}

impl HeaderRepr {
    /// Reads the header, refusing any major version but 2 (RFC 7296 §1.5) and a zero
    /// initiator SPI (§3.1: "This value MUST NOT be zero"), and ignoring the minor version
    /// (§3.1: "MUST ignore a minor version number").
    pub fn parse<T: AsRef<[u8]>>(header: &Header<T>) -> Result<Self, WireError> {
        if header.major_version() != 2 {
            return Err(WireError::InvalidMajorVersion(header.major_version()));
        }
        if header.initiator_spi() == 0 {
            return Err(WireError::Invalid {
                what: "IKE header",
                why: "the initiator's SPI is zero (RFC 7296 §3.1)",
            });
        }
        Ok(HeaderRepr {
            initiator_spi: header.initiator_spi(),
            responder_spi: header.responder_spi(),
            next_payload: header.next_payload(),
            exchange_type: header.exchange_type(),
            flags: header.flags(),
            message_id: header.message_id(),
            length: header.length(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Appends the 28 header octets, version 2.0.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiator_spi.to_be_bytes());
        out.extend_from_slice(&self.responder_spi.to_be_bytes());
        out.push(self.next_payload.0);
        out.push(VERSION_2_0);
        out.push(self.exchange_type.0);
        out.push(self.flags.bits());
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repr() -> HeaderRepr {
        HeaderRepr {
            initiator_spi: 0x0102_0304_0506_0708,
            responder_spi: 0,
            next_payload: PayloadType::SA,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags {
                initiator: true,
                ..Flags::default()
            },
            message_id: 0,
            length: 28,
        }
    }

    const BYTES: [u8; 28] = [
        0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, // SPIi
        0, 0, 0, 0, 0, 0, 0, 0, // SPIr
        33, 0x20, 34, 0x08, // SA, 2.0, IKE_SA_INIT, I
        0, 0, 0, 0, // message ID
        0, 0, 0, 28, // length
    ];

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        repr().emit(&mut out);
        assert_eq!(out, BYTES);
        let header = Header::new_checked(&BYTES[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&header).unwrap(), repr());
        assert!(header.payloads().is_empty());
    }

    #[test]
    fn every_truncation_is_refused() {
        for cut in 0..BYTES.len() {
            assert!(Header::new_checked(&BYTES[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn length_must_match_the_datagram() {
        let mut long = BYTES.to_vec();
        long.push(0);
        assert_eq!(
            Header::new_checked(&long[..]),
            Err(WireError::LengthMismatch {
                header: 28,
                actual: 29
            })
        );
        let mut short = BYTES;
        short[27] = 27;
        assert!(matches!(
            Header::new_checked(&short[..]),
            Err(WireError::LengthTooSmall { .. })
        ));
        let mut huge = BYTES;
        huge[24] = 0xff;
        assert!(matches!(
            Header::new_checked(&huge[..]),
            Err(WireError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn version_rules() {
        let mut v3 = BYTES;
        v3[17] = 0x30;
        let header = Header::new_checked(&v3[..]).unwrap();
        assert_eq!(
            HeaderRepr::parse(&header),
            Err(WireError::InvalidMajorVersion(3))
        );
        let mut v1 = BYTES;
        v1[17] = 0x10;
        let header = Header::new_checked(&v1[..]).unwrap();
        assert_eq!(
            HeaderRepr::parse(&header),
            Err(WireError::InvalidMajorVersion(1))
        );
        // Minor version and undefined flag bits are ignored.
        let mut minor = BYTES;
        minor[17] = 0x2f;
        minor[19] = 0xc7 | 0x08;
        let header = Header::new_checked(&minor[..]).unwrap();
        assert_eq!(HeaderRepr::parse(&header).unwrap(), repr());
        let mut zero_spi = BYTES;
        zero_spi[..8].fill(0);
        let header = Header::new_checked(&zero_spi[..]).unwrap();
        assert!(matches!(
            HeaderRepr::parse(&header),
            Err(WireError::Invalid { .. })
        ));
    }

    #[test]
    fn flags_and_names() {
        let f = Flags {
            initiator: true,
            version: true,
            response: true,
        };
        assert_eq!(f.bits(), 0x38);
        assert_eq!(Flags::from_bits(0x38), f);
        assert_eq!(format!("{:?}", ExchangeType(37)), "INFORMATIONAL");
        assert_eq!(format!("{:?}", ExchangeType(99)), "ExchangeType(99)");
        assert_eq!(ExchangeType::CREATE_CHILD_SA.0, 36);
    }
}
