//! ESP directly over IP (protocol 50, RFC 4303 §3.1) for child SAs without UDP encapsulation:
//! RFC 7296 §2.23 encapsulates in UDP only when a NAT is detected (or encapsulation is forced).
//!
//! One raw socket per tunnel, bound to our address and connected to the peer's, so the kernel
//! hands it only ESP between the two (raw sockets otherwise see every ESP packet of the host).
//! An IPv4 raw socket delivers the IP header in front of the ESP packet; it is stripped here.
//! An IPv6 raw socket delivers the payload only (RFC 3542 §3).
//!
//! The socket is a `socket2` raw socket turned into a `std::net::UdpSocket` (a plain
//! ownership move of the descriptor, no `unsafe`) so that tokio can drive it:
//! `send`/`recv` are the same system calls for both kinds of datagram socket, and a port in
//! a raw socket's address is ignored by the kernel.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;

/// IP protocol number of ESP (IANA; RFC 4303 §2).
pub const IPPROTO_ESP: i32 = 50;

/// A raw ESP socket between our address and the peer's. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RawEsp {
    socket: Arc<UdpSocket>,
    v4: bool,
}

impl RawEsp {
    /// Opens the socket (needs CAP_NET_RAW).
    pub fn open(local: IpAddr, remote: IpAddr) -> io::Result<RawEsp> {
        let domain = match local {
            IpAddr::V4(_) => Domain::IPV4,
            IpAddr::V6(_) => Domain::IPV6,
        };
        let socket = Socket::new(domain, Type::RAW, Some(Protocol::from(IPPROTO_ESP)))?;
        socket.bind(&SockAddr::from(SocketAddr::new(local, 0)))?;
        socket.connect(&SockAddr::from(SocketAddr::new(remote, 0)))?;
        socket.set_nonblocking(true)?;
        let std: std::net::UdpSocket = socket.into();
        Ok(RawEsp {
            socket: Arc::new(UdpSocket::from_std(std)?),
            v4: local.is_ipv4(),
        })
    }

    /// Sends one ESP packet (from its SPI on) to the peer.
    pub async fn send(&self, esp: &[u8]) -> io::Result<()> {
        self.socket.send(esp).await.map(|_| ())
    }

    /// Receives one packet into `buf` and returns where its ESP part (SPI onwards) is.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<std::ops::Range<usize>> {
        loop {
            let n = self.socket.recv(buf).await?;
            if let Some(at) = self.esp_part(buf, n) {
                return Ok(at);
            }
            // not an IPv4 packet we can read: drop it and wait for the next
        }
    }

    /// As [`Self::recv`] if a packet is waiting; `None` if none is.
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<Option<std::ops::Range<usize>>> {
        loop {
            let n = match self.socket.try_recv(buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            };
            if let Some(at) = self.esp_part(buf, n) {
                return Ok(Some(at));
            }
        }
    }

    fn esp_part(&self, buf: &[u8], n: usize) -> Option<std::ops::Range<usize>> {
        let packet = buf.get(..n)?;
        if self.v4 {
            ipv4_payload(packet)
        } else {
            Some(0..n)
        }
    }
}

/// Where the payload of an IPv4 packet is: after the header of IHL 32-bit words (RFC 791
/// §3.1), up to the total length.
pub fn ipv4_payload(packet: &[u8]) -> Option<std::ops::Range<usize>> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header = usize::from(first & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    // a total length that disagrees with what arrived is not followed past the buffer
    let end = if total >= header && total <= packet.len() {
        total
    } else {
        packet.len()
    };
    (header >= 20 && header <= end).then_some(header..end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_stripped_by_its_length() {
        let mut p = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 50, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        p.extend_from_slice(&[0xaa; 8]);
        assert_eq!(ipv4_payload(&p), Some(20..28));
        // with options (IHL 6)
        let mut q = vec![0x46, 0, 0, 32];
        q.extend_from_slice(&[0; 20]);
        q.extend_from_slice(&[0xbb; 8]);
        assert_eq!(ipv4_payload(&q), Some(24..32));
        // trailing bytes beyond the total length are cut off
        let mut r = p.clone();
        r.extend_from_slice(&[0xcc; 4]);
        assert_eq!(ipv4_payload(&r), Some(20..28));
    }

    #[test]
    fn bad_ipv4_headers_are_refused_without_panic() {
        assert_eq!(ipv4_payload(&[]), None);
        assert_eq!(ipv4_payload(&[0x45]), None);
        assert_eq!(ipv4_payload(&[0x60, 0, 0, 40]), None);
        // IHL below the minimum of 5 words
        assert_eq!(ipv4_payload(&[0x44, 0, 0, 20, 0, 0, 0, 0]), None);
        // header longer than the packet
        assert_eq!(ipv4_payload(&[0x4f, 0, 0, 60, 0, 0, 0, 0]), None);
    }
}
