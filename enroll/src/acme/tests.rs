//! The whole device-attest-01 flow and its refusals, driven by a small ACME client (ring
//! ECDSA account keys, JWS signing, rcgen CSRs) against the handler. The attestation
//! verifier is a stand-in: its `attObj` is JSON naming the attestation it returns.

use super::test_client::{request, Client};
use super::*;
use crate::ca::{CaOptions, DeviceCa};
use base64::Engine;
use std::collections::HashSet;

const BASE: &str = "https://gate.test:8443/acme";
const SERIAL: &str = "C02XK1ABJGH5";

/// A stand-in for the Apple verifier: attObj is JSON
/// `{"serial", "udid", "spki" (b64url), "leaf" (any text), "token", "error"}`.
struct FakeVerifier;

impl AttestationVerifier for FakeVerifier {
    fn verify(
        &self,
        att_obj: &[u8],
        token: &str,
        now: SystemTime,
    ) -> Result<Attestation, AttestError> {
        let v: Value =
            serde_json::from_slice(att_obj).map_err(|e| AttestError::Cbor(e.to_string()))?;
        if let Some(e) = v["error"].as_str() {
            return Err(AttestError::Chain(e.to_string()));
        }
        if v["token"].as_str() != Some(token) {
            return Err(AttestError::WrongNonce);
        }
        let leaf = v["leaf"].as_str().unwrap_or("leaf");
        let mut leaf_sha256 = [0u8; 32];
        leaf_sha256
            .copy_from_slice(ring::digest::digest(&ring::digest::SHA256, leaf.as_bytes()).as_ref());
        Ok(Attestation {
            serial: v["serial"].as_str().map(String::from),
            udid: v["udid"].as_str().map(String::from),
            os_version: Some("17.4".into()),
            sip_enabled: None,
            secure_boot: None,
            public_key_spki: b64u_decode(v["spki"].as_str().unwrap_or("")).unwrap_or_default(),
            leaf_sha256,
            apple_extensions: vec![
                (
                    "1.2.840.113635.100.8.9.1".into(),
                    v["serial"].as_str().unwrap_or("").as_bytes().to_vec(),
                ),
                ("1.2.840.113635.100.8.10.1".into(), b"17.4".to_vec()),
                ("1.2.840.113635.100.8.11.1".into(), vec![0xAA; 32]),
            ],
            not_after: now + Duration::from_secs(3600),
        })
    }
}

struct Enrolled(HashSet<String>);

impl DeviceDirectory for Enrolled {
    fn is_enrolled(&self, serial: &str) -> bool {
        self.0.contains(serial)
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<AcmeEvent>>);

impl EventSink for Events {
    fn event(&self, event: &AcmeEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

impl Events {
    fn all(&self) -> Vec<AcmeEvent> {
        self.0.lock().unwrap().clone()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    ca: Arc<DeviceCa>,
    server: AcmeServer,
    events: Arc<Events>,
}

fn fixture_with(require_enrolled: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(DeviceCa::open(dir.path(), CaOptions::default()).unwrap());
    let events = Arc::new(Events::default());
    let server = server_in(dir.path(), ca.clone(), events.clone(), require_enrolled);
    Fixture {
        dir,
        ca,
        server,
        events,
    }
}

fn server_in(
    dir: &Path,
    ca: Arc<DeviceCa>,
    events: Arc<Events>,
    require_enrolled: bool,
) -> AcmeServer {
    let mut options = AcmeOptions::new(BASE);
    options.require_enrolled = require_enrolled;
    AcmeServer::new(
        options,
        dir,
        ca,
        Arc::new(FakeVerifier),
        Arc::new(Enrolled(
            [SERIAL.to_string(), "C02OTHER0001".to_string()].into(),
        )),
        events,
    )
    .unwrap()
}

fn fixture() -> Fixture {
    fixture_with(true)
}

/// A device: its Secure Enclave key stands in as an rcgen key pair.
struct Device {
    key: rcgen::KeyPair,
}

impl Device {
    fn new() -> Device {
        Device {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }
    fn p384() -> Device {
        Device {
            key: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        }
    }
    fn spki(&self) -> Vec<u8> {
        use rcgen::PublicKeyData;
        self.key.subject_public_key_info()
    }
    fn att_obj(&self, serial: &str, token: &str, leaf: &str) -> String {
        b64u(json!({"serial": serial, "udid": "00008030-000A1B2C3D4E5F60", "spki": b64u(&self.spki()), "leaf": leaf, "token": token}).to_string().as_bytes())
    }
    fn csr(&self) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, SERIAL);
        params.serialize_request(&self.key).unwrap().der().to_vec()
    }
}

/// Registers, orders, and reads the authorization: (order URL, challenge URL, token).
fn order_for(client: &Client<'_>, serial: &str) -> (String, String, String, Value) {
    client.order(serial)
}

#[test]
fn acme_device_attest_full_flow() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);

