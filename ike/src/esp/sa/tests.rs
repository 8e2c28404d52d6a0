use std::net::Ipv6Addr;

use super::*;
use crate::crypto::keys::{skeyseed, ChildSaKeys, ChildSuite, IkeSaKeys, IkeSuite};
use crate::crypto::test_util::hex;
use crate::crypto::SecretBytes;
use crate::esp::inner::tests::{ipv4, ipv6};
use crate::proposal::{Encryption, Integrity, Prf};
use crate::sa::Role;
use crate::wire::{AddressRange, XorShift};

const SPI_I2R: u32 = 0xc001_0001;
const SPI_R2I: u32 = 0xc001_0002;

const SUITES: [(Encryption, Option<Integrity>); 9] = [
    (Encryption::AesGcm16_128, None),
    (Encryption::AesGcm16_256, None),
    (Encryption::ChaCha20Poly1305, None),
    (Encryption::AesCbc128, Some(Integrity::HmacSha256_128)),
    (Encryption::AesCbc128, Some(Integrity::HmacSha384_192)),
    (Encryption::AesCbc128, Some(Integrity::HmacSha512_256)),
    (Encryption::AesCbc256, Some(Integrity::HmacSha256_128)),
    (Encryption::AesCbc256, Some(Integrity::HmacSha384_192)),
    (Encryption::AesCbc256, Some(Integrity::HmacSha512_256)),
];

/// Child SA keys derived the way IKE does it (RFC 7296 §2.17), from fixed inputs.
fn child_keys(enc: Encryption, integ: Option<Integrity>) -> ChildSaKeys {
    let suite = IkeSuite::new(Encryption::AesGcm16_256, None, Prf::HmacSha256).unwrap();
    let seed = skeyseed(Prf::HmacSha256, &[1; 32], &[2; 32], &[3; 32]);
    let ike = IkeSaKeys::derive(suite, &seed, &[1; 32], &[2; 32], &[4; 8], &[5; 8]).unwrap();
    let child = ChildSuite::new(enc, integ).unwrap();
    ChildSaKeys::derive(&ike, child, None, &[6; 32], &[7; 32]).unwrap()
}

fn ts(prefix: &str, len: u8) -> TrafficSelector {
    TrafficSelector::new(AddressRange::from_prefix(prefix.parse().unwrap(), len).unwrap())
}

fn initiator_side() -> Vec<TrafficSelector> {
    vec![ts("10.1.0.0", 16), ts("2001:db8:1::", 48)]
}

fn responder_side() -> Vec<TrafficSelector> {
    vec![ts("10.2.0.0", 16), ts("2001:db8:2::", 48)]
}

/// The initiator's outbound half and the responder's inbound half of one direction.
fn pair(enc: Encryption, integ: Option<Integrity>, esn: bool) -> (OutboundEsp, InboundEsp) {
    let keys = child_keys(enc, integ);
    let cipher = || keys.cipher(&keys.initiator_to_responder).unwrap();
    let outbound = OutboundEsp::new(SPI_I2R, cipher(), esn).unwrap();
    let inbound =
        InboundEsp::new(SPI_I2R, cipher(), esn, responder_side(), initiator_side()).unwrap();
    (outbound, inbound)
}

/// An IPv4 packet of exactly `size` octets (at least 20) from `src` to `dst`.
fn v4(size: usize, src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let body: Vec<u8> = (0..size - 20).map(|i| (i * 7) as u8).collect();
    if size >= 28 {
        let mut udp = vec![0x30, 0x39, 0, 53, 0, 0, 0, 0];
        udp.extend_from_slice(&body[8..]);
        ipv4(17, src, dst, &udp, 0)
    } else {
        ipv4(253, src, dst, &body, 0)
    }
}

/// An IPv6 packet of exactly `size` octets (at least 40).
fn v6(size: usize, src: &str, dst: &str) -> Vec<u8> {
    let src: Ipv6Addr = src.parse().unwrap();
    let dst: Ipv6Addr = dst.parse().unwrap();
    let rest: Vec<u8> = (0..size - 40).map(|i| (i * 13) as u8).collect();
    if size >= 48 {
        let mut udp = vec![0x30, 0x39, 0, 53, 0, 0, 0, 0];
        udp.extend_from_slice(&rest[8..]);
        ipv6(17, src, dst, &udp)
    } else {
        ipv6(59, src, dst, &rest)
    }
}

fn v4_ok(size: usize) -> Vec<u8> {
    v4(size, [10, 1, 0, 1], [10, 2, 0, 1])
}

