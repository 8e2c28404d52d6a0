//! Invalid configurations. Each test takes a small valid configuration ([`base`]), makes one
//! mistake in it (or, once, three), and asserts exactly what is reported: severity,
//! line:column, key path, message and, where the loader offers them, `help` and `expected`.
//!
//! Positions are computed from the text the test wrote (see [`at`]), never hard-coded.

use config::{load_str, ConfigError, Diagnostic, Diagnostics, FileChecks, Loaded, Severity};
use std::path::Path;

const ORIGIN: &str = "test.toml";

/// A minimal valid configuration: a relay, a tunnel egress, an internet egress, two apps,
/// compliance with compliant groups and a file source, two policies. Relative paths are
/// resolved from the base directory given to `load_str` (see [`lab_files`]).
fn base() -> String {
    r#"[relay]
http3_listen = ["198.51.100.1:443"]
http2_listen = ["198.51.100.1:443"]
certificate = "relay.crt"
private_key = "relay.key"
device_ca = ["device-ca.crt"]

[relay.limits]
connection_idle_timeout = "10m"
keepalive_interval = "25s"

[egress.corp]
type = "tunnel"
local_address = "203.0.113.10"
remote_address = "203.0.113.20"
local_id = "gw.example.net"
remote_id = "vpn.example.net"
psk_file = "corp.psk"
ike_proposals = ["aes256gcm16-prfsha256-ecp256"]
esp_proposals = ["aes256gcm16"]
local_ts = ["198.18.100.0/24"]
remote_ts = ["198.19.0.0/24"]
nat_pool = "198.18.100.0/26"
mtu = 1400
dpd_interval = "10s"

[egress.idp-pair]
type = "internet"
source_addresses = ["203.0.113.30", "203.0.113.31"]

[apps.corp]
hosts = ["*.corp.example"]
cidrs = ["198.19.0.0/24"]

[apps.idp]
hosts = ["idp.example", "*.idp.example"]
ports = [443]

[compliance]
max_age = "15m"
refresh_interval = "1m"
compliant_groups = ["Compliant Macs"]

[compliance.sources.devices]
type = "file"
path = "devices.toml"

[[policy]]
name = "corp-apps"
apps = ["corp"]
egress = "corp"
fallback = "deny"

[[policy]]
name = "idp-sign-in"
apps = ["idp"]
max_risk = "medium"
egress = "idp-pair"
fallback = "public"

[defaults]
egress = "public"
fallback = "public"
deny_status = 502

[logging]
level = "info"
format = "text"
"#
    .to_string()
}

/// A second tunnel, appended as its own `[egress.NAME]` table.
fn second_tunnel(name: &str, remote: &str, local_ts: &str, nat_pool: &str) -> String {
    format!(
        r#"
[egress.{name}]
type = "tunnel"
local_address = "203.0.113.10"
remote_address = "{remote}"
psk_file = "{name}.psk"
local_ts = ["{local_ts}"]
remote_ts = ["198.19.1.0/24"]
nat_pool = "{nat_pool}"
"#
    )
}

// ---- text helpers --------------------------------------------------------------------------

/// `text` with `from`, which must occur exactly once, replaced by `to`.
fn replace(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "`{from}` must occur exactly once in:\n{text}"
    );
    text.replacen(from, to, 1)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// Where `needle` starts inside `context`, which must occur exactly once in `text`
/// (`context` may span lines; it only makes the place unambiguous).
fn at(text: &str, context: &str, needle: &str) -> (usize, usize) {
    assert_eq!(
        text.matches(context).count(),
        1,
        "`{context}` must occur exactly once in:\n{text}"
    );
    let start = text.find(context).unwrap_or_default();
    let Some(inner) = context.find(needle) else {
        panic!("`{needle}` is not in `{context}`")
    };
    line_col(text, start + inner)
}

/// Where `marker`, which must occur exactly once in `text`, starts.
fn pos(text: &str, marker: &str) -> (usize, usize) {
    at(text, marker, marker)
}

// ---- loading -------------------------------------------------------------------------------

fn load(text: &str, base: &Path, files: FileChecks) -> Result<Loaded, ConfigError> {
    load_str(text, Path::new(ORIGIN), base, files)
}

/// The diagnostics of a configuration that must be refused.
fn refused_with(text: &str, base: &Path, files: FileChecks) -> Diagnostics {
    match load(text, base, files) {
        Err(ConfigError::Invalid(d)) => d,
        Err(e) => panic!("unexpected error: {e}"),
        Ok(l) => panic!(
            "accepted, but it should be refused; warnings:\n{}\n--- configuration ---\n{text}",
            l.warnings
        ),
    }
}

/// The diagnostics of a configuration that must be refused, files not looked at.
fn refused(text: &str) -> Diagnostics {
    refused_with(text, Path::new("/"), FileChecks::Skip)
}

/// A configuration that must be accepted (with the warnings it produced).
fn accepted_with(text: &str, base: &Path, files: FileChecks) -> Loaded {
    match load(text, base, files) {
        Ok(l) => l,
        Err(e) => panic!("refused, but it should load:\n{e}\n--- configuration ---\n{text}"),
    }
}

/// The files [`base`] names, in a fresh directory: public ones 0644, secret ones 0600.
#[cfg(unix)]
fn lab_files() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    for (name, mode) in [
        ("relay.crt", 0o644),
        ("relay.key", 0o600),
        ("device-ca.crt", 0o644),
        ("corp.psk", 0o600),
        ("devices.toml", 0o644),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, "test\n").unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    dir
}

// ---- expectations --------------------------------------------------------------------------

/// One expected diagnostic. `help` is compared exactly (`None`: there must be none);
/// `message` and `expected` are substrings (`expected: None`: not checked).
#[derive(Debug)]
struct Want {
    severity: Severity,
    at: (usize, usize),
    path: String,
    message: String,
    expected: Option<String>,
    help: Option<String>,
}