    // §7.1.1 directory
    let dir = client.send(request(Method::GET, "/acme/directory", vec![]));
    assert_eq!(dir.status, StatusCode::OK);
    let d = dir.json();
    assert_eq!(d["newNonce"], format!("{BASE}/new-nonce"));
    assert_eq!(d["newAccount"], format!("{BASE}/new-account"));
    assert_eq!(d["newOrder"], format!("{BASE}/new-order"));
    assert_eq!(f.server.directory_url(), format!("{BASE}/directory"));

    // §7.2 newNonce: HEAD 200, GET 204, both with a nonce and no-store
    let head = client.send(request(Method::HEAD, "/acme/new-nonce", vec![]));
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.header("replay-nonce").is_some());
    assert_eq!(head.header("cache-control").as_deref(), Some("no-store"));
    let get = client.send(request(Method::GET, "/acme/new-nonce", vec![]));
    assert_eq!(get.status, StatusCode::NO_CONTENT);
    assert_ne!(get.header("replay-nonce"), head.header("replay-nonce"));

    // §7.3 newAccount: 201 + Location; the same key again: 200, same Location
    let a = client.register();
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.json()["status"], "valid");
    let kid = client.kid.clone().unwrap();
    assert!(kid.starts_with(&format!("{BASE}/acct/")));
    client.kid = None;
    let again = client.post(
        &format!("{BASE}/new-account"),
        Some(json!({"onlyReturnExisting": true})),
    );
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("location").as_deref(), Some(kid.as_str()));
    client.kid = Some(kid.clone());

    // §7.4 newOrder
    let device = Device::new();
    let (order_url, chall_url, token, order) = order_for(&client, SERIAL);
    assert_eq!(order["status"], "pending");
    assert_eq!(
        order["identifiers"][0],
        json!({"type": "permanent-identifier", "value": SERIAL})
    );
    assert!(order["expires"].as_str().unwrap().ends_with('Z'));
    let authz = client
        .post(order["authorizations"][0].as_str().unwrap(), None)
        .json();
    assert_eq!(authz["status"], "pending");
    assert_eq!(authz["identifier"]["value"], SERIAL);
    assert_eq!(authz["challenges"].as_array().unwrap().len(), 1);
    assert_eq!(authz["challenges"][0]["type"], "device-attest-01");
    assert!(token.len() >= 22, "token has ≥128 bits");

    // finalize before the challenge: orderNotReady
    let early = client.post(
        order["finalize"].as_str().unwrap(),
        Some(json!({"csr": b64u(&device.csr())})),
    );
    early.assert_problem("orderNotReady", 403);

    // device-attest-01 §5
    let c = client.post(
        &chall_url,
        Some(json!({"attObj": device.att_obj(SERIAL, &token, "leaf-1")})),
    );
    assert_eq!(c.status, StatusCode::OK, "{}", c.json());
    assert_eq!(c.json()["status"], "valid");
    assert!(c.json()["validated"].is_string());
    assert!(c
        .headers
        .get_all("link")
        .iter()
        .any(|l| l.to_str().unwrap().contains("rel=\"up\"")));
    let ready = client.post(&order_url, None).json();
    assert_eq!(ready["status"], "ready");
    let authz = client
        .post(order["authorizations"][0].as_str().unwrap(), None)
        .json();
    assert_eq!(authz["status"], "valid");

    // finalize
    let fin = client.post(
        order["finalize"].as_str().unwrap(),
        Some(json!({"csr": b64u(&device.csr())})),
    );
    assert_eq!(fin.status, StatusCode::OK, "{}", fin.json());
    let done = fin.json();
    assert_eq!(done["status"], "valid");
    let cert_url = done["certificate"].as_str().unwrap().to_string();

    // §7.4.2 download
    let cert = client.post(&cert_url, None);
    assert_eq!(cert.status, StatusCode::OK);
    assert_eq!(cert.content_type(), "application/pem-certificate-chain");
    let pem = String::from_utf8(cert.body.to_vec()).unwrap();
    assert_eq!(
        pem.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf + CA"
    );
    let ders: Vec<Vec<u8>> = pem
        .split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|b| {
            let b64: String = b.split("-----END").next().unwrap().lines().collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap()
        })
        .collect();
    assert_eq!(ders[1], f.ca.certificate_der());
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&ders[0]).unwrap();
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ders[1]).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(
        leaf.public_key().raw,
        device.spki().as_slice(),
        "the attested key"
    );
    // the relay reads the serial from the PermanentIdentifier SAN
    let id =
        relay::identity::device_identity(&ders[0], &[relay::IdentitySource::PermanentIdentifier])
            .unwrap();
    assert_eq!(id.serial, SERIAL);
    assert_eq!(id.os_version.as_deref(), Some("17.4"));

    let events = f.events.all();
    let issued: Vec<_> = events
        .iter()
        .filter(|e| e.outcome == Outcome::Issued)
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(issued[0].identifier.as_deref(), Some(SERIAL));
    assert_eq!(issued[0].attested_serial.as_deref(), Some(SERIAL));
    assert_eq!(issued[0].account.as_deref(), Some(kid.as_str()));
    let cert_serial = issued[0].certificate_serial.clone().unwrap();
    assert_eq!(cert_serial, crate::ca::serial_hex(leaf.raw_serial()));
    assert!(f
        .ca
        .issued()
        .iter()
        .any(|r| r.serial == cert_serial && r.device == SERIAL));
    // the one refusal was the early finalize
    assert!(events
        .iter()
        .filter(|e| e.outcome == Outcome::Refused)
        .all(|e| e.problem == Some("orderNotReady")));

    // the account's orders (§7.1.2.1)
    let orders = client.post(&format!("{kid}/orders"), None).json();
    assert_eq!(orders["orders"], json!([order_url]));

    // state survives a restart: a new server on the same directory knows the account and order
    let again = server_in(f.dir.path(), f.ca.clone(), f.events.clone(), true);
    let mut c2 = Client::new(&again, BASE);
    c2.key = client.key;
    c2.kid = Some(kid);
    let reread = c2.post(&order_url, None);
    assert_eq!(reread.status, StatusCode::OK);
    assert_eq!(reread.json()["status"], "valid");
    assert_eq!(c2.post(&cert_url, None).body, cert.body);
}

