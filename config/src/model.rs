//! The typed configuration. Every field is validated; paths are absolute (relative ones are
//! resolved against the configuration file's directory). Fields that other parts refer to keep
//! their [`Spanned`] place so later checks can point at them.

use crate::tree::Spanned;
use crate::units::{HostPattern, PortRange};
use ike::{EspProposal, Identity, IkeProposal};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/attestgate/attestgate.toml";
/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/attestgate/control.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/attestgate";
/// The well-known connect-udp URI template (RFC 9298 §2).
pub const DEFAULT_UDP_PATH: &str = "/.well-known/masque/udp/{target_host}/{target_port}/";

/// The whole appliance.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from.
    pub origin: PathBuf,
    pub appliance: Appliance,
    pub relay: Relay,
    /// In file order. Always contains at least one `public` egress (an implicit one named
    /// `public` when none is written).
    pub egresses: Vec<Egress>,
    pub apps: Vec<App>,
    pub compliance: Compliance,
    /// In file order: the first policy naming the target's app applies.
    pub policies: Vec<Policy>,
    pub defaults: Defaults,
    pub events: Events,
    pub logging: Logging,
    pub enroll: Enroll,
    /// `[acme]`, when written.
    pub acme: Option<Acme>,
    /// `[idp]`: identity providers whose trusted location follows the trusted egress.
    pub idp: Idp,
}

impl Config {
    pub fn egress(&self, name: &str) -> Option<&Egress> {
        self.egresses.iter().find(|e| e.name.value == name)
    }
    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.iter().find(|a| a.name.value == name)
    }
}

#[derive(Debug, Clone)]
pub struct Appliance {
    pub name: String,
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
}

/// Where the relay reads the device identity from (tried in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityField {
    PermanentIdentifier,
    AppleSerial,
    SubjectCn,
    SubjectSerial,
}

#[derive(Debug, Clone)]
pub struct Relay {
    /// UDP listeners for HTTP/3.
    pub http3_listen: Vec<SocketAddr>,
    /// TCP listeners for HTTP/2 over TLS.
    pub http2_listen: Vec<SocketAddr>,
    pub certificate: Spanned<PathBuf>,
    pub private_key: Spanned<PathBuf>,
    pub device_ca: Vec<Spanned<PathBuf>>,
    pub crl: Vec<Spanned<PathBuf>>,
    pub identity: Vec<IdentityField>,
    pub udp_path: String,
    pub header_secret: Option<HeaderSecret>,
    pub limits: RelayLimits,
}

#[derive(Debug, Clone)]
pub struct HeaderSecret {
    /// Lower-case header name.
    pub header: String,
    pub file: Spanned<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RelayLimits {
    pub max_connections_per_device: u32,
    pub max_streams_per_connection: u32,
    /// QUIC / HTTP/2 connection idle timeout; keepalives keep healthy devices below it.
    pub connection_idle_timeout: Duration,
    pub keepalive_interval: Duration,
    /// `None`: streams may idle forever (push channels do).
    pub stream_idle_timeout: Option<Duration>,
    pub max_header_bytes: u32,
}

/// Egress names that are outcomes, not egresses.
pub const RESERVED_OUTCOMES: [&str; 2] = ["deny", "direct"];

#[derive(Debug, Clone)]
pub struct Egress {
    pub name: Spanned<String>,
    pub kind: EgressKind,
    /// Resolvers for names sent out this egress (reached through it). Empty: the host's.
    pub dns: Vec<IpAddr>,
    /// Static name → address entries, consulted before DNS (labs, split horizon).
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl Egress {
    /// Tunnel and internet egresses carry trusted source addresses; public does not.
    pub fn is_trusted(&self) -> bool {
        !matches!(self.kind, EgressKind::Public(_))
    }
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EgressKind::Tunnel(_) => "tunnel",
            EgressKind::Internet(_) => "internet",
            EgressKind::Public(_) => "public",
        }
    }
}

