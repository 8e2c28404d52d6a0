//! Synthetic attestation chains with a test root in Apple's place (as other ACME CAs test this).

use std::time::Duration;

use proptest::prelude::*;
use rcgen::PublicKeyData;

use super::testing::*;
use super::*;

const TOKEN: &str = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA";

fn chain_err(result: Result<Attestation, AttestError>) -> String {
    match result {
        Err(AttestError::Chain(why)) => why,
        other => panic!("expected a chain error, got {other:?}"),
    }
}

fn cbor_err(result: Result<Attestation, AttestError>) -> String {
    match result {
        Err(AttestError::Cbor(why)) => why,
        other => panic!("expected a CBOR error, got {other:?}"),
    }
}

fn good(key: LeafKey) {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.key = key;
    let (att, leaf) = ca.att_obj(&spec);
    let got = ca
        .verifier()
        .verify(&att, TOKEN, now())
        .unwrap_or_else(|e| panic!("{key:?}: {e}"));
    assert_eq!(got.serial.as_deref(), Some("C02TEST0001"));
    assert_eq!(got.udid.as_deref(), Some("00008103-001A2B3C4D5E6F70"));
    assert_eq!(got.os_version.as_deref(), Some("17.4"));
    assert_eq!(got.sip_enabled, None);
    assert_eq!(got.secure_boot, None);
    let key_pair = leaf.key.unwrap_or_else(|| panic!("EC leaf has a key"));
    assert_eq!(got.public_key_spki, key_pair.subject_public_key_info());
    assert_eq!(got.leaf_sha256.to_vec(), sha256(&leaf.der));
    assert_eq!(got.not_after, spec.not_after);
    let oids: Vec<&str> = got
        .apple_extensions
        .iter()
        .map(|(o, _)| o.as_str())
        .collect();
    assert_eq!(
        oids,
        [
            "1.2.840.113635.100.8.9.1",
            "1.2.840.113635.100.8.9.2",
            "1.2.840.113635.100.8.10.1",
            "1.2.840.113635.100.8.11.1"
        ]
    );
    assert_eq!(got.apple_extensions[0].1, b"C02TEST0001");
    assert_eq!(got.apple_extensions[3].1, sha256(TOKEN.as_bytes()));
}

#[test]
fn good_p256_leaf() {
    good(LeafKey::P256);
}

#[test]
fn good_p384_leaf() {
    good(LeafKey::P384);
}

#[test]
fn macos_facts_and_other_apple_extensions() {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.udid = None;
    spec.extra = vec![
        (apple_oid(&[13, 1]), vec![0x01, 0x01, 0xff]),
        (apple_oid(&[13, 2]), b"full".to_vec()),
        (apple_oid(&[10, 2]), b"2332.100.26".to_vec()),
    ];
    let (att, _) = ca.att_obj(&spec);
    let got = ca.verifier().verify(&att, TOKEN, now());
    let got = got.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.udid, None);
    assert_eq!(got.sip_enabled, Some(true));
    assert_eq!(got.secure_boot.as_deref(), Some("full"));
    assert!(got.apple_extensions.contains(&(
        "1.2.840.113635.100.8.10.2".to_owned(),
        b"2332.100.26".to_vec()
    )));
    assert_eq!(got.apple_extensions.len(), 6);
}

#[test]
fn serial_and_udid_in_an_inner_der_string_are_read_too() {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.serial = None;
    spec.udid = None;
    let mut serial = vec![0x0c, 11];
    serial.extend_from_slice(b"C02WRAPPED1");
    let mut udid = vec![0x04, 4];
    udid.extend_from_slice(b"UDID");
    spec.extra = vec![(apple_oid(&[9, 1]), serial), (apple_oid(&[9, 2]), udid)];
    let mut wrapped_nonce = vec![0x04, 0x20];
    wrapped_nonce.extend_from_slice(&sha256(TOKEN.as_bytes()));
    spec.freshness = Some(wrapped_nonce);
    let (att, _) = ca.att_obj(&spec);
    let got = ca.verifier().verify(&att, TOKEN, now());
    let got = got.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.serial.as_deref(), Some("C02WRAPPED1"));
    assert_eq!(got.udid.as_deref(), Some("UDID"));
}

