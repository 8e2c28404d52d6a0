//! The HTTPS client both MDM sources use.
//!
//! - TLS through rustls (ring), trusting the operating system's roots (which honour
//!   `SSL_CERT_FILE` / `SSL_CERT_DIR`) plus any roots given in [`HttpSettings::extra_roots`];
//!   only `https://` URLs, no redirects (a redirect would carry our bearer token elsewhere).
//! - OAuth 2.0 client credentials (RFC 6749 §4.4): the token is cached and renewed before it
//!   expires (at `expires_in` minus a margin of at most a fifth of its lifetime), and once more
//!   when the API answers 401 to it (the server may revoke a token early).
//! - Retries on 429 and 500/502/503/504 and on transport errors, with exponential backoff and
//!   jitter; a `Retry-After` in seconds (RFC 9110 §10.2.3) is honoured instead of the backoff.
//!   Every request has a timeout and the whole operation a deadline.
//! - Answers are decoded strictly into typed structs: a malformed body, a missing field or a
//!   wrong type is an error for the whole operation, so callers never apply half an answer.
//! - The client secret is read from its file into zeroized memory and is never logged or put
//!   in an error; tokens likewise. (The copy of the form body handed to the HTTP stack is not
//!   under our control and is not zeroized.)

use super::mdm::SourceError;
use reqwest::header::{HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// Limits and trust for the MDM clients.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub connect_timeout: Duration,
    /// One request, headers and body.
    pub request_timeout: Duration,
    /// A whole operation (a full sync with all its pages, or one refresh).
    pub deadline: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Renew a token this long before it expires (at most a fifth of its lifetime).
    pub renew_margin: Duration,
    /// Page size asked of paged endpoints.
    pub page_size: u32,
    /// The largest body we read.
    pub max_body: usize,
    /// Extra trusted roots (tests, private CAs), DER.
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(300),
            max_attempts: 6,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            renew_margin: Duration::from_secs(60),
            page_size: 200,
            max_body: 64 << 20,
            extra_roots: Vec::new(),
        }
    }
}

/// A client secret: zeroized on drop, never printed.
pub struct Secret(Zeroizing<String>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// Reads a secret file; surrounding blanks and the final newline are not part of it.
    pub fn read(path: &Path) -> Result<Secret, SourceError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| {
            SourceError::Config(format!("cannot read {}: {}", path.display(), e.kind()))
        })?);
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| SourceError::Config(format!("{} is not UTF-8 text", path.display())))?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(SourceError::Config(format!("{} is empty", path.display())));
        }
        Ok(Secret(Zeroizing::new(trimmed.to_string())))
    }

    pub fn from_string(s: String) -> Secret {
        Secret(Zeroizing::new(s))
    }
}

/// Where and how to get a client-credentials token.
#[derive(Debug)]
pub struct TokenRequest {
    /// The token endpoint.
    pub url: String,
    pub client_id: String,
    pub secret: Secret,
    /// `scope` form field (Microsoft identity platform needs one; Jamf takes none).
    pub scope: Option<String>,
}

struct CachedToken {
    value: Zeroizing<String>,
    renew_at: Instant,
}

impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// What a client did, for events and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    pub requests: u64,
    pub retries: u64,
    pub tokens_fetched: u64,
}

/// The token endpoint's answer (RFC 6749 §5.1). `expires_in` is a number, though some
/// servers send it as a string.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: NumberOrString,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    N(u64),
    S(String),
}

/// An error answer of the token endpoint (RFC 6749 §5.2): only the code is shown.
#[derive(Deserialize)]
struct TokenError {
    error: String,
}

/// An authenticated JSON API client.
#[derive(Debug)]
pub struct ApiClient {
    client: reqwest::Client,
    token_request: TokenRequest,
    token: Option<CachedToken>,
    settings: HttpSettings,
    pub stats: ClientStats,
}

/// The deadline of an operation starting now.
pub fn deadline_from_now(settings: &HttpSettings) -> Instant {
    Instant::now() + settings.deadline
}

/// `application/x-www-form-urlencoded` (WHATWG URL §5.2), into zeroized memory.
fn form_encode(pairs: &[(&str, &str)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        percent_encode_into(k, &mut out);
        out.push('=');
        percent_encode_into(v, &mut out);
    }
    out
}

fn percent_encode_into(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
}