#[derive(Debug, Clone)]
pub enum EgressKind {
    Tunnel(Box<Tunnel>),
    Internet(Internet),
    Public(Public),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NatMode {
    /// A stable address per device, so the enterprise firewall log names the device.
    PerDevice,
    /// Every device shares the pool.
    Shared,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DpdAction {
    /// Re-establish the tunnel.
    Restart,
    /// Tear it down and wait for traffic or the peer.
    Clear,
}

#[derive(Debug, Clone)]
pub enum TunnelAuth {
    Psk {
        file: Spanned<PathBuf>,
    },
    Certificate {
        certificate: Spanned<PathBuf>,
        private_key: Spanned<PathBuf>,
        peer_ca: Vec<Spanned<PathBuf>>,
    },
}

#[derive(Debug, Clone)]
pub struct Tunnel {
    pub local_address: IpAddr,
    pub remote_address: Spanned<IpAddr>,
    pub local_id: Identity,
    pub remote_id: Identity,
    pub auth: TunnelAuth,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    pub local_ts: Vec<Spanned<IpNet>>,
    pub remote_ts: Vec<Spanned<IpNet>>,
    pub nat_pool: Spanned<IpNet>,
    pub nat_mode: NatMode,
    pub mtu: u16,
    /// Initiate at start (AWS needs the customer side to); otherwise wait for the peer.
    pub initiate: bool,
    pub dpd_interval: Duration,
    pub dpd_action: DpdAction,
    pub ike_lifetime: Duration,
    pub child_lifetime: Duration,
    pub child_lifetime_bytes: Option<u64>,
    /// The largest IP datagram an IKE fragment may make (RFC 7383 §2.5.1), like strongSwan's
    /// `charon.fragment_size`.
    pub fragment_size: u16,
    /// As a responder, ask IKE_SA_INIT for a cookie (RFC 7296 §2.6) at this many half-open IKE
    /// SAs; 0 always asks. strongSwan's `charon.cookie_threshold` defaults to 10 too.
    pub cookie_threshold: u32,
    /// Always encapsulate ESP in UDP 4500 (RFC 3948), like strongSwan's `encap = yes`; `false`:
    /// only when a NAT is detected (RFC 7296 §2.23), raw ESP (IP protocol 50) otherwise.
    pub encap: bool,
}

#[derive(Debug, Clone)]
pub struct Internet {
    /// In order of preference; the next is used when one is unusable.
    pub source_addresses: Vec<Spanned<IpAddr>>,
}

#[derive(Debug, Clone)]
pub struct Public {
    /// `None`: the address of the default route.
    pub source_address: Option<IpAddr>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub hosts: Vec<HostPattern>,
    pub cidrs: Vec<IpNet>,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
}

/// Risk levels, ordered from best to worst.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum RiskLevel {
    Secure,
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub const ALL: [(&'static str, RiskLevel); 4] = [
        ("secure", RiskLevel::Secure),
        ("low", RiskLevel::Low),
        ("medium", RiskLevel::Medium),
        ("high", RiskLevel::High),
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Secure => "secure",
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
        }
    }
}

impl std::str::FromStr for RiskLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RiskLevel::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, r)| *r)
            .ok_or_else(|| format!("`{s}` is not a risk level (secure, low, medium, high)"))
    }
}

#[derive(Debug, Clone)]
pub struct Compliance {
    /// Data older than this counts as unknown (fail closed).
    pub max_age: Duration,
    pub refresh_interval: Duration,
    /// A device in any of these groups is compliant.
    pub compliant_groups: Vec<String>,
    pub sources: Vec<ComplianceSource>,
    pub webhook: Option<Webhook>,
    /// The persisted device store (`[compliance] store`); `None`: `devices.redb` in
    /// `appliance.state_dir` (see [`Config::device_store`]).
    pub store: Option<PathBuf>,
}

impl Config {
    /// Where the device store lives: `[compliance] store`, else `STATE_DIR/devices.redb`.
    pub fn device_store(&self) -> PathBuf {
        self.compliance
            .store
            .clone()
            .unwrap_or_else(|| self.appliance.state_dir.join(DEFAULT_DEVICE_STORE))
    }
}

/// The device store's file name inside `appliance.state_dir` when `[compliance] store` is unset.
pub const DEFAULT_DEVICE_STORE: &str = "devices.redb";

