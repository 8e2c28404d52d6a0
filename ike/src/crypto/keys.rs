//! Key derivation for IKE SAs and child SAs (RFC 7296 §2.14, §2.17, §2.18).
//!
//! ```text
//! SKEYSEED = prf(Ni | Nr, g^ir)                                           §2.14
//! {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
//!          = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
//! SKEYSEED (rekeyed IKE SA) = prf_old(SK_d (old), g^ir (new) | Ni | Nr)    §2.18
//! KEYMAT   = prf+(SK_d, [g^ir (new) |] Ni | Nr)                           §2.17
//! ```
//!
//! With the HMAC PRFs the whole of Ni | Nr is the key of the SKEYSEED prf (only the XCBC/CMAC
//! PRFs, which attestgate does not offer, truncate the nonces). With a combined-mode cipher
//! there are no SK_ai / SK_ar (RFC 5282), and each SK_e is the cipher key followed by the
//! 4-octet salt (RFC 5282, RFC 7634 §3). Nonce lengths (RFC 7296 §2.10) are the message
//! parser's business: the derivation takes whatever it is given, as the NIST vectors with
//! 8-octet nonces need.

use std::fmt;

use super::aead::AeadKey;
use super::cbc::{CbcKey, IntegrityKey};
use super::prf::{output_len, prf, prf_parts, prf_plus};
use super::{CryptoError, SecretBytes};
use crate::proposal::{Encryption, Integrity, Prf};

/// Octets of key material an encryption transform takes from prf+, salt included.
pub fn encryption_keymat_len(e: Encryption) -> usize {
    match e {
        Encryption::AesCbc128 => 16,
        Encryption::AesCbc256 => 32,
        Encryption::AesGcm16_128 => 16 + 4,
        Encryption::AesGcm16_256 => 32 + 4,
        Encryption::ChaCha20Poly1305 => 32 + 4,
    }
}

/// A combined-mode cipher takes no integrity transform; a CBC cipher needs one (RFC 7296 §3.3).
fn check_integrity(e: Encryption, i: Option<Integrity>) -> Result<(), CryptoError> {
    match (e.is_aead(), i) {
        (true, Some(_)) => Err(CryptoError::Suite(
            "a combined-mode cipher takes no integrity algorithm",
        )),
        (false, None) => Err(CryptoError::Suite("AES-CBC needs an integrity algorithm")),
        _ => Ok(()),
    }
}

/// The transforms of an IKE SA that its keys depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeSuite {
    encryption: Encryption,
    integrity: Option<Integrity>,
    prf: Prf,
}

impl IkeSuite {
    pub fn new(
        encryption: Encryption,
        integrity: Option<Integrity>,
        prf: Prf,
    ) -> Result<Self, CryptoError> {
        check_integrity(encryption, integrity)?;
        Ok(IkeSuite {
            encryption,
            integrity,
            prf,
        })
    }
    pub fn encryption(&self) -> Encryption {
        self.encryption
    }
    pub fn integrity(&self) -> Option<Integrity> {
        self.integrity
    }
    pub fn prf(&self) -> Prf {
        self.prf
    }
}

/// The transforms of a child SA (ESP) that its keys depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChildSuite {
    encryption: Encryption,
    integrity: Option<Integrity>,
}

impl ChildSuite {
    pub fn new(encryption: Encryption, integrity: Option<Integrity>) -> Result<Self, CryptoError> {
        check_integrity(encryption, integrity)?;
        Ok(ChildSuite {
            encryption,
            integrity,
        })
    }
    pub fn encryption(&self) -> Encryption {
        self.encryption
    }
    pub fn integrity(&self) -> Option<Integrity> {
        self.integrity
    }
}

fn integrity_key_len(i: Option<Integrity>) -> usize {
    i.map(IntegrityKey::key_len).unwrap_or(0)
}

/// SKEYSEED = prf(Ni | Nr, g^ir) for a new IKE SA (RFC 7296 §2.14).
pub fn skeyseed(prf_alg: Prf, ni: &[u8], nr: &[u8], g_ir: &[u8]) -> SecretBytes {
    let key = SecretBytes::from_slice(&[ni, nr].concat());
    prf(prf_alg, key.as_bytes(), g_ir).into()
}

