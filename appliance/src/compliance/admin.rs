//! The admin HTTPS listener (`[compliance.webhook]`): MDM webhooks and the risk feed.
//!
//! HTTP/1.1 (hyper) over TLS (tokio-rustls, ring). Every request must authenticate first,
//! before its body is read: HTTP Basic (RFC 7617) or a configured header carrying a token,
//! each compared in constant time (`subtle`), secrets zeroized on drop.
//!
//! | request | answer |
//! |---|---|
//! | any, bad or missing credentials | `401`, nothing changes, event `webhook.refused` |
//! | `POST /webhooks/jamf` | body → the Jamf webhook parser → a hint (event, serials, UDIDs, group IDs); `202`, a re-read of every `jamf-pro` source is scheduled (coalesced); `400` for a body the parser refuses; `404` when no `jamf-pro` source is configured |
//! | `POST /webhooks/source/NAME` | the same for one named source of any type (a `file` source re-reads its file) |
//! | `POST /risk` | `{"serial", "level", "reasons"?, "expires"?}`: a direct risk fact from a mobile threat defence product, kept as the source `risk-feed`; `200` with the change; `400` malformed; `404` for a device no inventory source knows (nothing changes) |
//! | `/acme/…` (the path of `[acme] base_url`) | the ACME server (`enroll::acme`), **without** the credentials above: ACME requests authenticate with their own JWS (RFC 8555 §6.2) |
//! | anything else | `404` / `405` |
//!
//! A webhook never changes device state on its own word (Jamf webhooks carry no signature):
//! it only makes the daemon re-read the source it names. The risk feed is different: it is a
//! product whose whole job is to say a risk level, authenticated like the webhooks, and its
//! opinion can only tighten (the worst risk of every source counts).

use super::{Change, DeviceTable, RiskFeedError, SourceFact};
use bytes::Bytes;
use config::{Config, RiskLevel, SourceKind, Webhook, WebhookAuth};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Largest request body read.
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What a webhook says happened: which devices or groups to re-read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WebhookHint {
    /// The event name (Jamf `webhookEvent`), if the body names one.
    pub event: Option<String>,
    pub serials: Vec<String>,
    pub udids: Vec<String>,
    pub group_ids: Vec<u32>,
    /// Jamf Pro computer and mobile device ids (`jssID`) the webhook names.
    pub computer_ids: Vec<u32>,
    pub mobile_device_ids: Vec<u32>,
}

impl WebhookHint {
    /// False when the hint names no device (a group change without members, `JSSStartup`, a
    /// body we only know as JSON): the whole source is re-read.
    pub fn names_devices(&self) -> bool {
        !(self.serials.is_empty()
            && self.computer_ids.is_empty()
            && self.mobile_device_ids.is_empty())
    }

    /// The hint as the Jamf Pro client's targeted re-read takes it.
    pub fn to_jamf(&self) -> super::jamf::JamfHint {
        super::jamf::JamfHint {
            event: self.event.clone().unwrap_or_default(),
            webhook_name: String::new(),
            group_id: self.group_ids.first().copied(),
            computer_ids: self.computer_ids.clone(),
            mobile_device_ids: self.mobile_device_ids.clone(),
            serials: self.serials.clone(),
            udids: self.udids.clone(),
        }
    }
}

/// Turns a webhook body into a hint. The Jamf Pro parser plugs in here (see [`jamf_parser`]).
pub trait WebhookParser: Send + Sync + std::fmt::Debug {
    /// `Err` for a body that is not a webhook of this kind (answered 400, nothing scheduled).
    fn parse(&self, body: &[u8]) -> Result<WebhookHint, String>;
}

/// Until a source-specific parser is plugged in: any JSON object; its event name from
/// `webhook.webhookEvent` (Jamf's envelope) when present. Names no device, so the whole
/// source is re-read.
#[derive(Debug, Default)]
pub struct JsonObjectHint;

