//! The Capsule Protocol (RFC 9297 §3): the framing connect-udp uses inside the data of an
//! HTTP/2 stream (and on HTTP/3 when datagrams are not negotiated).
//!
//! ```text
//! Capsule {
//!   Capsule Type (i),
//!   Capsule Length (i),
//!   Capsule Value (..),
//! }
//! ```
//!
//! Integers are QUIC variable-length integers (RFC 9000 §16). The decoder is incremental: the
//! caller appends what the stream delivered to a [`BytesMut`] and asks for capsules until none
//! is complete. Capsules of unknown type are skipped as they arrive, without buffering them
//! (RFC 9297 §3.2: "an intermediary … MUST silently drop/skip unknown capsule types"); a known
//! capsule longer than the configured maximum is refused, since it would have to be buffered
//! whole.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The DATAGRAM capsule type (RFC 9297 §3.5).
pub const DATAGRAM: u64 = 0x00;

/// The largest value a QUIC variable-length integer holds (RFC 9000 §16).
pub const VARINT_MAX: u64 = (1 << 62) - 1;

/// A capsule the relay understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capsule {
    /// An HTTP Datagram payload (RFC 9297 §3.5); for connect-udp it starts with the context
    /// ID (RFC 9298 §4).
    Datagram(Bytes),
}

/// Why a capsule stream cannot be decoded; the stream is then aborted (RFC 9297 §3.3).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapsuleError {
    #[error("capsule of type {capsule_type:#x} is {length} bytes long; the limit is {max}")]
    TooLong {
        capsule_type: u64,
        length: u64,
        max: u64,
    },
    #[error("the stream ended inside a capsule ({buffered} bytes of it received)")]
    Truncated { buffered: u64 },
    #[error("value {0} does not fit a QUIC variable-length integer")]
    VarintTooLarge(u64),
}

/// Reads a QUIC variable-length integer (RFC 9000 §16) from the start of `input`: the value and
/// how many bytes it took, or `None` when `input` is too short.
pub fn read_varint(input: &[u8]) -> Option<(u64, usize)> {
    let first = *input.first()?;
    let len = 1usize << (first >> 6);
    let bytes = input.get(..len)?;
    let mut value = u64::from(first & 0x3f);
    for byte in bytes.iter().skip(1) {
        value = (value << 8) | u64::from(*byte);
    }
    Some((value, len))
}

/// Appends `value` as a QUIC variable-length integer in its shortest form (RFC 9000 §16).
pub fn write_varint(value: u64, out: &mut impl BufMut) -> Result<(), CapsuleError> {
    if value < (1 << 6) {
        out.put_u8(value as u8);
    } else if value < (1 << 14) {
        out.put_u16(0x4000 | value as u16);
    } else if value < (1 << 30) {
        out.put_u32(0x8000_0000 | value as u32);
    } else if value <= VARINT_MAX {
        out.put_u64(0xc000_0000_0000_0000 | value);
    } else {
        return Err(CapsuleError::VarintTooLarge(value));
    }
    Ok(())
}

/// Appends one capsule.
pub fn encode(capsule_type: u64, value: &[u8], out: &mut impl BufMut) -> Result<(), CapsuleError> {
    write_varint(capsule_type, out)?;
    write_varint(value.len() as u64, out)?;
    out.put_slice(value);
    Ok(())
}

