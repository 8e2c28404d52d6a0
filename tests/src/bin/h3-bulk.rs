//! A device's bulk transfer through the relay, for the lab benchmark
//! (`tests/tests/lab_bench.rs`): one HTTP/3 connection made with the device's client
//! certificate, one classic CONNECT (RFC 9114 §4.4: `:method` and `:authority`, nothing
//! else), then `--mib` MiB streamed to the target while what comes back is read and checked
//! byte for byte. The lab server answers `seen SOURCE:PORT at LISTEN\n` first, then echoes
//! until the client ends its side, so the figure is each way at once.
//!
//! ```text
//! h3-bulk --relay ADDR:PORT --server-name NAME --ca PEM --cert PEM --key PEM
//!         --authority HOST:PORT [--mib N] [--timeout SECONDS]
//! ```
//!
//! Prints one JSON line: `sent` and `received` (echoed bytes, the `seen` line apart),
//! `seconds` (from the relay's `200` to the end of its stream), `mbit_s_each_way`,
//! `source_seen` (the source the target saw) and `connect_ms` (QUIC handshake + CONNECT).
//! Exits 1 with the reason on stderr when the relay refuses, the echo differs or ends short,
//! or the timeout passes.
//!
//! Why not the aioquic client (`relay/tests/h3_client.py bulk`): it tops out near 40–50
//! Mbit/s by itself. Why HTTP/3 framed by hand on quinn, as `relay/examples/relay_bench.rs`
//! does: the h3 crate's client always sends `:scheme` and `:path`, which a classic CONNECT
//! must not carry and the relay refuses.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;

/// The echo is checked against a pattern of this period (a prime, so that it never lines up
/// with frame or packet sizes).
const PERIOD: usize = 65_521;
/// Payload handed to quinn per write (a slice of the pattern, never copied).
const PIECE: usize = 64 * 1024;
/// Payload per HTTP/3 DATA frame.
const FRAME: u64 = 1 << 20;
/// The largest HEADERS frame we accept from the relay.
const MAX_HEADERS: u64 = 16 * 1024;
/// The `seen …` line is short; a longer one means the target is not the lab server.
const MAX_LINE: usize = 512;
/// H3_NO_ERROR (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;

struct Args {
    relay: SocketAddr,
    server_name: String,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    authority: String,
    bytes: u64,
    timeout: Duration,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let (mut relay, mut server_name, mut ca, mut cert, mut key, mut authority) =
        (None, None, None, None, None, None);
    let (mut mib, mut timeout) = (64u64, 60u64);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--relay" => {
                relay = Some(
                    value
                        .parse::<SocketAddr>()
                        .map_err(|e| format!("--relay {value}: {e} (ADDR:PORT)"))?,
                )
            }
            "--server-name" => server_name = Some(value.clone()),
            "--ca" => ca = Some(PathBuf::from(value)),
            "--cert" => cert = Some(PathBuf::from(value)),
            "--key" => key = Some(PathBuf::from(value)),
            "--authority" => authority = Some(value.clone()),
            "--mib" => mib = value.parse().map_err(|e| format!("--mib {value}: {e}"))?,
            "--timeout" => {
                timeout = value
                    .parse()
                    .map_err(|e| format!("--timeout {value}: {e}"))?
            }
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let authority: String = authority.ok_or("--authority HOST:PORT is required")?;
    if authority.is_empty() || authority.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(format!("--authority {authority:?}: not a HOST:PORT"));
    }
    Ok(Args {
        relay: relay.ok_or("--relay ADDR:PORT is required")?,
        server_name: server_name.ok_or("--server-name is required")?,
        ca: ca.ok_or("--ca PEM is required")?,
        cert: cert.ok_or("--cert PEM is required")?,
        key: key.ok_or("--key PEM is required")?,
        authority,
        bytes: mib
            .checked_mul(1 << 20)
            .ok_or(format!("--mib {mib}: too large"))?,
        timeout: Duration::from_secs(timeout),
    })
}

// ---- wire encodings ----

