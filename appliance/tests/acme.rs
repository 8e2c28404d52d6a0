//! The built-in ACME server end to end, through the real daemon: our ACME test client
//! (`enroll::acme::test_client`) talks HTTPS to the admin listener, gets a device certificate
//! through `device-attest-01` with a synthetic attestation chain (a test root in Apple's
//! place, configured in `[acme] attestation_roots`); the aioquic device (the stand-in for
//! Apple's relay client) uses that certificate and key to pass the relay; a device the MDM
//! does not know is refused a certificate; `attestgate ca revoke` cuts the device's open
//! stream within a second, and a new connection with the certificate is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed unwrap is a failed test

mod common;

use bytes::Bytes;
use common::{echo_server, free_port, free_udp_port, now_ms, require_aioquic, Lab, DEVICE_OK};
use enroll::acme::test_client::{Client, Transport};
use enroll::attest::testing::{LeafSpec, TestCa};
use http::{Request, Response};
use serde_json::Value;
use std::time::{Duration, SystemTime};

/// The serial `devices.toml` lists as managed and compliant.
const SERIAL: &str = "C02LAB0001";

/// HTTPS to the admin listener (reqwest, trusting the lab's relay CA).
struct Https {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Https {
    fn new(lab: &Lab, admin: u16) -> Https {
        let ca = std::fs::read(lab.dir.join("relay-ca.crt")).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .resolve(
                "relay.attestgate.lab",
                format!("127.0.0.1:{admin}").parse().unwrap(),
            )
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        Https {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client,
        }
    }
}

impl Transport for Https {
    fn send(&self, req: Request<Bytes>) -> Response<Bytes> {
        self.rt.block_on(async {
            let (parts, body) = req.into_parts();
            let answer = self
                .client
                .request(parts.method, parts.uri.to_string())
                .headers(parts.headers)
                .body(body)
                .send()
                .await
                .unwrap();
            let mut out = Response::builder().status(answer.status());
            for (name, value) in answer.headers() {
                out = out.header(name, value);
            }
            out.body(answer.bytes().await.unwrap()).unwrap()
        })
    }
}

/// A device's enrollment: its attested key (PKCS#8 PEM) and the issued chain (PEM).
#[derive(Debug)]
struct Enrolled {
    key_pem: String,
    chain_pem: String,
}

/// newOrder for `serial`, device-attest-01 with an attestation for the same serial from
/// `attestation`, finalize with a CSR of the attested key, download.
fn enroll_device(
    client: &Client<'_>,
    attestation: &TestCa,
    serial: &str,
) -> Result<Enrolled, Value> {
    let (_order_url, challenge, token, order) = client.order(serial);
    let mut spec = LeafSpec::for_token(&token);
    spec.serial = Some(serial.to_string());
    // the fixtures' clock is fixed in the past; this server checks at the real time
    spec.not_before = SystemTime::now() - Duration::from_secs(3600);
    spec.not_after = SystemTime::now() + Duration::from_secs(7 * 86_400);
    let (att_obj, leaf) = attestation.att_obj(&spec);
    let answer = client.attest(&challenge, &att_obj);
    if answer.status != http::StatusCode::OK {
        return Err(answer.json());
    }
    assert_eq!(answer.json()["status"], "valid", "{}", answer.json());
    let key = leaf.key.unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, serial);
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let chain_pem = client
        .finalize_and_download(&order, &csr)
        .map_err(|a| a.json())?;
    Ok(Enrolled {
        key_pem: key.serialize_pem(),
        chain_pem,
    })
}