fn error(at: (usize, usize), path: &str, message: &str) -> Want {
    Want {
        severity: Severity::Error,
        at,
        path: path.to_string(),
        message: message.to_string(),
        expected: None,
        help: None,
    }
}

fn warning(at: (usize, usize), path: &str, message: &str) -> Want {
    Want {
        severity: Severity::Warning,
        ..error(at, path, message)
    }
}

impl Want {
    fn help(mut self, help: &str) -> Self {
        self.help = Some(help.to_string());
        self
    }
    fn expected(mut self, expected: &str) -> Self {
        self.expected = Some(expected.to_string());
        self
    }
}

fn matches(got: &Diagnostic, want: &Want) -> Result<(), String> {
    let mut wrong = Vec::new();
    if got.severity != want.severity {
        wrong.push(format!(
            "severity {:?} != {:?}",
            got.severity, want.severity
        ));
    }
    if (got.line, got.column) != want.at {
        wrong.push(format!(
            "position {}:{} != {}:{}",
            got.line, got.column, want.at.0, want.at.1
        ));
    }
    if got.path != want.path {
        wrong.push(format!("path `{}` != `{}`", got.path, want.path));
    }
    if !got.message.contains(&want.message) {
        wrong.push(format!("message does not contain `{}`", want.message));
    }
    if let Some(expected) = &want.expected {
        if !got
            .expected
            .as_deref()
            .unwrap_or("")
            .contains(expected.as_str())
        {
            wrong.push(format!("expected does not contain `{expected}`"));
        }
    }
    if got.help != want.help {
        wrong.push(format!("help {:?} != {:?}", got.help, want.help));
    }
    if got.file != Path::new(ORIGIN) {
        wrong.push(format!("file {} != {ORIGIN}", got.file.display()));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Asserts that `got` is exactly `want`, in order (diagnostics are sorted by position).
fn check(got: &Diagnostics, want: &[Want]) {
    assert_eq!(
        got.0.len(),
        want.len(),
        "expected {} diagnostic(s), got:\n{got}\n{:#?}",
        want.len(),
        got.0
    );
    for (i, (g, w)) in got.0.iter().zip(want).enumerate() {
        if let Err(why) = matches(g, w) {
            panic!("diagnostic #{i}: {why}\n  got:  {g:?}\n  want: {w:?}\nall:\n{got}");
        }
    }
}

// ---- the base itself -----------------------------------------------------------------------

#[test]
fn base_is_valid_without_any_finding() {
    let l = accepted_with(&base(), Path::new("/"), FileChecks::Skip);
    assert!(l.warnings.0.is_empty(), "{}", l.warnings);
}

#[cfg(unix)]
#[test]
fn base_is_valid_with_strict_file_checks() {
    let dir = lab_files();
    let l = accepted_with(&base(), dir.path(), FileChecks::Strict);
    assert!(l.warnings.0.is_empty(), "{}", l.warnings);
}

// ---- keys ----------------------------------------------------------------------------------

#[test]
fn unknown_top_level_key_suggests_egress() {
    let t = base() + "\n[egres.spare]\ntype = \"public\"\n";
    check(
        &refused(&t),
        &[error(at(&t, "[egres.spare]", "egres"), "egres", "unknown key")
            .expected("one of: appliance, relay, egress, apps, compliance, policy, defaults, events, logging")
            .help("did you mean `egress`?")],
    );
}

#[test]
fn unknown_key_in_tunnel_suggests_nat_pool() {
    let t = replace(&base(), "nat_pool = ", "nat_pol = ");
    check(
        &refused(&t),
        &[
            // renaming the key also leaves the required one missing, reported at the table
            error(
                pos(&t, "[egress.corp]"),
                "egress.corp.nat_pool",
                "required key is missing",
            )
            .help("add `nat_pool = …` to [egress.corp]"),
            error(pos(&t, "nat_pol ="), "egress.corp.nat_pol", "unknown key")
                .expected("one of: type, dns, hosts, local_address")
                .help("did you mean `nat_pool`?"),
        ],
    );
}

#[test]
fn unknown_key_in_policy_suggests_fallback() {
    let t = replace(&base(), "fallback = \"deny\"", "fallbak = \"deny\"");
    check(
        &refused(&t),
        &[
            error(pos(&t, "fallbak"), "policy[0].fallbak", "unknown key")
                .expected(
                    "one of: name, description, apps, groups, managed, max_risk, egress, fallback",
                )
                .help("did you mean `fallback`?"),
        ],
    );
}

#[test]
fn missing_relay_certificate() {
    let t = replace(&base(), "certificate = \"relay.crt\"\n", "");
    check(
        &refused(&t),
        &[error(
            pos(&t, "[relay]\n"),
            "relay.certificate",
            "required key is missing",
        )
        .expected("a file path")
        .help("add `certificate = …` to [relay]")],
    );
}

#[test]
fn egress_without_type() {
    let t = replace(&base(), "type = \"internet\"\n", "");
    check(
        &refused(&t),
        &[error(
            pos(&t, "[egress.idp-pair]"),
            "egress.idp-pair.type",
            "required key is missing",
        )
        .expected("type = \"tunnel\", \"internet\" or \"public\"")],
    );
}

// ---- types and ranges ----------------------------------------------------------------------

#[test]
fn mtu_of_the_wrong_type() {
    let t = replace(&base(), "mtu = 1400", "mtu = \"big\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"big\""),
            "egress.corp.mtu",
            "expected an integer from 576 to 9000, found a string",
        )
        .expected("an integer from 576 to 9000")],
    );
}

#[test]
fn mtu_out_of_range() {
    let t = replace(&base(), "mtu = 1400", "mtu = 100");
    check(
        &refused(&t),
        &[error(
            at(&t, "mtu = 100", "100"),
            "egress.corp.mtu",
            "100 is out of range",
        )
        .expected("an integer from 576 to 9000")],
    );
}