fn seal(outbound: &mut OutboundEsp, inner: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    let info = outbound.seal(inner, &mut packet).unwrap();
    assert_eq!(info.len, packet.len());
    packet
}

fn open(inbound: &mut InboundEsp, packet: &[u8]) -> Result<Vec<u8>, EspSaError> {
    let mut out = Vec::new();
    match inbound.open(packet, &mut out)? {
        Opened::Packet { at, .. } => Ok(out[at].to_vec()),
        Opened::Dummy { .. } => panic!("unexpected dummy"),
    }
}

#[test]
fn every_suite_round_trips_every_size() {
    for (enc, integ) in SUITES {
        for esn in [false, true] {
            let (mut outbound, mut inbound) = pair(enc, integ, esn);
            let layout = layout(&outbound.cipher);
            let mut inners = Vec::new();
            for size in 20..=1500 {
                inners.push(v4_ok(size));
            }
            for size in 40..=1500 {
                inners.push(v6(size, "2001:db8:1::7", "2001:db8:2::9"));
            }
            let mut bytes = 0;
            for (i, inner) in inners.iter().enumerate() {
                let seq = i as u64 + 1;
                // Both calls append: keep a prefix in front to prove it.
                let mut packet = vec![0xee; 3];
                let info = outbound.seal(inner, &mut packet).unwrap();
                assert_eq!(&packet[..3], &[0xee; 3]);
                let packet = packet.split_off(3);
                assert_eq!(
                    (info.seq, info.len, info.rekey_due),
                    (seq, packet.len(), false)
                );
                assert_eq!(&packet[..4], &SPI_I2R.to_be_bytes());
                assert_eq!(&packet[4..8], &(seq as u32).to_be_bytes());
                let ciphertext_len = packet.len() - 8 - layout.iv_len - layout.icv_len;
                assert_eq!(ciphertext_len % layout.alignment(), 0);
                assert!(ciphertext_len - inner.len() - 2 < layout.alignment());
                if layout.iv_len == 8 {
                    // RFC 4106 §3.1: the IV is the sequence number.
                    assert_eq!(&packet[8..16], &seq.to_be_bytes());
                }
                bytes += inner.len() as u64;
                // Every other packet is opened in place.
                let mut out = vec![0xdd; 5];
                let mut buf = packet.clone();
                let (opened, delivered) = if i % 2 == 0 {
                    (inbound.open(&packet, &mut out), &out)
                } else {
                    (inbound.open_in_place(&mut buf), &buf)
                };
                let Ok(Opened::Packet {
                    inner: parsed,
                    seq: got,
                    at,
                }) = opened
                else {
                    panic!(
                        "{enc:?} {integ:?} esn {esn} size {}: {opened:?}",
                        inner.len()
                    );
                };
                assert_eq!((got, parsed.len, at.len()), (seq, inner.len(), inner.len()));
                assert_eq!(&delivered[at], &inner[..], "{enc:?} {integ:?} esn {esn}");
                assert_eq!(&out[..5], &[0xdd; 5]);
            }
            let n = inners.len() as u64;
            let c = EspSa { outbound, inbound }.counters();
            assert_eq!((c.packets_out, c.bytes_out), (n, bytes));
            assert_eq!((c.packets_in, c.bytes_in, c.dropped()), (n, bytes, 0));
        }
    }
}

/// Seals `plaintext` (payload and trailer) under the explicit IV of a published vector and
/// compares the whole ESP packet; then opens the vector with the receive path's crypto step.
#[allow(clippy::too_many_arguments)]
fn aead_known_answer(
    enc: Encryption,
    keymat: &str,
    spi: u32,
    seq: u64,
    esn: bool,
    iv: &str,
    plaintext: &str,
    ciphertext_and_icv: &str,
) -> InboundEsp {
    let keymat = SecretBytes::from_slice(&hex(keymat));
    let cipher = || SaCipher::new(enc, None, &keymat, &SecretBytes::default()).unwrap();
    let iv: [u8; 8] = hex(iv).try_into().unwrap();
    let plaintext = hex(plaintext);
    let (payload, next_header) = strip_trailer(&plaintext).unwrap();
    let mut expected = spi.to_be_bytes().to_vec();
    expected.extend_from_slice(&(seq as u32).to_be_bytes());
    expected.extend_from_slice(&iv);
    expected.extend_from_slice(&hex(ciphertext_and_icv));

    let SaCipher::Aead(key) = cipher() else {
        panic!("not an AEAD")
    };
    let mut packet = Vec::new();
    seal_aead(&key, spi, seq, esn, &iv, payload, next_header, &mut packet).unwrap();
    assert_eq!(packet, expected, "{enc:?} seal");

    let inbound = InboundEsp::new(spi, cipher(), esn, vec![], vec![]).unwrap();
    let (head, body) = packet.split_at_mut(16);
    let ciphertext_len = body.len() - 16;
    inbound.unprotect(seq, head, body, ciphertext_len).unwrap();
    assert_eq!(&body[..ciphertext_len], &plaintext[..], "{enc:?} open");
    // Without ESN's high half in the AAD, or with it where it does not belong, the ICV fails.
    let mut other = expected.clone();
    let (head, body) = other.split_at_mut(16);
    let wrong = InboundEsp::new(spi, cipher(), !esn, vec![], vec![]).unwrap();
    assert!(wrong.unprotect(seq, head, body, ciphertext_len).is_err());
    inbound
}