/// A daemon with the admin listener and `[acme]` (the synthetic attestation root configured);
/// `crl`: the relay also loads a CRL of the lab device CA. Returns the lab, the relay port,
/// the admin port, the ACME base URL, the attestation CA and the daemon.
fn acme_lab(crl: bool) -> (Lab, u16, u16, String, TestCa, common::Kill) {
    require_aioquic();
    let relay_port = free_udp_port();
    let admin = free_port();
    let lab = Lab::new();
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OK).unwrap();
    std::fs::write(lab.dir.join("webhook.pw"), "s3cret-pw\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        lab.dir.join("webhook.pw"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let attestation = TestCa::new(" e2e");
    std::fs::write(lab.dir.join("attestation-root.der"), &attestation.root_der).unwrap();
    let d = lab.dir.display();
    let base = format!("https://relay.attestgate.lab:{admin}/acme");
    lab.write_config(
        relay_port,
        "",
        &format!(
            "[compliance.webhook]\nlisten = \"127.0.0.1:{admin}\"\ncertificate = \"{d}/relay.crt\"\n\
             private_key = \"{d}/relay.key\"\nauth = \"basic\"\nusername = \"jamf\"\npassword_file = \"{d}/webhook.pw\"\n\
             [acme]\nenabled = true\nbase_url = \"{base}\"\nattestation_roots = [\"{d}/attestation-root.der\"]\n"
        ),
    );
    if crl {
        lab_crl(&lab);
        let text = std::fs::read_to_string(&lab.config).unwrap().replace(
            "identity = [\"subject-cn\"]",
            &format!("identity = [\"subject-cn\"]\ncrl = [\"{d}/device-ca.crl\"]"),
        );
        std::fs::write(&lab.config, text).unwrap();
    }
    let daemon = lab.start();
    lab.wait_for(
        "the relay and the ACME server",
        Duration::from_secs(20),
        || {
            let s = lab.json(&["status"]);
            s["relay"]["state"]
                .as_str()
                .is_some_and(|r| r.starts_with("listening"))
                && s["acme"]["directory"].is_string()
        },
    );
    (lab, relay_port, admin, base, attestation, daemon)
}

/// An empty CRL of the lab device CA (`device-ca.crl`, PEM), with openssl.
fn lab_crl(lab: &Lab) {
    let dir = &lab.dir;
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
    std::fs::write(
        dir.join("crl.cnf"),
        "[ca]\ndefault_ca = lab\n[lab]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
         default_md = sha256\ndefault_crl_days = 7\n",
    )
    .unwrap();
    common::sh(
        &[
            "openssl",
            "ca",
            "-config",
            "crl.cnf",
            "-gencrl",
            "-keyfile",
            "device-ca.key",
            "-cert",
            "device-ca.crt",
            "-out",
            "device-ca.crl",
        ],
        dir,
    );
}

