//! ESP packet framing (RFC 4303 §2), independent of the cipher.
//!
//! ```text
//! | SPI (4) | Sequence Number (4) | IV (cipher) | ciphertext ... | ICV (cipher) |
//!                                              ciphertext decrypts to:
//!                        | payload | padding 1,2,3… | Pad Length (1) | Next Header (1) |
//! ```

use std::fmt;

use super::EspError;
use crate::wire::be32;

/// SPI and Sequence Number.
pub const ESP_HEADER_LEN: usize = 8;

/// SPIs 1..=255 are reserved by IANA and 0 for local use; none appears on the wire (§2.1).
const FIRST_SPI: u32 = 256;

/// The Next Header field (§2.6): an IP protocol number.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NextHeader(pub u8);

impl NextHeader {
    /// IPv4 in tunnel mode.
    pub const IPV4: NextHeader = NextHeader(4);
    /// IPv6 in tunnel mode.
    pub const IPV6: NextHeader = NextHeader(41);
    /// No Next Header: a dummy packet (§2.6), silently dropped after decryption.
    pub const NO_NEXT: NextHeader = NextHeader(59);

    /// A dummy (traffic flow confidentiality) packet the receiver discards (§2.6).
    pub fn is_dummy(self) -> bool {
        self == Self::NO_NEXT
    }
}

impl fmt::Debug for NextHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            4 => f.write_str("IPv4"),
            41 => f.write_str("IPv6"),
            59 => f.write_str("NoNext"),
            n => write!(f, "NextHeader({n})"),
        }
    }
}

/// A checked view of a received ESP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EspPacket<T> {
    /// Checks that the SPI and Sequence Number are present and that the SPI is not reserved
    /// (§2.1), so a packet that cannot belong to any SA is dropped before an SA lookup.
    pub fn new_checked(buffer: T) -> Result<Self, EspError> {
        let data = buffer.as_ref();
        if data.len() < ESP_HEADER_LEN {
            return Err(EspError::Truncated {
                what: "ESP header",
                needed: ESP_HEADER_LEN,
                available: data.len(),
            });
        }
        let spi = be32(data, 0);
        if spi < FIRST_SPI {
            return Err(EspError::ReservedSpi(spi));
        }
        Ok(EspPacket { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn spi(&self) -> u32 {
        be32(self.buffer.as_ref(), 0)
    }

    /// The low 32 bits of the sequence number (§2.2); with ESN the high 32 bits are inferred
    /// by [`super::ReplayWindow::check`].
    pub fn sequence_number(&self) -> u32 {
        be32(self.buffer.as_ref(), 4)
    }

    /// SPI and Sequence Number octets (the AEAD associated data, RFC 4106 §5).
    pub fn header(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(..ESP_HEADER_LEN)
            .unwrap_or_default()
    }

    /// Everything after the ESP header.
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(ESP_HEADER_LEN..)
            .unwrap_or_default()
    }

    /// Splits the rest of the packet into IV, ciphertext and ICV for the SA's cipher. The
    /// ciphertext must hold at least Pad Length and Next Header and be a multiple of the
    /// layout's alignment (§2.4).
    pub fn split(&self, layout: &EspLayout) -> Result<EspParts<'_>, EspError> {
        let body = self.payload();
        let truncated = EspError::Truncated {
            what: "ESP packet",
            needed: ESP_HEADER_LEN
                .saturating_add(layout.iv_len)
                .saturating_add(layout.icv_len)
                .saturating_add(2),
            available: self.buffer.as_ref().len(),
        };
        let (iv, rest) = body
            .split_at_checked(layout.iv_len)
            .ok_or(truncated.clone())?;
        let ct_len = rest
            .len()
            .checked_sub(layout.icv_len)
            .filter(|len| *len >= 2)
            .ok_or(truncated.clone())?;
        let (ciphertext, icv) = rest.split_at_checked(ct_len).ok_or(truncated)?;
        let alignment = layout.alignment();
        if ct_len % alignment != 0 {
            return Err(EspError::Misaligned {
                length: ct_len,
                alignment,
            });
        }
        Ok(EspParts {
            header: self.header(),
            iv,
            ciphertext,
            icv,
        })
    }
}

/// The lengths an SA's cipher gives its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspLayout {
    pub iv_len: usize,
    pub icv_len: usize,
    /// The cipher's block size (16 for AES-CBC; 1 for GCM and ChaCha20-Poly1305).
    pub block_len: usize,
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl EspLayout {
    /// The ciphertext's alignment: the block size, and at least 4 octets so that Pad Length
    /// and Next Header end a 32-bit word (§2.4).
    pub fn alignment(&self) -> usize {
        let block = self.block_len.max(1);
        block / gcd(block, 4) * 4
    }

    /// The length of a whole packet carrying `ciphertext_len` octets of ciphertext.
    pub fn packet_len(&self, ciphertext_len: usize) -> usize {
        ESP_HEADER_LEN + self.iv_len + ciphertext_len + self.icv_len
    }
}

