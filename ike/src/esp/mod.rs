//! ESP (RFC 4303) framing, anti-replay and sequence numbers, independent of the cipher.
//!
//! - [`packet`]: the ESP header view ([`EspPacket`]), splitting a packet into IV, ciphertext
//!   and ICV for caller-given lengths, and building / verifying the plaintext trailer
//!   (padding, Pad Length, Next Header, §2.4-§2.6).
//! - [`replay`]: the receive-side anti-replay window in RFC 6479's style with ESN
//!   reconstruction (§3.3.3, §3.4.3, Appendix A).
//! - [`sequence`]: the send-side counter that never cycles (§3.3.3).
//! - [`inner`]: just enough of the inner IPv4/IPv6 packet to check it against the Child SA's
//!   traffic selectors.
//! - [`sa`]: the data path of one child SA, sans-IO: [`OutboundEsp::seal`] and
//!   [`InboundEsp::open`] run the whole of each direction for every suite, with counters.
//!
//! Receive path, in order: [`EspPacket::new_checked`] → [`ReplayWindow::check`] →
//! [`EspPacket::split`] → decrypt and verify the ICV (crypto) → [`ReplayWindow::accept`] →
//! [`strip_trailer`] → [`InnerPacket::parse_with`] → [`within`]. Accepting only after the ICV
//! verified is what keeps forged packets from moving the window (§3.4.3).

pub mod inner;
pub mod packet;
pub mod replay;
pub mod sa;
pub mod sequence;

pub use inner::{within, InnerPacket, Ports};
pub use packet::{
    append_trailer, strip_trailer, EspLayout, EspPacket, EspParts, EspRepr, NextHeader,
    ESP_HEADER_LEN,
};
pub use replay::{ReplayError, ReplayWindow};
pub use sa::{
    negotiated_esn, EspCounters, EspLimits, EspSa, EspSaError, InboundEsp, Opened, OutboundEsp,
    SealInfo,
};
pub use sequence::OutboundSequence;

/// Why an ESP packet, or a send, was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspError {
    #[error("{what} truncated: needs {needed} octets, {available} available")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("SPI {0} is reserved (RFC 4303 §2.1)")]
    ReservedSpi(u32),
    #[error("ciphertext of {length} octets is not a multiple of {alignment} (RFC 4303 §2.4)")]
    Misaligned { length: usize, alignment: usize },
    #[error("padding is not 1, 2, 3, … (RFC 4303 §2.4)")]
    BadPadding,
    #[error("Pad Length {pad} exceeds the {available} octets before it")]
    PadTooLong { pad: usize, available: usize },
    #[error("alignment {0} would need more than 255 octets of padding")]
    BadAlignment(usize),
    #[error("inner packet: {0}")]
    Inner(&'static str),
    #[error("Next Header {next_header} does not match an IPv{version} inner packet")]
    NextHeaderMismatch { next_header: u8, version: u8 },
    #[error(
        "sequence number space exhausted ({limit}); the Child SA must be rekeyed (RFC 4303 §3.3.3)"
    )]
    SequenceExhausted { limit: u64 },
}

/// Runs every ESP parser on arbitrary bytes. It must never panic; results are discarded.
pub fn fuzz_parse(data: &[u8]) {
    if let Ok(packet) = EspPacket::new_checked(data) {
        let _ = EspRepr::parse(&packet);
        for layout in [
            EspLayout {
                iv_len: 8,
                icv_len: 16,
                block_len: 1,
            },
            EspLayout {
                iv_len: 16,
                icv_len: 16,
                block_len: 16,
            },
            EspLayout {
                iv_len: 0,
                icv_len: 0,
                block_len: 0,
            },
        ] {
            let _ = packet.split(&layout);
        }
    }
    if let Ok((payload, next_header)) = strip_trailer(data) {
        let _ = InnerPacket::parse_with(next_header, payload);
    }
    if let Ok(inner) = InnerPacket::parse(data) {
        let _ = within(&[], &[], &inner);
    }
    // Sequence numbers from the data through both kinds of window.
    let mut plain = ReplayWindow::new(false);
    let mut esn = ReplayWindow::with_window(true, 64);
    for word in data.chunks(4) {
        let mut bytes = [0u8; 4];
        for (b, w) in bytes.iter_mut().zip(word) {
            *b = *w;
        }
        let seq = u32::from_be_bytes(bytes);
        for window in [&mut plain, &mut esn] {
            if let Ok(full) = window.check(seq) {
                let _ = window.accept(full);
            }
        }
    }
    if let crate::wire::Udp4500::Esp(esp) = crate::wire::classify_udp4500(data) {
        let _ = EspPacket::new_checked(esp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::XorShift;

    #[test]
    fn fuzz_parse_survives_random_and_truncated_input() {
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        for _ in 0..10_000 {
            fuzz_parse(&rng.bytes(200));
        }
        for sample in inner::tests::sample_packets() {
            let mut plaintext = sample.clone();
            append_trailer(&mut plaintext, 16, NextHeader::IPV4).unwrap();
            let mut packet = vec![0, 0, 0x10, 0, 0, 0, 0, 1];
            packet.extend_from_slice(&[0; 8]);
            packet.extend_from_slice(&plaintext);
            packet.extend_from_slice(&[0; 16]);
            for buf in [&sample, &plaintext, &packet] {
                for cut in 0..=buf.len() {
                    fuzz_parse(&buf[..cut]);
                    fuzz_parse(&buf[cut..]);
                }
                for at in 0..buf.len() {
                    let mut mutated = buf.clone();
                    mutated[at] ^= (rng.next_u64() as u8) | 1;
                    fuzz_parse(&mutated);
                }
            }
        }
    }
}
