//! Profiles from small configurations: the keys Apple's payload references require, with their
//! types; UUIDs that survive regeneration; the domain rule; signing; bad input. Every written
//! profile is parsed back with the plist crate and, independently, with Python's plistlib.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use plist::Value;
use std::path::Path;
use std::process::Command;

const APPS: &str = r#"
[apps.idp]
hosts = ["idp.example", "*.idp.example", "login.idp.example"]
ports = [443]

[apps.corp]
hosts = ["*.corp.example"]
cidrs = ["198.19.0.0/24"]

[apps.wiki]
hosts = ["*.wiki.corp.example", "status.corp.example"]

[apps.lan]
cidrs = ["198.19.1.0/24"]

[apps.unpoliced]
hosts = ["news.example"]

[apps.files]
hosts = ["files.example"]
"#;

const POLICIES: &str = r#"
[[policy]]
name = "corp-apps"
apps = ["corp", "lan"]
egress = "idp-pair"
fallback = "deny"

[[policy]]
name = "idp-sign-in"
apps = ["idp"]
egress = "idp-pair"
fallback = "public"

[[policy]]
name = "wiki-direct"
apps = ["wiki"]
managed = false
egress = "direct"
fallback = "direct"

[[policy]]
name = "no-file-sharing"
apps = ["files"]
managed = false
egress = "deny"
"#;

fn config_text(enroll: &str, apps: &str) -> String {
    format!(
        r#"[appliance]
name = "gw-1"

[relay]
http3_listen = ["198.51.100.1:443"]
http2_listen = ["198.51.100.1:8443"]
certificate = "relay.crt"
private_key = "relay.key"
device_ca = ["device-ca.crt"]

[egress.idp-pair]
type = "internet"
source_addresses = ["203.0.113.30", "203.0.113.31"]
{apps}
[compliance]
compliant_groups = ["Compliant Macs"]

[compliance.sources.devices]
type = "file"
path = "devices.toml"
{POLICIES}
[defaults]
egress = "public"
fallback = "public"
{enroll}
"#
    )
}

const ENROLL: &str = "[enroll]\npublic_name = \"gw.corp.example\"\n";

fn load_in(dir: &Path, text: &str) -> config::Config {
    let origin = dir.join("attestgate.toml");
    match config::load_str(text, &origin, dir, config::FileChecks::Skip) {
        Ok(l) => l.config,
        Err(e) => panic!("config refused:\n{e}\n{text}"),
    }
}

fn load(text: &str) -> config::Config {
    load_in(Path::new("/etc/attestgate"), text)
}

fn spec(text: &str, opts: &Options) -> ProfileSpec {
    ProfileSpec::from_config(&load(text), opts).unwrap_or_else(|e| panic!("{e}"))
}

fn xml(text: &str, opts: &Options) -> Vec<u8> {
    mobileconfig_xml(&spec(text, opts)).unwrap()
}

fn parse(bytes: &[u8]) -> plist::Dictionary {
    match Value::from_reader_xml(bytes).unwrap() {
        Value::Dictionary(d) => d,
        other => panic!("top level is not a dictionary: {other:?}"),
    }
}

/// Python's plistlib reads the file (an independent parser): returns what it printed.
fn plistlib(path: &Path, expr: &str) -> String {
    let script =
        format!("import plistlib,sys\np=plistlib.load(open(sys.argv[1],'rb'))\nprint({expr})");
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(path)
        .output()
        .expect("python3 is needed for this test");
    assert!(
        out.status.success(),
        "plistlib refused {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn string<'a>(d: &'a plist::Dictionary, key: &str) -> &'a str {
    d.get(key)
        .and_then(Value::as_string)
        .unwrap_or_else(|| panic!("{key} is not a string: {:?}", d.get(key)))
}

fn int(d: &plist::Dictionary, key: &str) -> i64 {
    d.get(key)
        .and_then(Value::as_signed_integer)
        .unwrap_or_else(|| panic!("{key} is not an integer: {:?}", d.get(key)))
}

fn boolean(d: &plist::Dictionary, key: &str) -> bool {
    d.get(key)
        .and_then(Value::as_boolean)
        .unwrap_or_else(|| panic!("{key} is not a boolean: {:?}", d.get(key)))
}

fn strings(d: &plist::Dictionary, key: &str) -> Vec<String> {
    d.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("{key} is not an array: {:?}", d.get(key)))
        .iter()
        .map(|v| v.as_string().unwrap().to_string())
        .collect()
}

