//! Combined-mode ciphers as ESP and IKE use them: AES-GCM with a 16-octet ICV (RFC 4106 for ESP,
//! RFC 5282 for IKE SK payloads) and ChaCha20-Poly1305 (RFC 7634).
//!
//! All three share one layout: the negotiated key material is the cipher key followed by a
//! 4-octet salt (RFC 4106 §8.1, RFC 5282, RFC 7634), and the 12-octet AEAD nonce is
//! `salt || IV`, where the 8-octet IV travels in the packet. The IV MUST NOT repeat under one
//! key (RFC 4106 §3.1, RFC 7634 §2); ESP can use its sequence number. What goes into the AAD is
//! the caller's business: SPI || sequence number (|| ESN high bits) for ESP (RFC 4106 §5,
//! RFC 7634 §2.1), the IKE header through the SK payload header for IKE (RFC 5282).

use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use super::{encryption_name, CryptoError};
use crate::proposal::Encryption;

/// Length of the integrity check value (the AEAD tag) appended to the ciphertext.
pub const ICV_LEN: usize = 16;
/// Length of the salt at the end of the key material.
pub const SALT_LEN: usize = 4;
/// Length of the explicit IV carried in each packet.
pub const IV_LEN: usize = 8;

/// An AEAD key (cipher key plus salt) for one direction of one SA.
pub struct AeadKey {
    alg: Encryption,
    key: LessSafeKey,
    salt: [u8; SALT_LEN],
}

impl AeadKey {
    /// Octets of key material `alg` takes (key || salt), or `None` for the CBC ciphers.
    pub fn keymat_len(alg: Encryption) -> Option<usize> {
        ring_algorithm(alg).map(|(_, key_len)| key_len + SALT_LEN)
    }

    /// Builds a key from negotiated key material: the cipher key followed by the 4-octet salt.
    pub fn new(alg: Encryption, keymat: &[u8]) -> Result<Self, CryptoError> {
        let (ring_alg, key_len) =
            ring_algorithm(alg).ok_or(CryptoError::NotAead(encryption_name(alg)))?;
        let key_length_error = CryptoError::KeyLength {
            alg: encryption_name(alg),
            expected: key_len + SALT_LEN,
            got: keymat.len(),
        };
        if keymat.len() != key_len + SALT_LEN {
            return Err(key_length_error);
        }
        let (key, salt_bytes) = keymat.split_at(key_len);
        let unbound = UnboundKey::new(ring_alg, key).map_err(|_| key_length_error)?;
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(salt_bytes);
        Ok(AeadKey {
            alg,
            key: LessSafeKey::new(unbound),
            salt,
        })
    }

    pub fn algorithm(&self) -> Encryption {
        self.alg
    }

    fn nonce(&self, iv: &[u8; IV_LEN]) -> Nonce {
        let mut n = [0u8; aead::NONCE_LEN];
        n[..SALT_LEN].copy_from_slice(&self.salt);
        n[SALT_LEN..].copy_from_slice(iv);
        Nonce::assume_unique_for_key(n)
    }

    /// Encrypts `buf` in place and appends the 16-octet ICV.
    pub fn seal_in_place(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<(), CryptoError> {
        self.key
            .seal_in_place_append_tag(self.nonce(iv), Aad::from(aad), buf)
            .map_err(|_| CryptoError::TooLong)
    }

    /// Encrypts `buf` in place and returns the ICV, for callers that lay out the packet
    /// themselves (the ESP data path writes the ICV after the ciphertext in its own buffer).
    pub fn seal_in_place_detached(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> Result<[u8; ICV_LEN], CryptoError> {
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(iv), Aad::from(aad), buf)
            .map_err(|_| CryptoError::TooLong)?;
        let mut icv = [0u8; ICV_LEN];
        icv.copy_from_slice(tag.as_ref());
        Ok(icv)
    }

    /// Verifies and decrypts `buf` (ciphertext || ICV) in place and returns the plaintext, the
    /// first `buf.len() - 16` octets of `buf`. On error the contents of `buf` are unspecified
    /// and must be discarded.
    pub fn open_in_place<'a>(
        &self,
        iv: &[u8; IV_LEN],
        aad: &[u8],
        buf: &'a mut [u8],
    ) -> Result<&'a mut [u8], CryptoError> {
        if buf.len() < ICV_LEN {
            return Err(CryptoError::TooShort {
                got: buf.len(),
                min: ICV_LEN,
            });
        }
        self.key
            .open_in_place(self.nonce(iv), Aad::from(aad), buf)
            .map_err(|_| CryptoError::Authentication)
    }
}

