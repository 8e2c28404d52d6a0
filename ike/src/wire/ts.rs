//! Traffic Selector payloads TSi / TSr (RFC 7296 §3.13).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{len16, Reader, WireError};

/// Traffic selector types (§3.13.1).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TsType(pub u8);

impl TsType {
    pub const IPV4_ADDR_RANGE: TsType = TsType(7);
    pub const IPV6_ADDR_RANGE: TsType = TsType(8);
}

impl fmt::Debug for TsType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            7 => f.write_str("TS_IPV4_ADDR_RANGE"),
            8 => f.write_str("TS_IPV6_ADDR_RANGE"),
            n => write!(f, "TsType({n})"),
        }
    }
}

/// An inclusive address range of one family; the family is part of the type so a selector
/// can never mix them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressRange {
    V4 { start: Ipv4Addr, end: Ipv4Addr },
    V6 { start: Ipv6Addr, end: Ipv6Addr },
}

impl AddressRange {
    /// The range covered by `addr/prefix_len`; `None` if the prefix is too long.
    pub fn from_prefix(addr: IpAddr, prefix_len: u8) -> Option<AddressRange> {
        match addr {
            IpAddr::V4(a) => {
                let host_bits = 32u32.checked_sub(u32::from(prefix_len))?;
                let mask = u32::MAX.checked_shl(host_bits).unwrap_or(0);
                let start = u32::from(a) & mask;
                Some(AddressRange::V4 {
                    start: start.into(),
                    end: (start | !mask).into(),
                })
            }
            IpAddr::V6(a) => {
                let host_bits = 128u32.checked_sub(u32::from(prefix_len))?;
                let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
                let start = u128::from(a) & mask;
                Some(AddressRange::V6 {
                    start: start.into(),
                    end: (start | !mask).into(),
                })
            }
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self, addr) {
            (AddressRange::V4 { start, end }, IpAddr::V4(a)) => *start <= a && a <= *end,
            (AddressRange::V6 { start, end }, IpAddr::V6(a)) => *start <= a && a <= *end,
            _ => false,
        }
    }
}

/// One address-range traffic selector (§3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol number; 0 means any.
    pub protocol: u8,
    /// Port range, inclusive. `0..=65535` is any port; start 65535 with end 0 is OPAQUE
    /// (§3.13.1: ports not available, e.g. in non-initial fragments). For ICMP and ICMPv6 the
    /// "port" is the Type in the high octet and the Code in the low one.
    pub start_port: u16,
    pub end_port: u16,
    pub addresses: AddressRange,
}

impl TrafficSelector {
    /// All protocols and ports within `addresses`.
    pub fn new(addresses: AddressRange) -> TrafficSelector {
        TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            addresses,
        }
    }

    /// Every port.
    pub fn any_port(&self) -> bool {
        self.start_port == 0 && self.end_port == u16::MAX
    }

    /// The OPAQUE port range (start > end, §3.13.1).
    pub fn opaque_ports(&self) -> bool {
        self.start_port > self.end_port
    }

    fn ts_type(&self) -> TsType {
        match self.addresses {
            AddressRange::V4 { .. } => TsType::IPV4_ADDR_RANGE,
            AddressRange::V6 { .. } => TsType::IPV6_ADDR_RANGE,
        }
    }
}

/// A selector of a type we do not implement (e.g. RFC 9478 security labels), kept whole so
/// the responder can decide what to answer (TS_UNACCEPTABLE, or ignoring it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnsupportedSelector {
    pub ts_type: TsType,
    /// The whole selector as received, its 4-octet header included.
    pub raw: Vec<u8>,
}

/// A TSi or TSr payload body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsPayload {
    pub selectors: Vec<TrafficSelector>,
    /// Emitted after `selectors`.
    pub unsupported: Vec<UnsupportedSelector>,
}

fn invalid(why: &'static str) -> WireError {
    WireError::Invalid {
        what: "traffic selector",
        why,
    }
}

impl TsPayload {
    pub fn new(selectors: Vec<TrafficSelector>) -> TsPayload {
        TsPayload {
            selectors,
            unsupported: Vec::new(),
        }
    }

    /// Parses the body: Number of TSs (at least one), three reserved octets, then the
    /// selectors, whose Selector Length must be 16 (IPv4) or 40 (IPv6) for the address-range
    /// types and must end exactly at the end of the payload (§3.13).
    pub fn parse(body: &[u8]) -> Result<TsPayload, WireError> {
        let mut r = Reader::new(body, "TS payload");
        let count = r.u8()?;
        let _reserved = r.take(3)?;
        if count == 0 {
            return Err(invalid("Number of TSs is zero"));
        }
        let mut payload = TsPayload::new(Vec::with_capacity(usize::from(count)));
        for _ in 0..count {
            let ts_type = TsType(r.u8()?);
            let protocol = r.u8()?;
            let len = usize::from(r.u16()?);
            let rest = r.take(len.checked_sub(4).ok_or(WireError::LengthTooSmall {
                what: "traffic selector",
                length: len,
                minimum: 4,
            })?)?;
            let mut s = Reader::new(rest, "traffic selector");
            let addresses = match (ts_type, len) {
                (TsType::IPV4_ADDR_RANGE, 16) | (TsType::IPV6_ADDR_RANGE, 40) => {
                    let start_port = s.u16()?;
                    let end_port = s.u16()?;
                    let addresses = if ts_type == TsType::IPV4_ADDR_RANGE {
                        AddressRange::V4 {
                            start: Ipv4Addr::from(s.array::<4>()?),
                            end: Ipv4Addr::from(s.array::<4>()?),
                        }
                    } else {
                        AddressRange::V6 {
                            start: Ipv6Addr::from(s.array::<16>()?),
                            end: Ipv6Addr::from(s.array::<16>()?),
                        }
                    };
                    (start_port, end_port, addresses)
                }
                (TsType::IPV4_ADDR_RANGE | TsType::IPV6_ADDR_RANGE, _) => {
                    return Err(invalid("Selector Length is not 16 (IPv4) or 40 (IPv6)"))
                }
                _ => {
                    let mut raw = vec![ts_type.0, protocol];
                    raw.extend_from_slice(&len16("traffic selector", len)?.to_be_bytes());
                    raw.extend_from_slice(rest);
                    payload
                        .unsupported
                        .push(UnsupportedSelector { ts_type, raw });
                    continue;
                }
            };
            let (start_port, end_port, addresses) = addresses;
            payload.selectors.push(TrafficSelector {
                protocol,
                start_port,
                end_port,
                addresses,
            });
        }
        if !r.is_empty() {
            return Err(invalid("octets after the last selector"));
        }
        Ok(payload)
    }

