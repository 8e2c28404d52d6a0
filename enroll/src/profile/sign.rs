//! Signed profiles: CMS SignedData (RFC 5652 §5) in DER with the profile as encapsulated
//! content (`eContentType` id-data), which Jamf Pro, Intune and the devices accept as a signed
//! `.mobileconfig`. Built by `openssl cms -sign -nodetach`, run as a subprocess.

use super::ProfileError;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// An environment variable naming the signing key's passphrase (`openssl -passin env:`).
pub const KEY_PASSWORD_ENV: &str = "ATTESTGATE_SIGN_KEY_PASSWORD";

/// Signs `content` with the certificate and key (PEM files). The signature covers the exact
/// bytes (`-binary`: no MIME line-ending conversion); further certificates in the certificate
/// file (intermediates) are included in the SignedData.
pub fn sign(content: &[u8], cert: &Path, key: &Path) -> Result<Vec<u8>, ProfileError> {
    for (path, what) in [(cert, "--sign-cert"), (key, "--sign-key")] {
        std::fs::File::open(path)
            .map_err(|e| ProfileError::Sign(format!("{what} {}: {e}", path.display())))?;
    }
    let cert_text = std::fs::read_to_string(cert)
        .map_err(|e| ProfileError::Sign(format!("--sign-cert {}: {e}", cert.display())))?;
    let certs = cert_text.matches("-----BEGIN CERTIFICATE-----").count();
    if certs == 0 {
        return Err(ProfileError::Sign(format!(
            "--sign-cert {}: no PEM certificate in it",
            cert.display()
        )));
    }
    let mut cmd = Command::new("openssl");
    cmd.args([
        "cms",
        "-sign",
        "-nodetach",
        "-binary",
        "-outform",
        "DER",
        "-md",
        "sha256",
    ])
    .arg("-signer")
    .arg(cert)
    .arg("-inkey")
    .arg(key);
    if certs > 1 {
        cmd.arg("-certfile").arg(cert);
    }
    // never prompt on the terminal for a passphrase
    if std::env::var_os(KEY_PASSWORD_ENV).is_some() {
        cmd.args(["-passin", &format!("env:{KEY_PASSWORD_ENV}")]);
    } else {
        cmd.args(["-passin", "pass:"]);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ProfileError::Sign(
                    "`openssl` is not installed or not in PATH: install it (Debian: apt-get \
                     install openssl), or upload the profile unsigned and let the MDM sign it"
                        .into(),
                )
            } else {
                ProfileError::Sign(format!("cannot run openssl: {e}"))
            }
        })?;
    // feed stdin from a thread, so a full stdout pipe cannot deadlock us
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| ProfileError::Sign("openssl has no stdin".into()))?;
    let input = content.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child
        .wait_with_output()
        .map_err(|e| ProfileError::Sign(format!("openssl: {e}")))?;
    let fed = feeder.join();
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first: Vec<&str> = stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .take(3)
            .collect();
        return Err(ProfileError::Sign(format!(
            "openssl cms -sign failed ({}): {}",
            out.status,
            first.join(" | ")
        )));
    }
    match fed {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(ProfileError::Sign(format!("writing to openssl: {e}"))),
        Err(_) => return Err(ProfileError::Sign("writing to openssl failed".into())),
    }
    // a DER SignedData is a SEQUENCE (RFC 5652 §3 ContentInfo)
    if out.stdout.first() != Some(&0x30) {
        return Err(ProfileError::Sign("openssl wrote no DER SignedData".into()));
    }
    Ok(out.stdout)
}
