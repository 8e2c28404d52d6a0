//! The relay's way out of the appliance: [`ApplianceEgress`], a [`relay::Egress`] over
//! [`relay::DirectEgress`] (per-egress DNS, kernel sockets bound to the decision's source).
//!
//! - **tunnel**: the decision's source is the device's NAT pool address; policy routing
//!   ([`super::routes`]) sends the socket into the tunnel.
//! - **internet**: the dedicated pair. The first healthy `source_addresses` entry is bound; when
//!   one is unusable the next is tried: binding fails with EADDRNOTAVAIL (the address left the
//!   host), or connecting fails with host / network unreachable or times out. A refused
//!   connection is the target's answer, not the address's fault: no failover. An unusable
//!   address is passed over for [`UNHEALTHY_FOR`] (tried last meanwhile), and each switch is
//!   an event `egress.failover {egress, from, to, error}`. The same for UDP (connect-udp).
//! - **public**: the configured `source_address`, or none (the kernel picks the default
//!   route's address). Fail closed: a public egress's socket whose source turns out to be a
//!   trusted address (one of an internet pair, or in a NAT pool — e.g. the default route's
//!   preferred source is a pair address on the same interface) is closed and the request
//!   refused (502), with an alert: untrusted traffic never leaves from a trusted address.
//!
//! Its per-egress data (DNS resolvers and hosts, the pairs) is swapped whole by
//! [`ApplianceEgress::configure`] on `config apply`: a new or changed egress never restarts
//! the relay, and flows already open keep their sockets.

use crate::events::EventLog;
use relay::{DirectEgress, EgressDns, EgressError, EgressRoute};
use serde_json::json;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};

/// How long an address that failed is passed over.
pub const UNHEALTHY_FOR: Duration = Duration::from_secs(30);

