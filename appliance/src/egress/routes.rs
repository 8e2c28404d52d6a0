//! Attestgate's routing, through rtnetlink: per tunnel egress, the NAT pool on the appliance
//! and a policy-routing table that sends pool-sourced traffic into the tunnel's TUN device.
//!
//! For each tunnel egress, while it runs ([`install_pool`], [`remove_pool`]):
//!
//! - `local <nat_pool> dev lo table local proto 245`: one AnyIP route makes every pool address
//!   an address of the appliance (bindable, answered), whatever the pool size;
//! - `from <nat_pool> lookup <table> priority 10245 proto 245` ([`RULE_PRIORITY`]): sockets
//!   bound to a pool address use the tunnel's own table ([`table_numbers`]);
//! - in that table: `unreachable default proto 245`, so pool-sourced traffic never falls
//!   through to the main table and fails at once (EHOSTUNREACH) while the tunnel is down, and
//!   while a child SA is up the peer's traffic selectors `dev <tun> proto 245 mtu <mtu> advmss
//!   <mtu − 40 (IPv4) / 60 (IPv6)>` ([`TunnelRoutes`]).
//!
//! Not yet: IPv6 pools. Their rule, table and `local` route are made the same way, but Linux
//! lets a socket bind an IPv6 address only when it is assigned to an interface (or with
//! IPV6_FREEBIND / `net.ipv6.ip_nonlocal_bind`), unlike IPv4 where the `local` route suffices;
//! so decisions for an IPv6 pool fail closed (`502`, the source cannot be bound).
//!
//! The MTU and ADVMSS metrics are the "TCP MSS clamp": every TCP connection that leaves through
//! a tunnel is the relay's own, locally originated socket (the relay terminates the device's
//! CONNECT and dials the target itself; nothing is forwarded through the appliance), so the
//! kernel takes the MSS it announces in its SYN from the route's `advmss` and sizes what it
//! sends by the route's `mtu` (RFC 9293 §3.7.1). An nftables `tcp option maxseg` rule only
//! matters for forwarded packets; there are none, so none is installed.
//!
//! Every route and rule attestgate adds carries the routing protocol number
//! [`ROUTE_PROTOCOL`] (245, `proto 245`; RFC-less, from the range Linux leaves to routing
//! daemons, see `/etc/iproute2/rt_protos`), so that ours can be told from the operator's and
//! removed: when the child SA that needed a route goes, when the tunnel goes down, when the
//! tunnel egress stops or leaves the configuration, when the daemon stops, and at start-up for
//! what a crashed daemon left behind ([`remove_leftovers`]: every rule and every route with
//! protocol 245 in every table; `ip rule`, `ip route show table all proto 245` list them).
//!
//! A traffic selector is an address range; it becomes the fewest prefixes that cover exactly
//! that range ([`prefixes`]). A route stays while any child SA of the tunnel needs it: during
//! a make-before-break rekey the new child SA adds the same routes before the old one goes.

