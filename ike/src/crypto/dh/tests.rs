use super::*;
use crate::crypto::test_util::{hex, to_hex, Garbage};
use ring::rand::SystemRandom;

fn sha256_hex(data: &[u8]) -> String {
    to_hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

/// Both sides of a published vector: public values from the private ones, and the same shared
/// secret from either side.
fn check_exchange(group: DhGroup, i: &str, gi: &str, r: &str, gr: &str, gir: &str) {
    let initiator = KeyExchange::from_private(group, &hex(i)).unwrap();
    let responder = KeyExchange::from_private(group, &hex(r)).unwrap();
    assert_eq!(
        to_hex(initiator.public_value()),
        to_hex(&hex(gi)),
        "{group:?} g^i"
    );
    assert_eq!(
        to_hex(responder.public_value()),
        to_hex(&hex(gr)),
        "{group:?} g^r"
    );
    let at_initiator = initiator.compute(responder.public_value()).unwrap();
    let at_responder = responder.compute(initiator.public_value()).unwrap();
    assert_eq!(to_hex(&at_initiator), to_hex(&hex(gir)), "{group:?} g^ir");
    assert_eq!(at_initiator, at_responder);
    assert_eq!(at_initiator.len(), shared_secret_len(group));
}

// RFC 5903 §8.1 (256-bit random ECP group): the KE payloads carry x || y, g^ir is its x
// coordinate.
#[test]
fn ecp256_rfc5903_8_1() {
    check_exchange(
        DhGroup::Ecp256,
        "C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433",
        "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180
         5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        "C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53",
        "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
         56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        "D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE",
    );
}

// RFC 5903 §8.2 (384-bit random ECP group).
#[test]
fn ecp384_rfc5903_8_2() {
    check_exchange(
        DhGroup::Ecp384,
        "099F3C7034D4A2C699884D73A375A67F7624EF7C6B3C0F160647B67414DCE655
         E35B538041E649EE3FAEF896783AB194",
        "667842D7D180AC2CDE6F74F37551F55755C7645C20EF73E31634FE72B4C55EE6
         DE3AC808ACB4BDB4C88732AEE95F41AA9482ED1FC0EEB9CAFC4984625CCFC23F
         65032149E0E144ADA024181535A0F38EEB9FCFF3C2C947DAE69B4C634573A81C",
        "41CB0779B4BDB85D47846725FBEC3C9430FAB46CC8DC5060855CC9BDA0AA2942
         E0308312916B8ED2960E4BD55A7448FC",
        "E558DBEF53EECDE3D3FCCFC1AEA08A89A987475D12FD950D83CFA41732BC509D
         0D1AC43A0336DEF96FDA41D0774A3571DCFBEC7AACF3196472169E838430367F
         66EEBE3C6E70C416DD5F0C68759DD1FFF83FA40142209DFF5EAAD96DB9E6386C",
        "11187331C279962D93D604243FD592CB9D0A926F422E47187521287E7156C5C4
         D603135569B9E9D09CF5D4A270F59746",
    );
}

// RFC 7748 §6.1 (Alice and Bob).
#[test]
fn x25519_rfc7748_6_1() {
    check_exchange(
        DhGroup::Curve25519,
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a",
        "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f",
        "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742",
    );
}

// RFC 8031 Appendix A (the IKEv2 Curve25519 example), as transcribed in strongSwan's
// test_vectors/curve25519.c.
#[test]
fn x25519_rfc8031_appendix_a() {
    check_exchange(
        DhGroup::Curve25519,
        "751fb4308655b476b6789b7325f9ea8cddd16a58533ff6d9e60009464a5f9d94",
        "48d5ddd4061257ba166fa3f9bbdb74f1a4e81c089384fa77f790709f0dfbc766",
        "0a5464525329 0d60ddadd0e030bacd9e5501efdc220755a1e978f1b839a05688",
        "0be7c1f5aad87d7e448662673298a443478b859745179eaf564c79c0ef6eee25",
        "c74950607a12327f3204d94b6825bfb068b7f8319a9e3708ed3d43ce8130c950",
    );
}

// RFC 7748 §5.2: the two single scalar-multiplication vectors, fed through the KE API as a
// private scalar and a peer u coordinate. The second u has its top bit set, which X25519
// must ignore.
#[test]
fn x25519_rfc7748_5_2() {
    for (k, u, out) in [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ] {
        let kx = KeyExchange::from_private(DhGroup::Curve25519, &hex(k)).unwrap();
        assert_eq!(to_hex(&kx.compute(&hex(u)).unwrap()), out);
    }
}

// RFC 7748 §5.2, iterated: k = u = 9; k, u = X25519(k, u), k. After one and 1,000 rounds.
#[test]
fn x25519_rfc7748_5_2_iterated() {
    let mut k = [0u8; 32];
    k[0] = 9;
    let mut u = k;
    for round in 1..=1000 {
        let kx = KeyExchange::from_private(DhGroup::Curve25519, &k).unwrap();
        let next: [u8; 32] = kx.compute(&u).unwrap()[..].try_into().unwrap();
        u = k;
        k = next;
        if round == 1 {
            assert_eq!(
                to_hex(&k),
                "422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"
            );
        }
    }
    assert_eq!(
        to_hex(&k),
        "684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"
    );
}

/// RFC 3526 §3 prints the prime in hex; it is 2^2048 - 2^1984 - 1 + 2^64 * ([2^1918 pi] +
/// 124476). The hex below is the RFC's text; the formula was checked against it with an
/// independent big-integer computation of pi when this was written.
#[test]
fn modp2048_prime_is_rfc3526_group_14() {
    let rfc3526 = hex("FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1
         29024E08 8A67CC74 020BBEA6 3B139B22 514A0879 8E3404DD
         EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245
         E485B576 625E7EC6 F44C42E9 A637ED6B 0BFF5CB6 F406B7ED
         EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
         C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F
         83655D23 DCA3AD96 1C62F356 208552BB 9ED52907 7096966D
         670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B
         E39E772C 180E8603 9B2783A2 EC07A28F B5C55DF0 6F4C52C9
         DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
         15728E5A 8AACAA68 FFFFFFFF FFFFFFFF");
    assert_eq!(rfc3526.len(), 256);
    assert_eq!(MODP2048_P.to_be_bytes().to_vec(), rfc3526);
    // p = 7 mod 8, so 2 is a quadratic residue and generates the prime-order subgroup.
    assert_eq!(rfc3526[255] & 7, 7);
}

/// g^x for fixed exponents, both ways round. No published MODP-2048 exchange vector was found;
/// the SHA-256 digests below were computed with Python's built-in pow() while writing this
/// test, an implementation independent of crypto-bigint. (The exponents are the RFC 5903 §8.1
/// scalars, reused as arbitrary 256-bit values.)
#[test]
fn modp2048_fixed_exponents() {
    let xi = hex("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433");
    let xr = hex("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53");
    let i = KeyExchange::from_private(DhGroup::Modp2048, &xi).unwrap();
    let r = KeyExchange::from_private(DhGroup::Modp2048, &xr).unwrap();
    assert_eq!(i.public_value().len(), 256);
    assert_eq!(
        sha256_hex(i.public_value()),
        "1641e1f511a6f01b7c7a78b5cc5f8244feb72c6604d43bb73f2cfc0f64d906aa"
    );
    assert_eq!(
        sha256_hex(r.public_value()),
        "7bc14246b13aaf9afa0b4f27a00184fb3fc65b6a847caebd4cd8245202e391bb"
    );
    let gir = i.compute(r.public_value()).unwrap();
    assert_eq!(gir, r.compute(i.public_value()).unwrap());
    assert_eq!(gir.len(), 256);
    assert_eq!(
        sha256_hex(&gir),
        "8228ccdd3498f625d251e6b567cdbac2be54a98f480e4de101ac57fe242a56a4"
    );
    // Left-padding the private value changes nothing.
    let padded = [&[0u8; 224][..], &xi].concat();
    let same = KeyExchange::from_private(DhGroup::Modp2048, &padded).unwrap();
    assert_eq!(same.public_value(), i.public_value());
}

/// Checks of the exponentiation that need no vector: 2^2 = 4, and with the largest exponent,
/// 2^(p-2) = 2^-1 = (p+1)/2 (Fermat). The public value of a small result is left-padded.
#[test]
fn modp2048_algebra() {
    let two = KeyExchange::from_private(DhGroup::Modp2048, &[2]).unwrap();
    let mut four = [0u8; 256];
    four[255] = 4;
    assert_eq!(two.public_value(), &four[..]);

    let p_minus_2 = MODP2048_P.wrapping_sub(&U2048::from_u8(2)).to_be_bytes();
    let kx = KeyExchange::from_private(DhGroup::Modp2048, &p_minus_2).unwrap();
    let half = MODP2048_P
        .wrapping_add(&U2048::ONE)
        .shr_vartime(1)
        .to_be_bytes();
    assert_eq!(kx.public_value(), &half[..]);
}

#[test]
fn modp2048_rejects_weak_peer_values() {
    let kx = KeyExchange::from_private(DhGroup::Modp2048, &[0x55; 32]).unwrap();
    let p = MODP2048_P;
    let bad = [
        (U2048::ZERO, "0"),
        (U2048::ONE, "1"),
        (p.wrapping_sub(&U2048::ONE), "p-1"),
        (p, "p"),
        (p.wrapping_add(&U2048::ONE), "p+1"),
        (U2048::MAX, "2^2048-1"),
    ];
    for (value, label) in bad {
        assert_eq!(
            kx.compute(&value.to_be_bytes()).unwrap_err(),
            CryptoError::InvalidPeerValue {
                group: "modp2048 (group 14)",
                why: "value must be in [2, p-2] (RFC 6989 §2.1)"
            },
            "{label}"
        );
    }
    // The edges of the valid range are accepted.
    kx.compute(&U2048::from_u8(2).to_be_bytes()).unwrap();
    kx.compute(&p.wrapping_sub(&U2048::from_u8(2)).to_be_bytes())
        .unwrap();
}

/// An exponent that is a multiple of the subgroup order q = (p-1)/2 maps every quadratic residue
/// to 1; such a shared secret is refused rather than used.
#[test]
fn modp2048_refuses_trivial_shared_secret() {
    let q = MODP2048_P.shr_vartime(1).to_be_bytes();
    let kx = KeyExchange::from_private(DhGroup::Modp2048, &q).unwrap();
    // 4 = 2^2 is a quadratic residue.
    let four = U2048::from_u8(4).to_be_bytes();
    assert_eq!(
        kx.compute(&four).unwrap_err(),
        CryptoError::InvalidPeerValue {
            group: "modp2048 (group 14)",
            why: "shared secret is 1 or p-1"
        }
    );
}

#[test]
fn modp2048_rejects_bad_private_values() {
    for bad in [
        vec![0u8],
        vec![1u8],
        vec![0u8; 256],
        MODP2048_P.to_be_bytes().to_vec(),
    ] {
        assert!(matches!(
            KeyExchange::from_private(DhGroup::Modp2048, &bad),
            Err(CryptoError::InvalidPrivateValue { .. })
        ));
    }
    let p_minus_1 = MODP2048_P.wrapping_sub(&U2048::ONE).to_be_bytes();
    assert!(KeyExchange::from_private(DhGroup::Modp2048, &p_minus_1).is_err());
    for len in [0, 257] {
        assert!(matches!(
            KeyExchange::from_private(DhGroup::Modp2048, &vec![1; len]),
            Err(CryptoError::KeLength { .. })
        ));
    }
}

#[test]
fn wrong_lengths_are_refused() {
    let rng = SystemRandom::new();
    for group in [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ] {
        let kx = KeyExchange::generate(group, &rng).unwrap();
        let good = public_value_len(group);
        assert_eq!(kx.public_value().len(), good);
        for len in [0, 1, good - 1, good + 1, 2 * good] {
            assert_eq!(
                kx.compute(&vec![2u8; len]).unwrap_err(),
                CryptoError::KeLength {
                    group: group_name(group),
                    expected: good,
                    got: len
                },
                "{group:?} {len}"
            );
        }
    }
    // A SEC1 point with its 0x04 prefix is not the KE payload format.
    let i = KeyExchange::from_private(DhGroup::Ecp256, &[7; 32]).unwrap();
    let r = KeyExchange::from_private(DhGroup::Ecp256, &[9; 32]).unwrap();
    let sec1 = [&[4u8], r.public_value()].concat();
    assert!(matches!(
        i.compute(&sec1),
        Err(CryptoError::KeLength { .. })
    ));
}

#[test]
fn ecp_rejects_points_off_the_curve() {
    for (group, len) in [(DhGroup::Ecp256, 32), (DhGroup::Ecp384, 48)] {
        let i = KeyExchange::from_private(group, &vec![3; len]).unwrap();
        let r = KeyExchange::from_private(group, &vec![5; len]).unwrap();
        let expected = CryptoError::InvalidPeerValue {
            group: group_name(group),
            why: "not a point on the curve (RFC 6989 §2.3)",
        };
        // y changed by one bit.
        let mut off = r.public_value().to_vec();
        *off.last_mut().unwrap() ^= 1;
        assert_eq!(i.compute(&off).unwrap_err(), expected);
        // All zeros (the point at infinity has no affine encoding) and all ones (coordinates
        // not below p).
        assert_eq!(i.compute(&vec![0; 2 * len]).unwrap_err(), expected);
        assert_eq!(i.compute(&vec![0xff; 2 * len]).unwrap_err(), expected);
        // x alone valid, y from another point.
        let mut mixed = r.public_value()[..len].to_vec();
        mixed.extend_from_slice(&i.public_value()[len..]);
        assert_eq!(i.compute(&mixed).unwrap_err(), expected);
    }
}

#[test]
fn ecp_rejects_bad_private_values() {
    // Zero, and the group order n of P-256 (SEC 2 / FIPS 186-4), are not valid scalars.
    let n256 = hex("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
    for bad in [vec![0u8; 32], n256, vec![0xff; 32]] {
        assert!(matches!(
            KeyExchange::from_private(DhGroup::Ecp256, &bad),
            Err(CryptoError::InvalidPrivateValue { .. })
        ));
    }
    assert!(matches!(
        KeyExchange::from_private(DhGroup::Ecp384, &[0u8; 48]),
        Err(CryptoError::InvalidPrivateValue { .. })
    ));
    assert!(matches!(
        KeyExchange::from_private(DhGroup::Ecp384, &[1u8; 32]),
        Err(CryptoError::KeLength { .. })
    ));
}

/// Low-order u coordinates give an all-zero X25519 output, which RFC 8031 §2 says to refuse:
/// 0, 1, and their non-canonical forms p = 2^255 - 19 and p + 1.
#[test]
fn x25519_rejects_all_zero_shared_secret() {
    let kx = KeyExchange::from_private(DhGroup::Curve25519, &[0x42; 32]).unwrap();
    let zero = [0u8; 32];
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut p = [0xffu8; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    let mut p_plus_1 = p;
    p_plus_1[0] = 0xee;
    for u in [zero, one, p, p_plus_1] {
        assert_eq!(
            kx.compute(&u).unwrap_err(),
            CryptoError::InvalidPeerValue {
                group: "x25519 (group 31)",
                why: "shared secret is all zeros (RFC 8031 §2)"
            },
            "{}",
            to_hex(&u)
        );
    }
    assert!(matches!(
        KeyExchange::from_private(DhGroup::Curve25519, &[1; 31]),
        Err(CryptoError::KeLength { .. })
    ));
}

#[test]
fn generated_keys_agree_for_every_group() {
    let rng = SystemRandom::new();
    for group in [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ] {
        let a = KeyExchange::generate(group, &rng).unwrap();
        let b = KeyExchange::generate(group, &rng).unwrap();
        assert_eq!(a.group(), group);
        assert_ne!(a.public_value(), b.public_value());
        let ab = a.compute(b.public_value()).unwrap();
        let ba = b.compute(a.public_value()).unwrap();
        assert_eq!(ab, ba, "{group:?}");
        assert_eq!(ab.len(), shared_secret_len(group));
    }
}

#[test]
fn garbage_peer_values_never_panic() {
    let mut g = Garbage(0x0123_4567_89ab_cdef);
    let rng = SystemRandom::new();
    for group in [
        DhGroup::Modp2048,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Curve25519,
    ] {
        let kx = KeyExchange::generate(group, &rng).unwrap();
        let good = public_value_len(group);
        let rounds = if group == DhGroup::Modp2048 { 8 } else { 200 };
        for _ in 0..rounds {
            let len = if g.next_u64().is_multiple_of(2) {
                good
            } else {
                (g.next_u64() % 300) as usize
            };
            // Random ECP coordinates are almost never on the curve; random MODP values are
            // almost always in range. Either way: a result or an error, never a panic.
            let _ = kx.compute(&g.bytes(len));
        }
    }
}

#[test]
fn debug_does_not_print_the_private_value() {
    let kx = KeyExchange::from_private(DhGroup::Curve25519, &[0x99; 32]).unwrap();
    let printed = format!("{kx:?}");
    assert!(printed.contains("Curve25519"), "{printed}");
    assert!(
        !printed.contains("99") && !printed.contains("153"),
        "{printed}"
    );
}