// RFC 7634 Appendix A: an ESP packet (SPI 0x01020304, sequence number 5, no ESN) carrying an
// ICMP echo request from 198.51.100.5 to 192.0.2.5, with ChaCha20-Poly1305.
const RFC7634_KEYMAT: &str =
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f a0a1a2a3";
const RFC7634_PLAINTEXT: &str = "
    45000054a6f200004001e778c6336405c000020508005b7a3a080000553bec10
    000736270809 0a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223
    2425262728292a2b2c2d2e2f3031323334353637 01020204";
const RFC7634_SEALED: &str = "
    24039428b97f417e3c13753a4f05087b67c352e6a7fab1b982d466ef407ae5c6
    14ee8099d52844eb61aa95dfab4c02f72aa71e7c4c4f64c9befe2facc638e8f3
    cbec163fac469b502773f6fb94e664da9165b82829f641e076aaa8266b7fb0f7
    b11b369907e1ad43";

#[test]
fn chacha20poly1305_rfc7634_appendix_a_packet() {
    aead_known_answer(
        Encryption::ChaCha20Poly1305,
        RFC7634_KEYMAT,
        0x0102_0304,
        5,
        false,
        "1011121314151617",
        RFC7634_PLAINTEXT,
        RFC7634_SEALED,
    );
    // The whole receive path takes the published packet: the inner ICMP packet comes out.
    let keymat = SecretBytes::from_slice(&hex(RFC7634_KEYMAT));
    let cipher = || {
        SaCipher::new(
            Encryption::ChaCha20Poly1305,
            None,
            &keymat,
            &SecretBytes::default(),
        )
        .unwrap()
    };
    let mut packet = hex("01020304 00000005 1011121314151617");
    packet.extend_from_slice(&hex(RFC7634_SEALED));
    let local = vec![ts("192.0.2.0", 24)];
    let remote = vec![ts("198.51.100.0", 24)];
    let mut inbound = InboundEsp::new(0x0102_0304, cipher(), false, local, remote).unwrap();
    let inner = hex(RFC7634_PLAINTEXT);
    let inner = &inner[..inner.len() - 4];
    let mut out = Vec::new();
    match inbound.open(&packet, &mut out).unwrap() {
        Opened::Packet {
            inner: parsed,
            seq,
            at,
        } => {
            assert_eq!((seq, at), (5, 0..84));
            assert_eq!(parsed.src, IpAddr::from([198, 51, 100, 5]));
            assert_eq!(parsed.dst, IpAddr::from([192, 0, 2, 5]));
            assert_eq!(out, inner);
        }
        other => panic!("{other:?}"),
    }
    // Our own sender, at the same sequence number, differs only in using it as the IV.
    let mut outbound = OutboundEsp::new(0x0102_0304, cipher(), false).unwrap();
    for _ in 0..4 {
        seal(&mut outbound, inner);
    }
    let ours = seal(&mut outbound, inner);
    assert_eq!(ours.len(), packet.len());
    assert_eq!(&ours[..16], &hex("01020304 00000005 0000000000000005")[..]);
    let local = vec![ts("192.0.2.0", 24)];
    let remote = vec![ts("198.51.100.0", 24)];
    let mut fresh = InboundEsp::new(0x0102_0304, cipher(), false, local, remote).unwrap();
    assert_eq!(open(&mut fresh, &ours).unwrap(), inner);
}

