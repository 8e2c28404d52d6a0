//! A small ACME client for tests (RFC 8555): ring ECDSA P-256 account keys, JWS signing with
//! `jwk` or `kid` (§6.2), fresh nonces (§7.2), POST-as-GET (§6.3). It speaks through a
//! [`Transport`]: the handler in process ([`AcmeServer`]) for the server's own tests, or HTTPS
//! to a running appliance for the end-to-end tests (cargo feature `testing`).
//!
//! Test support: it asserts and panics instead of returning errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::jws::b64u;
use super::AcmeServer;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

/// Carries one request to the server and its answer back. Requests carry the absolute URL
/// the client was given, or a path for in-process use.
pub trait Transport {
    fn send(&self, req: Request<Bytes>) -> Response<Bytes>;
}

impl Transport for AcmeServer {
    fn send(&self, req: Request<Bytes>) -> Response<Bytes> {
        self.handle(req)
    }
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn content_type(&self) -> String {
        self.header("content-type").unwrap_or_default()
    }
    /// Asserts an RFC 7807 problem document of this ACME type and status.
    pub fn assert_problem(&self, kind: &str, status: u16) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "body: {}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type(), "application/problem+json");
        let doc = self.json();
        assert_eq!(
            doc["type"],
            format!("urn:ietf:params:acme:error:{kind}"),
            "{doc}"
        );
        assert_eq!(doc["status"], status);
        assert!(
            doc["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{doc}"
        );
        doc
    }
}

/// A request with a JOSE body (RFC 8555 §6.2 `application/jose+json`).
pub fn request(method: Method, uri: &str, body: Vec<u8>) -> Request<Bytes> {
    Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/jose+json")
        .body(Bytes::from(body))
        .unwrap()
}

/// The client: one account key, and its account URL once registered.
pub struct Client<'a> {
    transport: &'a dyn Transport,
    /// The ACME base URL (`https://host:port/acme`), no trailing slash.
    pub base: String,
    pub key: EcdsaKeyPair,
    pub kid: Option<String>,
}

impl std::fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl<'a> Client<'a> {
    /// A client with a new P-256 account key.
    pub fn new(transport: &'a dyn Transport, base: &str) -> Client<'a> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Client {
            transport,
            base: base.to_string(),
            key,
            kid: None,
        }
    }

    /// The account key as a JWK (RFC 7518 §6.2).
    pub fn jwk(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "x": b64u(&point[1..33]), "y": b64u(&point[33..65])})
    }

    pub fn send(&self, req: Request<Bytes>) -> Answer {
        let (parts, body) = self.transport.send(req).into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    /// A fresh nonce (§7.2, HEAD newNonce).
    pub fn nonce(&self) -> String {
        let a = self.send(request(
            Method::HEAD,
            &format!("{}/new-nonce", self.base),
            vec![],
        ));
        a.header("replay-nonce").unwrap()
    }

    /// A flattened JWS (§6.2) over `payload` (already base64url) with these protected headers.
    pub fn sign(&self, protected: &Value, payload: &str) -> Vec<u8> {
        let protected = b64u(protected.to_string().as_bytes());
        let input = format!("{protected}.{payload}");
        let sig = self
            .key
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .unwrap();
        json!({"protected": protected, "payload": payload, "signature": b64u(sig.as_ref())})
            .to_string()
            .into_bytes()
    }

    /// Protected headers: `kid` once registered, else `jwk` (§6.2).
    pub fn protected(&self, url: &str, nonce: &str) -> Value {
        let mut p = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => p["kid"] = json!(kid),
            None => p["jwk"] = self.jwk(),
        }
        p
    }

    /// Signed POST to `url` (absolute, as the server names it); `None` payload is POST-as-GET
    /// (§6.3).
    pub fn post(&self, url: &str, payload: Option<Value>) -> Answer {
        let payload = payload
            .map(|p| b64u(p.to_string().as_bytes()))
            .unwrap_or_default();
        let body = self.sign(&self.protected(url, &self.nonce()), &payload);
        self.send(request(Method::POST, url, body))
    }

    /// newAccount (§7.3); keeps the account URL as `kid`.
    pub fn register(&mut self) -> Answer {
        let a = self.post(
            &format!("{}/new-account", self.base),
            Some(json!({"termsOfServiceAgreed": true})),
        );
        self.kid = a.header("location");
        a
    }

    /// newOrder (§7.4) for one `permanent-identifier`.
    pub fn new_order(&self, serial: &str) -> Answer {
        self.post(
            &format!("{}/new-order", self.base),
            Some(json!({"identifiers": [{"type": "permanent-identifier", "value": serial}]})),
        )
    }

    /// Orders a certificate for `serial` and reads its authorization: (order URL, challenge
    /// URL, token, the order object).
    pub fn order(&self, serial: &str) -> (String, String, String, Value) {
        let o = self.new_order(serial);
        assert_eq!(o.status, StatusCode::CREATED, "{}", o.json());
        let order_url = o.header("location").unwrap();
        let order = o.json();
        let authz = self.post(order["authorizations"][0].as_str().unwrap(), None);
        assert_eq!(authz.status, StatusCode::OK, "{}", authz.json());
        let challenge = authz.json()["challenges"][0].clone();
        (
            order_url,
            challenge["url"].as_str().unwrap().to_string(),
            challenge["token"].as_str().unwrap().to_string(),
            order,
        )
    }

    /// Answers a `device-attest-01` challenge (draft-ietf-acme-device-attest §5) with this
    /// `attObj`.
    pub fn attest(&self, challenge_url: &str, att_obj: &[u8]) -> Answer {
        self.post(challenge_url, Some(json!({"attObj": b64u(att_obj)})))
    }

    /// Finalizes with a CSR (DER) and downloads the certificate chain (§7.4, §7.4.2): the
    /// PEM chain, or the refusing answer.
    pub fn finalize_and_download(
        &self,
        order: &Value,
        csr_der: &[u8],
    ) -> Result<String, Box<Answer>> {
        let fin = self.post(
            order["finalize"].as_str().unwrap(),
            Some(json!({"csr": b64u(csr_der)})),
        );
        if fin.status != StatusCode::OK {
            return Err(Box::new(fin));
        }
        let cert_url = fin.json()["certificate"].as_str().unwrap().to_string();
        let cert = self.post(&cert_url, None);
        if cert.status != StatusCode::OK {
            return Err(Box::new(cert));
        }
        assert_eq!(cert.content_type(), "application/pem-certificate-chain");
        Ok(String::from_utf8(cert.body.to_vec()).unwrap())
    }
}
