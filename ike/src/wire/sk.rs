//! Framing of the Encrypted and Authenticated payload SK (RFC 7296 §3.14) and of its fragments
//! SKF (RFC 7383 §2.5). The cipher lives in `crate::crypto`; this module only knows where the
//! IV, ciphertext and ICV are, given their lengths.
//!
//! ```text
//! SK body:  IV | ciphertext( inner payloads | padding | pad length ) | ICV
//! SKF body: Fragment Number (2) | Total Fragments (2) | IV | ciphertext | ICV
//! ```

use std::ops::Range;

use super::payload::PAYLOAD_HEADER_LEN;
use super::{len16, Header, HeaderRepr, PayloadIter, PayloadType, Reader, WireError, HEADER_LEN};

/// An SK payload as received: the type of the first inner payload and the raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedPayload {
    pub first_inner: PayloadType,
    pub body: Vec<u8>,
}

/// An SKF payload as received (RFC 7383 §2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedFragment {
    /// The first inner payload's type in fragment 1, zero in the others (§2.5).
    pub first_inner: PayloadType,
    pub number: u16,
    pub total: u16,
    /// IV, ciphertext and ICV.
    pub body: Vec<u8>,
}

impl EncryptedFragment {
    /// Parses the body after the generic header; `next` is the SKF Next Payload field.
    /// Fragment Number must be 1..=Total Fragments (RFC 7383 §2.6.1: otherwise discarded).
    pub fn parse(next: PayloadType, body: &[u8]) -> Result<EncryptedFragment, WireError> {
        let mut r = Reader::new(body, "SKF payload");
        let number = r.u16()?;
        let total = r.u16()?;
        if number == 0 || number > total {
            return Err(WireError::Invalid {
                what: "SKF payload",
                why: "Fragment Number is not within 1..=Total Fragments (RFC 7383 §2.6.1)",
            });
        }
        Ok(EncryptedFragment {
            first_inner: next,
            number,
            total,
            body: r.rest().to_vec(),
        })
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        out.extend_from_slice(&self.number.to_be_bytes());
        out.extend_from_slice(&self.total.to_be_bytes());
        out.extend_from_slice(&self.body);
        Ok(())
    }
}

/// The lengths the negotiated cipher gives the SK framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkFraming {
    pub iv_len: usize,
    pub icv_len: usize,
    /// The ciphertext is a multiple of this (the cipher's block size; 1 for stream-like AEADs).
    pub block_len: usize,
}

/// The three parts of an SK or SKF body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SkParts<'a> {
    pub iv: &'a [u8],
    pub ciphertext: &'a [u8],
    pub icv: &'a [u8],
}

/// Where an encrypted message's parts sit, in octets from the start of the IKE header. The
/// AEAD associated data (RFC 5282 §5.1; RFC 7383 §2.5 for SKF) is `0..iv.start`; a classic
/// integrity check (§3.14) covers `0..icv.start`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkLayout {
    pub iv: Range<usize>,
    pub ciphertext: Range<usize>,
    pub icv: Range<usize>,
}

impl SkFraming {
    fn block(&self) -> usize {
        self.block_len.max(1)
    }

