//! The device CA: issues the short-lived device certificates the ACME server hands out, and
//! keeps their revocation list.
//!
//! The CA certificate and its EC P-256 key are generated into the state directory on first
//! start (`device-ca.pem`, `device-ca-key.pem`, mode 0600), or imported from a given
//! certificate chain and key (an intermediate under the company's own PKI). The relay trusts
//! the CA certificate as a device CA.
//!
//! A device certificate (RFC 5280 profile) carries:
//! - subject CN = the device identifier (its serial);
//! - subjectAltName with one otherName PermanentIdentifier (RFC 4043 §2: type-id
//!   1.3.6.1.5.5.7.8.3, `PermanentIdentifier ::= SEQUENCE { identifierValue UTF8String
//!   OPTIONAL, assigner OBJECT IDENTIFIER OPTIONAL }`), built here as DER because rcgen's
//!   otherName only writes a bare UTF8String;
//! - the attested Apple extensions (1.2.840.113635.100.8.*), non-critical, except the
//!   freshness code 8.11.1, which only proved this one challenge;
//! - keyUsage digitalSignature (critical), extendedKeyUsage clientAuth, authority and subject
//!   key identifiers; validity `now − 5 min … now + validity` (default 14 days).
//!
//! State: `device-ca-issued.json` lists every unexpired certificate (serial, device,
//! notAfter, revocation) and is rewritten atomically (write, fsync, rename) on each change.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber,
    SignatureAlgorithm,
};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::FromDer;

/// Default lifetime of a device certificate (the device's ACME client renews it).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// Lifetime of a generated CA certificate.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Backdating of issued certificates against clock skew.
const BACKDATE: Duration = Duration::from_secs(300);
/// Apple's freshness code, not copied into device certificates.
const OID_APPLE_FRESHNESS: &str = "1.2.840.113635.100.8.11.1";
/// Apple Managed Device Attestation extensions live under this arc.
const APPLE_ARC: &str = "1.2.840.113635.100.8.";
/// id-on-permanentIdentifier (RFC 4043 §2).
const OID_PERMANENT_IDENTIFIER: [u64; 9] = [1, 3, 6, 1, 5, 5, 7, 8, 3];
/// id-ce-subjectAltName (RFC 5280 §4.2.1.6).
const OID_SUBJECT_ALT_NAME: [u64; 4] = [2, 5, 29, 17];
/// The longest identifier accepted in a certificate (as the relay reads them).
const MAX_IDENTIFIER_LEN: usize = 128;

/// File names in the state directory.
pub const CA_CERT_FILE: &str = "device-ca.pem";
pub const CA_KEY_FILE: &str = "device-ca-key.pem";
pub const ISSUED_FILE: &str = "device-ca-issued.json";

/// Why the CA could not start or act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("imported CA: {0}")]
    Import(String),
    #[error("device certificate request: {0}")]
    Request(String),
    #[error("signing: {0}")]
    Signing(String),
    #[error("no certificate with serial {0}")]
    UnknownCertificate(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> CaError {
    CaError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync,
/// rename over the target, fsync of the directory. `mode` for a new file (0600 for keys).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Where an imported CA comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaImport {
    /// PEM: the issuing CA certificate first, then (optionally) its own issuers, which are
    /// appended to every issued chain.
    pub certificate_chain: PathBuf,
    /// PEM: the issuing CA's private key (PKCS#8, or SEC 1 for EC keys).
    pub private_key: PathBuf,
}

/// How the CA runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaOptions {
    /// Lifetime of device certificates.
    pub validity: Duration,
    /// `None`: generate (first start) or reuse the generated CA in the state directory.
    pub import: Option<CaImport>,
    /// Common name of a generated CA certificate.
    pub common_name: String,
}

impl Default for CaOptions {
    fn default() -> Self {
        CaOptions {
            validity: DEFAULT_VALIDITY,
            import: None,
            common_name: "attestgate device CA".to_string(),
        }
    }
}

