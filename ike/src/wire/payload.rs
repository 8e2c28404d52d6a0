//! The generic payload header (RFC 7296 §3.2) and the payload chain.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Next Payload  |C|  RESERVED   |         Payload Length        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use std::fmt;

use super::{be16, byte, WireError};

/// Length of the generic payload header.
pub const PAYLOAD_HEADER_LEN: usize = 4;

/// Payload types (RFC 7296 §3.2, RFC 7383 §2.5; IANA "IKEv2 Payload Types").
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayloadType(pub u8);

impl PayloadType {
    /// No Next Payload: ends the chain.
    pub const NONE: PayloadType = PayloadType(0);
    pub const SA: PayloadType = PayloadType(33);
    pub const KE: PayloadType = PayloadType(34);
    pub const IDI: PayloadType = PayloadType(35);
    pub const IDR: PayloadType = PayloadType(36);
    pub const CERT: PayloadType = PayloadType(37);
    pub const CERTREQ: PayloadType = PayloadType(38);
    pub const AUTH: PayloadType = PayloadType(39);
    pub const NONCE: PayloadType = PayloadType(40);
    pub const NOTIFY: PayloadType = PayloadType(41);
    pub const DELETE: PayloadType = PayloadType(42);
    pub const VENDOR_ID: PayloadType = PayloadType(43);
    pub const TSI: PayloadType = PayloadType(44);
    pub const TSR: PayloadType = PayloadType(45);
    /// Encrypted and Authenticated (§3.14).
    pub const SK: PayloadType = PayloadType(46);
    /// Configuration (§3.15), kept opaque.
    pub const CP: PayloadType = PayloadType(47);
    /// Extensible Authentication (§3.16), kept opaque.
    pub const EAP: PayloadType = PayloadType(48);
    /// Encrypted and Authenticated Fragment (RFC 7383 §2.5).
    pub const SKF: PayloadType = PayloadType(53);

    /// Every payload type this crate parses.
    pub const KNOWN: [PayloadType; 17] = [
        Self::SA,
        Self::KE,
        Self::IDI,
        Self::IDR,
        Self::CERT,
        Self::CERTREQ,
        Self::AUTH,
        Self::NONCE,
        Self::NOTIFY,
        Self::DELETE,
        Self::VENDOR_ID,
        Self::TSI,
        Self::TSR,
        Self::SK,
        Self::CP,
        Self::EAP,
        Self::SKF,
    ];

    pub fn is_known(self) -> bool {
        Self::KNOWN.contains(&self)
    }

    /// The payload notation of RFC 7296 §1.2 (`SA`, `KE`, `IDi`, `N`, `SK`, …).
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "NONE",
            33 => "SA",
            34 => "KE",
            35 => "IDi",
            36 => "IDr",
            37 => "CERT",
            38 => "CERTREQ",
            39 => "AUTH",
            40 => "Nonce",
            41 => "N",
            42 => "D",
            43 => "V",
            44 => "TSi",
            45 => "TSr",
            46 => "SK",
            47 => "CP",
            48 => "EAP",
            53 => "SKF",
            _ => return None,
        })
    }
}

impl fmt::Debug for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "PayloadType({})", self.0),
        }
    }
}

impl fmt::Display for PayloadType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A checked view of one payload: its generic header and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadHeader<T: AsRef<[u8]>> {
    buffer: T,
}

const CRITICAL: u8 = 0x80;

impl<T: AsRef<[u8]>> PayloadHeader<T> {
    /// Checks that the header fits and that the Payload Length is at least 4 and no longer
    /// than the buffer (RFC 7296 §3.2: it includes the generic header). The buffer may go on
    /// past this payload: the rest of the chain.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let data = buffer.as_ref();
        if data.len() < PAYLOAD_HEADER_LEN {
            return Err(WireError::Truncated {
                what: "payload header",
                needed: PAYLOAD_HEADER_LEN,
                available: data.len(),
            });
        }
        let length = usize::from(be16(data, 2));
        if length < PAYLOAD_HEADER_LEN {
            return Err(WireError::LengthTooSmall {
                what: "payload",
                length,
                minimum: PAYLOAD_HEADER_LEN,
            });
        }
        if length > data.len() {
            return Err(WireError::Truncated {
                what: "payload",
                needed: length,
                available: data.len(),
            });
        }
        Ok(PayloadHeader { buffer })
    }

    pub fn next_payload(&self) -> PayloadType {
        PayloadType(byte(self.buffer.as_ref(), 0))
    }

    /// The critical bit (RFC 7296 §2.5); the seven RESERVED bits are ignored on receipt.
    pub fn critical(&self) -> bool {
        byte(self.buffer.as_ref(), 1) & CRITICAL != 0
    }

    pub fn payload_length(&self) -> u16 {
        be16(self.buffer.as_ref(), 2)
    }

    /// The payload's body, after the generic header.
    pub fn body(&self) -> &[u8] {
        let end = usize::from(self.payload_length());
        self.buffer
            .as_ref()
            .get(PAYLOAD_HEADER_LEN..end)
            .unwrap_or_default()
    }

    /// What follows this payload in the buffer.
    pub fn rest(&self) -> &[u8] {
        let end = usize::from(self.payload_length());
        self.buffer.as_ref().get(end..).unwrap_or_default()
    }
}