#[test]
fn acme_p384_device_key_is_issued() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let device = Device::p384();
    let (_, chall, token, order) = order_for(&client, SERIAL);
    let c = client.post(
        &chall,
        Some(json!({"attObj": device.att_obj(SERIAL, &token, "p384")})),
    );
    assert_eq!(c.status, StatusCode::OK);
    let fin = client.post(
        order["finalize"].as_str().unwrap(),
        Some(json!({"csr": b64u(&device.csr())})),
    );
    assert_eq!(fin.status, StatusCode::OK, "{}", fin.json());
    assert_eq!(fin.json()["status"], "valid");
}

#[test]
fn acme_bad_jws_signature_is_malformed() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let url = format!("{BASE}/new-order");
    let mut body: Value = serde_json::from_slice(&client.sign(
        &client.protected(&url, &client.nonce()),
        &b64u(br#"{"identifiers":[{"type":"permanent-identifier","value":"X"}]}"#),
    ))
    .unwrap();
    let mut sig = b64u_decode(body["signature"].as_str().unwrap()).unwrap();
    sig[10] ^= 1;
    body["signature"] = json!(b64u(&sig));
    let a = client.send(request(
        Method::POST,
        "/acme/new-order",
        body.to_string().into_bytes(),
    ));
    let doc = a.assert_problem("malformed", 400);
    assert!(doc["detail"].as_str().unwrap().contains("signature"));
    assert!(
        a.header("replay-nonce").is_some(),
        "errors carry a fresh nonce"
    );
    // a payload swapped under a valid signature fails the same way
    let mut body: Value = serde_json::from_slice(&client.sign(
        &client.protected(&url, &client.nonce()),
        &b64u(br#"{"identifiers":[{"type":"permanent-identifier","value":"X"}]}"#),
    ))
    .unwrap();
    body["payload"] = json!(b64u(
        br#"{"identifiers":[{"type":"permanent-identifier","value":"Y"}]}"#
    ));
    client
        .send(request(
            Method::POST,
            "/acme/new-order",
            body.to_string().into_bytes(),
        ))
        .assert_problem("malformed", 400);
    assert!(f
        .events
        .all()
        .iter()
        .any(|e| e.outcome == Outcome::Refused && e.problem == Some("malformed")));
}

#[test]
fn acme_reused_nonce_is_bad_nonce_with_a_fresh_one() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let url = format!("{BASE}/new-order");
    let nonce = client.nonce();
    let payload = b64u(
        format!(r#"{{"identifiers":[{{"type":"permanent-identifier","value":"{SERIAL}"}}]}}"#)
            .as_bytes(),
    );
    let first = client.send(request(
        Method::POST,
        "/acme/new-order",
        client.sign(&client.protected(&url, &nonce), &payload),
    ));
    assert_eq!(first.status, StatusCode::CREATED);
    let second = client.send(request(
        Method::POST,
        "/acme/new-order",
        client.sign(&client.protected(&url, &nonce), &payload),
    ));
    second.assert_problem("badNonce", 400);
    let fresh = second
        .header("replay-nonce")
        .expect("badNonce carries a fresh nonce (§6.5)");
    // the fresh one works
    let third = client.send(request(
        Method::POST,
        "/acme/new-order",
        client.sign(&client.protected(&url, &fresh), &payload),
    ));
    assert_eq!(third.status, StatusCode::CREATED);
    // a nonce never issued
    client
        .send(request(
            Method::POST,
            "/acme/new-order",
            client.sign(&client.protected(&url, "AAAAAAAAAAAAAAAAAAAAAA"), &payload),
        ))
        .assert_problem("badNonce", 400);
    assert!(
        f.events.all().iter().all(|e| e.problem != Some("badNonce")),
        "badNonce is not an event"
    );
}

#[test]
fn acme_url_in_the_protected_header_must_be_the_request_url() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let body = client.sign(
        &client.protected(&format!("{BASE}/new-account"), &client.nonce()),
        &b64u(br#"{"identifiers":[{"type":"permanent-identifier","value":"X"}]}"#),
    );
    client
        .send(request(Method::POST, "/acme/new-order", body))
        .assert_problem("unauthorized", 403);
    // another host
    let body = client.sign(
        &client.protected("https://evil.test:8443/acme/new-order", &client.nonce()),
        &b64u(br#"{"identifiers":[{"type":"permanent-identifier","value":"X"}]}"#),
    );
    client
        .send(request(Method::POST, "/acme/new-order", body))
        .assert_problem("unauthorized", 403);
}

#[test]
fn acme_unknown_kid_and_key_mixups() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.kid = Some(format!("{BASE}/acct/nobody"));
    client
        .new_order(SERIAL)
        .assert_problem("accountDoesNotExist", 400);
    client.kid = Some("https://elsewhere.test/acct/1".into());
    client
        .new_order(SERIAL)
        .assert_problem("accountDoesNotExist", 400);
    // onlyReturnExisting for an unknown key
    client.kid = None;
    client
        .post(
            &format!("{BASE}/new-account"),
            Some(json!({"onlyReturnExisting": true})),
        )
        .assert_problem("accountDoesNotExist", 400);
    client.register();
    // another account's key under this kid: the signature does not verify
    let other = Client::new(&f.server, BASE);
    let mut forged = Client::new(&f.server, BASE);
    forged.key = other.key;
    forged.kid = client.kid.clone();
    forged.new_order(SERIAL).assert_problem("malformed", 400);
    // jwk where a kid belongs
    let jwk_only = Client::new(&f.server, BASE);
    jwk_only.new_order(SERIAL).assert_problem("malformed", 400);
    // both jwk and kid
    let mut p = client.protected(&format!("{BASE}/new-order"), &client.nonce());
    p["jwk"] = client.jwk();
    client
        .send(request(
            Method::POST,
            "/acme/new-order",
            client.sign(&p, ""),
        ))
        .assert_problem("malformed", 400);
    // RS256 and none: badSignatureAlgorithm naming what is accepted
    let mut p = client.protected(&format!("{BASE}/new-order"), &client.nonce());
    p["alg"] = json!("RS256");
    let doc = client
        .send(request(
            Method::POST,
            "/acme/new-order",
            client.sign(&p, ""),
        ))
        .assert_problem("badSignatureAlgorithm", 400);
    assert_eq!(doc["algorithms"], json!(["ES256", "ES384"]));
    p["alg"] = json!("none");
    client
        .send(request(
            Method::POST,
            "/acme/new-order",
            client.sign(&p, ""),
        ))
        .assert_problem("badSignatureAlgorithm", 400);
    // not application/jose+json
    let mut req = request(Method::POST, "/acme/new-order", b"{}".to_vec());
    req.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    client.send(req).assert_problem("malformed", 415);
    // not JSON at all
    client
        .send(request(
            Method::POST,
            "/acme/new-order",
            b"\xff\x00".to_vec(),
        ))
        .assert_problem("malformed", 400);
    // GET on a POST resource, unknown resources
    client
        .send(request(Method::GET, "/acme/new-order", vec![]))
        .assert_problem("malformed", 400);
    client
        .send(request(Method::GET, "/other", vec![]))
        .assert_problem("malformed", 404);
}

#[test]
fn acme_only_permanent_identifiers_are_ordered() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let url = format!("{BASE}/new-order");
    client
        .post(
            &url,
            Some(json!({"identifiers": [{"type": "dns", "value": "example.com"}]})),
        )
        .assert_problem("unsupportedIdentifier", 400);
    client
        .post(
            &url,
            Some(json!({"identifiers": [
            {"type": "permanent-identifier", "value": SERIAL},
            {"type": "permanent-identifier", "value": "C02OTHER0001"}]})),
        )
        .assert_problem("rejectedIdentifier", 400);
    client
        .post(&url, Some(json!({"identifiers": [{"type": "permanent-identifier", "value": "bad serial/\n"}]})))
        .assert_problem("rejectedIdentifier", 400);
    client
        .post(&url, Some(json!({"identifiers": []})))
        .assert_problem("malformed", 400);
    client
        .post(&url, Some(json!({"identifiers": [{"type": "permanent-identifier", "value": SERIAL}], "notAfter": "2030-01-01T00:00:00Z"})))
        .assert_problem("malformed", 400);
    let refused: Vec<_> = f
        .events
        .all()
        .into_iter()
        .filter(|e| e.problem == Some("rejectedIdentifier"))
        .collect();
    assert_eq!(refused.len(), 2);
    assert_eq!(refused[0].account, client.kid);
}

