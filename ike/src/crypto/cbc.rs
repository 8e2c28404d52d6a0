//! The classic encrypt-then-MAC suites: AES-CBC (RFC 3602) with the truncated HMAC-SHA2
//! integrity transforms of RFC 4868.
//!
//! ESP (RFC 4303 §3.3.2, §3.4.4) and IKE SK payloads (RFC 7296 §3.14) use them the same way:
//! the sender encrypts the padded payload with a fresh, unpredictable 16-octet IV (RFC 3602
//! §2.1), then computes the ICV over everything from the ESP SPI / IKE header through the end of
//! the ciphertext; the receiver checks the ICV *before* decrypting. Padding and framing are the
//! callers' business, so [`CbcKey`] only takes whole blocks.

use std::fmt;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, InnerIvInit, KeyInit};
use ring::hmac;
use subtle::ConstantTimeEq;

use super::{encryption_name, integrity_name, CryptoError};
use crate::proposal::{Encryption, Integrity};

/// AES block length, and the length of the CBC IV.
pub const BLOCK_LEN: usize = 16;

#[allow(
    clippy::large_enum_variant,
    reason = "both variants are AES key schedules of similar size; boxing only adds a hop"
)]
enum Cipher {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

/// An AES-CBC key for one direction of one SA. The AES key schedule is wiped on drop.
pub struct CbcKey {
    alg: Encryption,
    cipher: Cipher,
}

impl CbcKey {
    /// Key length of `alg` in octets, or `None` for the AEAD ciphers.
    pub fn key_len(alg: Encryption) -> Option<usize> {
        match alg {
            Encryption::AesCbc128 => Some(16),
            Encryption::AesCbc256 => Some(32),
            _ => None,
        }
    }

    pub fn new(alg: Encryption, key: &[u8]) -> Result<Self, CryptoError> {
        let expected = Self::key_len(alg).ok_or(CryptoError::NotCbc(encryption_name(alg)))?;
        let key_length_error = CryptoError::KeyLength {
            alg: encryption_name(alg),
            expected,
            got: key.len(),
        };
        if key.len() != expected {
            return Err(key_length_error);
        }
        let cipher = match alg {
            Encryption::AesCbc128 => {
                Cipher::Aes128(aes::Aes128::new_from_slice(key).map_err(|_| key_length_error)?)
            }
            _ => Cipher::Aes256(aes::Aes256::new_from_slice(key).map_err(|_| key_length_error)?),
        };
        Ok(CbcKey { alg, cipher })
    }

    pub fn algorithm(&self) -> Encryption {
        self.alg
    }