/// Appends a generic payload header and `body`.
pub(crate) fn emit_payload(
    out: &mut Vec<u8>,
    next: PayloadType,
    body: &[u8],
) -> Result<(), WireError> {
    let length = super::len16("payload", PAYLOAD_HEADER_LEN + body.len())?;
    out.push(next.0);
    out.push(0); // critical bit clear for the payloads RFC 7296 defines (§3.2)
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// One payload of a chain, not yet parsed into its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPayload<'a> {
    /// This payload's type, named by the previous payload (or the header).
    pub kind: PayloadType,
    pub critical: bool,
    /// The Next Payload field. For SK and SKF it names the first inner payload (§3.14).
    pub next: PayloadType,
    pub body: &'a [u8],
}

/// Walks a payload chain (RFC 7296 §3.2).
///
/// Yields the payloads of known types. Unknown ones are skipped unless their critical bit is
/// set, which ends the walk with [`WireError::UnsupportedCriticalPayload`] (§2.5). Truncation,
/// a Payload Length below 4 or past the buffer, octets after the last payload, and an SK or
/// SKF payload that is not last (§3.14) end it with an error; after an error it yields nothing.
#[derive(Debug, Clone)]
pub struct PayloadIter<'a> {
    data: &'a [u8],
    next: PayloadType,
    done: bool,
    skipped: Vec<PayloadType>,
}

impl<'a> PayloadIter<'a> {
    /// `first` is the Next Payload field of the IKE header (or of the SK payload, for a
    /// decrypted chain); `data` is everything after that header.
    pub fn new(first: PayloadType, data: &'a [u8]) -> Self {
        PayloadIter {
            data,
            next: first,
            done: false,
            skipped: Vec::new(),
        }
    }

    /// The unknown, non-critical payload types skipped so far, for logging.
    pub fn skipped(&self) -> &[PayloadType] {
        &self.skipped
    }

    fn fail(&mut self, error: WireError) -> Option<Result<RawPayload<'a>, WireError>> {
        self.done = true;
        Some(Err(error))
    }
}

