//! The Encrypted payload of one IKE SA direction (RFC 7296 §3.14; RFC 5282 for AEAD ciphers):
//! sealing a message's inner payloads and opening a received one.

use crate::crypto::keys::SaCipher;
use crate::crypto::IntegrityKey;
use crate::wire::{
    emit_payloads, encrypted_message, parse_payloads, HeaderRepr, Message, Payload, PayloadType,
    SkFraming, SkLayout, WireError,
};
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

/// Why a protected message was not opened or sealed.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error("malformed: {0}")]
    Wire(#[from] WireError),
    #[error("integrity check failed")]
    Integrity,
    #[error("crypto: {0}")]
    Crypto(#[from] crate::crypto::CryptoError),
    #[error("no Encrypted payload")]
    NotEncrypted,
    #[error("random source failed")]
    Random,
}

/// The framing a cipher needs: AEAD ciphers use an 8-octet IV and a 16-octet ICV (RFC 5282
/// §3, RFC 7634 §3); AES-CBC a 16-octet IV and blocks, plus the integrity algorithm's ICV.
pub(crate) fn framing(cipher: &SaCipher) -> SkFraming {
    match cipher {
        SaCipher::Aead(_) => SkFraming {
            iv_len: 8,
            icv_len: 16,
            block_len: 1,
        },
        SaCipher::EncryptThenMac { integrity, .. } => SkFraming {
            iv_len: 16,
            icv_len: IntegrityKey::icv_len(integrity.algorithm()),
            block_len: 16,
        },
    }
}

/// Builds and encrypts a message: `header` (Next Payload and Length are filled in) around an SK
/// payload holding `inner`.
pub(crate) fn seal(
    cipher: &SaCipher,
    header: &HeaderRepr,
    inner: &[Payload],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, ProtectError> {
    let mut plain = Zeroizing::new(Vec::new());
    let first = emit_payloads(inner, &mut plain)?;
    seal_inner(cipher, header, first, None, &plain, rng)
}

/// Encrypts already emitted inner payloads (`inner`, the first of type `first_inner`) as one
/// SK message, or with `fragment = Some((number, total))` as one SKF fragment of a message
/// (RFC 7383 §2.5: each fragment is padded, encrypted and integrity-protected on its own; its
/// associated data covers the header, the SKF payload header and the fragment numbers).
pub(crate) fn seal_inner(
    cipher: &SaCipher,
    header: &HeaderRepr,
    first_inner: PayloadType,
    fragment: Option<(u16, u16)>,
    inner: &[u8],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, ProtectError> {
    let f = framing(cipher);
    let mut plain = Zeroizing::new(Vec::with_capacity(inner.len() + f.block_len + 1));
    plain.extend_from_slice(inner);
    plain.extend_from_slice(&f.padding(inner.len())?);
    let (mut msg, layout) = encrypted_message(header, first_inner, fragment, &f, plain.len())?;
    let mut iv = vec![0u8; f.iv_len];
    rng.fill(&mut iv).map_err(|_| ProtectError::Random)?;
    msg[layout.iv.clone()].copy_from_slice(&iv);
    match cipher {
        SaCipher::Aead(key) => {
            let iv8: [u8; 8] = iv.as_slice().try_into().map_err(|_| ProtectError::Random)?;
            let aad = msg[..layout.iv.start].to_vec();
            let tag = key.seal_in_place_detached(&iv8, &aad, &mut plain)?;
            msg[layout.ciphertext.clone()].copy_from_slice(&plain);
            msg[layout.icv.clone()].copy_from_slice(&tag);
        }
        SaCipher::EncryptThenMac { cipher, integrity } => {
            let iv16: [u8; 16] = iv.as_slice().try_into().map_err(|_| ProtectError::Random)?;
            cipher.encrypt_in_place(&iv16, &mut plain)?;
            msg[layout.ciphertext.clone()].copy_from_slice(&plain);
            let icv = integrity.compute(&msg[..layout.icv.start]);
            msg[layout.icv.clone()].copy_from_slice(icv.as_bytes());
        }
    }
    Ok(msg)
}

/// Cuts a message's inner payloads into SKF fragments of at most `max_message` octets each
/// (RFC 7383 §2.5), numbered 1..=total, each sealed on its own.
pub(crate) fn seal_fragments(
    cipher: &SaCipher,
    header: &HeaderRepr,
    first_inner: PayloadType,
    inner: &[u8],
    max_message: usize,
    rng: &dyn SecureRandom,
) -> Result<Vec<Vec<u8>>, ProtectError> {
    let capacity = framing(cipher).fragment_capacity(max_message);
    if capacity == 0 || inner.is_empty() {
        return Err(ProtectError::Wire(WireError::Invalid {
            what: "SKF payload",
            why: "the fragment size leaves no room for data",
        }));
    }
    let total = u16::try_from(inner.len().div_ceil(capacity)).map_err(|_| {
        ProtectError::Wire(WireError::TooLong {
            what: "fragmented IKE message",
            length: inner.len(),
            max: capacity * usize::from(u16::MAX),
        })
    })?;
    (1..=total)
        .zip(inner.chunks(capacity))
        .map(|(number, chunk)| {
            seal_inner(
                cipher,
                header,
                first_inner,
                Some((number, total)),
                chunk,
                rng,
            )
        })
        .collect()
}

/// A verified and decrypted SK message or SKF fragment.
pub(crate) struct Opened {
    pub(crate) header: HeaderRepr,
    /// The first inner payload's type (zero in SKF fragments after the first, RFC 7383 §2.5).
    pub(crate) first_inner: PayloadType,
    /// `(Fragment Number, Total Fragments)` of an SKF fragment.
    pub(crate) fragment: Option<(u16, u16)>,
    /// The inner payloads' octets, padding removed.
    pub(crate) inner: Zeroizing<Vec<u8>>,
}

/// Verifies and decrypts a received message; returns its header and the inner payloads.
/// A fragment is not a whole message and is refused here (see [`open_inner`]).
pub(crate) fn open(
    cipher: &SaCipher,
    datagram: &[u8],
) -> Result<(HeaderRepr, Vec<Payload>), ProtectError> {
    let opened = open_inner(cipher, datagram)?;
    if opened.fragment.is_some() {
        return Err(ProtectError::NotEncrypted);
    }
    let (payloads, _skipped) = parse_payloads(opened.first_inner, &opened.inner)?;
    Ok((opened.header, payloads))
}

/// Verifies and decrypts a received SK message or SKF fragment without parsing what is inside.
pub(crate) fn open_inner(cipher: &SaCipher, datagram: &[u8]) -> Result<Opened, ProtectError> {
    let message = Message::parse(datagram)?;
    let (first_inner, fragment) = message
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::Encrypted(e) => Some((e.first_inner, None)),
            Payload::EncryptedFragment(f) => Some((f.first_inner, Some((f.number, f.total)))),
            _ => None,
        })
        .ok_or(ProtectError::NotEncrypted)?;
    let f = framing(cipher);
    let layout = SkLayout::locate(datagram, &f)?;
    let iv = &datagram[layout.iv.clone()];
    let plain = Zeroizing::new(match cipher {
        SaCipher::Aead(key) => {
            let iv8: [u8; 8] = iv.try_into().map_err(|_| ProtectError::Integrity)?;
            let mut buf =
                Zeroizing::new(datagram[layout.ciphertext.start..layout.icv.end].to_vec());
            let opened = key
                .open_in_place(&iv8, &datagram[..layout.iv.start], &mut buf)
                .map_err(|_| ProtectError::Integrity)?;
            opened.to_vec()
        }
        SaCipher::EncryptThenMac { cipher, integrity } => {
            integrity
                .verify(&datagram[..layout.icv.start], &datagram[layout.icv.clone()])
                .map_err(|_| ProtectError::Integrity)?;
            let iv16: [u8; 16] = iv.try_into().map_err(|_| ProtectError::Integrity)?;
            let mut buf = datagram[layout.ciphertext.clone()].to_vec();
            cipher.decrypt_in_place(&iv16, &mut buf)?;
            buf
        }
    });
    let inner = Zeroizing::new(f.strip_padding(&plain)?.to_vec());
    Ok(Opened {
        header: message.header,
        first_inner,
        fragment,
        inner,
    })
}