#[test]
fn acme_attested_serial_must_be_the_order_identifier() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let device = Device::new();
    let (order_url, chall, token, _) = order_for(&client, SERIAL);
    let a = client.post(
        &chall,
        Some(json!({"attObj": device.att_obj("C02OTHER0001", &token, "l")})),
    );
    let doc = a.assert_problem("badAttestationStatement", 400);
    assert!(doc["detail"].as_str().unwrap().contains("C02OTHER0001"));
    // §7.1.6: challenge, authorization and order are invalid, the error recorded
    let order = client.post(&order_url, None).json();
    assert_eq!(order["status"], "invalid");
    assert_eq!(
        order["error"]["type"],
        "urn:ietf:params:acme:error:badAttestationStatement"
    );
    let authz = client
        .post(order["authorizations"][0].as_str().unwrap(), None)
        .json();
    assert_eq!(authz["status"], "invalid");
    assert_eq!(authz["challenges"][0]["status"], "invalid");
    assert!(authz["challenges"][0]["error"]["detail"].is_string());
    let e = f.events.all();
    let refusal = e
        .iter()
        .find(|e| e.problem == Some("badAttestationStatement"))
        .unwrap();
    assert_eq!(refusal.identifier.as_deref(), Some(SERIAL));
    assert_eq!(refusal.attested_serial.as_deref(), Some("C02OTHER0001"));
    assert!(refusal.order.is_some());

    // the UDID is an accepted identifier too
    let (_, chall, token, _) = order_for(&client, "00008030-000A1B2C3D4E5F60");
    let ok = client.post(
        &chall,
        Some(json!({"attObj": device.att_obj(SERIAL, &token, "l2")})),
    );
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.json());
}

