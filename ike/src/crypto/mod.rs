//! The cryptographic suites IKE and ESP use, each checked against published test vectors.
//!
//! - [`aead`]: AES-GCM-16 (128/256) and ChaCha20-Poly1305 with the 4-octet salt and 8-octet
//!   explicit IV that ESP (RFC 4106, RFC 7634 §2) and IKE SK payloads (RFC 5282, RFC 7634 §3)
//!   share.
//! - [`cbc`]: AES-CBC (RFC 3602) and the truncated HMAC-SHA2 integrity transforms (RFC 4868) for
//!   the classic encrypt-then-MAC suites.
//! - [`prf`]: the HMAC-SHA2 PRFs and prf+ (RFC 7296 §2.13).
//! - [`dh`]: key exchange for groups 14 (MODP-2048), 19 and 20 (ECP-256/384), 31 (Curve25519),
//!   with the KE payload encodings and the peer-value checks of RFC 7296 §2.12, RFC 6989 and
//!   RFC 8031.
//! - [`keys`]: SKEYSEED, the IKE SA keys, IKE SA rekeying and child SA KEYMAT (RFC 7296 §2.14,
//!   §2.17, §2.18), and [`keys::SaCipher`], the transform built from one direction's keys.
//!
//! Which crate serves where, and why:
//! - **ring** does everything on the ESP hot path and all hashing: AES-GCM and
//!   ChaCha20-Poly1305 (assembly, constant time), HMAC-SHA2 for the PRFs and integrity
//!   transforms, and the system RNG for IVs and key generation. `examples/crypto_bench.rs`
//!   prints its AEAD throughput, the ceiling for the ESP data path.
//! - **aes + cbc** (RustCrypto) for AES-CBC, which ring does not offer. The `zeroize` feature
//!   wipes the AES key schedule on drop. CBC is only for peers that cannot do GCM.
//! - **p256 / p384** (RustCrypto, `ecdh`) for groups 19 and 20: ring only generates its own
//!   ephemeral ECDH keys and cannot import a fixed private key, so the RFC 5903 §8 vectors could
//!   not be reproduced with it. Their secret keys zeroize on drop.
//! - **x25519-dalek** (`static_secrets`) for group 31, for the same reason (RFC 7748 / RFC 8031
//!   vectors need a fixed private key).
//! - **crypto-bigint** for group 14: constant-time Montgomery exponentiation modulo the RFC 3526
//!   prime with a full-length (2048-bit) private exponent; ring has no finite-field
//!   Diffie-Hellman. About 9 ms per exchange in release builds, against 0.1 to 1 ms for the
//!   elliptic-curve groups (see the bench).
//! - **subtle** for the constant-time comparison of truncated ICVs, **zeroize** for key material.
//! - RustCrypto **chacha20poly1305** is a dev-dependency only. `examples/crypto_bench.rs`
//!   measures it next to ring: on the x86-64 (AVX2) development machine it sealed 1400-octet
//!   packets at 0.42 of ring's rate and 64-octet ones at 0.21, so it is not an alternative worth
//!   carrying; a test also uses it to cross-check ring's output. The product uses ring.
//!
//! Dependency versions are the newest whose minimum Rust version fits the workspace's 1.85:
//! p256/p384 0.14 (through crypto-bigint 0.7), aes 0.9 (and so cbc 0.2) and
//! chacha20poly1305 0.11 (through ctutils) need a newer compiler.
//!
//! Secrets: raw key bytes this module holds live in [`SecretBytes`] or `Zeroizing` buffers and
//! are wiped on drop, and no `Debug` impl here prints them. Limits of that: ring's expanded key
//! schedules (AEAD keys, HMAC keys) and its intermediate HMAC outputs are not zeroized, since
//! ring offers no way to do it.

pub mod aead;
pub mod cbc;
pub mod dh;
pub mod keys;
pub mod prf;

use std::fmt;

use zeroize::Zeroizing;

use crate::proposal::{DhGroup, Encryption, Integrity};

pub use aead::AeadKey;
pub use cbc::{CbcKey, Icv, IntegrityKey};
pub use dh::KeyExchange;
pub use keys::{ChildSaKeys, ChildSuite, DirectionKeys, IkeSaKeys, IkeSuite};
pub use prf::{prf, prf_plus};