fn ring_algorithm(alg: Encryption) -> Option<(&'static aead::Algorithm, usize)> {
    match alg {
        Encryption::AesGcm16_128 => Some((&aead::AES_128_GCM, 16)),
        Encryption::AesGcm16_256 => Some((&aead::AES_256_GCM, 32)),
        Encryption::ChaCha20Poly1305 => Some((&aead::CHACHA20_POLY1305, 32)),
        Encryption::AesCbc128 | Encryption::AesCbc256 => None,
    }
}

impl Drop for AeadKey {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AeadKey")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::{hex, to_hex, Garbage};

    fn iv(bytes: &[u8]) -> [u8; IV_LEN] {
        bytes.try_into().unwrap()
    }

    /// Seals `plain`, checks ciphertext || tag against `expected`, then opens it again.
    fn check_vector(
        alg: Encryption,
        keymat: &str,
        iv_hex: &str,
        aad: &str,
        plain: &[u8],
        expected: &str,
    ) {
        let key = AeadKey::new(alg, &hex(keymat)).unwrap();
        let iv = iv(&hex(iv_hex));
        let aad = hex(aad);
        let mut buf = plain.to_vec();
        key.seal_in_place(&iv, &aad, &mut buf).unwrap();
        assert_eq!(to_hex(&buf), to_hex(&hex(expected)), "{alg:?} seal");

        let mut detached = plain.to_vec();
        let icv = key
            .seal_in_place_detached(&iv, &aad, &mut detached)
            .unwrap();
        detached.extend_from_slice(&icv);
        assert_eq!(detached, buf, "{alg:?} detached seal");

        let opened = key.open_in_place(&iv, &aad, &mut buf).unwrap();
        assert_eq!(opened, plain, "{alg:?} open");
    }

    // RFC 8439 §2.8.2 (the AEAD_CHACHA20_POLY1305 example; also in RFC 7539). Its 12-octet
    // nonce is the 32-bit constant 07000000 followed by the 8-octet IV 4041424344454647, which
    // is exactly the salt || IV layout of RFC 7634.
    #[test]
    fn chacha20poly1305_rfc8439_2_8_2() {
        let plain = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
                      tip for the future, sunscreen would be it.";
        check_vector(
            Encryption::ChaCha20Poly1305,
            "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f 07000000",
            "4041424344454647",
            "50515253c0c1c2c3c4c5c6c7",
            plain,
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6
             3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36
             92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc
             3ff4def08e4b7a9de576d26586cec64b6116
             1ae10b594f09e26a7e902ecbd0600691",
        );
    }

    // RFC 7634 Appendix A: ESP packet (SPI 0x01020304, sequence number 5) carrying an ICMP
    // echo request; the plaintext includes the ESP padding and trailer.
    #[test]
    fn chacha20poly1305_esp_rfc7634_appendix_a() {
        let plain = hex(
            "45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec10
             000736270809 0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223
             2425262728292a2b2c2d2e2f3031323334353637 01020204",
        );
        check_vector(
            Encryption::ChaCha20Poly1305,
            "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3",
            "1011121314151617",
            "01020304 00000005",
            &plain,
            "24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6
             14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3
             cbec163fac469b502773f6fb94e664da9165b82829f641e076aaa8266b7fb0f7
             b11b369907e1ad43",
        );
    }