#[test]
fn acme_csr_key_must_be_the_attested_key() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let device = Device::new();
    let impostor = Device::new();
    let (order_url, chall, token, order) = order_for(&client, SERIAL);
    let c = client.post(
        &chall,
        Some(json!({"attObj": device.att_obj(SERIAL, &token, "k")})),
    );
    assert_eq!(c.status, StatusCode::OK);
    let fin = order["finalize"].as_str().unwrap();
    let doc = client
        .post(fin, Some(json!({"csr": b64u(&impostor.csr())})))
        .assert_problem("badCSR", 400);
    assert!(doc["detail"].as_str().unwrap().contains("attested key"));
    // RSA: refused for its type
    let rsa = rsa_csr();
    let doc = client
        .post(fin, Some(json!({"csr": b64u(&rsa)})))
        .assert_problem("badCSR", 400);
    assert!(doc["detail"].as_str().unwrap().contains("EC"), "{doc}");
    // a CSR whose signature is broken
    let mut broken = device.csr();
    let last = broken.len() - 3;
    broken[last] ^= 0x55;
    client
        .post(fin, Some(json!({"csr": b64u(&broken)})))
        .assert_problem("badCSR", 400);
    // not a CSR
    client
        .post(fin, Some(json!({"csr": b64u(b"junk")})))
        .assert_problem("badCSR", 400);
    assert!(f.ca.issued().is_empty(), "nothing issued");
    // the order stays ready: the device may still finalize with its own key
    assert_eq!(client.post(&order_url, None).json()["status"], "ready");
    let ok = client.post(fin, Some(json!({"csr": b64u(&device.csr())})));
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        f.events
            .all()
            .iter()
            .filter(|e| e.problem == Some("badCSR"))
            .count(),
        4
    );
}

