//! A lab host's servers, run inside a namespace (the LAN's app server and resolver, the IdP):
//! they record the source address of everything they see as JSON lines, so a test can tell
//! which egress a flow took.
//!
//! lab-server --log FILE [--tcp ADDR:PORT]... [--dns ADDR:PORT --answer NAME=ADDR...]
//!
//! TCP: every connection is logged (`{"kind":"tcp","listen","source","port","at_ms"}`), then
//! answered with one line `seen SOURCE:PORT at LISTEN\n` and an echo of whatever arrives
//! until the client ends its side.
//! DNS: a minimal UDP responder (RFC 1035 §4.1) for A questions: a name in the `--answer`
//! table gets that address (TTL 5), any other name NXDOMAIN; each query is logged
//! (`{"kind":"dns","source","name","qtype","at_ms"}`). Malformed queries are logged and
//! dropped.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: bad arguments end it

use serde_json::json;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// The JSON-lines log, one line per event, flushed at once (tests read it while we run).
#[derive(Clone)]
struct Log(Arc<Mutex<std::fs::File>>);

impl Log {
    fn write(&self, v: serde_json::Value) {
        if let Ok(mut f) = self.0.lock() {
            let _ = writeln!(f, "{v}");
            let _ = f.flush();
        }
    }
}

fn serve_tcp(listener: TcpListener, log: Log) {
    let listen = listener.local_addr().unwrap();
    for stream in listener.incoming().flatten() {
        let log = log.clone();
        std::thread::spawn(move || connection(stream, listen, log));
    }
}

fn connection(mut s: TcpStream, listen: SocketAddr, log: Log) {
    let Ok(peer) = s.peer_addr() else { return };
    log.write(json!({
        "kind": "tcp",
        "listen": listen.to_string(),
        "source": peer.ip().to_string(),
        "port": peer.port(),
        "at_ms": now_ms(),
    }));
    if s.write_all(format!("seen {peer} at {listen}\n").as_bytes())
        .is_err()
    {
        return;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    // the client ended its side: end ours
    let _ = s.shutdown(std::net::Shutdown::Write);
}

/// A DNS question: name (lowercase, dotted), type, and where the question section ends.
fn question(q: &[u8]) -> Option<(String, u16, usize)> {
    // header: 12 octets; exactly one question (RFC 1035 §4.1.1)
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        // no compression pointers in a question we accept
        if len > 63 {
            return None;
        }
        let label = q.get(i..i + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let _class = q.get(i + 2..i + 4)?;
    Some((labels.join("."), qtype, i + 4))
}

fn answer(q: &[u8], end: usize, addr: Option<Ipv4Addr>, qtype: u16) -> Vec<u8> {
    let mut r = Vec::with_capacity(end + 16);
    r.extend_from_slice(&q[..2]); // ID
    let rd = q[2] & 0x01;
    r.push(0x80 | 0x04 | rd); // QR, AA, RD copied
    let rcode = if addr.is_some() { 0 } else { 3 }; // NOERROR / NXDOMAIN
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    let an = u16::from(addr.is_some() && qtype == 1);
    r.extend_from_slice(&an.to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
    r.extend_from_slice(&q[12..end]);
    if let (Some(a), 1) = (addr, qtype) {
        r.extend_from_slice(&[0xc0, 12]); // the question's name
        r.extend_from_slice(&[0, 1, 0, 1]); // A, IN
        r.extend_from_slice(&5u32.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&a.octets());
    }
    r
}

fn serve_dns(sock: UdpSocket, table: HashMap<String, Ipv4Addr>, log: Log) {
    let mut buf = [0u8; 1500];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf) else {
            continue;
        };
        let q = &buf[..n];
        match question(q) {
            Some((name, qtype, end)) => {
                log.write(json!({
                    "kind": "dns",
                    "source": from.ip().to_string(),
                    "name": name,
                    "qtype": qtype,
                    "at_ms": now_ms(),
                }));
                let addr = table.get(&name).copied();
                let _ = sock.send_to(&answer(q, end, addr, qtype), from);
            }
            None => log.write(json!({
                "kind": "dns-malformed",
                "source": from.ip().to_string(),
                "at_ms": now_ms(),
            })),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut log = None;
    let mut tcp = Vec::new();
    let mut dns = None;
    let mut table = HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{a} needs a value"));
        match a.as_str() {
            "--log" => log = Some(v.clone()),
            "--tcp" => tcp.push(v.parse::<SocketAddr>().expect("--tcp ADDR:PORT")),
            "--dns" => dns = Some(v.parse::<SocketAddr>().expect("--dns ADDR:PORT")),
            "--answer" => {
                let (name, addr) = v.split_once('=').expect("--answer NAME=ADDR");
                table.insert(
                    name.to_ascii_lowercase(),
                    addr.parse().expect("--answer NAME=IPV4"),
                );
            }
            _ => panic!("unknown argument {a}"),
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log.expect("--log FILE"))
        .unwrap();
    let log = Log(Arc::new(Mutex::new(file)));
    let mut threads = Vec::new();
    for addr in tcp {
        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        let log = log.clone();
        threads.push(std::thread::spawn(move || serve_tcp(l, log)));
    }
    if let Some(addr) = dns {
        let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        let log = log.clone();
        threads.push(std::thread::spawn(move || serve_dns(s, table, log)));
    }
    // bound and serving: tell whoever waits
    println!("ready");
    for t in threads {
        let _ = t.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_parsed_and_answered() {
        // ID 0x1234, RD, one question: app.corp.lab A IN
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in ["app", "corp", "lab"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1]);
        let (name, qtype, end) = question(&q).unwrap();
        assert_eq!((name.as_str(), qtype, end), ("app.corp.lab", 1, q.len()));
        let r = answer(&q, end, Some(Ipv4Addr::new(198, 19, 0, 10)), 1);
        assert_eq!(&r[..4], &[0x12, 0x34, 0x85, 0x80]);
        assert_eq!(&r[6..8], &[0, 1]);
        assert_eq!(&r[r.len() - 4..], &[198, 19, 0, 10]);
        let nx = answer(&q, end, None, 1);
        assert_eq!(nx[3] & 0x0f, 3);
        // truncated and compressed questions are refused
        assert!(question(&q[..q.len() - 3]).is_none());
        let mut bad = q.clone();
        bad[12] = 0xc0;
        assert!(question(&bad).is_none());
    }
}
