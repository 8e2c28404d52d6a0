//! Just enough of the decrypted inner IPv4 / IPv6 packet to check it against the Child SA's
//! traffic selectors: RFC 4301 §5.2 requires the receiver to drop tunnelled packets that
//! do not match the SA's selectors, or a peer could inject traffic it never negotiated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{EspError, NextHeader};
use crate::wire::{be16, byte, TrafficSelector};

const TCP: u8 = 6;
const UDP: u8 = 17;
const DCCP: u8 = 33;
const SCTP: u8 = 132;
const UDP_LITE: u8 = 136;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const NO_NEXT: u8 = 59;

/// What stands in for ports (RFC 4301 §4.4.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ports {
    /// TCP, UDP, UDP-Lite, SCTP, DCCP.
    Transport { src: u16, dst: u16 },
    /// ICMP / ICMPv6: RFC 7296 §3.13.1 matches Type (high octet) and Code (low octet) as a
    /// single port number.
    Icmp { kind: u8, code: u8 },
    /// No ports: another protocol, or a non-initial fragment (RFC 4301 §7); only selectors for
    /// any port or OPAQUE ports admit these.
    Opaque,
}

/// The fields of an inner packet the selectors look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InnerPacket {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The upper-layer protocol, after IPv6 extension headers.
    pub protocol: u8,
    pub ports: Ports,
    /// The IP packet's own length; octets after it are TFC padding (RFC 4303 §2.7).
    pub len: usize,
}

fn truncated(what: &'static str) -> EspError {
    EspError::Inner(what)
}

/// Ports of an upper-layer header at `data[at..end]`; `first_fragment` is false for a
/// non-initial fragment.
fn ports(
    data: &[u8],
    at: usize,
    end: usize,
    protocol: u8,
    first_fragment: bool,
) -> Result<Ports, EspError> {
    if !first_fragment {
        return Ok(Ports::Opaque);
    }
    let need = |n: usize| {
        if at.checked_add(n).is_some_and(|e| e <= end) {
            Ok(())
        } else {
            // A first fragment too short for its ports could slip past a port selector
            // (RFC 1858); refuse it.
            Err(truncated("transport header too short for its ports"))
        }
    };
    Ok(match protocol {
        TCP | UDP | DCCP | SCTP | UDP_LITE => {
            need(4)?;
            Ports::Transport {
                src: be16(data, at),
                dst: be16(data, at + 2),
            }
        }
        ICMP | ICMPV6 => {
            need(2)?;
            Ports::Icmp {
                kind: byte(data, at),
                code: byte(data, at + 1),
            }
        }
        _ => Ports::Opaque,
    })
}

impl InnerPacket {
    /// Parses an IPv4 (RFC 791) or IPv6 (RFC 8200) packet, by its version nibble.
    pub fn parse(data: &[u8]) -> Result<InnerPacket, EspError> {
        match data.first().map(|b| b >> 4) {
            Some(4) => Self::parse_v4(data),
            Some(6) => Self::parse_v6(data),
            Some(_) => Err(EspError::Inner("not an IPv4 or IPv6 packet")),
            None => Err(truncated("empty packet")),
        }
    }

    /// Parses the payload of an ESP packet whose Next Header is `next_header`: tunnel mode
    /// carries IPv4 (4) or IPv6 (41), and the version must agree (RFC 4303 §2.6).
    pub fn parse_with(next_header: NextHeader, data: &[u8]) -> Result<InnerPacket, EspError> {
        let expected = match next_header {
            NextHeader::IPV4 => 4,
            NextHeader::IPV6 => 6,
            NextHeader::NO_NEXT => return Err(EspError::Inner("dummy packet (Next Header 59)")),
            _ => {
                return Err(EspError::Inner(
                    "Next Header is neither IPv4 nor IPv6 (tunnel mode)",
                ))
            }
        };
        let packet = Self::parse(data)?;
        let version = if packet.src.is_ipv4() { 4 } else { 6 };
        if version != expected {
            return Err(EspError::NextHeaderMismatch {
                next_header: next_header.0,
                version,
            });
        }
        Ok(packet)
    }

