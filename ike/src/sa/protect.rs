//! The Encrypted payload of one IKE SA direction (RFC 7296 §3.14; RFC 5282 for AEAD ciphers):
//! sealing a message's inner payloads and opening a received one.

use crate::crypto::keys::SaCipher;
use crate::crypto::IntegrityKey;
use crate::wire::{
    emit_payloads, encrypted_message, parse_payloads, HeaderRepr, Message, Payload, SkFraming,
    SkLayout, WireError,
};
use ring::rand::SecureRandom;

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
    let f = framing(cipher);
    let mut plain = Vec::new();
    let first = emit_payloads(inner, &mut plain)?;
    plain.extend_from_slice(&f.padding(plain.len())?);
    let (mut msg, layout) = encrypted_message(header, first, None, &f, plain.len())?;
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

/// Verifies and decrypts a received message; returns its header and the inner payloads.
pub(crate) fn open(
    cipher: &SaCipher,
    datagram: &[u8],
) -> Result<(HeaderRepr, Vec<Payload>), ProtectError> {
    let message = Message::parse(datagram)?;
    let first_inner = message
        .payloads
        .iter()
        .find_map(|p| match p {
            Payload::Encrypted(e) => Some(e.first_inner),
            _ => None,
        })
        .ok_or(ProtectError::NotEncrypted)?;
    let f = framing(cipher);
    let layout = SkLayout::locate(datagram, &f)?;
    let iv = &datagram[layout.iv.clone()];
    let mut plain = match cipher {
        SaCipher::Aead(key) => {
            let iv8: [u8; 8] = iv.try_into().map_err(|_| ProtectError::Integrity)?;
            let mut buf = datagram[layout.ciphertext.start..layout.icv.end].to_vec();
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
    };
    let inner = f.strip_padding(&plain)?.to_vec();
    zeroize::Zeroize::zeroize(&mut plain);
    let (payloads, _skipped) = parse_payloads(first_inner, &inner)?;
    Ok((message.header, payloads))
}