#[test]
fn fragment_size_out_of_range() {
    let t = replace(&base(), "mtu = 1400", "mtu = 1400\nfragment_size = 200");
    check(
        &refused(&t),
        &[error(
            at(&t, "fragment_size = 200", "200"),
            "egress.corp.fragment_size",
            "200 is out of range",
        )
        .expected("an integer from 576 to 9000")],
    );
}

#[test]
fn deny_status_that_is_no_deny_status() {
    let t = replace(&base(), "deny_status = 502", "deny_status = 404");
    check(
        &refused(&t),
        &[error(
            at(&t, "deny_status = 404", "404"),
            "defaults.deny_status",
            "404 is not a deny status",
        )
        .expected("403, or 502")],
    );
}

#[test]
fn nat_mode_typo_suggests_per_device() {
    let t = replace(
        &base(),
        "mtu = 1400",
        "nat_mode = \"per_device\"\nmtu = 1400",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"per_device\""),
            "egress.corp.nat_mode",
            "`per_device` is not a valid value",
        )
        .expected("one of: per-device, shared")
        .help("did you mean `per-device`?")],
    );
}

#[test]
fn identity_source_typo_suggests_apple_serial() {
    let t = replace(
        &base(),
        "device_ca = [\"device-ca.crt\"]",
        "device_ca = [\"device-ca.crt\"]\nidentity = [\"permanent-identifier\", \"apple_serial\"]",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"apple_serial\""),
            "relay.identity[1]",
            "`apple_serial` is not a valid value",
        )
        .expected("one of: permanent-identifier, apple-serial, subject-cn, subject-serial")
        .help("did you mean `apple-serial`?")],
    );
}

#[test]
fn max_risk_that_is_no_risk_level() {
    let t = replace(&base(), "max_risk = \"medium\"", "max_risk = \"critical\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"critical\""),
            "policy[1].max_risk",
            "`critical` is not a valid value",
        )
        .expected("one of: secure, low, medium, high")],
    );
}

// ---- addresses -----------------------------------------------------------------------------

#[test]
fn cidr_prefix_longer_than_32() {
    let t = replace(&base(), "\"198.18.100.0/24\"", "\"198.18.100.0/33\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"198.18.100.0/33\""),
            "egress.corp.local_ts[0]",
            "`198.18.100.0/33` is not a valid CIDR",
        )
        .expected("an address with a prefix length")
        .help("an IPv4 prefix length is at most 32")],
    );
}

#[test]
fn cidr_with_host_bits_suggests_the_network() {
    let t = replace(
        &base(),
        "cidrs = [\"198.19.0.0/24\"]",
        "cidrs = [\"198.19.0.1/24\"]",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"198.19.0.1/24\""),
            "apps.corp.cidrs[0]",
            "`198.19.0.1/24` has host bits set",
        )
        .expected("a network address")
        .help("did you mean `198.19.0.0/24`?")],
    );
}

#[test]
fn bad_ip_address_in_a_list() {
    let t = replace(&base(), "\"203.0.113.31\"", "\"203.0.113.310\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"203.0.113.310\""),
            "egress.idp-pair.source_addresses[1]",
            "`203.0.113.310`: not an IP address",
        )
        .expected("an IPv4 or IPv6 address such as 203.0.113.10")],
    );
}

#[test]
fn bad_tunnel_peer_address_is_the_only_finding() {
    // The tunnel cannot be built without its peer; the policy naming it must not be reported
    // as naming an unknown egress on top.
    let t = replace(
        &base(),
        "remote_address = \"203.0.113.20\"",
        "remote_address = \"203.0.113\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"203.0.113\""),
            "egress.corp.remote_address",
            "`203.0.113`: not an IP address",
        )
        .expected("an IPv4 or IPv6 address")],
    );
}

#[test]
fn source_address_listed_twice() {
    let t = replace(&base(), "\"203.0.113.31\"", "\"203.0.113.30\"");
    check(
        &refused(&t),
        &[error(
            at(&t, ", \"203.0.113.30\"]", "\"203.0.113.30\""),
            "egress.idp-pair.source_addresses",
            "203.0.113.30 is listed twice",
        )],
    );
}

#[test]
fn internet_source_address_inside_a_nat_pool() {
    let t = replace(&base(), "\"203.0.113.31\"", "\"198.18.100.5\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"198.18.100.5\""),
            "egress.idp-pair.source_addresses",
            "198.18.100.5 lies in the NAT pool of tunnel `corp`",
        )],
    );
}

// ---- durations -----------------------------------------------------------------------------

#[test]
fn duration_with_an_unknown_unit() {
    let t = replace(
        &base(),
        "dpd_interval = \"10s\"",
        "dpd_interval = \"10sec\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"10sec\""),
            "egress.corp.dpd_interval",
            "`10sec`: unknown unit `sec` (use ms, s, m, h or d)",
        )
        .expected("a duration such as \"30s\"")],
    );
}

#[test]
fn duration_as_a_bare_number() {
    let t = replace(
        &base(),
        "connection_idle_timeout = \"10m\"",
        "connection_idle_timeout = 600",
    );
    check(
        &refused(&t),
        &[error(
            at(&t, "connection_idle_timeout = 600", "600"),
            "relay.limits.connection_idle_timeout",
            "a bare number is ambiguous (600)",
        )
        .expected("a duration such as \"30s\"")
        .help("write `connection_idle_timeout = \"600s\"`")],
    );
}

#[test]
fn keepalive_not_shorter_than_the_idle_timeout() {
    let t = replace(
        &base(),
        "keepalive_interval = \"25s\"",
        "keepalive_interval = \"10m\"",
    );
    check(
        &refused(&t),
        &[error(
            at(&t, "keepalive_interval = \"10m\"", "\"10m\""),
            "relay.limits.keepalive_interval",
            "keepalives must come more often than the idle timeout",
        )
        .expected("less than connection_idle_timeout (10m)")],
    );
}