/// An RSA-2048 CSR made with `openssl req -new -newkey rsa:2048 -subj /CN=C02RSA0001`.
fn rsa_csr() -> Vec<u8> {
    const PEM: &str = "MIICWjCCAUICAQAwFTETMBEGA1UEAwwKQzAyUlNBMDAwMTCCASIwDQYJKoZIhvcN
AQEBBQADggEPADCCAQoCggEBAJJ1HeU6mHLE7NO7s5yJ/+koPUoyq/Fn8K4m0EwC
t4E4fxqOTUuX6jQT6rdqYgREcswA+BBG41AQzJLF9rFy6jGIL+g6rpmRAN5bcB3H
SBIxl+BTqbKZnKPoVeFcd4OUqC6DMaHk78jquWsbcMpz+Xu3/vAw1boSnEaig/2M
hDFzrIQYrM4gaKAmy9pRdBj34ihbl/gLn7/xIxms9dA7vLQKj0E7ZQadVv7Rtvgk
O3L5lXItyj/Q+EIh8tPvNGQupR8SytQfEbKEOBxg96paQLQhQprKiY1QnxWdQ5jn
BUVrMWrIyS/pQ2Ozg3wUMvFPN1/uFVoWjvwZAAnjbfnabuUCAwEAAaAAMA0GCSqG
SIb3DQEBCwUAA4IBAQBGTObrVr48r85dBf3nWDRCVb27rjxFG+8Gnmwo1AtjVR7x
CvsXRoO0yobI9r4DiyEp7bCEae5LRKJULsTZZBklkIc/YG+AgQPJ5rmWFQgVokPX
seHKrY9SG8F51hFyiA1RVhblWgRtWiITureoM3la60hYXnw1Ae5X9koGzC/F6RI7
kceelcSf/vnn0DpV6uFqmuUfBgS0yN9CyM+Fl+8gBrJtOdYqAOvr+XKbr2byQzIL
sjLVKsF8e8ZUXYUAtXpMqYGbM2Sn4lLWdNdyqJpJt71Vu2Q2guBdiWQemF6oqJnz
Jz80YJENsCzIUWoNN+OOwXLzmav+D76meFW7AcuY";
    let b64: String = PEM.lines().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn acme_device_not_enrolled_is_refused_unless_configured() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let device = Device::new();
    let stranger = "C02STRANGER1";
    let (order_url, chall, token, _) = order_for(&client, stranger);
    let doc = client
        .post(
            &chall,
            Some(json!({"attObj": device.att_obj(stranger, &token, "s")})),
        )
        .assert_problem("unauthorized", 403);
    assert!(doc["detail"].as_str().unwrap().contains("not enrolled"));
    assert_eq!(client.post(&order_url, None).json()["status"], "invalid");
    let e = f.events.all();
    let refusal = e
        .iter()
        .find(|e| e.problem == Some("unauthorized"))
        .unwrap();
    assert_eq!(refusal.outcome, Outcome::Refused);
    assert_eq!(refusal.attested_serial.as_deref(), Some(stranger));
    assert!(refusal.reason.contains("not enrolled"));
    assert_eq!(refusal.account, client.kid);

    // require_enrolled = false: the same device gets its certificate
    let open = fixture_with(false);
    let mut client = Client::new(&open.server, BASE);
    client.register();
    let (_, chall, token, order) = order_for(&client, stranger);
    assert_eq!(
        client
            .post(
                &chall,
                Some(json!({"attObj": device.att_obj(stranger, &token, "s")}))
            )
            .status,
        StatusCode::OK
    );
    let fin = client.post(
        order["finalize"].as_str().unwrap(),
        Some(json!({"csr": b64u(&device.csr())})),
    );
    assert_eq!(fin.json()["status"], "valid");
}