/// SKEYSEED for the IKE SA that replaces `old` (RFC 7296 §2.18):
/// prf(SK_d (old), g^ir (new) | Ni | Nr), where prf is the *old* IKE SA's PRF and the nonces
/// and g^ir are those of the rekeying CREATE_CHILD_SA exchange. Derive the new SA's keys from
/// it with [`IkeSaKeys::derive`], the new SA's suite and SPIs.
pub fn rekey_skeyseed(old: &IkeSaKeys, g_ir_new: &[u8], ni: &[u8], nr: &[u8]) -> SecretBytes {
    prf_parts(old.suite.prf, old.sk_d.as_bytes(), &[g_ir_new, ni, nr]).into()
}

/// The seven secrets of an IKE SA. The `*i` keys protect what the original initiator sends,
/// the `*r` keys what the original responder sends.
#[derive(Clone)]
pub struct IkeSaKeys {
    suite: IkeSuite,
    /// Derives child SA keys and the next IKE SA's SKEYSEED.
    pub sk_d: SecretBytes,
    /// Integrity keys; empty for combined-mode ciphers.
    pub sk_ai: SecretBytes,
    pub sk_ar: SecretBytes,
    /// Encryption keys (salt included for combined-mode ciphers).
    pub sk_ei: SecretBytes,
    pub sk_er: SecretBytes,
    /// Keys for the AUTH payload computation (RFC 7296 §2.15).
    pub sk_pi: SecretBytes,
    pub sk_pr: SecretBytes,
}

impl IkeSaKeys {
    /// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} = prf+(SKEYSEED, Ni | Nr | SPIi |
    /// SPIr), each as long as its transform needs (RFC 7296 §2.14).
    pub fn derive(
        suite: IkeSuite,
        skeyseed: &SecretBytes,
        ni: &[u8],
        nr: &[u8],
        spi_i: &[u8; 8],
        spi_r: &[u8; 8],
    ) -> Result<Self, CryptoError> {
        let prf_len = output_len(suite.prf);
        let a_len = integrity_key_len(suite.integrity);
        let e_len = encryption_keymat_len(suite.encryption);
        let lengths = [prf_len, a_len, a_len, e_len, e_len, prf_len, prf_len];
        let seed = [ni, nr, &spi_i[..], &spi_r[..]].concat();
        let stream = prf_plus(suite.prf, skeyseed.as_bytes(), &seed, lengths.iter().sum())?;
        let [sk_d, sk_ai, sk_ar, sk_ei, sk_er, sk_pi, sk_pr] = split(&stream, lengths);
        Ok(IkeSaKeys {
            suite,
            sk_d,
            sk_ai,
            sk_ar,
            sk_ei,
            sk_er,
            sk_pi,
            sk_pr,
        })
    }

    pub fn suite(&self) -> IkeSuite {
        self.suite
    }

    /// The SK payload protection for messages the original initiator sends.
    pub fn initiator_cipher(&self) -> Result<SaCipher, CryptoError> {
        SaCipher::new(
            self.suite.encryption,
            self.suite.integrity,
            &self.sk_ei,
            &self.sk_ai,
        )
    }

    /// The SK payload protection for messages the original responder sends.
    pub fn responder_cipher(&self) -> Result<SaCipher, CryptoError> {
        SaCipher::new(
            self.suite.encryption,
            self.suite.integrity,
            &self.sk_er,
            &self.sk_ar,
        )
    }
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeSaKeys")
            .field("suite", &self.suite)
            .field("sk_d", &self.sk_d)
            .field("sk_ai", &self.sk_ai)
            .field("sk_ar", &self.sk_ar)
            .field("sk_ei", &self.sk_ei)
            .field("sk_er", &self.sk_er)
            .field("sk_pi", &self.sk_pi)
            .field("sk_pr", &self.sk_pr)
            .finish()
    }
}

/// Keys for the SA of one direction of a child SA.
#[derive(Clone)]
pub struct DirectionKeys {
    /// Encryption key (salt included for combined-mode ciphers).
    pub encryption: SecretBytes,
    /// Integrity key; empty for combined-mode ciphers.
    pub integrity: SecretBytes,
}

