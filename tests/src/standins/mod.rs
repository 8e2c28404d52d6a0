//! Local stand-ins for the cloud MDMs (Jamf Pro, Microsoft Intune / Graph), built from their
//! documented request and response shapes (see `jamf.rs` and `intune.rs`, and the module docs
//! of `appliance/src/compliance/{jamf,intune}.rs` for the fields the appliance relies on).
//!
//! Each stand-in is an HTTPS server (HTTP/1.1, rustls, a fresh rcgen CA per server) on
//! 127.0.0.1 and a random port, with: OAuth client-credential tokens that expire (lifetime
//! settable, in seconds), paging, a device set tests can change while it runs, scripted faults
//! (429 with `Retry-After`, 503, malformed JSON, a field removed, tokens revoked, latency), and
//! a log of every request.

pub mod graph;
pub mod intune;
pub mod jamf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fault the next matching request meets.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// 429 Too Many Requests, with `Retry-After: secs` when given.
    TooManyRequests { retry_after: Option<u64> },
    /// 503 Service Unavailable.
    Unavailable,
    /// Another status with an empty JSON body.
    Status(u16),
    /// 200 with a body cut in the middle (not JSON).
    Malformed,
    /// 200 with the key `key` removed from every object found at JSON pointer `at`
    /// (`/results/*` style: `*` walks every array element).
    DropField { at: String, key: String },
    /// Every token issued so far stops working before this request is answered.
    RevokeTokens,
    /// Answer after this long.
    Delay(Duration),
}