/// The parts of a received packet, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspParts<'a> {
    /// SPI and Sequence Number.
    pub header: &'a [u8],
    pub iv: &'a [u8],
    pub ciphertext: &'a [u8],
    pub icv: &'a [u8],
}

/// The ESP header's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EspRepr {
    pub spi: u32,
    /// Low 32 bits of the sequence number.
    pub sequence_number: u32,
}

impl EspRepr {
    pub fn parse<T: AsRef<[u8]>>(packet: &EspPacket<T>) -> Result<EspRepr, EspError> {
        Ok(EspRepr {
            spi: packet.spi(),
            sequence_number: packet.sequence_number(),
        })
    }

    pub const fn buffer_len(&self) -> usize {
        ESP_HEADER_LEN
    }

    /// Appends the 8 header octets; a reserved SPI is refused (§2.1).
    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), EspError> {
        if self.spi < FIRST_SPI {
            return Err(EspError::ReservedSpi(self.spi));
        }
        out.extend_from_slice(&self.spi.to_be_bytes());
        out.extend_from_slice(&self.sequence_number.to_be_bytes());
        Ok(())
    }
}

/// Appends padding, Pad Length and Next Header to a plaintext payload so that the result is
/// a multiple of the block size and of 4 (§2.4). The padding is the default 1, 2, 3, … (§2.4).
pub fn append_trailer(
    plaintext: &mut Vec<u8>,
    block_len: usize,
    next_header: NextHeader,
) -> Result<(), EspError> {
    let alignment = EspLayout {
        iv_len: 0,
        icv_len: 0,
        block_len,
    }
    .alignment();
    if alignment > 256 {
        return Err(EspError::BadAlignment(alignment));
    }
    let len = plaintext.len() + 2;
    let pad = (alignment - len % alignment) % alignment;
    // `pad` < alignment <= 256, so each value fits an octet.
    plaintext.extend((1..=pad).map(|i| i as u8));
    plaintext.push(pad as u8);
    plaintext.push(next_header.0);
    Ok(())
}