// draft-mcgrew-gcm-test-01 §4 (AES-GCM ESP packets). The draft's plaintexts end in Next
// Header 1, so these go through the crypto step, not the tunnel-mode inner packet check.
#[test]
fn aes_gcm_esp_packets_draft_mcgrew_gcm_test() {
    // AES-128, 64-bit ESN 0x87654321_00000000: only zeros travel in the sequence number field.
    aead_known_answer(
        Encryption::AesGcm16_128,
        "4c80cdefbb5d10da906ac73c3613a634 2e443b68",
        0x4321,
        0x8765_4321_0000_0000,
        true,
        "4956ed7e3b244cfe",
        "45000048699a000080114db7c0a80102c0a801010a9bf15638d3010000010000
         00000000045f736970045f756470037369700963796265726369747902646b00
         0021000101020201",
        "fecf537e729d5b07dc30df528dd22b768d1b98736696a6fd348509fa13ceac34
         cfa2436f14a3f3cf65925bf1f4a13c5d15b21e1884f5ff6247aeabb786b93bce
         61bc17d768fd9732 459018148f6cbe722fd04796562dfdb4",
    );
    // AES-256, 32-bit sequence number 2.
    let mut inbound = aead_known_answer(
        Encryption::AesGcm16_256,
        "abbccddef00112233445566778899aababbccddef00112233445566778899aab 11223344",
        0x4a2c_bfe3,
        2,
        false,
        "0102030405060708",
        "4500003069a6400080062690c0a801029389155e0a9e008b2dc57ee000000000
         7002400020bf0000020405b40101040201020201",
        "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763
         748a637985771d347f0545659f14e99def842d8e b335f4eecfdbf831824b4c4915956c96",
    );
    // Through the whole receive path: authentic (the window moves), but Next Header 1 is not
    // tunnel mode.
    let mut packet = hex("4a2cbfe3 00000002 0102030405060708");
    packet.extend_from_slice(&hex(
        "ff425c9b724599df7a3bcd510194e00d6a78107f1b0b1cbf06efae9d65a5d763
         748a637985771d347f0545659f14e99def842d8e b335f4eecfdbf831824b4c4915956c96",
    ));
    assert!(matches!(
        inbound.open(&packet, &mut Vec::new()),
        Err(EspSaError::Malformed(EspError::Inner(_)))
    ));
    assert_eq!(inbound.highest_seq(), 2);
    assert_eq!(inbound.counters().dropped_malformed, 1);
    // AES-128, ESN 1 (SPI 0x100, the lowest unreserved).
    aead_known_answer(
        Encryption::AesGcm16_128,
        "abbccddef00112233445566778899aab decaf888",
        0x100,
        1,
        true,
        "cafedebaceface74",
        "4500004933ba00007f119106c3fb1d10c2b1d326c02831ce0035dd7b800302d5
         00004e20001e8c18d75b81dc91baa0476b91b924b280389d92c963bac046ec95
         9b6266c04722b14923010101",
        "18a6fd42f72cbf4ab2a2ea901f73d814e3e7f243d95412e1c349c1d2fbec168f
         9190feebaf2cb01984e65863965d7472b79da345e0e780191f0d2f0e0f496c22
         6f2127b27db35724e7845d68 651f57e65f354f75ff17015769623436",
    );
}

/// The ICV covers what RFC 4303 §2.2.1 says, checked with separately built keys rather than
/// by our own receiver.
#[test]
fn esn_high_half_is_authenticated_but_not_sent() {
    for esn in [false, true] {
        let keys = child_keys(Encryption::AesGcm16_128, None);
        let (mut outbound, _) = pair(Encryption::AesGcm16_128, None, esn);
        let mut packet = seal(&mut outbound, &v4_ok(60));
        let key = AeadKey::new(
            Encryption::AesGcm16_128,
            keys.initiator_to_responder.encryption.as_bytes(),
        )
        .unwrap();
        let iv: [u8; 8] = packet[8..16].try_into().unwrap();
        let aad = if esn {
            hex("c0010001 00000000 00000001")
        } else {
            hex("c0010001 00000001")
        };
        assert!(key.open_in_place(&iv, &aad, &mut packet[16..]).is_ok());

        let keys = child_keys(Encryption::AesCbc128, Some(Integrity::HmacSha256_128));
        let (mut outbound, _) = pair(Encryption::AesCbc128, Some(Integrity::HmacSha256_128), esn);
        let first = seal(&mut outbound, &v4_ok(60));
        let packet = seal(&mut outbound, &v4_ok(60));
        // Fresh random IVs (RFC 3602 §2.1).
        assert_ne!(first[8..24], packet[8..24]);
        let mac = IntegrityKey::new(
            Integrity::HmacSha256_128,
            keys.initiator_to_responder.integrity.as_bytes(),
        )
        .unwrap();
        let (authenticated, icv) = packet.split_at(packet.len() - 16);
        let with_high = mac.compute_parts(&[authenticated, &[0, 0, 0, 0]]);
        let without = mac.compute(authenticated);
        assert_eq!(icv == with_high.as_bytes(), esn);
        assert_eq!(icv == without.as_bytes(), !esn);
    }
}