    // RFC 7634 Appendix B: IKEv2 INFORMATIONAL message; the AAD is the 28-octet IKE header
    // and the 4-octet SK payload header.
    #[test]
    fn chacha20poly1305_ike_rfc7634_appendix_b() {
        check_vector(
            Encryption::ChaCha20Poly1305,
            "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3",
            "1011121314151617",
            "c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d7 2e202500 00000009 00000045 29000029",
            &hex("0000000c000040010000000a00"),
            "610394701f8d017f7c12924889 6b71bfe25236efd7cdc67066906315b2",
        );
    }

    // McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)" (gcm-spec, also
    // draft-mcgrew-gcm-test-01) test case 4: AES-128, 12-octet IV cafebabefacedbaddecaf888,
    // split here into the RFC 4106 salt (cafebabe) and explicit IV (facedbaddecaf888).
    #[test]
    fn aes128gcm16_mcgrew_viega_test_case_4() {
        check_vector(
            Encryption::AesGcm16_128,
            "feffe9928665731c6d6a8f9467308308 cafebabe",
            "facedbaddecaf888",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            &hex(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                 1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ),
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091
             5bc94fbc3221a5db94fae95ae7121a47",
        );
    }

    // Same source, test case 16: AES-256 with the same IV, AAD and plaintext.
    #[test]
    fn aes256gcm16_mcgrew_viega_test_case_16() {
        check_vector(
            Encryption::AesGcm16_256,
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308 cafebabe",
            "facedbaddecaf888",
            "feedfacedeadbeeffeedfacedeadbeefabaddad2",
            &hex(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                 1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ),
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa
             8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662
             76fc6ece0f4e1768cddf8853bb2d551b",
        );
    }

    // Same source, test case 3: AES-128, no AAD, 64-octet plaintext.
    #[test]
    fn aes128gcm16_mcgrew_viega_test_case_3() {
        check_vector(
            Encryption::AesGcm16_128,
            "feffe9928665731c6d6a8f9467308308 cafebabe",
            "facedbaddecaf888",
            "",
            &hex(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
                 1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            ),
            "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
             21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985
             4d5c2af327cd64a62cf35abd2ba6fab4",
        );
    }