#[test]
fn ike_lifetime_too_short_to_rekey() {
    let t = replace(&base(), "mtu = 1400", "mtu = 1400\nike_lifetime = \"1m\"");
    check(
        &refused(&t),
        &[
            // child_lifetime is not written: its default (1h) now outlives the IKE SA
            warning(
                pos(&t, "[egress.corp]"),
                "egress.corp.child_lifetime",
                "is longer than ike_lifetime",
            ),
            error(
                at(&t, "ike_lifetime = \"1m\"", "\"1m\""),
                "egress.corp.ike_lifetime",
                "1m is too short to rekey safely",
            )
            .expected("at least 5m"),
        ],
    );
}

#[test]
fn refresh_interval_not_shorter_than_max_age() {
    let t = replace(
        &base(),
        "refresh_interval = \"1m\"",
        "refresh_interval = \"15m\"",
    );
    check(
        &refused(&t),
        &[error(
            at(&t, "refresh_interval = \"15m\"", "\"15m\""),
            "compliance.refresh_interval",
            "refreshing every 15m lets data pass max_age (15m)",
        )
        .expected("a refresh_interval shorter than max_age")],
    );
}

// ---- IKE -----------------------------------------------------------------------------------

#[test]
fn ike_proposal_typo_suggests_ecp256() {
    let t = replace(&base(), "-ecp256\"", "-ecp265\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"aes256gcm16-prfsha256-ecp265\""),
            "egress.corp.ike_proposals",
            "IKE proposal `aes256gcm16-prfsha256-ecp265`: unknown algorithm `ecp265` (did you mean `ecp256`?)",
        )
        .expected("strongSwan proposal syntax")],
    );
}

#[test]
fn weak_ike_proposal_is_refused() {
    let t = replace(
        &base(),
        "\"aes256gcm16-prfsha256-ecp256\"",
        "\"aes256gcm16-prfsha256-ecp256\", \"3des-sha1-modp1024\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"3des-sha1-modp1024\""),
            "egress.corp.ike_proposals[1]",
            "IKE proposal `3des-sha1-modp1024`: `3des` is not supported: 3DES is obsolete",
        )
        .expected("strongSwan proposal syntax")],
    );
}

#[test]
fn aead_ike_proposal_without_prf() {
    let t = replace(
        &base(),
        "\"aes256gcm16-prfsha256-ecp256\"",
        "\"aes256gcm16-ecp256\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"aes256gcm16-ecp256\""),
            "egress.corp.ike_proposals",
            "IKE proposal `aes256gcm16-ecp256`: an AEAD IKE proposal needs a PRF (add e.g. prfsha256)",
        )],
    );
}

#[test]
fn esp_proposal_with_integrity_and_aead() {
    let t = replace(
        &base(),
        "esp_proposals = [\"aes256gcm16\"]",
        "esp_proposals = [\"aes256gcm16-sha256\"]",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"aes256gcm16-sha256\""),
            "egress.corp.esp_proposals",
            "ESP proposal `aes256gcm16-sha256`: an AEAD cipher takes no integrity algorithm in an ESP proposal; remove `sha256`",
        )
        .expected("\"aes256gcm16\" or \"aes128-sha256-modp2048\"")],
    );
}

#[test]
fn bad_ike_identity() {
    let t = replace(
        &base(),
        "remote_id = \"vpn.example.net\"",
        "remote_id = \"vpn example net\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"vpn example net\""),
            "egress.corp.remote_id",
            "`vpn example net` is not a valid FQDN",
        )
        .expected("an IKE identity")],
    );
}

#[test]
fn psk_and_certificate_both_configured() {
    let t = replace(
        &base(),
        "psk_file = \"corp.psk\"\n",
        "psk_file = \"corp.psk\"\ncertificate = \"corp.crt\"\nprivate_key = \"corp.key\"\npeer_ca = [\"corp-ca.crt\"]\n",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "[egress.corp]"),
            "egress.corp",
            "both a PSK and a certificate are configured",
        )
        .expected("psk_file, or certificate + private_key + peer_ca, not both")],
    );
}

// ---- tunnels and their addresses -----------------------------------------------------------

#[test]
fn overlapping_nat_pools_of_two_tunnels() {
    let t = base() + &second_tunnel("lab", "203.0.113.21", "198.18.100.0/24", "198.18.100.32/27");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"198.18.100.32/27\""),
            "egress.lab.nat_pool",
            "NAT pool 198.18.100.32/27 overlaps 198.18.100.0/26 of tunnel `corp`",
        )
        .expected("NAT pools that do not overlap")],
    );
}

#[test]
fn nat_pool_outside_the_local_traffic_selectors() {
    let t = replace(
        &base(),
        "nat_pool = \"198.18.100.0/26\"",
        "nat_pool = \"198.18.200.0/26\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"198.18.200.0/26\""),
            "egress.corp.nat_pool",
            "NAT pool 198.18.200.0/26 lies outside the local traffic selectors (198.18.100.0/24)",
        )
        .expected("a subnet inside one of local_ts")],
    );
}

#[test]
fn local_ts_overlapping_remote_ts() {
    let t = replace(
        &base(),
        "remote_ts = [\"198.19.0.0/24\"]",
        "remote_ts = [\"198.18.0.0/16\"]",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"198.18.0.0/16\""),
            "egress.corp.remote_ts",
            "remote traffic selector 198.18.0.0/16 overlaps the local one 198.18.100.0/24",
        )
        .expected("local and remote subnets that do not overlap")],
    );
}

#[test]
fn two_tunnels_to_the_same_peer() {
    let t = base() + &second_tunnel("lab", "203.0.113.20", "198.18.101.0/24", "198.18.101.0/26");
    check(
        &refused(&t),
        &[error(
            at(
                &t,
                "remote_address = \"203.0.113.20\"\npsk_file = \"lab.psk\"",
                "\"203.0.113.20\"",
            ),
            "egress.lab.remote_address",
            "peer 203.0.113.20 is already the peer of tunnel `corp`",
        )
        .help("one IKE SA per peer: put both subnets in the traffic selectors of one tunnel")],
    );
}