impl WebhookParser for JsonObjectHint {
    fn parse(&self, body: &[u8]) -> Result<WebhookHint, String> {
        let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
        if !v.is_object() {
            return Err("not a JSON object".into());
        }
        Ok(WebhookHint {
            event: v["webhook"]["webhookEvent"]
                .as_str()
                .map(|s| s.chars().take(100).collect()),
            ..WebhookHint::default()
        })
    }
}

/// Jamf Pro webhooks ([`super::jamf::parse_webhook`]): the event, and the devices and smart
/// group it names.
#[derive(Debug, Default)]
pub struct JamfWebhook;

impl WebhookParser for JamfWebhook {
    fn parse(&self, body: &[u8]) -> Result<WebhookHint, String> {
        let h = super::jamf::parse_webhook(body).map_err(|e| e.to_string())?;
        Ok(WebhookHint {
            event: Some(h.event.chars().take(100).collect()),
            serials: h.serials,
            udids: h.udids,
            group_ids: h.group_id.into_iter().collect(),
            computer_ids: h.computer_ids,
            mobile_device_ids: h.mobile_device_ids,
        })
    }
}

/// The parser for `POST /webhooks/jamf` (and `/webhooks/source/NAME` of a `jamf-pro` source).
pub fn jamf_parser() -> Arc<dyn WebhookParser> {
    Arc::new(JamfWebhook)
}

/// What the listener needs from the daemon.
pub trait AdminBackend: Send + Sync + 'static {
    fn config(&self) -> Arc<Config>;
    fn devices(&self) -> &RwLock<DeviceTable>;
    /// Schedules a re-read of these sources (never blocks; the daemon coalesces).
    fn resync(&self, sources: Vec<String>, hint: WebhookHint);
    /// Reports changes: events and the re-decision of the devices' open flows.
    fn changed(&self, changes: Vec<Change>);
    fn event(&self, kind: &str, fields: Value);
    /// The ACME server (`[acme]`), when enabled: requests under its path prefix go to it.
    fn acme(&self) -> Option<Arc<enroll::acme::AcmeServer>> {
        None
    }
}

/// The compliance store as the ACME server asks it ([`is_enrolled`]). Holds the backend
/// weakly (the backend owns the ACME server that owns this).
pub struct MdmDirectory(pub std::sync::Weak<dyn AdminBackend>);

impl std::fmt::Debug for MdmDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MdmDirectory")
    }
}

impl enroll::acme::DeviceDirectory for MdmDirectory {
    fn is_enrolled(&self, serial: &str) -> bool {
        let Some(backend) = self.0.upgrade() else {
            return false;
        };
        // fail closed on a poisoned table (DESIGN.md invariant 1)
        let Ok(devices) = backend.devices().read() else {
            return false;
        };
        is_enrolled(&devices, serial)
    }
}

/// Enrolled for a certificate: an inventory source lists the device as managed, none says
/// otherwise, and no override blocks it. Freshness (`max_age`) is not asked here: the relay's
/// policy decision at each request does that.
pub fn is_enrolled(devices: &DeviceTable, serial: &str) -> bool {
    let view = devices.view(serial);
    view.managed && view.blocked.is_none()
}

/// Credentials, read from their files when the listener starts.
struct Credentials {
    /// Lower-case header name.
    header: String,
    /// The exact header value expected.
    expected: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("header", &self.header)
            .finish_non_exhaustive()
    }
}

