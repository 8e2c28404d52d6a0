//! TLS for the relay's listeners: the server certificate, and mutual TLS over the device CA
//! bundles with optional CRLs.
//!
//! The crypto provider is rustls's `ring` provider, passed explicitly to every builder (never
//! a process-wide default). The client verifier is rustls's `WebPkiClientVerifier`: client
//! authentication is mandatory, so a device without a certificate, with one from another CA,
//! expired or revoked fails the handshake (RFC 8446 §4.4.2.4). 0-RTT is off
//! (`max_early_data_size = 0`): early data is replayable (RFC 8446 §8) and a CONNECT must be
//! decided on a verified identity.
//!
//! When CRL files are configured they are checked for the end-entity certificate only, and a
//! device certificate whose issuer has no CRL among them is refused (fail closed: give every
//! device CA a CRL, or none).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::FromDer;

/// ALPN for HTTP/3 (RFC 9114 §3.1).
pub const ALPN_H3: &[u8] = b"h3";
/// ALPN for HTTP/2 over TLS (RFC 9113 §3.2).
pub const ALPN_H2: &[u8] = b"h2";

/// The files TLS is built from (the `[relay]` keys of the configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The relay's certificate chain, PEM, leaf first.
    pub certificate: PathBuf,
    /// The relay's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
    /// CA bundles (PEM) that issue device certificates.
    pub device_ca: Vec<PathBuf>,
    /// CRL files, PEM or DER.
    pub crl: Vec<PathBuf>,
}

/// What is wrong with a TLS file, named so an operator can fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{}: not valid PEM ({what}): {detail}", path.display())]
    Pem {
        path: PathBuf,
        what: &'static str,
        detail: String,
    },
    #[error("{}: contains no {what}", path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("{}: certificate #{index} cannot serve as a device CA: {detail}", path.display())]
    BadCa {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("{}: not a valid CRL: {detail}", path.display())]
    BadCrl { path: PathBuf, detail: String },
    #[error("no device CA bundle configured: mutual TLS needs at least one")]
    NoDeviceCa,
    #[error("building the device certificate verifier: {0}")]
    Verifier(String),
    #[error("{} with {}: {detail}", certificate.display(), private_key.display())]
    ServerCertificate {
        certificate: PathBuf,
        private_key: PathBuf,
        detail: String,
    },
}

/// Loaded and checked TLS material, ready to build server configurations.
#[derive(Clone)]
pub struct TlsMaterial {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for TlsMaterial {
    // Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("files", &self.files)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn read_certificates(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            path: path.to_path_buf(),
            what: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            path: path.to_path_buf(),
            what: "PRIVATE KEY block (PKCS#8, RSA or EC)",
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            what: "private key",
            detail: other.to_string(),
        },
    })
}

fn read_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    let bytes = read(path)?;
    let crl = if bytes.starts_with(b"-----BEGIN") {
        CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: "X509 CRL",
            detail: e.to_string(),
        })?
    } else {
        CertificateRevocationListDer::from(bytes)
    };
    // Parse here so that a broken file is named; the verifier's own error would not say
    // which one.
    x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).map_err(|e| {
        TlsError::BadCrl {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    })?;
    Ok(crl)
}

impl TlsMaterial {
    /// Reads and checks every file: the server chain and key (and that they belong together),
    /// each device CA, each CRL.
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certificates(&files.certificate, "certificate chain")?;
        let key = read_private_key(&files.private_key)?;