// ---- names and references ------------------------------------------------------------------

#[test]
fn egress_named_deny_is_reserved() {
    let t = base() + "\n[egress.deny]\ntype = \"public\"\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "[egress.deny]", "deny"),
            "egress.deny",
            "`deny` is a built-in outcome, not an egress name",
        )
        .help("policies can name `deny` and `direct` without defining them; pick another name")],
    );
}

#[test]
fn uppercase_egress_name() {
    let t = base() + "\n[egress.Spare]\ntype = \"public\"\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "[egress.Spare]", "Spare"),
            "egress.Spare",
            "`Spare` is not a valid name: use 1 to 32 of a-z, 0-9",
        )
        .expected("a name such as `corp` or `idp-pair`")],
    );
}

#[test]
fn policy_naming_an_unknown_egress_suggests_one() {
    let t = replace(&base(), "egress = \"corp\"", "egress = \"crop\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"crop\""),
            "policy[0].egress",
            "unknown egress `crop`",
        )
        .expected("one of: corp, idp-pair, public, deny, direct")
        .help("did you mean `corp`?")],
    );
}

#[test]
fn policy_naming_an_unknown_app_suggests_one() {
    let t = replace(&base(), "apps = [\"corp\"]", "apps = [\"copr\"]");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"copr\""),
            "policy[0].apps[0]",
            "unknown app `copr`",
        )
        .expected("one of: corp, idp")
        .help("did you mean `corp`?")],
    );
}

#[test]
fn fallback_that_is_a_trusted_egress() {
    let t = replace(&base(), "fallback = \"deny\"", "fallback = \"idp-pair\"");
    check(
        &refused(&t),
        &[error(
            at(&t, "fallback = \"idp-pair\"", "\"idp-pair\""),
            "policy[0].fallback",
            "`idp-pair` is a trusted egress; the fallback is for devices that failed the policy",
        )
        .expected("an untrusted outcome: public, deny, direct")],
    );
}

#[test]
fn default_egress_that_is_trusted() {
    let t = replace(&base(), "egress = \"public\"", "egress = \"corp\"");
    check(
        &refused(&t),
        &[error(
            at(&t, "[defaults]\negress = \"corp\"", "\"corp\""),
            "defaults.egress",
            "`corp` is a trusted egress; a default must never hand out trusted addresses",
        )
        .expected("an untrusted outcome: public, deny, direct")],
    );
}

#[test]
fn unmanaged_devices_sent_to_a_trusted_egress() {
    let t = replace(
        &base(),
        "apps = [\"corp\"]\n",
        "apps = [\"corp\"]\nmanaged = false\n",
    );
    check(
        &refused(&t),
        &[error(
            at(&t, "managed = false", "false"),
            "policy[0].managed",
            "policy `corp-apps` sends unmanaged devices to the trusted egress `corp`",
        )
        .expected("managed = true for a trusted egress")
        .help("remove `managed = false`, or name an untrusted egress")],
    );
}

#[test]
fn duplicate_policy_names() {
    let t = replace(&base(), "name = \"idp-sign-in\"", "name = \"corp-apps\"");
    check(
        &refused(&t),
        &[error(
            at(
                &t,
                "name = \"corp-apps\"\napps = [\"idp\"]",
                "\"corp-apps\"",
            ),
            "policy[1].name",
            "policy name `corp-apps` is used twice",
        )
        .help("policy names appear in decisions and logs; make each unique")],
    );
}

#[test]
fn policy_paths_count_the_policies_of_the_file() {
    // policy[0] is refused (its fallback is not a string), so the model holds only the
    // second one; what is found in it must still be reported as policy[1].
    let t = replace(&base(), "fallback = \"deny\"", "fallback = 5");
    let t = replace(&t, "egress = \"idp-pair\"", "egress = \"idp-pear\"");
    check(
        &refused(&t),
        &[
            error(
                at(&t, "fallback = 5", "5"),
                "policy[0].fallback",
                "expected a string, found an integer",
            ),
            error(
                pos(&t, "\"idp-pear\""),
                "policy[1].egress",
                "unknown egress `idp-pear`",
            )
            .help("did you mean `idp-pair`?"),
        ],
    );
}

// ---- apps ----------------------------------------------------------------------------------

#[test]
fn host_pattern_with_an_inner_wildcard() {
    let t = replace(&base(), "\"*.corp.example\"", "\"a.*.corp.example\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"a.*.corp.example\""),
            "apps.corp.hosts[0]",
            "`a.*.corp.example`: a wildcard is allowed only as the whole first label",
        )
        .expected("a host name (`login.example.com`) or `*.example.com`")],
    );
}

#[test]
fn app_with_neither_hosts_nor_cidrs() {
    let t = base() + "\n[apps.empty]\nports = [443]\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "[apps.empty]", "empty"),
            "apps.empty",
            "matches nothing: neither hosts nor cidrs",
        )
        .expected("hosts = [")],
    );
}

#[test]
fn app_with_empty_host_and_cidr_lists() {
    let t = base() + "\n[apps.empty]\nhosts = []\ncidrs = []\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "[apps.empty]", "empty"),
            "apps.empty",
            "matches nothing: neither hosts nor cidrs",
        )],
    );
}

#[test]
fn refused_app_is_not_reported_again_where_a_policy_names_it() {
    let t = replace(
        &base(),
        "hosts = [\"*.corp.example\"]\ncidrs = [\"198.19.0.0/24\"]\n",
        "ports = [443]\n",
    );
    check(
        &refused(&t),
        &[error(
            at(&t, "[apps.corp]", "corp"),
            "apps.corp",
            "matches nothing: neither hosts nor cidrs",
        )],
    );
}