#[test]
fn replayed_packets_are_refused() {
    let (mut outbound, mut inbound) = pair(Encryption::AesGcm16_256, None, false);
    let packet = seal(&mut outbound, &v4_ok(100));
    assert!(open(&mut inbound, &packet).is_ok());
    for _ in 0..3 {
        assert_eq!(
            open(&mut inbound, &packet),
            Err(EspSaError::Replay {
                seq: 1,
                reason: ReplayError::Duplicate
            })
        );
        assert!(inbound.open_in_place(&mut packet.clone()).is_err());
    }
    assert_eq!(inbound.counters().dropped_replay, 6);
    assert_eq!(inbound.counters().packets_in, 1);
}

#[test]
fn any_bit_flip_is_refused_without_moving_the_window() {
    let suites = [
        (Encryption::AesGcm16_128, None, false),
        (Encryption::ChaCha20Poly1305, None, true),
        (Encryption::AesCbc256, Some(Integrity::HmacSha384_192), true),
    ];
    for (enc, integ, esn) in suites {
        let (mut outbound, mut inbound) = pair(enc, integ, esn);
        for _ in 0..3 {
            let packet = seal(&mut outbound, &v4_ok(48));
            open(&mut inbound, &packet).unwrap();
        }
        for _ in 0..6 {
            seal(&mut outbound, &v4_ok(48));
        }
        // Sequence number 10, ahead of the window's top (3).
        let packet = seal(&mut outbound, &v4_ok(77));
        for bit in 0..packet.len() * 8 {
            let mut flipped = packet.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = open(&mut inbound, &flipped);
            match bit / 8 {
                0..=3 => assert!(
                    matches!(result, Err(EspSaError::WrongSpi { .. })),
                    "{result:?}"
                ),
                // A different sequence number: a replay of 1..=3 or 0, or a wrong ICV.
                4..=7 => assert!(matches!(
                    result,
                    Err(EspSaError::Replay { .. } | EspSaError::Authentication { .. })
                )),
                _ => assert_eq!(result, Err(EspSaError::Authentication { seq: 10 })),
            }
            assert_eq!(inbound.highest_seq(), 3, "{enc:?} bit {bit}");
        }
        let c = inbound.counters();
        assert_eq!(c.dropped(), packet.len() as u64 * 8);
        assert_eq!(c.dropped_spi, 32);
        assert_eq!(c.packets_in, 3);
        // The genuine packet still opens: nothing was marked seen.
        assert_eq!(open(&mut inbound, &packet).unwrap(), v4_ok(77));
        assert_eq!(inbound.highest_seq(), 10);
    }
}