#[test]
fn a_serial_that_is_not_text_is_refused() {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.serial = None;
    spec.extra = vec![(apple_oid(&[9, 1]), vec![0x00, 0x07, 0xff])];
    let (att, _) = ca.att_obj(&spec);
    match ca.verifier().verify(&att, TOKEN, now()) {
        Err(AttestError::Certificate(why)) => assert!(why.contains("serial number"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn broken_chain_wrong_issuer_signature() {
    let ca = TestCa::new("");
    // Same names, other keys: the leaf names our intermediate but was signed by another.
    let impostor = TestCa::new("");
    let leaf = impostor.leaf(&LeafSpec::for_token(TOKEN));
    let att = att_obj("apple", &[leaf.der, ca.intermediate_der.clone()]);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("bad signature: x5c[0]"), "{why}");
    assert!(why.contains("x5c[1]"), "{why}");

    // An intermediate of the same name made by another root.
    let att = att_obj(
        "apple",
        &[
            impostor.leaf(&LeafSpec::for_token(TOKEN)).der,
            impostor.intermediate_der.clone(),
        ],
    );
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("bad signature: x5c[1]"), "{why}");
    assert!(why.contains("trusted root"), "{why}");

    // One flipped bit in the leaf's signature.
    let (mut att, leaf) = ca.att_obj(&LeafSpec::for_token(TOKEN));
    let at = find(&att, &leaf.der) + leaf.der.len() - 5;
    att[at] ^= 0x01;
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("bad signature"), "{why}");
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("not found"))
}

#[test]
fn truncated_der() {
    let ca = TestCa::new("");
    let leaf = ca.leaf(&LeafSpec::for_token(TOKEN));
    for cut in [leaf.der.len() / 2, leaf.der.len() - 1, 3, 1] {
        let att = att_obj(
            "apple",
            &[leaf.der[..cut].to_vec(), ca.intermediate_der.clone()],
        );
        let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
        assert!(why.starts_with("x5c[0]: truncated DER"), "{cut}: {why}");
    }
    let inter = &ca.intermediate_der;
    let att = att_obj(
        "apple",
        &[leaf.der.clone(), inter[..inter.len() - 10].to_vec()],
    );
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("x5c[1]: truncated DER"), "{why}");

    let mut long = leaf.der.clone();
    long.push(0);
    let att = att_obj("apple", &[long, inter.clone()]);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.contains("1 trailing bytes"), "{why}");
}

#[test]
fn missing_intermediate() {
    let ca = TestCa::new("");
    let leaf = ca.leaf(&LeafSpec::for_token(TOKEN));
    let att = att_obj("apple", &[leaf.der]);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("missing intermediate"), "{why}");
    assert!(
        why.contains("Test Enterprise Attestation Sub CA 1"),
        "{why}"
    );
}

#[test]
fn unknown_issuer() {
    let ca = TestCa::new("");
    let other = TestCa::new(" (other)");
    let (att, _) = other.att_obj(&LeafSpec::for_token(TOKEN));
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("unknown issuer"), "{why}");
    assert!(why.contains("Root CA (other)"), "{why}");

    // The foreign root sent along: the chain ends in an untrusted root.
    let leaf = other.leaf(&LeafSpec::for_token(TOKEN));
    let att = att_obj(
        "apple",
        &[
            leaf.der,
            other.intermediate_der.clone(),
            other.root_der.clone(),
        ],
    );
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(
        why.starts_with("unknown issuer: the chain ends in"),
        "{why}"
    );

    // Apple's root does not know the test chain.
    let (att, _) = ca.att_obj(&LeafSpec::for_token(TOKEN));
    let why = chain_err(Verifier::apple().verify(&att, TOKEN, now()));
    assert!(why.starts_with("unknown issuer"), "{why}");
}

