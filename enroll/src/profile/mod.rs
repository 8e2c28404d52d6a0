//! The configuration profiles an admin uploads to the MDM (Jamf Pro, Intune), written from the
//! appliance configuration: an ACME payload that has each device get an attested,
//! hardware-bound certificate from the appliance, and a relay payload that sends the relayed
//! apps' domains through the appliance with that certificate.
//!
//! [`ProfileSpec::from_config`] derives everything a profile says (URLs, UUIDs, domains, the
//! ACME request); [`mobileconfig`] writes it as a `.mobileconfig` (an XML property list, Apple
//! "Configuration Profile Reference" / `apple/device-management` `mdm/profiles`),
//! [`declarative`] as declarative device management declarations
//! (`apple/device-management` `declarative/declarations`), and [`sign`] wraps a profile in CMS
//! SignedData. [`write`] puts files in place atomically.
//!
//! Layout: `domains` (MatchDomains / ExcludedDomains from apps and policies) · `mobileconfig` ·
//! `declarative` · `sign` (openssl cms) · `write`.

mod declarative;
mod domains;
mod mobileconfig;
mod sign;
mod write;

#[cfg(test)]
mod tests;

pub use declarative::{declarative, Declarative};
pub use domains::{relay_domains, RelayDomains};
pub use mobileconfig::{mobileconfig, mobileconfig_xml};
pub use sign::sign;
pub use write::{write_dir_atomically, write_file_atomically};

use config::Config;
use std::path::PathBuf;

/// The MDM the profile is uploaded to: it decides how the device's serial number is written,
/// since each MDM substitutes its own variable per device when it delivers the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mdm {
    /// Jamf Pro payload variables: `$SERIALNUMBER` (Jamf Pro documentation, "Payload Variables
    /// for Configuration Profiles").
    Jamf,
    /// Microsoft Intune custom-profile variables: `{{serialnumber}}` (Intune documentation,
    /// "Create a profile with custom settings in Intune", supported variables).
    Intune,
}

impl Mdm {
    /// The variable the MDM replaces with the device's serial number.
    pub fn serial_variable(self) -> &'static str {
        match self {
            Mdm::Jamf => "$SERIALNUMBER",
            Mdm::Intune => "{{serialnumber}}",
        }
    }
}

/// The device key's curve. Apple's ACME payload: hardware-bound keys are `ECSECPrimeRandom`
/// with `KeySize` 256 or 384 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySize {
    P256,
    P384,
}

impl KeySize {
    pub fn bits(self) -> i64 {
        match self {
            KeySize::P256 => 256,
            KeySize::P384 => 384,
        }
    }
}

/// What the command line adds to the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    pub mdm: Mdm,
    pub key_size: KeySize,
    /// `PayloadOrganization` and the `O` of the requested subject; default: the appliance name.
    pub organization: Option<String>,
    /// Pin the relay's public key (`RawPublicKeys`: SPKI of `[relay] certificate`).
    pub pin: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mdm: Mdm::Jamf,
            key_size: KeySize::P256,
            organization: None,
            pin: false,
        }
    }
}

/// Why a profile could not be written. Messages name the configuration key or option to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{}: `[enroll] public_name` is not set: add\n  [enroll]\n  public_name = \"gw.example.com\"\nwith the DNS name devices reach the appliance at (a name in the relay certificate)", config.display())]
    NoPublicName { config: PathBuf },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("`[relay] header_secret_file` {}: {reason}", path.display())]
    HeaderSecret { path: PathBuf, reason: String },
    #[error("{0}")]
    Option(String),
    #[error("cannot write the property list: {0}")]
    Plist(String),
    #[error("signing: {0}")]
    Sign(String),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The stable identities of a profile. A device keeps a relay per `RelayUUID` / payload UUID:
/// a changed one installs a second relay next to the first, so these never depend on
/// anything but the appliance's name and the payload's role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uuids {
    pub profile: String,
    pub acme: String,
    pub relay_payload: String,
    pub relay_uuid: String,
}

impl Uuids {
    pub fn for_appliance(name: &str) -> Self {
        Uuids {
            profile: stable_uuid(name, "profile"),
            acme: stable_uuid(name, "acme"),
            relay_payload: stable_uuid(name, "relay-payload"),
            relay_uuid: stable_uuid(name, "relay"),
        }
    }
}

/// A name-based UUID: RFC 9562 §5.8 (UUIDv8, "custom") filled from SHA-256 over a fixed
/// label, the appliance name and the role, as RFC 9562 Appendix B.2 shows for name-based v8
/// UUIDs with SHA-256. Same inputs, same UUID, on any machine.
pub fn stable_uuid(appliance: &str, role: &str) -> String {
    let mut input = Vec::new();
    for part in ["attestgate profile", appliance, role] {
        input.extend_from_slice(part.as_bytes());
        input.push(0); // separator: ("ab", "c") and ("a", "bc") differ
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, &input);
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest.as_ref()[..16]);
    b[6] = (b[6] & 0x0f) | 0x80; // version 8 (RFC 9562 §4.2)
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10 (RFC 9562 §4.1)
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The ACME payload's request (Apple `com.apple.security.acme`).
#[derive(Debug, Clone)]
pub struct AcmeRequest {
    pub directory_url: String,
    /// The MDM's serial-number variable: the device orders a certificate for this
    /// `permanent-identifier`, which the attestation must confirm.
    pub client_identifier: String,
    pub key_size: KeySize,
    /// X.500 name as (attribute, value) RDNs, in order.
    pub subject: Vec<(String, String)>,
    /// Key usage bits: 0x01 digital signature (all an ECDSA TLS client key does).
    pub usage_flags: i64,
    /// TLS client authentication (RFC 5280 §4.2.1.12, id-kp-clientAuth).
    pub extended_key_usage: Vec<String>,
}