#[test]
fn acme_replayed_attestation_for_another_order_is_refused() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let device = Device::new();
    let (_, chall1, token1, _) = order_for(&client, SERIAL);
    let att = device.att_obj(SERIAL, &token1, "the-same-leaf");
    assert_eq!(
        client.post(&chall1, Some(json!({"attObj": att}))).status,
        StatusCode::OK
    );
    // the same attestation leaf in a second order (the stand-in takes any token here, as if
    // the freshness check were the only thing missing)
    let (order2, chall2, token2, _) = order_for(&client, SERIAL);
    let replay = device.att_obj(SERIAL, &token2, "the-same-leaf");
    let doc = client
        .post(&chall2, Some(json!({"attObj": replay})))
        .assert_problem("badAttestationStatement", 400);
    assert!(doc["detail"].as_str().unwrap().contains("replay"));
    assert_eq!(client.post(&order2, None).json()["status"], "invalid");
    // from another account too
    let mut other = Client::new(&f.server, BASE);
    other.register();
    let (_, chall3, token3, _) = order_for(&other, SERIAL);
    other
        .post(
            &chall3,
            Some(json!({"attObj": device.att_obj(SERIAL, &token3, "the-same-leaf")})),
        )
        .assert_problem("badAttestationStatement", 400);
}

