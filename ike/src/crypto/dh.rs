//! Diffie-Hellman key exchange for the groups attestgate supports: 14 (2048-bit MODP, RFC 3526),
//! 19 and 20 (256- and 384-bit random ECP, RFC 5903), 31 (Curve25519, RFC 8031).
//!
//! Encodings are those of the KE payload (RFC 7296 §3.4) and of g^ir in the key derivation
//! (RFC 7296 §2.14):
//! - MODP: big-endian, left-padded with zeros to the 256 octets of the modulus, both for the
//!   public value and the shared secret.
//! - ECP: the public value is x || y, each coordinate padded to the field size, without the
//!   SEC1 0x04 prefix; the shared secret is the x coordinate only (RFC 5903 §7).
//! - Curve25519: the 32-octet u coordinate for both (RFC 8031 §2).
//!
//! Peer values are checked before use (RFC 7296 §2.12, RFC 6989): the exact length, a MODP
//! value in [2, p-2], an ECP point on the curve and not the point at infinity, and for Curve25519
//! a shared secret that is not all zeros (RFC 8031 §2).

use std::fmt;
use std::sync::OnceLock;

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U2048};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use ring::rand::SecureRandom;
use zeroize::Zeroizing;

use super::{group_name, CryptoError};
use crate::proposal::DhGroup;

/// The 2048-bit MODP prime of RFC 3526 §3 (group 14), generator 2.
const MODP2048_P_HEX: &str = "\
    FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74\
    020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437\
    4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED\
    EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05\
    98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB\
    9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B\
    E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718\
    3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF";

const MODP2048_P: U2048 = U2048::from_be_hex(MODP2048_P_HEX);
const MODP2048_LEN: usize = 256;

/// Montgomery parameters for the group 14 prime, computed once.
fn modp2048_params() -> &'static DynResidueParams<{ U2048::LIMBS }> {
    static PARAMS: OnceLock<DynResidueParams<{ U2048::LIMBS }>> = OnceLock::new();
    // The prime is odd, so `new` cannot panic.
    PARAMS.get_or_init(|| DynResidueParams::new(&MODP2048_P))
}

/// Length of the KE payload data for `group`.
pub fn public_value_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp2048 => MODP2048_LEN,
        DhGroup::Ecp256 => 64,
        DhGroup::Ecp384 => 96,
        DhGroup::Curve25519 => 32,
    }
}

/// Length of the shared secret g^ir for `group`.
pub fn shared_secret_len(group: DhGroup) -> usize {
    match group {
        DhGroup::Modp2048 => MODP2048_LEN,
        DhGroup::Ecp256 => 32,
        DhGroup::Ecp384 => 48,
        DhGroup::Curve25519 => 32,
    }
}

enum Private {
    Modp(Box<Zeroizing<U2048>>),
    Ecp256(p256::SecretKey),
    Ecp384(p384::SecretKey),
    X25519(x25519_dalek::StaticSecret),
}

/// One side of a Diffie-Hellman exchange: our private value and the public value we send.
/// The private value is wiped on drop.
pub struct KeyExchange {
    group: DhGroup,
    private: Private,
    public: Vec<u8>,
}

/// How often a fresh draw from the RNG may fall outside the valid range before we give up;
/// for these groups a single retry is already astronomically rare.
const GENERATE_ATTEMPTS: usize = 16;

