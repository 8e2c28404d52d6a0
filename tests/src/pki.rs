//! A lab PKI made when a test starts: one CA and end-entity certificates (ECDSA P-256 or
//! P-384, or RSA) for IKE certificate authentication, written as PEM files both attestgate and
//! strongSwan read. Kept in a temporary folder that goes away with the [`LabPki`].

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose, SignatureAlgorithm,
};
use std::path::PathBuf;

pub use rcgen::{PKCS_ECDSA_P256_SHA256 as P256, PKCS_ECDSA_P384_SHA384 as P384};

/// A certificate and its key (PKCS#8), as files.
#[derive(Debug, Clone)]
pub struct LabCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The lab CA and where its files live.
pub struct LabPki {
    pub dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    alg: &'static SignatureAlgorithm,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// For an intermediate CA: its certificate, appended to every certificate it issues.
    chain: Option<String>,
}

impl std::fmt::Debug for LabPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LabPki({})", self.ca.display())
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "attestgate lab");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2060, 1, 1);
    params
}

impl LabPki {
    /// A CA named `cn` whose keys (and those it issues) use `alg`.
    pub fn new(cn: &str, alg: &'static SignatureAlgorithm) -> LabPki {
        let key = KeyPair::generate_for(alg).unwrap();
        let issuer = CertifiedIssuer::self_signed(ca_params(cn), key).unwrap();
        LabPki::with_issuer(issuer, alg, None)
    }

    /// An intermediate CA under this one; what it issues carries its certificate along
    /// (`certificate.pem` with the chain after the end-entity, as usually deployed).
    pub fn intermediate(&self, cn: &str) -> LabPki {
        let key = KeyPair::generate_for(self.alg).unwrap();
        let issuer = CertifiedIssuer::signed_by(ca_params(cn), key, &self.issuer).unwrap();
        let pem = issuer.pem();
        LabPki::with_issuer(issuer, self.alg, Some(pem))
    }

    fn with_issuer(
        issuer: CertifiedIssuer<'static, KeyPair>,
        alg: &'static SignatureAlgorithm,
        chain: Option<String>,
    ) -> LabPki {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, issuer.pem()).unwrap();
        LabPki {
            dir,
            ca,
            alg,
            issuer,
            chain,
        }
    }

    /// An end-entity certificate for `id` (an FQDN or IP, put in subjectAltName and the CN).
    pub fn issue(&self, id: &str) -> LabCert {
        let key = KeyPair::generate_for(self.alg).unwrap();
        let pem = key.serialize_pem();
        self.issue_for(id, &key, &pem)
    }

    /// The same with an RSA-2048 key, which `openssl genpkey` makes (ring cannot).
    pub fn issue_rsa(&self, id: &str) -> LabCert {
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .stderr(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl genpkey failed");
        let pem = String::from_utf8(out.stdout).unwrap();
        let key = KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).unwrap();
        self.issue_for(id, &key, &pem)
    }

    /// A device's client certificate: `serial` as the subject CN (what the relay's
    /// `subject-cn` identity reads) and in subjectAltName, extended key usage clientAuth.
    pub fn issue_client(&self, serial: &str) -> LabCert {
        let key = KeyPair::generate_for(self.alg).unwrap();
        let pem = key.serialize_pem();
        self.issue_with(serial, &key, &pem, true)
    }

    fn issue_for(&self, id: &str, key: &KeyPair, key_pem: &str) -> LabCert {
        self.issue_with(id, key, key_pem, false)
    }

    fn issue_with(&self, id: &str, key: &KeyPair, key_pem: &str, client: bool) -> LabCert {
        let mut params = CertificateParams::new(vec![id.to_string()]).unwrap();
        params.distinguished_name = name(id);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if client {
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2060, 1, 1);
        let cert = params.signed_by(key, &self.issuer).unwrap();
        let out = LabCert {
            cert: self.dir.path().join(format!("{id}.pem")),
            key: self.dir.path().join(format!("{id}.key")),
        };
        let chain = self.chain.as_deref().unwrap_or_default();
        std::fs::write(&out.cert, cert.pem() + chain).unwrap();
        std::fs::write(&out.key, key_pem).unwrap();
        // a private key only its owner reads, as attestgate's configuration check demands
        let owner_only = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&out.key, owner_only).unwrap();
        out
    }
}