#[test]
fn port_range_that_runs_backwards() {
    let t = replace(&base(), "ports = [443]", "ports = [443, \"8100-8000\"]");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"8100-8000\""),
            "apps.idp.ports[1]",
            "`8100-8000`: range 8100-8000 runs backwards (write 8000-8100)",
        )
        .expected("a port (443) or a range")],
    );
}

// ---- compliance ----------------------------------------------------------------------------

const JAMF: &str = r#"
[compliance.sources.jamf]
type = "jamf-pro"
url = "https://corp.jamfcloud.com"
client_id = "attestgate"
client_secret_file = "jamf.secret"
computer_groups = [12]
"#;

#[test]
fn jamf_source_over_plain_http() {
    let t = base() + &replace(JAMF, "https://", "http://");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"http://corp.jamfcloud.com\""),
            "compliance.sources.jamf.url",
            "`http://corp.jamfcloud.com`: credentials must not travel over plain http; use https://",
        )
        .expected("an https:// URL")],
    );
}

#[test]
fn jamf_source_without_groups() {
    let t = base() + &replace(JAMF, "computer_groups = [12]\n", "");
    check(
        &refused(&t),
        &[error(
            pos(&t, "[compliance.sources.jamf]"),
            "compliance.sources.jamf",
            "no smart group to read",
        )
        .expected("computer_groups = [ID, …] and/or mobile_device_groups = [ID, …]")],
    );
}

#[test]
fn webhook_listening_on_the_relay_http2_address() {
    let t = base()
        + r#"
[compliance.webhook]
listen = "198.51.100.1:443"
certificate = "webhook.crt"
private_key = "webhook.key"
auth = "header"
token_file = "webhook.token"
"#;
    check(
        &refused(&t),
        &[error(
            at(
                &t,
                "listen = \"198.51.100.1:443\"\ncertificate",
                "\"198.51.100.1:443\"",
            ),
            "compliance.webhook.listen",
            "198.51.100.1:443 is also a relay HTTP/2 listener",
        )
        .expected("a separate admin address or port")],
    );
}

// ---- relay and logging ---------------------------------------------------------------------

#[test]
fn udp_path_without_target_port() {
    let t = replace(
        &base(),
        "device_ca = [\"device-ca.crt\"]",
        "device_ca = [\"device-ca.crt\"]\nudp_path = \"/masque/{target_host}/\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"/masque/{target_host}/\""),
            "relay.udp_path",
            "must contain both {target_host} and {target_port}",
        )
        .expected("an absolute path template")],
    );
}

#[test]
fn header_name_without_secret_file_is_a_warning() {
    let t = replace(
        &base(),
        "device_ca = [\"device-ca.crt\"]",
        "device_ca = [\"device-ca.crt\"]\nheader_name = \"x-secret\"",
    );
    let l = accepted_with(&t, Path::new("/"), FileChecks::Skip);
    check(
        &l.warnings,
        &[warning(
            pos(&t, "header_name"),
            "relay.header_name",
            "has no effect without header_secret_file",
        )],
    );
}

#[test]
fn log_level_typo_suggests_warn() {
    let t = replace(&base(), "level = \"info\"", "level = \"warning\"");
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"warning\""),
            "logging.level",
            "unknown level `warning` (did you mean `warn`?)",
        )
        .expected("error, warn, info, debug or trace")],
    );
}

#[test]
fn log_level_typo_in_a_later_directive() {
    let t = replace(
        &base(),
        "level = \"info\"",
        "level = \"info,attestgate::policy=debgu\"",
    );
    check(
        &refused(&t),
        &[error(
            pos(&t, "\"info,attestgate::policy=debgu\""),
            "logging.level",
            "unknown level `debgu` (did you mean `debug`?)",
        )],
    );
}

// ---- syntax --------------------------------------------------------------------------------

#[test]
fn toml_syntax_error_has_a_position() {
    let t = replace(&base(), "mtu = 1400", "mtu 1400");
    check(
        &refused(&t),
        &[error(
            at(&t, "mtu 1400", "1400"),
            "",
            "TOML syntax: key with no value, expected `=`",
        )],
    );
}

// ---- several mistakes ----------------------------------------------------------------------

#[test]
fn three_mistakes_are_all_reported_in_file_order() {
    let t = base();
    // read in this order: apps (CIDR), logging (key), then the cross-reference check
    // (policy egress); the file has them in the order CIDR, policy, logging.
    let t = replace(
        &t,
        "cidrs = [\"198.19.0.0/24\"]",
        "cidrs = [\"198.19.0.0/40\"]",
    );
    let t = replace(&t, "egress = \"idp-pair\"", "egress = \"idp-pear\"");
    let t = replace(&t, "format = \"text\"", "fromat = \"text\"");
    let cidr = pos(&t, "\"198.19.0.0/40\"");
    let egress = pos(&t, "\"idp-pear\"");
    let key = pos(&t, "fromat");
    let d = refused(&t);
    check(
        &d,
        &[
            error(
                cidr,
                "apps.corp.cidrs[0]",
                "`198.19.0.0/40` is not a valid CIDR",
            )
            .help("an IPv4 prefix length is at most 32"),
            error(egress, "policy[1].egress", "unknown egress `idp-pear`")
                .help("did you mean `idp-pair`?"),
            error(key, "logging.fromat", "unknown key").help("did you mean `format`?"),
        ],
    );
    let lines: Vec<usize> = d.0.iter().map(|d| d.line).collect();
    assert!(lines.windows(2).all(|w| w[0] < w[1]), "{lines:?}");
    let text = d.to_string();
    for (line, column) in [cidr, egress, key] {
        let head = format!("test.toml:{line}:{column}: error: ");
        assert!(text.contains(&head), "`{head}` missing from:\n{text}");
    }
    assert!(
        text.ends_with("\n3 errors, 0 warnings"),
        "wrong summary:\n{text}"
    );
}

// ---- files ---------------------------------------------------------------------------------