/// The ACME and the relay payload.
fn payloads(top: &plist::Dictionary) -> (plist::Dictionary, plist::Dictionary) {
    let content = top.get("PayloadContent").and_then(Value::as_array).unwrap();
    assert_eq!(content.len(), 2);
    let find = |kind: &str| {
        content
            .iter()
            .filter_map(Value::as_dictionary)
            .find(|p| p.get("PayloadType").and_then(Value::as_string) == Some(kind))
            .unwrap_or_else(|| panic!("no {kind} payload"))
            .clone()
    };
    (
        find("com.apple.security.acme"),
        find("com.apple.relay.managed"),
    )
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn mobileconfig_has_the_required_keys_with_their_types() {
    let bytes = xml(&config_text(ENROLL, APPS), &Options::default());
    assert!(bytes.starts_with(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>"));
    let top = parse(&bytes);
    // top level (TopLevel.yaml)
    assert_eq!(string(&top, "PayloadType"), "Configuration");
    assert_eq!(int(&top, "PayloadVersion"), 1);
    assert_eq!(string(&top, "PayloadIdentifier"), "attestgate.gw-1");
    assert!(is_uuid(string(&top, "PayloadUUID")));
    assert_eq!(string(&top, "PayloadScope"), "System");
    assert_eq!(string(&top, "PayloadOrganization"), "gw-1");
    assert!(!string(&top, "PayloadDisplayName").is_empty());

    let (acme, relay) = payloads(&top);
    for p in [&acme, &relay] {
        assert_eq!(int(p, "PayloadVersion"), 1);
        assert!(is_uuid(string(p, "PayloadUUID")));
        assert!(string(p, "PayloadIdentifier").starts_with("attestgate.gw-1."));
    }
    // ACME (com.apple.security.acme.yaml)
    assert_eq!(
        string(&acme, "DirectoryURL"),
        "https://gw.corp.example/acme/directory"
    );
    assert_eq!(string(&acme, "ClientIdentifier"), "$SERIALNUMBER");
    assert_eq!(string(&acme, "KeyType"), "ECSECPrimeRandom");
    assert_eq!(int(&acme, "KeySize"), 256);
    assert!(boolean(&acme, "HardwareBound"));
    assert!(boolean(&acme, "Attest"));
    assert!(!boolean(&acme, "KeyIsExtractable"));
    assert_eq!(int(&acme, "UsageFlags"), 1);
    assert_eq!(strings(&acme, "ExtendedKeyUsage"), ["1.3.6.1.5.5.7.3.2"]);
    let subject = acme.get("Subject").and_then(Value::as_array).unwrap();
    let rdns: Vec<Vec<String>> = subject
        .iter()
        .map(|rdn| {
            let pairs = rdn.as_array().unwrap();
            assert_eq!(pairs.len(), 1);
            let pair = pairs[0].as_array().unwrap();
            pair.iter()
                .map(|v| v.as_string().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(rdns, [["O", "gw-1"], ["CN", "$SERIALNUMBER"]]);

    // relay (com.apple.relay.managed.yaml)
    let relays = relay.get("Relays").and_then(Value::as_array).unwrap();
    assert_eq!(relays.len(), 1);
    let r = relays[0].as_dictionary().unwrap();
    assert_eq!(string(r, "HTTP3RelayURL"), "https://gw.corp.example:443");
    assert_eq!(string(r, "HTTP2RelayURL"), "https://gw.corp.example:8443");
    assert_eq!(
        string(r, "PayloadCertificateUUID"),
        string(&acme, "PayloadUUID")
    );
    assert!(r.get("RawPublicKeys").is_none(), "pinned without --pin");
    assert!(is_uuid(string(&relay, "RelayUUID")));
    assert!(!strings(&relay, "MatchDomains").is_empty());

    // an independent parser agrees
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.mobileconfig");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        plistlib(
            &path,
            "p['PayloadContent'][1]['Relays'][0]['PayloadCertificateUUID']==p['PayloadContent'][0]['PayloadUUID'], p['PayloadContent'][0]['KeySize'], p['PayloadContent'][0]['Attest']"
        ),
        "True 256 True"
    );
}

#[test]
fn uuids_are_stable_and_a_changed_app_list_changes_only_the_domain_lists() {
    let text = config_text(ENROLL, APPS);
    let a = xml(&text, &Options::default());
    let b = xml(&text, &Options::default());
    assert_eq!(a, b, "two runs on the same configuration differ");

    // another machine, another load: the UUIDs come from the appliance name and the role only
    assert_eq!(
        stable_uuid("gw-1", "relay"),
        spec(&text, &Options::default()).uuids.relay_uuid
    );
    let u = Uuids::for_appliance("gw-1");
    let all = [&u.profile, &u.acme, &u.relay_payload, &u.relay_uuid];
    for (i, x) in all.iter().enumerate() {
        assert!(is_uuid(x));
        assert_eq!(&x[14..15], "8", "RFC 9562 version 8: {x}");
        assert!("89AB".contains(&x[19..20]), "RFC 9562 variant: {x}");
        assert!(all[i + 1..].iter().all(|y| y != x), "two roles share {x}");
    }
    assert_ne!(stable_uuid("gw-2", "relay"), u.relay_uuid);

    let changed = APPS.replace(
        "hosts = [\"*.corp.example\"]",
        "hosts = [\"*.corp.example\", \"crm.saas.example\"]",
    );
    let c = xml(&config_text(ENROLL, &changed), &Options::default());
    let (ta, tc) = (parse(&a), parse(&c));
    let strip = |mut top: plist::Dictionary| {
        let (acme, mut relay) = payloads(&top);
        let before = strings(&relay, "MatchDomains");
        relay.remove("MatchDomains");
        relay.remove("ExcludedDomains");
        relay.remove("ExcludedFQDNs");
        top.remove("PayloadContent");
        (top, acme, relay, before)
    };
    let (top_a, acme_a, relay_a, match_a) = strip(ta);
    let (top_c, acme_c, relay_c, match_c) = strip(tc);
    assert_eq!(top_a, top_c);
    assert_eq!(acme_a, acme_c);
    assert_eq!(
        relay_a, relay_c,
        "the relay changed beyond its domain lists"
    );
    assert!(!match_a.contains(&"crm.saas.example".to_string()));
    assert!(match_c.contains(&"crm.saas.example".to_string()));
}

#[test]
fn domains_follow_the_policies_of_the_apps() {
    let s = spec(&config_text(ENROLL, APPS), &Options::default());
    let d = &s.relay.domains;
    // idp: idp.example, *.idp.example and login.idp.example collapse into idp.example; corp's
    // *.corp.example → corp.example; files (deny) is relayed so the relay can refuse it;
    // news.example (no policy) is not relayed.
    assert_eq!(
        d.match_domains,
        ["corp.example", "files.example", "idp.example"]
    );
    // wiki is direct-only: its suffix is an excluded domain, its exact host an excluded FQDN;
    // the appliance's own name (under corp.example) is excluded so ACME works before the
    // device has its certificate.
    assert_eq!(d.excluded_domains, ["gw.corp.example", "wiki.corp.example"]);
    assert_eq!(d.excluded_fqdns, ["status.corp.example"]);
    // lan has only CIDRs: said, not silently dropped
    assert!(
        d.notes.iter().any(|n| n.contains("app lan has only cidrs")),
        "{:?}",
        d.notes
    );

    // a direct-only `*.login.idp.example` is not excluded: `ExcludedDomains` would take the
    // relayed exact host login.idp.example with it
    let apps = APPS.replace(
        "hosts = [\"*.wiki.corp.example\", \"status.corp.example\"]",
        "hosts = [\"*.login.idp.example\", \"*.example\"]",
    );
    let s = spec(&config_text(ENROLL, &apps), &Options::default());
    assert_eq!(s.relay.domains.excluded_domains, ["gw.corp.example"]);
    assert!(s.relay.domains.excluded_fqdns.is_empty());
    assert!(
        s.relay.domains.notes.iter().any(|n| n
            == "login.idp.example (a direct-only app) is not excluded: that would also exclude the relayed login.idp.example"),
        "{:?}",
        s.relay.domains.notes
    );

    // reordering apps changes nothing
    let mut blocks: Vec<&str> = APPS.split("\n\n").collect();
    blocks.reverse();
    let reordered = format!("\n{}\n", blocks.join("\n\n"));
    let r = spec(&config_text(ENROLL, &reordered), &Options::default());
    assert_eq!(
        r.relay.domains,
        spec(&config_text(ENROLL, APPS), &Options::default())
            .relay
            .domains
    );
}

#[test]
fn key_size_384_and_the_intune_variable() {
    let opts = Options {
        mdm: Mdm::Intune,
        key_size: KeySize::P384,
        organization: Some("Example Corp".into()),
        pin: false,
    };
    let bytes = xml(&config_text(ENROLL, APPS), &opts);
    let top = parse(&bytes);
    let (acme, _) = payloads(&top);
    assert_eq!(int(&acme, "KeySize"), 384);
    assert_eq!(string(&acme, "ClientIdentifier"), "{{serialnumber}}");
    assert_eq!(string(&top, "PayloadOrganization"), "Example Corp");
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("<string>{{serialnumber}}</string>"));
    // the Jamf default differs only in the variable, never in the UUIDs
    let jamf = parse(&xml(&config_text(ENROLL, APPS), &Options::default()));
    assert_eq!(string(&jamf, "PayloadUUID"), string(&top, "PayloadUUID"));
}

#[test]
fn special_characters_are_escaped() {
    let opts = Options {
        organization: Some("Smith & Sons <IT> \"Ops\"".into()),
        ..Options::default()
    };
    let bytes = xml(&config_text(ENROLL, APPS), &opts);
    let text = String::from_utf8(bytes.clone()).unwrap();
    assert!(text.contains("Smith &amp; Sons &lt;IT&gt;"));
    assert_eq!(
        string(&parse(&bytes), "PayloadOrganization"),
        "Smith & Sons <IT> \"Ops\""
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.mobileconfig");
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(
        plistlib(&path, "p['PayloadOrganization']"),
        "Smith & Sons <IT> \"Ops\""
    );
}

#[test]
fn no_public_name_is_a_clear_error_naming_the_key() {
    let cfg = load(&config_text("", APPS));
    let err = ProfileSpec::from_config(&cfg, &Options::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ProfileError::NoPublicName { .. }));
    assert!(msg.contains("`[enroll] public_name` is not set"), "{msg}");
    assert!(msg.contains("/etc/attestgate/attestgate.toml"), "{msg}");
    assert!(msg.contains("public_name = \"gw.example.com\""), "{msg}");
}

#[test]
fn custom_udp_path_becomes_a_uri_template_and_acme_directory_overrides() {
    let text = config_text(
        "[enroll]\npublic_name = \"gw.corp.example\"\nacme_directory = \"https://ca.corp.example/acme/attest/directory\"\n",
        APPS,
    )
    .replace(
        "device_ca = [\"device-ca.crt\"]",
        "device_ca = [\"device-ca.crt\"]\nudp_path = \"/masque/{target_host}/{target_port}/\"",
    );
    let s = spec(&text, &Options::default());
    assert_eq!(
        s.relay.http3_url.as_deref(),
        Some("https://gw.corp.example:443/masque/{target_host}/{target_port}/")
    );
    assert_eq!(
        s.acme.directory_url,
        "https://ca.corp.example/acme/attest/directory"
    );
    // the ACME server's host is under a relayed domain: excluded as well
    assert!(s
        .relay
        .domains
        .excluded_domains
        .contains(&"ca.corp.example".to_string()));
}

/// A self-signed certificate and its key (PEM) in `dir`; returns the key's SPKI (DER).
fn self_signed(dir: &Path, name: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.join("relay.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("relay.key"), key.serialize_pem()).unwrap();
    rcgen::PublicKeyData::subject_public_key_info(&key)
}

#[test]
fn pin_carries_the_relay_certificates_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let spki = self_signed(dir.path(), "gw.corp.example");
    let cfg = load_in(dir.path(), &config_text(ENROLL, APPS));
    let opts = Options {
        pin: true,
        ..Options::default()
    };
    let s = ProfileSpec::from_config(&cfg, &opts).unwrap();
    let top = parse(&mobileconfig_xml(&s).unwrap());
    let (_, relay) = payloads(&top);
    let r = relay.get("Relays").and_then(Value::as_array).unwrap()[0]
        .as_dictionary()
        .unwrap()
        .clone();
    let keys = r.get("RawPublicKeys").and_then(Value::as_array).unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].as_data(), Some(spki.as_slice()));

    // a file that is no certificate is refused with its name
    std::fs::write(dir.path().join("relay.crt"), "not a certificate\n").unwrap();
    let err = ProfileSpec::from_config(&cfg, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("relay.crt") && err.contains("not a PEM certificate"),
        "{err}"
    );
}

#[test]
fn signed_profile_verifies_and_carries_the_profile() {
    let dir = tempfile::tempdir().unwrap();
    self_signed(dir.path(), "profiles.corp.example");
    let bytes = xml(&config_text(ENROLL, APPS), &Options::default());
    let signed = sign(
        &bytes,
        &dir.path().join("relay.crt"),
        &dir.path().join("relay.key"),
    )
    .unwrap();
    assert_ne!(signed, bytes);
    let path = dir.path().join("p.mobileconfig");
    std::fs::write(&path, &signed).unwrap();
    let out = Command::new("openssl")
        .args(["cms", "-verify", "-noverify", "-inform", "DER", "-in"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, bytes, "the signed content is not the profile");

    // the wrong key is refused with openssl's reason
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("other.key"), other.serialize_pem()).unwrap();
    let err = sign(
        &bytes,
        &dir.path().join("relay.crt"),
        &dir.path().join("other.key"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("openssl cms -sign failed"), "{err}");
    let err = sign(
        &bytes,
        &dir.path().join("missing.crt"),
        &dir.path().join("relay.key"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--sign-cert") && err.contains("missing.crt"),
        "{err}"
    );
}

#[test]
fn declarative_form_references_the_acme_asset() {
    let s = spec(&config_text(ENROLL, APPS), &Options::default());
    let d = declarative(&s, "https://mdm.corp.example/assets/acme.json").unwrap();
    let relay = &d.relay;
    assert_eq!(relay["Type"], "com.apple.configuration.network.relay");
    assert_eq!(d.asset["Type"], "com.apple.asset.credential.acme");
    for decl in [&d.relay, &d.asset] {
        assert!(decl["Identifier"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(decl["ServerToken"].as_str().is_some_and(|s| s.len() == 32));
        assert!(decl["Payload"].is_object());
    }
    let p = &relay["Payload"];
    assert_eq!(
        p["Relays"][0]["CredentialAssetReference"],
        d.asset["Identifier"]
    );
    assert_eq!(
        p["Relays"][0]["HTTP3RelayURL"],
        "https://gw.corp.example:443"
    );
    assert_eq!(p["RelayUUID"], s.uuids.relay_uuid.as_str());
    assert_eq!(p["MatchDomains"][0], "corp.example");
    assert!(p["VisibleName"].is_string());
    let reference = &d.asset["Payload"]["Reference"];
    assert_eq!(
        reference["DataURL"],
        "https://mdm.corp.example/assets/acme.json"
    );
    assert_eq!(reference["Size"], d.credential.len());
    let hash: String = ring::digest::digest(&ring::digest::SHA256, &d.credential)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(reference["Hash-SHA-256"], hash.as_str());
    let cred: serde_json::Value = serde_json::from_slice(&d.credential).unwrap();
    assert_eq!(cred["KeyType"], "ECSECPrimeRandom");
    assert_eq!(cred["ClientIdentifier"], "$SERIALNUMBER");
    assert_eq!(cred["HardwareBound"], true);
    assert_eq!(cred["Attest"], true);
    assert_eq!(cred["Subject"][1][0][0], "CN");

    // stable identifiers and tokens across runs
    let again = declarative(&s, "https://mdm.corp.example/assets/acme.json").unwrap();
    assert_eq!(again.relay, d.relay);
    assert_eq!(again.asset, d.asset);

    let err = declarative(&s, "http://mdm.corp.example/a.json").unwrap_err();
    assert!(
        err.to_string().contains("must start with https://"),
        "{err}"
    );
}

#[test]
fn an_unwritable_output_fails_and_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let listing = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // the parent is a file
    std::fs::write(dir.path().join("plain"), "x").unwrap();
    let err = write_file_atomically(&dir.path().join("plain/p.mobileconfig"), b"<plist/>", false)
        .unwrap_err();
    assert!(err.to_string().contains("plain/p.mobileconfig"), "{err}");
    // the target is a directory
    std::fs::create_dir(dir.path().join("d.mobileconfig")).unwrap();
    assert!(write_file_atomically(&dir.path().join("d.mobileconfig"), b"x", false).is_err());
    assert_eq!(listing(dir.path()), ["d.mobileconfig", "plain"]);

    // a good write replaces the old file whole
    let out = dir.path().join("p.mobileconfig");
    std::fs::write(&out, "old").unwrap();
    write_file_atomically(&out, b"new", false).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"new");

    // several files: the second cannot be written, so the first is not left either
    let decl = dir.path().join("ddm");
    std::fs::create_dir(&decl).unwrap();
    let blocker = format!(".b.json.tmp-{}", std::process::id());
    std::fs::create_dir(decl.join(&blocker)).unwrap();
    let files = vec![("a.json", b"{}".to_vec()), ("b.json", b"{}".to_vec())];
    assert!(write_dir_atomically(&decl, &files, false).is_err());
    assert_eq!(listing(&decl), [blocker.as_str()]);
    // a directory made for the output is removed again
    let fresh = dir.path().join("fresh");
    assert!(write_dir_atomically(&dir.path().join("plain/x"), &files, false).is_err());
    std::fs::remove_dir(decl.join(&blocker)).unwrap();
    write_dir_atomically(&fresh, &files, false).unwrap();
    assert_eq!(listing(&fresh), ["a.json", "b.json"]);
}

#[test]
fn a_header_secret_is_sent_and_its_file_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("relay.secret"), "s3cr3t-token\n").unwrap();
    let text = config_text(ENROLL, APPS).replace(
        "device_ca = [\"device-ca.crt\"]",
        "device_ca = [\"device-ca.crt\"]\nheader_secret_file = \"relay.secret\"\nheader_name = \"X-Relay-Key\"",
    );
    let s = ProfileSpec::from_config(&load_in(dir.path(), &text), &Options::default()).unwrap();
    assert_eq!(
        s.relay.headers,
        [("x-relay-key".to_string(), "s3cr3t-token".to_string())]
    );
    assert!(s.notes.iter().any(|n| n.contains("header secret")));
    let top = parse(&mobileconfig_xml(&s).unwrap());
    let (_, relay) = payloads(&top);
    let r = relay.get("Relays").and_then(Value::as_array).unwrap()[0]
        .as_dictionary()
        .unwrap()
        .clone();
    let headers = r
        .get("AdditionalHTTPHeaderFields")
        .and_then(Value::as_dictionary)
        .unwrap();
    assert_eq!(string(headers, "x-relay-key"), "s3cr3t-token");
    let out = dir.path().join("p.mobileconfig");
    write_file_atomically(&out, b"x", true).unwrap();
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // a secret that cannot be a header value is refused, naming the key
    std::fs::write(dir.path().join("relay.secret"), "two words\n").unwrap();
    let err = ProfileSpec::from_config(&load_in(dir.path(), &text), &Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("header_secret_file"), "{err}");
}
