//! Routes into the tunnels' TUN devices, through rtnetlink: the peer's traffic selectors of
//! every child SA are routed into the tunnel's device while the child SA is up, so the kernel
//! hands that traffic to the ESP engine.
//!
//! Every route attestgate adds carries the routing protocol number [`ROUTE_PROTOCOL`] (245,
//! `proto 245` in `ip route`; RFC-less, from the range Linux leaves to routing daemons, see
//! `/etc/iproute2/rt_protos`), so that ours can be told from the operator's and removed: when
//! the child SA that needed a route goes, when the tunnel goes down, when the daemon stops, and
//! at start-up for what a crashed daemon left behind (`ip route show proto 245` lists them).
//!
//! A traffic selector is an address range; it becomes the fewest prefixes that cover exactly
//! that range ([`prefixes`]). A route stays while any child SA of the tunnel needs it: during
//! a make-before-break rekey the new child SA adds the same routes before the old one goes.

use futures::TryStreamExt;
use ike::wire::{AddressRange, TrafficSelector};
use rtnetlink::packet_route::route::{RouteAttribute, RouteMessage, RouteProtocol};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The routing protocol number on attestgate's routes.
pub const ROUTE_PROTOCOL: u8 = 245;

/// The fewest prefixes that together cover exactly `range` (empty if start > end).
pub fn prefixes(range: &AddressRange) -> Vec<(IpAddr, u8)> {
    match *range {
        AddressRange::V4 { start, end } => {
            cover(u128::from(u32::from(start)), u128::from(u32::from(end)), 32)
                .into_iter()
                .map(|(a, l)| (IpAddr::V4(Ipv4Addr::from(a as u32)), l))
                .collect()
        }
        AddressRange::V6 { start, end } => cover(u128::from(start), u128::from(end), 128)
            .into_iter()
            .map(|(a, l)| (IpAddr::V6(Ipv6Addr::from(a)), l))
            .collect(),
    }
}

/// Splits [start, end] of a `bits`-bit address space into aligned blocks, largest first.
fn cover(mut start: u128, end: u128, bits: u32) -> Vec<(u128, u8)> {
    // the last address of the block of 2^size_bits addresses at `start`
    let last = |start: u128, size_bits: u32| match 1u128.checked_shl(size_bits) {
        Some(size) if size_bits < 128 => start.checked_add(size - 1),
        _ => (start == 0).then_some(u128::MAX),
    };
    let mut out = Vec::new();
    while start <= end {
        // the largest block aligned at `start` that does not pass `end`
        let mut size_bits = start.trailing_zeros().min(bits);
        while size_bits > 0 && last(start, size_bits).is_none_or(|l| l > end) {
            size_bits -= 1;
        }
        out.push((start, (bits - size_bits) as u8));
        match last(start, size_bits).and_then(|l| l.checked_add(1)) {
            Some(next) => start = next,
            None => break,
        }
    }
    out
}

fn connect() -> Result<Handle, String> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| format!("cannot open rtnetlink: {e}"))?;
    tokio::spawn(connection);
    Ok(handle)
}

fn is_ours(route: &RouteMessage) -> bool {
    u8::from(route.header.protocol) == ROUTE_PROTOCOL
}

fn oif(route: &RouteMessage) -> Option<u32> {
    route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        _ => None,
    })
}

/// Our routes, of every family and table; only those through `device` if given.
async fn ours(handle: &Handle, device: Option<u32>) -> Result<Vec<RouteMessage>, String> {
    let mut found = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut query = RouteMessageBuilder::<IpAddr>::new().build();
        query.header.address_family = family;
        let mut routes = handle.route().get(query).execute();
        while let Some(route) = routes
            .try_next()
            .await
            .map_err(|e| format!("cannot list routes: {e}"))?
        {
            if is_ours(&route) && (device.is_none() || oif(&route) == device) {
                found.push(route);
            }
        }
    }
    Ok(found)
}