/// Verifies and removes the trailer of a decrypted payload: the padding must be the default
/// 1, 2, 3, … (§2.4: "the receiver SHOULD inspect the Padding field"). Returns the payload
/// and its Next Header; a [`NextHeader::NO_NEXT`] packet is a dummy to drop (§2.6). In tunnel
/// mode the payload may end with TFC padding (§2.7), which the inner IP length excludes.
pub fn strip_trailer(plaintext: &[u8]) -> Result<(&[u8], NextHeader), EspError> {
    let truncated = EspError::Truncated {
        what: "ESP trailer",
        needed: 2,
        available: plaintext.len(),
    };
    let (&next, rest) = plaintext.split_last().ok_or(truncated.clone())?;
    let (&pad, rest) = rest.split_last().ok_or(truncated)?;
    let pad = usize::from(pad);
    let payload_len = rest.len().checked_sub(pad).ok_or(EspError::PadTooLong {
        pad,
        available: rest.len(),
    })?;
    let (payload, padding) = rest
        .split_at_checked(payload_len)
        .ok_or(EspError::BadPadding)?;
    // (Counting with `1u8..` would overflow after 255 octets; count in usize.)
    if !padding
        .iter()
        .enumerate()
        .all(|(i, &b)| usize::from(b) == i + 1)
    {
        return Err(EspError::BadPadding);
    }
    Ok((payload, NextHeader(next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GCM: EspLayout = EspLayout {
        iv_len: 8,
        icv_len: 16,
        block_len: 1,
    };
    const CBC: EspLayout = EspLayout {
        iv_len: 16,
        icv_len: 16,
        block_len: 16,
    };

    #[test]
    fn header_view_and_repr() {
        let repr = EspRepr {
            spi: 0xfb51_28a6,
            sequence_number: 2,
        };
        let mut out = Vec::new();
        repr.emit(&mut out).unwrap();
        assert_eq!(out, [0xfb, 0x51, 0x28, 0xa6, 0, 0, 0, 2]);
        let packet = EspPacket::new_checked(&out[..]).unwrap();
        assert_eq!(EspRepr::parse(&packet).unwrap(), repr);
        for cut in 0..8 {
            assert!(EspPacket::new_checked(&out[..cut]).is_err());
        }
        for spi in [0u32, 1, 255] {
            let mut bytes = spi.to_be_bytes().to_vec();
            bytes.extend_from_slice(&[0, 0, 0, 1]);
            assert_eq!(
                EspPacket::new_checked(&bytes[..]),
                Err(EspError::ReservedSpi(spi))
            );
            assert!(EspRepr {
                spi,
                sequence_number: 1
            }
            .emit(&mut Vec::new())
            .is_err());
        }
        let mut ok = 256u32.to_be_bytes().to_vec();
        ok.extend_from_slice(&[0, 0, 0, 1]);
        assert!(EspPacket::new_checked(&ok[..]).is_ok());
    }

    #[test]
    fn alignment_is_block_and_four() {
        let align = |block_len| {
            EspLayout {
                iv_len: 0,
                icv_len: 0,
                block_len,
            }
            .alignment()
        };
        assert_eq!(align(0), 4);
        assert_eq!(align(1), 4);
        assert_eq!(align(8), 8);
        assert_eq!(align(16), 16);
        assert_eq!(align(6), 12);
    }

    #[test]
    fn trailer_round_trip_for_every_length() {
        for block in [1, 4, 8, 16] {
            for len in 0..70 {
                let payload: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                let mut plain = payload.clone();
                append_trailer(&mut plain, block, NextHeader::IPV6).unwrap();
                assert_eq!(plain.len() % block.max(4), 0);
                assert!(plain.len() - len - 2 < block.max(4));
                let pad = plain[plain.len() - 2] as usize;
                assert_eq!(
                    &plain[len..len + pad],
                    &(1..=pad as u8).collect::<Vec<_>>()[..]
                );
                assert_eq!(
                    strip_trailer(&plain).unwrap(),
                    (&payload[..], NextHeader::IPV6)
                );
            }
        }
        assert!(append_trailer(&mut Vec::new(), 512, NextHeader::IPV4).is_err());
    }

    #[test]
    fn bad_padding_is_refused() {
        // Valid: payload [9], padding 1 2, pad length 2, next header 4.
        assert_eq!(
            strip_trailer(&[9, 1, 2, 2, 4]).unwrap(),
            (&[9u8][..], NextHeader::IPV4)
        );
        assert_eq!(strip_trailer(&[9, 1, 3, 2, 4]), Err(EspError::BadPadding));
        assert_eq!(strip_trailer(&[9, 0, 0, 2, 4]), Err(EspError::BadPadding));
        assert_eq!(strip_trailer(&[9, 2, 1, 2, 4]), Err(EspError::BadPadding));
        assert_eq!(
            strip_trailer(&[1, 2, 3, 4]),
            Err(EspError::PadTooLong {
                pad: 3,
                available: 2
            })
        );
        assert!(strip_trailer(&[4]).is_err());
        assert!(strip_trailer(&[]).is_err());
        // Pad length 255 with 255 correct padding octets is fine.
        let mut max: Vec<u8> = (1..=255).collect();
        max.extend_from_slice(&[255, 59]);
        let (payload, next) = strip_trailer(&max).unwrap();
        assert!(payload.is_empty());
        assert!(next.is_dummy());
    }

    #[test]
    fn split_checks_lengths_and_alignment() {
        let mut packet = vec![0, 0, 1, 0, 0, 0, 0, 7];
        packet.extend_from_slice(&[0xaa; 8]); // IV
        packet.extend_from_slice(&[0xbb; 12]); // ciphertext
        packet.extend_from_slice(&[0xcc; 16]); // ICV
        let view = EspPacket::new_checked(&packet[..]).unwrap();
        let parts = view.split(&GCM).unwrap();
        assert_eq!(parts.header, &packet[..8]);
        assert_eq!(parts.iv, &[0xaa; 8]);
        assert_eq!(parts.ciphertext, &[0xbb; 12]);
        assert_eq!(parts.icv, &[0xcc; 16]);
        assert_eq!(GCM.packet_len(12), packet.len());
        // 12 octets is not a multiple of CBC's 16.
        assert!(matches!(
            view.split(&CBC),
            Err(EspError::Misaligned { .. }) | Err(EspError::Truncated { .. })
        ));
        // Misaligned for GCM: one octet short.
        let mut odd = packet.clone();
        odd.remove(20);
        let view = EspPacket::new_checked(&odd[..]).unwrap();
        assert!(matches!(view.split(&GCM), Err(EspError::Misaligned { .. })));
        // A truncated packet either fails here or yields aligned parts whose ICV then fails.
        for cut in 8..packet.len() {
            let view = EspPacket::new_checked(&packet[..cut]).unwrap();
            if let Ok(parts) = view.split(&GCM) {
                assert!(cut >= 8 + 8 + 4 + 16, "cut {cut}");
                assert_eq!(parts.ciphertext.len() % 4, 0);
                assert_eq!(parts.icv.len(), 16);
            }
        }
        for cut in 8..8 + 8 + 4 + 16 {
            let view = EspPacket::new_checked(&packet[..cut]).unwrap();
            assert!(view.split(&GCM).is_err(), "cut {cut}");
        }
    }
}