    /// Splits a body into IV, ciphertext and ICV. The ciphertext holds at least the Pad Length
    /// octet and is a whole number of blocks (§3.14).
    pub fn split<'a>(&self, body: &'a [u8]) -> Result<SkParts<'a>, WireError> {
        let mut r = Reader::new(body, "Encrypted payload");
        let iv = r.take(self.iv_len)?;
        let ct_len = r
            .remaining()
            .checked_sub(self.icv_len)
            .filter(|len| *len >= 1)
            .ok_or(WireError::Truncated {
                what: "Encrypted payload",
                needed: self.iv_len.saturating_add(self.icv_len).saturating_add(1),
                available: body.len(),
            })?;
        let ciphertext = r.take(ct_len)?;
        let icv = r.rest();
        if ct_len % self.block() != 0 {
            return Err(WireError::Invalid {
                what: "Encrypted payload",
                why: "ciphertext is not a whole number of cipher blocks",
            });
        }
        Ok(SkParts {
            iv,
            ciphertext,
            icv,
        })
    }

    /// Padding and Pad Length to append to `plaintext_len` octets of inner payloads: the
    /// fewest that reach a block boundary (§3.14; the padding's content is free, we send zeros).
    /// A block above 256 octets could need more padding than Pad Length can say.
    pub fn padding(&self, plaintext_len: usize) -> Result<Vec<u8>, WireError> {
        let block = self.block();
        let pad = (block - (plaintext_len % block + 1) % block) % block;
        let pad_octet = u8::try_from(pad).map_err(|_| WireError::TooLong {
            what: "SK padding",
            length: pad,
            max: 255,
        })?;
        let mut out = vec![0u8; pad];
        out.push(pad_octet);
        Ok(out)
    }

    /// How many octets of inner payloads one SKF fragment carries when its whole IKE message
    /// may be at most `max_message` octets (RFC 7383 §2.5: each fragment is a complete message
    /// with its own header, SKF payload header, IV, padding and ICV). Zero when even one octet
    /// does not fit.
    pub fn fragment_capacity(&self, max_message: usize) -> usize {
        let overhead = HEADER_LEN + PAYLOAD_HEADER_LEN + 4 + self.iv_len + self.icv_len;
        let block = self.block();
        // whole blocks of ciphertext; the last octet of them is Pad Length
        let ciphertext = max_message.saturating_sub(overhead) / block * block;
        ciphertext.saturating_sub(1)
    }

    /// Removes Padding and Pad Length from a decrypted body, returning the inner payloads.
    /// Any padding length that fits is accepted (§3.14: "MUST accept any length").
    pub fn strip_padding<'a>(&self, plaintext: &'a [u8]) -> Result<&'a [u8], WireError> {
        let (&pad, rest) = plaintext.split_last().ok_or(WireError::Truncated {
            what: "decrypted SK payload",
            needed: 1,
            available: 0,
        })?;
        let inner_len = rest
            .len()
            .checked_sub(usize::from(pad))
            .ok_or(WireError::Invalid {
                what: "decrypted SK payload",
                why: "Pad Length is longer than the plaintext",
            })?;
        Ok(rest.get(..inner_len).unwrap_or_default())
    }
}

impl SkLayout {
    /// Finds the SK or SKF payload of a received message (it is the last one, §3.14) and
    /// the ranges of its parts.
    pub fn locate(message: &[u8], framing: &SkFraming) -> Result<SkLayout, WireError> {
        let header = Header::new_checked(message)?;
        HeaderRepr::parse(&header)?;
        let mut sk = None;
        for raw in PayloadIter::new(header.next_payload(), header.payloads()) {
            let raw = raw?;
            if raw.kind == PayloadType::SK {
                sk = Some((raw.body, 0));
            } else if raw.kind == PayloadType::SKF {
                EncryptedFragment::parse(raw.next, raw.body)?;
                sk = Some((raw.body, 4));
            }
        }
        let (body, skip) = sk.ok_or(WireError::Invalid {
            what: "message",
            why: "no Encrypted payload",
        })?;
        let parts = framing.split(body.get(skip..).unwrap_or_default())?;
        // The SK body ends where the message ends (§3.14).
        let iv_start = message
            .len()
            .saturating_sub(parts.icv.len() + parts.ciphertext.len() + parts.iv.len());
        let ct_start = iv_start + parts.iv.len();
        let icv_start = ct_start + parts.ciphertext.len();
        Ok(SkLayout {
            iv: iv_start..ct_start,
            ciphertext: ct_start..icv_start,
            icv: icv_start..message.len(),
        })
    }
}