    fn parse_v4(data: &[u8]) -> Result<InnerPacket, EspError> {
        if data.len() < 20 {
            return Err(truncated("IPv4 header truncated"));
        }
        let header_len = usize::from(byte(data, 0) & 0x0f) * 4;
        let total = usize::from(be16(data, 2));
        if header_len < 20 || total < header_len || total > data.len() {
            return Err(EspError::Inner(
                "IPv4 header or total length is inconsistent",
            ));
        }
        let fragment_offset = be16(data, 6) & 0x1fff;
        let protocol = byte(data, 9);
        let addr = |at: usize| {
            Ipv4Addr::new(
                byte(data, at),
                byte(data, at + 1),
                byte(data, at + 2),
                byte(data, at + 3),
            )
        };
        Ok(InnerPacket {
            src: IpAddr::V4(addr(12)),
            dst: IpAddr::V4(addr(16)),
            protocol,
            ports: ports(data, header_len, total, protocol, fragment_offset == 0)?,
            len: total,
        })
    }

    fn parse_v6(data: &[u8]) -> Result<InnerPacket, EspError> {
        if data.len() < 40 {
            return Err(truncated("IPv6 header truncated"));
        }
        let total = 40 + usize::from(be16(data, 4));
        if total > data.len() {
            return Err(EspError::Inner("IPv6 payload length exceeds the packet"));
        }
        let addr = |at: usize| {
            let mut octets = [0u8; 16];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = byte(data, at + i);
            }
            Ipv6Addr::from(octets)
        };
        // Walk the extension headers to the upper-layer protocol (RFC 8200 §4).
        let mut next = byte(data, 6);
        let mut at = 40;
        let mut first_fragment = true;
        for _ in 0..16 {
            let ext_len = match next {
                0 | 43 | 60 => (usize::from(byte(data, at + 1)) + 1) * 8,
                51 => (usize::from(byte(data, at + 1)) + 2) * 4, // AH, RFC 4302 §2.2
                44 => {
                    // Fragment header: 8 octets; offset in the high 13 bits of octets 2-3.
                    if at + 8 > total {
                        return Err(truncated("IPv6 fragment header truncated"));
                    }
                    first_fragment = be16(data, at + 2) >> 3 == 0;
                    8
                }
                _ => break,
            };
            if at + 2 > total || at + ext_len > total {
                return Err(truncated("IPv6 extension header truncated"));
            }
            next = byte(data, at);
            at += ext_len;
            if !first_fragment {
                break;
            }
        }
        if matches!(next, 0 | 43 | 60 | 51 | 44) && first_fragment {
            return Err(EspError::Inner("too many IPv6 extension headers"));
        }
        let ports = if next == NO_NEXT {
            Ports::Opaque
        } else {
            ports(data, at, total, next, first_fragment)?
        };
        Ok(InnerPacket {
            src: IpAddr::V6(addr(8)),
            dst: IpAddr::V6(addr(24)),
            protocol: next,
            ports,
            len: total,
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
}

fn port_admitted(ts: &TrafficSelector, ports: Ports, side: Side) -> bool {
    if ts.any_port() {
        return true;
    }
    let in_range = |p: u16| ts.start_port <= p && p <= ts.end_port;
    match ports {
        Ports::Transport { src, dst } => match side {
            Side::Src => in_range(src),
            Side::Dst => in_range(dst),
        },
        // The ICMP Type/Code may be negotiated on either side; OPAQUE on the other admits it.
        Ports::Icmp { kind, code } => {
            ts.opaque_ports() || in_range(u16::from(kind) << 8 | u16::from(code))
        }
        Ports::Opaque => ts.opaque_ports(),
    }
}

fn admitted(ts: &TrafficSelector, addr: IpAddr, packet: &InnerPacket, side: Side) -> bool {
    ts.addresses.contains(addr)
        && (ts.protocol == 0 || ts.protocol == packet.protocol)
        && port_admitted(ts, packet.ports, side)
}

/// True if `packet`'s source matches one of `src_selectors` and its destination one of
/// `dst_selectors` (RFC 7296 §2.9; RFC 4301 §5.2). For a packet received from the peer these
/// are the peer's and our traffic selectors; for one we send, ours and the peer's.
pub fn within(
    src_selectors: &[TrafficSelector],
    dst_selectors: &[TrafficSelector],
    packet: &InnerPacket,
) -> bool {
    src_selectors
        .iter()
        .any(|ts| admitted(ts, packet.src, packet, Side::Src))
        && dst_selectors
            .iter()
            .any(|ts| admitted(ts, packet.dst, packet, Side::Dst))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::AddressRange;

    pub(crate) fn ipv4(protocol: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8], frag: u16) -> Vec<u8> {
        let total = (20 + l4.len()) as u16;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        p.extend_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&[64, protocol, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(l4);
        p
    }

    pub(crate) fn ipv6(next: u8, src: Ipv6Addr, dst: Ipv6Addr, rest: &[u8]) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(rest.len() as u16).to_be_bytes());
        p.extend_from_slice(&[next, 64]);
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(rest);
        p
    }