/// One issued certificate, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// The certificate's serial number, lower-case hex of its DER INTEGER content.
    pub serial: String,
    /// The device identifier it was issued for.
    pub device: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub not_after: i64,
    /// Unix seconds of the revocation, if revoked.
    #[serde(default)]
    pub revoked_at: Option<i64>,
    #[serde(default)]
    pub revocation_reason: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    version: u32,
    /// serial (hex) → record
    certificates: BTreeMap<String, IssuedRecord>,
    /// Incremented for every CRL (RFC 5280 §5.2.3).
    #[serde(default)]
    crl_number: u64,
}

/// What the CA needs to issue one device certificate.
#[derive(Debug, Clone, Copy)]
pub struct DeviceCertRequest<'a> {
    /// The device identifier (serial): subject CN and PermanentIdentifier.
    pub identifier: &'a str,
    /// The device key: a DER SubjectPublicKeyInfo, EC P-256 or P-384.
    pub public_key_spki: &'a [u8],
    /// Attested extensions (dotted OID, value octets); only the Apple arc is copied.
    pub apple_extensions: &'a [(String, Vec<u8>)],
}

/// An issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    pub der: Vec<u8>,
    /// The certificate and the CA chain, PEM (RFC 8555 §7.4.2 `application/pem-certificate-chain`).
    pub chain_pem: String,
    /// Lower-case hex.
    pub serial: String,
    pub not_after: SystemTime,
}

/// A public key from a SubjectPublicKeyInfo, as rcgen signs over it.
struct DeviceKey {
    point: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for DeviceKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// id-ecPublicKey (RFC 5480 §2.1.1) and its named curves.
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// The curve of an EC SubjectPublicKeyInfo: `Some("P-256")`, `Some("P-384")`, or why not.
pub fn ec_curve(spki_der: &[u8]) -> Result<&'static str, String> {
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| format!("the public key does not parse: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the public key".into());
    }
    let alg = spki.algorithm.algorithm.to_id_string();
    if alg != OID_EC_PUBLIC_KEY {
        return Err(format!(
            "the key is not an EC key (algorithm {alg}); only EC P-256 and P-384 are accepted"
        ));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string())
        .unwrap_or_default();
    let (name, len) = match curve.as_str() {
        OID_P256 => ("P-256", 65),
        OID_P384 => ("P-384", 97),
        other => {
            return Err(format!(
                "EC curve {other:?} is not accepted (P-256 or P-384)"
            ))
        }
    };
    let point = spki.subject_public_key.data.as_ref();
    if point.len() != len || point.first() != Some(&4) {
        return Err(format!("the {name} key is not an uncompressed point"));
    }
    Ok(name)
}

fn device_key(spki_der: &[u8]) -> Result<DeviceKey, CaError> {
    let curve = ec_curve(spki_der).map_err(CaError::Request)?;
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki_der)
        .map_err(|e| CaError::Request(e.to_string()))?;
    Ok(DeviceKey {
        point: spki.subject_public_key.data.to_vec(),
        alg: if curve == "P-384" {
            &rcgen::PKCS_ECDSA_P384_SHA384
        } else {
            &rcgen::PKCS_ECDSA_P256_SHA256
        },
    })
}

/// The subjectAltName extension value: `GeneralNames` with one otherName PermanentIdentifier
/// (RFC 5280 §4.2.1.6, RFC 4043 §2). DER through yasna.
pub fn permanent_identifier_san(identifier: &str) -> Vec<u8> {
    use yasna::models::ObjectIdentifier;
    use yasna::Tag;
    yasna::construct_der(|w| {
        w.write_sequence(|w| {
            // otherName [0] IMPLICIT OtherName (a SEQUENCE: the tag stays constructed)
            w.next().write_tagged_implicit(Tag::context(0), |w| {
                w.write_sequence(|w| {
                    w.next()
                        .write_oid(&ObjectIdentifier::from_slice(&OID_PERMANENT_IDENTIFIER));
                    // value [0] EXPLICIT ANY DEFINED BY type-id
                    w.next().write_tagged(Tag::context(0), |w| {
                        w.write_sequence(|w| {
                            // identifierValue UTF8String; no assigner
                            w.next().write_utf8_string(identifier);
                        })
                    })
                })
            })
        })
    })
}

fn parse_oid(dotted: &str) -> Option<Vec<u64>> {
    let arcs = dotted
        .split('.')
        .map(|a| a.parse::<u64>().ok())
        .collect::<Option<Vec<_>>>()?;
    (arcs.len() >= 2).then_some(arcs)
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn offset_time(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix(t))
        .map_err(|e| CaError::Signing(format!("time out of range: {e}")))
}