#[derive(Debug, Clone)]
pub struct ComplianceSource {
    pub name: Spanned<String>,
    pub kind: SourceKind,
}

#[derive(Debug, Clone)]
pub enum SourceKind {
    JamfPro {
        url: String,
        client_id: String,
        client_secret_file: Spanned<PathBuf>,
        computer_groups: Vec<u32>,
        mobile_device_groups: Vec<u32>,
        /// Name of a computer extension attribute holding a risk level.
        risk_attribute: Option<String>,
    },
    Intune {
        tenant_id: String,
        client_id: String,
        client_secret_file: Spanned<PathBuf>,
        /// Group name given to devices whose `complianceState` is `compliant`.
        compliant_group: String,
        graph_url: String,
        login_url: String,
    },
    File {
        path: Spanned<PathBuf>,
    },
}

impl SourceKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            SourceKind::JamfPro { .. } => "jamf-pro",
            SourceKind::Intune { .. } => "intune",
            SourceKind::File { .. } => "file",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Webhook {
    pub listen: SocketAddr,
    pub certificate: Spanned<PathBuf>,
    pub private_key: Spanned<PathBuf>,
    pub auth: WebhookAuth,
}

#[derive(Debug, Clone)]
pub enum WebhookAuth {
    Basic {
        username: String,
        password_file: Spanned<PathBuf>,
    },
    Header {
        header: String,
        token_file: Spanned<PathBuf>,
    },
}

/// What a policy or default sends traffic to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A named egress.
    Egress(String),
    /// Refused.
    Deny,
    /// The client is told to go direct.
    Direct,
}