    /// Encrypts `buf`, a whole number of blocks (already padded), in place.
    pub fn encrypt_in_place(
        &self,
        iv: &[u8; BLOCK_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        check_blocks(buf)?;
        let len = buf.len();
        // The AES key schedule is cloned (and the clone wiped on drop): the cbc crate's
        // encryptor owns its cipher and carries the chaining state.
        let done = match &self.cipher {
            Cipher::Aes128(c) => cbc::Encryptor::inner_iv_init(c.clone(), iv.into())
                .encrypt_padded_mut::<NoPadding>(buf, len)
                .map(|out| out.len()),
            Cipher::Aes256(c) => cbc::Encryptor::inner_iv_init(c.clone(), iv.into())
                .encrypt_padded_mut::<NoPadding>(buf, len)
                .map(|out| out.len()),
        };
        match done {
            Ok(n) if n == len => Ok(()),
            _ => Err(CryptoError::NotBlockAligned(len)),
        }
    }

    /// Decrypts `buf`, a whole number of blocks, in place. Padding is left for the caller.
    pub fn decrypt_in_place(
        &self,
        iv: &[u8; BLOCK_LEN],
        buf: &mut [u8],
    ) -> Result<(), CryptoError> {
        check_blocks(buf)?;
        let len = buf.len();
        let done = match &self.cipher {
            Cipher::Aes128(c) => cbc::Decryptor::inner_iv_init(c.clone(), iv.into())
                .decrypt_padded_mut::<NoPadding>(buf)
                .map(|out| out.len()),
            Cipher::Aes256(c) => cbc::Decryptor::inner_iv_init(c.clone(), iv.into())
                .decrypt_padded_mut::<NoPadding>(buf)
                .map(|out| out.len()),
        };
        match done {
            Ok(n) if n == len => Ok(()),
            _ => Err(CryptoError::NotBlockAligned(len)),
        }
    }
}

fn check_blocks(buf: &[u8]) -> Result<(), CryptoError> {
    if !buf.len().is_multiple_of(BLOCK_LEN) {
        return Err(CryptoError::NotBlockAligned(buf.len()));
    }
    Ok(())
}

impl fmt::Debug for CbcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CbcKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A truncated integrity check value; at most 32 octets (HMAC-SHA2-512-256).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Icv {
    bytes: [u8; 32],
    len: usize,
}

impl Icv {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl AsRef<[u8]> for Icv {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for Icv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Icv(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// An HMAC-SHA2 integrity key (RFC 4868) for one direction of one SA.
pub struct IntegrityKey {
    alg: Integrity,
    key: hmac::Key,
}

impl IntegrityKey {
    /// Key length in octets: RFC 4868 §2.1.1 fixes it to the hash output length.
    pub fn key_len(alg: Integrity) -> usize {
        match alg {
            Integrity::HmacSha256_128 => 32,
            Integrity::HmacSha384_192 => 48,
            Integrity::HmacSha512_256 => 64,
        }
    }

    /// ICV length in octets: half the hash output (RFC 4868 §2.3).
    pub fn icv_len(alg: Integrity) -> usize {
        Self::key_len(alg) / 2
    }

    pub fn new(alg: Integrity, key: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != Self::key_len(alg) {
            return Err(CryptoError::KeyLength {
                alg: integrity_name(alg),
                expected: Self::key_len(alg),
                got: key.len(),
            });
        }
        let ring_alg = match alg {
            Integrity::HmacSha256_128 => hmac::HMAC_SHA256,
            Integrity::HmacSha384_192 => hmac::HMAC_SHA384,
            Integrity::HmacSha512_256 => hmac::HMAC_SHA512,
        };
        Ok(IntegrityKey {
            alg,
            key: hmac::Key::new(ring_alg, key),
        })
    }

    pub fn algorithm(&self) -> Integrity {
        self.alg
    }

    /// ICV over `data`.
    pub fn compute(&self, data: &[u8]) -> Icv {
        self.compute_parts(&[data])
    }

    /// ICV over the concatenation of `parts`; ESP with extended sequence numbers authenticates
    /// the high-order 32 bits after the packet without sending them (RFC 4303 §2.2.1, §3.3.2.1).
    pub fn compute_parts(&self, parts: &[&[u8]]) -> Icv {
        let mut ctx = hmac::Context::with_key(&self.key);
        for part in parts {
            ctx.update(part);
        }
        let tag = ctx.sign();
        let len = Self::icv_len(self.alg);
        let mut bytes = [0u8; 32];
        bytes[..len].copy_from_slice(&tag.as_ref()[..len]);
        Icv { bytes, len }
    }

    /// Checks `icv` against the ICV over `data`, in constant time.
    pub fn verify(&self, data: &[u8], icv: &[u8]) -> Result<(), CryptoError> {
        self.verify_parts(&[data], icv)
    }

    /// Checks `icv` against the ICV over the concatenation of `parts`, in constant time. An ICV
    /// of the wrong length fails like a wrong one.
    pub fn verify_parts(&self, parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError> {
        let expected = self.compute_parts(parts);
        if bool::from(expected.as_bytes().ct_eq(icv)) {
            Ok(())
        } else {
            Err(CryptoError::Authentication)
        }
    }
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntegrityKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::{hex, to_hex, Garbage};

    fn iv(s: &str) -> [u8; 16] {
        hex(s).try_into().unwrap()
    }

    fn check_cbc(alg: Encryption, key: &str, iv_hex: &str, plain: &[u8], cipher: &str) {
        let key = CbcKey::new(alg, &hex(key)).unwrap();
        let iv = iv(iv_hex);
        let mut buf = plain.to_vec();
        key.encrypt_in_place(&iv, &mut buf).unwrap();
        assert_eq!(to_hex(&buf), to_hex(&hex(cipher)));
        key.decrypt_in_place(&iv, &mut buf).unwrap();
        assert_eq!(buf, plain);
    }

    // RFC 3602 §4, case #1: one block.
    #[test]
    fn aes128_cbc_rfc3602_case_1() {
        check_cbc(
            Encryption::AesCbc128,
            "06a9214036b8a15b512e03d534120006",
            "3dafba429d9eb430b422da802c9fac41",
            b"Single block msg",
            "e353779c1079aeb82708942dbe77181a",
        );
    }

    // RFC 3602 §4, case #2: two blocks.
    #[test]
    fn aes128_cbc_rfc3602_case_2() {
        check_cbc(
            Encryption::AesCbc128,
            "c286696d887c9aa0611bbb3e2025a45a",
            "562e17996d093d28ddb3ba695a2e6f58",
            &hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1",
        );
    }

    // RFC 3602 §4, case #3: four blocks.
    #[test]
    fn aes128_cbc_rfc3602_case_3() {
        check_cbc(
            Encryption::AesCbc128,
            "56e47a38c5598974bc46903dba290349",
            "8ce82eefbea0da3c44699ed7db51b7d9",
            &hex(
                "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf
                 c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf",
            ),
            "c30e32ffedc0774e6aff6af0869f71aa0f3af07a9a31a9c684db207eb0ef8e4e
             35907aa632c3ffdf868bb7b29d3d46ad83ce9f9a102ee99d49a53e87f4c3da55",
        );
    }

    // RFC 3602 has no AES-256 case; NIST SP 800-38A Appendix F.2.5 (CBC-AES256.Encrypt).
    #[test]
    fn aes256_cbc_sp800_38a_f_2_5() {
        check_cbc(
            Encryption::AesCbc256,
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            "000102030405060708090a0b0c0d0e0f",
            &hex(
                "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51
                 30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
            ),
            "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
        );
    }

    // RFC 4868 §2.7.2.1-2.7.2.3, authenticator test cases 1 and 2 (keys of the full hash
    // length, as IPsec uses them; the ICV is the truncated HMAC).
    #[test]
    fn hmac_sha2_truncated_rfc4868() {
        let cases: &[(Integrity, Vec<u8>, &[u8], &str)] = &[
            (
                Integrity::HmacSha256_128,
                vec![0x0b; 32],
                b"Hi There",
                "198a607eb44bfbc69903a0f1cf2bbdc5",
            ),
            (
                Integrity::HmacSha256_128,
                b"JefeJefeJefeJefeJefeJefeJefeJefe".to_vec(),
                b"what do ya want for nothing?",
                "167f928588c5cc2eef8e3093caa0e87c",
            ),
            (
                Integrity::HmacSha384_192,
                vec![0x0b; 48],
                b"Hi There",
                "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973",
            ),
            (
                Integrity::HmacSha384_192,
                b"JefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefe".to_vec(),
                b"what do ya want for nothing?",
                "2c7353974f1842fd66d53c452ca42122b28c0b594cfb184d",
            ),
            (
                Integrity::HmacSha512_256,
                vec![0x0b; 64],
                b"Hi There",
                "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8",
            ),
            (
                Integrity::HmacSha512_256,
                b"JefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefeJefe".to_vec(),
                b"what do ya want for nothing?",
                "cb370917ae8a7ce28cfd1d8f4705d6141c173b2a9362c15df235dfb251b15454",
            ),
        ];
        for (alg, key, data, icv) in cases {
            let k = IntegrityKey::new(*alg, key).unwrap();
            let got = k.compute(data);
            assert_eq!(to_hex(got.as_bytes()), *icv, "{alg:?}");
            assert_eq!(got.as_bytes().len(), IntegrityKey::icv_len(*alg));
            k.verify(data, &hex(icv)).unwrap();
            // Split input gives the same ICV.
            let (a, b) = data.split_at(3);
            assert_eq!(k.compute_parts(&[a, b]), got);
            k.verify_parts(&[a, b], got.as_bytes()).unwrap();
        }
    }

    #[test]
    fn icv_verification_failures() {
        let k = IntegrityKey::new(Integrity::HmacSha256_128, &[0x0b; 32]).unwrap();
        let good = hex("198a607eb44bfbc69903a0f1cf2bbdc5");
        k.verify(b"Hi There", &good).unwrap();
        for i in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                k.verify(b"Hi There", &bad).unwrap_err(),
                CryptoError::Authentication
            );
        }
        // Wrong lengths, including the untruncated HMAC and an empty ICV.
        for len in [0, 1, 12, 15, 17, 24, 32] {
            let mut icv = good.clone();
            icv.resize(len, 0);
            assert_eq!(
                k.verify(b"Hi There", &icv).unwrap_err(),
                CryptoError::Authentication,
                "length {len}"
            );
        }
        assert!(k.verify(b"Hi there", &good).is_err());
    }

    #[test]
    fn wrong_key_lengths_are_refused() {
        for alg in [
            Integrity::HmacSha256_128,
            Integrity::HmacSha384_192,
            Integrity::HmacSha512_256,
        ] {
            let good = IntegrityKey::key_len(alg);
            for len in [0, 16, 20, good - 1, good + 1] {
                assert!(matches!(
                    IntegrityKey::new(alg, &vec![1; len]),
                    Err(CryptoError::KeyLength { got, .. }) if got == len
                ));
            }
        }
        for (alg, good) in [(Encryption::AesCbc128, 16), (Encryption::AesCbc256, 32)] {
            for len in [0, 15, 17, 24, 31, 33, 64] {
                if len == good {
                    continue;
                }
                assert_eq!(
                    CbcKey::new(alg, &vec![1; len]).unwrap_err(),
                    CryptoError::KeyLength {
                        alg: encryption_name(alg),
                        expected: good,
                        got: len
                    }
                );
            }
        }
        assert_eq!(
            CbcKey::new(Encryption::AesGcm16_128, &[0; 16]).unwrap_err(),
            CryptoError::NotCbc("aes128gcm16")
        );
    }

    #[test]
    fn partial_blocks_are_an_error_not_a_panic() {
        let mut g = Garbage(77);
        for alg in [Encryption::AesCbc128, Encryption::AesCbc256] {
            let key = CbcKey::new(alg, &g.bytes(CbcKey::key_len(alg).unwrap())).unwrap();
            for len in (0..100).filter(|l| l % 16 != 0) {
                let mut buf = g.bytes(len);
                assert_eq!(
                    key.encrypt_in_place(&[0; 16], &mut buf).unwrap_err(),
                    CryptoError::NotBlockAligned(len)
                );
                assert_eq!(
                    key.decrypt_in_place(&[0; 16], &mut buf).unwrap_err(),
                    CryptoError::NotBlockAligned(len)
                );
            }
            // Empty input is zero blocks: nothing to do.
            key.encrypt_in_place(&[0; 16], &mut []).unwrap();
            key.decrypt_in_place(&[0; 16], &mut []).unwrap();
        }
    }

    /// The order ESP and IKE use: encrypt, MAC header || IV || ciphertext; check, then decrypt.
    #[test]
    fn encrypt_then_mac_round_trip() {
        let mut g = Garbage(5);
        let enc = CbcKey::new(Encryption::AesCbc256, &g.bytes(32)).unwrap();
        let mac = IntegrityKey::new(Integrity::HmacSha512_256, &g.bytes(64)).unwrap();
        let header = g.bytes(8);
        let iv: [u8; 16] = g.bytes(16).try_into().unwrap();
        let plain = g.bytes(64);
        let mut ct = plain.clone();
        enc.encrypt_in_place(&iv, &mut ct).unwrap();
        let icv = mac.compute_parts(&[&header, &iv, &ct]);
        assert_eq!(icv.as_bytes().len(), 32);

        mac.verify_parts(&[&header, &iv, &ct], icv.as_bytes())
            .unwrap();
        let mut opened = ct.clone();
        enc.decrypt_in_place(&iv, &mut opened).unwrap();
        assert_eq!(opened, plain);

        ct[0] ^= 0x80;
        assert!(mac
            .verify_parts(&[&header, &iv, &ct], icv.as_bytes())
            .is_err());
    }

    #[test]
    fn debug_does_not_print_keys() {
        let c = CbcKey::new(Encryption::AesCbc128, &[0x5a; 16]).unwrap();
        let i = IntegrityKey::new(Integrity::HmacSha256_128, &[0x5a; 32]).unwrap();
        for printed in [format!("{c:?}"), format!("{i:?}")] {
            assert!(
                !printed.contains("5a") && !printed.contains("90"),
                "{printed}"
            );
        }
    }
}
