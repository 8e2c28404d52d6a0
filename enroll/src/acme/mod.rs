//! An RFC 8555 ACME server for device certificates with the `device-attest-01` challenge
//! (draft-ietf-acme-device-attest), as a plain handler: `http::Request<Bytes>` in,
//! `http::Response<Bytes>` out, no sockets. The appliance's admin listener routes the
//! requests under the base URL's path (e.g. `/acme/`) here, unauthenticated: every ACME
//! request authenticates itself with its JWS.
//!
//! Resources (relative to the base URL):
//!
//! | path | method | RFC 8555 |
//! |---|---|---|
//! | `/directory` | GET | §7.1.1 |
//! | `/new-nonce` | HEAD (200), GET (204) | §7.2 |
//! | `/new-account` | POST, JWS with `jwk` | §7.3 (`onlyReturnExisting` §7.3.1) |
//! | `/acct/{id}` | POST (POST-as-GET, contact update, deactivation) | §7.3.2, §7.3.6 |
//! | `/acct/{id}/orders` | POST-as-GET | §7.1.2.1 |
//! | `/new-order` | POST | §7.4 |
//! | `/order/{id}` | POST-as-GET | §7.4 |
//! | `/order/{id}/finalize` | POST `{"csr"}` | §7.4 |
//! | `/authz/{id}` | POST-as-GET, deactivation | §7.5, §7.5.2 |
//! | `/chall/{id}` | POST `{"attObj"}` or POST-as-GET | §7.5.1, device-attest §5 |
//! | `/cert/{id}` | POST-as-GET → `application/pem-certificate-chain` | §7.4.2 |
//!
//! Not offered: `keyChange` (§7.3.5), `revokeCert` (§7.6: revocation is an operator action
//! on the appliance, [`crate::ca::DeviceCa::revoke_device`]), pre-authorization (`newAuthz`),
//! external account binding, `notBefore`/`notAfter` in orders.
//!
//! One order holds exactly one `permanent-identifier` (the device serial, or its UDID), one
//! authorization and one `device-attest-01` challenge; the three share the order's id. The
//! challenge is validated synchronously when the device posts its `attObj`: the verifier
//! ([`AttestationVerifier`]) checks the Apple chain and the freshness code against the
//! token; then the attested serial or UDID must equal the identifier, the attestation must
//! not have served another order, and (configurable) the device must be enrolled
//! ([`DeviceDirectory`]). A failure makes the challenge, the authorization and the order
//! invalid (§7.1.6) and is answered as a problem document; the device starts a new order.
//! Finalize takes a CSR whose key must be the attested key (EC P-256 or P-384), and the
//! device CA ([`crate::ca::DeviceCa`]) issues the certificate.
//!
//! Every issuance and every refusal is reported to an [`EventSink`] (apart from `badNonce`,
//! which is ordinary client behaviour, §6.5).
//!
//! State (accounts, orders, used attestations, certificates) lives in memory, bounded, and
//! is written as one JSON file (`acme-state.json`) in the state directory after every change
//! (write, fsync, rename). Nonces are not persisted: after a restart a client gets `badNonce`
//! once and retries with the fresh nonce that answer carries.

pub mod jws;
pub mod nonce;
pub mod problem;
/// A small ACME client for tests (cargo feature `testing`).
#[cfg(any(test, feature = "testing"))]
pub mod test_client;

use crate::attest::{AttestError, Attestation};
use crate::ca::{ec_curve, DeviceCa, DeviceCertRequest};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use jws::{b64u, b64u_decode, EcJwk, Jws, KeyRef};
use nonce::Nonces;
pub use problem::{Problem, ProblemType};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use x509_parser::prelude::FromDer;

/// The identifier type of draft-ietf-acme-device-attest §3.
pub const PERMANENT_IDENTIFIER: &str = "permanent-identifier";
/// The challenge type of draft-ietf-acme-device-attest §5.
pub const DEVICE_ATTEST_01: &str = "device-attest-01";
/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// The state file in the state directory.
pub const STATE_FILE: &str = "acme-state.json";
/// Pending orders one account may hold at once.
const MAX_PENDING_PER_ACCOUNT: usize = 20;
/// Finished orders are kept this long past their expiry for the client to read.
const RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Checks an `attObj` against the challenge token (the Apple attestation verifier).
pub trait AttestationVerifier: Send + Sync {
    fn verify(
        &self,
        att_obj: &[u8],
        token: &str,
        now: SystemTime,
    ) -> Result<Attestation, AttestError>;
}

/// The Apple verifier as the server asks it.
impl AttestationVerifier for crate::attest::Verifier {
    fn verify(
        &self,
        att_obj: &[u8],
        token: &str,
        now: SystemTime,
    ) -> Result<Attestation, AttestError> {
        crate::attest::Verifier::verify(self, att_obj, token, now)
    }
}

/// Whether the MDM knows a device as enrolled (the appliance's compliance store).
pub trait DeviceDirectory: Send + Sync {
    fn is_enrolled(&self, serial: &str) -> bool;
}

/// Receives the issuance and refusal events.
pub trait EventSink: Send + Sync {
    fn event(&self, event: &AcmeEvent);
}

/// Issued or refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Issued,
    Refused,
}

