//! A small blocking HTTP/1.1 client (RFC 9112) for the platforms' metadata services.
//!
//! Not `ureq`: the package lists this project may draw on here do not carry it, and what first
//! boot needs is small — plain HTTP to a link-local IP literal (no TLS, no DNS, no proxies, no
//! redirects, no cookies), a `Host` header of our choosing (GCP), the response headers (GCP's
//! `Metadata-Flavor`), connect and read timeouts, and a cap on every body. One request per
//! connection (`Connection: close`), so no pooling either; a few hundred lines keep the
//! first-boot binary small.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest status line plus headers accepted.
const MAX_HEAD: usize = 32 << 10;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum HttpError {
    /// Nothing answered (yet): worth retrying while the network comes up.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The connection broke or stalled mid-way: worth retrying.
    #[error("{0}")]
    Transport(String),
    #[error("malformed HTTP response: {0}")]
    Malformed(String),
    #[error("response body larger than the {limit} bytes accepted")]
    TooLarge { limit: usize },
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
}

impl HttpError {
    fn retryable(&self) -> bool {
        matches!(self, HttpError::Connect { .. } | HttpError::Transport(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (names compare case-insensitively, RFC 9110 §5.1).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A metadata service: `http://HOST[:PORT][/PREFIX]` and how patient to be with it.
#[derive(Debug, Clone)]
pub struct Client {
    /// `HOST:PORT` as connected to.
    authority: String,
    /// Prepended to every request's path (no trailing `/`).
    prefix: String,
    /// Sent as `Host` (RFC 9112 §3.2); the authority unless overridden.
    pub host_header: String,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Largest body accepted.
    pub max_body: usize,
    /// How long [`Client::send_retrying`] keeps trying.
    pub retry_for: Duration,
}

impl Client {
    /// `base` is `http://HOST[:PORT][/PREFIX]`; HOST is usually an IP literal.
    pub fn new(base: &str) -> Result<Client, HttpError> {
        let bad = |reason: &str| HttpError::Url {
            url: base.into(),
            reason: reason.into(),
        };
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| bad("only http:// is supported"))?;
        let (authority, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad("no host"));
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Client {
            host_header: authority.trim_end_matches(":80").to_string(),
            authority,
            prefix: prefix.trim_end_matches('/').to_string(),
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(5),
            max_body: 1 << 20,
            retry_for: Duration::from_secs(60),
        })
    }

    /// The URL of `path` on this service, for messages.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}{path}", self.host_header, self.prefix)
    }

    /// One attempt.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let addr = self.resolve()?;
        let mut stream = TcpStream::connect_timeout(&addr, self.connect_timeout).map_err(|e| {
            HttpError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            }
        })?;
        let io = |e: std::io::Error| HttpError::Transport(format!("{}: {e}", self.url(path)));
        stream
            .set_read_timeout(Some(self.read_timeout))
            .map_err(io)?;
        stream
            .set_write_timeout(Some(self.read_timeout))
            .map_err(io)?;
        let mut head = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: attestgate-firstboot\r\n",
            self.prefix, self.host_header
        );
        for (name, value) in headers {
            if value.contains(['\r', '\n']) || name.contains(['\r', '\n', ':']) {
                return Err(HttpError::Url {
                    url: self.url(path),
                    reason: format!("header {name} would break the request"),
                });
            }
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if body.is_some() || method == "POST" || method == "PUT" {
            head.push_str(&format!(
                "Content-Length: {}\r\n",
                body.map_or(0, <[u8]>::len)
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(io)?;
        if let Some(body) = body {
            stream.write_all(body).map_err(io)?;
        }
        stream.flush().map_err(io)?;
        let deadline = Instant::now() + self.read_timeout * 4;
        read_response(
            BufReader::new(stream),
            self.max_body,
            deadline,
            method == "HEAD",
        )
        .map_err(|e| match e {
            HttpError::Transport(m) => HttpError::Transport(format!("{}: {m}", self.url(path))),
            other => other,
        })
    }

    /// Retries what may pass while the network comes up — no connection, a broken one, HTTP
    /// 429 and 5xx — with a backoff from 250 ms doubling to 4 s, for [`Client::retry_for`]
    /// in all. The last answer or error is returned.
    pub fn send_retrying(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Response, HttpError> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(250);
        loop {
            let result = self.send(method, path, headers, body);
            let again = match &result {
                Ok(r) => r.status == 429 || (500..600).contains(&r.status),
                Err(e) => e.retryable(),
            };
            if !again || start.elapsed() + delay > self.retry_for {
                return result;
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(4));
        }
    }

    fn resolve(&self) -> Result<SocketAddr, HttpError> {
        let err = |reason: String| HttpError::Connect {
            addr: self.authority.clone(),
            reason,
        };
        self.authority
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address".into()))
    }
}

fn read_response<R: Read>(
    mut r: BufReader<R>,
    max_body: usize,
    deadline: Instant,
    head_only: bool,
) -> Result<Response, HttpError> {
    let transport = |e: std::io::Error| HttpError::Transport(e.to_string());
    let mut head_len = 0;
    let mut line = |r: &mut BufReader<R>| -> Result<String, HttpError> {
        let mut buf = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - head_len + 1) as u64)
            .read_until(b'\n', &mut buf)
            .map_err(transport)?;
        head_len += n;
        if head_len > MAX_HEAD {
            return Err(HttpError::Malformed(format!(
                "headers longer than {MAX_HEAD} bytes"
            )));
        }
        if n == 0 || !buf.ends_with(b"\n") {
            return Err(HttpError::Transport(
                "connection closed in the headers".into(),
            ));
        }
        let text = String::from_utf8(buf)
            .map_err(|_| HttpError::Malformed("headers are not UTF-8".into()))?;
        Ok(text.trim_end_matches(['\r', '\n']).to_string())
    };
    // RFC 9112 §4: HTTP-version SP status-code SP [reason-phrase]
    let status_line = line(&mut r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(HttpError::Malformed(format!("status line {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let l = line(&mut r)?;
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(HttpError::Malformed(format!("header line {l:?}")));
        };
        headers.push((name.trim().to_string(), value.trim().to_string()));
    }
    let mut resp = Response {
        status,
        headers,
        body: Vec::new(),
    };
    // RFC 9112 §6.3: no body for HEAD, 1xx, 204, 304.
    if head_only || status < 200 || status == 204 || status == 304 {
        return Ok(resp);
    }
    let chunked = resp
        .header("Transfer-Encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if chunked {
        resp.body = read_chunked(&mut r, max_body, deadline)?;
    } else if let Some(len) = resp.header("Content-Length") {
        let len: usize = len
            .parse()
            .map_err(|_| HttpError::Malformed(format!("Content-Length {len:?}")))?;
        if len > max_body {
            return Err(HttpError::TooLarge { limit: max_body });
        }
        resp.body = read_exact_by(&mut r, len, deadline)?;
    } else {
        // Delimited by the close (RFC 9112 §6.3 item 8).
        resp.body = read_to_close(&mut r, max_body, deadline)?;
    }
    Ok(resp)
}

fn check_deadline(deadline: Instant) -> Result<(), HttpError> {
    if Instant::now() > deadline {
        Err(HttpError::Transport("the response took too long".into()))
    } else {
        Ok(())
    }
}

fn read_exact_by<R: Read>(r: &mut R, len: usize, deadline: Instant) -> Result<Vec<u8>, HttpError> {
    let mut out = vec![0; len];
    let mut got = 0;
    while got < len {
        check_deadline(deadline)?;
        match r.read(&mut out[got..]) {
            Ok(0) => {
                return Err(HttpError::Transport(format!(
                    "connection closed after {got} of {len} body bytes"
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HttpError::Transport(e.to_string())),
        }
    }
    Ok(out)
}

fn read_to_close<R: Read>(r: &mut R, max: usize, deadline: Instant) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let mut buf = [0; 8192];
    loop {
        check_deadline(deadline)?;
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > max {
                    return Err(HttpError::TooLarge { limit: max });
                }
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HttpError::Transport(e.to_string())),
        }
    }
}

/// RFC 9112 §7.1: chunk-size [ext] CRLF data CRLF ... 0 CRLF [trailers] CRLF.
fn read_chunked<R: BufRead>(
    r: &mut R,
    max: usize,
    deadline: Instant,
) -> Result<Vec<u8>, HttpError> {
    let mut out = Vec::new();
    let line = |r: &mut R| -> Result<String, HttpError> {
        let mut buf = Vec::new();
        r.by_ref()
            .take(1024)
            .read_until(b'\n', &mut buf)
            .map_err(|e| HttpError::Transport(e.to_string()))?;
        if !buf.ends_with(b"\n") {
            return Err(HttpError::Malformed("bad chunk line".into()));
        }
        Ok(String::from_utf8_lossy(&buf).trim_end().to_string())
    };
    loop {
        check_deadline(deadline)?;
        let size_line = line(r)?;
        let size = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16)
            .map_err(|_| HttpError::Malformed(format!("chunk size {size:?}")))?;
        if size == 0 {
            // Trailer fields up to the empty line.
            while !line(r)?.is_empty() {}
            return Ok(out);
        }
        if out.len().saturating_add(size) > max {
            return Err(HttpError::TooLarge { limit: max });
        }
        out.extend(read_exact_by(r, size, deadline)?);
        if !line(r)?.is_empty() {
            return Err(HttpError::Malformed(
                "chunk data longer than its size".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn parse(raw: &[u8], max: usize) -> Result<Response, HttpError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        read_response(BufReader::new(raw), max, deadline, false)
    }

    #[test]
    fn responses() {
        let r = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-A: b\r\n\r\nabcdef",
            10,
        )
        .unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.header("x-a")),
            (200, &b"abc"[..], Some("b"))
        );
        let r = parse(b"HTTP/1.0 404 Not Found\n\nnot here", 10).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"not here"[..]));
        let r = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(r.body, b"abcde");
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", 10),
            Err(HttpError::TooLarge { limit: 10 })
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\n\r\n01234567890", 10),
            Err(HttpError::TooLarge { limit: 10 })
        );
        assert_eq!(
            parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n01234567890\r\n0\r\n\r\n", 10),
            Err(HttpError::TooLarge { limit: 10 })
        );
        assert!(matches!(
            parse(b"SSH-2.0-x\r\n\r\n", 10),
            Err(HttpError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", 10),
            Err(HttpError::Transport(_))
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nX", 10),
            Err(HttpError::Transport(_))
        ));
    }

    #[test]
    fn urls() {
        let c = Client::new("http://169.254.169.254").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("169.254.169.254:80", "")
        );
        assert_eq!(
            c.url("/latest/user-data"),
            "http://169.254.169.254/latest/user-data"
        );
        let c = Client::new("http://127.0.0.1:8080/computeMetadata/v1/").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.prefix.as_str()),
            ("127.0.0.1:8080", "/computeMetadata/v1")
        );
        assert_eq!(c.host_header, "127.0.0.1:8080");
        assert!(Client::new("https://x").is_err());
        assert!(Client::new("http:///x").is_err());
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let mut c = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
        c.retry_for = Duration::from_millis(600);
        let t = Instant::now();
        let e = c.send_retrying("GET", "/", &[], None).unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e}");
        // 250 ms + (would-be 500 ms exceeds 600 ms) → one wait, bounded.
        assert!(t.elapsed() >= Duration::from_millis(250) && t.elapsed() < Duration::from_secs(3));
    }
}
