//! The way out: the [`Egress`] trait the relay dials targets through, and [`DirectEgress`],
//! which resolves names through the route's egress (its static hosts and name servers,
//! [`crate::dns`]; the host's resolver for an egress without name servers) and connects with
//! ordinary kernel sockets bound to the route's source address (policy routing then picks
//! the path; DESIGN.md "Data flow").

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream, UdpSocket};

use crate::dns::{EgressDns, Lookup, Resolvers};
use crate::proxy_status::ProxyError;
use crate::EgressRoute;

/// Why an egress could not reach the target; each maps to a status and a Proxy-Status error
/// type (RFC 9209 §2.3).
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("resolving {host}: {detail}")]
    Dns { host: String, detail: String },
    #[error("resolving {host}: no answer within {timeout:?}")]
    DnsTimeout { host: String, timeout: Duration },
    #[error("{host} has no {family} address to reach from source {source_address}")]
    NoAddressForSource {
        host: String,
        family: &'static str,
        source_address: IpAddr,
    },
    #[error("binding source address {source_address}: {error}")]
    Bind {
        source_address: IpAddr,
        error: io::Error,
    },
    #[error("connecting to {address}: {error}")]
    Connect {
        address: SocketAddr,
        error: io::Error,
    },
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

impl EgressError {
    /// The `details` a device is shown (RFC 9209 §2.1.5): the failure, without the egress's
    /// own addresses.
    pub fn details(&self) -> String {
        match self {
            EgressError::Bind { .. } => "the egress source address cannot be bound".to_string(),
            other => other.to_string(),
        }
    }

    /// The HTTP status and Proxy-Status error type that answer this failure.
    pub fn status(&self) -> (u16, ProxyError) {
        match self {
            EgressError::Dns { .. } => (502, ProxyError::DnsError),
            EgressError::DnsTimeout { .. } => (504, ProxyError::DnsTimeout),
            EgressError::NoAddressForSource { .. } => (502, ProxyError::DestinationIpUnroutable),
            EgressError::Bind { .. } => (502, ProxyError::ProxyInternalError),
            EgressError::Timeout(_) => (504, ProxyError::ConnectionTimeout),
            EgressError::Connect { error, .. } => match error.kind() {
                io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset => {
                    (502, ProxyError::ConnectionRefused)
                }
                io::ErrorKind::TimedOut => (504, ProxyError::ConnectionTimeout),
                io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                    (502, ProxyError::DestinationIpUnroutable)
                }
                _ => (502, ProxyError::ProxyInternalError),
            },
        }
    }
}

