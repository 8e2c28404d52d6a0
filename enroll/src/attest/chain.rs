//! The attestation chain: `x5c` (leaf first, each certificate followed by its issuer) walked up to
//! a trusted root, in the manner of RFC 5280 §6.1 for what an attestation chain uses — signatures,
//! validity at `now`, CA basicConstraints and keyCertSign on issuers, path length, unknown
//! critical extensions. No name constraints or policies (Apple's chain has none; a certificate
//! that marks them critical is refused as an unknown critical extension).

use std::collections::HashSet;

use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    Oid, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384,
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_CERTIFICATE_POLICIES, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};
use x509_parser::prelude::FromDer;

use super::AttestError;

/// Largest certificate accepted (Apple's are under 1 KiB).
const MAX_CERT: usize = 16 * 1024;

fn chain(what: impl Into<String>) -> AttestError {
    AttestError::Chain(what.into())
}

/// A name for messages: quoted and escaped, as it comes from the peer.
pub(super) fn quoted(name: &x509_parser::x509::X509Name<'_>) -> String {
    format!("{:?}", name.to_string())
}

/// Checks the outer DER framing (one SEQUENCE, definite length, exactly the input) so truncation
/// and trailing bytes get their own message, then parses the certificate.
pub(super) fn parse<'a>(label: &str, der: &'a [u8]) -> Result<X509Certificate<'a>, AttestError> {
    if der.len() > MAX_CERT {
        return Err(chain(format!(
            "{label} is {} bytes; at most {MAX_CERT} are accepted",
            der.len()
        )));
    }
    let declared = outer_len(der).map_err(|why| chain(format!("{label}: {why}")))?;
    if declared > der.len() {
        return Err(chain(format!(
            "{label}: truncated DER (the certificate declares {declared} bytes, {} are there)",
            der.len()
        )));
    }
    if declared < der.len() {
        return Err(chain(format!(
            "{label}: {} trailing bytes after the certificate",
            der.len() - declared
        )));
    }
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err(chain(format!(
            "{label}: trailing bytes after the certificate"
        ))),
        Err(x509_parser::nom::Err::Incomplete(_)) => Err(chain(format!(
            "{label}: truncated DER inside the certificate"
        ))),
        Err(e) => Err(chain(format!(
            "{label} is not a valid X.509 certificate: {e}"
        ))),
    }
}

/// Total length (header included) the outer SEQUENCE declares (X.690 §8.1.3, DER §10.1).
fn outer_len(der: &[u8]) -> Result<usize, String> {
    match der {
        [] | [_] => Err("truncated DER (no certificate header)".into()),
        [0x30, first, rest @ ..] => match *first {
            n @ 0..=0x7f => Ok(2 + usize::from(n)),
            0x80 => Err("indefinite length is not DER".into()),
            n @ 0x81..=0x84 => {
                let count = usize::from(n & 0x7f);
                let bytes = rest
                    .get(..count)
                    .ok_or("truncated DER (certificate header)")?;
                let len = bytes
                    .iter()
                    .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
                Ok(2 + count + len)
            }
            _ => Err("certificate length does not fit".into()),
        },
        _ => Err("not a DER certificate (does not start with a SEQUENCE)".into()),
    }
}

/// Seconds since the Unix epoch (negative before it).
pub(super) fn unix(now: std::time::SystemTime) -> i64 {
    match now.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn check_validity(label: &str, cert: &X509Certificate<'_>, now: i64) -> Result<(), AttestError> {
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(chain(format!(
            "{label} is not yet valid (notBefore {})",
            validity.not_before
        )));
    }
    if now > validity.not_after.timestamp() {
        return Err(chain(format!(
            "{label} expired (notAfter {})",
            validity.not_after
        )));
    }
    Ok(())
}