#[cfg(unix)]
#[test]
fn missing_secret_file_is_an_error_when_strict() {
    let dir = lab_files();
    let psk = dir.path().join("corp.psk");
    std::fs::remove_file(&psk).unwrap();
    let t = base();
    check(
        &refused_with(&t, dir.path(), FileChecks::Strict),
        &[error(
            pos(&t, "\"corp.psk\""),
            "egress.corp.psk_file",
            &format!("{} does not exist", psk.display()),
        )
        .expected("an existing file")],
    );
}

#[cfg(unix)]
#[test]
fn missing_secret_file_is_a_warning_when_lenient() {
    let dir = lab_files();
    let psk = dir.path().join("corp.psk");
    std::fs::remove_file(&psk).unwrap();
    let t = base();
    let l = accepted_with(&t, dir.path(), FileChecks::Lenient);
    check(
        &l.warnings,
        &[warning(
            pos(&t, "\"corp.psk\""),
            "egress.corp.psk_file",
            &format!("{} does not exist on this host", psk.display()),
        )
        .expected("an existing file")],
    );
}

#[cfg(unix)]
#[test]
fn secret_file_readable_by_others_is_an_error_even_when_lenient() {
    use std::os::unix::fs::PermissionsExt;
    let dir = lab_files();
    let key = dir.path().join("relay.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let t = base();
    check(
        &refused_with(&t, dir.path(), FileChecks::Lenient),
        &[error(
            pos(&t, "\"relay.key\""),
            "relay.private_key",
            &format!(
                "secret file {} is accessible by group or others (mode 0644)",
                key.display()
            ),
        )
        .expected("mode 0600 or 0400")
        .help(&format!("chmod 600 {}", key.display()))],
    );
}

#[cfg(unix)]
#[test]
fn directory_where_a_file_is_expected() {
    let dir = lab_files();
    let ca = dir.path().join("device-ca.crt");
    std::fs::remove_file(&ca).unwrap();
    std::fs::create_dir(&ca).unwrap();
    let t = base();
    check(
        &refused_with(&t, dir.path(), FileChecks::Strict),
        &[error(
            pos(&t, "\"device-ca.crt\""),
            "relay.device_ca",
            &format!("{} is not a regular file", ca.display()),
        )
        .expected("an existing file")],
    );
}

// ---- tunnel certificates -------------------------------------------------------------------

#[cfg(unix)]
fn with_certificate(key: &str, local_id: &str) -> String {
    let t = replace(
        &base(),
        "psk_file = \"corp.psk\"\n",
        &format!(
            "certificate = \"corp.crt\"\nprivate_key = \"{key}\"\npeer_ca = [\"corp-ca.crt\"]\n"
        ),
    );
    replace(
        &t,
        "local_id = \"gw.example.net\"",
        &format!("local_id = \"{local_id}\""),
    )
}

#[cfg(unix)]
#[test]
fn tunnel_certificate_key_and_identity_are_checked_together() {
    // a CA, `gw.example.net`'s certificate and key, and an unrelated key
    let dir = lab_files();
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use std::os::unix::fs::PermissionsExt;
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["gw.example.net".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let other = KeyPair::generate().unwrap();
    for (name, text) in [
        ("corp.crt", cert.pem()),
        ("corp-ca.crt", ca.pem()),
        ("corp.key", key.serialize_pem()),
        ("other.key", other.serialize_pem()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let fine = accepted_with(
        &with_certificate("corp.key", "gw.example.net"),
        dir.path(),
        FileChecks::Strict,
    );
    assert!(fine.warnings.0.is_empty(), "{}", fine.warnings);

    let t = with_certificate("other.key", "gw.example.net");
    check(
        &refused_with(&t, dir.path(), FileChecks::Strict),
        &[error(
            pos(&t, "\"other.key\""),
            "egress.corp.private_key",
            "does not belong to the certificate",
        )
        .expected("its private key")],
    );

    let t = with_certificate("corp.key", "other.example.net");
    check(
        &refused_with(&t, dir.path(), FileChecks::Strict),
        &[error(
            pos(&t, "\"corp.crt\""),
            "egress.corp.certificate",
            "identity other.example.net is neither the subject",
        )
        .expected("subjectAltName is local_id")],
    );

    std::fs::write(dir.path().join("corp-ca.crt"), "not a certificate\n").unwrap();
    let t = with_certificate("corp.key", "gw.example.net");
    check(
        &refused_with(&t, dir.path(), FileChecks::Strict),
        &[error(
            pos(&t, "\"corp-ca.crt\""),
            "egress.corp.peer_ca",
            "no CERTIFICATE block found",
        )],
    );
}

#[test]
fn cookie_threshold_defaults_to_10_and_takes_0() {
    let dir = lab_files();
    let tunnel = |l: &Loaded| match l.config.egress("corp").map(|e| &e.kind) {
        Some(config::EgressKind::Tunnel(t)) => t.cookie_threshold,
        _ => panic!("corp is not a tunnel"),
    };
    let l = accepted_with(&base(), dir.path(), FileChecks::Skip);
    assert_eq!(tunnel(&l), 10);
    let t = replace(&base(), "mtu = 1400", "mtu = 1400\ncookie_threshold = 0");
    let l = accepted_with(&t, dir.path(), FileChecks::Skip);
    assert_eq!(tunnel(&l), 0);
}

#[test]
fn encap_defaults_to_true_and_takes_false() {
    let dir = lab_files();
    let tunnel = |l: &Loaded| match l.config.egress("corp").map(|e| &e.kind) {
        Some(config::EgressKind::Tunnel(t)) => t.encap,
        _ => panic!("corp is not a tunnel"),
    };
    assert!(tunnel(&accepted_with(
        &base(),
        dir.path(),
        FileChecks::Skip
    )));
    let t = replace(&base(), "mtu = 1400", "mtu = 1400\nencap = false");
    assert!(!tunnel(&accepted_with(&t, dir.path(), FileChecks::Skip)));
    let t = replace(&base(), "mtu = 1400", "mtu = 1400\nencap = \"no\"");
    let refused = refused(&t);
    assert!(
        refused.to_string().contains("egress.corp.encap"),
        "{refused}"
    );
}

#[test]
fn cookie_threshold_out_of_range() {
    let t = replace(&base(), "mtu = 1400", "mtu = 1400\ncookie_threshold = -1");
    check(
        &refused(&t),
        &[error(
            at(&t, "cookie_threshold = -1", "-1"),
            "egress.corp.cookie_threshold",
            "-1 is out of range",
        )
        .expected("an integer from 0 to 100000")],
    );
}

// ---- enroll --------------------------------------------------------------------------------

#[test]
fn enroll_public_name_without_scheme_and_acme_directory_defaults_to_it() {
    let t = base() + "\n[enroll]\npublic_name = \"https://gw.example.com\"\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "public_name = \"https:", "\"https:"),
            "enroll.public_name",
            "write the host name only, without a scheme",
        )
        .expected("the DNS name devices reach the appliance at")],
    );
    let t = base() + "\n[enroll]\npublic_name = \"GW.Example.com\"\n";
    let l = accepted_with(&t, Path::new("/"), FileChecks::Skip);
    let name = l
        .config
        .enroll
        .public_name
        .as_ref()
        .map(|n| n.value.as_str());
    assert_eq!(name, Some("gw.example.com"));
    assert_eq!(
        l.config.acme_directory().as_deref(),
        Some("https://gw.example.com/acme/directory")
    );
    let t = base() + "\n[enroll]\nacme_directory = \"http://ca.example.com/dir\"\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "acme_directory = \"http:", "\"http:"),
            "enroll.acme_directory",
            "must use the https scheme",
        )],
    );
}