use futures::TryStreamExt;
use ike::wire::{AddressRange, TrafficSelector};
use ipnet::IpNet;
use rtnetlink::packet_route::route::{
    RouteAttribute, RouteMessage, RouteMetric, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The routing protocol number on attestgate's routes and rules.
pub const ROUTE_PROTOCOL: u8 = 245;

/// The priority of the `from <nat_pool> lookup <table>` rules: after the `local` table's
/// rule (0), before the `main` table's (32766).
pub const RULE_PRIORITY: u32 = 10245;

/// The kernel's `local` table (RT_TABLE_LOCAL), where the pool's AnyIP route goes.
const LOCAL_TABLE: u32 = 255;

/// The first routing table number of tunnel egresses (0x41470000, "AG"): tables are
/// `TABLE_BASE + n` for n in 0..[`TABLE_SLOTS`], far from the operator's usual 1..252 and
/// from `local` (255), `main` (254) and `default` (253).
pub const TABLE_BASE: u32 = 0x4147_0000;
/// How many table numbers [`table_numbers`] chooses from.
pub const TABLE_SLOTS: u32 = 0x1_0000;

/// The routing table of each tunnel egress: `TABLE_BASE + FNV-1a-32(name) mod TABLE_SLOTS`,
/// so a tunnel keeps its table whatever else the configuration holds; when two names land on
/// the same number, the one later in alphabetical order takes the next free number. Distinct
/// for distinct names.
pub fn table_numbers<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, u32> {
    let names: BTreeSet<&str> = names.into_iter().collect();
    let mut taken = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in names {
        let mut slot = fnv1a(name.as_bytes()) % TABLE_SLOTS;
        while taken.contains(&slot) {
            slot = (slot + 1) % TABLE_SLOTS;
        }
        taken.insert(slot);
        out.insert(name.to_string(), TABLE_BASE + slot);
    }
    out
}

/// FNV-1a, 32 bits (stable across builds and platforms, unlike `std`'s hasher).
pub(crate) fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

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

/// The table a route or rule message names (the `RTA_TABLE` / `FRA_TABLE` attribute when the
/// number does not fit the header's octet).
fn route_table(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}

fn rule_is_ours(rule: &RuleMessage) -> bool {
    rule.attributes
        .iter()
        .any(|a| matches!(a, RuleAttribute::Protocol(p) if u8::from(*p) == ROUTE_PROTOCOL))
}

/// Our rules (protocol 245) of both families; only those looking up `table` if given.
async fn our_rules(handle: &Handle, table: Option<u32>) -> Result<Vec<RuleMessage>, String> {
    let mut found = Vec::new();
    for version in [IpVersion::V4, IpVersion::V6] {
        let mut rules = handle.rule().get(version).execute();
        while let Some(rule) = rules
            .try_next()
            .await
            .map_err(|e| format!("cannot list rules: {e}"))?
        {
            if rule_is_ours(&rule) && table.is_none_or(|t| rule_table(&rule) == t) {
                found.push(rule);
            }
        }
    }
    Ok(found)
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

/// Removes every rule and every route (of every table) with [`ROUTE_PROTOCOL`]: left by an
/// earlier run, or at shutdown. Returns how many went.
pub async fn remove_leftovers() -> Result<usize, String> {
    let handle = connect()?;
    let mut removed = 0;
    for rule in our_rules(&handle, None).await? {
        if handle.rule().del(rule).execute().await.is_ok() {
            removed += 1;
        }
    }
    for route in ours(&handle, None).await? {
        if handle.route().del(route).execute().await.is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn ours_route(builder: RouteMessageBuilder<IpAddr>, table: u32) -> RouteMessage {
    builder
        .table_id(table)
        .protocol(RouteProtocol::from(ROUTE_PROTOCOL))
        .build()
}

async fn link_index(handle: &Handle, device: &str) -> Result<u32, String> {
    Ok(handle
        .link()
        .get()
        .match_name(device.to_string())
        .execute()
        .try_next()
        .await
        .map_err(|e| format!("cannot find device {device}: {e}"))?
        .ok_or_else(|| format!("no device {device}"))?
        .header
        .index)
}

/// Puts a tunnel egress's NAT pool on the appliance and routes it into `table` (see the module
/// documentation): the `unreachable default` of the table, the rule, then the AnyIP `local`
/// route, each replacing one of ours left for the same pool or table. Should a step fail, the
/// pool's addresses are not made bindable, so no socket can leave from them outside the table.
pub async fn install_pool(pool: IpNet, table: u32) -> Result<(), String> {
    let handle = connect()?;
    // a rule for this table left by an earlier run (perhaps for another pool) goes first
    for rule in our_rules(&handle, Some(table)).await? {
        let _ = handle.rule().del(rule).execute().await;
    }
    let any = match pool {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let unreachable = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(any, 0)
        .map_err(|e| e.to_string())?
        .kind(RouteType::Unreachable);
    handle
        .route()
        .add(ours_route(unreachable, table))
        .replace()
        .execute()
        .await
        .map_err(|e| format!("cannot add unreachable default to table {table}: {e}"))?;
    let mut rule = handle
        .rule()
        .add()
        .table_id(table)
        .priority(RULE_PRIORITY)
        .action(RuleAction::ToTable);
    rule.message_mut()
        .attributes
        .push(RuleAttribute::Protocol(RouteProtocol::from(ROUTE_PROTOCOL)));
    let added = match pool {
        IpNet::V4(p) => {
            rule.v4()
                .source_prefix(p.network(), p.prefix_len())
                .execute()
                .await
        }
        IpNet::V6(p) => {
            rule.v6()
                .source_prefix(p.network(), p.prefix_len())
                .execute()
                .await
        }
    };
    added.map_err(|e| format!("cannot add rule from {pool} lookup {table}: {e}"))?;
    // last: only once the rule keeps pool-sourced traffic off the main table may a socket
    // bind a pool address (fail closed)
    let lo = link_index(&handle, "lo").await?;
    let local = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(pool.network(), pool.prefix_len())
        .map_err(|e| e.to_string())?
        .output_interface(lo)
        .kind(RouteType::Local)
        .scope(RouteScope::Host);
    handle
        .route()
        .add(ours_route(local, LOCAL_TABLE))
        .replace()
        .execute()
        .await
        .map_err(|e| format!("cannot add local route for {pool}: {e}"))?;
    Ok(())
}

/// Removes what [`install_pool`] and [`TunnelRoutes`] made for this pool and table: the rules
/// looking up `table`, every route of ours in `table`, and the pool's `local` route.
pub async fn remove_pool(pool: IpNet, table: u32) -> Result<(), String> {
    let handle = connect()?;
    for rule in our_rules(&handle, Some(table)).await? {
        let _ = handle.rule().del(rule).execute().await;
    }
    for route in ours(&handle, None).await? {
        let local_of_pool = route_table(&route) == LOCAL_TABLE
            && route.header.destination_prefix_length == pool.prefix_len()
            && route.attributes.iter().any(
                |a| matches!(a, RouteAttribute::Destination(d) if route_address(d) == Some(pool.network())),
            );
        if route_table(&route) == table || local_of_pool {
            let _ = handle.route().del(route).execute().await;
        }
    }
    Ok(())
}

fn route_address(a: &rtnetlink::packet_route::route::RouteAddress) -> Option<IpAddr> {
    use rtnetlink::packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The routes of one tunnel's TUN device, in the tunnel's table.
#[derive(Debug)]
pub struct TunnelRoutes {
    handle: Handle,
    device: String,
    index: u32,
    table: u32,
    mtu: u16,
    /// Each installed prefix and the inbound SPIs of the child SAs that need it.
    installed: BTreeMap<(IpAddr, u8), BTreeSet<u32>>,
}

impl TunnelRoutes {
    /// Finds `device`, brings it up and removes routes of ours left on it; routes go into
    /// `table` with the tunnel's `mtu`.
    pub async fn open(device: &str, table: u32, mtu: u16) -> Result<TunnelRoutes, String> {
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
            table,
            mtu,
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
        let builder = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, len)
            .map_err(|e| e.to_string())?
            .output_interface(self.index);
        let mut message = ours_route(builder, self.table);
        message
            .attributes
            .push(RouteAttribute::Metrics(metrics(self.mtu, addr.is_ipv4())));
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
        let message = ours_route(builder.output_interface(self.index), self.table);
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

/// The `mtu` and `advmss` metrics of a route into a tunnel: the MSS is the MTU less the IP
/// and TCP headers (20 + 20 octets for IPv4, 40 + 20 for IPv6).
fn metrics(mtu: u16, ipv4: bool) -> Vec<RouteMetric> {
    let headers = if ipv4 { 40 } else { 60 };
    vec![
        RouteMetric::Mtu(u32::from(mtu)),
        RouteMetric::Advmss(u32::from(mtu).saturating_sub(headers)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_numbers_are_stable_distinct_and_ours() {
        let one = table_numbers(["corp"]);
        let two = table_numbers(["corp", "branch", "aws"]);
        // a tunnel keeps its table when others are added
        assert_eq!(one["corp"], two["corp"]);
        assert_eq!(one["corp"], TABLE_BASE + fnv1a(b"corp") % TABLE_SLOTS);
        let many: Vec<String> = (0..5000).map(|i| format!("t{i}")).collect();
        let tables = table_numbers(many.iter().map(|s| s.as_str()));
        let distinct: BTreeSet<u32> = tables.values().copied().collect();
        assert_eq!(distinct.len(), 5000, "two tunnels share a table");
        assert!(tables
            .values()
            .all(|t| (TABLE_BASE..TABLE_BASE + TABLE_SLOTS).contains(t)));
        // 5000 names in 65536 slots collide somewhere (birthday bound), and still come out distinct
        let natural: BTreeSet<u32> = many
            .iter()
            .map(|n| fnv1a(n.as_bytes()) % TABLE_SLOTS)
            .collect();
        assert!(natural.len() < 5000);
    }

    #[test]
    fn colliding_names_probe_in_alphabetical_order() {
        // find two names on the same slot
        let slot = |n: &str| fnv1a(n.as_bytes()) % TABLE_SLOTS;
        let mut seen = BTreeMap::new();
        let (a, b) = (0..200_000)
            .map(|i| format!("n{i}"))
            .find_map(|n| {
                let s = slot(&n);
                seen.insert(s, n.clone()).map(|other| (other, n))
            })
            .unwrap();
        let (first, second) = if a < b { (a, b) } else { (b, a) };
        let t = table_numbers([second.as_str(), first.as_str()]);
        assert_eq!(t[&first], TABLE_BASE + slot(&first));
        assert_eq!(t[&second], TABLE_BASE + (slot(&first) + 1) % TABLE_SLOTS);
    }

    /// install_pool / remove_pool / remove_leftovers for an IPv4 and an IPv6 pool, in a
    /// network namespace of its own: this test runs the next one under `unshare --net` (root
    /// only; the host's routing is not touched).
    #[test]
    fn pool_routing_in_a_private_namespace() {
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .arg("--net")
            .arg(exe)
            .args([
                "egress::routes::tests::pool_routing_inside",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env("ATTESTGATE_TEST_NETNS", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains("Operation not permitted") {
            eprintln!("skipped: needs root");
            return;
        }
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
    }

    #[test]
    #[ignore = "run inside a private network namespace by pool_routing_in_a_private_namespace"]
    fn pool_routing_inside() {
        // only under `unshare --net` (it changes the namespace's routing)
        if std::env::var("ATTESTGATE_TEST_NETNS").as_deref() != Ok("1") {
            eprintln!("skipped: run by pool_routing_in_a_private_namespace");
            return;
        }
        {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let handle = connect().unwrap();
                let lo = link_index(&handle, "lo").await.unwrap();
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await
                    .unwrap();
                let v4: IpNet = "198.18.100.0/26".parse().unwrap();
                let v6: IpNet = "2001:db8:100::/120".parse().unwrap();
                install_pool(v4, TABLE_BASE + 1).await.unwrap();
                install_pool(v6, TABLE_BASE + 2).await.unwrap();
                // again: idempotent (replaced, not doubled)
                install_pool(v4, TABLE_BASE + 1).await.unwrap();
                let rules = our_rules(&handle, None).await.unwrap();
                assert_eq!(rules.len(), 2, "{rules:?}");
                for (rule, table) in rules.iter().zip([TABLE_BASE + 1, TABLE_BASE + 2]) {
                    assert_eq!(rule_table(rule), table);
                    assert!(rule
                        .attributes
                        .contains(&RuleAttribute::Priority(RULE_PRIORITY)));
                }
                let routes = ours(&handle, None).await.unwrap();
                let kinds: Vec<(u32, RouteType)> = routes
                    .iter()
                    .map(|r| (route_table(r), r.header.kind))
                    .collect();
                for want in [
                    (TABLE_BASE + 1, RouteType::Unreachable),
                    (TABLE_BASE + 2, RouteType::Unreachable),
                    (LOCAL_TABLE, RouteType::Local),
                ] {
                    assert!(kinds.contains(&want), "{want:?} not in {kinds:?}");
                }
                assert_eq!(kinds.len(), 4, "{kinds:?}");
                // an IPv4 pool address is bindable; an address outside it is not (IPv6 binds
                // only assigned addresses whatever the routes say: see the module documentation)
                assert!(std::net::UdpSocket::bind("198.18.100.9:0").is_ok());
                assert!(std::net::UdpSocket::bind("198.18.100.99:0").is_err());
                // traffic from the pool is refused at once outside the table's routes
                let s = std::net::UdpSocket::bind("198.18.100.9:0").unwrap();
                let e = s.connect("203.0.113.20:53").unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::HostUnreachable, "{e}");

                remove_pool(v4, TABLE_BASE + 1).await.unwrap();
                assert_eq!(our_rules(&handle, None).await.unwrap().len(), 1);
                assert!(std::net::UdpSocket::bind("198.18.100.9:0").is_err());
                assert!(remove_leftovers().await.unwrap() >= 3);
                assert!(our_rules(&handle, None).await.unwrap().is_empty());
                assert!(ours(&handle, None).await.unwrap().is_empty());
            });
        }
    }

    #[test]
    fn metrics_clamp_the_mss_to_the_mtu() {
        assert_eq!(
            metrics(1400, true),
            [RouteMetric::Mtu(1400), RouteMetric::Advmss(1360)]
        );
        assert_eq!(
            metrics(1400, false),
            [RouteMetric::Mtu(1400), RouteMetric::Advmss(1340)]
        );
    }

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