#[test]
fn acme_verifier_errors_are_bad_attestation_statements() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let device = Device::new();
    let (_, chall, _, _) = order_for(&client, SERIAL);
    let bad = b64u(json!({"error": "unknown issuer"}).to_string().as_bytes());
    let a = client.post(&chall, Some(json!({"attObj": bad})));
    let doc = a.assert_problem("badAttestationStatement", 400);
    assert!(doc["detail"].as_str().unwrap().contains("unknown issuer"));
    assert!(a
        .headers
        .get_all("link")
        .iter()
        .any(|l| l.to_str().unwrap().contains("/authz/")));
    // the challenge is finished: a second response changes nothing
    let again = client.post(
        &chall,
        Some(json!({"attObj": device.att_obj(SERIAL, "x", "z")})),
    );
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["status"], "invalid");
    // a freshness code for another token
    let (_, chall, _, _) = order_for(&client, SERIAL);
    let doc = client
        .post(
            &chall,
            Some(json!({"attObj": device.att_obj(SERIAL, "another-token", "w")})),
        )
        .assert_problem("badAttestationStatement", 400);
    assert!(doc["detail"].as_str().unwrap().contains("SHA-256"));
    // attObj not base64url; a response without attObj leaves the challenge pending
    let (_, chall, token, _) = order_for(&client, SERIAL);
    client
        .post(&chall, Some(json!({})))
        .assert_problem("malformed", 400);
    assert_eq!(client.post(&chall, None).json()["status"], "pending");
    client
        .post(&chall, Some(json!({"attObj": "not base64!"})))
        .assert_problem("badAttestationStatement", 400);
    let _ = token;
    assert_eq!(
        f.events
            .all()
            .iter()
            .filter(|e| e.problem == Some("badAttestationStatement"))
            .count(),
        3
    );
}

#[test]
fn acme_orders_belong_to_their_account_and_expire() {
    let f = fixture();
    let mut client = Client::new(&f.server, BASE);
    client.register();
    let mut other = Client::new(&f.server, BASE);
    other.register();
    let device = Device::new();
    let (order_url, chall, token, _) = order_for(&client, SERIAL);
    other
        .post(&order_url, None)
        .assert_problem("unauthorized", 403);
    other
        .post(
            &chall,
            Some(json!({"attObj": device.att_obj(SERIAL, &token, "o")})),
        )
        .assert_problem("unauthorized", 403);
    // an hour later the pending order is invalid and its authorization expired (§7.1.6)
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    let body = client.sign(&client.protected(&order_url, &client.nonce()), "");
    let r = f
        .server
        .handle_at(request(Method::POST, &order_url, body), later);
    let order: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(order["status"], "invalid");
    let authz = client
        .post(order["authorizations"][0].as_str().unwrap(), None)
        .json();
    assert_eq!(authz["status"], "expired");
    // deactivated accounts are refused (§7.3.6)
    let kid = client.kid.clone().unwrap();
    let d = client.post(&kid, Some(json!({"status": "deactivated"})));
    assert_eq!(d.json()["status"], "deactivated");
    client.new_order(SERIAL).assert_problem("unauthorized", 403);
}

#[test]
fn acme_state_file_that_does_not_parse_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STATE_FILE), b"{not json").unwrap();
    let ca = Arc::new(DeviceCa::open(dir.path(), CaOptions::default()).unwrap());
    let err = AcmeServer::new(
        AcmeOptions::new(BASE),
        dir.path(),
        ca.clone(),
        Arc::new(FakeVerifier),
        Arc::new(Enrolled(HashSet::new())),
        Arc::new(Events::default()),
    )
    .unwrap_err();
    assert!(err.to_string().contains(STATE_FILE), "{err}");
    for bad in [
        "gate.test/acme",
        "https://gate.test",
        "https://gate.test/acme/",
        "https:///acme",
    ] {
        let e = AcmeServer::new(
            AcmeOptions::new(bad),
            dir.path(),
            ca.clone(),
            Arc::new(FakeVerifier),
            Arc::new(Enrolled(HashSet::new())),
            Arc::new(Events::default()),
        );
        assert!(matches!(e, Err(AcmeError::BaseUrl(_))), "{bad}");
    }
}