/// A QUIC variable-length integer (RFC 9000 §16).
fn put_varint(v: u64, out: &mut Vec<u8>) {
    if v < 1 << 6 {
        out.push(v as u8);
    } else if v < 1 << 14 {
        out.extend_from_slice(&(0x4000 | v as u16).to_be_bytes());
    } else if v < 1 << 30 {
        out.extend_from_slice(&(0x8000_0000 | v as u32).to_be_bytes());
    } else {
        // callers pass frame types and lengths far below 2^62
        out.extend_from_slice(&(0xc000_0000_0000_0000 | v).to_be_bytes());
    }
}

/// Decodes a QUIC variable-length integer: (value, octets used), `None` when incomplete.
fn get_varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let raw = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for byte in &raw[1..] {
        v = (v << 8) | u64::from(*byte);
    }
    Some((v, len))
}

/// A QPACK prefixed integer (RFC 9204 §4.1.1, the HPACK encoding of RFC 7541 §5.1): `first`
/// carries the bits above the `bits`-bit prefix.
fn put_prefixed(first: u8, bits: u32, mut v: u64, out: &mut Vec<u8>) {
    let max = (1u64 << bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push(0x80 | (v % 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// Decodes a QPACK prefixed integer: (value, octets used).
fn get_prefixed(b: &[u8], bits: u32) -> Option<(u64, usize)> {
    let max = (1u64 << bits) - 1;
    let v = u64::from(*b.first()?) & max;
    if v < max {
        return Some((v, 1));
    }
    let mut v = v;
    for (i, byte) in b.iter().enumerate().skip(1) {
        let shift = 7 * (i as u32 - 1);
        if shift > 56 {
            return None;
        }
        v = v.checked_add(u64::from(byte & 0x7f) << shift)?;
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// The HEADERS frame of a classic CONNECT (RFC 9114 §4.4), QPACK-encoded without the
/// dynamic table (RFC 9204 §4.5): required insert count 0, delta base 0, `:method CONNECT`
/// as an indexed static line (entry 15), `:authority` as a literal with a static name
/// reference (entry 0), no Huffman coding.
fn connect_headers(authority: &str) -> Vec<u8> {
    let mut block = vec![0x00, 0x00];
    put_prefixed(0b1100_0000, 6, 15, &mut block);
    put_prefixed(0b0101_0000, 4, 0, &mut block);
    put_prefixed(0x00, 7, authority.len() as u64, &mut block);
    block.extend_from_slice(authority.as_bytes());
    let mut frame = Vec::with_capacity(block.len() + 4);
    put_varint(0x01, &mut frame);
    put_varint(block.len() as u64, &mut frame);
    frame.extend_from_slice(&block);
    frame
}

/// The `:status` entries of the QPACK static table (RFC 9204 Appendix A).
fn static_status(index: u64) -> Option<u16> {
    Some(match index {
        24 => 103,
        25 => 200,
        26 => 304,
        27 => 404,
        28 => 503,
        63 => 100,
        64 => 204,
        65 => 206,
        66 => 302,
        67 => 400,
        68 => 403,
        69 => 421,
        70 => 425,
        71 => 500,
        _ => return None,
    })
}

/// The `:status` of a response's field section. We never raised
/// SETTINGS_QPACK_MAX_TABLE_CAPACITY from 0, so the relay may not use the dynamic table
/// (RFC 9204 §3.2.3); a section that does is refused, as is a Huffman-coded status.
fn response_status(block: &[u8]) -> Result<u16, String> {
    let bad = || format!("unreadable response field section {block:02x?}");
    let (insert_count, a) = get_prefixed(block, 8).ok_or_else(bad)?;
    if insert_count != 0 {
        return Err(format!(
            "the relay used the QPACK dynamic table: {block:02x?}"
        ));
    }
    let (_, b) = get_prefixed(block.get(a..).ok_or_else(bad)?, 7).ok_or_else(bad)?;
    let mut i = a + b;
    while let Some(&first) = block.get(i) {
        let rest = &block[i..];
        if first & 0x80 != 0 {
            // indexed field line (§4.5.2), T bit 0x40
            let (index, n) = get_prefixed(rest, 6).ok_or_else(bad)?;
            if first & 0x40 == 0 {
                return Err(format!("dynamic table reference in {block:02x?}"));
            }
            if let Some(status) = static_status(index) {
                return Ok(status);
            }
            i += n;
        } else if first & 0xc0 == 0x40 {
            // literal with name reference (§4.5.4): N 0x20, T 0x10, 4-bit index
            let (index, n) = get_prefixed(rest, 4).ok_or_else(bad)?;
            if first & 0x10 == 0 {
                return Err(format!("dynamic table reference in {block:02x?}"));
            }
            let value_at = rest.get(n..).ok_or_else(bad)?;
            let huffman = value_at.first().ok_or_else(bad)? & 0x80 != 0;
            let (len, m) = get_prefixed(value_at, 7).ok_or_else(bad)?;
            let value = value_at.get(m..m + len as usize).ok_or_else(bad)?;
            if static_status(index).is_some() {
                if huffman {
                    return Err(format!("Huffman-coded :status in {block:02x?}"));
                }
                return std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad);
            }
            i += n + m + len as usize;
        } else if first & 0xe0 == 0x20 {
            // literal with literal name (§4.5.6): N 0x10, H 0x08, 3-bit name length
            let name_huffman = first & 0x08 != 0;
            let (name_len, n) = get_prefixed(rest, 3).ok_or_else(bad)?;
            let name = rest.get(n..n + name_len as usize).ok_or_else(bad)?;
            let value_at = rest.get(n + name_len as usize..).ok_or_else(bad)?;
            let huffman = value_at.first().ok_or_else(bad)? & 0x80 != 0;
            let (len, m) = get_prefixed(value_at, 7).ok_or_else(bad)?;
            let value = value_at.get(m..m + len as usize).ok_or_else(bad)?;
            if !name_huffman && name == b":status" {
                if huffman {
                    return Err(format!("Huffman-coded :status in {block:02x?}"));
                }
                return std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(bad);
            }
            i += n + name_len as usize + m + len as usize;
        } else {
            // post-base forms (§4.5.3, §4.5.5) always refer to the dynamic table
            return Err(format!("dynamic table reference in {block:02x?}"));
        }
    }
    Err(format!("no :status in {block:02x?}"))
}

// ---- the request stream ----

enum Item {
    Headers(Vec<u8>),
    Data(Bytes),
    End,
}

/// HTTP/3 frames (RFC 9114 §7) read off a request stream; DATA payloads are handed on as the
/// chunks quinn delivered them, uncopied.
struct Frames {
    recv: quinn::RecvStream,
    pending: Bytes,
    data_left: u64,
}

impl Frames {
    /// Refills `pending`; `false` at the end of the stream.
    async fn fill(&mut self) -> Result<bool, String> {
        match self.recv.read_chunk(usize::MAX, true).await {
            Ok(Some(chunk)) => {
                self.pending = chunk.bytes;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(format!("reading the CONNECT stream: {e}")),
        }
    }

    async fn byte(&mut self) -> Result<Option<u8>, String> {
        while self.pending.is_empty() {
            if !self.fill().await? {
                return Ok(None);
            }
        }
        Ok(Some(self.pending.get_u8()))
    }

    /// A frame header (type, length), `None` at a clean end of the stream.
    async fn header(&mut self) -> Result<Option<(u64, u64)>, String> {
        let mut head = Vec::with_capacity(16);
        loop {
            if let Some((kind, a)) = get_varint(&head) {
                if let Some((len, _)) = get_varint(&head[a..]) {
                    return Ok(Some((kind, len)));
                }
            }
            match self.byte().await? {
                Some(b) => head.push(b),
                None if head.is_empty() => return Ok(None),
                None => return Err("the stream ended inside a frame header".into()),
            }
        }
    }

    /// `len` payload bytes, kept when `keep`.
    async fn payload(&mut self, mut len: u64, keep: bool) -> Result<Vec<u8>, String> {
        let mut kept = Vec::new();
        while len > 0 {
            if self.pending.is_empty() && !self.fill().await? {
                return Err("the stream ended inside a frame".into());
            }
            let n = (self.pending.len() as u64).min(len) as usize;
            if keep {
                kept.extend_from_slice(&self.pending[..n]);
            }
            self.pending.advance(n);
            len -= n as u64;
        }
        Ok(kept)
    }

    async fn next(&mut self) -> Result<Item, String> {
        loop {
            if self.data_left > 0 {
                if self.pending.is_empty() && !self.fill().await? {
                    return Err("the stream ended inside a DATA frame".into());
                }
                let n = (self.pending.len() as u64).min(self.data_left) as usize;
                self.data_left -= n as u64;
                return Ok(Item::Data(self.pending.split_to(n)));
            }
            let Some((kind, len)) = self.header().await? else {
                return Ok(Item::End);
            };
            match kind {
                0x00 => self.data_left = len,
                0x01 if len > MAX_HEADERS => {
                    return Err(format!("a {len}-byte HEADERS frame"));
                }
                0x01 => return Ok(Item::Headers(self.payload(len, true).await?)),
                // CANCEL_PUSH, SETTINGS, PUSH_PROMISE (we allowed no push), GOAWAY and
                // MAX_PUSH_ID do not belong on a request stream (RFC 9114 §7.2)
                0x03 | 0x04 | 0x05 | 0x07 | 0x0d => {
                    return Err(format!("frame type {kind:#x} on the request stream"));
                }
                // unknown and reserved types are ignored (RFC 9114 §9)
                _ => {
                    self.payload(len, false).await?;
                }
            }
        }
    }
}

/// The byte pattern sent, `PERIOD` long and repeated, stored with `PIECE` extra bytes so that
/// any piece starting anywhere in the period is one contiguous slice.
fn pattern() -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let base: Vec<u8> = (0..PERIOD)
        .map(|_| {
            // xorshift64 (Marsaglia 2003)
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    let mut out = Vec::with_capacity(PERIOD + PIECE);
    out.extend_from_slice(&base);
    out.extend(base.iter().cycle().take(PIECE));
    Bytes::from(out)
}

/// Streams `total` bytes of the pattern in DATA frames, then ends the stream.
async fn send_all(mut send: quinn::SendStream, pattern: Bytes, total: u64) -> Result<(), String> {
    let failed = |e: quinn::WriteError| format!("sending: {e}");
    let mut sent = 0u64;
    while sent < total {
        let frame = FRAME.min(total - sent);
        let mut head = Vec::with_capacity(9);
        put_varint(0x00, &mut head);
        put_varint(frame, &mut head);
        send.write_all(&head).await.map_err(failed)?;
        let end = sent + frame;
        while sent < end {
            let n = (PIECE as u64).min(end - sent) as usize;
            let at = (sent % PERIOD as u64) as usize;
            send.write_chunk(pattern.slice(at..at + n))
                .await
                .map_err(failed)?;
            sent += n as u64;
        }
    }
    send.finish().map_err(|e| format!("ending the stream: {e}"))
}

/// Reads the `seen …` line and the echo up to the end of the stream, checking every byte;
/// returns (the source the target saw, echoed bytes).
async fn receive(
    frames: &mut Frames,
    pattern: &Bytes,
    total: u64,
) -> Result<(String, u64), String> {
    let mut line = Vec::new();
    let mut line_done = false;
    let mut echoed = 0u64;
    loop {
        let mut data = match frames.next().await? {
            Item::Data(d) => d,
            // trailers (RFC 9114 §4.1) carry nothing we need
            Item::Headers(_) => continue,
            Item::End => break,
        };
        if !line_done {
            match data.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    line.extend_from_slice(&data[..at]);
                    data.advance(at + 1);
                    line_done = true;
                }
                None => {
                    line.extend_from_slice(&data);
                    data.clear();
                }
            }
            if line.len() > MAX_LINE {
                return Err(format!(
                    "the target's first line runs past {MAX_LINE} bytes: not the lab server"
                ));
            }
        }
        while !data.is_empty() {
            let n = data.len().min(PIECE);
            let at = (echoed % PERIOD as u64) as usize;
            if data[..n] != pattern[at..at + n] {
                let off = (0..n).find(|&i| data[i] != pattern[at + i]).unwrap_or(0);
                return Err(format!("the echo differs at byte {}", echoed + off as u64));
            }
            echoed += n as u64;
            data.advance(n);
            if echoed > total {
                return Err(format!("{echoed} bytes echoed for {total} sent"));
            }
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    // `seen SOURCE:PORT at LISTEN`
    let source = match line.split(' ').collect::<Vec<_>>()[..] {
        ["seen", source, "at", _] => source.to_string(),
        _ => return Err(format!("the target answered {line:?}, not `seen … at …`")),
    };
    if echoed < total {
        return Err(format!(
            "the stream ended after {echoed} bytes echoed of {total} sent"
        ));
    }
    Ok((source, echoed))
}

fn client_config(args: &Args) -> Result<quinn::ClientConfig, String> {
    let read = |what: &str, path: &PathBuf, e: &dyn std::fmt::Display| {
        format!("{what} {}: {e}", path.display())
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).map_err(|e| read("--ca", &args.ca, &e))? {
        roots
            .add(cert.map_err(|e| read("--ca", &args.ca, &e))?)
            .map_err(|e| read("--ca", &args.ca, &e))?;
    }
    let chain = CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| read("--cert", &args.cert, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read("--cert", &args.cert, &e))?;
    if chain.is_empty() {
        return Err(format!("--cert {}: no certificate", args.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| read("--key", &args.key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("--cert/--key: {e}"))?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| format!("QUIC TLS: {e}"))?;
    let mut transport = quinn::TransportConfig::default();
    // quinn's default stream window (1.25 MB) is sized for 100 Mbit/s at 100 ms; give the
    // echo room to run well above that when the relay's queues stretch the RTT.
    transport.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    transport.receive_window(quinn::VarInt::from_u32(32 << 20));
    transport.send_window(32 << 20);
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let config = client_config(args)?;
    let bind: SocketAddr = if args.relay.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| format!("UDP socket: {e}"))?;
    let started = Instant::now();
    let connection = endpoint
        .connect_with(config, args.relay, &args.server_name)
        .map_err(|e| format!("connecting to {}: {e}", args.relay))?
        .await
        .map_err(|e| format!("connecting to {}: {e}", args.relay))?;
    let result = transfer(&connection, args, started).await;
    connection.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"");
    // let the CONNECTION_CLOSE leave
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

async fn transfer(
    connection: &quinn::Connection,
    args: &Args,
    started: Instant,
) -> Result<serde_json::Value, String> {
    // our control stream with empty SETTINGS (RFC 9114 §6.2.1, §7.2.4), open to the end
    let mut control = connection
        .open_uni()
        .await
        .map_err(|e| format!("control stream: {e}"))?;
    control
        .write_all(&[0x00, 0x04, 0x00])
        .await
        .map_err(|e| format!("control stream: {e}"))?;

    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(|e| format!("request stream: {e}"))?;
    send.write_all(&connect_headers(&args.authority))
        .await
        .map_err(|e| format!("sending the CONNECT: {e}"))?;
    let mut frames = Frames {
        recv,
        pending: Bytes::new(),
        data_left: 0,
    };
    let status = match frames.next().await? {
        Item::Headers(block) => response_status(&block)?,
        Item::Data(_) => return Err("DATA before the response".into()),
        Item::End => return Err("the relay ended the stream without a response".into()),
    };
    if status != 200 {
        return Err(format!(
            "the relay answered {status} to CONNECT {}",
            args.authority
        ));
    }
    let connect_ms = started.elapsed().as_secs_f64() * 1000.0;

    let pattern = pattern();
    let t0 = Instant::now();
    let sender = tokio::spawn(send_all(send, pattern.clone(), args.bytes));
    let (source_seen, received) = match receive(&mut frames, &pattern, args.bytes).await {
        Ok(r) => r,
        Err(e) => {
            sender.abort();
            return Err(e);
        }
    };
    let seconds = t0.elapsed().as_secs_f64();
    sender.await.map_err(|e| format!("the sender: {e}"))??;
    drop(control);
    let mbit = args.bytes as f64 * 8.0 / seconds / 1e6;
    Ok(json!({
        "sent": args.bytes,
        "received": received,
        "seconds": (seconds * 1000.0).round() / 1000.0,
        "mbit_s_each_way": (mbit * 10.0).round() / 10.0,
        "source_seen": source_seen,
        "connect_ms": (connect_ms * 100.0).round() / 100.0,
    }))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("h3-bulk: {e}");
            return ExitCode::from(2);
        }
    };
    match tokio::time::timeout(args.timeout, run(&args)).await {
        Ok(Ok(v)) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("h3-bulk: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("h3-bulk: no result within {} s", args.timeout.as_secs());
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn integers_round_trip() {
        for v in [
            0u64,
            1,
            63,
            64,
            16_383,
            16_384,
            (1 << 30) - 1,
            1 << 30,
            1 << 40,
        ] {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            assert_eq!(get_varint(&out), Some((v, out.len())));
            assert_eq!(get_varint(&out[..out.len() - 1]), None);
        }
        for bits in [3, 4, 6, 7, 8] {
            for v in [
                0u64,
                1,
                (1 << bits) - 2,
                (1 << bits) - 1,
                1 << bits,
                300,
                70_000,
            ] {
                let mut out = Vec::new();
                put_prefixed(0, bits, v, &mut out);
                assert_eq!(get_prefixed(&out, bits), Some((v, out.len())), "{v} {bits}");
            }
        }
        // RFC 7541 C.1.2: 1337 with a 5-bit prefix
        let mut out = Vec::new();
        put_prefixed(0, 5, 1337, &mut out);
        assert_eq!(out, [31, 154, 10]);
    }

    #[test]
    fn the_connect_carries_method_and_authority_only() {
        let frame = connect_headers("app.corp.lab:80");
        assert_eq!(&frame[..2], &[0x01, 20]);
        assert_eq!(&frame[2..7], &[0x00, 0x00, 0xcf, 0x50, 15]);
        assert_eq!(&frame[7..], b"app.corp.lab:80");
        // a long authority takes a multi-octet length
        let long = "a".repeat(200) + ":80";
        let frame = connect_headers(&long);
        let (_, a) = get_varint(&frame).unwrap();
        let (len, b) = get_varint(&frame[a..]).unwrap();
        let block = &frame[a + b..];
        assert_eq!(block.len() as u64, len);
        assert_eq!(get_prefixed(&block[4..], 7), Some((203, 2)));
    }

    #[test]
    fn response_status_is_read_or_refused() {
        assert_eq!(response_status(&[0, 0, 0xd9]), Ok(200));
        // a header before it (indexed `content-length: 0`, entry 4), then 403 (entry 68)
        let mut block = vec![0, 0, 0xc4];
        put_prefixed(0xc0, 6, 68, &mut block);
        assert_eq!(response_status(&block), Ok(403));
        // literal with static name reference (`:status`, entry 24) and value "502"
        assert_eq!(
            response_status(&[0, 0, 0x5f, 0x09, 3, b'5', b'0', b'2']),
            Ok(502)
        );
        // literal name
        let mut lit = vec![0, 0, 0x27, 0x00];
        lit.extend_from_slice(b":status");
        lit.extend_from_slice(&[3, b'4', b'2', b'9']);
        assert_eq!(response_status(&lit), Ok(429));
        assert!(response_status(&[1, 0, 0xd9]).is_err()); // dynamic table
        assert!(response_status(&[0, 0, 0x99]).is_err()); // dynamic entry
        assert!(response_status(&[0, 0, 0x5f, 0x09, 0x83, 1, 2, 3]).is_err()); // Huffman
        assert!(response_status(&[0, 0, 0x5f, 0x09, 9, b'5']).is_err()); // truncated
        assert!(response_status(&[0, 0]).is_err());
        assert!(response_status(&[]).is_err());
    }

    #[test]
    fn the_pattern_repeats_with_its_period() {
        let p = pattern();
        assert_eq!(p.len(), PERIOD + PIECE);
        assert_eq!(&p[..PIECE], &p[PERIOD..]);
        assert!(p[..PERIOD].windows(2).any(|w| w[0] != w[1]));
    }

    #[test]
    fn arguments_are_checked() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let ok = s(&[
            "--relay",
            "198.51.100.1:443",
            "--server-name",
            "r",
            "--ca",
            "a",
            "--cert",
            "b",
            "--key",
            "c",
            "--authority",
            "app:80",
            "--mib",
            "2",
        ]);
        let args = parse_args(&ok).unwrap();
        assert_eq!(args.bytes, 2 << 20);
        assert!(parse_args(&ok[..ok.len() - 1]).is_err());
        assert!(parse_args(&s(&["--relay", "nowhere"])).is_err());
        assert!(parse_args(&s(&["--bogus", "1"])).is_err());
        let mut spaced = ok.clone();
        spaced[11] = "app :80".into();
        assert!(parse_args(&spaced).is_err());
    }
}
