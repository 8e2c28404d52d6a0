//! `[idp.entra]`: defaults, and each mistake reported at its line:column.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use config::{load_str, ConfigError, Diagnostic, FileChecks, Loaded, Severity};
use std::net::IpAddr;
use std::path::Path;

const BASE: &str = r#"[relay]
certificate = "relay.crt"
private_key = "relay.key"
device_ca = ["device-ca.crt"]

[egress.idp-pair]
type = "internet"
source_addresses = ["203.0.113.30", "2001:db8::30"]

[egress.public]
type = "public"
source_address = "198.51.100.9"

[compliance]
compliant_groups = ["Compliant Macs"]
"#;

fn load(extra: &str) -> Result<Loaded, Vec<Diagnostic>> {
    let text = format!("{BASE}{extra}");
    match load_str(
        &text,
        Path::new("t.toml"),
        Path::new("/etc/ag"),
        FileChecks::Skip,
    ) {
        Ok(l) => Ok(l),
        Err(ConfigError::Invalid(d)) => Err(d.0),
        Err(e) => panic!("{e}"),
    }
}

/// 1-based line and column of the first occurrence of `needle` in BASE + extra.
fn pos(extra: &str, needle: &str) -> (usize, usize) {
    let text = format!("{BASE}{extra}");
    let off = text.find(needle).unwrap();
    let before = &text[..off];
    (
        before.matches('\n').count() + 1,
        before.rsplit('\n').next().unwrap().chars().count() + 1,
    )
}

fn only(ds: &[Diagnostic], severity: Severity) -> &Diagnostic {
    let v: Vec<_> = ds.iter().filter(|d| d.severity == severity).collect();
    assert_eq!(v.len(), 1, "{ds:#?}");
    v[0]
}

#[test]
fn absent_section_means_no_entra() {
    assert!(load("").unwrap().config.idp.entra.is_none());
}

#[test]
fn defaults_and_relative_secret_path() {
    let l = load(
        "\n[idp.entra]\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"app\"\nclient_secret_file = \"entra.secret\"\n",
    )
    .unwrap();
    let e = l.config.idp.entra.unwrap();
    assert_eq!(e.tenant_id.value, "contoso.onmicrosoft.com");
    assert_eq!(e.named_location.value, "attestgate trusted egress");
    assert_eq!(e.graph_url, "https://graph.microsoft.com");
    assert_eq!(e.login_url, "https://login.microsoftonline.com");
    assert_eq!(
        e.client_secret_file.value,
        Path::new("/etc/ag/entra.secret")
    );
    assert!(e.extra_addresses.is_empty());
    assert!(l.warnings.0.is_empty(), "{}", l.warnings);
}

#[test]
fn overrides_for_national_clouds_and_extra_addresses() {
    let l = load(
        "\n[idp.entra]\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"app\"\nclient_secret_file = \"/s\"\nnamed_location = \"Corp egress\"\ngraph_url = \"https://graph.microsoft.us/\"\nlogin_url = \"https://login.microsoftonline.us\"\nextra_addresses = [\"192.0.2.77\"]\n",
    )
    .unwrap();
    let e = l.config.idp.entra.unwrap();
    assert_eq!(e.named_location.value, "Corp egress");
    assert_eq!(e.graph_url, "https://graph.microsoft.us");
    assert_eq!(
        e.extra_addresses[0].value,
        "192.0.2.77".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn mistakes_point_at_their_place() {
    let extra = "\n[idp.entra]\ntenant_id = \"common\"\nclient_id = \"app\"\nclient_secret_file = \"/s\"\ngraph_url = \"http://graph.example\"\nextra_addresses = [\"203.0.113.5/32\"]\n";
    let ds = load(extra).unwrap_err();
    let errors: Vec<_> = ds
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    let find = |path: &str| {
        errors
            .iter()
            .find(|d| d.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {ds:#?}"))
    };
    let t = find("idp.entra.tenant_id");
    assert_eq!((t.line, t.column), pos(extra, "\"common\""));
    assert!(t.message.contains("not a tenant"), "{}", t.message);
    let g = find("idp.entra.graph_url");
    assert!(g.message.contains("https"), "{}", g.message);
    let c = find("idp.entra.extra_addresses[0]");
    assert_eq!((c.line, c.column), pos(extra, "\"203.0.113.5/32\""));
    assert!(c.message.contains("not an IP address"), "{}", c.message);
}

#[test]
fn extra_addresses_must_be_public_and_not_the_untrusted_egress() {
    let extra = "\n[idp.entra]\ntenant_id = \"t\"\nclient_id = \"app\"\nclient_secret_file = \"/s\"\nextra_addresses = [\"198.51.100.9\", \"10.1.2.3\"]\n";
    let ds = load(extra).unwrap_err();
    let find = |path: &str| {
        ds.iter()
            .find(|d| d.path == path && d.severity == Severity::Error)
            .unwrap_or_else(|| panic!("no error at {path}: {ds:#?}"))
    };
    let p = find("idp.entra.extra_addresses[0]");
    assert_eq!((p.line, p.column), pos(extra, "\"198.51.100.9\", "));
    assert!(
        p.message.contains("untrusted egress `public`"),
        "{}",
        p.message
    );
    let r = find("idp.entra.extra_addresses[1]");
    assert_eq!((r.line, r.column), pos(extra, "\"10.1.2.3\""));
    assert!(r.message.contains("private address"), "{}", r.message);
}

#[test]
fn unknown_key_suggests_the_right_one() {
    let extra = "\n[idp.entra]\ntenant_id = \"t\"\nclient_id = \"app\"\nclient_secret_file = \"/s\"\nnamed_locaton = \"x\"\n";
    let ds = load(extra).unwrap_err();
    let u = only(&ds, Severity::Error);
    assert_eq!((u.line, u.column), pos(extra, "named_locaton"));
    assert!(format!("{u}").contains("named_location"), "{u}");
}

#[test]
fn private_egress_address_is_a_warning_that_names_the_fix() {
    let text = BASE.replace("\"2001:db8::30\"", "\"10.0.0.30\"");
    let extra =
        "\n[idp.entra]\ntenant_id = \"t\"\nclient_id = \"app\"\nclient_secret_file = \"/s\"\n";
    let l = load_str(
        &format!("{text}{extra}"),
        Path::new("t.toml"),
        Path::new("/"),
        FileChecks::Skip,
    )
    .unwrap();
    let w = only(&l.warnings.0, Severity::Warning);
    assert_eq!(w.path, "egress.idp-pair.source_addresses");
    assert!(w.message.contains("10.0.0.30 is a private address"), "{w}");
    assert!(format!("{w}").contains("extra_addresses"), "{w}");
}

#[test]
fn secret_file_must_be_private() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("entra.secret");
    std::fs::write(&secret, "s").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let extra = format!(
        "\n[idp.entra]\ntenant_id = \"t\"\nclient_id = \"app\"\nclient_secret_file = \"{}\"\n",
        secret.display()
    );
    let Err(ConfigError::Invalid(d)) = load_str(
        &format!("{BASE}{extra}"),
        Path::new("t.toml"),
        dir.path(),
        FileChecks::Lenient,
    ) else {
        panic!("accepted a world-readable secret")
    };
    assert!(d
        .0
        .iter()
        .any(|x| x.path == "idp.entra.client_secret_file" && x.message.contains("mode 0644")));
}
