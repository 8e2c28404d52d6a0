//! IKEv2 wire formats (RFC 7296 §3, RFC 7383 for fragments, RFC 3948 for UDP 4500).
//!
//! Written in smoltcp's `src/wire/` style: fixed headers are checked views
//! ([`Header`], [`PayloadHeader`]) whose `new_checked` validates every length before a field
//! is read, and each payload has a `…Payload` representation with `parse` (from a payload body)
//! and `emit` (appending the body to a buffer). [`Message`] parses a whole unencrypted message
//! and [`MessageBuilder`] emits one with the next-payload links and lengths filled in.
//!
//! Nothing here decrypts: the Encrypted payload (SK, §3.14) and its fragments (SKF,
//! RFC 7383 §2.5) are framed by [`SkFraming`], and the decrypted inner chain is parsed again with
//! [`parse_payloads`].
//!
//! Every parser returns [`WireError`] on malformed input and never panics; [`fuzz_parse`] runs
//! them all on arbitrary bytes and is the future fuzz target.

mod dn;
mod header;
mod id;
mod message;
mod natt;
mod notify;
mod payload;
mod payloads;
mod sa;
mod sk;
pub(crate) mod suite;
mod ts;

pub use dn::{dn_from_der, dn_to_der};
pub use header::{ExchangeType, Flags, Header, HeaderRepr, HEADER_LEN};
pub use id::{IdPayload, IdType};
pub use message::{emit_payloads, parse_payloads, Message, MessageBuilder, Payload};
pub use natt::{classify_udp4500, with_non_esp_marker, Udp4500, NAT_KEEPALIVE, NON_ESP_MARKER};
pub use notify::{NotifyPayload, NotifyType};
pub use payload::{PayloadHeader, PayloadIter, PayloadType, RawPayload, PAYLOAD_HEADER_LEN};
pub use payloads::{
    AuthMethod, AuthPayload, CertEncoding, CertPayload, DeletePayload, KePayload, NoncePayload,
};
pub use sa::{
    AttributeValue, Proposal, ProtocolId, SaPayload, Transform, TransformAttribute, TransformType,
    ATTR_KEY_LENGTH,
};
pub use sk::{
    encrypted_message, EncryptedFragment, EncryptedPayload, SkFraming, SkLayout, SkParts,
};
pub use suite::Unacceptable;
pub use ts::{AddressRange, TrafficSelector, TsPayload, TsType, UnsupportedSelector};

/// Why bytes were refused as IKE. Each variant says which notify, if any, answers it
/// ([`WireError::notify_type`]); most are INVALID_SYNTAX (RFC 7296 §3.10.1), which RFC 7296
/// §2.21 allows only in an encrypted response, so unauthenticated garbage is simply dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("{what} truncated: needs {needed} octets, {available} available")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("{what} length {length} is below the minimum of {minimum} octets")]
    LengthTooSmall {
        what: &'static str,
        length: usize,
        minimum: usize,
    },
    #[error("IKE header length {header} does not match the {actual}-octet datagram")]
    LengthMismatch { header: u32, actual: usize },
    #[error("{count} octets follow the last payload")]
    TrailingBytes { count: usize },
    #[error("IKE major version {0} is not 2 (RFC 7296 §1.5)")]
    InvalidMajorVersion(u8),
    #[error("payload type {0} is marked critical and is not supported (RFC 7296 §2.5)")]
    UnsupportedCriticalPayload(u8),
    #[error("invalid {what}: {why}")]
    Invalid {
        what: &'static str,
        why: &'static str,
    },
    #[error("nonce of {0} octets is outside 16..=256 (RFC 7296 §3.9)")]
    NonceLength(usize),
    #[error("ID type {0} has no identity representation here")]
    UnsupportedIdType(u8),
    #[error("ID payload does not hold a valid identity: {0}")]
    BadIdentity(String),
    #[error("{what} of {length} octets does not fit its length field (at most {max})")]
    TooLong {
        what: &'static str,
        length: usize,
        max: usize,
    },
}

impl WireError {
    /// The notify type that answers this error in a response, if any (RFC 7296 §3.10.1).
    ///
    /// A major version below 2 (IKEv1) gets none: it is dropped, not answered.
    /// [`WireError::TooLong`] is a local error while emitting.
    pub fn notify_type(&self) -> Option<NotifyType> {
        match self {
            WireError::UnsupportedCriticalPayload(_) => {
                Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
            }
            WireError::InvalidMajorVersion(v) if *v > 2 => Some(NotifyType::INVALID_MAJOR_VERSION),
            WireError::InvalidMajorVersion(_) | WireError::TooLong { .. } => None,
            _ => Some(NotifyType::INVALID_SYNTAX),
        }
    }

    /// The notification data to send with [`WireError::notify_type`]: the one-octet payload
    /// type for UNSUPPORTED_CRITICAL_PAYLOAD (RFC 7296 §2.5), empty otherwise.
    pub fn notify_data(&self) -> Vec<u8> {
        match self {
            WireError::UnsupportedCriticalPayload(t) => vec![*t],
            _ => Vec::new(),
        }
    }
}

/// Reads a byte at `at`, or 0 past the end. Views call this only on offsets their
/// `new_checked` validated, so the fallback is unreachable; it exists so that no accessor can
/// panic even if that invariant were broken.
pub(crate) fn byte(data: &[u8], at: usize) -> u8 {
    data.get(at).copied().unwrap_or(0)
}

pub(crate) fn be16(data: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([byte(data, at), byte(data, at + 1)])
}