/// One issuance or refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AcmeEvent {
    pub outcome: Outcome,
    /// The problem's type name (`badAttestationStatement`, `unauthorized`…) for refusals.
    pub problem: Option<&'static str>,
    /// What happened, in words.
    pub reason: String,
    /// The order's identifier (the device serial or UDID), when known.
    pub identifier: Option<String>,
    /// The attested serial, when an attestation was verified.
    pub attested_serial: Option<String>,
    /// The account URL, when the request named one.
    pub account: Option<String>,
    pub order: Option<String>,
    /// Hex serial of the issued certificate.
    pub certificate_serial: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
    /// The request path.
    pub path: String,
}

/// How the server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeOptions {
    /// The absolute URL of the ACME root, without a trailing slash, as devices reach it
    /// (`https://gate.example.com:8443/acme`); the directory is `{base_url}/directory`.
    pub base_url: String,
    /// Refuse devices the compliance store does not know as enrolled.
    pub require_enrolled: bool,
    /// Lifetime of a pending order, its authorization and challenge.
    pub order_lifetime: Duration,
    pub max_accounts: usize,
    pub max_orders: usize,
    pub nonce_capacity: usize,
}

impl AcmeOptions {
    pub fn new(base_url: impl Into<String>) -> AcmeOptions {
        AcmeOptions {
            base_url: base_url.into(),
            require_enrolled: true,
            order_lifetime: Duration::from_secs(3600),
            max_accounts: 100_000,
            max_orders: 100_000,
            nonce_capacity: nonce::DEFAULT_CAPACITY,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME base URL {0:?}: must be https://host[:port]/path without a trailing slash")]
    BaseUrl(String),
    #[error("{path}: {message}")]
    State { path: String, message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Account {
    crv: String,
    x: String,
    y: String,
    status: String,
    #[serde(default)]
    contact: Vec<String>,
    created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attested {
    serial: Option<String>,
    udid: Option<String>,
    /// b64url of the SubjectPublicKeyInfo.
    spki: String,
    /// (OID, b64url value)
    extensions: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    account: String,
    status: String,
    identifier: String,
    created: i64,
    expires: i64,
    authz_status: String,
    challenge_status: String,
    token: String,
    #[serde(default)]
    validated: Option<i64>,
    /// The problem document that made it invalid.
    #[serde(default)]
    error: Option<Value>,
    #[serde(default)]
    attested: Option<Attested>,
    #[serde(default)]
    certificate: Option<Certificate>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Certificate {
    serial: String,
    not_after: i64,
    chain_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UsedAttestation {
    order: String,
    /// Unix seconds after which the record may go (the attestation leaf's notAfter).
    until: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    version: u32,
    /// id (the key's RFC 7638 thumbprint) → account
    accounts: BTreeMap<String, Account>,
    /// id → order (its authorization, challenge and certificate share the id)
    orders: BTreeMap<String, Order>,
    /// hex SHA-256 of an attestation leaf → the order it served
    attestations: BTreeMap<String, UsedAttestation>,
}

struct Inner {
    state: State,
    nonces: Nonces,
}

/// The ACME server.
pub struct AcmeServer {
    options: AcmeOptions,
    /// The base URL's path (`/acme`).
    prefix: String,
    verifier: Arc<dyn AttestationVerifier>,
    directory: Arc<dyn DeviceDirectory>,
    events: Arc<dyn EventSink>,
    ca: Arc<DeviceCa>,
    state_path: PathBuf,
    inner: Mutex<Inner>,
    rng: ring::rand::SystemRandom,
}

impl std::fmt::Debug for AcmeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeServer")
            .field("options", &self.options)
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// RFC 3339 UTC (RFC 8555 §7.1 timestamps).
fn rfc3339(unix_seconds: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_seconds) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => "1970-01-01T00:00:00Z".into(),
    }
}

/// A device identifier as accepted in an order: 1–64 characters of `[A-Za-z0-9._-]` (Apple
/// serials are alphanumeric, UDIDs hex with dashes).
fn valid_identifier(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// What a request is about, for the event of a refusal.
#[derive(Debug, Default)]
struct Ctx {
    account: Option<String>,
    order: Option<String>,
    identifier: Option<String>,
    attested_serial: Option<String>,
}

/// An answer before the common headers are added.
struct Reply {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    location: Option<String>,
    link_up: Option<String>,
}

impl Reply {
    fn json(status: StatusCode, body: &Value) -> Reply {
        Reply {
            status,
            body: Bytes::from(body.to_string()),
            content_type: "application/json",
            location: None,
            link_up: None,
        }
    }
    fn location(mut self, url: String) -> Reply {
        self.location = Some(url);
        self
    }
    fn up(mut self, url: String) -> Reply {
        self.link_up = Some(url);
        self
    }
}

/// A refusal that also names an `up` link (the challenge's authorization).
struct Refusal {
    problem: Problem,
    link_up: Option<String>,
    /// A status other than the problem type's (415 for a body that is not JOSE, §6.2).
    status: Option<http::StatusCode>,
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Refusal {
        Refusal {
            problem,
            link_up: None,
            status: None,
        }
    }
}

impl AcmeServer {
    /// Starts the server with its state in `state_dir` (created if missing).
    pub fn new(
        options: AcmeOptions,
        state_dir: &Path,
        ca: Arc<DeviceCa>,
        verifier: Arc<dyn AttestationVerifier>,
        directory: Arc<dyn DeviceDirectory>,
        events: Arc<dyn EventSink>,
    ) -> Result<AcmeServer, AcmeError> {
        let base = options.base_url.clone();
        let rest = base
            .strip_prefix("https://")
            .or_else(|| base.strip_prefix("http://"))
            .ok_or_else(|| AcmeError::BaseUrl(base.clone()))?;
        let slash = rest
            .find('/')
            .ok_or_else(|| AcmeError::BaseUrl(base.clone()))?;
        let (host, prefix) = rest.split_at(slash);
        if host.is_empty()
            || prefix.len() < 2
            || prefix.ends_with('/')
            || prefix.contains(['?', '#', ' '])
        {
            return Err(AcmeError::BaseUrl(base));
        }
        let state_path = state_dir.join(STATE_FILE);
        let state_error = |message: String| AcmeError::State {
            path: state_path.display().to_string(),
            message,
        };
        let state = match std::fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<State>(&bytes)
                .map_err(|e| state_error(format!("does not parse: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: 1,
                ..State::default()
            },
            Err(e) => return Err(state_error(e.to_string())),
        };
        Ok(AcmeServer {
            prefix: prefix.to_string(),
            inner: Mutex::new(Inner {
                state,
                nonces: Nonces::new(options.nonce_capacity),
            }),
            options,
            verifier,
            directory,
            events,
            ca,
            state_path,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// The path prefix the admin listener routes here (`/acme`).
    pub fn path_prefix(&self) -> &str {
        &self.prefix
    }

    /// The directory URL to configure in the ACME profile (`DirectoryURL`).
    pub fn directory_url(&self) -> String {
        self.url("/directory")
    }

    fn url(&self, rel: &str) -> String {
        format!("{}{rel}", self.options.base_url)
    }

    /// Answers one request at the current time.
    pub fn handle(&self, req: Request<Bytes>) -> Response<Bytes> {
        self.handle_at(req, SystemTime::now())
    }

    /// Answers one request as if at `now`.
    pub fn handle_at(&self, req: Request<Bytes>, now: SystemTime) -> Response<Bytes> {
        let path = req.uri().path().to_string();
        let mut inner = match self.inner.lock() {
            Ok(i) => i,
            Err(p) => p.into_inner(),
        };
        let mut ctx = Ctx::default();
        let wants_nonce = req.method() == Method::POST
            || path.strip_prefix(self.prefix.as_str()) == Some("/new-nonce");
        let result = self.route(&mut inner, &mut ctx, req, now);
        let (reply, problem) = match result {
            Ok(reply) => (reply, None),
            Err(refusal) => {
                let status = refusal.status.unwrap_or(refusal.problem.kind.status());
                let mut body = refusal.problem.to_json();
                // RFC 7807 §3.1: the document's status is the response's
                body["status"] = status.as_u16().into();
                let mut reply = Reply::json(status, &body);
                reply.content_type = "application/problem+json";
                reply.link_up = refusal.link_up;
                (reply, Some(refusal.problem))
            }
        };
        if let Some(p) = &problem {
            if p.kind != ProblemType::BadNonce {
                self.events.event(&AcmeEvent {
                    outcome: Outcome::Refused,
                    problem: Some(p.kind.name()),
                    reason: p.detail.clone(),
                    identifier: ctx.identifier,
                    attested_serial: ctx.attested_serial,
                    account: ctx.account,
                    order: ctx.order,
                    certificate_serial: None,
                    not_after: None,
                    path,
                });
            }
        }
        // §6.5: a fresh nonce with every answer to a POST, errors included (badNonce MUST),
        // and §7.2 newNonce
        let nonce = if wants_nonce
            || problem
                .as_ref()
                .is_some_and(|p| p.kind == ProblemType::BadNonce)
        {
            inner.nonces.issue()
        } else {
            None
        };
        drop(inner);
        self.finish(reply, nonce)
    }

    fn finish(&self, reply: Reply, nonce: Option<String>) -> Response<Bytes> {
        let mut r = Response::new(reply.body);
        *r.status_mut() = reply.status;
        let h = r.headers_mut();
        if !reply.content_type.is_empty() {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(reply.content_type),
            );
        }
        let mut add = |name: header::HeaderName, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                h.append(name, v);
            }
        };
        if let Some(n) = nonce {
            add(header::HeaderName::from_static("replay-nonce"), n);
        }
        if let Some(l) = reply.location {
            add(header::LOCATION, l);
        }
        // §7.1: every response links to the directory
        add(
            header::LINK,
            format!("<{}>;rel=\"index\"", self.directory_url()),
        );
        if let Some(up) = reply.link_up {
            add(header::LINK, format!("<{up}>;rel=\"up\""));
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    fn route(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        req: Request<Bytes>,
        now: SystemTime,
    ) -> Result<Reply, Refusal> {
        let path = req.uri().path().to_string();
        let rel = path
            .strip_prefix(self.prefix.as_str())
            .filter(|r| r.starts_with('/'))
            .ok_or_else(|| Problem::not_found(format!("no ACME resource at {path}")))?
            .to_string();
        let method = req.method().clone();
        match rel.as_str() {
            "/directory" => {
                expect_method(&method, &[Method::GET])?;
                return Ok(Reply::json(StatusCode::OK, &self.directory_json()));
            }
            "/new-nonce" => {
                expect_method(&method, &[Method::HEAD, Method::GET])?;
                // §7.2: 200 to HEAD, 204 to GET, with a nonce and Cache-Control: no-store
                let mut reply = Reply::json(
                    if method == Method::HEAD {
                        StatusCode::OK
                    } else {
                        StatusCode::NO_CONTENT
                    },
                    &Value::Null,
                );
                reply.body = Bytes::new();
                reply.content_type = "";
                // the nonce itself is added by `handle_at`
                return Ok(reply);
            }
            _ => {}
        }
        expect_method(&method, &[Method::POST])?;
        // §6.2: a JWS body is application/jose+json, else "the server MUST return a response
        // with status code 415 (Unsupported Media Type)"
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/jose+json"))
        {
            return Err(Refusal {
                status: Some(http::StatusCode::UNSUPPORTED_MEDIA_TYPE),
                ..Problem {
                    kind: ProblemType::Malformed,
                    detail: format!(
                        "the request body must be application/jose+json, not {content_type:?} \
                         (RFC 8555 §6.2)"
                    ),
                }
                .into()
            });
        }
        if req.body().len() > MAX_BODY {
            return Err(Problem::malformed(format!("the body exceeds {MAX_BODY} bytes")).into());
        }
        let jws = Jws::parse(req.body())?;
        // §6.4: the url header names exactly the resource posted to
        let request_url = self.url(&rel);
        if jws.url != request_url {
            return Err(Problem::unauthorized(format!(
                "the JWS url {:?} is not the request URL {request_url:?}",
                jws.url
            ))
            .into());
        }
        // §6.2: newAccount with jwk, everything else with kid
        let account_id = if rel == "/new-account" {
            match &jws.key {
                KeyRef::Jwk(key) => {
                    jws.verify(key)?;
                    None
                }
                KeyRef::Kid(_) => {
                    return Err(
                        Problem::malformed("newAccount is signed with a jwk, not a kid").into(),
                    )
                }
            }
        } else {
            let KeyRef::Kid(kid) = &jws.key else {
                return Err(Problem::malformed(
                    "requests other than newAccount name their account with kid (RFC 8555 §6.2)",
                )
                .into());
            };
            ctx.account = Some(kid.clone());
            let id = kid
                .strip_prefix(&self.url("/acct/"))
                .filter(|id| !id.contains('/'))
                .ok_or_else(|| Problem::account_does_not_exist(format!("no account {kid}")))?;
            let account = inner
                .state
                .accounts
                .get(id)
                .ok_or_else(|| Problem::account_does_not_exist(format!("no account {kid}")))?;
            let key = account_key(account)?;
            jws.verify(&key)?;
            if account.status != "valid" {
                return Err(
                    Problem::unauthorized(format!("account {kid} is {}", account.status)).into(),
                );
            }
            Some(id.to_string())
        };
        // §6.5: each nonce once; checked after the signature so a forger cannot burn them
        if !inner.nonces.consume(&jws.nonce) {
            return Err(Problem::bad_nonce("the nonce is unknown, used or expired").into());
        }
        let segments: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
        match (segments.as_slice(), account_id) {
            (["new-account"], None) => self.new_account(inner, ctx, &jws, now),
            (["new-order"], Some(acct)) => self.new_order(inner, ctx, &acct, &jws, now),
            (["acct", id], Some(acct)) => self.account(inner, &acct, id, &jws),
            (["acct", id, "orders"], Some(acct)) => self.account_orders(inner, &acct, id, &jws),
            (["order", id], Some(acct)) => {
                ctx.order = Some(id.to_string());
                self.post_as_get(&jws)?;
                let order = self.owned_order(inner, ctx, &acct, id, now)?;
                Ok(Reply::json(StatusCode::OK, &self.order_json(id, &order)))
            }
            (["order", id, "finalize"], Some(acct)) => {
                ctx.order = Some(id.to_string());
                self.finalize(inner, ctx, &acct, id, &jws, now)
            }
            (["authz", id], Some(acct)) => {
                ctx.order = Some(id.to_string());
                self.authz(inner, ctx, &acct, id, &jws, now)
            }
            (["chall", id], Some(acct)) => {
                ctx.order = Some(id.to_string());
                self.challenge(inner, ctx, &acct, id, &jws, now)
            }
            (["cert", id], Some(acct)) => {
                ctx.order = Some(id.to_string());
                self.post_as_get(&jws)?;
                let order = self.owned_order(inner, ctx, &acct, id, now)?;
                let cert = order
                    .certificate
                    .ok_or_else(|| Problem::not_found(format!("no certificate {id}")))?;
                Ok(Reply {
                    status: StatusCode::OK,
                    body: Bytes::from(cert.chain_pem),
                    content_type: "application/pem-certificate-chain",
                    location: None,
                    link_up: None,
                })
            }
            _ => Err(Problem::not_found(format!("no ACME resource at {path}")).into()),
        }
    }

    fn directory_json(&self) -> Value {
        json!({
            "newNonce": self.url("/new-nonce"),
            "newAccount": self.url("/new-account"),
            "newOrder": self.url("/new-order"),
            "meta": { "externalAccountRequired": false },
        })
    }

    fn post_as_get(&self, jws: &Jws) -> Result<(), Problem> {
        if jws.is_post_as_get() {
            Ok(())
        } else {
            Err(Problem::malformed(
                "this resource is read with POST-as-GET: an empty payload (RFC 8555 §6.3)",
            ))
        }
    }

    fn random_id(&self, bytes: usize) -> Result<String, Problem> {
        let mut buf = vec![0u8; bytes];
        self.rng
            .fill(&mut buf)
            .map_err(|_| Problem::server_internal("no randomness"))?;
        Ok(b64u(&buf))
    }

    fn persist(&self, state: &State) -> Result<(), Problem> {
        let json = serde_json::to_vec(state)
            .map_err(|e| Problem::server_internal(format!("state: {e}")))?;
        crate::ca::write_atomic(&self.state_path, &json, 0o600).map_err(|e| {
            Problem::server_internal(format!("cannot write {}: {e}", self.state_path.display()))
        })
    }

    fn account_json(&self, id: &str, a: &Account) -> Value {
        json!({
            "status": a.status,
            "contact": a.contact,
            "orders": self.url(&format!("/acct/{id}/orders")),
        })
    }

    fn new_account(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        jws: &Jws,
        now: SystemTime,
    ) -> Result<Reply, Refusal> {
        let KeyRef::Jwk(key) = &jws.key else {
            return Err(Problem::malformed("newAccount needs a jwk").into());
        };
        let payload = jws.json_payload()?;
        let id = key.thumbprint();
        let url = self.url(&format!("/acct/{id}"));
        ctx.account = Some(url.clone());
        // §7.3.1: the same key again finds its account (200)
        if let Some(existing) = inner.state.accounts.get(&id) {
            return Ok(
                Reply::json(StatusCode::OK, &self.account_json(&id, existing)).location(url),
            );
        }
        if payload.get("onlyReturnExisting") == Some(&Value::Bool(true)) {
            return Err(Problem::account_does_not_exist("no account has this key").into());
        }
        if inner.state.accounts.len() >= self.options.max_accounts {
            return Err(Problem::rate_limited("the account limit is reached").into());
        }
        let contact = contacts(&payload)?;
        let account = Account {
            crv: key.crv.clone(),
            x: b64u(&key.x),
            y: b64u(&key.y),
            status: "valid".into(),
            contact,
            created: unix(now),
        };
        let body = self.account_json(&id, &account);
        inner.state.accounts.insert(id, account);
        self.persist(&inner.state)?;
        Ok(Reply::json(StatusCode::CREATED, &body).location(url))
    }

    fn account(
        &self,
        inner: &mut Inner,
        acct: &str,
        id: &str,
        jws: &Jws,
    ) -> Result<Reply, Refusal> {
        // §7.3.2: only the account itself
        if id != acct {
            return Err(Problem::unauthorized("the kid is not this account").into());
        }
        let url = self.url(&format!("/acct/{id}"));
        if !jws.is_post_as_get() {
            let payload = jws.json_payload()?;
            let account = inner
                .state
                .accounts
                .get_mut(id)
                .ok_or_else(|| Problem::account_does_not_exist("no such account"))?;
            match payload.get("status") {
                None => {}
                // §7.3.6
                Some(Value::String(s)) if s == "deactivated" => account.status = s.clone(),
                Some(_) => {
                    return Err(Problem::malformed("status can only become \"deactivated\"").into())
                }
            }
            if payload.contains_key("contact") {
                account.contact = contacts(&payload)?;
            }
            self.persist(&inner.state)?;
        }
        let account = inner
            .state
            .accounts
            .get(id)
            .ok_or_else(|| Problem::account_does_not_exist("no such account"))?;
        Ok(Reply::json(StatusCode::OK, &self.account_json(id, account)).location(url))
    }

    fn account_orders(
        &self,
        inner: &mut Inner,
        acct: &str,
        id: &str,
        jws: &Jws,
    ) -> Result<Reply, Refusal> {
        if id != acct {
            return Err(Problem::unauthorized("the kid is not this account").into());
        }
        self.post_as_get(jws)?;
        // §7.1.2.1: the account's orders
        let orders: Vec<String> = inner
            .state
            .orders
            .iter()
            .filter(|(_, o)| o.account == id && o.status != "invalid")
            .map(|(oid, _)| self.url(&format!("/order/{oid}")))
            .collect();
        Ok(Reply::json(StatusCode::OK, &json!({ "orders": orders })))
    }

    fn new_order(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        acct: &str,
        jws: &Jws,
        now: SystemTime,
    ) -> Result<Reply, Refusal> {
        let payload = jws.json_payload()?;
        if payload.contains_key("notBefore") || payload.contains_key("notAfter") {
            return Err(Problem::malformed(
                "notBefore/notAfter are not supported: device certificates have a fixed lifetime",
            )
            .into());
        }
        let identifiers = payload
            .get("identifiers")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| Problem::malformed("identifiers: a non-empty array (RFC 8555 §7.4)"))?;
        // unsupported types first: a request mixing a dns name in is refused for it
        for ident in identifiers {
            let kind = ident.get("type").and_then(Value::as_str).unwrap_or("");
            if kind != PERMANENT_IDENTIFIER {
                return Err(Problem::unsupported_identifier(format!(
                    "identifier type {kind:?} is not issued here; only \"{PERMANENT_IDENTIFIER}\" \
                     (draft-ietf-acme-device-attest §3)"
                ))
                .into());
            }
        }
        if identifiers.len() != 1 {
            return Err(Problem::rejected_identifier(
                "an order holds exactly one permanent-identifier (the device serial)",
            )
            .into());
        }
        let value = identifiers
            .first()
            .and_then(|i| i.get("value"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        ctx.identifier = Some(value.clone());
        if !valid_identifier(&value) {
            return Err(Problem::rejected_identifier(format!(
                "{:?} is not a device serial or UDID (1–64 of A–Z a–z 0–9 . _ -)",
                value.escape_debug().to_string()
            ))
            .into());
        }
        self.prune(&mut inner.state, now);
        let pending = inner
            .state
            .orders
            .values()
            .filter(|o| o.account == acct && matches!(o.status.as_str(), "pending" | "ready"))
            .count();
        if pending >= MAX_PENDING_PER_ACCOUNT {
            return Err(Problem::rate_limited(format!(
                "the account has {pending} unfinished orders"
            ))
            .into());
        }
        if inner.state.orders.len() >= self.options.max_orders {
            return Err(Problem::rate_limited("the order limit is reached").into());
        }
        let id = self.random_id(16)?;
        ctx.order = Some(id.clone());
        let order = Order {
            account: acct.to_string(),
            status: "pending".into(),
            identifier: value,
            created: unix(now),
            expires: unix(now).saturating_add(secs(self.options.order_lifetime)),
            authz_status: "pending".into(),
            challenge_status: "pending".into(),
            // §8.1: at least 128 bits of entropy
            token: self.random_id(32)?,
            validated: None,
            error: None,
            attested: None,
            certificate: None,
        };
        let body = self.order_json(&id, &order);
        inner.state.orders.insert(id.clone(), order);
        self.persist(&inner.state)?;
        Ok(Reply::json(StatusCode::CREATED, &body).location(self.url(&format!("/order/{id}"))))
    }

    /// Drops finished orders past their retention and attestation records past their leaf's
    /// notAfter.
    fn prune(&self, state: &mut State, now: SystemTime) {
        let now = unix(now);
        let retention = secs(RETENTION);
        state.orders.retain(|_, o| match &o.certificate {
            Some(c) => c.not_after.saturating_add(retention) > now,
            None => o.expires.saturating_add(retention) > now,
        });
        state.attestations.retain(|_, a| a.until > now);
    }

    /// The order, if `acct` owns it, with expiry applied (§7.1.6).
    fn owned_order(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        acct: &str,
        id: &str,
        now: SystemTime,
    ) -> Result<Order, Problem> {
        let order = inner
            .state
            .orders
            .get_mut(id)
            .ok_or_else(|| Problem::not_found(format!("no order {id}")))?;
        if order.account != acct {
            return Err(Problem::unauthorized(
                "the order belongs to another account",
            ));
        }
        ctx.identifier = Some(order.identifier.clone());
        if matches!(order.status.as_str(), "pending" | "ready") && order.expires <= unix(now) {
            order.status = "invalid".into();
            if order.authz_status == "pending" {
                order.authz_status = "expired".into();
            }
            let order = order.clone();
            self.persist(&inner.state)?;
            return Ok(order);
        }
        Ok(order.clone())
    }

    fn order_json(&self, id: &str, o: &Order) -> Value {
        let mut v = json!({
            "status": o.status,
            "expires": rfc3339(o.expires),
            "identifiers": [{"type": PERMANENT_IDENTIFIER, "value": o.identifier}],
            "authorizations": [self.url(&format!("/authz/{id}"))],
            "finalize": self.url(&format!("/order/{id}/finalize")),
        });
        if o.certificate.is_some() {
            v["certificate"] = json!(self.url(&format!("/cert/{id}")));
        }
        if let Some(e) = &o.error {
            v["error"] = e.clone();
        }
        v
    }

    fn challenge_json(&self, id: &str, o: &Order) -> Value {
        let mut v = json!({
            "type": DEVICE_ATTEST_01,
            "url": self.url(&format!("/chall/{id}")),
            "status": o.challenge_status,
            "token": o.token,
        });
        if let Some(t) = o.validated {
            v["validated"] = json!(rfc3339(t));
        }
        if o.challenge_status == "invalid" {
            if let Some(e) = &o.error {
                v["error"] = e.clone();
            }
        }
        v
    }

    fn authz(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        acct: &str,
        id: &str,
        jws: &Jws,
        now: SystemTime,
    ) -> Result<Reply, Refusal> {
        let mut order = self.owned_order(inner, ctx, acct, id, now)?;
        if !jws.is_post_as_get() {
            // §7.5.2: the client may deactivate its authorization
            let payload = jws.json_payload()?;
            if payload.get("status").and_then(Value::as_str) != Some("deactivated") {
                return Err(Problem::malformed("an authorization can only be deactivated").into());
            }
            if matches!(order.authz_status.as_str(), "pending" | "valid") {
                order.authz_status = "deactivated".into();
                if matches!(order.status.as_str(), "pending" | "ready") {
                    order.status = "invalid".into();
                }
                inner.state.orders.insert(id.to_string(), order.clone());
                self.persist(&inner.state)?;
            }
        }
        let body = json!({
            "status": order.authz_status,
            "expires": rfc3339(order.expires),
            "identifier": {"type": PERMANENT_IDENTIFIER, "value": order.identifier},
            "challenges": [self.challenge_json(id, &order)],
        });
        Ok(Reply::json(StatusCode::OK, &body))
    }

    fn challenge(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        acct: &str,
        id: &str,
        jws: &Jws,
        now: SystemTime,
    ) -> Result<Reply, Refusal> {
        let authz_url = self.url(&format!("/authz/{id}"));
        let order = self.owned_order(inner, ctx, acct, id, now)?;
        if jws.is_post_as_get() || order.challenge_status != "pending" {
            // reading it, or a repeated response to a finished challenge: its state as is
            return Ok(Reply::json(StatusCode::OK, &self.challenge_json(id, &order)).up(authz_url));
        }
        if order.status != "pending" {
            return Err(Refusal {
                problem: Problem::malformed(format!("the order is {}", order.status)),
                link_up: Some(authz_url),
                status: None,
            });
        }
        let payload = jws.json_payload()?;
        // draft-ietf-acme-device-attest §5: {"attObj": base64url(CBOR attestation object)}
        let att_obj = match payload.get("attObj").and_then(Value::as_str) {
            Some(text) => text,
            None => return Err(Refusal {
                problem: Problem::malformed(
                    "a device-attest-01 response carries attObj (draft-ietf-acme-device-attest §5)",
                ),
                link_up: Some(authz_url),
                status: None,
            }),
        };
        match self.validate(inner, ctx, id, &order, att_obj, now) {
            Ok(order) => {
                let body = self.challenge_json(id, &order);
                inner.state.orders.insert(id.to_string(), order);
                self.persist(&inner.state)?;
                Ok(Reply::json(StatusCode::OK, &body).up(authz_url))
            }
            Err(problem) => {
                // §7.1.6: the challenge, its authorization and the order become invalid
                let mut failed = order;
                failed.challenge_status = "invalid".into();
                failed.authz_status = "invalid".into();
                failed.status = "invalid".into();
                failed.error = Some(problem.to_json());
                inner.state.orders.insert(id.to_string(), failed);
                self.persist(&inner.state)?;
                Err(Refusal {
                    problem,
                    link_up: Some(authz_url),
                    status: None,
                })
            }
        }
    }

    /// The device-attest-01 checks; the order as it is once they pass.
    fn validate(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        id: &str,
        order: &Order,
        att_obj: &str,
        now: SystemTime,
    ) -> Result<Order, Problem> {
        let bytes = b64u_decode(att_obj)
            .ok_or_else(|| Problem::bad_attestation("attObj is not base64url"))?;
        let att = self
            .verifier
            .verify(&bytes, &order.token, now)
            .map_err(|e| Problem::bad_attestation(e.to_string()))?;
        ctx.attested_serial = att.serial.clone();
        let matches = |v: &Option<String>| {
            v.as_deref()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case(&order.identifier))
        };
        if !(matches(&att.serial) || matches(&att.udid)) {
            return Err(Problem::bad_attestation(format!(
                "the attestation is for serial {} / UDID {}, not for the order's identifier {}",
                att.serial.as_deref().unwrap_or("(none)"),
                att.udid.as_deref().unwrap_or("(none)"),
                order.identifier
            )));
        }
        ec_curve(&att.public_key_spki).map_err(|e| {
            Problem::bad_attestation(format!("the attested key cannot be certified: {e}"))
        })?;
        let leaf = hex(&att.leaf_sha256);
        if let Some(used) = inner.state.attestations.get(&leaf) {
            if used.order != id {
                return Err(Problem::bad_attestation(
                    "this attestation was already presented for another order (replay)",
                ));
            }
        }
        // devices are keyed by serial (DESIGN.md: the attested UDID of a Mac is not the MDM's)
        let device = att
            .serial
            .clone()
            .unwrap_or_else(|| order.identifier.clone());
        if self.options.require_enrolled && !self.directory.is_enrolled(&device) {
            return Err(Problem::unauthorized(format!(
                "device {device} is not enrolled in the MDM"
            )));
        }
        inner.state.attestations.insert(
            leaf,
            UsedAttestation {
                order: id.to_string(),
                until: unix(att.not_after).max(unix(now).saturating_add(secs(RETENTION))),
            },
        );
        let mut valid = order.clone();
        valid.challenge_status = "valid".into();
        valid.authz_status = "valid".into();
        // §7.1.6: all authorizations valid → ready
        valid.status = "ready".into();
        valid.validated = Some(unix(now));
        valid.attested = Some(Attested {
            serial: att.serial,
            udid: att.udid,
            spki: b64u(&att.public_key_spki),
            extensions: att
                .apple_extensions
                .iter()
                .map(|(oid, v)| (oid.clone(), b64u(v)))
                .collect(),
        });
        Ok(valid)
    }

    fn finalize(
        &self,
        inner: &mut Inner,
        ctx: &mut Ctx,
        acct: &str,
        id: &str,
        jws: &Jws,
        now: SystemTime,
    ) -> Result<Reply, Refusal> {
        let order = self.owned_order(inner, ctx, acct, id, now)?;
        if order.status != "ready" {
            return Err(Problem::order_not_ready(format!(
                "the order is {}, not ready (RFC 8555 §7.4)",
                order.status
            ))
            .into());
        }
        let attested = order
            .attested
            .clone()
            .ok_or_else(|| Problem::server_internal("a ready order without its attestation"))?;
        ctx.attested_serial = attested.serial.clone();
        let payload = jws.json_payload()?;
        let csr = payload
            .get("csr")
            .and_then(Value::as_str)
            .and_then(b64u_decode)
            .ok_or_else(|| Problem::malformed("finalize carries csr: base64url DER (§7.4)"))?;
        let attested_spki = b64u_decode(&attested.spki)
            .ok_or_else(|| Problem::server_internal("stored attested key is damaged"))?;
        let csr_spki = check_csr(&csr, &attested_spki)?;
        let extensions: Vec<(String, Vec<u8>)> = attested
            .extensions
            .iter()
            .filter_map(|(oid, v)| Some((oid.clone(), b64u_decode(v)?)))
            .collect();
        let issued = self
            .ca
            .issue(
                &DeviceCertRequest {
                    identifier: &order.identifier,
                    public_key_spki: &csr_spki,
                    apple_extensions: &extensions,
                },
                now,
            )
            .map_err(|e| Problem::server_internal(e.to_string()))?;
        let mut valid = order;
        valid.status = "valid".into();
        valid.certificate = Some(Certificate {
            serial: issued.serial.clone(),
            not_after: unix(issued.not_after),
            chain_pem: issued.chain_pem,
        });
        let body = self.order_json(id, &valid);
        let identifier = valid.identifier.clone();
        inner.state.orders.insert(id.to_string(), valid);
        self.persist(&inner.state)?;
        self.events.event(&AcmeEvent {
            outcome: Outcome::Issued,
            problem: None,
            reason: format!(
                "device-attest-01 passed; certificate valid for {} s",
                self.ca.validity().as_secs()
            ),
            identifier: Some(identifier),
            attested_serial: attested.serial,
            account: ctx.account.clone(),
            order: Some(id.to_string()),
            certificate_serial: Some(issued.serial),
            not_after: Some(unix(issued.not_after)),
            path: format!("{}/order/{id}/finalize", self.prefix),
        });
        Ok(Reply::json(StatusCode::OK, &body).location(self.url(&format!("/order/{id}"))))
    }
}

fn expect_method(method: &Method, allowed: &[Method]) -> Result<(), Problem> {
    if allowed.contains(method) {
        Ok(())
    } else {
        Err(Problem::malformed(format!(
            "method {method} is not allowed here (use {})",
            allowed
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(" or ")
        )))
    }
}

fn account_key(a: &Account) -> Result<EcJwk, Problem> {
    let bad = || Problem::server_internal("stored account key is damaged");
    Ok(EcJwk {
        crv: a.crv.clone(),
        x: b64u_decode(&a.x).ok_or_else(bad)?,
        y: b64u_decode(&a.y).ok_or_else(bad)?,
    })
}

/// `contact` of a newAccount or account update (§7.3): at most 4 `mailto:` URLs.
fn contacts(payload: &Map<String, Value>) -> Result<Vec<String>, Problem> {
    let Some(list) = payload.get("contact") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| Problem::malformed("contact is an array of URLs"))?;
    if list.len() > 4 {
        return Err(Problem::malformed("at most 4 contacts"));
    }
    list.iter()
        .map(|c| match c.as_str() {
            Some(s) if s.starts_with("mailto:") && s.len() <= 256 => Ok(s.to_string()),
            _ => Err(Problem {
                kind: ProblemType::Malformed,
                detail: "contacts are mailto: URLs of at most 256 bytes".into(),
            }),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks a finalize CSR (RFC 2986): it parses whole, its self-signature holds, its key is EC
/// P-256 or P-384 and is the attested key. Returns the key's SubjectPublicKeyInfo.
fn check_csr(der: &[u8], attested_spki: &[u8]) -> Result<Vec<u8>, Problem> {
    let (rest, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(der)
        .map_err(|e| Problem::bad_csr(format!("the CSR does not parse: {e}")))?;
    if !rest.is_empty() {
        return Err(Problem::bad_csr("trailing bytes after the CSR"));
    }
    let spki = csr.certification_request_info.subject_pki.raw;
    let curve = ec_curve(spki).map_err(Problem::bad_csr)?;
    csr.verify_signature()
        .map_err(|e| Problem::bad_csr(format!("the CSR's signature does not verify: {e}")))?;
    let attested_curve = ec_curve(attested_spki).map_err(Problem::bad_csr)?;
    if curve != attested_curve || ec_point(spki) != ec_point(attested_spki) {
        return Err(Problem::bad_csr(
            "the CSR's key is not the attested key (draft-ietf-acme-device-attest §5)",
        ));
    }
    Ok(spki.to_vec())
}

fn ec_point(spki: &[u8]) -> Option<Vec<u8>> {
    let (_, s) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).ok()?;
    Some(s.subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests;