#[test]
fn x5c_out_of_order_is_refused_and_a_sent_root_is_accepted() {
    let ca = TestCa::new("");
    let leaf = ca.leaf(&LeafSpec::for_token(TOKEN));
    let att = att_obj(
        "apple",
        &[
            leaf.der.clone(),
            ca.root_der.clone(),
            ca.intermediate_der.clone(),
        ],
    );
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.contains("is not the issuer of x5c[0]"), "{why}");

    let att = att_obj(
        "apple",
        &[leaf.der, ca.intermediate_der.clone(), ca.root_der.clone()],
    );
    assert!(ca.verifier().verify(&att, TOKEN, now()).is_ok());

    // A leaf issued directly by the root needs no intermediate.
    let leaf = ca.leaf_from_root(&LeafSpec::for_token(TOKEN));
    let att = att_obj("apple", &[leaf.der]);
    assert!(ca.verifier().verify(&att, TOKEN, now()).is_ok());
}

#[test]
fn wrong_nonce() {
    let ca = TestCa::new("");
    let (att, _) = ca.att_obj(&LeafSpec::for_token(TOKEN));
    assert_eq!(
        ca.verifier().verify(&att, "another-token", now()),
        Err(AttestError::WrongNonce)
    );
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.freshness = Some(sha256(TOKEN.as_bytes())[..31].to_vec());
    let (att, _) = ca.att_obj(&spec);
    assert_eq!(
        ca.verifier().verify(&att, TOKEN, now()),
        Err(AttestError::WrongNonce)
    );
    // The token itself rather than its hash.
    spec.freshness = Some(TOKEN.as_bytes().to_vec());
    let (att, _) = ca.att_obj(&spec);
    assert_eq!(
        ca.verifier().verify(&att, TOKEN, now()),
        Err(AttestError::WrongNonce)
    );
}

#[test]
fn missing_nonce() {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.freshness = None;
    let (att, _) = ca.att_obj(&spec);
    assert_eq!(
        ca.verifier().verify(&att, TOKEN, now()),
        Err(AttestError::NoNonce)
    );
}

#[test]
fn expired_or_not_yet_valid_attestation_certificate() {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.not_before = now() - Duration::from_secs(30 * 86_400);
    spec.not_after = now() - Duration::from_secs(1);
    let (att, _) = ca.att_obj(&spec);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(
        why.starts_with("x5c[0] (leaf") && why.contains("expired"),
        "{why}"
    );

    let spec = LeafSpec::for_token(TOKEN);
    let (att, _) = ca.att_obj(&spec);
    let why = chain_err(
        ca.verifier()
            .verify(&att, TOKEN, spec.not_after + Duration::from_secs(2)),
    );
    assert!(why.contains("expired"), "{why}");
    let why = chain_err(ca.verifier().verify(
        &att,
        TOKEN,
        spec.not_before - Duration::from_secs(2),
    ));
    assert!(why.contains("not yet valid"), "{why}");

    // An expired intermediate.
    let old = TestCa::build(
        "",
        None,
        (
            now() - Duration::from_secs(90 * 86_400),
            now() - Duration::from_secs(86_400),
        ),
    );
    let (att, _) = old.att_obj(&LeafSpec::for_token(TOKEN));
    let why = chain_err(old.verifier().verify(&att, TOKEN, now()));
    assert!(
        why.starts_with("x5c[1] (intermediate") && why.contains("expired"),
        "{why}"
    );
}