impl<'a> Iterator for PayloadIter<'a> {
    type Item = Result<RawPayload<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let kind = self.next;
            if kind == PayloadType::NONE {
                self.done = true;
                if !self.data.is_empty() {
                    let count = self.data.len();
                    return self.fail(WireError::TrailingBytes { count });
                }
                return None;
            }
            let header = match PayloadHeader::new_checked(self.data) {
                Ok(header) => header,
                Err(e) => return self.fail(e),
            };
            // Slices of `self.data` itself, so they outlive the view.
            let len = usize::from(header.payload_length());
            let raw = RawPayload {
                kind,
                critical: header.critical(),
                next: header.next_payload(),
                body: self.data.get(PAYLOAD_HEADER_LEN..len).unwrap_or_default(),
            };
            self.data = self.data.get(len..).unwrap_or_default();
            self.next = raw.next;
            if kind == PayloadType::SK || kind == PayloadType::SKF {
                // §3.14: the Encrypted payload is the last one; its Next Payload field names
                // the first inner payload, not a following outer one.
                self.done = true;
                if !self.data.is_empty() {
                    return self.fail(WireError::Invalid {
                        what: "Encrypted payload",
                        why: "it must be the last payload of the message (RFC 7296 §3.14)",
                    });
                }
                return Some(Ok(raw));
            }
            if kind.is_known() {
                return Some(Ok(raw));
            }
            if raw.critical {
                return self.fail(WireError::UnsupportedCriticalPayload(kind.0));
            }
            self.skipped.push(kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(parts: &[(u8, u8, &[u8])]) -> Vec<u8> {
        // (next payload, flags octet, body)
        let mut out = Vec::new();
        for (next, flags, body) in parts {
            out.push(*next);
            out.push(*flags);
            out.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
            out.extend_from_slice(body);
        }
        out
    }

    fn kinds(first: PayloadType, data: &[u8]) -> Result<Vec<PayloadType>, WireError> {
        PayloadIter::new(first, data)
            .map(|r| r.map(|p| p.kind))
            .collect()
    }

    #[test]
    fn walks_a_chain() {
        let data = chain(&[(40, 0, b"vendor"), (0, 0, &[7; 16])]);
        assert_eq!(
            kinds(PayloadType::VENDOR_ID, &data),
            Ok(vec![PayloadType::VENDOR_ID, PayloadType::NONCE])
        );
        let header = PayloadHeader::new_checked(&data[..]).unwrap();
        assert_eq!(header.body(), b"vendor");
        assert_eq!(header.next_payload(), PayloadType::NONCE);
        assert!(!header.critical());
    }

    #[test]
    fn unknown_payloads_are_skipped_unless_critical() {
        // Type 99 is unknown: skipped when not critical…
        let data = chain(&[(99, 0, b"v"), (0, 0x7f, b"junk")]);
        let mut iter = PayloadIter::new(PayloadType::VENDOR_ID, &data);
        assert_eq!(
            iter.next().map(|r| r.map(|p| p.kind)),
            Some(Ok(PayloadType::VENDOR_ID))
        );
        assert_eq!(iter.next(), None);
        assert_eq!(iter.skipped(), &[PayloadType(99)]);
        // …and fatal when critical, naming the type for UNSUPPORTED_CRITICAL_PAYLOAD.
        let data = chain(&[(99, 0, b"v"), (0, 0x80, b"junk")]);
        assert_eq!(
            kinds(PayloadType::VENDOR_ID, &data),
            Err(WireError::UnsupportedCriticalPayload(99))
        );
        // The critical bit on a known payload is ignored (§3.2).
        let data = chain(&[(0, 0x80, b"v")]);
        assert_eq!(
            kinds(PayloadType::VENDOR_ID, &data),
            Ok(vec![PayloadType::VENDOR_ID])
        );
    }

    #[test]
    fn lengths_that_lie_are_refused() {
        // Payload Length below 4.
        for bad in 0..4u8 {
            let data = [0, 0, 0, bad, 1, 2, 3, 4];
            assert!(
                matches!(
                    kinds(PayloadType::VENDOR_ID, &data),
                    Err(WireError::LengthTooSmall { .. })
                ),
                "length {bad}"
            );
        }
        // Payload Length past the buffer.
        let data = [0, 0, 0, 9, 1, 2, 3, 4];
        assert!(matches!(
            kinds(PayloadType::VENDOR_ID, &data),
            Err(WireError::Truncated { .. })
        ));
        // The chain promises another payload that is not there.
        let data = chain(&[(43, 0, b"v")]);
        assert!(matches!(
            kinds(PayloadType::VENDOR_ID, &data),
            Err(WireError::Truncated { .. })
        ));
        // Octets after the last payload.
        let mut data = chain(&[(0, 0, b"v")]);
        data.push(0);
        assert_eq!(
            kinds(PayloadType::VENDOR_ID, &data),
            Err(WireError::TrailingBytes { count: 1 })
        );
        // Every truncation of a valid chain is an error.
        let data = chain(&[(40, 0, b"vendor"), (0, 0, &[7; 16])]);
        for cut in 0..data.len() {
            assert!(
                kinds(PayloadType::VENDOR_ID, &data[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn encrypted_payload_must_be_last() {
        // SK whose Next Payload (IDi, the first inner payload) is not followed by anything.
        let data = chain(&[(35, 0, &[0; 24])]);
        let raws: Vec<_> = PayloadIter::new(PayloadType::SK, &data).collect();
        assert_eq!(raws.len(), 1);
        let raw = raws[0].clone().unwrap();
        assert_eq!(raw.next, PayloadType::IDI);
        let mut data = chain(&[(35, 0, &[0; 24])]);
        data.extend_from_slice(&chain(&[(0, 0, b"v")]));
        assert!(matches!(
            kinds(PayloadType::SK, &data),
            Err(WireError::Invalid { .. })
        ));
    }

    #[test]
    fn stops_after_an_error() {
        let data = [0, 0, 0, 1];
        let mut iter = PayloadIter::new(PayloadType::VENDOR_ID, &data);
        assert!(matches!(iter.next(), Some(Err(_))));
        assert_eq!(iter.next(), None);
    }
}