    fn a6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    const UDP_53: [u8; 8] = [0x30, 0x39, 0, 53, 0, 8, 0, 0];

    pub(crate) fn sample_packets() -> Vec<Vec<u8>> {
        let hop_by_hop_then_fragment = {
            let mut rest = vec![44, 0, 1, 4, 0, 0, 0, 0]; // hop-by-hop (8 octets) → fragment
            rest.extend_from_slice(&[UDP, 0, 0, 1, 0, 0, 0, 7]); // fragment, offset 0, M
            rest.extend_from_slice(&UDP_53);
            rest
        };
        vec![
            ipv4(
                TCP,
                [10, 0, 0, 1],
                [192, 0, 2, 7],
                &[0x04, 0xd2, 0x01, 0xbb, 0, 0, 0, 0],
                0,
            ),
            ipv4(UDP, [10, 0, 0, 1], [192, 0, 2, 53], &UDP_53, 0),
            ipv4(
                ICMP,
                [10, 0, 0, 1],
                [192, 0, 2, 7],
                &[8, 0, 0, 0, 0, 1, 0, 1],
                0,
            ),
            ipv4(UDP, [10, 0, 0, 1], [192, 0, 2, 53], &[1, 2, 3], 0x0010),
            ipv6(UDP, a6("2001:db8::1"), a6("2001:db8:1::53"), &UDP_53),
            ipv6(
                0,
                a6("2001:db8::1"),
                a6("2001:db8:1::53"),
                &hop_by_hop_then_fragment,
            ),
            ipv6(
                ICMPV6,
                a6("2001:db8::1"),
                a6("2001:db8:1::1"),
                &[128, 0, 0, 0],
            ),
        ]
    }

    #[test]
    fn parses_v4_and_v6() {
        let p = sample_packets();
        let tcp = InnerPacket::parse(&p[0]).unwrap();
        assert_eq!(tcp.src, IpAddr::from([10, 0, 0, 1]));
        assert_eq!(tcp.dst, IpAddr::from([192, 0, 2, 7]));
        assert_eq!(tcp.protocol, TCP);
        assert_eq!(
            tcp.ports,
            Ports::Transport {
                src: 1234,
                dst: 443
            }
        );
        assert_eq!(
            InnerPacket::parse(&p[2]).unwrap().ports,
            Ports::Icmp { kind: 8, code: 0 }
        );
        // Non-initial fragment: no ports.
        assert_eq!(InnerPacket::parse(&p[3]).unwrap().ports, Ports::Opaque);
        let v6 = InnerPacket::parse(&p[4]).unwrap();
        assert_eq!(
            v6.ports,
            Ports::Transport {
                src: 12345,
                dst: 53
            }
        );
        let ext = InnerPacket::parse(&p[5]).unwrap();
        assert_eq!(
            (ext.protocol, ext.ports),
            (
                UDP,
                Ports::Transport {
                    src: 12345,
                    dst: 53
                }
            )
        );
        assert_eq!(
            InnerPacket::parse(&p[6]).unwrap().ports,
            Ports::Icmp { kind: 128, code: 0 }
        );
        // TFC padding after the packet is allowed and excluded from `len`.
        let mut padded = p[1].clone();
        padded.extend_from_slice(&[0; 13]);
        assert_eq!(InnerPacket::parse(&padded).unwrap().len, p[1].len());
    }

    #[test]
    fn next_header_must_agree() {
        let p = sample_packets();
        assert!(InnerPacket::parse_with(NextHeader::IPV4, &p[0]).is_ok());
        assert!(InnerPacket::parse_with(NextHeader::IPV6, &p[4]).is_ok());
        assert_eq!(
            InnerPacket::parse_with(NextHeader::IPV6, &p[0]),
            Err(EspError::NextHeaderMismatch {
                next_header: 41,
                version: 4
            })
        );
        assert!(InnerPacket::parse_with(NextHeader::NO_NEXT, &p[0]).is_err());
        assert!(InnerPacket::parse_with(NextHeader(TCP), &p[0]).is_err());
    }