/// Dials targets for forwarded requests. Implemented by the appliance's egresses.
pub trait Egress: Send + Sync + 'static {
    /// Opens a TCP connection to `host:port` (a DNS name or an IP literal) through `route`.
    /// The relay bounds the whole call with its connect timeout.
    fn connect_tcp(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<TcpStream, EgressError>> + Send;

    /// Opens a UDP socket through `route`, connected to `host:port` (for connect-udp). The
    /// relay bounds the call with its connect timeout.
    fn bind_udp(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<UdpSocket, EgressError>> + Send;
}

/// Resolves through the route's egress ([`DirectEgress::with_egress_dns`]; the system
/// resolver, tokio's `lookup_host`, for an egress without name servers) and connects with a
/// kernel socket bound to the route's source address, trying each resolved address of the
/// right family in turn.
#[derive(Debug, Clone)]
pub struct DirectEgress {
    dns_timeout: Duration,
    attempt_timeout: Duration,
    resolvers: Arc<Resolvers>,
}

impl Default for DirectEgress {
    fn default() -> Self {
        DirectEgress::new(Duration::from_secs(5), Duration::from_secs(5))
    }
}

impl DirectEgress {
    /// `dns_timeout` bounds name resolution; `attempt_timeout` each connection attempt (one
    /// per resolved address).
    pub fn new(dns_timeout: Duration, attempt_timeout: Duration) -> DirectEgress {
        DirectEgress {
            dns_timeout,
            attempt_timeout,
            resolvers: Arc::default(),
        }
    }

    /// Names sent out egress `name` (a route's [`EgressRoute::name`]) are resolved with
    /// `dns`: its static hosts first, then its name servers (queried from the route's source
    /// address); without name servers, the system resolver.
    pub fn with_egress_dns(mut self, name: impl Into<String>, dns: EgressDns) -> DirectEgress {
        self.resolvers = Arc::new(self.resolvers.with(name.into(), dns));
        self
    }

    async fn resolve(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, EgressError> {
        let found = self.resolvers.lookup(route, host, self.dns_timeout).await?;
        if let Lookup::Found(addresses) = found {
            return Ok(addresses
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect());
        }
        match tokio::time::timeout(self.dns_timeout, tokio::net::lookup_host((host, port))).await {
            Err(_) => Err(EgressError::DnsTimeout {
                host: host.to_string(),
                timeout: self.dns_timeout,
            }),
            Ok(Err(error)) => Err(EgressError::Dns {
                host: host.to_string(),
                detail: error.to_string(),
            }),
            Ok(Ok(addresses)) => {
                let addresses: Vec<SocketAddr> = addresses.collect();
                if addresses.is_empty() {
                    Err(EgressError::Dns {
                        host: host.to_string(),
                        detail: "no addresses".to_string(),
                    })
                } else {
                    Ok(addresses)
                }
            }
        }
    }

    async fn attempt(
        &self,
        source: Option<IpAddr>,
        address: SocketAddr,
    ) -> Result<TcpStream, EgressError> {
        let connect_error = |error| EgressError::Connect { address, error };
        let socket = if address.is_ipv4() {
            TcpSocket::new_v4()
        } else {
            TcpSocket::new_v6()
        }
        .map_err(connect_error)?;
        if let Some(source_address) = source {
            socket
                .bind(SocketAddr::new(source_address, 0))
                .map_err(|error| EgressError::Bind {
                    source_address,
                    error,
                })?;
        }
        let stream = match tokio::time::timeout(self.attempt_timeout, socket.connect(address)).await
        {
            Err(_) => {
                return Err(connect_error(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {:?}", self.attempt_timeout),
                )))
            }
            Ok(result) => result.map_err(connect_error)?,
        };
        // Relayed streams carry interactive traffic (TLS handshakes, push channels).
        stream.set_nodelay(true).map_err(connect_error)?;
        Ok(stream)
    }
}

impl DirectEgress {
    /// The target's addresses that `route`'s source address can reach (same family).
    async fn addresses(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<Vec<SocketAddr>, EgressError> {
        let mut addresses = self.resolve(route, host, port).await?;
        if let Some(source) = route.source {
            addresses.retain(|a| a.is_ipv4() == source.is_ipv4());
            if addresses.is_empty() {
                return Err(EgressError::NoAddressForSource {
                    host: host.to_string(),
                    family: if source.is_ipv4() { "IPv4" } else { "IPv6" },
                    source_address: source,
                });
            }
        }
        Ok(addresses)
    }
}

impl Egress for DirectEgress {
    async fn bind_udp(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<UdpSocket, EgressError> {
        let addresses = self.addresses(route, host, port).await?;
        // UDP has no handshake to fail over on: the first address is the target.
        let Some(address) = addresses.first().copied() else {
            return Err(EgressError::Dns {
                host: host.to_string(),
                detail: "no addresses".to_string(),
            });
        };
        let local = match route.source {
            Some(source) => SocketAddr::new(source, 0),
            None if address.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
            None => SocketAddr::from(([0u16; 8], 0)),
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|error| EgressError::Bind {
                source_address: local.ip(),
                error,
            })?;
        socket
            .connect(address)
            .await
            .map_err(|error| EgressError::Connect { address, error })?;
        Ok(socket)
    }

    async fn connect_tcp(
        &self,
        route: &EgressRoute,
        host: &str,
        port: u16,
    ) -> Result<TcpStream, EgressError> {
        let addresses = self.addresses(route, host, port).await?;
        let mut last_error = None;
        for address in addresses {
            match self.attempt(route.source, address).await {
                Ok(stream) => return Ok(stream),
                Err(error @ EgressError::Bind { .. }) => return Err(error),
                Err(error) => last_error = Some(error),
            }
        }
        // `addresses` was not empty, so some attempt failed.
        Err(last_error.unwrap_or(EgressError::Timeout(self.attempt_timeout)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn route(source: Option<&str>) -> EgressRoute {
        EgressRoute {
            name: "test".into(),
            source: source.map(|s| s.parse().unwrap()),
        }
    }

    #[tokio::test]
    async fn connects_with_bound_source() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accept = tokio::spawn(async move {
            let (mut stream, peer) = listener.accept().await.unwrap();
            stream.write_all(b"hi").await.unwrap();
            peer
        });
        let egress = DirectEgress::default();
        let mut stream = egress
            .connect_tcp(&route(Some("127.0.0.2")), "127.0.0.1", port)
            .await
            .unwrap();
        let mut buf = [0; 2];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hi");
        let peer = accept.await.unwrap();
        assert_eq!(peer.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn udp_socket_is_bound_and_connected() {
        let target = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = target.local_addr().unwrap().port();
        let socket = DirectEgress::default()
            .bind_udp(&route(Some("127.0.0.3")), "127.0.0.1", port)
            .await
            .unwrap();
        socket.send(b"ping").await.unwrap();
        let mut buf = [0; 8];
        let (n, from) = target.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"ping");
        assert_eq!(from.ip(), "127.0.0.3".parse::<IpAddr>().unwrap());
    }

    #[tokio::test]
    async fn resolves_localhost() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let egress = DirectEgress::default();
        egress
            .connect_tcp(&route(Some("127.0.0.1")), "localhost", port)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn failures_map_to_proxy_status() {
        let egress = DirectEgress::default();
        // A port nobody listens on: bind and drop a listener to find one.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let refused = egress
            .connect_tcp(&route(None), "127.0.0.1", port)
            .await
            .unwrap_err();
        assert_eq!(refused.status(), (502, ProxyError::ConnectionRefused));

        // Name resolution is not exercised here: it would query the machine's resolver.
        let dns = EgressError::Dns {
            host: "no-such-host.invalid".into(),
            detail: "failed to lookup address information".into(),
        };
        assert_eq!(dns.status(), (502, ProxyError::DnsError));
        assert_eq!(
            dns.details(),
            "resolving no-such-host.invalid: failed to lookup address information"
        );
        let bind = EgressError::Bind {
            source_address: "192.0.2.1".parse().unwrap(),
            error: io::Error::from(io::ErrorKind::AddrNotAvailable),
        };
        assert!(!bind.details().contains("192.0.2.1"));

        let family = egress
            .connect_tcp(&route(Some("127.0.0.1")), "::1", port)
            .await
            .unwrap_err();
        assert_eq!(family.status(), (502, ProxyError::DestinationIpUnroutable));
        assert_eq!(
            EgressError::Timeout(Duration::from_secs(1)).status(),
            (504, ProxyError::ConnectionTimeout)
        );
    }

    #[tokio::test]
    async fn resolves_through_the_egress() {
        use crate::test_dns::dns_server;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let names = [("svc.corp.test".to_string(), "127.0.0.1".parse().unwrap())];
        let (server, mut queries) = dns_server(names.into_iter().collect()).await;
        let hosts = [("lab.test".to_string(), vec!["127.0.0.1".parse().unwrap()])];
        let egress = DirectEgress::new(Duration::from_secs(2), Duration::from_secs(2))
            .with_egress_dns(
                "corp",
                EgressDns {
                    servers: vec![server],
                    hosts: hosts.into_iter().collect(),
                },
            );
        let corp = EgressRoute {
            name: "corp".into(),
            source: Some("127.0.0.2".parse().unwrap()),
        };

        // A static entry: no query is sent.
        egress.connect_tcp(&corp, "LAB.test.", port).await.unwrap();
        // Through the egress's name server, queried from the route's source address.
        egress
            .connect_tcp(&corp, "svc.corp.test", port)
            .await
            .unwrap();
        let query = queries.recv().await.unwrap();
        assert_eq!((query.name.as_str(), query.qtype), ("svc.corp.test", 1));
        assert_eq!(query.from.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());

        // NXDOMAIN: 502 dns_error.
        let error = egress
            .connect_tcp(&corp, "nope.corp.test", port)
            .await
            .unwrap_err();
        assert_eq!(error.status(), (502, ProxyError::DnsError), "{error}");
        assert!(error.details().contains("NXDOMAIN"), "{error}");
        // UDP goes the same way.
        egress.bind_udp(&corp, "svc.corp.test", port).await.unwrap();

        // A name server nobody runs: 504 dns_timeout.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let slow = DirectEgress::new(Duration::from_millis(300), Duration::from_secs(1))
            .with_egress_dns(
                "corp",
                EgressDns {
                    servers: vec![silent.local_addr().unwrap()],
                    hosts: BTreeMap::new(),
                },
            );
        let error = slow
            .connect_tcp(&corp, "svc.corp.test", port)
            .await
            .unwrap_err();
        assert_eq!(error.status(), (504, ProxyError::DnsTimeout), "{error}");

        // Only IPv6 name servers for an IPv4 source: refused, not sent elsewhere.
        let v6_only = DirectEgress::default().with_egress_dns(
            "corp",
            EgressDns::new(&["::1".parse().unwrap()], BTreeMap::new()),
        );
        let error = v6_only
            .connect_tcp(&corp, "svc.corp.test", port)
            .await
            .unwrap_err();
        assert_eq!(error.status(), (502, ProxyError::DnsError), "{error}");
        // Another egress without DNS settings keeps the system resolver.
        v6_only
            .connect_tcp(&route(None), "localhost", port)
            .await
            .unwrap();
    }
}