// ---- [acme] --------------------------------------------------------------------------------

const WEBHOOK: &str = r#"
[compliance.webhook]
listen = "198.51.100.1:8443"
certificate = "webhook.crt"
private_key = "webhook.key"
auth = "header"
token_file = "webhook.token"
"#;

#[test]
fn acme_with_the_admin_listener_replaces_the_device_ca() {
    let t = replace(&base(), "device_ca = [\"device-ca.crt\"]\n", "")
        + WEBHOOK
        + "\n[acme]\nbase_url = \"https://gate.example.com:8443/acme\"\ncertificate_validity = \"7d\"\n";
    let loaded = accepted_with(&t, Path::new("/"), FileChecks::Skip);
    let acme = loaded.config.acme.as_ref().unwrap();
    assert!(acme.enabled && acme.require_enrolled);
    assert_eq!(acme.base_url.value, "https://gate.example.com:8443/acme");
    assert_eq!(acme.certificate_validity.as_secs(), 7 * 86_400);
    assert_eq!(acme.order_lifetime.as_secs(), 3600);
    assert!(acme.ca_import.is_none() && acme.attestation_roots.is_empty());
    assert!(loaded.config.relay.device_ca.is_empty());
}

#[test]
fn acme_needs_the_admin_listener() {
    let t =
        base() + "\n[acme]\nenabled = true\nbase_url = \"https://gate.example.com:8443/acme\"\n";
    check(
        &refused(&t),
        &[error(
            at(&t, "enabled = true\nbase_url", "true"),
            "acme",
            "served on the admin listener",
        )
        .expected("a [compliance.webhook] table")
        .help("or set `enabled = false` in [acme]")],
    );
}

#[test]
fn relay_without_device_ca_and_without_acme() {
    let t = replace(&base(), "device_ca = [\"device-ca.crt\"]\n", "");
    check(
        &refused(&t),
        &[error(
            pos(&t, "[relay]\n"),
            "relay.device_ca",
            "required key is missing",
        )
        .expected("one or more file paths")
        .help("add `device_ca = …` to [relay], or enable [acme] to trust its built-in CA")],
    );
    // a disabled [acme] does not stand in for it
    let t = t
        + WEBHOOK
        + "\n[acme]\nenabled = false\nbase_url = \"https://gate.example.com:8443/acme\"\n";
    assert_eq!(refused(&t).error_count(), 1);
}

#[test]
fn acme_base_url_validity_and_half_an_import() {
    let t = base()
        + WEBHOOK
        + "\n[acme]\nbase_url = \"http://gate.example.com/acme/\"\ncertificate_validity = \"30m\"\n";
    check(
        &refused(&t),
        &[
            error(
                pos(&t, "\"http://gate.example.com/acme/\""),
                "acme.base_url",
                "is not an https URL",
            )
            .expected("https://gate.example.com:8443/acme"),
            error(
                pos(&t, "\"30m\""),
                "acme.certificate_validity",
                "out of range",
            )
            .expected("from \"1h\" to \"365d\""),
        ],
    );
    let t = base()
        + WEBHOOK
        + "\n[acme]\nbase_url = \"https://gate.example.com/acme\"\nca_certificate = \"ca.pem\"\n";
    check(
        &refused(&t),
        &[error(
            pos(&t, "[acme]"),
            "acme.ca_private_key",
            "required key is missing",
        )
        .expected("private key")
        .help("add `ca_private_key = …` to [acme]")],
    );
}

#[cfg(unix)]
#[test]
fn acme_ca_key_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = lab_files();
    for (name, mode) in [
        ("webhook.crt", 0o644),
        ("webhook.key", 0o600),
        ("webhook.token", 0o600),
        ("ca.pem", 0o644),
        ("ca.key", 0o644),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, "test\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let t = base()
        + WEBHOOK
        + "\n[acme]\nbase_url = \"https://gate.example.com/acme\"\nca_certificate = \"ca.pem\"\nca_private_key = \"ca.key\"\n";
    let d = refused_with(&t, dir.path(), FileChecks::Strict);
    assert_eq!(d.error_count(), 1, "{d}");
    let e = d.errors().next().unwrap();
    assert_eq!(e.path, "acme.ca_private_key");
    assert_eq!((e.line, e.column), pos(&t, "\"ca.key\""));
}