impl fmt::Debug for DirectionKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectionKeys")
            .field("encryption", &self.encryption)
            .field("integrity", &self.integrity)
            .finish()
    }
}

/// Keys for both SAs of a child SA. "Initiator" is the initiator of the exchange that created
/// or rekeyed the child SA, not necessarily of the IKE SA.
#[derive(Clone)]
pub struct ChildSaKeys {
    suite: ChildSuite,
    pub initiator_to_responder: DirectionKeys,
    pub responder_to_initiator: DirectionKeys,
}

impl ChildSaKeys {
    /// KEYMAT = prf+(SK_d, Ni | Nr), or prf+(SK_d, g^ir (new) | Ni | Nr) when the
    /// CREATE_CHILD_SA exchange did its own Diffie-Hellman (PFS), split initiator-to-responder
    /// first, and within each direction the encryption key before the integrity key
    /// (RFC 7296 §2.17). For the first child SA, Ni and Nr are the IKE_SA_INIT nonces.
    pub fn derive(
        ike: &IkeSaKeys,
        suite: ChildSuite,
        g_ir_new: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<Self, CryptoError> {
        let e_len = encryption_keymat_len(suite.encryption);
        let a_len = integrity_key_len(suite.integrity);
        let seed = [g_ir_new.unwrap_or_default(), ni, nr].concat();
        let stream = prf_plus(
            ike.suite.prf,
            ike.sk_d.as_bytes(),
            &seed,
            2 * (e_len + a_len),
        )?;
        let [ei, ai, er, ar] = split(&stream, [e_len, a_len, e_len, a_len]);
        Ok(ChildSaKeys {
            suite,
            initiator_to_responder: DirectionKeys {
                encryption: ei,
                integrity: ai,
            },
            responder_to_initiator: DirectionKeys {
                encryption: er,
                integrity: ar,
            },
        })
    }

    pub fn suite(&self) -> ChildSuite {
        self.suite
    }

    /// The ESP transform for one direction.
    pub fn cipher(&self, keys: &DirectionKeys) -> Result<SaCipher, CryptoError> {
        SaCipher::new(
            self.suite.encryption,
            self.suite.integrity,
            &keys.encryption,
            &keys.integrity,
        )
    }
}

impl fmt::Debug for ChildSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChildSaKeys")
            .field("suite", &self.suite)
            .field("initiator_to_responder", &self.initiator_to_responder)
            .field("responder_to_initiator", &self.responder_to_initiator)
            .finish()
    }
}

/// The protection of one direction of an SA: a combined-mode cipher, or AES-CBC with HMAC.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one per SA direction, built once and kept in place"
)]
pub enum SaCipher {
    Aead(AeadKey),
    EncryptThenMac {
        cipher: CbcKey,
        integrity: IntegrityKey,
    },
}

impl SaCipher {
    pub fn new(
        encryption: Encryption,
        integrity: Option<Integrity>,
        encryption_key: &SecretBytes,
        integrity_key: &SecretBytes,
    ) -> Result<Self, CryptoError> {
        check_integrity(encryption, integrity)?;
        match integrity {
            None => Ok(SaCipher::Aead(AeadKey::new(
                encryption,
                encryption_key.as_bytes(),
            )?)),
            Some(i) => Ok(SaCipher::EncryptThenMac {
                cipher: CbcKey::new(encryption, encryption_key.as_bytes())?,
                integrity: IntegrityKey::new(i, integrity_key.as_bytes())?,
            }),
        }
    }
}

/// Cuts `stream` into consecutive pieces of the given lengths, which must add up to at most
/// its length (the callers asked prf+ for exactly their sum).
fn split<const N: usize>(stream: &[u8], lengths: [usize; N]) -> [SecretBytes; N] {
    let mut offset = 0;
    lengths.map(|len| {
        let piece = stream.get(offset..offset + len).unwrap_or_default();
        offset += len;
        SecretBytes::from_slice(piece)
    })
}

#[cfg(test)]
mod tests;