/// Normalises a certificate serial: lower-case hex without leading zero bytes.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].iter().map(|b| format!("{b:02x}")).collect()
}

/// A serial number as an operator types it (hex, colons or `0x` allowed) in the form the
/// registry keys it ([`serial_hex`]); `None` when it is not hex.
pub fn normalize_serial(text: &str) -> Option<String> {
    from_hex(text).map(|raw| serial_hex(&raw))
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_start_matches("0x").replace(':', "");
    if text.is_empty() || !text.len().is_multiple_of(2) || text.len() > 40 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The device CA.
pub struct DeviceCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate first, then any issuers of an imported one (DER).
    chain: Vec<Vec<u8>>,
    validity: Duration,
    registry_path: PathBuf,
    registry: Mutex<Registry>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for DeviceCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCa")
            .field("validity", &self.validity)
            .field("registry_path", &self.registry_path)
            .finish_non_exhaustive()
    }
}

fn pem_certificates(text: &str, path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = pem_blocks(text);
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|(label, _)| label == "CERTIFICATE")
        .map(|(_, der)| der)
        .collect();
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// PEM blocks (RFC 7468): label and decoded content; malformed blocks are skipped.
fn pem_blocks(text: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    let mut out = Vec::new();
    let mut label: Option<String> = None;
    let mut body = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(l) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            label = Some(l.to_string());
            body.clear();
        } else if let Some(l) = line
            .strip_prefix("-----END ")
            .and_then(|l| l.strip_suffix("-----"))
        {
            if label.as_deref() == Some(l) {
                if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(&body) {
                    out.push((l.to_string(), der));
                }
            }
            label = None;
        } else if label.is_some() {
            body.push_str(line);
        }
    }
    out
}

/// PEM of one certificate (RFC 7468 §5).
pub fn certificate_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