/// Why a cryptographic operation was refused. Messages name the algorithm and the numbers
/// involved, never key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("{alg} needs {expected} octets of key material, got {got}")]
    KeyLength {
        alg: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{0} is not a combined-mode (AEAD) cipher")]
    NotAead(&'static str),
    #[error("{0} is a combined-mode (AEAD) cipher, not AES-CBC")]
    NotCbc(&'static str),
    #[error("input of {got} octets is too short: at least {min} needed")]
    TooShort { got: usize, min: usize },
    #[error("{0} octets is not a whole number of 16-octet AES blocks")]
    NotBlockAligned(usize),
    #[error("input too long for the cipher")]
    TooLong,
    #[error("integrity check failed: wrong key, or the data was altered")]
    Authentication,
    #[error(
        "prf+ yields at most {max} octets (255 blocks, RFC 7296 §2.13); {requested} requested"
    )]
    PrfPlusTooLong { requested: usize, max: usize },
    #[error("{group}: key exchange data must be {expected} octets, got {got}")]
    KeLength {
        group: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{group}: peer's key exchange value rejected: {why}")]
    InvalidPeerValue {
        group: &'static str,
        why: &'static str,
    },
    #[error("{group}: private value rejected: {why}")]
    InvalidPrivateValue {
        group: &'static str,
        why: &'static str,
    },
    #[error("suite mismatch: {0}")]
    Suite(&'static str),
    #[error("the system random number generator failed")]
    Rng,
}

/// Key material that is wiped on drop and never printed.
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Copies `bytes` into a new secret buffer.
    pub fn from_slice(bytes: &[u8]) -> Self {
        SecretBytes(Zeroizing::new(bytes.to_vec()))
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Zeroizing<Vec<u8>>> for SecretBytes {
    fn from(v: Zeroizing<Vec<u8>>) -> Self {
        SecretBytes(v)
    }
}

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} octets redacted>)", self.0.len())
    }
}

/// strongSwan-style name of an encryption transform, for error messages.
pub(crate) fn encryption_name(e: Encryption) -> &'static str {
    match e {
        Encryption::AesCbc128 => "aes128",
        Encryption::AesCbc256 => "aes256",
        Encryption::AesGcm16_128 => "aes128gcm16",
        Encryption::AesGcm16_256 => "aes256gcm16",
        Encryption::ChaCha20Poly1305 => "chacha20poly1305",
    }
}

pub(crate) fn integrity_name(i: Integrity) -> &'static str {
    match i {
        Integrity::HmacSha256_128 => "sha256 (HMAC-SHA2-256-128)",
        Integrity::HmacSha384_192 => "sha384 (HMAC-SHA2-384-192)",
        Integrity::HmacSha512_256 => "sha512 (HMAC-SHA2-512-256)",
    }
}

pub(crate) fn group_name(g: DhGroup) -> &'static str {
    match g {
        DhGroup::Modp2048 => "modp2048 (group 14)",
        DhGroup::Ecp256 => "ecp256 (group 19)",
        DhGroup::Ecp384 => "ecp384 (group 20)",
        DhGroup::Curve25519 => "x25519 (group 31)",
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes hex, ignoring whitespace, so vectors can be pasted as the RFCs print them.
    pub fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s
            .bytes()
            .filter(|b| !b.is_ascii_whitespace() && *b != b':')
            .collect();
        assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
        digits
            .chunks(2)
            .map(|pair| {
                let s = std::str::from_utf8(pair).unwrap();
                u8::from_str_radix(s, 16).unwrap()
            })
            .collect()
    }

    pub fn to_hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A deterministic byte stream (xorshift) for garbage-input tests.
    pub struct Garbage(pub u64);

    impl Garbage {
        pub fn next_u64(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        pub fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next_u64() as u8).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_bytes_debug_is_redacted() {
        let s = SecretBytes::from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let printed = format!("{s:?}");
        assert_eq!(printed, "SecretBytes(<4 octets redacted>)");
        assert!(!printed.contains("de") && !printed.contains("222"));
    }
}