/// Builds an encrypted message around a ciphertext of `ciphertext_len` octets (inner
/// payloads plus [`SkFraming::padding`]): the header (its Next Payload and Length set), the SK
/// payload header naming `first_inner` — or, with `fragment = Some((number, total))`, an SKF
/// payload — and zeroed IV, ciphertext and ICV for the cipher to fill in place.
pub fn encrypted_message(
    header: &HeaderRepr,
    first_inner: PayloadType,
    fragment: Option<(u16, u16)>,
    framing: &SkFraming,
    ciphertext_len: usize,
) -> Result<(Vec<u8>, SkLayout), WireError> {
    if ciphertext_len == 0 || !ciphertext_len.is_multiple_of(framing.block()) {
        return Err(WireError::Invalid {
            what: "Encrypted payload",
            why: "ciphertext is not a whole, non-empty number of cipher blocks",
        });
    }
    let (kind, prefix, next) = match fragment {
        None => (PayloadType::SK, 0, first_inner),
        Some((number, total)) => {
            if number == 0 || number > total {
                return Err(WireError::Invalid {
                    what: "SKF payload",
                    why: "Fragment Number is not within 1..=Total Fragments",
                });
            }
            // RFC 7383 §2.5: only the first fragment names the first inner payload.
            let next = if number == 1 {
                first_inner
            } else {
                PayloadType::NONE
            };
            (PayloadType::SKF, 4, next)
        }
    };
    let body_len = prefix + framing.iv_len + ciphertext_len + framing.icv_len;
    let payload_len = len16("Encrypted payload", PAYLOAD_HEADER_LEN + body_len)?;
    let total = HEADER_LEN + usize::from(payload_len);
    let mut repr = *header;
    repr.next_payload = kind;
    repr.length = u32::try_from(total).map_err(|_| WireError::TooLong {
        what: "IKE message",
        length: total,
        max: u32::MAX as usize,
    })?;
    let mut out = Vec::with_capacity(total);
    repr.emit(&mut out);
    out.push(next.0);
    out.push(0);
    out.extend_from_slice(&payload_len.to_be_bytes());
    if let Some((number, total)) = fragment {
        out.extend_from_slice(&number.to_be_bytes());
        out.extend_from_slice(&total.to_be_bytes());
    }
    let iv_start = out.len();
    out.resize(total, 0);
    let ct_start = iv_start + framing.iv_len;
    let icv_start = ct_start + ciphertext_len;
    Ok((
        out,
        SkLayout {
            iv: iv_start..ct_start,
            ciphertext: ct_start..icv_start,
            icv: icv_start..total,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ExchangeType, Flags, Message, Payload};

    const GCM: SkFraming = SkFraming {
        iv_len: 8,
        icv_len: 16,
        block_len: 1,
    };
    const CBC: SkFraming = SkFraming {
        iv_len: 16,
        icv_len: 16,
        block_len: 16,
    };

    fn header() -> HeaderRepr {
        HeaderRepr {
            initiator_spi: 1,
            responder_spi: 2,
            next_payload: PayloadType::NONE,
            exchange_type: ExchangeType::IKE_AUTH,
            flags: Flags {
                initiator: true,
                ..Flags::default()
            },
            message_id: 1,
            length: 0,
        }
    }

    #[test]
    fn padding_reaches_block_boundaries_and_strips() {
        for len in 0..40 {
            let pad = CBC.padding(len).unwrap();
            assert_eq!((len + pad.len()) % 16, 0, "len {len}");
            let mut plain = vec![0xaa; len];
            plain.extend_from_slice(&pad);
            assert_eq!(CBC.strip_padding(&plain).unwrap().len(), len);
            assert_eq!(GCM.padding(len).unwrap(), vec![0]);
            let huge = SkFraming {
                block_len: 1024,
                ..GCM
            };
            assert!(huge.padding(len).is_err());
        }
        // Any padding that fits is accepted; more than there is is refused.
        assert_eq!(GCM.strip_padding(&[1, 2, 9, 9, 2]).unwrap(), &[1, 2]);
        assert!(GCM.strip_padding(&[1, 2]).is_err());
        assert!(GCM.strip_padding(&[]).is_err());
    }

    #[test]
    fn split_checks_lengths() {
        let body = vec![0u8; 8 + 3 + 16];
        let parts = GCM.split(&body).unwrap();
        assert_eq!(
            (parts.iv.len(), parts.ciphertext.len(), parts.icv.len()),
            (8, 3, 16)
        );
        assert!(GCM.split(&body[..24]).is_err()); // no room for Pad Length
        assert!(CBC.split(&[0u8; 16 + 15 + 16]).is_err()); // not whole blocks
        assert!(CBC.split(&[0u8; 16 + 32 + 16]).is_ok());
        for cut in 0..body.len() {
            let _ = GCM.split(&body[..cut]);
        }
    }

    #[test]
    fn encrypted_message_layout_parses_back() {
        let (msg, layout) = encrypted_message(&header(), PayloadType::IDI, None, &GCM, 37).unwrap();
        assert_eq!(layout.iv, 32..40);
        assert_eq!(layout.ciphertext, 40..77);
        assert_eq!(layout.icv, 77..93);
        assert_eq!(msg.len(), 93);
        assert_eq!(SkLayout::locate(&msg, &GCM).unwrap(), layout);
        let parsed = Message::parse(&msg).unwrap();
        assert_eq!(parsed.header.next_payload, PayloadType::SK);
        match &parsed.payloads[..] {
            [Payload::Encrypted(sk)] => {
                assert_eq!(sk.first_inner, PayloadType::IDI);
                assert_eq!(sk.body.len(), 8 + 37 + 16);
            }
            other => panic!("{other:?}"),
        }

        let (msg, layout) =
            encrypted_message(&header(), PayloadType::IDI, Some((2, 3)), &CBC, 32).unwrap();
        assert_eq!(layout.iv.start, 28 + 4 + 4);
        assert_eq!(SkLayout::locate(&msg, &CBC).unwrap(), layout);
        match &Message::parse(&msg).unwrap().payloads[..] {
            [Payload::EncryptedFragment(f)] => {
                assert_eq!(
                    (f.number, f.total, f.first_inner),
                    (2, 3, PayloadType::NONE)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(encrypted_message(&header(), PayloadType::IDI, Some((4, 3)), &CBC, 32).is_err());
        assert!(encrypted_message(&header(), PayloadType::IDI, None, &CBC, 17).is_err());
        assert!(encrypted_message(&header(), PayloadType::IDI, None, &GCM, 70_000).is_err());
    }

    #[test]
    fn fragment_capacity_fills_but_never_exceeds_the_limit() {
        for framing in [GCM, CBC] {
            for max in [0, 60, 100, 300, 548, 1252] {
                let cap = framing.fragment_capacity(max);
                if cap == 0 {
                    continue;
                }
                let ct = cap + framing.padding(cap).unwrap().len();
                let (msg, _) =
                    encrypted_message(&header(), PayloadType::IDI, Some((1, 2)), &framing, ct)
                        .unwrap();
                assert!(msg.len() <= max, "{framing:?} {max}: {}", msg.len());
                // one more octet would need another block (or overflow the limit)
                let ct1 = cap + 1 + framing.padding(cap + 1).unwrap().len();
                assert!(36 + framing.iv_len + ct1 + framing.icv_len > max);
            }
        }
        assert_eq!(GCM.fragment_capacity(20), 0);
        assert_eq!(GCM.fragment_capacity(36 + 8 + 16 + 1), 0);
        assert_eq!(GCM.fragment_capacity(36 + 8 + 16 + 2), 1);
    }

    #[test]
    fn fragment_numbers_are_checked() {
        assert!(EncryptedFragment::parse(PayloadType::NONE, &[0, 0, 0, 1]).is_err());
        assert!(EncryptedFragment::parse(PayloadType::NONE, &[0, 2, 0, 1]).is_err());
        assert!(EncryptedFragment::parse(PayloadType::NONE, &[0, 1, 0]).is_err());
        let f = EncryptedFragment::parse(PayloadType::IDI, &[0, 1, 0, 1, 9]).unwrap();
        let mut out = Vec::new();
        f.emit(&mut out).unwrap();
        assert_eq!(out, [0, 1, 0, 1, 9]);
    }
}