fn read_secret(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut bytes = Zeroizing::new(
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    while bytes.last().is_some_and(|b| matches!(b, b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

/// RFC 4648 §4 base64 with padding (for the Basic credentials, RFC 7617 §2), into a buffer
/// that is wiped when dropped.
fn base64(input: &[u8]) -> Zeroizing<Vec<u8>> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut out = Zeroizing::new(vec![
        0u8;
        base64::encoded_len(input.len(), true).unwrap_or(0)
    ]);
    let written = engine.encode_slice(input, &mut out).unwrap_or(0);
    out.truncate(written);
    out
}

impl Credentials {
    fn load(auth: &WebhookAuth) -> Result<Credentials, String> {
        match auth {
            WebhookAuth::Basic {
                username,
                password_file,
            } => {
                let password = read_secret(&password_file.value)?;
                let mut pair = Zeroizing::new(username.as_bytes().to_vec());
                pair.push(b':');
                pair.extend_from_slice(&password);
                let mut expected = Zeroizing::new(b"Basic ".to_vec());
                expected.extend_from_slice(&base64(&pair));
                Ok(Credentials {
                    header: "authorization".into(),
                    expected,
                })
            }
            WebhookAuth::Header { header, token_file } => Ok(Credentials {
                header: header.to_ascii_lowercase(),
                expected: read_secret(&token_file.value)?,
            }),
        }
    }

    /// Constant time in the value (its length aside).
    fn check(&self, headers: &http::HeaderMap) -> bool {
        let mut ok = subtle::Choice::from(0u8);
        // every value of the header is compared, so a duplicate cannot shadow the right one
        for v in headers.get_all(self.header.as_str()) {
            ok |= v.as_bytes().ct_eq(&self.expected);
        }
        ok.into()
    }
}

/// The risk feed's request body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RiskReport {
    serial: String,
    level: RiskLevel,
    #[serde(default)]
    reasons: Vec<String>,
    /// RFC 3339 or unix seconds.
    #[serde(default)]
    expires: Option<Value>,
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message.into() }))
}

/// The running listener.
#[derive(Debug)]
pub struct AdminListener {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl AdminListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn tls_config(w: &Webhook) -> Result<rustls::ServerConfig, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(&w.certificate.value)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", w.certificate.value.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no CERTIFICATE block",
            w.certificate.value.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&w.private_key.value)
        .map_err(|e| format!("{}: {e}", w.private_key.value.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// Binds the listener and serves until dropped.
pub async fn start(
    w: &Webhook,
    backend: Arc<dyn AdminBackend>,
    jamf: Arc<dyn WebhookParser>,
) -> Result<AdminListener, String> {
    let credentials = Arc::new(Credentials::load(&w.auth)?);
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(w)?));
    let listener = tokio::net::TcpListener::bind(w.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", w.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let task = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let backend = backend.clone();
            let credentials = credentials.clone();
            let jamf = jamf.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(REQUEST_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "admin listener: TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                };
                let service = hyper::service::service_fn(move |req| {
                    let backend = backend.clone();
                    let credentials = credentials.clone();
                    let jamf = jamf.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            handle(req, peer, &*backend, &credentials, &*jamf).await,
                        )
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "admin listener: connection ended");
                }
            });
        }
    });
    Ok(AdminListener { local, task })
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
    backend: &dyn AdminBackend,
    credentials: &Credentials,
    jamf: &dyn WebhookParser,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(acme) = backend.acme() {
        let prefix = acme.path_prefix();
        if path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            return acme_request(req, acme).await;
        }
    }
    if !credentials.check(req.headers()) {
        backend.event(
            "webhook.refused",
            json!({"path": path, "peer": peer.to_string(), "reason": "bad or missing credentials"}),
        );
        let mut r = error(StatusCode::UNAUTHORIZED, "bad or missing credentials");
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Basic realm=\"attestgate\""),
        );
        return r;
    }
    enum Route<'a> {
        Jamf,
        Source(&'a str),
        Risk,
    }
    let route = match path.as_str() {
        "/webhooks/jamf" => Route::Jamf,
        "/risk" => Route::Risk,
        p => match p.strip_prefix("/webhooks/source/") {
            Some(name) if !name.is_empty() && !name.contains('/') => Route::Source(name),
            _ => return error(StatusCode::NOT_FOUND, format!("no such endpoint {p}")),
        },
    };
    if req.method() != Method::POST {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        r.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return r;
    }
    let route_owned = match route {
        Route::Jamf => None,
        Route::Source(n) => Some(n.to_string()),
        Route::Risk => {
            let body = match body(req).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            return risk(&body, peer, backend);
        }
    };
    let body = match body(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let cfg = backend.config();
    let (sources, parsed) = match &route_owned {
        None => (
            cfg.compliance
                .sources
                .iter()
                .filter(|s| matches!(s.kind, SourceKind::JamfPro { .. }))
                .map(|s| s.name.value.clone())
                .collect::<Vec<_>>(),
            jamf.parse(&body),
        ),
        Some(name) => (
            cfg.compliance
                .sources
                .iter()
                .filter(|s| s.name.value == *name)
                .map(|s| s.name.value.clone())
                .collect(),
            match cfg
                .compliance
                .sources
                .iter()
                .find(|s| s.name.value == *name)
                .map(|s| &s.kind)
            {
                Some(SourceKind::JamfPro { .. }) => jamf.parse(&body),
                _ => JsonObjectHint.parse(&body),
            },
        ),
    };
    // no source to re-read: 404 whatever the body
    if sources.is_empty() {
        backend.event(
            "webhook.refused",
            json!({"path": path, "peer": peer.to_string(), "reason": "no such source"}),
        );
        return error(
            StatusCode::NOT_FOUND,
            match route_owned {
                Some(n) => format!("no compliance source named {n}"),
                None => "no jamf-pro compliance source is configured".to_string(),
            },
        );
    }
    let hint = match parsed {
        Ok(h) => h,
        Err(e) => {
            backend.event(
                "webhook.refused",
                json!({"path": path, "peer": peer.to_string(), "reason": format!("malformed body: {e}")}),
            );
            return error(StatusCode::BAD_REQUEST, format!("malformed webhook: {e}"));
        }
    };
    backend.event(
        "webhook.received",
        json!({"path": path, "peer": peer.to_string(), "webhook_event": hint.event, "serials": hint.serials,
               "udids": hint.udids, "group_ids": hint.group_ids, "computer_ids": hint.computer_ids,
               "mobile_device_ids": hint.mobile_device_ids, "resync": sources}),
    );
    backend.resync(sources.clone(), hint.clone());
    reply(
        StatusCode::ACCEPTED,
        json!({"accepted": true, "resync": sources, "hint": hint}),
    )
}