/// The relay payload's content (Apple `com.apple.relay.managed`).
#[derive(Debug, Clone)]
pub struct RelayTarget {
    pub http3_url: Option<String>,
    pub http2_url: Option<String>,
    /// SubjectPublicKeyInfo DER of the relay's key, when pinned.
    pub raw_public_keys: Vec<Vec<u8>>,
    /// `AdditionalHTTPHeaderFields`: the relay's shared-secret header, when configured.
    pub headers: Vec<(String, String)>,
    pub domains: RelayDomains,
}

/// Everything a profile says, derived from the configuration; both forms are written from it.
#[derive(Debug, Clone)]
pub struct ProfileSpec {
    /// `[appliance] name`: the seed of every UUID and identifier.
    pub appliance: String,
    /// The reverse-DNS-style `PayloadIdentifier` prefix.
    pub identifier: String,
    pub organization: String,
    pub display_name: String,
    pub uuids: Uuids,
    pub acme: AcmeRequest,
    pub relay: RelayTarget,
    /// Things the admin should know (apps that cannot be expressed, a secret in the output).
    pub notes: Vec<String>,
}

impl ProfileSpec {
    pub fn from_config(cfg: &Config, opts: &Options) -> Result<Self, ProfileError> {
        let public_name = cfg
            .enroll
            .public_name
            .as_ref()
            .map(|n| n.value.clone())
            .ok_or_else(|| ProfileError::NoPublicName {
                config: cfg.origin.clone(),
            })?;
        let directory_url = cfg
            .acme_directory()
            .ok_or_else(|| ProfileError::NoPublicName {
                config: cfg.origin.clone(),
            })?;
        let appliance = cfg.appliance.name.clone();
        let organization = match &opts.organization {
            Some(o) if o.trim().is_empty() => {
                return Err(ProfileError::Option("--organization: empty name".into()))
            }
            Some(o) => o.trim().to_string(),
            None => appliance.clone(),
        };
        let mut notes = Vec::new();

        // RFC 9298 §3: a relay URL may be a URI template; the default template is the
        // well-known one, so a plain URL suffices unless the relay serves another path.
        let url = |port: u16| {
            let mut u = format!("https://{public_name}:{port}");
            if cfg.relay.udp_path != config::DEFAULT_UDP_PATH {
                u.push_str(&cfg.relay.udp_path);
            }
            u
        };
        let http3_url = cfg.relay.http3_listen.first().map(|a| url(a.port()));
        let http2_url = cfg.relay.http2_listen.first().map(|a| url(a.port()));

        let raw_public_keys = if opts.pin {
            vec![relay_spki(&cfg.relay.certificate.value)?]
        } else {
            Vec::new()
        };
        let mut headers = Vec::new();
        if let Some(h) = &cfg.relay.header_secret {
            headers.push((h.header.clone(), header_secret(&h.file.value)?));
            notes.push(format!(
                "the profile carries the relay's `{}` header secret: keep it as private as {}",
                h.header,
                h.file.value.display()
            ));
        }
        let domains = relay_domains(cfg, &public_name, &directory_url);
        notes.extend(domains.notes.iter().cloned());

        let serial = opts.mdm.serial_variable().to_string();
        let subject = vec![
            ("O".to_string(), organization.clone()),
            ("CN".to_string(), serial.clone()),
        ];
        Ok(ProfileSpec {
            identifier: format!("attestgate.{}", identifier_label(&appliance)),
            display_name: format!("attestgate relay ({appliance})"),
            uuids: Uuids::for_appliance(&appliance),
            appliance,
            organization,
            acme: AcmeRequest {
                directory_url,
                client_identifier: serial,
                key_size: opts.key_size,
                subject,
                usage_flags: 0x01,
                extended_key_usage: vec!["1.3.6.1.5.5.7.3.2".to_string()],
            },
            relay: RelayTarget {
                http3_url,
                http2_url,
                raw_public_keys,
                headers,
                domains,
            },
            notes,
        })
    }
}

/// The appliance name as one identifier label: letters, digits and `-` (anything else `-`).
fn identifier_label(name: &str) -> String {
    let label: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if label.trim_matches('-').is_empty() {
        "appliance".to_string()
    } else {
        label
    }
}

/// The SubjectPublicKeyInfo (DER) of the first certificate in a PEM file: what Apple's
/// `RawPublicKeys` holds ("DER-encoded raw public keys", RFC 7250 §3 SubjectPublicKeyInfo).
pub fn relay_spki(path: &std::path::Path) -> Result<Vec<u8>, ProfileError> {
    let text = std::fs::read(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |reason: String| ProfileError::Certificate {
        path: path.to_path_buf(),
        reason,
    };
    let (_, pem) = x509_parser::pem::parse_x509_pem(&text)
        .map_err(|e| bad(format!("not a PEM certificate ({e})")))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate ({e})")))?;
    Ok(cert.public_key().raw.to_vec())
}

/// The header secret as the relay reads it (one trailing newline dropped); a header value
/// must be visible ASCII (RFC 9110 §5.5).
fn header_secret(path: &std::path::Path) -> Result<String, ProfileError> {
    let bytes = std::fs::read(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let ok = !trimmed.is_empty() && trimmed.iter().all(|b| (0x21..0x7f).contains(b));
    if !ok {
        return Err(ProfileError::HeaderSecret {
            path: path.to_path_buf(),
            reason: "not a non-empty string of visible ASCII characters".into(),
        });
    }
    Ok(String::from_utf8_lossy(trimmed).into_owned())
}
