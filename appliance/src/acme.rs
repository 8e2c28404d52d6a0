//! The built-in ACME server (`[acme]`, issue 8) as the daemon runs it: the device CA in
//! `appliance.state_dir` (or imported), the Apple attestation verifier (Apple's root plus the
//! configured `attestation_roots`), the compliance store as its device directory, and its
//! issuances and refusals as our events (`acme.issued`, `acme.refused`).
//!
//! The relay trusts the CA certificate beside the configured `relay.device_ca`
//! ([`AcmeRuntime::trust_file`]), and the gateway refuses requests whose certificate the CA
//! lists as revoked ([`crate::gateway::Gateway::set_revocations`]).

use crate::compliance::admin::{AdminBackend, MdmDirectory};
use crate::events::EventLog;
use enroll::acme::{AcmeEvent, AcmeOptions, AcmeServer, EventSink, Outcome};
use enroll::ca::{CaImport, CaOptions, DeviceCa};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

/// The imported CA's issuing certificate, written for the relay to trust (the generated CA's
/// own `device-ca.pem` serves as it is).
pub const IMPORTED_TRUST_FILE: &str = "device-ca-imported.pem";

/// The CRL file written for the relay when `relay.crl` is configured.
pub const CRL_FILE: &str = "device-ca.crl";
/// The written CRL's nextUpdate (the relay does not enforce it; revocation takes effect
/// through the gateway at once, this file only keeps the relay's CRL rule satisfied).
const CRL_NEXT_UPDATE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// The relay checks CRLs for every device certificate once any CRL file is configured, and
/// refuses a certificate whose issuer has none (`relay::tls`): with `relay.crl` set, the
/// built-in CA's own CRL is written (DER) into the state directory for the relay to load.
pub fn write_crl(ca: &DeviceCa, state_dir: &Path) -> Result<PathBuf, String> {
    let der = ca
        .crl_der(std::time::SystemTime::now(), CRL_NEXT_UPDATE)
        .map_err(|e| format!("device CA CRL: {e}"))?;
    let path = state_dir.join(CRL_FILE);
    std::fs::write(&path, der).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// A running ACME server and its CA.
#[derive(Debug)]
pub struct AcmeRuntime {
    pub server: Arc<AcmeServer>,
    pub ca: Arc<DeviceCa>,
    /// The CA certificate (PEM) the relay adds to its trusted device CAs.
    pub trust_file: PathBuf,
}

/// `acme.issued` / `acme.refused` events.
#[derive(Debug)]
pub struct AcmeEvents(pub Arc<EventLog>);

impl EventSink for AcmeEvents {
    fn event(&self, e: &AcmeEvent) {
        let kind = match e.outcome {
            Outcome::Issued => "acme.issued",
            Outcome::Refused => "acme.refused",
        };
        self.0.emit(
            kind,
            json!({
                "identifier": e.identifier,
                "attested_serial": e.attested_serial,
                "account": e.account,
                "order": e.order,
                "serial": e.certificate_serial,
                "not_after": e.not_after,
                "problem": e.problem,
                "reason": e.reason,
                "path": e.path,
            }),
        );
    }
}

/// Certificates from a file: PEM blocks (`CERTIFICATE`), or one DER certificate.
fn certificates(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !bytes.starts_with(b"-----BEGIN") {
        return Ok(vec![bytes]);
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE block", path.display()));
    }
    Ok(certs)
}

/// Opens the CA, builds the verifier and starts the server for `[acme]`.
pub fn start(
    acme: &config::Acme,
    state_dir: &Path,
    backend: Weak<dyn AdminBackend>,
    events: Arc<EventLog>,
) -> Result<AcmeRuntime, String> {
    let import = acme.ca_import.as_ref().map(|i| CaImport {
        certificate_chain: i.certificate.value.clone(),
        private_key: i.private_key.value.clone(),
    });
    let imported = import.is_some();
    let ca = DeviceCa::open(
        state_dir,
        CaOptions {
            validity: acme.certificate_validity,
            import,
            ..CaOptions::default()
        },
    )
    .map_err(|e| format!("device CA: {e}"))?;
    let trust_file = if imported {
        let path = state_dir.join(IMPORTED_TRUST_FILE);
        std::fs::write(&path, ca.certificate_pem())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        path
    } else {
        state_dir.join(enroll::ca::CA_CERT_FILE)
    };
    let mut roots = Vec::new();
    for path in &acme.attestation_roots {
        roots.extend(certificates(&path.value).map_err(|e| format!("attestation root {e}"))?);
    }
    let verifier = enroll::attest::Verifier::with_roots(roots, true)
        .map_err(|e| format!("attestation roots: {e}"))?;
    let mut options = AcmeOptions::new(acme.base_url.value.clone());
    options.require_enrolled = acme.require_enrolled;
    options.order_lifetime = acme.order_lifetime;
    let ca = Arc::new(ca);
    let server = AcmeServer::new(
        options,
        state_dir,
        ca.clone(),
        Arc::new(verifier),
        Arc::new(MdmDirectory(backend)),
        Arc::new(AcmeEvents(events)),
    )
    .map_err(|e| format!("ACME server: {e}"))?;
    Ok(AcmeRuntime {
        server: Arc::new(server),
        ca,
        trust_file,
    })
}