/// Name resolution's bound, and each connection attempt's: two attempts (one failover) fit in
/// the relay's 10 s connect timeout.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Debug, Default)]
struct Table {
    direct: DirectEgress,
    /// Internet egresses' source addresses, in order of preference.
    pairs: HashMap<String, Vec<IpAddr>>,
    /// Names of the untrusted (public) egresses.
    untrusted: std::collections::HashSet<String>,
    /// Every trusted source: the pairs' addresses and the NAT pools.
    trusted: Vec<ipnet::IpNet>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ApplianceEgress {
    table: RwLock<Arc<Table>>,
    unhealthy: Mutex<HashMap<IpAddr, Instant>>,
    events: Option<Arc<EventLog>>,
}

fn table(cfg: &config::Config) -> Table {
    let direct = cfg
        .egresses
        .iter()
        .filter(|e| !e.dns.is_empty() || !e.hosts.is_empty())
        .fold(DirectEgress::new(DNS_TIMEOUT, ATTEMPT_TIMEOUT), |d, e| {
            d.with_egress_dns(
                e.name.value.clone(),
                EgressDns::new(&e.dns, e.hosts.clone()),
            )
        });
    let pairs = cfg
        .egresses
        .iter()
        .filter_map(|e| match &e.kind {
            config::EgressKind::Internet(i) if !i.source_addresses.is_empty() => Some((
                e.name.value.clone(),
                i.source_addresses.iter().map(|a| a.value).collect(),
            )),
            _ => None,
        })
        .collect();
    let untrusted = cfg
        .egresses
        .iter()
        .filter(|e| !e.is_trusted())
        .map(|e| e.name.value.clone())
        .collect();
    let trusted = cfg
        .egresses
        .iter()
        .flat_map(|e| match &e.kind {
            config::EgressKind::Internet(i) => i
                .source_addresses
                .iter()
                .map(|a| ipnet::IpNet::from(a.value))
                .collect(),
            config::EgressKind::Tunnel(t) => vec![t.nat_pool.value],
            config::EgressKind::Public(_) => Vec::new(),
        })
        .collect();
    Table {
        direct,
        pairs,
        untrusted,
        trusted,
    }
}

/// Refuses a socket of an untrusted egress that the kernel gave a trusted source address.
fn untrusted_source_check(
    table: &Table,
    route: &EgressRoute,
    local: io::Result<std::net::SocketAddr>,
) -> Result<(), EgressError> {
    if !table.untrusted.contains(&route.name) {
        return Ok(());
    }
    let ip = match local {
        Ok(a) => a.ip(),
        Err(error) => {
            return Err(EgressError::Bind {
                source_address: route.source.unwrap_or(IpAddr::from([0, 0, 0, 0])),
                error,
            })
        }
    };
    if table.trusted.iter().any(|n| n.contains(&ip)) {
        tracing::error!(egress = %route.name, source = %ip, alert = true,
            "refused: the kernel chose a trusted address as the source of an untrusted egress; set the public egress's source_address");
        return Err(EgressError::Bind {
            source_address: ip,
            error: io::Error::new(
                io::ErrorKind::PermissionDenied,
                "a trusted address as the source of an untrusted egress",
            ),
        });
    }
    Ok(())
}

/// Whether `error` says the source address is unusable (rather than the target unreachable
/// or refusing).
fn address_unusable(error: &EgressError) -> bool {
    match error {
        EgressError::Bind { error, .. } => {
            error.kind() == io::ErrorKind::AddrNotAvailable
                || error.raw_os_error() == Some(libc::EADDRNOTAVAIL)
        }
        EgressError::Connect { error, .. } => matches!(
            error.kind(),
            io::ErrorKind::HostUnreachable
                | io::ErrorKind::NetworkUnreachable
                | io::ErrorKind::TimedOut
        ),
        EgressError::Timeout(_) => true,
        _ => false,
    }
}

impl ApplianceEgress {
    /// The egresses of `cfg`; failovers reported to `events`.
    pub fn new(cfg: &config::Config, events: Option<Arc<EventLog>>) -> ApplianceEgress {
        ApplianceEgress {
            table: RwLock::new(Arc::new(table(cfg))),
            unhealthy: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// Swaps in the egresses of `cfg`; open flows are not touched.
    pub fn configure(&self, cfg: &config::Config) {
        let new = Arc::new(table(cfg));
        match self.table.write() {
            Ok(mut t) => *t = new,
            Err(p) => *p.into_inner() = new,
        }
    }

    fn current(&self) -> Arc<Table> {
        match self.table.read() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The sources to try for `route`, in order: for an internet egress its pair, healthy
    /// addresses first (configured order), then the unhealthy ones (longest unhealthy first);
    /// for any other egress the route as decided.
    fn candidates(&self, table: &Table, route: &EgressRoute) -> Vec<EgressRoute> {
        let Some(pair) = table.pairs.get(&route.name) else {
            return vec![route.clone()];
        };
        let now = Instant::now();
        let mut bad = self.unhealthy.lock().unwrap_or_else(|p| p.into_inner());
        bad.retain(|_, since| now.duration_since(*since) < UNHEALTHY_FOR);
        let mut healthy: Vec<IpAddr> = pair
            .iter()
            .filter(|a| !bad.contains_key(a))
            .copied()
            .collect();
        let mut sick: Vec<(Instant, IpAddr)> = pair
            .iter()
            .filter_map(|a| bad.get(a).map(|t| (*t, *a)))
            .collect();
        sick.sort();
        healthy.extend(sick.into_iter().map(|(_, a)| a));
        healthy
            .into_iter()
            .map(|a| EgressRoute {
                name: route.name.clone(),
                source: Some(a),
            })
            .collect()
    }

    /// Records a failed source; reports the switch to `next` if there is one.
    fn failed(&self, route: &EgressRoute, next: Option<&EgressRoute>, error: &EgressError) {
        let Some(from) = route.source else { return };
        if let Ok(mut bad) = self.unhealthy.lock() {
            bad.entry(from).or_insert_with(Instant::now);
        }
        let fields = json!({
            "egress": route.name,
            "from": from.to_string(),
            "to": next.and_then(|n| n.source).map(|a| a.to_string()),
            "error": error.to_string(),
        });
        match &self.events {
            Some(e) => e.emit("egress.failover", fields),
            None => tracing::warn!(%fields, "egress.failover"),
        }
    }

    /// Marks an address healthy again once it carried a connection.
    fn worked(&self, route: &EgressRoute) {
        if let Some(a) = route.source {
            if let Ok(mut bad) = self.unhealthy.lock() {
                bad.remove(&a);
            }
        }
    }
}

impl relay::Egress for ApplianceEgress {
    async fn connect_tcp(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<TcpStream, EgressError> {
        let table = self.current();
        let candidates = self.candidates(&table, route);
        let mut last = None;
        for (i, candidate) in candidates.iter().enumerate() {
            match relay::Egress::connect_tcp(&table.direct, candidate, host, port).await {
                Ok(stream) => {
                    untrusted_source_check(&table, route, stream.local_addr())?;
                    self.worked(candidate);
                    return Ok(stream);
                }
                Err(error) if table.pairs.contains_key(&route.name) && address_unusable(&error) => {
                    self.failed(candidate, candidates.get(i + 1), &error);
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or(EgressError::Timeout(ATTEMPT_TIMEOUT)))
    }

    async fn bind_udp(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<UdpSocket, EgressError> {
        let table = self.current();
        let candidates = self.candidates(&table, route);
        let mut last = None;
        for (i, candidate) in candidates.iter().enumerate() {
            match relay::Egress::bind_udp(&table.direct, candidate, host, port).await {
                Ok(socket) => {
                    untrusted_source_check(&table, route, socket.local_addr())?;
                    self.worked(candidate);
                    return Ok(socket);
                }
                Err(error) if table.pairs.contains_key(&route.name) && address_unusable(&error) => {
                    self.failed(candidate, candidates.get(i + 1), &error);
                    last = Some(error);
                }
                Err(error) => return Err(error),
            }
        }
        Err(last.unwrap_or(EgressError::Timeout(ATTEMPT_TIMEOUT)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use relay::Egress;
    use tokio::net::TcpListener;

    fn pair(addresses: &[&str]) -> ApplianceEgress {
        ApplianceEgress::new(&config_with(addresses), None)
    }

    fn config_with(addresses: &[&str]) -> config::Config {
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "{}\n[egress.pair]\ntype = \"internet\"\nsource_addresses = [{}]\n",
            include_str!("../../../config/examples/lab.toml"),
            list.join(", ")
        );
        config::load_str(
            &text,
            std::path::Path::new("/test.toml"),
            std::path::Path::new("/"),
            config::FileChecks::Skip,
        )
        .unwrap()
        .config
    }

    /// Two documentation addresses that are not on this host (bind fails with EADDRNOTAVAIL).
    fn not_local() -> (String, String) {
        let free: Vec<String> = (1..=254)
            .map(|i| format!("203.0.113.{i}"))
            .filter(|a| {
                std::net::UdpSocket::bind(format!("{a}:0"))
                    .is_err_and(|e| e.kind() == io::ErrorKind::AddrNotAvailable)
            })
            .take(2)
            .collect();
        (free[0].clone(), free[1].clone())
    }

    fn route(source: &str) -> EgressRoute {
        EgressRoute {
            name: "pair".into(),
            source: Some(source.parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn an_untrusted_egress_never_leaves_from_a_trusted_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let public = EgressRoute {
            name: "public".into(),
            source: None,
        };
        // 127.0.0.1 is not trusted: the kernel's choice stands
        let egress = pair(&["203.0.113.30"]);
        assert!(egress.connect_tcp(&public, "127.0.0.1", port).await.is_ok());
        // the kernel picks 127.0.0.1, a pair address: refused, for TCP and UDP
        let egress = pair(&["127.0.0.1"]);
        let e = egress
            .connect_tcp(&public, "127.0.0.1", port)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("trusted address"), "{e}");
        assert_eq!(e.status().0, 502);
        let e = egress
            .bind_udp(&public, "127.0.0.1", port)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("trusted address"), "{e}");
        // the trusted egress itself may use it
        let mut on_pair = route("127.0.0.1");
        on_pair.name = "pair".into();
        assert!(egress
            .connect_tcp(&on_pair, "127.0.0.1", port)
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn fails_over_when_the_first_address_is_not_on_the_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // not an address of this host: bind fails with EADDRNOTAVAIL
        let (gone, _) = not_local();
        let e = pair(&[&gone, "127.0.0.5"]);
        let s = e
            .connect_tcp(&route(&gone), "127.0.0.1", port)
            .await
            .unwrap();
        assert_eq!(s.local_addr().unwrap().ip().to_string(), "127.0.0.5");
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.5");
        // remembered: the next connection starts with the healthy one
        let table = e.current();
        let order: Vec<String> = e
            .candidates(&table, &route(&gone))
            .iter()
            .map(|r| r.source.unwrap().to_string())
            .collect();
        assert_eq!(order, ["127.0.0.5".to_string(), gone.clone()]);
        // UDP too
        let target = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let u = e
            .bind_udp(
                &route(&gone),
                "127.0.0.1",
                target.local_addr().unwrap().port(),
            )
            .await
            .unwrap();
        assert_eq!(u.local_addr().unwrap().ip().to_string(), "127.0.0.5");
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_a_failover() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = pair(&["127.0.0.6", "127.0.0.7"]);
        let err = e
            .connect_tcp(&route("127.0.0.6"), "127.0.0.1", port)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, EgressError::Connect { error, .. } if error.kind() == io::ErrorKind::ConnectionRefused),
            "{err}"
        );
        let table = e.current();
        assert_eq!(
            e.candidates(&table, &route("127.0.0.6"))[0].source,
            Some("127.0.0.6".parse().unwrap()),
            "not marked unhealthy"
        );
    }

    #[tokio::test]
    async fn both_unusable_reports_the_error() {
        let (a, b) = not_local();
        let e = pair(&[&a, &b]);
        let err = e.connect_tcp(&route(&a), "127.0.0.1", 9).await.unwrap_err();
        assert!(matches!(err, EgressError::Bind { .. }), "{err}");
    }

    #[test]
    fn unusable_errors() {
        let bind = |k| EgressError::Bind {
            source_address: "192.0.2.1".parse().unwrap(),
            error: io::Error::from(k),
        };
        let connect = |k| EgressError::Connect {
            address: "192.0.2.9:443".parse().unwrap(),
            error: io::Error::from(k),
        };
        assert!(address_unusable(&bind(io::ErrorKind::AddrNotAvailable)));
        assert!(!address_unusable(&bind(io::ErrorKind::AddrInUse)));
        assert!(address_unusable(&connect(io::ErrorKind::HostUnreachable)));
        assert!(address_unusable(&connect(
            io::ErrorKind::NetworkUnreachable
        )));
        assert!(address_unusable(&connect(io::ErrorKind::TimedOut)));
        assert!(!address_unusable(&connect(
            io::ErrorKind::ConnectionRefused
        )));
        assert!(address_unusable(&EgressError::Timeout(
            Duration::from_secs(1)
        )));
    }
}