    #[test]
    fn truncations_and_lies_are_refused() {
        for packet in sample_packets() {
            for cut in 0..packet.len() {
                assert!(
                    InnerPacket::parse(&packet[..cut]).is_err(),
                    "cut {cut} of {packet:?}"
                );
            }
        }
        let mut bad_ihl = sample_packets()[0].clone();
        bad_ihl[0] = 0x44;
        assert!(InnerPacket::parse(&bad_ihl).is_err());
        let mut long = sample_packets()[0].clone();
        long[3] += 1;
        assert!(InnerPacket::parse(&long).is_err());
        // A first fragment that stops inside the UDP ports.
        let tiny = ipv4(UDP, [10, 0, 0, 1], [10, 0, 0, 2], &[0, 53], 0x2000);
        assert!(InnerPacket::parse(&tiny).is_err());
        // An endless chain of destination-options headers.
        let mut chain = Vec::new();
        for _ in 0..20 {
            chain.extend_from_slice(&[60, 0, 0, 0, 0, 0, 0, 0]);
        }
        let looped = ipv6(60, a6("::1"), a6("::2"), &chain);
        assert!(InnerPacket::parse(&looped).is_err());
        assert!(InnerPacket::parse(&[0x50; 40]).is_err());
    }

    fn ts(prefix: &str, len: u8, protocol: u8, ports: (u16, u16)) -> TrafficSelector {
        TrafficSelector {
            protocol,
            start_port: ports.0,
            end_port: ports.1,
            addresses: AddressRange::from_prefix(prefix.parse().unwrap(), len).unwrap(),
        }
    }

    #[test]
    fn selectors_admit_only_negotiated_traffic() {
        let p = sample_packets();
        let tcp = InnerPacket::parse(&p[0]).unwrap(); // 10.0.0.1:1234 → 192.0.2.7:443
        let local = [ts("10.0.0.0", 24, 0, (0, 65535))];
        let web = [ts("192.0.2.0", 24, TCP, (443, 443))];
        assert!(within(&local, &web, &tcp));
        assert!(!within(&web, &local, &tcp)); // reversed direction
        assert!(!within(
            &local,
            &[ts("192.0.2.0", 24, UDP, (443, 443))],
            &tcp
        ));
        assert!(!within(&local, &[ts("192.0.2.0", 24, TCP, (80, 80))], &tcp));
        assert!(!within(&[ts("10.0.1.0", 24, 0, (0, 65535))], &web, &tcp));
        assert!(!within(&[], &web, &tcp));
        // Several selectors: any one matching is enough.
        let two = [
            ts("198.51.100.0", 24, 0, (0, 65535)),
            ts("192.0.2.0", 24, 0, (0, 65535)),
        ];
        assert!(within(&local, &two, &tcp));
        // Families never cross.
        let v6 = InnerPacket::parse(&p[4]).unwrap();
        assert!(!within(&local, &two, &v6));
        assert!(within(
            &[ts("2001:db8::", 32, 0, (0, 65535))],
            &[ts("::", 0, UDP, (53, 53))],
            &v6
        ));
        // ICMP echo request (type 8, code 0) as port 0x0800.
        let ping = InnerPacket::parse(&p[2]).unwrap();
        assert!(within(
            &local,
            &[ts("192.0.2.0", 24, ICMP, (0x0800, 0x08ff))],
            &ping
        ));
        assert!(!within(
            &local,
            &[ts("192.0.2.0", 24, ICMP, (0x0000, 0x00ff))],
            &ping
        ));
        assert!(within(
            &[ts("10.0.0.0", 24, ICMP, (65535, 0))],
            &[ts("192.0.2.0", 24, ICMP, (0x0800, 0x0800))],
            &ping
        ));
        // A non-initial fragment passes any-port or OPAQUE selectors, not a port range.
        let frag = InnerPacket::parse(&p[3]).unwrap();
        assert!(within(
            &local,
            &[ts("192.0.2.0", 24, UDP, (0, 65535))],
            &frag
        ));
        assert!(within(
            &local,
            &[ts("192.0.2.0", 24, UDP, (65535, 0))],
            &frag
        ));
        assert!(!within(
            &local,
            &[ts("192.0.2.0", 24, UDP, (53, 53))],
            &frag
        ));
        // OPAQUE does not admit a packet whose ports are known.
        assert!(!within(
            &local,
            &[ts("192.0.2.0", 24, TCP, (65535, 0))],
            &tcp
        ));
    }
}