impl Outcome {
    pub fn parse(name: &str) -> Outcome {
        match name {
            "deny" => Outcome::Deny,
            "direct" => Outcome::Direct,
            other => Outcome::Egress(other.to_string()),
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Egress(n) => f.write_str(n),
            Outcome::Deny => f.write_str("deny"),
            Outcome::Direct => f.write_str("direct"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub name: Spanned<String>,
    pub description: Option<String>,
    pub apps: Vec<Spanned<String>>,
    /// The device must be in at least one of these MDM groups (besides being compliant).
    /// Empty: any compliant device.
    pub groups: Vec<String>,
    pub managed: bool,
    pub max_risk: RiskLevel,
    pub egress: Spanned<Outcome>,
    pub fallback: Spanned<Outcome>,
}

/// The HTTP status for a deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyStatus {
    /// 403 Forbidden.
    Forbidden,
    /// 502 with `Proxy-Status: …; error=connection_refused` (what Apple's client treats as a block).
    BadGateway,
}

impl DenyStatus {
    pub fn code(self) -> u16 {
        match self {
            DenyStatus::Forbidden => 403,
            DenyStatus::BadGateway => 502,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Defaults {
    /// Traffic that matches no policy.
    pub egress: Spanned<Outcome>,
    /// The fallback of policies that name none.
    pub fallback: Spanned<Outcome>,
    pub deny_status: DenyStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct Events {
    /// JSON lines appended here, besides the log.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Logging {
    /// A tracing filter directive, e.g. `info` or `info,attestgate::policy=debug`.
    pub level: String,
    pub format: LogFormat,
}

/// `[enroll]`: how devices reach the appliance's enrollment services (issue 8).
#[derive(Debug, Clone, Default)]
pub struct Enroll {
    /// The DNS name devices reach the appliance at (relay and ACME), normalized like app hosts;
    /// it must be a name in the relay certificate. `None`: `attestgate profile` refuses to run,
    /// since it cannot write the relay and ACME URLs.
    pub public_name: Option<Spanned<String>>,
    /// The ACME directory URL written into profiles; `None`: `https://{public_name}/acme/directory`
    /// (see [`Config::acme_directory`]).
    pub acme_directory: Option<Spanned<String>>,
}

/// The ACME directory's path on the appliance when `[enroll] acme_directory` is unset.
pub const DEFAULT_ACME_DIRECTORY_PATH: &str = "/acme/directory";

impl Config {
    /// The ACME directory URL devices are given: `[enroll] acme_directory`, else the built-in
    /// server's (`[acme] base_url` + `/directory`) when it is enabled, else
    /// `https://{public_name}/acme/directory`; `None` when none is configured.
    pub fn acme_directory(&self) -> Option<String> {
        if let Some(url) = &self.enroll.acme_directory {
            return Some(url.value.clone());
        }
        if let Some(acme) = self.acme.as_ref().filter(|a| a.enabled) {
            return Some(format!(
                "{}/directory",
                acme.base_url.value.trim_end_matches('/')
            ));
        }
        let name = self.enroll.public_name.as_ref()?;
        Some(format!(
            "https://{}{DEFAULT_ACME_DIRECTORY_PATH}",
            name.value
        ))
    }
}

/// Default lifetime of the device certificates the built-in CA issues.
pub const ACME_DEFAULT_VALIDITY: Duration = Duration::from_secs(14 * 86_400);

/// `[acme]`: the built-in ACME server (device-attest-01) on the admin listener, and its
/// device CA.
#[derive(Debug, Clone)]
pub struct Acme {
    pub enabled: bool,
    /// The https URL devices reach the server at (`DirectoryURL` = this + `/directory`).
    pub base_url: Spanned<String>,
    pub certificate_validity: Duration,
    pub order_lifetime: Duration,
    /// Refuse devices the compliance sources do not know as enrolled.
    pub require_enrolled: bool,
    /// Extra attestation roots besides Apple's Enterprise Attestation Root CA (tests, labs).
    pub attestation_roots: Vec<Spanned<PathBuf>>,
    /// `None`: a CA generated in `appliance.state_dir` on first start.
    pub ca_import: Option<AcmeCaImport>,
}

/// An imported device CA.
#[derive(Debug, Clone)]
pub struct AcmeCaImport {
    /// PEM, the issuing CA first.
    pub certificate: Spanned<PathBuf>,
    pub private_key: Spanned<PathBuf>,
}
/// `[idp]`: identity providers the appliance keeps in step with its trusted egress addresses.
#[derive(Debug, Clone, Default)]
pub struct Idp {
    /// `[idp.entra]`: Microsoft Entra ID (Conditional Access named location through Graph).
    pub entra: Option<EntraIdp>,
}

/// The display name of the named location `attestgate idp entra sync` keeps.
pub const DEFAULT_ENTRA_NAMED_LOCATION: &str = "attestgate trusted egress";
/// Microsoft Graph (global service).
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com";
/// The Microsoft identity platform's token host (global service).
pub const DEFAULT_LOGIN_URL: &str = "https://login.microsoftonline.com";

/// `[idp.entra]`: the app registration that writes the trusted `ipNamedLocation`.
#[derive(Debug, Clone)]
pub struct EntraIdp {
    pub tenant_id: Spanned<String>,
    pub client_id: String,
    pub client_secret_file: Spanned<PathBuf>,
    /// The `ipNamedLocation`'s display name.
    pub named_location: Spanned<String>,
    /// Without a trailing slash.
    pub graph_url: String,
    /// Without a trailing slash.
    pub login_url: String,
    /// Trusted addresses besides the internet egresses' own: the public addresses a cloud
    /// 1:1-NATs the egress addresses to, or an enterprise edge that tunnel traffic leaves from.
    pub extra_addresses: Vec<Spanned<IpAddr>>,
}

/// Why the internet never sees `ip` as a source address (so an identity provider cannot either),
/// or `None` for an address that can be one. Documentation ranges (RFC 5737, RFC 3849) count as
/// public here, so that labs and examples work.
pub fn not_internet_visible(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_private() {
                Some("a private address (RFC 1918)")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("a carrier-grade NAT address (RFC 6598)")
            } else if v4.is_loopback() {
                Some("a loopback address")
            } else if v4.is_link_local() {
                Some("a link-local address")
            } else if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                Some("not a unicast address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                not_internet_visible(IpAddr::V4(v4))
            } else if (s[0] & 0xfe00) == 0xfc00 {
                Some("a unique local address (RFC 4193)")
            } else if (s[0] & 0xffc0) == 0xfe80 {
                Some("a link-local address")
            } else if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() {
                Some("not a global unicast address")
            } else {
                None
            }
        }
    }
}