/// Appends a DATAGRAM capsule carrying `payload`.
pub fn encode_datagram(payload: &[u8], out: &mut impl BufMut) -> Result<(), CapsuleError> {
    encode(DATAGRAM, payload, out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a complete type and length.
    Header,
    /// Inside an unknown capsule: this many bytes are still to be dropped.
    Skip { remaining: u64 },
}

/// An incremental capsule decoder.
#[derive(Debug, Clone)]
pub struct CapsuleDecoder {
    max_len: u64,
    state: State,
    skipped: u64,
}

impl CapsuleDecoder {
    /// A decoder that refuses known capsules longer than `max_len` bytes.
    pub fn new(max_len: u64) -> CapsuleDecoder {
        CapsuleDecoder {
            max_len,
            state: State::Header,
            skipped: 0,
        }
    }

    /// How many capsules of unknown type were skipped so far.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The next complete capsule in `buf`, consuming it; `Ok(None)` when more input is needed
    /// (what was consumed so far is only ever whole headers and skipped bytes).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Capsule>, CapsuleError> {
        loop {
            match self.state {
                State::Skip { remaining } => {
                    let available = buf.len() as u64;
                    if available < remaining {
                        buf.clear();
                        self.state = State::Skip {
                            remaining: remaining - available,
                        };
                        return Ok(None);
                    }
                    // `remaining <= buf.len()`, so it fits a usize.
                    buf.advance(remaining as usize);
                    self.state = State::Header;
                }
                State::Header => {
                    let Some((capsule_type, type_len)) = read_varint(buf) else {
                        return Ok(None);
                    };
                    let rest = buf.get(type_len..).unwrap_or_default();
                    let Some((length, length_len)) = read_varint(rest) else {
                        return Ok(None);
                    };
                    let header_len = type_len + length_len;
                    if capsule_type != DATAGRAM {
                        // RFC 9297 §3.2: unknown capsule types are skipped.
                        self.skipped += 1;
                        buf.advance(header_len);
                        self.state = State::Skip { remaining: length };
                        continue;
                    }
                    if length > self.max_len {
                        return Err(CapsuleError::TooLong {
                            capsule_type,
                            length,
                            max: self.max_len,
                        });
                    }
                    // `length <= max_len`, and a buffer of that size exists only if it fits.
                    let total =
                        header_len.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
                    if buf.len() < total {
                        buf.reserve(total - buf.len());
                        return Ok(None);
                    }
                    buf.advance(header_len);
                    let value = buf.split_to(total - header_len).freeze();
                    return Ok(Some(Capsule::Datagram(value)));
                }
            }
        }
    }

    /// Checks that the stream ended between capsules (RFC 9297 §3.3: a truncated capsule is
    /// an error).
    pub fn finish(&self, buf: &BytesMut) -> Result<(), CapsuleError> {
        match self.state {
            State::Header if buf.is_empty() => Ok(()),
            State::Header => Err(CapsuleError::Truncated {
                buffered: buf.len() as u64,
            }),
            State::Skip { .. } => Err(CapsuleError::Truncated {
                buffered: buf.len() as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(value: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(value, &mut out).unwrap();
        out
    }

    #[test]
    fn varints_from_rfc9000_appendix_a1() {
        // RFC 9000 §A.1 sample encodings.
        let samples: &[(&[u8], u64)] = &[
            (
                &[0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c],
                151_288_809_941_952_652,
            ),
            (&[0x9d, 0x7f, 0x3e, 0x7d], 494_878_333),
            (&[0x7b, 0xbd], 15_293),
            (&[0x25], 37),
            (&[0x40, 0x25], 37),
        ];
        for (bytes, value) in samples {
            assert_eq!(read_varint(bytes), Some((*value, bytes.len())));
        }
        assert_eq!(varint(151_288_809_941_952_652), samples[0].0);
        assert_eq!(varint(494_878_333), samples[1].0);
        assert_eq!(varint(15_293), samples[2].0);
        assert_eq!(varint(37), samples[3].0);
        assert_eq!(varint(VARINT_MAX).len(), 8);
        assert_eq!(
            write_varint(VARINT_MAX + 1, &mut Vec::new()),
            Err(CapsuleError::VarintTooLarge(VARINT_MAX + 1))
        );
        assert_eq!(read_varint(&[]), None);
        assert_eq!(read_varint(&[0x40]), None);
        assert_eq!(read_varint(&[0xc0, 0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn datagram_round_trip() {
        let mut buf = BytesMut::new();
        encode_datagram(b"\x00hello", &mut buf).unwrap();
        assert_eq!(&buf[..], b"\x00\x06\x00hello");
        let mut decoder = CapsuleDecoder::new(1500);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Capsule::Datagram(Bytes::from_static(b"\x00hello")))
        );
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        decoder.finish(&buf).unwrap();
    }

    #[test]
    fn partial_input_byte_by_byte() {
        let mut wire = BytesMut::new();
        let big = vec![0xab; 300];
        encode_datagram(&big, &mut wire).unwrap();
        encode(0x1234, b"unknown value", &mut wire).unwrap();
        encode_datagram(b"", &mut wire).unwrap();
        let mut decoder = CapsuleDecoder::new(1500);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(capsule) = decoder.decode(&mut buf).unwrap() {
                out.push(capsule);
            }
        }
        assert_eq!(
            out,
            vec![
                Capsule::Datagram(Bytes::from(big)),
                Capsule::Datagram(Bytes::new())
            ]
        );
        assert_eq!(decoder.skipped(), 1);
        decoder.finish(&buf).unwrap();
    }

    #[test]
    fn unknown_capsules_are_skipped_without_buffering() {
        // An unknown capsule announcing 1 GiB: dropped as it arrives, never refused.
        let mut decoder = CapsuleDecoder::new(1500);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&varint(0x4d8));
        buf.extend_from_slice(&varint(1 << 30));
        buf.extend_from_slice(&[0; 4096]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty());
        assert_eq!(decoder.skipped(), 1);
        assert!(matches!(
            decoder.finish(&buf),
            Err(CapsuleError::Truncated { .. })
        ));
    }

    #[test]
    fn oversized_datagram_is_refused() {
        let mut decoder = CapsuleDecoder::new(1500);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&varint(DATAGRAM));
        buf.extend_from_slice(&varint(1501));
        assert_eq!(
            decoder.decode(&mut buf),
            Err(CapsuleError::TooLong {
                capsule_type: 0,
                length: 1501,
                max: 1500
            })
        );
        let mut buf = BytesMut::from(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(CapsuleError::TooLong { .. })
        ));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let mut decoder = CapsuleDecoder::new(1500);
        let mut buf = BytesMut::from(&[0x00, 0x05, b'a', b'b'][..]);
        assert_eq!(decoder.decode(&mut buf).unwrap(), None);
        assert_eq!(
            decoder.finish(&buf),
            Err(CapsuleError::Truncated { buffered: 4 })
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz: every prefix of pseudo-random input.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut input = Vec::new();
        for _ in 0..4096 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            input.push(state as u8);
        }
        for split in [1usize, 3, 7, 64, 1000] {
            let mut decoder = CapsuleDecoder::new(512);
            let mut buf = BytesMut::new();
            for chunk in input.chunks(split) {
                buf.extend_from_slice(chunk);
                while let Ok(Some(_)) = decoder.decode(&mut buf) {}
            }
        }
    }
}
