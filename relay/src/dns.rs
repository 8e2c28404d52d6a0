//! Name resolution through the chosen egress (`[egress.NAME] dns` and `hosts`): a target's
//! name is looked up where its traffic will leave, so a split-horizon name resolves to the
//! address the egress can reach.
//!
//! In order: an IP literal is used as it is; then the egress's static `hosts` entries (labs,
//! split horizon); then the egress's own name servers, asked with hickory-resolver over UDP
//! (TCP when the answer is truncated, RFC 7766 §5) from the route's source address, so that
//! the queries themselves leave through the egress; an egress without name servers uses the
//! host's resolver. No search domains are applied: a CONNECT names a host, the name is
//! queried as a fully qualified name (RFC 1034 §3.1).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol as DnsProtocol;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, TokioResolver};

use crate::egress::EgressError;
use crate::EgressRoute;

/// How one egress resolves names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressDns {
    /// Name servers reached through the egress (`ip:53` for a configured address). Empty: the
    /// host's resolver.
    pub servers: Vec<SocketAddr>,
    /// Static entries consulted before DNS: lowercase names without a trailing dot.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
}

impl EgressDns {
    /// Name servers on port 53 at `addresses`, and `hosts`.
    pub fn new(addresses: &[IpAddr], hosts: BTreeMap<String, Vec<IpAddr>>) -> EgressDns {
        EgressDns {
            servers: addresses
                .iter()
                .map(|ip| SocketAddr::new(*ip, 53))
                .collect(),
            hosts,
        }
    }
}

/// Every egress's DNS settings, and the hickory resolvers made from them on first use (one
/// per egress and source address: the queries are sent from the source the route binds).
#[derive(Default)]
pub(crate) struct Resolvers {
    egresses: BTreeMap<String, EgressDns>,
    cache: Mutex<HashMap<(String, Option<IpAddr>), TokioResolver>>,
}

impl fmt::Debug for Resolvers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolvers")
            .field("egresses", &self.egresses)
            .finish_non_exhaustive()
    }
}

/// What a lookup found, before the family filter of the caller.
pub(crate) enum Lookup {
    /// An answer: the IP literal, static entries or the egress's name servers.
    Found(Vec<IpAddr>),
    /// This egress has no name servers: ask the host's resolver.
    System,
}

impl Resolvers {
    /// These settings with `egress`'s set to `dns` (and no resolver made yet).
    pub(crate) fn with(&self, egress: String, dns: EgressDns) -> Resolvers {
        let mut egresses = self.egresses.clone();
        egresses.insert(egress, dns);
        Resolvers {
            egresses,
            cache: Mutex::default(),
        }
    }

    /// Looks `host` up for `route` within `timeout`.
    pub(crate) async fn lookup(
        &self,
        route: &EgressRoute,
        host: &str,
        timeout: Duration,
    ) -> Result<Lookup, EgressError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(Lookup::Found(vec![ip]));
        }
        let Some(dns) = self.egresses.get(&route.name) else {
            return Ok(Lookup::System);
        };
        let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if let Some(addresses) = dns.hosts.get(&name) {
            return Ok(Lookup::Found(addresses.clone()));
        }
        if dns.servers.is_empty() {
            return Ok(Lookup::System);
        }
        let resolver = self.resolver(route, dns, timeout, host)?;
        // The trailing dot makes the name fully qualified: no search list (RFC 1034 §3.1).
        let lookup = resolver.lookup_ip(format!("{name}."));
        match tokio::time::timeout(timeout, lookup).await {
            Err(_) => Err(EgressError::DnsTimeout {
                host: host.to_string(),
                timeout,
            }),
            Ok(Err(error)) => Err(resolve_error(host, timeout, &error)),
            Ok(Ok(answer)) => {
                let addresses: Vec<IpAddr> = answer.iter().collect();
                if addresses.is_empty() {
                    Err(EgressError::Dns {
                        host: host.to_string(),
                        detail: "no address records".to_string(),
                    })
                } else {
                    Ok(Lookup::Found(addresses))
                }
            }
        }
    }

    /// The resolver for `route`'s egress and source address, made on first use.
    fn resolver(
        &self,
        route: &EgressRoute,
        dns: &EgressDns,
        timeout: Duration,
        host: &str,
    ) -> Result<TokioResolver, EgressError> {
        let key = (route.name.clone(), route.source);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(resolver) = cache.get(&key) {
            return Ok(resolver.clone());
        }
        // A socket bound to an IPv4 source cannot reach an IPv6 server, and back.
        let servers: Vec<SocketAddr> = dns
            .servers
            .iter()
            .filter(|s| route.source.is_none_or(|src| src.is_ipv4() == s.is_ipv4()))
            .copied()
            .collect();
        if servers.is_empty() {
            return Err(EgressError::Dns {
                host: host.to_string(),
                detail: format!(
                    "egress {} has no name server of the source address's family",
                    route.name
                ),
            });
        }
        let mut config = ResolverConfig::new();
        for server in servers {
            for protocol in [DnsProtocol::Udp, DnsProtocol::Tcp] {
                let mut name_server = NameServerConfig::new(server, protocol);
                name_server.bind_addr = route.source.map(|ip| SocketAddr::new(ip, 0));
                config.add_name_server(name_server);
            }
        }
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.ndots = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.ip_strategy = match route.source {
            Some(IpAddr::V4(_)) => LookupIpStrategy::Ipv4Only,
            Some(IpAddr::V6(_)) => LookupIpStrategy::Ipv6Only,
            None => LookupIpStrategy::Ipv4thenIpv6,
        };
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(options)
                .build();
        cache.insert(key, resolver.clone());
        Ok(resolver)
    }
}

/// A hickory failure as the relay reports it: a timeout is `dns_timeout`, anything else
/// (NXDOMAIN, no records, SERVFAIL, refused) `dns_error` (RFC 9209 §2.3.1, §2.3.2).
fn resolve_error(host: &str, timeout: Duration, error: &ResolveError) -> EgressError {
    let host = host.to_string();
    if error
        .proto()
        .is_some_and(|p| matches!(p.kind(), ProtoErrorKind::Timeout))
    {
        return EgressError::DnsTimeout { host, timeout };
    }
    let detail = if error.is_nx_domain() {
        "no such name (NXDOMAIN)".to_string()
    } else if error.is_no_records_found() {
        "no address records".to_string()
    } else {
        error.to_string()
    };
    EgressError::Dns { host, detail }
}