/// Hands one request to the ACME server (on a blocking thread: it signs, verifies and
/// fsyncs its state).
async fn acme_request(
    req: Request<hyper::body::Incoming>,
    acme: Arc<enroll::acme::AcmeServer>,
) -> Response<Full<Bytes>> {
    let (parts, incoming) = req.into_parts();
    let bytes = match body(Request::from_parts(parts.clone(), incoming)).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let request = Request::from_parts(parts, bytes);
    match tokio::task::spawn_blocking(move || acme.handle(request)).await {
        Ok(response) => response.map(Full::new),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "ACME handler failed"),
    }
}

/// Reads the body, at most [`MAX_BODY`] bytes within the request timeout.
async fn body(req: Request<hyper::body::Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(REQUEST_TIMEOUT, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) => Err(error(
            if e.is::<http_body_util::LengthLimitError>() {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            },
            format!("body: {e}"),
        )),
        Err(_) => Err(error(StatusCode::REQUEST_TIMEOUT, "body not sent in time")),
    }
}

/// `POST /risk`.
fn risk(body: &[u8], peer: SocketAddr, backend: &dyn AdminBackend) -> Response<Full<Bytes>> {
    let refuse = |status: StatusCode, message: String| {
        backend.event(
            "risk.refused",
            json!({"peer": peer.to_string(), "reason": message}),
        );
        error(status, message)
    };
    let report: RiskReport = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                format!("malformed risk report: {e}"),
            )
        }
    };
    let serial = match super::checked_serial(&report.serial) {
        Ok(s) => s,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("serial: {e}")),
    };
    if report.reasons.len() > 32 || report.reasons.iter().any(|r| r.len() > 500) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "reasons: at most 32, each at most 500 bytes".into(),
        );
    }
    let now = SystemTime::now();
    let expires = match &report.expires {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(t) => Some(t),
            None => return refuse(StatusCode::BAD_REQUEST, "expires: not unix seconds".into()),
        },
        Some(Value::String(s)) => match crate::timefmt::parse_time(s) {
            Ok(t) => Some(t),
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("expires: {e}")),
        },
        Some(_) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "expires: an RFC 3339 time or unix seconds".into(),
            )
        }
    };
    if expires.is_some_and(|t| t <= crate::timefmt::unix(now)) {
        return refuse(StatusCode::BAD_REQUEST, "expires: not in the future".into());
    }
    let fact = SourceFact {
        managed: None,
        groups: BTreeSet::new(),
        risk: Some(report.level),
        risk_reasons: report.reasons,
        udids: BTreeSet::new(),
        platform: None,
        confirmed_at: now,
        expires: expires
            .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0).unsigned_abs())),
    };
    let result = match backend.devices().write() {
        Ok(mut d) => d.set_risk_feed(&serial, fact),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "device table unavailable",
            )
        }
    };
    match result {
        Ok(changes) => {
            let changed = !changes.is_empty();
            backend.event(
                "risk.received",
                json!({"serial": serial, "level": report.level, "expires": expires, "changed": changed, "peer": peer.to_string()}),
            );
            let after = changes.first().map(|c| c.after.clone());
            backend.changed(changes);
            reply(
                StatusCode::OK,
                json!({"serial": serial, "level": report.level, "changed": changed, "device": after}),
            )
        }
        Err(e @ RiskFeedError::UnknownDevice(_)) => refuse(StatusCode::NOT_FOUND, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648 §10
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(&*base64(i.as_bytes()), o.as_bytes());
        }
        // RFC 7617 §2
        assert_eq!(
            &*base64(b"Aladdin:open sesame"),
            b"QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }

    #[test]
    fn credentials_compare_every_value() {
        let c = Credentials {
            header: "x-token".into(),
            expected: Zeroizing::new(b"s3cret".to_vec()),
        };
        let mut h = http::HeaderMap::new();
        assert!(!c.check(&h));
        h.append("x-token", http::HeaderValue::from_static("wrong"));
        assert!(!c.check(&h));
        h.append("x-token", http::HeaderValue::from_static("s3cret"));
        assert!(c.check(&h));
        let mut h = http::HeaderMap::new();
        h.insert("x-token", http::HeaderValue::from_static("s3cret2"));
        assert!(!c.check(&h));
    }

    #[test]
    fn enrolled_means_managed_by_every_source_that_says() {
        use super::super::SourceFact;
        let now = SystemTime::now();
        let mut table = DeviceTable::default();
        table.update_devices(
            "mdm",
            vec![
                (
                    "C02MANAGED01".into(),
                    Some(SourceFact::inventory(true, BTreeSet::new(), None, now)),
                ),
                (
                    "C02RETIRED01".into(),
                    Some(SourceFact::inventory(false, BTreeSet::new(), None, now)),
                ),
            ],
            "test",
        );
        assert!(is_enrolled(&table, "C02MANAGED01"));
        assert!(
            is_enrolled(&table, " c02managed01 "),
            "serials are normalized"
        );
        assert!(!is_enrolled(&table, "C02RETIRED01"));
        assert!(!is_enrolled(&table, "C02UNKNOWN01"));
        // a second source calling it unmanaged wins
        table.update_devices(
            "intune",
            vec![(
                "C02MANAGED01".into(),
                Some(SourceFact::inventory(false, BTreeSet::new(), None, now)),
            )],
            "test",
        );
        assert!(!is_enrolled(&table, "C02MANAGED01"));
    }

    #[test]
    fn the_fallback_parser_wants_a_json_object() {
        let p = JsonObjectHint;
        assert!(p.parse(b"not json").is_err());
        assert!(p.parse(b"[1]").is_err());
        let h = p
            .parse(br#"{"webhook":{"webhookEvent":"ComputerAdded"},"event":{}}"#)
            .unwrap();
        assert_eq!(h.event.as_deref(), Some("ComputerAdded"));
        assert!(h.serials.is_empty());
    }
}