/// Removes every route with [`ROUTE_PROTOCOL`] (left by an earlier run, or at shutdown).
/// Returns how many went.
pub async fn remove_leftovers() -> Result<usize, String> {
    let handle = connect()?;
    let routes = ours(&handle, None).await?;
    let mut removed = 0;
    for route in routes {
        if handle.route().del(route).execute().await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

/// The routes of one tunnel's TUN device.
#[derive(Debug)]
pub struct TunnelRoutes {
    handle: Handle,
    device: String,
    index: u32,
    /// Each installed prefix and the inbound SPIs of the child SAs that need it.
    installed: BTreeMap<(IpAddr, u8), BTreeSet<u32>>,
}

impl TunnelRoutes {
    /// Finds `device`, brings it up and removes routes of ours left on it.
    pub async fn open(device: &str) -> Result<TunnelRoutes, String> {
        let handle = connect()?;
        let link = handle
            .link()
            .get()
            .match_name(device.to_string())
            .execute()
            .try_next()
            .await
            .map_err(|e| format!("cannot find device {device}: {e}"))?
            .ok_or_else(|| format!("no device {device}"))?;
        let index = link.header.index;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| format!("cannot bring {device} up: {e}"))?;
        let mut routes = TunnelRoutes {
            handle,
            device: device.to_string(),
            index,
            installed: BTreeMap::new(),
        };
        routes.clear().await;
        Ok(routes)
    }

    /// Routes the peer's selectors of child SA `spi_in` into the device.
    pub async fn add(&mut self, spi_in: u32, remote_ts: &[TrafficSelector]) -> Vec<String> {
        let mut errors = Vec::new();
        for ts in remote_ts {
            for prefix in prefixes(&ts.addresses) {
                let users = self.installed.entry(prefix).or_default();
                let new = users.is_empty();
                users.insert(spi_in);
                if !new {
                    continue;
                }
                if let Err(e) = self.add_route(prefix).await {
                    errors.push(format!(
                        "cannot route {}/{} into {}: {e}",
                        prefix.0, prefix.1, self.device
                    ));
                }
            }
        }
        errors
    }

    async fn add_route(&self, (addr, len): (IpAddr, u8)) -> Result<(), String> {
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, len)
            .map_err(|e| e.to_string())?
            .output_interface(self.index)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            .build();
        // replace: a route of ours for the prefix from an earlier child SA is taken over
        self.handle
            .route()
            .add(message)
            .replace()
            .execute()
            .await
            .map_err(|e| e.to_string())
    }

    /// Removes the routes only child SA `spi_in` needed.
    pub async fn remove(&mut self, spi_in: u32) {
        let mut unused = Vec::new();
        for (prefix, users) in &mut self.installed {
            if users.remove(&spi_in) && users.is_empty() {
                unused.push(*prefix);
            }
        }
        for prefix in unused {
            self.installed.remove(&prefix);
            self.del_route(prefix).await;
        }
    }

    async fn del_route(&self, (addr, len): (IpAddr, u8)) {
        let Ok(builder) = RouteMessageBuilder::<IpAddr>::new().destination_prefix(addr, len) else {
            return;
        };
        let message = builder
            .output_interface(self.index)
            .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
            .build();
        if let Err(e) = self.handle.route().del(message).execute().await {
            tracing::debug!(device = %self.device, prefix = %format!("{addr}/{len}"), error = %e, "route already gone");
        }
    }

    /// Removes every route of ours through the device (the tunnel went down).
    pub async fn clear(&mut self) {
        self.installed.clear();
        match ours(&self.handle, Some(self.index)).await {
            Ok(routes) => {
                for route in routes {
                    let _ = self.handle.route().del(route).execute().await;
                }
            }
            Err(e) => tracing::warn!(device = %self.device, error = %e, "cannot list routes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(start: &str, end: &str) -> Vec<String> {
        prefixes(&AddressRange::V4 {
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
        })
        .into_iter()
        .map(|(a, l)| format!("{a}/{l}"))
        .collect()
    }

    #[test]
    fn a_prefix_range_is_one_route() {
        assert_eq!(v4("198.19.0.0", "198.19.0.255"), ["198.19.0.0/24"]);
        assert_eq!(v4("10.0.0.7", "10.0.0.7"), ["10.0.0.7/32"]);
        assert_eq!(v4("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
    }

    #[test]
    fn an_unaligned_range_is_covered_exactly() {
        assert_eq!(
            v4("10.0.0.1", "10.0.0.6"),
            ["10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/31", "10.0.0.6/32"]
        );
        assert_eq!(
            v4("192.0.2.128", "192.0.3.63"),
            ["192.0.2.128/25", "192.0.3.0/26"]
        );
        assert!(v4("10.0.0.9", "10.0.0.1").is_empty());
    }

    #[test]
    fn ipv6_ranges_including_everything() {
        let all = prefixes(&AddressRange::V6 {
            start: Ipv6Addr::UNSPECIFIED,
            end: Ipv6Addr::from(u128::MAX),
        });
        assert_eq!(all, [(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)]);
        let top = prefixes(&AddressRange::V6 {
            start: "2001:db8::".parse().unwrap(),
            end: Ipv6Addr::from(u128::MAX),
        });
        // covered exactly: the blocks are contiguous and end at the top
        let mut next = u128::from("2001:db8::".parse::<Ipv6Addr>().unwrap());
        for (a, l) in &top {
            let IpAddr::V6(a) = a else { panic!() };
            assert_eq!(u128::from(*a), next);
            next = next.wrapping_add(1u128 << (128 - u32::from(*l)));
        }
        assert_eq!(next, 0, "wrapped past the last address exactly");
    }
}