impl DeviceCa {
    /// Opens the CA in `state_dir`: generates it on first start, reuses it after, or imports
    /// the one `options.import` names (checking that the key belongs to the certificate).
    pub fn open(state_dir: &Path, options: CaOptions) -> Result<DeviceCa, CaError> {
        let (issuer, chain) = match &options.import {
            Some(import) => Self::import(import)?,
            None => Self::generated(state_dir, &options.common_name)?,
        };
        let registry_path = state_dir.join(ISSUED_FILE);
        let registry = match std::fs::read(&registry_path) {
            Ok(bytes) => serde_json::from_slice::<Registry>(&bytes)
                .map_err(|e| file_error(&registry_path, format!("does not parse: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Registry {
                version: 1,
                ..Registry::default()
            },
            Err(e) => return Err(file_error(&registry_path, e)),
        };
        Ok(DeviceCa {
            issuer,
            chain,
            validity: options.validity,
            registry_path,
            registry: Mutex::new(registry),
            rng: ring::rand::SystemRandom::new(),
        })
    }

    fn import(import: &CaImport) -> Result<(Issuer<'static, KeyPair>, Vec<Vec<u8>>), CaError> {
        let cert_text = std::fs::read_to_string(&import.certificate_chain)
            .map_err(|e| file_error(&import.certificate_chain, e))?;
        let chain = pem_certificates(&cert_text, &import.certificate_chain)?;
        let key_text = std::fs::read_to_string(&import.private_key)
            .map_err(|e| file_error(&import.private_key, e))?;
        let key = KeyPair::from_pem(&key_text)
            .map_err(|e| file_error(&import.private_key, format!("not a usable key: {e}")))?;
        let first = chain.first().cloned().unwrap_or_default();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&first)
            .map_err(|e| CaError::Import(format!("the CA certificate does not parse: {e}")))?;
        if cert.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(CaError::Import(
                "the private key does not belong to the first certificate".into(),
            ));
        }
        if !cert.is_ca() {
            return Err(CaError::Import(
                "the first certificate is not a CA (basicConstraints cA)".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&first.clone().into(), key)
            .map_err(|e| CaError::Import(e.to_string()))?;
        Ok((issuer, chain))
    }

    fn generated(
        state_dir: &Path,
        common_name: &str,
    ) -> Result<(Issuer<'static, KeyPair>, Vec<Vec<u8>>), CaError> {
        let cert_path = state_dir.join(CA_CERT_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        if cert_path.exists() || key_path.exists() {
            return Self::import(&CaImport {
                certificate_chain: cert_path,
                private_key: key_path,
            });
        }
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "attestgate");
        params.distinguished_name = dn;
        // pathLenConstraint 0: it issues end-entity certificates only (RFC 5280 §4.2.1.9)
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = offset_time(now.checked_sub(BACKDATE).unwrap_or(now))?;
        params.not_after = offset_time(now + CA_VALIDITY)?;
        params.serial_number = Some(SerialNumber::from_slice(&random_serial(
            &ring::rand::SystemRandom::new(),
        )?));
        params.key_identifier_method = KeyIdMethod::Sha256;
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        // key first: a certificate without its key would make the next start refuse
        write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(|e| file_error(&key_path, e))?;
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)
            .map_err(|e| file_error(&cert_path, e))?;
        let der = cert.der().to_vec();
        Ok((Issuer::new(params, key), vec![der]))
    }

    /// The CA certificate (DER): what the relay trusts for device certificates.
    pub fn certificate_der(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The CA certificate (PEM).
    pub fn certificate_pem(&self) -> String {
        certificate_pem(self.certificate_der())
    }

    /// Device certificate lifetime.
    pub fn validity(&self) -> Duration {
        self.validity
    }

    /// Issues a device certificate and records it.
    pub fn issue(
        &self,
        request: &DeviceCertRequest<'_>,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        let identifier = request.identifier;
        if identifier.is_empty()
            || identifier.len() > MAX_IDENTIFIER_LEN
            || identifier.chars().any(char::is_control)
        {
            return Err(CaError::Request(format!(
                "identifier must be 1..={MAX_IDENTIFIER_LEN} bytes without control characters"
            )));
        }
        let key = device_key(request.public_key_spki)?;
        let serial = random_serial(&self.rng)?;
        let not_after = now + self.validity;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identifier);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = offset_time(now.checked_sub(BACKDATE).unwrap_or(now))?;
        params.not_after = offset_time(not_after)?;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.use_authority_key_identifier_extension = true;
        let mut san = CustomExtension::from_oid_content(
            &OID_SUBJECT_ALT_NAME,
            permanent_identifier_san(identifier),
        );
        // a subject is present, so the SAN is not critical (RFC 5280 §4.2.1.6)
        san.set_criticality(false);
        params.custom_extensions.push(san);
        for (oid, value) in request.apple_extensions {
            if !oid.starts_with(APPLE_ARC) || oid == OID_APPLE_FRESHNESS {
                continue;
            }
            let Some(arcs) = parse_oid(oid) else {
                continue;
            };
            let mut ext = CustomExtension::from_oid_content(&arcs, value.clone());
            ext.set_criticality(false);
            params.custom_extensions.push(ext);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        let der = cert.der().to_vec();
        // the certificate must carry exactly the requested key
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(&der)
            .map_err(|e| CaError::Signing(format!("the issued certificate does not parse: {e}")))?;
        if parsed.public_key().raw != request.public_key_spki {
            return Err(CaError::Request(
                "the public key is not in its DER form (re-encoding changed it)".into(),
            ));
        }
        let serial_text = serial_hex(&serial);
        let record = IssuedRecord {
            serial: serial_text.clone(),
            device: identifier.to_string(),
            issued_at: unix(now),
            not_after: unix(not_after),
            revoked_at: None,
            revocation_reason: None,
        };
        self.update(|r| {
            let cutoff = unix(now);
            r.certificates.retain(|_, c| c.not_after >= cutoff);
            r.certificates.insert(serial_text.clone(), record);
        })?;
        let mut chain_pem = certificate_pem(&der);
        for ca in &self.chain {
            chain_pem.push_str(&certificate_pem(ca));
        }
        Ok(IssuedCert {
            der,
            chain_pem,
            serial: serial_text,
            not_after,
        })
    }

    fn update<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> Result<T, CaError> {
        let mut registry = self
            .registry
            .lock()
            .map_err(|_| CaError::Signing("registry lock poisoned".into()))?;
        let out = f(&mut registry);
        let json = serde_json::to_vec_pretty(&*registry)
            .map_err(|e| file_error(&self.registry_path, e))?;
        write_atomic(&self.registry_path, &json, 0o644)
            .map_err(|e| file_error(&self.registry_path, e))?;
        Ok(out)
    }

    /// Revokes every unexpired certificate issued to `device`; returns their serials (hex),
    /// empty when it had none not already revoked.
    pub fn revoke_device(
        &self,
        device: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<Vec<String>, CaError> {
        self.update(|r| {
            let mut revoked = Vec::new();
            for c in r.certificates.values_mut() {
                if c.device.eq_ignore_ascii_case(device) && c.revoked_at.is_none() {
                    c.revoked_at = Some(unix(now));
                    c.revocation_reason = Some(reason.to_string());
                    revoked.push(c.serial.clone());
                }
            }
            revoked
        })
    }

    /// Revokes one certificate by its serial (hex, colons allowed). `Ok(false)` when it was
    /// already revoked.
    pub fn revoke_certificate(
        &self,
        serial: &str,
        reason: &str,
        now: SystemTime,
    ) -> Result<bool, CaError> {
        let raw = from_hex(serial).ok_or_else(|| CaError::UnknownCertificate(serial.into()))?;
        let key = serial_hex(&raw);
        let found = self.update(|r| match r.certificates.get_mut(&key) {
            None => None,
            Some(c) if c.revoked_at.is_some() => Some(false),
            Some(c) => {
                c.revoked_at = Some(unix(now));
                c.revocation_reason = Some(reason.to_string());
                Some(true)
            }
        })?;
        found.ok_or(CaError::UnknownCertificate(key))
    }

    /// True when the certificate with this serial (the DER INTEGER's content octets, as
    /// x509-parser's `raw_serial` gives them) was revoked. Unknown serials are not revoked
    /// here: the TLS verifier's chain check is what refuses foreign certificates.
    pub fn is_revoked(&self, cert_serial: &[u8]) -> bool {
        let key = serial_hex(cert_serial);
        match self.registry.lock() {
            Ok(r) => r
                .certificates
                .get(&key)
                .is_some_and(|c| c.revoked_at.is_some()),
            // fail closed (DESIGN.md invariant 1)
            Err(_) => true,
        }
    }

    /// Every recorded (unexpired when last pruned) certificate.
    pub fn issued(&self) -> Vec<IssuedRecord> {
        self.registry
            .lock()
            .map(|r| r.certificates.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A CRL (RFC 5280 §5) of the revoked, unexpired certificates, valid until
    /// `now + next_update`, DER. Each call takes the next CRL number.
    pub fn crl_der(&self, now: SystemTime, next_update: Duration) -> Result<Vec<u8>, CaError> {
        let (revoked, number) = self.update(|r| {
            r.crl_number += 1;
            let cutoff = unix(now);
            let revoked: Vec<(String, i64)> = r
                .certificates
                .values()
                .filter(|c| c.not_after >= cutoff)
                .filter_map(|c| c.revoked_at.map(|t| (c.serial.clone(), t)))
                .collect();
            (revoked, r.crl_number)
        })?;
        let mut revoked_certs = Vec::new();
        for (serial, at) in revoked {
            let raw = from_hex(&serial).unwrap_or_default();
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&raw),
                revocation_time: time::OffsetDateTime::from_unix_timestamp(at)
                    .map_err(|e| CaError::Signing(e.to_string()))?,
                reason_code: Some(RevocationReason::CessationOfOperation),
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: offset_time(now)?,
            next_update: offset_time(now + next_update)?,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Signing(e.to_string()))?;
        Ok(crl.der().to_vec())
    }
}

/// 16 random bytes, positive and without a leading zero byte, so the DER INTEGER content is
/// exactly these bytes (RFC 5280 §4.1.2.2: positive, at most 20 octets).
fn random_serial(rng: &ring::rand::SystemRandom) -> Result<[u8; 16], CaError> {
    let mut serial = [0u8; 16];
    rng.fill(&mut serial)
        .map_err(|_| CaError::Signing("no randomness".into()))?;
    serial[0] = (serial[0] & 0x7f) | 0x01;
    Ok(serial)
}

#[cfg(test)]
mod tests;