    pub fn emit(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let count = self.selectors.len() + self.unsupported.len();
        let count = u8::try_from(count)
            .ok()
            .filter(|c| *c > 0)
            .ok_or(WireError::Invalid {
                what: "TS payload",
                why: "needs 1 to 255 selectors",
            })?;
        out.extend_from_slice(&[count, 0, 0, 0]);
        for ts in &self.selectors {
            let len: u16 = match ts.addresses {
                AddressRange::V4 { .. } => 16,
                AddressRange::V6 { .. } => 40,
            };
            out.push(ts.ts_type().0);
            out.push(ts.protocol);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&ts.start_port.to_be_bytes());
            out.extend_from_slice(&ts.end_port.to_be_bytes());
            match ts.addresses {
                AddressRange::V4 { start, end } => {
                    out.extend_from_slice(&start.octets());
                    out.extend_from_slice(&end.octets());
                }
                AddressRange::V6 { start, end } => {
                    out.extend_from_slice(&start.octets());
                    out.extend_from_slice(&end.octets());
                }
            }
        }
        for u in &self.unsupported {
            out.extend_from_slice(&u.raw);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(prefix: &str, len: u8) -> AddressRange {
        AddressRange::from_prefix(prefix.parse().unwrap(), len).unwrap()
    }

    #[test]
    fn prefixes_become_ranges() {
        assert_eq!(
            v4("10.1.2.3", 24),
            AddressRange::V4 {
                start: "10.1.2.0".parse().unwrap(),
                end: "10.1.2.255".parse().unwrap()
            }
        );
        assert_eq!(
            v4("0.0.0.0", 0),
            AddressRange::V4 {
                start: Ipv4Addr::UNSPECIFIED,
                end: Ipv4Addr::BROADCAST
            }
        );
        let six = AddressRange::from_prefix("2001:db8::1".parse().unwrap(), 128).unwrap();
        assert!(six.contains("2001:db8::1".parse().unwrap()));
        assert!(!six.contains("2001:db8::2".parse().unwrap()));
        assert!(!six.contains("10.0.0.1".parse().unwrap()));
        assert!(AddressRange::from_prefix("10.0.0.0".parse().unwrap(), 33).is_none());
    }

    #[test]
    fn known_bytes_and_round_trip() {
        let ts = TsPayload::new(vec![TrafficSelector {
            protocol: 6,
            start_port: 443,
            end_port: 443,
            addresses: v4("192.0.2.0", 24),
        }]);
        let mut out = Vec::new();
        ts.emit(&mut out).unwrap();
        #[rustfmt::skip]
        let expected = [
            1, 0, 0, 0, // one selector
            7, 6, 0, 16, // IPv4 range, TCP, length 16
            0x01, 0xbb, 0x01, 0xbb, // ports 443-443
            192, 0, 2, 0, 192, 0, 2, 255,
        ];
        assert_eq!(out, expected);
        assert_eq!(TsPayload::parse(&out).unwrap(), ts);

        let mixed = TsPayload {
            selectors: vec![
                TrafficSelector::new(v4("10.0.0.0", 8)),
                TrafficSelector::new(
                    AddressRange::from_prefix("2001:db8::".parse().unwrap(), 32).unwrap(),
                ),
            ],
            unsupported: vec![UnsupportedSelector {
                ts_type: TsType(16),
                raw: vec![16, 0, 0, 8, 1, 2, 3, 4],
            }],
        };
        let mut out = Vec::new();
        mixed.emit(&mut out).unwrap();
        assert_eq!(TsPayload::parse(&out).unwrap(), mixed);
        for cut in 0..out.len() {
            assert!(TsPayload::parse(&out[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn malformed_selectors_are_refused() {
        let mut good = Vec::new();
        TsPayload::new(vec![TrafficSelector::new(v4("10.0.0.0", 8))])
            .emit(&mut good)
            .unwrap();
        let mut zero = good.clone();
        zero[0] = 0;
        assert!(TsPayload::parse(&zero).is_err());
        let mut two = good.clone();
        two[0] = 2;
        assert!(TsPayload::parse(&two).is_err());
        let mut bad_len = good.clone();
        bad_len[7] = 40;
        assert!(TsPayload::parse(&bad_len).is_err());
        let mut tiny = good.clone();
        tiny[7] = 3;
        assert!(TsPayload::parse(&tiny).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(TsPayload::parse(&trailing).is_err());
        assert!(TsPayload::new(vec![]).emit(&mut Vec::new()).is_err());
    }

    #[test]
    fn port_ranges() {
        let any = TrafficSelector::new(v4("10.0.0.0", 8));
        assert!(any.any_port());
        assert!(!any.opaque_ports());
        let opaque = TrafficSelector {
            start_port: u16::MAX,
            end_port: 0,
            ..any
        };
        assert!(opaque.opaque_ports());
    }
}
