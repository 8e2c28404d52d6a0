use super::*;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

fn device_spki() -> Vec<u8> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .subject_public_key_info()
}

fn apple_extensions() -> Vec<(String, Vec<u8>)> {
    vec![
        ("1.2.840.113635.100.8.9.1".into(), b"C02XK1ABJGH5".to_vec()),
        (
            "1.2.840.113635.100.8.9.2".into(),
            b"00008030-000A1B2C3D4E5F60".to_vec(),
        ),
        ("1.2.840.113635.100.8.10.1".into(), b"14.4".to_vec()),
        ("1.2.840.113635.100.8.11.1".into(), vec![7; 32]),
        // outside the Apple arc: not copied
        ("2.5.29.99".into(), vec![5, 0]),
    ]
}

#[test]
fn generated_ca_persists_and_issues_device_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DeviceCa::open(dir.path(), CaOptions::default()).unwrap();
    let ca_der = ca.certificate_der().to_vec();
    // the key file is private
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // a second start reuses it
    let again = DeviceCa::open(dir.path(), CaOptions::default()).unwrap();
    assert_eq!(again.certificate_der(), ca_der.as_slice());
    assert!(again
        .certificate_pem()
        .starts_with("-----BEGIN CERTIFICATE-----\n"));

    let spki = device_spki();
    let now = SystemTime::now();
    let exts = apple_extensions();
    let issued = ca
        .issue(
            &DeviceCertRequest {
                identifier: "C02XK1ABJGH5",
                public_key_spki: &spki,
                apple_extensions: &exts,
            },
            now,
        )
        .unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
    let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca_cert.is_ca());
    cert.verify_signature(Some(ca_cert.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca_cert.subject());
    assert_eq!(cert.public_key().raw, spki.as_slice());
    assert_eq!(serial_hex(cert.raw_serial()), issued.serial);
    // 14 days, backdated 5 minutes
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(lifetime, 14 * 24 * 3600 + 300);
    let cn: Vec<_> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cn, ["C02XK1ABJGH5"]);
    // keyUsage digitalSignature only, EKU clientAuth, not a CA
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());
    // the SAN: one otherName with the PermanentIdentifier OID
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert!(!san.critical);
    match san.value.general_names.as_slice() {
        [GeneralName::OtherName(oid, _)] => assert_eq!(oid.to_id_string(), "1.3.6.1.5.5.7.8.3"),
        other => panic!("SAN {other:?}"),
    }
    // the Apple extensions, non-critical, without the freshness code or foreign OIDs
    let oids: Vec<String> = cert
        .extensions()
        .iter()
        .map(|e| e.oid.to_id_string())
        .collect();
    for oid in [
        "1.2.840.113635.100.8.9.1",
        "1.2.840.113635.100.8.9.2",
        "1.2.840.113635.100.8.10.1",
    ] {
        assert!(oids.contains(&oid.to_string()), "{oid} in {oids:?}");
    }
    assert!(!oids.contains(&"1.2.840.113635.100.8.11.1".to_string()));
    assert!(!oids.contains(&"2.5.29.99".to_string()));
    assert!(cert
        .extensions()
        .iter()
        .filter(|e| e.oid.to_id_string().starts_with(APPLE_ARC))
        .all(|e| !e.critical));
    assert!(cert.extensions().iter().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::AuthorityKeyIdentifier(_)
    )));
    // the chain: leaf then CA
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);

    // the relay's identity reader: PermanentIdentifier first, Apple serial OID second, UDID
    // and OS version read from the copied extensions
    use relay::IdentitySource;
    let id = relay::identity::device_identity(&issued.der, &[IdentitySource::PermanentIdentifier])
        .unwrap();
    assert_eq!(id.serial, "C02XK1ABJGH5");
    assert_eq!(id.source, IdentitySource::PermanentIdentifier);
    assert_eq!(id.udid.as_deref(), Some("00008030-000A1B2C3D4E5F60"));
    assert_eq!(id.os_version.as_deref(), Some("14.4"));
    let id =
        relay::identity::device_identity(&issued.der, &[IdentitySource::AppleSerialOid]).unwrap();
    assert_eq!(id.serial, "C02XK1ABJGH5");
}

#[test]
fn permanent_identifier_der_matches_rfc4043() {
    // GeneralNames SEQUENCE { [0] { OID 1.3.6.1.5.5.7.8.3, [0] { SEQUENCE { UTF8String "AB" } } } }
    let der = permanent_identifier_san("AB");
    assert_eq!(
        der,
        [
            0x30, 0x14, 0xa0, 0x12, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x08, 0x03,
            0xa0, 0x06, 0x30, 0x04, 0x0c, 0x02, b'A', b'B'
        ]
    );
}