    /// ring against RustCrypto's independent ChaCha20-Poly1305 on varied lengths.
    #[test]
    fn chacha20poly1305_matches_rustcrypto() {
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        let mut g = Garbage(0x1234_5678_9abc_def1);
        for len in [0usize, 1, 15, 16, 17, 63, 64, 65, 255, 1400, 1500] {
            let keymat = g.bytes(36);
            let iv: [u8; 8] = g.bytes(8).try_into().unwrap();
            let aad = g.bytes(len % 13);
            let plain = g.bytes(len);
            let ours = AeadKey::new(Encryption::ChaCha20Poly1305, &keymat).unwrap();
            let mut buf = plain.clone();
            ours.seal_in_place(&iv, &aad, &mut buf).unwrap();

            let theirs = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&keymat[..32]).unwrap();
            let mut nonce = [0u8; 12];
            nonce[..4].copy_from_slice(&keymat[32..]);
            nonce[4..].copy_from_slice(&iv);
            let mut other = plain.clone();
            let tag = theirs
                .encrypt_in_place_detached(&nonce.into(), &aad, &mut other)
                .unwrap();
            other.extend_from_slice(&tag);
            assert_eq!(buf, other, "length {len}");
        }
    }

    #[test]
    fn keymat_lengths() {
        assert_eq!(AeadKey::keymat_len(Encryption::AesGcm16_128), Some(20));
        assert_eq!(AeadKey::keymat_len(Encryption::AesGcm16_256), Some(36));
        assert_eq!(AeadKey::keymat_len(Encryption::ChaCha20Poly1305), Some(36));
        assert_eq!(AeadKey::keymat_len(Encryption::AesCbc128), None);
    }

    #[test]
    fn wrong_key_material_is_refused() {
        for (alg, good) in [
            (Encryption::AesGcm16_128, 20),
            (Encryption::AesGcm16_256, 36),
            (Encryption::ChaCha20Poly1305, 36),
        ] {
            for len in [0, 4, 16, 32, good - 1, good + 1, 64] {
                assert_eq!(
                    AeadKey::new(alg, &vec![7u8; len]).unwrap_err(),
                    CryptoError::KeyLength {
                        alg: encryption_name(alg),
                        expected: good,
                        got: len
                    }
                );
            }
            assert!(AeadKey::new(alg, &vec![7u8; good]).is_ok());
        }
        assert_eq!(
            AeadKey::new(Encryption::AesCbc128, &[0u8; 20]).unwrap_err(),
            CryptoError::NotAead("aes128")
        );
    }

    #[test]
    fn short_input_is_an_error_not_a_panic() {
        for alg in [
            Encryption::AesGcm16_128,
            Encryption::AesGcm16_256,
            Encryption::ChaCha20Poly1305,
        ] {
            let key = AeadKey::new(alg, &vec![1u8; AeadKey::keymat_len(alg).unwrap()]).unwrap();
            for len in 0..ICV_LEN {
                let mut buf = vec![0u8; len];
                assert_eq!(
                    key.open_in_place(&[0; 8], b"", &mut buf).unwrap_err(),
                    CryptoError::TooShort { got: len, min: 16 }
                );
            }
            // Exactly an ICV and nothing else: a valid empty message, but this tag is wrong.
            let mut buf = vec![0u8; ICV_LEN];
            assert_eq!(
                key.open_in_place(&[0; 8], b"", &mut buf).unwrap_err(),
                CryptoError::Authentication
            );
        }
    }

    #[test]
    fn any_alteration_fails_authentication() {
        for alg in [
            Encryption::AesGcm16_128,
            Encryption::AesGcm16_256,
            Encryption::ChaCha20Poly1305,
        ] {
            let keymat = vec![0x42u8; AeadKey::keymat_len(alg).unwrap()];
            let key = AeadKey::new(alg, &keymat).unwrap();
            let iv = [9u8; 8];
            let aad = b"spi+seq!";
            let mut sealed = b"attack at dawn".to_vec();
            key.seal_in_place(&iv, aad, &mut sealed).unwrap();

            // Every single-bit flip in ciphertext or tag.
            for i in 0..sealed.len() * 8 {
                let mut buf = sealed.clone();
                buf[i / 8] ^= 1 << (i % 8);
                assert_eq!(
                    key.open_in_place(&iv, aad, &mut buf).unwrap_err(),
                    CryptoError::Authentication
                );
            }
            // Other AAD, IV, salt or key.
            let mut buf = sealed.clone();
            assert!(key.open_in_place(&iv, b"spi+seq?", &mut buf).is_err());
            let mut buf = sealed.clone();
            assert!(key.open_in_place(&[8u8; 8], aad, &mut buf).is_err());
            let mut other_salt = keymat.clone();
            *other_salt.last_mut().unwrap() ^= 1;
            let mut buf = sealed.clone();
            assert!(AeadKey::new(alg, &other_salt)
                .unwrap()
                .open_in_place(&iv, aad, &mut buf)
                .is_err());
            let mut other_key = keymat.clone();
            other_key[0] ^= 1;
            let mut buf = sealed.clone();
            assert!(AeadKey::new(alg, &other_key)
                .unwrap()
                .open_in_place(&iv, aad, &mut buf)
                .is_err());
            // Truncated by one octet.
            let mut buf = sealed[..sealed.len() - 1].to_vec();
            assert!(key.open_in_place(&iv, aad, &mut buf).is_err());
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut g = Garbage(0xfeed_f00d_dead_beef);
        let key = AeadKey::new(Encryption::AesGcm16_256, &g.bytes(36)).unwrap();
        for _ in 0..2000 {
            let len = (g.next_u64() % 80) as usize;
            let mut buf = g.bytes(len);
            let aad_len = (g.next_u64() % 40) as usize;
            let aad = g.bytes(aad_len);
            assert!(key.open_in_place(&[3; 8], &aad, &mut buf).is_err());
        }
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let key = AeadKey::new(Encryption::AesGcm16_128, &[0xab; 20]).unwrap();
        let printed = format!("{key:?}");
        assert!(printed.contains("AesGcm16_128"));
        assert!(!printed.to_lowercase().contains("ab, ") && !printed.contains("171"));
    }
}
