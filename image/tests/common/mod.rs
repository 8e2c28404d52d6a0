//! Shared by the golden tests: how a seed is rendered, and an HTTP server on 127.0.0.1 that
//! plays a metadata service from a `responses` file and records what it was sent.
//!
//! A `responses` file is a list of blocks, each `=== METHOD TARGET` on a line of its own and
//! then the raw response: status line, header lines, an empty line, the body (up to the newline
//! before the next `===` line; end the body with an empty line to keep a final newline).
//! `Content-Length` is added unless the block sets `Transfer-Encoding` (then the body is sent as
//! written, chunks and all). A target listed twice answers with each block in turn, the last
//! one from then on. `=== default` answers every target not listed (else 404, no headers).
//! `X-Test-Repeat: N` (not sent) repeats the body up to N bytes, for oversize answers.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use image::firstboot::install::{instance_id, InstallError};
use image::firstboot::seed::{Seed, SeedError, UserData};
use image::firstboot::ssh_keys::check_keys;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What a parsed seed comes to: the text for `expected`, and the refusal (the parser's error
/// or the configuration check's report) if any.
pub fn render(seed: Result<Seed, SeedError>) -> (String, Result<(), String>) {
    let mut out = String::new();
    let seed = match seed {
        Ok(s) => s,
        Err(e) => return (format!("refused: {e}\n"), Err(e.to_string())),
    };
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    writeln!(out, "instance-id: {}", show(&seed.meta.instance_id)).unwrap();
    writeln!(out, "local-hostname: {}", show(&seed.meta.local_hostname)).unwrap();
    writeln!(out, "applied as: {}", instance_id(&seed)).unwrap();
    for f in &seed.files {
        writeln!(out, "file: {} ({} bytes)", f.name, f.contents.len()).unwrap();
    }
    for note in &seed.notes {
        writeln!(out, "note: {note}").unwrap();
    }
    if !seed.meta.public_keys.is_empty() {
        let keys = check_keys(&seed.meta.public_keys);
        for k in &keys.accepted {
            let mut parts = k.splitn(3, ' ');
            let (kind, blob, comment) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
            );
            writeln!(out, "ssh key: {kind} {}… {comment}", &blob[..12]).unwrap();
        }
        for r in &keys.refused {
            writeln!(out, "ssh key refused: {r}").unwrap();
        }
    }
    let mut verdict = Ok(());
    match &seed.user_data {
        UserData::Absent => {
            writeln!(out, "user-data: none (appliance stays unconfigured)").unwrap()
        }
        UserData::Config(text) => {
            writeln!(out, "user-data: configuration, {} bytes", text.len()).unwrap();
            assert!(!text.contains('\r') && !text.starts_with('\u{feff}'));
            let origin = Path::new("/etc/attestgate/attestgate.toml.new");
            match config::load_str(
                text,
                origin,
                Path::new("/etc/attestgate"),
                config::FileChecks::Lenient,
            ) {
                Ok(l) => writeln!(out, "check: ok ({} warnings)", l.warnings.0.len()).unwrap(),
                Err(e) => {
                    writeln!(out, "check: refused\n{e}").unwrap();
                    // As the installer words it (and the console and Azure's report show it).
                    verdict = Err(InstallError::Invalid(e.to_string()).to_string());
                }
            }
        }
    }
    (out, verdict)
}

/// Compares (or with `UPDATE_GOLDEN=1` rewrites) each case directory's `expected` with what
/// `run` makes of the directory; needs at least `min` cases.
pub fn golden(dir: &str, min: usize, run: impl Fn(&Path) -> String) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= min, "golden cases missing under {dir}");
    let mut mismatches = Vec::new();
    for case in cases {
        let got = run(&case);
        let expected_path = case.join("expected");
        if update {
            std::fs::write(&expected_path, &got).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected {
            mismatches.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}",
                case.display()
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
pub struct Server {
    pub base: String,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Recorded>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

type Routes = HashMap<String, Vec<Vec<u8>>>;

impl Server {
    /// Serves `responses` (see the module doc) on a free port of 127.0.0.1.
    pub fn start(responses: &Path) -> Server {
        let routes = parse_responses(&std::fs::read(responses).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (log2, stop2) = (log.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut served: HashMap<String, usize> = HashMap::new();
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                if let Some(req) = read_request(&conn) {
                    let key = format!("{} {}", req.method, req.target);
                    let raw = match routes.get(&key) {
                        Some(list) => {
                            let n = served.entry(key).or_default();
                            let r = list[(*n).min(list.len() - 1)].clone();
                            *n += 1;
                            Some(r)
                        }
                        None => routes.get("default").map(|l| l[0].clone()),
                    };
                    log2.lock().unwrap().push(req);
                    let _ = (&conn).write_all(&build_response(raw.as_deref()));
                }
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
        });
        Server {
            base: format!("http://{addr}"),
            addr,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    /// The requests as golden-file lines: method, target, the headers that matter, any body.
    pub fn render_requests(&self) -> String {
        let mut out = String::from("requests:\n");
        for r in self.requests() {
            writeln!(out, "  {} {}", r.method, r.target).unwrap();
            for (name, value) in &r.headers {
                let lower = name.to_ascii_lowercase();
                let shown = match lower.as_str() {
                    "host" => !value.starts_with("127.0.0.1"),
                    "connection" | "user-agent" | "content-length" => false,
                    _ => true,
                };
                if shown {
                    writeln!(out, "    {name}: {value}").unwrap();
                }
            }
            if !r.body.is_empty() {
                writeln!(
                    out,
                    "    body: {}",
                    String::from_utf8_lossy(&r.body).trim_end()
                )
                .unwrap();
            }
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_responses(bytes: &[u8]) -> Routes {
    let mut routes: Routes = HashMap::new();
    let text_starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i..].starts_with(b"=== ") && (i == 0 || bytes[i - 1] == b'\n'))
        .collect();
    for (n, &start) in text_starts.iter().enumerate() {
        let end = text_starts.get(n + 1).map_or(bytes.len(), |&e| e - 1);
        let block = &bytes[start..end.max(start)];
        let nl = block
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(block.len());
        let marker = String::from_utf8_lossy(&block[4..nl]).trim().to_string();
        let mut raw = block.get(nl + 1..).unwrap_or_default().to_vec();
        if text_starts.get(n + 1).is_none() && raw.ends_with(b"\n") {
            raw.pop();
        }
        routes.entry(marker).or_default().push(raw);
    }
    routes
}

fn build_response(raw: Option<&[u8]>) -> Vec<u8> {
    let Some(raw) = raw else {
        return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec();
    };
    let split = raw
        .windows(2)
        .position(|w| w == b"\n\n")
        .map_or((raw, &b""[..]), |i| (&raw[..i], &raw[i + 2..]));
    let (head, body) = split;
    let mut body = body.to_vec();
    let mut out = Vec::new();
    let mut chunked = false;
    for line in String::from_utf8_lossy(head).lines() {
        if let Some(n) = line.strip_prefix("X-Test-Repeat: ") {
            let n: usize = n.trim().parse().unwrap();
            body = body.iter().copied().cycle().take(n).collect();
            continue;
        }
        chunked |= line.to_ascii_lowercase().starts_with("transfer-encoding:");
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !chunked {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

fn read_request(conn: &TcpStream) -> Option<Recorded> {
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l).ok()?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        let (n, v) = l.split_once(':')?;
        headers.push((n.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Recorded {
        method,
        target,
        headers,
        body,
    })
}