#[test]
fn revocation_by_device_and_serial_persists_and_reaches_the_crl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DeviceCa::open(dir.path(), CaOptions::default()).unwrap();
    let now = SystemTime::now();
    let issue = |id: &str| {
        let spki = device_spki();
        ca.issue(
            &DeviceCertRequest {
                identifier: id,
                public_key_spki: &spki,
                apple_extensions: &[],
            },
            now,
        )
        .unwrap()
    };
    let a1 = issue("SERIALA");
    let a2 = issue("SERIALA");
    let b = issue("SERIALB");
    let raw = |c: &IssuedCert| {
        let (_, x) = X509Certificate::from_der(&c.der).unwrap();
        x.raw_serial().to_vec()
    };
    assert!(!ca.is_revoked(&raw(&a1)));
    let revoked = ca.revoke_device("seriala", "lost", now).unwrap();
    assert_eq!(revoked.len(), 2);
    assert!(ca.is_revoked(&raw(&a1)) && ca.is_revoked(&raw(&a2)));
    assert!(!ca.is_revoked(&raw(&b)));
    assert!(ca
        .revoke_device("SERIALA", "again", now)
        .unwrap()
        .is_empty());
    // by serial, with colons as tools print them
    let colons: Vec<String> = raw(&b).iter().map(|x| format!("{x:02X}")).collect();
    assert!(ca
        .revoke_certificate(&colons.join(":"), "key compromise", now)
        .unwrap());
    assert!(!ca.revoke_certificate(&b.serial, "again", now).unwrap());
    assert!(matches!(
        ca.revoke_certificate("abcd", "x", now),
        Err(CaError::UnknownCertificate(_))
    ));
    assert!(ca.is_revoked(&raw(&b)));
    // leading zero octets do not change the answer
    let mut padded = vec![0];
    padded.extend(raw(&b));
    assert!(ca.is_revoked(&padded));

    // a restart keeps the list
    let reopened = DeviceCa::open(dir.path(), CaOptions::default()).unwrap();
    assert!(reopened.is_revoked(&raw(&a1)) && reopened.is_revoked(&raw(&b)));
    let rec = reopened
        .issued()
        .into_iter()
        .find(|r| r.serial == a1.serial)
        .unwrap();
    assert_eq!(rec.revocation_reason.as_deref(), Some("lost"));

    // the CRL lists the three, signed by the CA
    let crl = reopened.crl_der(now, Duration::from_secs(3600)).unwrap();
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).unwrap();
    let listed: Vec<String> = parsed
        .iter_revoked_certificates()
        .map(|r| serial_hex(r.raw_serial()))
        .collect();
    assert_eq!(listed.len(), 3);
    for c in [&a1, &a2, &b] {
        assert!(listed.contains(&c.serial));
    }
    let (_, ca_cert) = X509Certificate::from_der(reopened.certificate_der()).unwrap();
    parsed.verify_signature(ca_cert.public_key()).unwrap();
}

#[test]
fn imported_ca_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    // a company root and an intermediate under it
    let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut root_params = CertificateParams::default();
    root_params.distinguished_name = DistinguishedName::new();
    root_params
        .distinguished_name
        .push(DnType::CommonName, "Corp Root");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let int_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let mut int_params = CertificateParams::default();
    int_params.distinguished_name = DistinguishedName::new();
    int_params
        .distinguished_name
        .push(DnType::CommonName, "Corp Device CA");
    int_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    int_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let int = int_params.signed_by(&int_key, &root_issuer).unwrap();
    let chain = dir.path().join("chain.pem");
    std::fs::write(&chain, format!("{}{}", int.pem(), root.pem())).unwrap();
    let key = dir.path().join("key.pem");
    std::fs::write(&key, int_key.serialize_pem()).unwrap();
    let options = CaOptions {
        import: Some(CaImport {
            certificate_chain: chain.clone(),
            private_key: key.clone(),
        }),
        validity: Duration::from_secs(3600),
        ..CaOptions::default()
    };
    let ca = DeviceCa::open(dir.path(), options.clone()).unwrap();
    assert!(!dir.path().join(CA_CERT_FILE).exists(), "nothing generated");
    let spki = device_spki();
    let issued = ca
        .issue(
            &DeviceCertRequest {
                identifier: "C02IMPORT001",
                public_key_spki: &spki,
                apple_extensions: &[],
            },
            SystemTime::now(),
        )
        .unwrap();
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 3);
    let (_, leaf) = X509Certificate::from_der(&issued.der).unwrap();
    let (_, int_cert) = X509Certificate::from_der(int.der()).unwrap();
    leaf.verify_signature(Some(int_cert.public_key())).unwrap();
    assert_eq!(leaf.issuer(), int_cert.subject());
    let v = leaf.validity();
    assert_eq!(
        v.not_after.timestamp() - v.not_before.timestamp(),
        3600 + 300
    );

    // a key that is not the certificate's
    std::fs::write(&key, root_issuer.key().serialize_pem()).unwrap();
    let err = DeviceCa::open(dir.path(), options.clone()).unwrap_err();
    assert!(err.to_string().contains("does not belong"), "{err}");
    // a chain file without certificates
    std::fs::write(&chain, "nothing here").unwrap();
    let err = DeviceCa::open(dir.path(), options).unwrap_err();
    assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
}

#[test]
fn only_ec_p256_p384_device_keys_and_sane_identifiers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = DeviceCa::open(dir.path(), CaOptions::default()).unwrap();
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519)
        .unwrap()
        .subject_public_key_info();
    let req = |id: &'static str, spki: &'static [u8]| DeviceCertRequest {
        identifier: id,
        public_key_spki: spki,
        apple_extensions: &[],
    };
    let ed: &'static [u8] = Box::leak(ed.into_boxed_slice());
    assert!(matches!(
        ca.issue(&req("X", ed), SystemTime::now()),
        Err(CaError::Request(_))
    ));
    assert!(ec_curve(ed).unwrap_err().contains("not an EC key"));
    let good: &'static [u8] = Box::leak(device_spki().into_boxed_slice());
    assert_eq!(ec_curve(good).unwrap(), "P-256");
    assert!(ca.issue(&req("", good), SystemTime::now()).is_err());
    assert!(ca.issue(&req("a\nb", good), SystemTime::now()).is_err());
    assert!(ec_curve(b"\x30\x00").is_err());
    assert!(ca.issued().is_empty());
}

#[test]
fn operator_serials_normalize_to_the_registry_form() {
    assert_eq!(
        super::normalize_serial(" 0x00:1A:2b ").as_deref(),
        Some("1a2b")
    );
    assert_eq!(super::normalize_serial("1a2").as_deref(), None);
    assert_eq!(super::normalize_serial("zz").as_deref(), None);
}