/// One request the stand-in saw.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
}

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub raw_query: String,
    pub query: Vec<(String, String)>,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Req {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn params(&self, name: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
    /// The form fields of an `application/x-www-form-urlencoded` body.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_query(&String::from_utf8_lossy(&self.body))
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub enum Resp {
    Json(u16, Value),
    Raw {
        status: u16,
        content_type: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
}

impl Resp {
    pub fn status(&self) -> u16 {
        match self {
            Resp::Json(s, _) => *s,
            Resp::Raw { status, .. } => *status,
        }
    }
}

/// Issued tokens and their expiry.
#[derive(Debug)]
pub struct Tokens {
    pub lifetime: Duration,
    issued: HashMap<String, Instant>,
    next: u64,
}

impl Tokens {
    pub fn new(lifetime: Duration) -> Self {
        Tokens {
            lifetime,
            issued: HashMap::new(),
            next: 1,
        }
    }
    /// A new token and its `expires_in` in whole seconds (at least 1).
    pub fn issue(&mut self) -> (String, u64) {
        let token = format!("standin-token-{}-{}", self.next, fastrand::u64(..));
        self.next += 1;
        self.issued
            .insert(token.clone(), Instant::now() + self.lifetime);
        (token, self.lifetime.as_secs().max(1))
    }
    pub fn valid(&self, req: &Req) -> bool {
        let Some(auth) = req.header("authorization") else {
            return false;
        };
        let Some(token) = auth.strip_prefix("Bearer ") else {
            return false;
        };
        self.issued
            .get(token)
            .is_some_and(|exp| Instant::now() < *exp)
    }
    pub fn revoke_all(&mut self) {
        self.issued.clear();
    }
    pub fn count(&self) -> u64 {
        self.next - 1
    }
}

/// Faults waiting for requests whose path starts with a prefix, in order.
#[derive(Debug, Default)]
pub struct Faults {
    queue: Vec<(String, Fault)>,
}

impl Faults {
    pub fn push(&mut self, path_prefix: &str, fault: Fault) {
        self.queue.push((path_prefix.to_string(), fault));
    }
    /// The first queued fault for this path, removed.
    pub fn take(&mut self, path: &str) -> Option<Fault> {
        let i = self
            .queue
            .iter()
            .position(|(p, _)| path.starts_with(p.as_str()))?;
        Some(self.queue.remove(i).1)
    }
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

/// What every stand-in shares: the faults, the log, the latency.
#[derive(Debug, Default)]
pub struct Common {
    pub faults: Faults,
    pub log: Vec<LogEntry>,
    /// Added to every answer.
    pub latency: Duration,
}

/// The TLS identity of a stand-in.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_der: Vec<u8>,
    pub ca_pem: String,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl TlsMaterial {
    /// A fresh CA and a server certificate for `localhost` and 127.0.0.1.
    pub fn generate(name: &str) -> TlsMaterial {
        let mut ca = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("{name} stand-in CA"));
        ca.distinguished_name = dn;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name
            .push(DnType::CommonName, format!("{name} stand-in"));
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        TlsMaterial {
            ca_der: issuer.der().to_vec(),
            ca_pem: issuer.pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    self.cert_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}

/// A running HTTPS stand-in; stops when dropped.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// `https://127.0.0.1:PORT`
    pub base_url: String,
    pub tls: TlsMaterial,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The routes of a stand-in: the request, and its state to read and change.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Req) -> Resp;
    fn common(&self) -> &Mutex<Common>;
    /// Every token issued so far stops working.
    fn revoke_tokens(&self);
}

/// Serves `handler` on 127.0.0.1:`port` (0: a random port) over TLS.
pub async fn serve<H: Handler>(name: &str, port: u16, handler: Arc<H>) -> Server {
    let tls = TlsMaterial::generate(name);
    let acceptor = tls.acceptor();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |r: hyper::Request<Incoming>| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(dispatch(&*handler, r).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        base_url: format!("https://127.0.0.1:{}", addr.port()),
        tls,
        task,
    }
}

async fn dispatch<H: Handler>(
    handler: &H,
    r: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let method = r.method().to_string();
    let path = r.uri().path().to_string();
    let raw_query = r.uri().query().unwrap_or("").to_string();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = r
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let req = Req {
        method,
        query: parse_query(&raw_query),
        path,
        raw_query,
        headers,
        body,
    };
    let (fault, latency) = {
        let mut c = handler.common().lock().unwrap();
        (c.faults.take(&req.path), c.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let resp = match fault {
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut headers = Vec::new();
            if let Some(s) = retry_after {
                headers.push(("retry-after".to_string(), s.to_string()));
            }
            Resp::Raw {
                status: 429,
                content_type: "application/json".into(),
                headers,
                body: br#"{"error":"too many requests"}"#.to_vec(),
            }
        }
        Some(Fault::Unavailable) => Resp::Raw {
            status: 503,
            content_type: "text/html".into(),
            headers: Vec::new(),
            body: b"<html><body>Service Unavailable</body></html>".to_vec(),
        },
        Some(Fault::Status(s)) => Resp::Json(s, serde_json::json!({})),
        Some(Fault::Malformed) => match handler.handle(&req) {
            Resp::Json(200, v) => {
                let text = v.to_string();
                Resp::Raw {
                    status: 200,
                    content_type: "application/json".into(),
                    headers: Vec::new(),
                    body: text.as_bytes()[..text.len() / 2].to_vec(),
                }
            }
            other => other,
        },
        Some(Fault::DropField { at, key }) => match handler.handle(&req) {
            Resp::Json(200, mut v) => {
                drop_field(&mut v, &at, &key);
                Resp::Json(200, v)
            }
            other => other,
        },
        Some(Fault::RevokeTokens) => {
            handler.revoke_tokens();
            handler.handle(&req)
        }
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            handler.handle(&req)
        }
        None => handler.handle(&req),
    };
    handler.common().lock().unwrap().log.push(LogEntry {
        at: Instant::now(),
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.raw_query.clone(),
        status: resp.status(),
    });
    let (status, content_type, extra, body) = match resp {
        Resp::Json(s, v) => (
            s,
            "application/json".to_string(),
            Vec::new(),
            v.to_string().into_bytes(),
        ),
        Resp::Raw {
            status,
            content_type,
            headers,
            body,
        } => (status, content_type, headers, body),
    };
    let mut b = hyper::Response::builder()
        .status(status)
        .header("content-type", content_type);
    for (k, v) in extra {
        b = b.header(k, v);
    }
    b.body(Full::new(Bytes::from(body))).unwrap()
}

fn drop_field(v: &mut Value, at: &str, key: &str) {
    let parts: Vec<&str> = at.split('/').filter(|p| !p.is_empty()).collect();
    walk(v, &parts, key);
}

fn walk(v: &mut Value, parts: &[&str], key: &str) {
    match parts.split_first() {
        None => {
            if let Some(o) = v.as_object_mut() {
                o.remove(key);
            }
        }
        Some((&"*", rest)) => {
            if let Some(a) = v.as_array_mut() {
                for e in a {
                    walk(e, rest, key);
                }
            }
        }
        Some((p, rest)) => {
            if let Some(next) = v.get_mut(*p) {
                walk(next, rest, key);
            }
        }
    }
}

/// `a=b&c=d` with `+` as a blank and percent escapes decoded.
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses `field=="value"` (RSQL equality, the only form the stand-ins understand).
pub fn rsql_eq(filter: &str) -> Option<(String, String)> {
    let (field, value) = filter.split_once("==")?;
    let value = value.trim();
    let value = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    Some((field.trim().to_string(), value.to_string()))
}

/// POSTs `body` to an HTTPS URL (HTTP/1.1, trusting `ca_pem` only) and returns the status: how
/// tests deliver a Jamf webhook to the appliance's admin listener.
pub async fn post_https(
    url: &str,
    ca_pem: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<u16> {
    let err = |m: String| std::io::Error::other(m);
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| err(format!("{url}: not https")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority
        .rsplit_once(':')
        .map_or(authority, |(h, _)| h)
        .trim_matches(['[', ']']);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_pem(ca_pem) {
        roots.add(c).map_err(|e| err(e.to_string()))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(authority).await?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| err(e.to_string()))?;
    let mut tls = connector.connect(name, tcp).await?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tls.write_all(req.as_bytes()).await?;
    tls.write_all(body).await?;
    tls.flush().await?;
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err(format!("no HTTP status in the answer: {text:.80}")))
}

fn rustls_pki_pem(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::jamf::{JamfData, JamfStandin};
    use super::*;

    #[test]
    fn queries_and_filters_decode() {
        assert_eq!(
            parse_query("a=1+2&b=%22x%22&c"),
            vec![
                ("a".to_string(), "1 2".to_string()),
                ("b".to_string(), "\"x\"".to_string()),
                ("c".to_string(), String::new())
            ]
        );
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(
            rsql_eq("hardware.serialNumber==\"C02\""),
            Some(("hardware.serialNumber".to_string(), "C02".to_string()))
        );
        assert_eq!(rsql_eq("id=in=(1,2)"), None);
    }

    #[tokio::test]
    async fn post_https_reaches_a_stand_in_and_tokens_need_the_right_client() {
        let jamf =
            JamfStandin::start("id", "pw", JamfData::sample(1, 0), Duration::from_secs(60)).await;
        let url = format!("{}/api/oauth/token", jamf.url());
        let ca = jamf.server.tls.ca_pem.clone();
        let bad = b"grant_type=client_credentials&client_id=id&client_secret=nope";
        assert_eq!(post_https(&url, &ca, &[], bad).await.unwrap(), 401);
        let good = b"grant_type=client_credentials&client_id=id&client_secret=pw";
        assert_eq!(
            post_https(&url, &ca, &[("X-Test", "1")], good)
                .await
                .unwrap(),
            200
        );
        assert_eq!(jamf.tokens_issued(), 1);
        // Another CA is not trusted.
        let other = TlsMaterial::generate("other").ca_pem;
        assert!(post_https(&url, &other, &[], good).await.is_err());
        let log = jamf.common().log.clone();
        assert_eq!(
            log.iter().map(|e| e.status).collect::<Vec<_>>(),
            vec![401, 200]
        );
    }
}