#[test]
fn acme_certificate_passes_the_relay_and_revocation_cuts_its_flows() {
    let (lab, relay_port, admin, base, attestation, daemon) = acme_lab(false);
    let status = lab.json(&["status"]);
    assert_eq!(
        status["acme"]["directory"],
        format!("{base}/directory"),
        "{status}"
    );
    assert!(lab.dir.join("state/device-ca.pem").exists());

    // enrollment over HTTPS through the admin listener
    let https = Https::new(&lab, admin);
    let mut client = Client::new(&https, &base);
    let account = client.register();
    assert_eq!(
        account.status,
        http::StatusCode::CREATED,
        "{}",
        account.json()
    );
    let started = std::time::Instant::now();
    let enrolled = enroll_device(&client, &attestation, SERIAL).unwrap();
    eprintln!(
        "ACME enrollment (order, attest, finalize, download): {} ms",
        started.elapsed().as_millis()
    );
    assert_eq!(
        enrolled.chain_pem.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf + device CA"
    );
    let issued = lab.events_of("acme.issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["identifier"], SERIAL);
    assert_eq!(issued[0]["account"], client.kid.clone().unwrap());
    let cert_serial = issued[0]["serial"].as_str().unwrap().to_string();
    let list = lab.json(&["ca", "list"]);
    assert_eq!(list["certificates"][0]["serial"], cert_serial, "{list}");
    assert_eq!(list["certificates"][0]["device"], SERIAL);
    assert_eq!(list["certificates"][0]["revoked"], false);
    let table = lab.cli(&["ca", "list"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&cert_serial) && text.contains("NOT AFTER"),
        "{text}"
    );

    // `config apply` with [acme] unchanged keeps the running server (and its CA, relay trust)
    lab.json(&["config", "apply"]);
    assert_eq!(lab.events_of("acme.started").len(), 1);

    // a device the MDM does not know: refused with a problem document and an event
    let refused = enroll_device(&client, &attestation, "C02UNKNOWN9").unwrap_err();
    assert_eq!(
        refused["type"], "urn:ietf:params:acme:error:unauthorized",
        "{refused}"
    );
    assert!(
        refused["detail"].as_str().unwrap().contains("not enrolled"),
        "{refused}"
    );
    let events = lab.events_of("acme.refused");
    assert!(
        events
            .iter()
            .any(|e| e["identifier"] == "C02UNKNOWN9" && e["problem"] == "unauthorized"),
        "{events:?}"
    );
    assert_eq!(lab.events_of("acme.issued").len(), 1);

    // the aioquic device passes the relay with the issued certificate and its attested key
    std::fs::write(lab.dir.join("device.crt"), &enrolled.chain_pem).unwrap();
    std::fs::write(lab.dir.join("device.key"), &enrolled.key_pem).unwrap();
    let echo = echo_server();
    let device = common::device(&lab.dir, relay_port, echo);
    let flowing = device.lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(flowing["event"], "flowing", "{flowing}");
    let flows = lab.json(&["flows"]);
    assert_eq!(flows["flows"][0]["device"], SERIAL, "{flows}");
    assert_eq!(flows["flows"][0]["egress"], "pair", "{flows}");

    // revocation from the CLI cuts the open stream within a second
    let before = now_ms();
    let revoked = lab.json(&["ca", "revoke", "--device", SERIAL, "--reason", "lost"]);
    let answered = now_ms();
    assert_eq!(revoked["revoked"][0], cert_serial, "{revoked}");
    // the client reports after its connection's draining period (aioquic lingers; a loaded
    // machine makes that slow): the latency is the client's own stamp of the stream reset
    let end = device.lines.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(end["reset"], 0x10c, "reset as H3_REQUEST_CANCELLED: {end}");
    let at = end["reset_at_ms"].as_f64().unwrap();
    // then the connection is closed too
    assert!(
        end["terminated"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no longer accepted")),
        "{end}"
    );
    let latency = at - before;
    eprintln!(
        "ca revoke → stream cut: {latency:.0} ms (the CLI answered after {:.0} ms)",
        answered - before
    );
    assert!(latency < 1000.0, "cut after {latency} ms: {end}");
    drop(device);
    let events = lab.events_of("ca.revoked");
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["device"], SERIAL);
    assert_eq!(events[0]["reason"], "lost");
    assert_eq!(events[0]["flows"], 1);
    let list = lab.json(&["ca", "list"]);
    assert_eq!(list["certificates"][0]["revoked"], true, "{list}");

    // a new connection with the revoked certificate is refused
    let again = common::device(&lab.dir, relay_port, echo);
    let answer = again.lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_ne!(answer["event"], "flowing", "{answer}");
    assert_eq!(answer["status"], 403, "{answer}");
    drop(again);

    // revoking again: nothing left to revoke; an unknown certificate is an error
    let twice = lab.json(&["ca", "revoke", "--certificate", &cert_serial]);
    assert_eq!(twice["revoked"], serde_json::json!([]), "{twice}");
    let unknown = lab.cli(&["ca", "revoke", "--certificate", "0badc0de"]);
    assert_eq!(unknown.status.code(), Some(5), "{unknown:?}");
    lab.stop(daemon);
}

#[test]
fn ca_commands_without_acme_say_so() {
    let relay_port = free_udp_port();
    let lab = Lab::new();
    std::fs::write(lab.dir.join("devices.toml"), DEVICE_OK).unwrap();
    lab.write_config(relay_port, "", "");
    let daemon = lab.start();
    let out = lab.cli(&["ca", "list"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[acme] is not enabled"),
        "{out:?}"
    );
    lab.stop(daemon);
}

/// With `relay.crl` configured the relay refuses certificates of a CA without a CRL: the
/// built-in CA's own CRL is written for it, and its certificates pass.
#[test]
fn acme_certificate_passes_a_relay_that_checks_crls() {
    let (lab, relay_port, admin, base, attestation, daemon) = acme_lab(true);
    assert!(lab.dir.join("state/device-ca.crl").exists());
    let https = Https::new(&lab, admin);
    let mut client = Client::new(&https, &base);
    client.register();
    let enrolled = enroll_device(&client, &attestation, SERIAL).unwrap();
    std::fs::write(lab.dir.join("device.crt"), &enrolled.chain_pem).unwrap();
    std::fs::write(lab.dir.join("device.key"), &enrolled.key_pem).unwrap();
    let device = common::device(&lab.dir, relay_port, echo_server());
    let flowing = device.lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(flowing["event"], "flowing", "{flowing}");
    drop(device);
    lab.stop(daemon);
}

/// An independent ACME client — certbot's `acme` library (its own JWS, nonce and account
/// handling, ES384 account key) in `tests/lab/acme_independent.py` — gets a certificate through
/// device-attest-01, and the aioquic device passes the relay with it.
#[test]
fn an_independent_acme_client_gets_a_certificate_the_relay_accepts() {
    use base64::Engine;
    use std::io::{BufRead, Write};
    let has_acme = std::process::Command::new("python3")
        .args(["-c", "import acme, josepy, cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_acme,
        "certbot's acme library is missing: python3 -m pip install acme (tests/run.sh does)"
    );
    let (lab, relay_port, _admin, base, attestation, daemon) = acme_lab(false);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/lab/acme_independent.py");
    let key_file = lab.dir.join("device.key");
    let mut client = std::process::Command::new("python3")
        .arg(&script)
        .arg(format!("{base}/directory"))
        .arg(lab.dir.join("relay-ca.crt"))
        .arg(SERIAL)
        .arg(&key_file)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(client.stdout.take().unwrap()).lines();
    let first = lines
        .next()
        .expect("the client ended before its order (its error is above)")
        .unwrap();
    let token = first
        .strip_prefix("token ")
        .unwrap_or_else(|| panic!("the client said {first:?}"));
    let mut spec = LeafSpec::for_token(token);
    spec.serial = Some(SERIAL.to_string());
    spec.not_before = SystemTime::now() - Duration::from_secs(3600);
    spec.not_after = SystemTime::now() + Duration::from_secs(7 * 86_400);
    let (att_obj, leaf) = attestation.att_obj(&spec);
    std::fs::write(&key_file, leaf.key.unwrap().serialize_pem()).unwrap();
    let mut stdin = client.stdin.take().unwrap();
    writeln!(
        stdin,
        "{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&att_obj)
    )
    .unwrap();
    drop(stdin);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(client.wait().unwrap().success(), "{rest:?}");
    assert_eq!(rest[0], "certificate", "{rest:?}");
    let chain = rest[1..].join("\n");
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{chain}");
    let issued = lab.events_of("acme.issued");
    assert_eq!(issued.len(), 1, "{issued:?}");
    assert_eq!(issued[0]["identifier"], SERIAL);
    std::fs::write(lab.dir.join("device.crt"), &chain).unwrap();
    let device = common::device(&lab.dir, relay_port, echo_server());
    let flowing = device.lines.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(flowing["event"], "flowing", "{flowing}");
    drop(device);
    lab.stop(daemon);
}