        if files.device_ca.is_empty() {
            return Err(TlsError::NoDeviceCa);
        }
        let mut roots = RootCertStore::empty();
        for path in &files.device_ca {
            for (index, cert) in read_certificates(path, "device CA bundle")?
                .into_iter()
                .enumerate()
            {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: path.clone(),
                    index: index + 1,
                    detail: e.to_string(),
                })?;
            }
        }
        let crls = files
            .crl
            .iter()
            .map(|path| read_crl(path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
        if !crls.is_empty() {
            builder = builder.with_crls(crls).only_check_end_entity_revocation();
        }
        let verifier = builder
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;

        let material = TlsMaterial {
            files: files.clone(),
            provider,
            chain,
            key: Arc::new(key),
            verifier,
        };
        // Build once so that a key that does not match the certificate is reported now.
        material.h3_server_config()?;
        Ok(material)
    }

    /// The files this was loaded from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn server_error(&self, error: rustls::Error) -> TlsError {
        TlsError::ServerCertificate {
            certificate: self.files.certificate.clone(),
            private_key: self.files.private_key.clone(),
            detail: error.to_string(),
        }
    }

    fn server_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[u8],
    ) -> Result<ServerConfig, TlsError> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| self.server_error(e))?
            .with_client_cert_verifier(self.verifier.clone())
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| self.server_error(e))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        // No 0-RTT: early data is replayable (RFC 8446 §8, RFC 9001 §4.6.1).
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// The rustls configuration for the HTTP/3 listener: TLS 1.3 only (RFC 9001 §4.2), ALPN
    /// `h3`, client certificate required, no early data.
    pub fn h3_server_config(&self) -> Result<ServerConfig, TlsError> {
        self.server_config(&[&rustls::version::TLS13], ALPN_H3)
    }

    /// The rustls configuration for the HTTP/2 listener (not built yet): TLS 1.3 and 1.2,
    /// ALPN `h2`, client certificate required.
    pub fn h2_server_config(&self) -> Result<ServerConfig, TlsError> {
        self.server_config(&[&rustls::version::TLS13, &rustls::version::TLS12], ALPN_H2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_certs::{write_file, DeviceCert, TestCa};

    struct Fixture {
        dir: tempfile::TempDir,
        files: TlsFiles,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let server_ca = TestCa::new("Server CA");
        let device_ca = TestCa::new("Device CA");
        let server = server_ca.issue_server();
        let files = TlsFiles {
            certificate: write_file(dir.path(), "server.pem", &server.cert_pem),
            private_key: write_file(dir.path(), "server.key", &server.key_pem),
            device_ca: vec![write_file(
                dir.path(),
                "device-ca.pem",
                &device_ca.cert_pem(),
            )],
            crl: vec![],
        };
        Fixture { dir, files }
    }

    #[test]
    fn loads_and_sets_alpn_and_no_early_data() {
        let f = fixture();
        let material = TlsMaterial::load(&f.files).unwrap();
        let h3 = material.h3_server_config().unwrap();
        assert_eq!(h3.alpn_protocols, vec![b"h3".to_vec()]);
        assert_eq!(h3.max_early_data_size, 0);
        let h2 = material.h2_server_config().unwrap();
        assert_eq!(h2.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(!format!("{material:?}").contains("PRIVATE"));
    }

    #[test]
    fn errors_name_the_file() {
        let f = fixture();
        let missing = TlsFiles {
            certificate: f.dir.path().join("nope.pem"),
            ..f.files.clone()
        };
        let err = TlsMaterial::load(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.pem: cannot read"), "{err}");

        let garbage = write_file(f.dir.path(), "garbage.pem", "hello\n");
        let err = TlsMaterial::load(&TlsFiles {
            device_ca: vec![garbage.clone()],
            ..f.files.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("garbage.pem: contains no CERTIFICATE block"),
            "{err}"
        );

        let err = TlsMaterial::load(&TlsFiles {
            private_key: garbage.clone(),
            ..f.files.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("garbage.pem: contains no PRIVATE KEY block"),
            "{err}"
        );

        let err = TlsMaterial::load(&TlsFiles {
            crl: vec![garbage],
            ..f.files.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("garbage.pem: not a valid CRL"), "{err}");

        let err = TlsMaterial::load(&TlsFiles {
            device_ca: vec![],
            ..f.files.clone()
        })
        .unwrap_err();
        assert!(matches!(err, TlsError::NoDeviceCa));

        // A key that does not belong to the certificate.
        let other = TestCa::new("Other").issue_device(&DeviceCert::attested("X"));
        let wrong_key = write_file(f.dir.path(), "wrong.key", &other.key_pem);
        let err = TlsMaterial::load(&TlsFiles {
            private_key: wrong_key,
            ..f.files.clone()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("server.pem with") && err.contains("wrong.key"),
            "{err}"
        );
    }

    #[test]
    fn crl_files_load() {
        let f = fixture();
        let ca = TestCa::new("CRL CA");
        let crl = write_file(f.dir.path(), "ca.crl", &ca.crl_pem(&[&[1, 2, 3]]));
        let ca_file = write_file(f.dir.path(), "crl-ca.pem", &ca.cert_pem());
        TlsMaterial::load(&TlsFiles {
            device_ca: vec![ca_file],
            crl: vec![crl],
            ..f.files.clone()
        })
        .unwrap();
    }
}
