//! Raw AEAD throughput: the ceiling that the ESP data-path benchmark (issue 3) compares against.
//!
//! ```text
//! cargo run --release -p ike --example crypto_bench
//! ```
//!
//! Seals ESP-sized packets (64, 512 and 1400 octets, 8-octet AAD as for SPI || sequence number)
//! with ring directly and through `ike::crypto::AeadKey`, and, for comparison, with RustCrypto's
//! ChaCha20-Poly1305 and with the AES-CBC + HMAC-SHA2 fallback suite. Then times one
//! Diffie-Hellman `compute` per group. Prints figures and ratios against a baseline measured in
//! the same run; asserts nothing about time.

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use ike::crypto::{AeadKey, CbcKey, IntegrityKey, KeyExchange};
use ike::proposal::{DhGroup, Encryption, Integrity};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::SystemRandom;

const SIZES: [usize; 3] = [64, 512, 1400];
/// Each figure is the best of `ROUNDS` windows of `WINDOW`: the machine is shared (builds run
/// beside benchmarks on the 2-core CI size), and the best window is the least disturbed one.
const ROUNDS: u32 = 5;
const WINDOW: Duration = Duration::from_millis(60);

/// Runs `op` in `ROUNDS` windows of about `WINDOW` each and returns the best rate, in
/// operations per second.
fn ops_per_sec(mut op: impl FnMut()) -> f64 {
    let warm_up = Instant::now();
    while warm_up.elapsed() < WINDOW / 4 {
        op();
    }
    let mut best = 0.0f64;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut ops = 0u64;
        loop {
            for _ in 0..16 {
                op();
            }
            ops += 16;
            if start.elapsed() >= WINDOW {
                break;
            }
        }
        best = best.max(ops as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn mb_per_sec(size: usize, op: impl FnMut()) -> f64 {
    ops_per_sec(op) * size as f64 / 1e6
}

fn ring_seal(
    alg: &'static ring::aead::Algorithm,
    key_len: usize,
    size: usize,
) -> Result<f64, Box<dyn Error>> {
    let key = LessSafeKey::new(
        UnboundKey::new(alg, &vec![0x42; key_len]).map_err(|_| "ring refused the key")?,
    );
    let mut buf = vec![0u8; size];
    let aad = [0u8; 8];
    let mut counter = 0u64;
    Ok(mb_per_sec(size, || {
        counter += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        let tag = key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(n),
            Aad::from(&aad),
            &mut buf,
        );
        black_box(&tag);
    }))
}

fn wrapper_seal(alg: Encryption, size: usize) -> Result<f64, Box<dyn Error>> {
    let keymat_len = AeadKey::keymat_len(alg).ok_or("not an AEAD")?;
    let key = AeadKey::new(alg, &vec![0x42; keymat_len])?;
    let mut buf = vec![0u8; size];
    let aad = [0u8; 8];
    let mut counter = 0u64;
    Ok(mb_per_sec(size, || {
        counter += 1;
        let icv = key.seal_in_place_detached(&counter.to_be_bytes(), &aad, &mut buf);
        black_box(&icv);
    }))
}

fn rustcrypto_chacha_seal(size: usize) -> Result<f64, Box<dyn Error>> {
    let cipher = chacha20poly1305::ChaCha20Poly1305::new_from_slice(&[0x42; 32])
        .map_err(|_| "RustCrypto refused the key")?;
    let mut buf = vec![0u8; size];
    let aad = [0u8; 8];
    let mut counter = 0u64;
    Ok(mb_per_sec(size, || {
        counter += 1;
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        let tag = cipher.encrypt_in_place_detached(&n.into(), &aad, &mut buf);
        black_box(&tag);
    }))
}

/// AES-CBC encryption plus the truncated HMAC over header || IV || ciphertext, as ESP does.
fn cbc_hmac_seal(alg: Encryption, integ: Integrity, size: usize) -> Result<f64, Box<dyn Error>> {
    let cipher = CbcKey::new(alg, &vec![0x42; CbcKey::key_len(alg).ok_or("not CBC")?])?;
    let mac = IntegrityKey::new(integ, &vec![0x24; IntegrityKey::key_len(integ)])?;
    // Whole blocks, as the ESP padding would make them.
    let mut buf = vec![0u8; size.div_ceil(16) * 16];
    let header = [0u8; 8];
    let iv = [7u8; 16];
    let mut failed = false;
    let rate = mb_per_sec(size, || {
        failed |= cipher.encrypt_in_place(&iv, &mut buf).is_err();
        black_box(mac.compute_parts(&[&header, &iv, &buf]));
    });
    if failed {
        return Err("CBC encryption failed".into());
    }
    Ok(rate)
}

fn main() -> Result<(), Box<dyn Error>> {
    println!(
        "AEAD seal throughput, MB/s (10^6 octets/s), {} {}, best of {ROUNDS} x {} ms",
        std::env::consts::OS,
        std::env::consts::ARCH,
        WINDOW.as_millis()
    );
    println!("ratio = via ike::crypto::AeadKey / ring directly (the wrapper's overhead)\n");
    println!(
        "{:<18} {:>6} {:>10} {:>10} {:>7}",
        "cipher", "octets", "ring", "AeadKey", "ratio"
    );
    let ring_suites: [(&str, Encryption, &'static ring::aead::Algorithm, usize); 3] = [
        (
            "aes128gcm16",
            Encryption::AesGcm16_128,
            &ring::aead::AES_128_GCM,
            16,
        ),
        (
            "aes256gcm16",
            Encryption::AesGcm16_256,
            &ring::aead::AES_256_GCM,
            32,
        ),
        (
            "chacha20poly1305",
            Encryption::ChaCha20Poly1305,
            &ring::aead::CHACHA20_POLY1305,
            32,
        ),
    ];
    let mut ring_chacha = [0.0f64; SIZES.len()];
    for (name, alg, ring_alg, key_len) in ring_suites {
        for (i, size) in SIZES.into_iter().enumerate() {
            let raw = ring_seal(ring_alg, key_len, size)?;
            let wrapped = wrapper_seal(alg, size)?;
            if alg == Encryption::ChaCha20Poly1305 {
                ring_chacha[i] = raw;
            }
            println!(
                "{name:<18} {size:>6} {raw:>10.0} {wrapped:>10.0} {:>7.2}",
                wrapped / raw
            );
        }
    }

    println!("\nComparison, MB/s; ratio = this / ring ChaCha20-Poly1305 above\n");
    println!(
        "{:<34} {:>6} {:>10} {:>7}",
        "implementation", "octets", "MB/s", "ratio"
    );
    for (i, size) in SIZES.into_iter().enumerate() {
        let rate = rustcrypto_chacha_seal(size)?;
        println!(
            "{:<34} {size:>6} {rate:>10.0} {:>7.2}",
            "RustCrypto chacha20poly1305 0.10",
            rate / ring_chacha[i]
        );
    }
    for (name, alg, integ) in [
        (
            "aes128-sha256 (CBC + HMAC)",
            Encryption::AesCbc128,
            Integrity::HmacSha256_128,
        ),
        (
            "aes256-sha512 (CBC + HMAC)",
            Encryption::AesCbc256,
            Integrity::HmacSha512_256,
        ),
    ] {
        for (i, size) in SIZES.into_iter().enumerate() {
            let rate = cbc_hmac_seal(alg, integ, size)?;
            println!(
                "{name:<34} {size:>6} {rate:>10.0} {:>7.2}",
                rate / ring_chacha[i]
            );
        }
    }

    println!("\nDiffie-Hellman: one `compute` (peer check + shared secret)\n");
    let rng = SystemRandom::new();
    for group in [
        DhGroup::Curve25519,
        DhGroup::Ecp256,
        DhGroup::Ecp384,
        DhGroup::Modp2048,
    ] {
        let ours = KeyExchange::generate(group, &rng)?;
        let peer = KeyExchange::generate(group, &rng)?;
        let mut failed = false;
        let rate = ops_per_sec(|| {
            failed |= black_box(ours.compute(peer.public_value())).is_err();
        });
        if failed {
            return Err(format!("{group:?} compute failed").into());
        }
        println!(
            "{:<12} {:>10.0} per second {:>10.1} µs each",
            format!("{group:?}"),
            rate,
            1e6 / rate
        );
    }
    Ok(())
}
