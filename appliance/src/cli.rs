//! The command line: clap definitions (also the source of the completions and the man page).

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Exit codes, documented in the man page and the README.
pub mod exit {
    /// Success (for `whatif`, whatever the decision).
    pub const OK: u8 = 0;
    /// A failure not covered below.
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap).
    pub const USAGE: u8 = 2;
    /// A configuration is invalid (check, apply, run).
    pub const INVALID_CONFIG: u8 = 3;
    /// The daemon is not running or its socket is not reachable.
    pub const UNREACHABLE: u8 = 4;
    /// The daemon refused the request.
    pub const REFUSED: u8 = 5;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success · 1 failure · 2 usage error · 3 invalid configuration · \
4 daemon not reachable · 5 request refused by the daemon.";

/// attestgate — attested device compliance gateway.
///
/// Terminates MASQUE relay tunnels from managed Apple devices, decides at every request whether
/// the device is genuine, enrolled, compliant and threat-free, and sends its traffic out through
/// a trusted egress (an IPsec tunnel or a dedicated address pair) or the untrusted public one.
#[derive(Debug, Parser)]
#[command(name = "attestgate", version, propagate_version = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// Configuration file.
    #[arg(short, long, global = true, env = "ATTESTGATE_CONFIG", default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Control socket (default: `appliance.control_socket` of the configuration).
    #[arg(long, global = true, env = "ATTESTGATE_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon in the foreground (systemd: Type=simple). SIGHUP reloads, SIGTERM stops.
    Run {
        /// Log filter, overriding `[logging] level` and RUST_LOG (e.g. `debug`).
        #[arg(long)]
        log_level: Option<String>,
        /// Log format, overriding `[logging] format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Show the daemon's state: configuration, egresses, compliance sources.
    Status,
    /// Check or apply configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Explain the decision for a device and a target, from the live daemon or from state given here.
    Whatif(WhatifArgs),
    /// List the devices the compliance sources know: compliant or not and why.
    Devices(DevicesArgs),
    /// Show one device (every fact with its source and age, and the verdict) or override it.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The built-in device CA (`[acme]`): list the certificates it issued, revoke a device's
    /// certificates (the relay refuses them from the next request and closes the device's
    /// connections at once).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Re-read every compliance source now and re-decide the open flows.
    Sync,
    /// List the relayed flows: device, target, egress, bytes each way, age.
    Flows,
    /// Show the IPsec tunnels: IKE and child SAs, algorithms, selectors, rekeys, last liveness check.
    Tunnels,
    /// Bring a tunnel up or down, or rekey its child SAs now.
    Tunnel {
        #[arg(value_enum)]
        action: TunnelAction,
        /// The tunnel egress's name.
        name: String,
    },
    /// Update the appliance image: write a signed bundle into the other slot, or show the
    /// slots and boot entries (on the appliance; A/B with boot counting and fallback).
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Write the configuration profile an admin uploads to the MDM (Jamf Pro, Intune): an ACME
    /// payload that gets each device an attested certificate from this appliance, and a relay
    /// payload that sends the policed apps' domains through the relay with it. Offline: reads
    /// the configuration file only (`[enroll] public_name` is required).
    Profile(ProfileArgs),
    /// Keep the identity provider's trusted location equal to the trusted egress addresses,
    /// and check that its policies treat them as intended.
    #[command(subcommand)]
    Idp(IdpCommand),
    /// Print the version.
    Version,
    /// Print shell completions.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (or write one page per command into a directory).
    Man {
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate configuration files (default: the configured one) and print every problem.
    ///
    /// Files the configuration refers to but which do not exist on this host are warnings,
    /// since a file may be checked away from the appliance; `--strict` makes them errors, as
    /// `run` and `apply` do.
    Check {
        /// Files to check.
        files: Vec<PathBuf>,
        /// Treat missing referenced files as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Validate a file and make it the running configuration atomically (installing it as the
    /// daemon's configuration file when FILE is given). An invalid file changes nothing.
    Apply { file: Option<PathBuf> },
}

#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Verify BUNDLE (attestgate-update.tar from `image build`, a file or a block device
    /// holding it) against the appliance's update keys, write it into the slot that is not
    /// running and make it the next boot with a boot counter. If the new version does not get
    /// healthy within TRIES boots, the appliance falls back to the running version by itself.
    Apply {
        bundle: PathBuf,
        /// Boot attempts the new version gets (1-9).
        #[arg(long, default_value_t = 3)]
        tries: u32,
        /// Reboot into the new version when written.
        #[arg(long)]
        reboot: bool,
    },
    /// The running slot and version, and the boot entries with their state and tries.
    Status,
    /// Mark the running slot good (legacy BIOS; UEFI boots are blessed by
    /// systemd-bless-boot). Run by attestgate-boot-check after a good boot.
    #[command(hide = true)]
    MarkGood,
}

#[derive(Debug, Subcommand)]
pub enum IdpCommand {
    /// Microsoft Entra ID through Microsoft Graph (`[idp.entra]`).
    #[command(subcommand)]
    Entra(EntraCommand),
}

#[derive(Debug, Subcommand)]
pub enum EntraCommand {
    /// Create or update the trusted IP named location so that it holds exactly the trusted
    /// egress addresses (every internet egress's source addresses and `extra_addresses`, as
    /// /32 and /128), and print what changed. Nothing is written when it already does.
    Sync {
        /// Show what would change without writing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Read the Conditional Access policies and evaluate a sign-in from a trusted and from an
    /// untrusted address; exit 1 with an explanation unless the untrusted one is blocked or
    /// needs a managed device while the trusted one does not. This is attestgate's reading of
    /// the policy documents, not Entra's own What If evaluation.
    Check {
        /// The trusted address to evaluate (default: the first trusted egress address).
        #[arg(long)]
        trusted: Option<std::net::IpAddr>,
        /// The untrusted address to evaluate (default: the public egress's source address, or a
        /// documentation address no named location holds).
        #[arg(long)]
        untrusted: Option<std::net::IpAddr>,
    },
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// `mobileconfig`: one XML property list; `declarative`: declarative device management
    /// declarations (relay configuration, ACME credential asset and the asset's data), one JSON
    /// file each, written into the directory `--out`.
    #[arg(long, value_enum, default_value = "mobileconfig")]
    pub format: ProfileFormat,
    /// Output file (mobileconfig; default: standard output) or directory (declarative,
    /// required). Written atomically: on failure nothing is left behind.
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// The MDM, which decides the serial-number variable in ClientIdentifier and Subject:
    /// jamf → `$SERIALNUMBER`, intune → `{{serialnumber}}`.
    #[arg(long, value_enum, default_value = "jamf")]
    pub mdm: MdmArg,
    /// The device key's curve: P-256 or P-384 (hardware-bound keys support only these).
    #[arg(long, value_enum, default_value = "256")]
    pub key_size: KeySizeArg,
    /// PayloadOrganization and the O of the requested subject (default: `[appliance] name`).
    #[arg(long, value_name = "NAME")]
    pub organization: Option<String>,
    /// Pin the relay's public key (RawPublicKeys: the SPKI of `[relay] certificate`), so devices
    /// accept no other key for the relay. mobileconfig only.
    #[arg(long)]
    pub pin: bool,
    /// Sign the profile (CMS SignedData, DER) with this certificate (PEM; further certificates
    /// in the file are included as the chain). Needs `openssl`. mobileconfig only.
    #[arg(long, value_name = "PEM", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
    /// The signing certificate's private key (PEM). A passphrase is read from
    /// ATTESTGATE_SIGN_KEY_PASSWORD.
    #[arg(long, value_name = "PEM", requires = "sign_cert")]
    pub sign_key: Option<PathBuf>,
    /// (declarative) The https URL the ACME credential document (acme-credential.json) is
    /// served at, normally by the MDM so it fills in the serial number per device.
    #[arg(long, value_name = "URL")]
    pub asset_url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileFormat {
    Mobileconfig,
    Declarative,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum MdmArg {
    Jamf,
    Intune,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeySizeArg {
    #[value(name = "256")]
    P256,
    #[value(name = "384")]
    P384,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Only devices that are not compliant.
    #[arg(long)]
    pub noncompliant: bool,
    /// Only devices in this MDM group.
    #[arg(long)]
    pub group: Option<String>,
    /// Only devices this source says something about (a source name, `override`, `risk-feed`).
    #[arg(long)]
    pub source: Option<String>,
    /// Only devices at this risk level or worse: secure, low, medium, high.
    #[arg(long)]
    pub risk: Option<config::RiskLevel>,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Every fact about a device with its source and age, its overrides, and whether it is
    /// compliant (and why not).
    Show { serial: String },
    /// Block a device: out of every compliant group, risk high, until the expiry or `unblock`.
    /// Persisted across restarts; shown as the source `override`.
    Block {
        serial: String,
        #[command(flatten)]
        expiry: Expiry,
        /// Why (shown in `device show` and the event).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Set a device's risk level until the expiry or `clear`. Overrides only tighten: the worst
    /// of every source's risk counts.
    Risk {
        serial: String,
        level: config::RiskLevel,
        #[command(flatten)]
        expiry: Expiry,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove a device's block.
    Unblock { serial: String },
    /// Remove every override of a device (block and risk).
    Clear { serial: String },
}

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// The certificates the built-in device CA issued and that have not expired: serial,
    /// device, notAfter, revocation.
    List,
    /// Revoke every certificate of a device, or one certificate. Takes effect at once: the
    /// relay refuses the certificate from the next request, and the device's open flows and
    /// connections are closed.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["device", "certificate"])))]
    Revoke {
        /// The device identifier (serial) the certificates were issued for.
        #[arg(long)]
        device: Option<String>,
        /// One certificate's serial number, hex (colons allowed), as `ca list` shows it.
        #[arg(long, value_name = "HEXSERIAL")]
        certificate: Option<String>,
        /// Why (recorded with the revocation and in the event).
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct Expiry {
    /// The override lapses after this long, e.g. 30m, 4h, 2d (default: until removed).
    #[arg(long = "for", value_parser = parse_duration, conflicts_with = "until", value_name = "DURATION")]
    pub for_: Option<std::time::Duration>,
    /// The override lapses at this time: RFC 3339 (2026-11-27T18:00:00Z) or unix seconds.
    #[arg(long, value_parser = crate::timefmt::parse_time, value_name = "TIME")]
    pub until: Option<i64>,
}

impl Expiry {
    /// Unix seconds, if any.
    pub fn until(&self, now: std::time::SystemTime) -> Option<i64> {
        self.until.or_else(|| {
            // rounded up to the next second, so that the override lasts at least as long
            let end = now.checked_add(self.for_?)?;
            let secs = crate::timefmt::unix(end);
            let partial = end
                .duration_since(std::time::UNIX_EPOCH)
                .is_ok_and(|d| d.subsec_nanos() > 0);
            Some(secs.saturating_add(i64::from(partial)))
        })
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TunnelAction {
    Up,
    Down,
    Rekey,
}

impl TunnelAction {
    pub fn as_str(self) -> &'static str {
        match self {
            TunnelAction::Up => "up",
            TunnelAction::Down => "down",
            TunnelAction::Rekey => "rekey",
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct WhatifArgs {
    /// Device serial number.
    #[arg(long)]
    pub device: String,
    /// Destination as HOST:PORT or [IPv6]:PORT.
    #[arg(long)]
    pub target: String,
    /// Decide a connect-udp flow instead of a TCP CONNECT.
    #[arg(long)]
    pub udp: bool,
    /// Decide offline from the configuration file and the state given here, without the daemon.
    /// Implied by any of the state options below.
    #[arg(long)]
    pub offline: bool,
    /// (offline) The device is unknown to every compliance source.
    #[arg(long, conflicts_with_all = ["managed", "groups", "risk", "age"])]
    pub unknown: bool,
    /// (offline) Whether the MDM manages the device.
    #[arg(long, value_name = "BOOL")]
    pub managed: Option<bool>,
    /// (offline) The device's MDM groups, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "GROUP,…")]
    pub groups: Option<Vec<String>>,
    /// (offline) Risk level: secure, low, medium, high.
    #[arg(long)]
    pub risk: Option<config::RiskLevel>,
    /// (offline) Age of the compliance data, e.g. 30s, 20m.
    #[arg(long, value_parser = parse_duration)]
    pub age: Option<std::time::Duration>,
    /// (offline) The device certificate expires in this long (negative: write `--cert-expired`).
    #[arg(long, value_parser = parse_duration, conflicts_with = "cert_expired")]
    pub cert_expires_in: Option<std::time::Duration>,
    /// (offline) The device certificate has expired.
    #[arg(long)]
    pub cert_expired: bool,
}

impl WhatifArgs {
    pub fn is_offline(&self) -> bool {
        self.offline
            || self.unknown
            || self.managed.is_some()
            || self.groups.is_some()
            || self.risk.is_some()
            || self.age.is_some()
            || self.cert_expires_in.is_some()
            || self.cert_expired
    }
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    config::units::parse_duration(s)
}
