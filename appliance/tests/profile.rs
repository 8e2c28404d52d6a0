//! `attestgate profile` as an admin runs it: the built binary on a sample configuration in a
//! temporary directory. The profile is read back by Python's plistlib (independent of our
//! writer), regenerated identically, signed and verified with openssl, written in the
//! declarative form; bad input gets its exit code and message and leaves no file behind.

#![allow(clippy::unwrap_used)] // test harness: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Output};

const CONFIG: &str = r#"
[appliance]
name = "gw-test"

[relay]
http3_listen = ["198.51.100.1:443"]
http2_listen = ["198.51.100.1:443"]
certificate = "relay.crt"
private_key = "relay.key"
device_ca = ["device-ca.crt"]

[egress.idp-pair]
type = "internet"
source_addresses = ["203.0.113.30", "203.0.113.31"]

[apps.idp]
hosts = ["login.idp.example", "*.idp.example"]

[apps.news]
hosts = ["news.example"]

[compliance]
compliant_groups = ["Compliant Macs"]

[compliance.sources.devices]
type = "file"
path = "devices.toml"

[[policy]]
name = "idp-sign-in"
apps = ["idp"]
egress = "idp-pair"
fallback = "public"

[defaults]
egress = "public"
fallback = "public"
"#;

const ENROLL: &str = "\n[enroll]\npublic_name = \"gw.test.example\"\n";

fn attestgate(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attestgate"))
        .arg("--config")
        .arg(config)
        .arg("profile")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn plistlib(path: &Path, expr: &str) -> String {
    let script =
        format!("import plistlib,sys\np=plistlib.load(open(sys.argv[1],'rb'))\nprint({expr})");
    let out = Command::new("python3")
        .args(["-c", &script])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "plistlib: {}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn profile_command_writes_parses_regenerates_signs_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("attestgate.toml");

    // no [enroll] public_name: invalid configuration (3), the key named, no file
    std::fs::write(&cfg, CONFIG).unwrap();
    let out = attestgate(&cfg, &["--out", d.join("a.mobileconfig").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("`[enroll] public_name` is not set"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(files_in(d), ["attestgate.toml"]);

    std::fs::write(&cfg, format!("{CONFIG}{ENROLL}")).unwrap();
    let first = d.join("a.mobileconfig");
    let out = attestgate(
        &cfg,
        &[
            "--mdm",
            "intune",
            "--key-size",
            "384",
            "--out",
            first.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("unsigned profile written"));
    assert_eq!(
        plistlib(
            &first,
            "p['PayloadType'], p['PayloadScope'], p['PayloadContent'][0]['ClientIdentifier'], p['PayloadContent'][0]['KeySize'], p['PayloadContent'][1]['MatchDomains'], p['PayloadContent'][1]['Relays'][0]['PayloadCertificateUUID']==p['PayloadContent'][0]['PayloadUUID']"
        ),
        "Configuration System {{serialnumber}} 384 ['idp.example'] True"
    );

    // regenerated to standard output: byte for byte the same (stable UUIDs)
    let out = attestgate(&cfg, &["--mdm", "intune", "--key-size", "384"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, std::fs::read(&first).unwrap());

    // an unwritable --out (its parent is a file): failure, nothing written
    let out = attestgate(
        &cfg,
        &["--out", d.join("a.mobileconfig/x").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot write"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(files_in(d), ["a.mobileconfig", "attestgate.toml"]);

    // signed with a certificate openssl makes; openssl verifies it and gives back the profile
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=profiles.test.example"])
        .arg("-keyout")
        .arg(d.join("sign.key"))
        .arg("-out")
        .arg(d.join("sign.crt"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made.stderr));
    let signed = d.join("signed.mobileconfig");
    let out = attestgate(
        &cfg,
        &[
            "--mdm",
            "intune",
            "--key-size",
            "384",
            "--sign-cert",
            d.join("sign.crt").to_str().unwrap(),
            "--sign-key",
            d.join("sign.key").to_str().unwrap(),
            "--out",
            signed.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verified = Command::new("openssl")
        .args(["cms", "-verify", "-noverify", "-inform", "DER", "-in"])
        .arg(&signed)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    assert_eq!(verified.stdout, std::fs::read(&first).unwrap());

    // the declarative form: three JSON files, the relay naming the ACME asset
    let ddm = d.join("ddm");
    let out = attestgate(
        &cfg,
        &[
            "--format",
            "declarative",
            "--asset-url",
            "https://mdm.test.example/acme.json",
            "--out",
            ddm.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        files_in(&ddm),
        [
            "acme-credential.json",
            "acme.asset.json",
            "relay.declaration.json"
        ]
    );
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(ddm.join(name)).unwrap()).unwrap()
    };
    let (relay, asset) = (read("relay.declaration.json"), read("acme.asset.json"));
    assert_eq!(
        relay["Payload"]["Relays"][0]["CredentialAssetReference"],
        asset["Identifier"]
    );
    assert_eq!(
        read("acme-credential.json")["DirectoryURL"],
        "https://gw.test.example/acme/directory"
    );

    // the declarative form without its URL is a usage error
    let out = attestgate(
        &cfg,
        &[
            "--format",
            "declarative",
            "--out",
            d.join("x").to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--asset-url"),
        "{}",
        text(&out.stderr)
    );
    assert!(!d.join("x").exists());
}