pub(crate) fn be32(data: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([
        byte(data, at),
        byte(data, at + 1),
        byte(data, at + 2),
        byte(data, at + 3),
    ])
}

pub(crate) fn be64(data: &[u8], at: usize) -> u64 {
    (u64::from(be32(data, at)) << 32) | u64::from(be32(data, at + 4))
}

/// A cursor over a length-checked body: every read returns [`WireError::Truncated`] instead of
/// indexing past the end.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8], what: &'static str) -> Self {
        Reader { data, what }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.data.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        match self.data.split_at_checked(n) {
            Some((head, tail)) => {
                self.data = tail;
                Ok(head)
            }
            None => Err(WireError::Truncated {
                what: self.what,
                needed: n,
                available: self.data.len(),
            }),
        }
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let bytes = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Converts a length to a 16-bit length field, refusing what does not fit.
pub(crate) fn len16(what: &'static str, length: usize) -> Result<u16, WireError> {
    u16::try_from(length).map_err(|_| WireError::TooLong {
        what,
        length,
        max: usize::from(u16::MAX),
    })
}

/// Runs every IKE parser on arbitrary bytes. It must never panic, whatever `data` is; the
/// results are discarded. A fuzz target (`cargo fuzz`) can call it directly.
pub fn fuzz_parse(data: &[u8]) {
    let _ = Message::parse(data);
    let _ = Header::new_checked(data).and_then(|h| HeaderRepr::parse(&h));
    // The same bytes as a chain of payloads, as a decrypted SK body would be.
    let first = PayloadType(data.first().copied().unwrap_or(0));
    let rest = data.get(1..).unwrap_or_default();
    let _ = parse_payloads(first, rest);
    for raw in PayloadIter::new(first, rest).take(64).flatten() {
        let _ = Payload::parse(&raw);
    }
    // The same bytes as the body of each payload type.
    for kind in PayloadType::KNOWN {
        let raw = RawPayload {
            kind,
            critical: false,
            next: PayloadType::NONE,
            body: data,
        };
        if let Ok(payload) = Payload::parse(&raw) {
            if let Payload::IdInitiator(id) | Payload::IdResponder(id) = &payload {
                let _ = id.to_identity();
            }
            if let Payload::Sa(sa) = &payload {
                for p in &sa.proposals {
                    let _ = p.to_ike();
                    let _ = p.to_esp();
                }
            }
            let mut out = Vec::new();
            let _ = payload.emit_body(&mut out);
        }
    }
    let _ = dn_from_der(data);
    for (iv_len, icv_len, block_len) in [(0, 0, 1), (8, 16, 1), (16, 16, 16), (8, 16, 4)] {
        let framing = SkFraming {
            iv_len,
            icv_len,
            block_len,
        };
        let _ = framing.split(data);
        let _ = framing.strip_padding(data);
        let _ = EncryptedFragment::parse(PayloadType::NONE, data);
    }
    if let Udp4500::Ike(ike) = classify_udp4500(data) {
        let _ = Message::parse(ike);
    }
}

/// Deterministic pseudo-random bytes for the robustness tests (xorshift64*, no dependency).
#[cfg(test)]
pub(crate) struct XorShift(pub(crate) u64);

#[cfg(test)]
impl XorShift {
    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = (self.next_u64() % (max_len as u64 + 1)) as usize;
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_notify_types() {
        assert_eq!(
            WireError::UnsupportedCriticalPayload(99).notify_type(),
            Some(NotifyType::UNSUPPORTED_CRITICAL_PAYLOAD)
        );
        assert_eq!(
            WireError::UnsupportedCriticalPayload(99).notify_data(),
            vec![99]
        );
        assert_eq!(
            WireError::InvalidMajorVersion(3).notify_type(),
            Some(NotifyType::INVALID_MAJOR_VERSION)
        );
        assert_eq!(WireError::InvalidMajorVersion(1).notify_type(), None);
        assert_eq!(
            WireError::NonceLength(3).notify_type(),
            Some(NotifyType::INVALID_SYNTAX)
        );
    }

    #[test]
    fn reader_never_reads_past_the_end() {
        let mut r = Reader::new(&[1, 2, 3], "test");
        assert_eq!(r.u16(), Ok(0x0102));
        assert!(matches!(r.u16(), Err(WireError::Truncated { .. })));
        assert_eq!(r.u8(), Ok(3));
        assert!(r.is_empty());
        assert!(r.take(usize::MAX).is_err());
        assert_eq!(be32(&[1], 0), 0x0100_0000);
    }

    #[test]
    fn fuzz_parse_survives_random_and_truncated_input() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..10_000 {
            fuzz_parse(&rng.bytes(300));
        }
        // Random bytes rarely get past the header; valid messages with every truncation and
        // single-octet corruption reach every payload parser.
        for message in message::tests::sample_messages() {
            for cut in 0..=message.len() {
                let prefix = message.get(..cut).unwrap_or_default();
                fuzz_parse(prefix);
                fuzz_parse(message.get(cut..).unwrap_or_default());
            }
            for at in 0..message.len() {
                for value in [0x00, 0x01, 0x7f, 0x80, 0xff, rng.next_u64() as u8] {
                    let mut mutated = message.clone();
                    mutated[at] = value;
                    fuzz_parse(&mutated);
                    // Also with the header length kept consistent, so the chain is reached.
                    fuzz_parse(&mutated[HEADER_LEN.min(mutated.len())..]);
                }
            }
        }
    }
}