#[test]
fn rsa_leaf_key_is_refused() {
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.key = LeafKey::Rsa;
    let (att, _) = ca.att_obj(&spec);
    match ca.verifier().verify(&att, TOKEN, now()) {
        Err(AttestError::Certificate(why)) => {
            assert!(
                why.contains("RSA") && why.contains("P-256 or P-384"),
                "{why}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn issuer_constraints() {
    // Root with pathLenConstraint 0 cannot have an intermediate below it.
    let ca = TestCa::build(
        "",
        Some(0),
        (
            now() - Duration::from_secs(86_400),
            now() + Duration::from_secs(86_400),
        ),
    );
    let (att, _) = ca.att_obj(&LeafSpec::for_token(TOKEN));
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.starts_with("path length"), "{why}");

    // A leaf used as an issuer: its "child" names it, it is not a CA.
    let ca = TestCa::new("");
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.ca = true;
    let (att, _) = ca.att_obj(&spec);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.contains("is a CA certificate"), "{why}");

    // An unknown extension on the leaf outside Apple's arc: fine unless critical (RFC 5280 §4.2).
    let mut spec = LeafSpec::for_token(TOKEN);
    spec.extra = vec![(vec![1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00])];
    let (att, _) = ca.att_obj(&spec);
    assert!(ca.verifier().verify(&att, TOKEN, now()).is_ok());
    spec.extra_critical = true;
    let (att, _) = ca.att_obj(&spec);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(
        why.contains("critical extension 1.3.6.1.4.1.99999.1"),
        "{why}"
    );
    // Apple's own extensions marked critical are understood.
    spec.extra = vec![(apple_oid(&[10, 2]), b"1.0".to_vec())];
    let (att, _) = ca.att_obj(&spec);
    assert!(ca.verifier().verify(&att, TOKEN, now()).is_ok());
    // An Apple extension twice.
    spec.extra_critical = false;
    spec.extra = vec![(apple_oid(&[11, 1]), sha256(TOKEN.as_bytes()))];
    let (att, _) = ca.att_obj(&spec);
    let why = chain_err(ca.verifier().verify(&att, TOKEN, now()));
    assert!(why.contains("twice"), "{why}");
}

#[test]
fn unknown_fmt() {
    let ca = TestCa::new("");
    let leaf = ca.leaf(&LeafSpec::for_token(TOKEN));
    let att = att_obj("tpm", &[leaf.der, ca.intermediate_der.clone()]);
    assert_eq!(
        ca.verifier().verify(&att, TOKEN, now()),
        Err(AttestError::Format("tpm".into()))
    );
}

/// `{fmt: "apple", attStmt: <statement>}`.
fn with_statement(statement: Cbor) -> Vec<u8> {
    Cbor::Map(vec![
        (Cbor::text("fmt"), Cbor::text("apple")),
        (Cbor::text("attStmt"), statement),
    ])
    .encode()
}

#[test]
fn not_cbor_or_wrong_shape() {
    let ca = TestCa::new("");
    let v = ca.verifier();
    let leaf = ca.leaf(&LeafSpec::for_token(TOKEN)).der;
    let verify = |att: &[u8]| v.verify(att, TOKEN, now());

    assert!(cbor_err(verify(b"")).contains("empty"));
    assert!(cbor_err(verify(b"{\"fmt\":\"apple\"}")).contains("declared length"));
    assert!(cbor_err(verify(&[0xa1])).contains("declared 1 elements"));
    assert!(cbor_err(verify(&[0x19, 0x01])).contains("truncated"));
    assert!(cbor_err(verify(&[0x1c])).contains("reserved"));
    assert!(cbor_err(verify(&[0xff])).contains("unexpected break"));
    let top_array = Cbor::Array(vec![Cbor::text("fmt"), Cbor::text("apple")]).encode();
    assert!(cbor_err(verify(&top_array)).contains("not a map"));
    let fmt_int = Cbor::Map(vec![(Cbor::text("fmt"), Cbor::Int(1))]).encode();
    assert!(cbor_err(verify(&fmt_int)).contains("\"fmt\" is an integer, not text"));
    let no_fmt = Cbor::Map(vec![(Cbor::text("attStmt"), Cbor::Map(vec![]))]).encode();
    assert!(cbor_err(verify(&no_fmt)).contains("no \"fmt\""));
    let no_stmt = Cbor::Map(vec![(Cbor::text("fmt"), Cbor::text("apple"))]).encode();
    assert!(cbor_err(verify(&no_stmt)).contains("no \"attStmt\""));
    let stmt_bytes = with_statement(Cbor::Bytes(vec![1, 2]));
    assert!(cbor_err(verify(&stmt_bytes)).contains("\"attStmt\" is a byte string"));
    let no_x5c = with_statement(Cbor::Map(vec![(Cbor::text("sig"), Cbor::Bytes(vec![]))]));
    assert!(cbor_err(verify(&no_x5c)).contains("no \"x5c\""));
    let x5c_bytes = with_statement(Cbor::Map(vec![(
        Cbor::text("x5c"),
        Cbor::Bytes(leaf.clone()),
    )]));
    assert!(cbor_err(verify(&x5c_bytes)).contains("\"x5c\" is a byte string, not an array"));
    let x5c_text = with_statement(Cbor::Map(vec![(
        Cbor::text("x5c"),
        Cbor::Array(vec![Cbor::Bytes(leaf.clone()), Cbor::text("MIIB")]),
    )]));
    assert!(cbor_err(verify(&x5c_text)).contains("x5c[1] is a text string"));
    let x5c_empty = with_statement(Cbor::Map(vec![(Cbor::text("x5c"), Cbor::Array(vec![]))]));
    assert!(cbor_err(verify(&x5c_empty)).contains("empty"));
    let x5c_many = with_statement(Cbor::Map(vec![(
        Cbor::text("x5c"),
        Cbor::Array(vec![Cbor::Bytes(leaf.clone()); 9]),
    )]));
    assert!(cbor_err(verify(&x5c_many)).contains("at most 8"));

    // Huge declared lengths: a byte string, an array, a map, a text string (8-byte arguments).
    for major in [2u8, 3, 4, 5] {
        let mut huge = vec![0xa1, 0x63, b'f', b'm', b't', (major << 5) | 27];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        let why = cbor_err(verify(&huge));
        assert!(why.contains("declared"), "{major}: {why}");
    }
    // Deep nesting.
    let mut deep = vec![0x81; 40];
    deep.push(0x00);
    assert!(cbor_err(verify(&deep)).contains("deeper"));
    let mut deep = vec![0x9f; 40];
    deep.extend(vec![0xff; 40]);
    assert!(cbor_err(verify(&deep)).contains("deeper"));
    // Trailing bytes, duplicate keys, bad UTF-8, bad indefinite chunks.
    let mut trailing = att_obj("apple", std::slice::from_ref(&leaf));
    trailing.push(0x00);
    assert!(cbor_err(verify(&trailing)).contains("trailing"));
    let dup = Cbor::Map(vec![
        (Cbor::text("fmt"), Cbor::text("apple")),
        (Cbor::text("fmt"), Cbor::text("tpm")),
    ])
    .encode();
    assert!(cbor_err(verify(&dup)).contains("duplicate key"));
    let bad_utf8 = [0xa1, 0x63, b'f', b'm', b't', 0x62, 0xc3, 0x28];
    assert!(cbor_err(verify(&bad_utf8)).contains("UTF-8"));
    let mixed_chunks = [0xa1, 0x63, b'f', b'm', b't', 0x7f, 0x41, b'a', 0xff];
    assert!(cbor_err(verify(&mixed_chunks)).contains("chunk"));
    let unterminated = [0xa1, 0x63, b'f', b'm', b't', 0x9f, 0x01];
    assert!(cbor_err(verify(&unterminated)).contains("no break"));
    let too_big = vec![0u8; cbor::MAX_INPUT + 1];
    assert!(cbor_err(verify(&too_big)).contains("at most"));
}

#[test]
fn indefinite_lengths_and_ignored_keys_are_accepted() {
    let ca = TestCa::new("");
    let leaf = ca.leaf(&LeafSpec::for_token(TOKEN)).der;
    let (a, b) = leaf.split_at(100);
    let att = Cbor::Map(vec![
        (Cbor::text("authData"), Cbor::Bytes(vec![1; 40])),
        (Cbor::Int(7), Cbor::Raw(vec![0xf6])),
        (Cbor::text("fmt"), Cbor::text("apple")),
        (
            Cbor::text("attStmt"),
            Cbor::Map(vec![
                (Cbor::text("alg"), Cbor::Raw(vec![0x26])),
                (
                    Cbor::text("x5c"),
                    Cbor::IndefiniteArray(vec![
                        Cbor::IndefiniteBytes(vec![a.to_vec(), b.to_vec()]),
                        Cbor::Bytes(ca.intermediate_der.clone()),
                    ]),
                ),
            ]),
        ),
    ])
    .encode();
    let got = ca.verifier().verify(&att, TOKEN, now());
    assert_eq!(got.map(|a| a.leaf_sha256.to_vec()), Ok(sha256(&leaf)));
}

#[test]
fn bundled_apple_root() {
    let der = APPLE_ENTERPRISE_ATTESTATION_ROOT_CA;
    let fingerprint: String = sha256(der).iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(
        fingerprint,
        "CCF59EF8FCB3017D97F8B5FA6FA90E7A3F9283F76B55AC6CF6EDA8B8B949F05B"
    );
    let cert = chain::parse("apple", der).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cert.subject().to_string(),
        "CN=Apple Enterprise Attestation Root CA, O=Apple Inc., C=US"
    );
    assert!(cert.is_ca());
    assert_eq!(cert.validity().not_after.timestamp(), 2_434_233_600); // 2047-02-20
                                                                      // Self-signed with ECDSA P-384 / SHA-384.
    assert!(cert.verify_signature(None).is_ok());
    let v = Verifier::with_roots(vec![], true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.roots, Verifier::apple().roots);
}