/// RFC 5280 §4.2: refuse a certificate with an extension twice or a critical extension we do not
/// process. `extra` lists further OIDs the caller processes (Apple's on the leaf).
fn check_extensions(
    label: &str,
    cert: &X509Certificate<'_>,
    processed: impl Fn(&Oid<'_>) -> bool,
) -> Result<(), AttestError> {
    let known = [
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_CERTIFICATE_POLICIES,
    ];
    let mut seen = HashSet::new();
    for ext in cert.extensions() {
        if !seen.insert(ext.oid.as_bytes()) {
            return Err(chain(format!("{label} has extension {} twice", ext.oid)));
        }
        if ext.critical && !known.contains(&ext.oid) && !processed(&ext.oid) {
            return Err(chain(format!(
                "{label} has a critical extension {} that is not understood",
                ext.oid
            )));
        }
    }
    Ok(())
}

/// Checks that `issuer` may issue certificates: RFC 5280 §6.1.4 (k) basicConstraints cA, (n)
/// keyCertSign when keyUsage is present, (m) pathLenConstraint against the number of
/// intermediates (not self-issued) below it.
fn check_issuer(
    label: &str,
    issuer: &X509Certificate<'_>,
    intermediates_below: u32,
) -> Result<(), AttestError> {
    let constraints = issuer
        .basic_constraints()
        .map_err(|e| chain(format!("{label}: basicConstraints: {e}")))?;
    let Some(constraints) = constraints.filter(|bc| bc.value.ca) else {
        return Err(chain(format!(
            "{label} issues a certificate but is not a CA (basicConstraints cA is not set)"
        )));
    };
    if let Some(limit) = constraints.value.path_len_constraint {
        if intermediates_below > limit {
            return Err(chain(format!(
                "path length: {label} allows {limit} intermediate certificates below it, the \
                 chain has {intermediates_below}"
            )));
        }
    }
    let usage = issuer
        .key_usage()
        .map_err(|e| chain(format!("{label}: keyUsage: {e}")))?;
    if let Some(usage) = usage {
        if !usage.value.key_cert_sign() {
            return Err(chain(format!(
                "{label} issues a certificate but its keyUsage lacks keyCertSign"
            )));
        }
    }
    Ok(())
}

/// AlgorithmIdentifier DER of ecdsa-with-SHA256 and ecdsa-with-SHA384: parameters absent
/// (RFC 5758 §3.2).
const ECDSA_WITH_SHA256: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
];
const ECDSA_WITH_SHA384: &[u8] = &[
    0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
];

/// The DER after tbsCertificate: signatureAlgorithm and signatureValue. The parser reads these
/// unsigned fields leniently (tags, unused bits), so they are checked byte for byte: one of the
/// two ECDSA AlgorithmIdentifiers, then a BIT STRING with no unused bits holding the signature
/// to the end of the certificate (X.690 §8.6, §10.1). Returns the AlgorithmIdentifier.
fn outer_algorithm<'c>(cert: &'c X509Certificate<'_>) -> Option<&'c [u8]> {
    let raw = cert.as_raw();
    let tbs: &[u8] = cert.tbs_certificate.as_ref();
    let offset = (tbs.as_ptr() as usize).checked_sub(raw.as_ptr() as usize)?;
    let rest = raw.get(offset.checked_add(tbs.len())?..)?;
    let (algorithm, rest) = rest.split_at_checked(ECDSA_WITH_SHA256.len())?;
    let signature: &[u8] = &cert.signature_value.data;
    let bit_string = match rest {
        [0x03, n @ 0..=0x7f, 0x00, body @ ..] if usize::from(*n) == body.len() + 1 => body,
        [0x03, 0x81, n @ 0x80..=0xff, 0x00, body @ ..] if usize::from(*n) == body.len() + 1 => body,
        _ => return None,
    };
    (bit_string == signature).then_some(algorithm)
}

/// RFC 5280 §4.1.1.2: the outer signatureAlgorithm equals the one inside tbsCertificate; only
/// ECDSA with SHA-256 or SHA-384 is accepted (Apple's chain is ECDSA P-384; RSA and SHA-1 never
/// sign an attestation chain we accept).
fn check_signature(
    label: &str,
    cert: &X509Certificate<'_>,
    issuer_label: &str,
    issuer: &X509Certificate<'_>,
) -> Result<(), AttestError> {
    let algorithm = &cert.signature_algorithm.algorithm;
    if *algorithm != OID_SIG_ECDSA_WITH_SHA256 && *algorithm != OID_SIG_ECDSA_WITH_SHA384 {
        return Err(chain(format!(
            "{label} is signed with {algorithm}; only ECDSA with SHA-256 or SHA-384 is accepted"
        )));
    }
    let inner = &cert.tbs_certificate.signature;
    let outer = outer_algorithm(cert);
    if inner.algorithm != *algorithm
        || inner.parameters.is_some()
        || (outer != Some(ECDSA_WITH_SHA256) && outer != Some(ECDSA_WITH_SHA384))
    {
        return Err(chain(format!(
            "{label}: the signature algorithm or value is not DER ecdsa-with-SHA256/384, or \
             differs from the algorithm in tbsCertificate"
        )));
    }
    cert.verify_signature(Some(issuer.public_key()))
        .map_err(|e| match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => chain(format!(
                "{issuer_label}'s key cannot verify {label}'s signature (unsupported curve)"
            )),
            _ => chain(format!(
                "bad signature: {label} is not signed by {issuer_label}"
            )),
        })
}