/// Percent-encodes a query value (RFC 3986 §2.1; unreserved characters stay).
pub fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// `Retry-After` as delay-seconds (RFC 9110 §10.2.3); an HTTP-date falls back to our backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// Exponential backoff with "equal jitter": half the step fixed, half random.
fn backoff(settings: &HttpSettings, attempt: u32) -> Duration {
    let exp = settings
        .backoff_base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let step = exp.min(settings.backoff_max);
    let half = step / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(fastrand::u64(0..=jitter_ms))
}

fn retryable(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504)
}

/// The URL without its query, for messages.
fn short(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

enum Attempt {
    Done(u16, Vec<u8>),
    /// A final non-2xx answer, kept for a caller that reads the API's error body.
    Answer(u16, Vec<u8>),
    Retry(Option<Duration>, SourceError),
    Renew(SourceError),
    Fail(SourceError),
}

impl ApiClient {
    pub fn new(token_request: TokenRequest, settings: HttpSettings) -> Result<Self, SourceError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .user_agent(concat!("attestgate/", env!("CARGO_PKG_VERSION")));
        for root in &settings.extra_roots {
            let cert = reqwest::Certificate::from_der(root.as_ref())
                .map_err(|e| SourceError::Config(format!("bad extra root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .build()
            .map_err(|e| SourceError::Config(format!("cannot build the HTTPS client: {e}")))?;
        Ok(ApiClient {
            client,
            token_request,
            token: None,
            settings,
            stats: ClientStats::default(),
        })
    }

    pub fn settings(&self) -> &HttpSettings {
        &self.settings
    }

    /// Forgets the cached token (the next request fetches a new one).
    pub fn drop_token(&mut self) {
        self.token = None;
    }

    /// GETs `url` with the bearer token and decodes the JSON answer into `T`.
    pub async fn get_json<T: DeserializeOwned>(
        &mut self,
        url: &str,
        deadline: Instant,
    ) -> Result<T, SourceError> {
        let body = self.get_authed(url, deadline).await?;
        serde_json::from_slice(&body).map_err(|e| SourceError::Decode {
            url: short(url),
            message: e.to_string(),
        })
    }

    /// GETs `url` with the bearer token; `Ok(None)` on 404.
    pub async fn get_json_opt<T: DeserializeOwned>(
        &mut self,
        url: &str,
        deadline: Instant,
    ) -> Result<Option<T>, SourceError> {
        match self.get_json(url, deadline).await {
            Ok(v) => Ok(Some(v)),
            Err(SourceError::Status { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn get_authed(&mut self, url: &str, deadline: Instant) -> Result<Vec<u8>, SourceError> {
        self.send_authed(reqwest::Method::GET, url, None, false, deadline)
            .await
            .map(|(_, body)| body)
    }

    /// Sends `body` (JSON) with the bearer token and returns the final status and body, for
    /// APIs whose error bodies say what went wrong (Microsoft Graph's `{"error": {"code",
    /// "message"}}`). 401 renews the token once, 429/5xx are retried as for GETs, and every
    /// other status is handed back. A `POST` is not idempotent: it is retried only on 429
    /// (a throttled request is not processed) and when the connection could not be made.
    pub async fn send_json(
        &mut self,
        method: reqwest::Method,
        url: &str,
        body: Option<&serde_json::Value>,
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), SourceError> {
        let body = match body {
            Some(v) => Some(serde_json::to_vec(v).map_err(|e| SourceError::Decode {
                url: short(url),
                message: format!("request body: {e}"),
            })?),
            None => None,
        };
        self.send_authed(method, url, body, true, deadline).await
    }

    async fn send_authed(
        &mut self,
        method: reqwest::Method,
        url: &str,
        body: Option<Vec<u8>>,
        raw_errors: bool,
        deadline: Instant,
    ) -> Result<(u16, Vec<u8>), SourceError> {
        let idempotent = method != reqwest::Method::POST;
        let mut attempt = 0u32;
        let mut renewed = false;
        loop {
            attempt += 1;
            let token = self.bearer(deadline).await?;
            let timeout = self.timeout_for(url, deadline)?;
            let mut auth =
                reqwest::header::HeaderValue::try_from(format!("Bearer {}", token.as_str()))
                    .map_err(|_| SourceError::Decode {
                        url: self.token_request.url.clone(),
                        message: "token answer: the token is not a valid header value".into(),
                    })?;
            auth.set_sensitive(true);
            drop(token);
            let mut req = self
                .client
                .request(method.clone(), url)
                .header(ACCEPT, "application/json")
                .header(AUTHORIZATION, auth)
                .timeout(timeout);
            if let Some(b) = &body {
                req = req.header(CONTENT_TYPE, "application/json").body(b.clone());
            }
            match self
                .attempt(req, url, attempt, raw_errors, idempotent)
                .await
            {
                Attempt::Done(status, body) => return Ok((status, body)),
                Attempt::Answer(status, body) => return Ok((status, body)),
                Attempt::Renew(e) => {
                    if renewed {
                        return Err(e);
                    }
                    // RFC 6750 §3.1: invalid_token → get a new one and try once more.
                    renewed = true;
                    attempt -= 1;
                    self.token = None;
                }
                Attempt::Retry(wait, e) => self.wait_retry(url, attempt, wait, e, deadline).await?,
                Attempt::Fail(e) => return Err(e),
            }
        }
    }

    fn timeout_for(&self, url: &str, deadline: Instant) -> Result<Duration, SourceError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(SourceError::Deadline {
                url: short(url),
                secs: self.settings.deadline.as_secs(),
            });
        }
        Ok(remaining.min(self.settings.request_timeout))
    }

    async fn wait_retry(
        &mut self,
        url: &str,
        attempt: u32,
        wait: Option<Duration>,
        err: SourceError,
        deadline: Instant,
    ) -> Result<(), SourceError> {
        if attempt >= self.settings.max_attempts {
            return Err(err);
        }
        let wait = wait.unwrap_or_else(|| backoff(&self.settings, attempt));
        if Instant::now() + wait >= deadline {
            tracing::debug!(url = %short(url), ?wait, "retry would pass the deadline");
            return Err(SourceError::Deadline {
                url: short(url),
                secs: self.settings.deadline.as_secs(),
            });
        }
        self.stats.retries += 1;
        tracing::debug!(url = %short(url), attempt, ?wait, error = %err, "retrying");
        tokio::time::sleep(wait).await;
        Ok(())
    }

    /// One request: classifies the outcome.
    async fn attempt(
        &mut self,
        req: reqwest::RequestBuilder,
        url: &str,
        attempt: u32,
        raw_errors: bool,
        idempotent: bool,
    ) -> Attempt {
        self.stats.requests += 1;
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if !idempotent && !e.is_connect() => {
                // The request may have reached the server: sending it again could repeat it.
                return Attempt::Fail(SourceError::Transport {
                    url: short(url),
                    message: transport_message(&e),
                });
            }
            Err(e) => {
                return Attempt::Retry(
                    None,
                    SourceError::Transport {
                        url: short(url),
                        message: transport_message(&e),
                    },
                )
            }
        };
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return match read_body(resp, self.settings.max_body).await {
                Ok(b) => Attempt::Done(status, b),
                Err(message) => Attempt::Retry(
                    None,
                    SourceError::Transport {
                        url: short(url),
                        message,
                    },
                ),
            };
        }
        let status_err = SourceError::Status {
            url: short(url),
            status,
            attempts: attempt,
        };
        if status == 401 {
            return Attempt::Renew(SourceError::Auth {
                url: short(url),
                status,
                message: "the API refused a fresh token".into(),
            });
        }
        if retryable(status) && (idempotent || status == 429) {
            return Attempt::Retry(retry_after(resp.headers()), status_err);
        }
        if raw_errors {
            return match read_body(resp, 1 << 20).await {
                Ok(b) => Attempt::Answer(status, b),
                Err(_) => Attempt::Answer(status, Vec::new()),
            };
        }
        Attempt::Fail(status_err)
    }

    /// The cached token, or a new one when it is due for renewal.
    async fn bearer(&mut self, deadline: Instant) -> Result<Zeroizing<String>, SourceError> {
        if let Some(t) = &self.token {
            if Instant::now() < t.renew_at {
                return Ok(t.value.clone());
            }
        }
        self.token = None;
        let fresh = self.fetch_token(deadline).await?;
        let value = fresh.value.clone();
        self.token = Some(fresh);
        Ok(value)
    }

    async fn fetch_token(&mut self, deadline: Instant) -> Result<CachedToken, SourceError> {
        let url = self.token_request.url.clone();
        let mut pairs = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.token_request.client_id.as_str()),
            ("client_secret", self.token_request.secret.0.as_str()),
        ];
        if let Some(scope) = &self.token_request.scope {
            pairs.push(("scope", scope.as_str()));
        }
        let form = form_encode(&pairs);
        drop(pairs);
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let timeout = self.timeout_for(&url, deadline)?;
            let req = self
                .client
                .post(&url)
                .header(ACCEPT, "application/json")
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(form.as_bytes().to_vec())
                .timeout(timeout);
            self.stats.requests += 1;
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = SourceError::Transport {
                        url: url.clone(),
                        message: transport_message(&e),
                    };
                    self.wait_retry(&url, attempt, None, err, deadline).await?;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if retryable(status) {
                let wait = retry_after(resp.headers());
                let err = SourceError::Status {
                    url: url.clone(),
                    status,
                    attempts: attempt,
                };
                self.wait_retry(&url, attempt, wait, err, deadline).await?;
                continue;
            }
            let body = Zeroizing::new(match read_body(resp, 1 << 20).await {
                Ok(b) => b,
                Err(message) => {
                    let err = SourceError::Transport {
                        url: url.clone(),
                        message,
                    };
                    self.wait_retry(&url, attempt, None, err, deadline).await?;
                    continue;
                }
            });
            if !(200..300).contains(&status) {
                let code = serde_json::from_slice::<TokenError>(&body)
                    .map(|e| e.error)
                    .unwrap_or_else(|_| "no OAuth error code".into());
                return Err(SourceError::Auth {
                    url,
                    status,
                    message: code.chars().take(64).collect(),
                });
            }
            return self.parse_token(&url, &body);
        }
    }

    fn parse_token(&mut self, url: &str, body: &[u8]) -> Result<CachedToken, SourceError> {
        // Never echo the body: it holds the token. Only say where decoding failed.
        let parsed: TokenResponse = serde_json::from_slice(body).map_err(|e| {
            let what = if e.is_data() {
                // serde's data messages name the field but may quote a value; keep the field.
                let m = e.to_string();
                match m.find("missing field") {
                    Some(i) => m[i..].split(" at line").next().unwrap_or("").to_string(),
                    None => "a field has the wrong type".into(),
                }
            } else {
                "not JSON".into()
            };
            SourceError::Decode {
                url: url.to_string(),
                message: format!("token answer: {what}"),
            }
        })?;
        let value = Zeroizing::new(parsed.access_token);
        if value.is_empty() || !parsed.token_type.eq_ignore_ascii_case("bearer") {
            return Err(SourceError::Decode {
                url: url.to_string(),
                message: "token answer: empty token or token_type other than Bearer".into(),
            });
        }
        let lifetime = match parsed.expires_in {
            NumberOrString::N(n) => Some(n),
            NumberOrString::S(s) => s.trim().parse().ok(),
        }
        .filter(|n| *n > 0)
        .ok_or_else(|| SourceError::Decode {
            url: url.to_string(),
            message: "token answer: expires_in is not a positive number".into(),
        })?;
        let lifetime = Duration::from_secs(lifetime);
        let margin = self.settings.renew_margin.min(lifetime / 5);
        self.stats.tokens_fetched += 1;
        tracing::debug!(url, lifetime_s = lifetime.as_secs(), "got an access token");
        Ok(CachedToken {
            value,
            renew_at: Instant::now() + lifetime - margin,
        })
    }
}

fn transport_message(e: &reqwest::Error) -> String {
    let mut msg = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        "request failed".to_string()
    };
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

async fn read_body(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > max {
                    return Err(format!("answer larger than {max} bytes"));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out),
            Err(e) => return Err(format!("reading the answer: {}", transport_message(&e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_and_query_encoding() {
        let f = form_encode(&[("a b", "x&y=z/é"), ("k", "")]);
        assert_eq!(f.as_str(), "a+b=x%26y%3Dz%2F%C3%A9&k=");
        assert_eq!(query_escape("a==\"B 1\""), "a%3D%3D%22B%201%22");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let s = HttpSettings {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..HttpSettings::default()
        };
        for _ in 0..50 {
            let b1 = backoff(&s, 1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100));
            let b3 = backoff(&s, 3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400));
            let b30 = backoff(&s, 30);
            assert!(b30 >= Duration::from_millis(500) && b30 <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn retry_after_seconds_only() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn secrets_are_trimmed_and_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "  hunter2\n").unwrap();
        let s = Secret::read(&p).unwrap();
        assert_eq!(s.0.as_str(), "hunter2");
        assert!(!format!("{s:?}").contains("hunter2"));
        std::fs::write(&p, "\n").unwrap();
        assert!(Secret::read(&p).is_err());
        let e = Secret::read(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }
}
