//! A tiny authoritative DNS server on UDP for the tests (RFC 1035 §4.1): it answers A queries
//! for the names it is given, NOERROR with no answer for other types of those names, NXDOMAIN
//! for every other name; it reports each query's name and source address.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::sync::mpsc;

/// One query the server saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub qtype: u16,
    pub from: SocketAddr,
}

/// Starts the server on 127.0.0.1 with `names` (lowercase, no trailing dot).
pub async fn dns_server(
    names: HashMap<String, Ipv4Addr>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Query>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let Some((name, qtype, end)) = question(&buf[..n]) else {
                continue;
            };
            let _ = tx.send(Query {
                name: name.clone(),
                qtype,
                from,
            });
            let answer = names.get(&name).filter(|_| qtype == 1);
            let mut reply = Vec::with_capacity(end + 16);
            reply.extend_from_slice(&buf[..2]); // ID
            let rcode = if names.contains_key(&name) { 0 } else { 3 };
            // QR, opcode 0, AA, RD copied; RA; RCODE.
            reply.push(0x84 | (buf[2] & 0x01));
            reply.push(0x80 | rcode);
            reply.extend_from_slice(&[0, 1]); // QDCOUNT
            reply.extend_from_slice(&[0, u8::from(answer.is_some())]); // ANCOUNT
            reply.extend_from_slice(&[0, 0, 0, 0]); // NSCOUNT, ARCOUNT
            reply.extend_from_slice(&buf[12..end]); // the question
            if let Some(ip) = answer {
                // A pointer to the question's name, type A, class IN, TTL 60, 4 bytes.
                reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                reply.extend_from_slice(&ip.octets());
            }
            let _ = socket.send_to(&reply, from).await;
        }
    });
    (address, rx)
}

/// The question's name, type, and where it ends.
fn question(message: &[u8]) -> Option<(String, u16, usize)> {
    if message.len() < 12 || message[5] != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(message.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*message.get(at)?, *message.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}