fn self_issued(cert: &X509Certificate<'_>) -> bool {
    cert.subject().as_raw() == cert.issuer().as_raw()
}

fn label(i: usize, cert: &X509Certificate<'_>) -> String {
    let role = if i == 0 { "leaf" } else { "intermediate" };
    format!("x5c[{i}] ({role} {})", quoted(cert.subject()))
}

/// Verifies `x5c` (parsed, leaf first) up to one of `roots` at `now` (Unix seconds).
/// `leaf_processed` says which critical extensions of the leaf the caller reads.
pub(super) fn verify(
    x5c: &[X509Certificate<'_>],
    roots: &[X509Certificate<'_>],
    now: i64,
    leaf_processed: impl Fn(&Oid<'_>) -> bool,
) -> Result<(), AttestError> {
    let Some(leaf) = x5c.first() else {
        return Err(chain("x5c is empty"));
    };
    if leaf.is_ca() {
        return Err(chain(format!(
            "{} is a CA certificate, not an attestation",
            label(0, leaf)
        )));
    }
    check_extensions(&label(0, leaf), leaf, leaf_processed)?;
    // Non-self-issued intermediates between the current certificate and the leaf (§6.1.4 (l)).
    let mut intermediates_below = 0u32;
    for (i, cert) in x5c.iter().enumerate() {
        let this = label(i, cert);
        check_validity(&this, cert, now)?;
        if i > 0 {
            check_extensions(&this, cert, |_| false)?;
            check_issuer(&this, cert, intermediates_below)?;
            if !self_issued(cert) {
                intermediates_below += 1;
            }
            // A client may send the root too: a certificate identical to a trusted root ends
            // the path there.
            if roots.iter().any(|r| r.as_raw() == cert.as_raw()) {
                return Ok(());
            }
        }
        let anchors: Vec<&X509Certificate<'_>> = roots
            .iter()
            .filter(|r| r.subject().as_raw() == cert.issuer().as_raw())
            .collect();
        if !anchors.is_empty() {
            let mut last = None;
            for root in anchors {
                let root_label = format!("the trusted root {}", quoted(root.subject()));
                let outcome = check_signature(&this, cert, &root_label, root).and_then(|()| {
                    check_validity(&root_label, root, now)?;
                    check_issuer(&root_label, root, intermediates_below)
                });
                match outcome {
                    Ok(()) => return Ok(()),
                    Err(e) => last = Some(e),
                }
            }
            return Err(last.unwrap_or_else(|| chain("no trusted root")));
        }
        let Some(next) = x5c.get(i + 1) else {
            return Err(if i == 0 {
                chain(format!(
                    "missing intermediate: x5c holds only the leaf, and its issuer {} is not a \
                     trusted root",
                    quoted(cert.issuer())
                ))
            } else if self_issued(cert) {
                chain(format!(
                    "unknown issuer: the chain ends in {}, a root that is not trusted",
                    quoted(cert.subject())
                ))
            } else {
                chain(format!(
                    "unknown issuer: {} (issuer of {this}) is neither a trusted root nor in x5c",
                    quoted(cert.issuer())
                ))
            });
        };
        if next.subject().as_raw() != cert.issuer().as_raw() {
            return Err(chain(format!(
                "x5c[{}] ({}) is not the issuer of {this} (issued by {}); x5c must hold the leaf \
                 first, each certificate followed by its issuer",
                i + 1,
                quoted(next.subject()),
                quoted(cert.issuer())
            )));
        }
        check_signature(&this, cert, &label(i + 1, next), next)?;
    }
    // Unreachable in practice: the last certificate either met a root or returned above.
    Err(chain("the chain does not reach a trusted root"))
}