#[test]
fn configured_roots() {
    assert!(matches!(
        Verifier::with_roots(vec![], false),
        Err(AttestError::Chain(why)) if why.contains("no trusted")
    ));
    assert!(matches!(
        Verifier::with_roots(vec![vec![0x30, 0x82, 0x01]], false),
        Err(AttestError::Chain(why)) if why.contains("configured root 0")
    ));
    // A test root next to Apple's: test chains verify.
    let ca = TestCa::new("");
    let v = Verifier::with_roots(vec![ca.root_der.clone()], true).unwrap_or_else(|e| panic!("{e}"));
    let (att, _) = ca.att_obj(&LeafSpec::for_token(TOKEN));
    assert!(v.verify(&att, TOKEN, now()).is_ok());
}

/// Every truncation and one bit flip at every byte of a good `attObj` is refused, never a panic.
#[test]
fn truncations_and_bit_flips_never_panic() {
    let ca = TestCa::new("");
    let v = ca.verifier();
    let (att, _) = ca.att_obj(&LeafSpec::for_token(TOKEN));
    assert!(v.verify(&att, TOKEN, now()).is_ok());
    for cut in 0..att.len() {
        assert!(v.verify(&att[..cut], TOKEN, now()).is_err(), "cut {cut}");
    }
    let mut accepted = Vec::new();
    for i in 0..2 * att.len() {
        let mut flipped = att.clone();
        // Two different bits of every byte.
        flipped[i % att.len()] ^= 1 << ((i + 4 * (i / att.len())) % 8);
        if v.verify(&flipped, TOKEN, now()).is_ok() {
            accepted.push(i % att.len());
        }
    }
    // Only flips inside the ignored "authData" entry (its key and its 37 bytes, at the end) are
    // still accepted; a flip anywhere in the certificates or the structure is refused.
    let ignored = att.len() - (1 + 8 + 2 + 37)..att.len();
    assert!(
        accepted.iter().all(|i| ignored.contains(i)),
        "accepted flips at {accepted:?} of {}",
        att.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let v = Verifier::apple();
        prop_assert!(v.verify(&bytes, TOKEN, now()).is_err());
    }

    #[test]
    fn random_edits_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in any::<usize>(),
    ) {
        thread_local! {
            static FIXTURE: (Verifier, Vec<u8>) = {
                let ca = TestCa::new("");
                let (att, _) = ca.att_obj(&LeafSpec::for_token(TOKEN));
                (ca.verifier(), att)
            };
        }
        FIXTURE.with(|(v, att)| {
            let mut att = att.clone();
            for (at, byte) in &edits {
                let at = at % att.len();
                att[at] = *byte;
            }
            att.truncate(att.len() - cut % 4);
            let _ = v.verify(&att, TOKEN, now());
        });
    }
}