#[test]
fn reordered_packets_within_the_window_are_accepted() {
    for esn in [false, true] {
        let (mut outbound, mut inbound) = pair(Encryption::ChaCha20Poly1305, None, esn);
        let mut packets: Vec<Vec<u8>> =
            (0..1000).map(|_| seal(&mut outbound, &v4_ok(64))).collect();
        // Fisher-Yates with a fixed seed.
        let mut rng = XorShift(0x0dd_ba11);
        for i in (1..packets.len()).rev() {
            packets.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        for packet in &packets {
            assert_eq!(open(&mut inbound, packet).unwrap(), v4_ok(64));
        }
        for packet in &packets {
            assert!(matches!(
                open(&mut inbound, packet),
                Err(EspSaError::Replay {
                    reason: ReplayError::Duplicate,
                    ..
                })
            ));
        }
        // Far ahead, then an unseen packet that is now older than the window.
        let late = seal(&mut outbound, &v4_ok(64));
        for _ in 0..3000 {
            seal(&mut outbound, &v4_ok(64));
        }
        open(&mut inbound, &seal(&mut outbound, &v4_ok(64))).unwrap();
        let result = open(&mut inbound, &late);
        if esn {
            // With ESN a number below the window reads as the next 2^32 subspace (RFC 4303
            // Appendix A2.2); the ICV, computed with the wrong high half, then fails.
            assert_eq!(
                result,
                Err(EspSaError::Authentication {
                    seq: (1 << 32) + 1001
                })
            );
        } else {
            assert_eq!(
                result,
                Err(EspSaError::Replay {
                    seq: 1001,
                    reason: ReplayError::TooOld
                })
            );
        }
        let c = inbound.counters();
        assert_eq!((c.packets_in, c.dropped()), (1001, 1001));
        assert_eq!(c.dropped_replay, if esn { 1000 } else { 1001 });
        assert_eq!(inbound.highest_seq(), 4002);
    }
}

#[test]
fn inner_packets_outside_the_selectors_are_refused() {
    let (mut outbound, mut inbound) = pair(Encryption::AesGcm16_128, None, false);
    let outside = [
        v4(60, [10, 9, 0, 1], [10, 2, 0, 1]), // source outside the peer's side
        v4(60, [10, 1, 0, 1], [10, 3, 0, 1]), // destination outside ours
        v4(60, [10, 2, 0, 1], [10, 1, 0, 1]), // reversed direction
        v6(60, "2001:db8:7::1", "2001:db8:2::1"),
        v6(60, "2001:db8:1::1", "2001:db8:1::2"),
    ];
    for inner in &outside {
        let packet = seal(&mut outbound, inner);
        let before = inbound.highest_seq();
        assert!(matches!(
            open(&mut inbound, &packet),
            Err(EspSaError::OutsideSelectors { .. })
        ));
        // Authentic, so the window moved: the same packet is now a replay.
        assert_eq!(inbound.highest_seq(), before + 1);
    }
    assert_eq!(inbound.counters().dropped_selector, outside.len() as u64);
    let inside = v6(60, "2001:db8:1::1", "2001:db8:2::2");
    assert_eq!(
        open(&mut inbound, &seal(&mut outbound, &inside)).unwrap(),
        inside
    );
    assert_eq!(inbound.counters().packets_in, 1);
}

#[test]
fn dummy_packets_are_reported_and_discarded() {
    for (enc, integ) in [
        (Encryption::AesGcm16_256, None),
        (Encryption::AesCbc128, Some(Integrity::HmacSha256_128)),
    ] {
        let (mut outbound, mut inbound) = pair(enc, integ, false);
        for len in [0, 1, 37] {
            let mut packet = Vec::new();
            let info = outbound.seal_dummy(len, &mut packet).unwrap();
            let mut out = vec![1, 2, 3];
            assert_eq!(
                inbound.open(&packet, &mut out),
                Ok(Opened::Dummy { seq: info.seq })
            );
            assert_eq!(out, [1, 2, 3]);
        }
        let c = EspSa { outbound, inbound }.counters();
        assert_eq!((c.dummies_out, c.dummies_in), (3, 3));
        assert_eq!((c.packets_out, c.packets_in, c.dropped()), (0, 0, 0));
    }
}

#[test]
fn authenticated_bad_padding_is_refused() {
    let keys = child_keys(Encryption::AesGcm16_128, None);
    let (_, mut inbound) = pair(Encryption::AesGcm16_128, None, false);
    let key = AeadKey::new(
        Encryption::AesGcm16_128,
        keys.initiator_to_responder.encryption.as_bytes(),
    )
    .unwrap();
    let inner = v4_ok(28);
    // Padding 1, 3 instead of 1, 2 (RFC 4303 §2.4), sealed with the right key.
    let mut packet = hex("c0010001 00000001 0000000000000001");
    packet.extend_from_slice(&inner);
    packet.extend_from_slice(&[1, 3, 2, 4]);
    let aad = hex("c0010001 00000001");
    let icv = key
        .seal_in_place_detached(&[0, 0, 0, 0, 0, 0, 0, 1], &aad, &mut packet[16..])
        .unwrap();
    packet.extend_from_slice(&icv);
    assert_eq!(
        open(&mut inbound, &packet),
        Err(EspSaError::Padding(EspError::BadPadding))
    );
    assert_eq!(inbound.counters().dropped_padding, 1);
}

#[test]
fn truncated_packets_are_refused_at_every_length() {
    for (i, (enc, integ)) in SUITES.into_iter().enumerate() {
        let (mut outbound, mut inbound) = pair(enc, integ, i % 2 == 0);
        for size in [20, 257, 1400] {
            let packet = seal(&mut outbound, &v4_ok(size));
            for cut in 0..packet.len() {
                let before = inbound.highest_seq();
                assert!(
                    open(&mut inbound, &packet[..cut]).is_err(),
                    "{enc:?} cut {cut}"
                );
                assert!(inbound.open_in_place(&mut packet[..cut].to_vec()).is_err());
                assert!(open(&mut inbound, &packet[cut + 1..]).is_err());
                assert_eq!(inbound.highest_seq(), before);
            }
            assert_eq!(open(&mut inbound, &packet).unwrap(), v4_ok(size));
        }
        assert_eq!(inbound.counters().packets_in, 3);
    }
}

#[test]
fn limits_ask_for_rekey_then_refuse() {
    let (outbound, _) = pair(Encryption::AesGcm16_128, None, false);
    let mut outbound = outbound.with_limits(EspLimits {
        soft_packets: Some(2),
        hard_packets: Some(3),
        ..EspLimits::default()
    });
    let mut out = Vec::new();
    let due: Vec<bool> = (0..3)
        .map(|_| outbound.seal(&v4_ok(40), &mut out).unwrap().rekey_due)
        .collect();
    assert_eq!(due, [false, true, true]);
    let before = out.len();
    assert_eq!(
        outbound.seal(&v4_ok(40), &mut out),
        Err(EspSaError::LifetimeExpired {
            what: "packets",
            limit: 3
        })
    );
    assert_eq!((out.len(), outbound.last_seq()), (before, 3));

    let (outbound, _) = pair(Encryption::ChaCha20Poly1305, None, true);
    let mut outbound = outbound.with_limits(EspLimits {
        soft_bytes: Some(100),
        hard_bytes: Some(150),
        ..EspLimits::default()
    });
    let due: Vec<bool> = (0..3)
        .map(|_| outbound.seal(&v4_ok(60), &mut out).unwrap().rekey_due)
        .collect();
    assert_eq!(due, [false, true, true]);
    assert!(matches!(
        outbound.seal(&v4_ok(60), &mut out),
        Err(EspSaError::LifetimeExpired { what: "octets", .. })
    ));

    // The default soft limit leaves 1/16 of the sequence space (RFC 4303 §3.3.3).
    let (outbound, _) = pair(Encryption::AesGcm16_128, None, false);
    assert!(!outbound.rekey_due());
    assert_eq!(
        format!(
            "{}",
            EspSaError::Exhausted(EspError::SequenceExhausted { limit: 7 })
        ),
        "sequence number space exhausted (7); the Child SA must be rekeyed (RFC 4303 §3.3.3)"
    );
}

#[test]
fn only_ip_packets_are_sealed() {
    let (mut outbound, _) = pair(Encryption::AesGcm16_128, None, false);
    let mut out = vec![9];
    assert_eq!(outbound.seal(&[], &mut out), Err(EspSaError::EmptyInner));
    let mut not_ip = v4_ok(40);
    not_ip[0] = 0x55;
    assert_eq!(outbound.seal(&not_ip, &mut out), Err(EspSaError::NotIp(5)));
    assert_eq!((out, outbound.last_seq()), (vec![9], 0));
    // Reserved SPIs never go on the wire (RFC 4303 §2.1).
    let keys = child_keys(Encryption::AesGcm16_128, None);
    let cipher = || keys.cipher(&keys.initiator_to_responder).unwrap();
    let reserved = Err(EspSaError::Malformed(EspError::ReservedSpi(255)));
    assert_eq!(OutboundEsp::new(255, cipher(), false).map(|_| ()), reserved);
    let inbound = InboundEsp::new(255, cipher(), false, vec![], vec![]);
    assert_eq!(inbound.map(|_| ()), reserved);
}

fn child(role: Role, proposal: &str) -> ChildSa {
    let keys = child_keys(Encryption::AesGcm16_256, None);
    let (spi_in, spi_out, local_ts, remote_ts) = match role {
        Role::Initiator => (SPI_R2I, SPI_I2R, initiator_side(), responder_side()),
        Role::Responder => (SPI_I2R, SPI_R2I, responder_side(), initiator_side()),
    };
    ChildSa {
        spi_in,
        spi_out,
        proposal: EspProposal::parse(proposal).unwrap(),
        role,
        keys,
        local_ts,
        remote_ts,
        udp_encap: false,
        rekeys: None,
    }
}

#[test]
fn from_child_picks_keys_spis_selectors_and_esn() {
    for (proposal, esn) in [("aes256gcm16-esn", true), ("aes256gcm16", false)] {
        let initiator = child(Role::Initiator, proposal);
        let responder = child(Role::Responder, proposal);
        let mut i = EspSa::from_child(&initiator).unwrap();
        let mut r = EspSa::from_child(&responder).unwrap();
        assert_eq!((i.outbound.esn(), i.inbound.esn()), (esn, esn));
        assert_eq!((i.outbound.spi(), r.inbound.spi()), (SPI_I2R, SPI_I2R));

        let to_responder = v4(100, [10, 1, 2, 3], [10, 2, 3, 4]);
        let to_initiator = v4(100, [10, 2, 3, 4], [10, 1, 2, 3]);
        let packet = seal(&mut i.outbound, &to_responder);
        assert_eq!(open(&mut r.inbound, &packet).unwrap(), to_responder);
        let reply = seal(&mut r.outbound, &to_initiator);
        assert_eq!(open(&mut i.inbound, &reply).unwrap(), to_initiator);
        // Our own packets do not come back in: another SPI, and other keys.
        assert!(matches!(
            open(&mut i.inbound, &packet),
            Err(EspSaError::WrongSpi { .. })
        ));
        let mut own_keys =
            InboundEsp::new(SPI_I2R, initiator.inbound().unwrap(), esn, vec![], vec![]).unwrap();
        assert_eq!(
            open(&mut own_keys, &packet),
            Err(EspSaError::Authentication { seq: 1 })
        );
    }
}

#[test]
fn debug_output_shows_no_key() {
    let enc = SecretBytes::from_slice(&[0x42; 36]);
    let gcm = SaCipher::new(
        Encryption::ChaCha20Poly1305,
        None,
        &enc,
        &SecretBytes::default(),
    );
    let cbc = SaCipher::new(
        Encryption::AesCbc256,
        Some(Integrity::HmacSha256_128),
        &SecretBytes::from_slice(&[0x42; 32]),
        &SecretBytes::from_slice(&[0x24; 32]),
    );
    for cipher in [gcm.unwrap(), cbc.unwrap()] {
        let outbound = OutboundEsp::new(0x1234_5678, cipher, true).unwrap();
        let printed = format!("{outbound:?}");
        assert!(printed.contains("0x12345678"), "{printed}");
        for key_trace in ["4242", "42, 42", "66, 66", "2424", "24, 24", "36, 36"] {
            assert!(!printed.contains(key_trace), "{printed}");
        }
    }
}

/// 10,000 deterministic random, mutated, cut and extended packets into both receive calls:
/// never a panic, never a delivery.
#[test]
fn fuzz_open_never_panics() {
    let mut rng = XorShift(0x5eed_e5b0_0000_0001);
    let mut sas: Vec<(InboundEsp, Vec<Vec<u8>>)> = [
        (Encryption::AesGcm16_128, None, false),
        (Encryption::ChaCha20Poly1305, None, true),
        (Encryption::AesCbc256, Some(Integrity::HmacSha512_256), true),
    ]
    .into_iter()
    .map(|(enc, integ, esn)| {
        let (mut outbound, inbound) = pair(enc, integ, esn);
        let genuine = [20, 41, 64, 300, 1400]
            .iter()
            .map(|size| seal(&mut outbound, &v4_ok(*size)))
            .collect();
        (inbound, genuine)
    })
    .collect();
    let mut tried = 0u64;
    for i in 0..10_000 {
        let (inbound, genuine) = &mut sas[i % 3];
        let original = &genuine[(rng.next_u64() % genuine.len() as u64) as usize];
        let packet = match rng.next_u64() % 4 {
            0 => rng.bytes(300),
            1 => {
                let mut p = SPI_I2R.to_be_bytes().to_vec();
                p.extend_from_slice(&rng.bytes(1500));
                p
            }
            2 => {
                let mut p = original.clone();
                for _ in 0..1 + rng.next_u64() % 4 {
                    let at = (rng.next_u64() % p.len() as u64) as usize;
                    p[at] ^= (rng.next_u64() as u8) | 1;
                }
                p
            }
            _ => {
                let cut = (rng.next_u64() % original.len() as u64) as usize;
                let mut p = original[..cut].to_vec();
                if rng.next_u64().is_multiple_of(2) {
                    p.extend_from_slice(&rng.bytes(40));
                }
                p
            }
        };
        if genuine.contains(&packet) {
            continue;
        }
        tried += 1;
        let mut out = Vec::new();
        assert!(inbound.open(&packet, &mut out).is_err());
        assert!(out.is_empty());
        assert!(inbound.open_in_place(&mut packet.clone()).is_err());
    }
    let dropped: u64 = sas.iter().map(|(i, _)| i.counters().dropped()).sum();
    assert_eq!(dropped, 2 * tried);
    // Nothing moved any window: every genuine packet still opens.
    for (inbound, genuine) in &mut sas {
        assert_eq!(inbound.highest_seq(), 0);
        for packet in genuine.iter() {
            assert!(open(inbound, packet).is_ok());
        }
    }
}
