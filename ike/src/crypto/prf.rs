//! The IKEv2 pseudo-random functions (HMAC-SHA2, RFC 4868 §2.1.2) and prf+ (RFC 7296 §2.13).

use ring::hmac;
use zeroize::Zeroizing;

use super::CryptoError;
use crate::proposal::Prf;

/// prf+ stops at 255 blocks: the block counter is one octet (RFC 7296 §2.13).
pub const PRF_PLUS_MAX_BLOCKS: usize = 255;

/// Output length of `alg` in octets, which is also its preferred key length (RFC 7296 §2.13,
/// RFC 4868 §2.1.2): the length of SK_d, SK_pi and SK_pr.
pub fn output_len(alg: Prf) -> usize {
    match alg {
        Prf::HmacSha256 => 32,
        Prf::HmacSha384 => 48,
        Prf::HmacSha512 => 64,
    }
}

/// The most octets prf+ can produce with `alg`.
pub fn prf_plus_max_len(alg: Prf) -> usize {
    PRF_PLUS_MAX_BLOCKS * output_len(alg)
}

fn ring_algorithm(alg: Prf) -> hmac::Algorithm {
    match alg {
        Prf::HmacSha256 => hmac::HMAC_SHA256,
        Prf::HmacSha384 => hmac::HMAC_SHA384,
        Prf::HmacSha512 => hmac::HMAC_SHA512,
    }
}

/// `prf(key, data)`: HMAC over `data`, the full hash output (PRFs are not truncated).
pub fn prf(alg: Prf, key: &[u8], data: &[u8]) -> Zeroizing<Vec<u8>> {
    prf_parts(alg, key, &[data])
}

/// `prf(key, parts[0] | parts[1] | ...)`, without concatenating first.
pub fn prf_parts(alg: Prf, key: &[u8], parts: &[&[u8]]) -> Zeroizing<Vec<u8>> {
    let key = hmac::Key::new(ring_algorithm(alg), key);
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(part);
    }
    Zeroizing::new(ctx.sign().as_ref().to_vec())
}