impl KeyExchange {
    /// A fresh private value for `group` from `rng` (ring's `SystemRandom` in production).
    pub fn generate(group: DhGroup, rng: &dyn SecureRandom) -> Result<Self, CryptoError> {
        let len = match group {
            DhGroup::Modp2048 => MODP2048_LEN,
            DhGroup::Ecp256 => 32,
            DhGroup::Ecp384 => 48,
            DhGroup::Curve25519 => 32,
        };
        let mut candidate = Zeroizing::new(vec![0u8; len]);
        for _ in 0..GENERATE_ATTEMPTS {
            rng.fill(&mut candidate).map_err(|_| CryptoError::Rng)?;
            match Self::from_private(group, &candidate) {
                Ok(kx) => return Ok(kx),
                // Out of range (zero, or not below the group order or p - 1): draw again.
                Err(CryptoError::InvalidPrivateValue { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(CryptoError::Rng)
    }

    /// Uses a fixed private value, big-endian for MODP (at most 256 octets, in [2, p-2]) and
    /// ECP (exactly 32 or 48 octets, in [1, n-1]); for Curve25519 the 32-octet scalar as
    /// RFC 7748 prints it. For tests against published vectors and for `generate`.
    pub fn from_private(group: DhGroup, private: &[u8]) -> Result<Self, CryptoError> {
        let name = group_name(group);
        let invalid = |why| CryptoError::InvalidPrivateValue { group: name, why };
        let wrong_length = |expected| CryptoError::KeLength {
            group: name,
            expected,
            got: private.len(),
        };
        match group {
            DhGroup::Modp2048 => {
                if private.is_empty() || private.len() > MODP2048_LEN {
                    return Err(wrong_length(MODP2048_LEN));
                }
                let mut padded = Zeroizing::new([0u8; MODP2048_LEN]);
                padded[MODP2048_LEN - private.len()..].copy_from_slice(private);
                // Exactly 256 octets, so `from_be_slice` cannot panic.
                let x = Zeroizing::new(U2048::from_be_slice(&padded[..]));
                if !in_modp_range(&x) {
                    return Err(invalid("exponent must be in [2, p-2]"));
                }
                let public = modp_pow(&U2048::from_u8(2), &x);
                Ok(KeyExchange {
                    group,
                    private: Private::Modp(Box::new(x)),
                    public: public.to_be_bytes().to_vec(),
                })
            }
            DhGroup::Ecp256 => {
                if private.len() != 32 {
                    return Err(wrong_length(32));
                }
                let secret = p256::SecretKey::from_slice(private)
                    .map_err(|_| invalid("scalar must be in [1, n-1]"))?;
                let point = secret.public_key().to_encoded_point(false);
                let public = point.as_bytes().get(1..).unwrap_or_default().to_vec();
                Ok(KeyExchange {
                    group,
                    private: Private::Ecp256(secret),
                    public,
                })
            }
            DhGroup::Ecp384 => {
                if private.len() != 48 {
                    return Err(wrong_length(48));
                }
                let secret = p384::SecretKey::from_slice(private)
                    .map_err(|_| invalid("scalar must be in [1, n-1]"))?;
                let point = secret.public_key().to_encoded_point(false);
                let public = point.as_bytes().get(1..).unwrap_or_default().to_vec();
                Ok(KeyExchange {
                    group,
                    private: Private::Ecp384(secret),
                    public,
                })
            }
            DhGroup::Curve25519 => {
                let bytes: [u8; 32] = private.try_into().map_err(|_| wrong_length(32))?;
                let secret = x25519_dalek::StaticSecret::from(bytes);
                let public = x25519_dalek::PublicKey::from(&secret).to_bytes().to_vec();
                Ok(KeyExchange {
                    group,
                    private: Private::X25519(secret),
                    public,
                })
            }
        }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value in the KE payload format.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^ir with the peer's KE payload data, in the format the key derivation
    /// takes. Refuses malformed or weak peer values.
    pub fn compute(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let name = group_name(self.group);
        let expected = public_value_len(self.group);
        if peer.len() != expected {
            return Err(CryptoError::KeLength {
                group: name,
                expected,
                got: peer.len(),
            });
        }
        let invalid = |why| CryptoError::InvalidPeerValue { group: name, why };
        match &self.private {
            Private::Modp(x) => {
                let mut be = [0u8; MODP2048_LEN];
                be.copy_from_slice(peer);
                let y = U2048::from_be_bytes(be);
                // RFC 6989 §2.1: 1 < y < p-1. p is a safe prime, so this also rules out the
                // order-2 subgroup; the prime-order subgroup check is not needed (§2.2).
                if !in_modp_range(&y) {
                    return Err(invalid("value must be in [2, p-2] (RFC 6989 §2.1)"));
                }
                let shared = Zeroizing::new(modp_pow(&y, x));
                // 1 or p-1 only when x is a multiple of q = (p-1)/2, which a random exponent
                // never is; such a secret would be public, so refuse it all the same.
                if !in_modp_range(&shared) {
                    return Err(invalid("shared secret is 1 or p-1"));
                }
                Ok(Zeroizing::new(shared.to_be_bytes().to_vec()))
            }
            Private::Ecp256(secret) => {
                let point = [&[0x04], peer].concat();
                let public = p256::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| invalid("not a point on the curve (RFC 6989 §2.3)"))?;
                let scalar = Zeroizing::new(secret.to_nonzero_scalar());
                let shared = p256::ecdh::diffie_hellman(&*scalar, public.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Private::Ecp384(secret) => {
                let point = [&[0x04], peer].concat();
                let public = p384::PublicKey::from_sec1_bytes(&point)
                    .map_err(|_| invalid("not a point on the curve (RFC 6989 §2.3)"))?;
                let scalar = Zeroizing::new(secret.to_nonzero_scalar());
                let shared = p384::ecdh::diffie_hellman(&*scalar, public.as_affine());
                Ok(Zeroizing::new(shared.raw_secret_bytes().to_vec()))
            }
            Private::X25519(secret) => {
                let mut u = [0u8; 32];
                u.copy_from_slice(peer);
                let shared = secret.diffie_hellman(&x25519_dalek::PublicKey::from(u));
                // RFC 8031 §2: a low-order peer value yields all zeros; abort.
                if !shared.was_contributory() {
                    return Err(invalid("shared secret is all zeros (RFC 8031 §2)"));
                }
                Ok(Zeroizing::new(shared.as_bytes().to_vec()))
            }
        }
    }
}

/// 2 <= v <= p - 2.
fn in_modp_range(v: &U2048) -> bool {
    let p_minus_2 = MODP2048_P.wrapping_sub(&U2048::from_u8(2));
    *v >= U2048::from_u8(2) && *v <= p_minus_2
}

/// base^exp mod p, constant time in `exp` (fixed window over all 2048 bits).
fn modp_pow(base: &U2048, exp: &U2048) -> U2048 {
    DynResidue::new(base, *modp2048_params())
        .pow(exp)
        .retrieve()
}

impl fmt::Debug for KeyExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyExchange")
            .field("group", &self.group)
            .field("public_len", &self.public.len())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