/// `prf+(key, seed)` truncated to `len` octets (RFC 7296 §2.13):
///
/// ```text
/// T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), ..., Tn = prf(K, Tn-1 | S | n)
/// prf+(K, S) = T1 | T2 | ... | T255
/// ```
///
/// Asking for more than 255 blocks is an error, not a wrap of the counter.
pub fn prf_plus(
    alg: Prf,
    key: &[u8],
    seed: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let max = prf_plus_max_len(alg);
    if len > max {
        return Err(CryptoError::PrfPlusTooLong {
            requested: len,
            max,
        });
    }
    let hmac_key = hmac::Key::new(ring_algorithm(alg), key);
    let mut out = Zeroizing::new(Vec::with_capacity(len + output_len(alg)));
    let mut counter: u8 = 1;
    while out.len() < len {
        let mut ctx = hmac::Context::with_key(&hmac_key);
        // Tn-1, the last block written, is the start of the input for blocks after the first.
        let previous = out.len().saturating_sub(output_len(alg));
        ctx.update(&out[previous..]);
        ctx.update(seed);
        ctx.update(&[counter]);
        out.extend_from_slice(ctx.sign().as_ref());
        // At most 255 iterations, checked above; the wrap after the last one is never used.
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::{hex, to_hex};

    // RFC 4231 §4.2 and §4.3, test cases 1 and 2, for all three hashes; §4.7 (test case 6,
    // key longer than the block) for SHA-256.
    #[test]
    fn hmac_rfc4231() {
        let case1_key = [0x0bu8; 20];
        let cases: &[(Prf, &[u8], &[u8], &str)] = &[
            (
                Prf::HmacSha256,
                &case1_key,
                b"Hi There",
                "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
            ),
            (
                Prf::HmacSha384,
                &case1_key,
                b"Hi There",
                "afd03944d84895626b0825f4ab46907f15f9dadbe4101ec682aa034c7cebc59c
                 faea9ea9076ede7f4af152e8b2fa9cb6",
            ),
            (
                Prf::HmacSha512,
                &case1_key,
                b"Hi There",
                "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde
                 daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854",
            ),
            (
                Prf::HmacSha256,
                b"Jefe",
                b"what do ya want for nothing?",
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                Prf::HmacSha384,
                b"Jefe",
                b"what do ya want for nothing?",
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
                 8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                Prf::HmacSha512,
                b"Jefe",
                b"what do ya want for nothing?",
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
                 9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
            (
                Prf::HmacSha256,
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First",
                "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
            ),
        ];
        for (alg, key, data, mac) in cases {
            let out = prf(*alg, key, data);
            assert_eq!(to_hex(&out), to_hex(&hex(mac)), "{alg:?}");
            assert_eq!(out.len(), output_len(*alg));
            let (a, b) = data.split_at(2);
            assert_eq!(prf_parts(*alg, key, &[a, b]), out);
        }
    }

    /// T1..T3 spelled out with `prf` (RFC 7296 §2.13), against `prf_plus`.
    #[test]
    fn prf_plus_is_t1_t2_t3() {
        for alg in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512] {
            let key = b"key material";
            let seed = b"Ni | Nr | SPIi | SPIr";
            let t1 = prf(alg, key, &[&seed[..], &[1]].concat());
            let t2 = prf(alg, key, &[&t1[..], &seed[..], &[2]].concat());
            let t3 = prf(alg, key, &[&t2[..], &seed[..], &[3]].concat());
            let expected = [&t1[..], &t2[..], &t3[..]].concat();
            let h = output_len(alg);
            let got = prf_plus(alg, key, seed, 3 * h).unwrap();
            assert_eq!(&got[..], &expected[..]);
            // Shorter outputs are prefixes; a partial last block is truncated.
            for len in [0, 1, h - 1, h, h + 1, 2 * h + 5] {
                assert_eq!(
                    &prf_plus(alg, key, seed, len).unwrap()[..],
                    &expected[..len]
                );
            }
        }
    }

    // NIST CAVP SP 800-135 IKEv2 KDF sample vectors (SHA-256 and SHA-384), as transcribed in
    // NSS gtests/common/testvectors/ike-sha256-vectors.h and ike-sha384-vectors.h: prf+ of
    // SKEYSEED over Ni | Nr | SPIi | SPIr gives the 132-octet DKM.
    #[test]
    fn prf_plus_nist_cavp_ikev2() {
        let cases = [
            (
                Prf::HmacSha256,
                "5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe",
                "3f302be1abcb28e1 8c332ee006064c9b 40dac39e1e1a8640 8619a1cf9a6e4c07",
                "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ec
                 e98aca531188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6
                 cdf6854379e31be72b8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4
                 e1c19bdcd4db14b29d98db1a74ad405c588662c14a04d0d36aa4ab55e90f8986
                 d12d4aad",
            ),
            (
                Prf::HmacSha384,
                "69fe7a1ac94adaeb711295f5fe004b1a8d6a0b65d05692758ce8ad2f7a45f59d
                 7d0b596f51f7dfcf3330061888f6a94f",
                "fd1b572a8e735591 6013b0ef88dacd3d 2116ad07ce61f749 24880e55f11a65b7",
                "4f904c2025c90c817ea5ff9b662a6fdb445a73b57cdf09eacd379b95e1f03cac
                 b04cd6deeda4f952191dd9bc1f7a9502471a648d74dc06d38112de48a42501f6
                 b1a3ad55c2099cd9a648e5f17e5bf3e34bf9b5953decb768a34f875fe2b78dca
                 0c2fcca81ec1a412006dfaed38fa06882e61f4c148105fb8e231fdb33c4d484c
                 001721d4",
            ),
        ];
        for (alg, skeyseed, seed, dkm) in cases {
            let dkm = hex(dkm);
            assert_eq!(dkm.len(), 132);
            let got = prf_plus(alg, &hex(skeyseed), &hex(seed), dkm.len()).unwrap();
            assert_eq!(to_hex(&got), to_hex(&dkm), "{alg:?}");
            // NSS's shorter cases (one hash length, 15 octets) are prefixes of the same.
            for len in [output_len(alg), 15] {
                let got = prf_plus(alg, &hex(skeyseed), &hex(seed), len).unwrap();
                assert_eq!(&got[..], &dkm[..len]);
            }
        }
    }

    #[test]
    fn prf_plus_refuses_more_than_255_blocks() {
        for alg in [Prf::HmacSha256, Prf::HmacSha384, Prf::HmacSha512] {
            let max = 255 * output_len(alg);
            assert_eq!(prf_plus_max_len(alg), max);
            let all = prf_plus(alg, b"k", b"s", max).unwrap();
            assert_eq!(all.len(), max);
            // The last block is T255 = prf(K, T254 | S | 0xff).
            let h = output_len(alg);
            let t254 = &all[max - 2 * h..max - h];
            let t255 = prf(alg, b"k", &[t254, b"s", &[0xff]].concat());
            assert_eq!(&all[max - h..], &t255[..]);
            for len in [max + 1, max + h, usize::MAX] {
                assert_eq!(
                    prf_plus(alg, b"k", b"s", len).unwrap_err(),
                    CryptoError::PrfPlusTooLong {
                        requested: len,
                        max
                    }
                );
            }
        }
    }

    #[test]
    fn empty_key_and_seed_are_fine() {
        assert_eq!(prf(Prf::HmacSha256, b"", b"").len(), 32);
        assert_eq!(prf_plus(Prf::HmacSha512, b"", b"", 100).unwrap().len(), 100);
    }
}
