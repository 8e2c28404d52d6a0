//! The relay as the appliance starts it: configuration, the QUIC endpoints and TCP
//! listeners, counters, flows and revocation, and shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::connect_udp::{UdpPathTemplate, WELL_KNOWN_UDP_PATH};
use crate::flows::{FlowInfo, FlowRegistry};
use crate::request::HeaderSecret;
use crate::tls::{TlsError, TlsFiles, TlsMaterial};
use crate::{Authorizer, Egress, IdentitySource};

/// Unidirectional streams a device may have open at once (see `quic_server_config`).
const MAX_UNI_STREAMS: u32 = 8;

/// H3_NO_ERROR (RFC 9114 §8.1), the code a graceful close uses.
const H3_NO_ERROR: u32 = 0x100;

/// Limits of both listeners (`[relay.limits]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayLimits {
    /// PING interval on quiet connections (QUIC PING, RFC 9000 §19.2; HTTP/2 PING, RFC 9113
    /// §6.7), so NATs keep the path open.
    pub keepalive_interval: Duration,
    /// A QUIC connection with no traffic (keepalives count) for this long is closed (RFC
    /// 9000 §10.1); an HTTP/2 connection whose PING goes unanswered this long is closed.
    /// There is no per-stream idle timeout: push channels keep CONNECT streams idle for
    /// hours.
    pub connection_idle_timeout: Duration,
    /// Concurrent request streams per connection (QUIC MAX_STREAMS, RFC 9000 §4.6;
    /// SETTINGS_MAX_CONCURRENT_STREAMS, RFC 9113 §6.5.2). Default 100, the least RFC 9114
    /// §6.1 advises. quinn keeps state for every stream the peer may open, so this sets the
    /// memory of an idle connection (at 256, about 20 KiB more each).
    pub max_streams_per_connection: u32,
    /// Connections one device (serial) may have open over both listeners; more are refused
    /// (H3_EXCESSIVE_LOAD on HTTP/3, GOAWAY ENHANCE_YOUR_CALM on HTTP/2) and counted.
    pub max_connections_per_device: u32,
    /// The largest request header section accepted (SETTINGS_MAX_FIELD_SECTION_SIZE, RFC 9114
    /// §7.2.4.1; SETTINGS_MAX_HEADER_LIST_SIZE, RFC 9113 §6.5.2).
    pub max_header_bytes: u64,
    /// How long the TLS handshake and the HTTP/2 preface may take on the HTTP/2 listener
    /// (QUIC handshakes are bounded by the idle timeout).
    pub handshake_timeout: Duration,
    /// How long a forwarded request may take to reach its target before it is answered 504.
    pub connect_timeout: Duration,
    /// A classic CONNECT flow that carried no byte either way for this long is ended (stream
    /// reset H3_NO_ERROR / NO_ERROR, target TCP reset). `None`, the default: flows may idle
    /// for as long as their connection lives (push channels do, for hours).
    pub stream_idle_timeout: Option<Duration>,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            keepalive_interval: Duration::from_secs(25),
            connection_idle_timeout: Duration::from_secs(600),
            max_streams_per_connection: 100,
            max_connections_per_device: 16,
            max_header_bytes: 16 * 1024,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            stream_idle_timeout: None,
        }
    }
}

/// What the relay is started with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// UDP addresses of the HTTP/3 listener.
    pub http3_listen: Vec<SocketAddr>,
    /// TCP addresses of the HTTP/2 listener (Apple's `HTTP2RelayURL`). A relay runs either
    /// listener or both.
    pub http2_listen: Vec<SocketAddr>,
    pub tls: TlsFiles,
    /// Where the device serial is read, in order.
    pub identity: Vec<IdentitySource>,
    pub limits: RelayLimits,
    /// The name the relay gives itself in Proxy-Status (RFC 9209 §2).
    pub proxy_name: String,
    /// A connect-udp URI template path (RFC 9298 §2) accepted besides the well-known
    /// `/.well-known/masque/udp/{target_host}/{target_port}/`.
    pub udp_path: Option<String>,
    /// A header every request must carry, on both listeners; requests without it get 403.
    pub header_secret: Option<HeaderSecret>,
}

impl RelayConfig {
    /// A configuration with the documented defaults: identity from the PermanentIdentifier,
    /// then Apple's serial extension; default limits; Proxy-Status name `attestgate`; no
    /// HTTP/2 listener and no header secret.
    pub fn new(http3_listen: Vec<SocketAddr>, tls: TlsFiles) -> RelayConfig {
        RelayConfig {
            http3_listen,
            http2_listen: Vec::new(),
            tls,
            identity: vec![
                IdentitySource::PermanentIdentifier,
                IdentitySource::AppleSerialOid,
            ],
            limits: RelayLimits::default(),
            proxy_name: "attestgate".to_string(),
            udp_path: None,
            header_secret: None,
        }
    }
}

/// Why the relay did not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("relay TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("relay TLS: QUIC refused the TLS configuration: {0}")]
    Quic(String),
    #[error("relay.http3_listen: binding UDP {address}: {error}")]
    Bind {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("relay.http2_listen: binding TCP {address}: {error}")]
    BindTcp {
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("relay: no listener: both http3_listen and http2_listen are empty")]
    NoListener,
    #[error("relay.identity: no identity source configured")]
    NoIdentitySource,
    #[error("relay.udp_path: {0}")]
    UdpPath(String),
    #[error("relay.limits.{key}: {detail}")]
    Limits { key: &'static str, detail: String },
    #[error("the relay must be started inside a tokio runtime")]
    NoRuntime,
}

/// Counters, updated as the relay runs. Read them with [`RelayStats::snapshot`].
#[derive(Debug, Default)]
pub struct RelayStats {
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) identity_failures: AtomicU64,
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_active: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) malformed_requests: AtomicU64,
    pub(crate) unsupported_requests: AtomicU64,
    pub(crate) denied: AtomicU64,
    pub(crate) direct: AtomicU64,
    pub(crate) egress_failures: AtomicU64,
    pub(crate) flows_opened: AtomicU64,
    pub(crate) flows_active: AtomicU64,
    pub(crate) bytes_from_devices: AtomicU64,
    pub(crate) bytes_to_devices: AtomicU64,
    pub(crate) datagrams_dropped: AtomicU64,
    pub(crate) header_secret_refusals: AtomicU64,
    pub(crate) device_limit_refusals: AtomicU64,
    pub(crate) flows_revoked: AtomicU64,
    pub(crate) connections_revoked: AtomicU64,
    pub(crate) http2_streams_refused: AtomicU64,
    pub(crate) http2_protocol_errors: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatsSnapshot {
    /// TLS/QUIC handshakes that failed on either listener (no, foreign, expired or revoked
    /// client certificate, ALPN mismatch, a client that gave up or took too long).
    pub handshake_failures: u64,
    /// Verified certificates that carried no device identity; the connection was closed.
    pub identity_failures: u64,
    pub connections_accepted: u64,
    pub connections_active: u64,
    pub requests: u64,
    /// Requests answered 400, reset by the HTTP/3 layer as malformed (RFC 9114 §4.1.2), or
    /// connect-udp flows reset for a malformed capsule. (Malformed HTTP/2 requests that h2
    /// refuses itself are counted in `http2_streams_refused`.)
    pub malformed_requests: u64,
    /// Requests answered 501 (methods other than CONNECT, extended CONNECT other than
    /// connect-udp).
    pub unsupported_requests: u64,
    pub denied: u64,
    pub direct: u64,
    /// Forwarded requests whose egress could not reach the target.
    pub egress_failures: u64,
    pub flows_opened: u64,
    pub flows_active: u64,
    pub bytes_from_devices: u64,
    pub bytes_to_devices: u64,
    /// HTTP Datagrams dropped: for no open flow, an unknown context ID, a full queue, or too
    /// large for the path.
    pub datagrams_dropped: u64,
    /// Requests refused with 403 for a missing or wrong header secret.
    pub header_secret_refusals: u64,
    /// Connections refused because their device had `max_connections_per_device` open.
    pub device_limit_refusals: u64,
    /// Flows reset by [`RelayHandle::revoke`] or [`RelayHandle::revoke_certificate`].
    pub flows_revoked: u64,
    /// Connections closed by [`RelayHandle::revoke_certificate`].
    pub connections_revoked: u64,
    /// HTTP/2 request streams that h2 refused before the relay saw them: a malformed header
    /// section (RST_STREAM PROTOCOL_ERROR, RFC 9113 §8.1.1), one over `max_header_bytes`
    /// (431, then REFUSED_STREAM), one beyond `max_streams_per_connection`. Counted from the
    /// gap in the stream IDs when the connection's next request arrives (client streams are
    /// opened in order, RFC 9113 §5.1.1), so a refused last stream is not counted.
    pub http2_streams_refused: u64,
    /// HTTP/2 connections that h2 closed for the device's protocol error (GOAWAY with
    /// PROTOCOL_ERROR, COMPRESSION_ERROR, ENHANCE_YOUR_CALM…; h2 treats some malformed
    /// header sections, such as an unknown pseudo-header field, as connection errors).
    pub http2_protocol_errors: u64,
}

impl RelayStats {
    pub fn snapshot(&self) -> RelayStatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        RelayStatsSnapshot {
            handshake_failures: get(&self.handshake_failures),
            identity_failures: get(&self.identity_failures),
            connections_accepted: get(&self.connections_accepted),
            connections_active: get(&self.connections_active),
            requests: get(&self.requests),
            malformed_requests: get(&self.malformed_requests),
            unsupported_requests: get(&self.unsupported_requests),
            denied: get(&self.denied),
            direct: get(&self.direct),
            egress_failures: get(&self.egress_failures),
            flows_opened: get(&self.flows_opened),
            flows_active: get(&self.flows_active),
            bytes_from_devices: get(&self.bytes_from_devices),
            bytes_to_devices: get(&self.bytes_to_devices),
            datagrams_dropped: get(&self.datagrams_dropped),
            header_secret_refusals: get(&self.header_secret_refusals),
            device_limit_refusals: get(&self.device_limit_refusals),
            flows_revoked: get(&self.flows_revoked),
            connections_revoked: get(&self.connections_revoked),
            http2_streams_refused: get(&self.http2_streams_refused),
            http2_protocol_errors: get(&self.http2_protocol_errors),
        }
    }
}

/// Adds one to a counter.
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Increments a gauge for as long as it lives.
#[derive(Debug)]
pub(crate) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub(crate) fn new(counter: &'a AtomicU64) -> Gauge<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every connection task shares.
#[derive(Debug)]
pub(crate) struct Shared<A, E> {
    pub authorizer: Arc<A>,
    pub egress: Arc<E>,
    pub stats: Arc<RelayStats>,
    pub identity: Vec<IdentitySource>,
    pub limits: RelayLimits,
    pub proxy_name: String,
    /// connect-udp templates: the well-known one, then the configured one.
    pub udp_paths: Vec<UdpPathTemplate>,
    pub header_secret: Option<HeaderSecret>,
    pub flows: Arc<FlowRegistry>,
}

/// The relay.
#[derive(Debug)]
pub struct Relay;

impl Relay {
    /// Loads TLS, binds every HTTP/3 (UDP) and HTTP/2 (TCP) address and starts serving. Must
    /// be called inside a tokio runtime; the relay runs on it until [`RelayHandle::shutdown`]
    /// or until the handle is dropped.
    pub fn bind<A: Authorizer, E: Egress>(
        config: RelayConfig,
        authorizer: Arc<A>,
        egress: Arc<E>,
    ) -> Result<RelayHandle, RelayError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| RelayError::NoRuntime)?;
        if config.http3_listen.is_empty() && config.http2_listen.is_empty() {
            return Err(RelayError::NoListener);
        }
        if config.identity.is_empty() {
            return Err(RelayError::NoIdentitySource);
        }
        if config.limits.max_connections_per_device == 0 {
            return Err(RelayError::Limits {
                key: "max_connections_per_device",
                detail: "must be at least 1".into(),
            });
        }
        let mut udp_paths =
            vec![UdpPathTemplate::parse(WELL_KNOWN_UDP_PATH).map_err(RelayError::UdpPath)?];
        if let Some(template) = &config.udp_path {
            udp_paths.push(UdpPathTemplate::parse(template).map_err(RelayError::UdpPath)?);
        }
        let material = TlsMaterial::load(&config.tls)?;
        let server_config = quic_server_config(&config, &material)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(material.h2_server_config()?));
        // quinn and tokio look the runtime up from the calling context.
        let _guard = runtime.enter();

        let mut endpoints = Vec::new();
        let mut local_addrs = Vec::new();
        for address in &config.http3_listen {
            let bind_error = |error| RelayError::Bind {
                address: *address,
                error,
            };
            let endpoint =
                quinn::Endpoint::server(server_config.clone(), *address).map_err(bind_error)?;
            local_addrs.push(endpoint.local_addr().map_err(bind_error)?);
            endpoints.push(endpoint);
        }
        let mut tcp_listeners = Vec::new();
        let mut http2_local_addrs = Vec::new();
        for address in &config.http2_listen {
            let bind_error = |error| RelayError::BindTcp {
                address: *address,
                error,
            };
            let listener = std::net::TcpListener::bind(address)
                .and_then(|listener| {
                    listener.set_nonblocking(true)?;
                    tokio::net::TcpListener::from_std(listener)
                })
                .map_err(bind_error)?;
            http2_local_addrs.push(listener.local_addr().map_err(bind_error)?);
            tcp_listeners.push(listener);
        }

        let stats = Arc::new(RelayStats::default());
        let flows = Arc::new(FlowRegistry::default());
        let shared = Arc::new(Shared {
            authorizer,
            egress,
            stats: stats.clone(),
            identity: config.identity,
            limits: config.limits,
            proxy_name: config.proxy_name,
            udp_paths,
            header_secret: config.header_secret,
            flows: flows.clone(),
        });
        let (shutdown, shutdown_rx) = watch::channel(false);
        let accept_loops = endpoints
            .iter()
            .map(|endpoint| {
                runtime.spawn(accept_loop(
                    endpoint.clone(),
                    shared.clone(),
                    shutdown_rx.clone(),
                ))
            })
            .collect();
        let http2_accept_loops = tcp_listeners
            .into_iter()
            .map(|listener| {
                runtime.spawn(crate::h2::accept_loop(
                    listener,
                    acceptor.clone(),
                    shared.clone(),
                    shutdown_rx.clone(),
                ))
            })
            .collect();
        for address in &local_addrs {
            tracing::info!(listen = %address, "relay: HTTP/3 listening");
        }
        for address in &http2_local_addrs {
            tracing::info!(listen = %address, "relay: HTTP/2 listening");
        }
        Ok(RelayHandle {
            local_addrs,
            http2_local_addrs,
            stats,
            flows,
            endpoints,
            shutdown,
            accept_loops,
            http2_accept_loops,
        })
    }
}

fn quic_server_config(
    config: &RelayConfig,
    material: &TlsMaterial,
) -> Result<quinn::ServerConfig, RelayError> {
    let limits = &config.limits;
    if limits.keepalive_interval >= limits.connection_idle_timeout {
        return Err(RelayError::Limits {
            key: "connection_idle_timeout",
            detail: format!(
                "{:?} must exceed keepalive_interval ({:?})",
                limits.connection_idle_timeout, limits.keepalive_interval
            ),
        });
    }
    if limits.max_streams_per_connection == 0 {
        return Err(RelayError::Limits {
            key: "max_streams_per_connection",
            detail: "must be at least 1".into(),
        });
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(material.h3_server_config()?)
        .map_err(|e| RelayError::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(limits.keepalive_interval));
    let idle = quinn::IdleTimeout::try_from(limits.connection_idle_timeout).map_err(|_| {
        RelayError::Limits {
            key: "connection_idle_timeout",
            detail: "too long for QUIC".into(),
        }
    })?;
    transport.max_idle_timeout(Some(idle));
    transport
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(limits.max_streams_per_connection));
    // The device's unidirectional streams: its control and QPACK streams (RFC 9114 §6.2
    // asks for at least three), with room for reserved stream types (grease, §6.2.3); quinn
    // keeps state for each one allowed, 100 by default.
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_UNI_STREAMS));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

async fn accept_loop<A: Authorizer, E: Egress>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<A, E>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut stopping = false;
    loop {
        tokio::select! {
            incoming = endpoint.accept() => match incoming {
                // While stopping, new connections get CONNECTION_REFUSED (RFC 9000 §20.1)
                // at once instead of waiting for a handshake that never comes.
                Some(incoming) if stopping => incoming.refuse(),
                Some(incoming) => {
                    connections.spawn(crate::h3::serve_connection(
                        incoming,
                        shared.clone(),
                        shutdown.clone(),
                    ));
                }
                None => break,
            },
            // Connections see the shutdown too: they send GOAWAY and end when the device
            // closes them (or when the endpoint is closed after the grace period).
            _ = shutdown.changed(), if !stopping => {
                stopping = true;
                if connections.is_empty() {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if stopping && connections.is_empty() {
                    break;
                }
            }
        }
    }
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    local_addrs: Vec<SocketAddr>,
    http2_local_addrs: Vec<SocketAddr>,
    stats: Arc<RelayStats>,
    flows: Arc<FlowRegistry>,
    endpoints: Vec<quinn::Endpoint>,
    shutdown: watch::Sender<bool>,
    accept_loops: Vec<JoinHandle<()>>,
    http2_accept_loops: Vec<JoinHandle<()>>,
}

impl RelayHandle {
    /// The first HTTP/3 address (with the port the kernel chose for port 0), or the first
    /// HTTP/2 address when there is no HTTP/3 listener.
    pub fn local_addr(&self) -> SocketAddr {
        // `bind` refuses a relay without any listener, so there is always one.
        self.local_addrs
            .first()
            .or(self.http2_local_addrs.first())
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Every HTTP/3 address, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Every HTTP/2 address, in configuration order.
    pub fn http2_local_addrs(&self) -> &[SocketAddr] {
        &self.http2_local_addrs
    }

    /// The live counters.
    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.stats
    }

    /// Every open CONNECT and connect-udp flow on both listeners, oldest first, with its
    /// byte counts at this moment. A flow is listed from its decision on (while the target
    /// is dialled too) until it ends.
    pub fn flows(&self) -> Vec<FlowInfo> {
        self.flows.flows()
    }

    /// Resets every open flow of device `serial` for which `keep` returns false: HTTP/3
    /// streams with H3_REQUEST_CANCELLED (RFC 9114 §8.1), HTTP/2 streams with RST_STREAM
    /// CANCEL (RFC 9113 §7), and their target connections with TCP RST. Returns how many
    /// flows were signalled; each resets as soon as its task runs (milliseconds). A request
    /// being decided while this runs is decided again, so no flow decided on the device's
    /// old state survives. `keep` is called without any relay lock held.
    pub fn revoke(&self, serial: &str, keep: impl Fn(&FlowInfo) -> bool) -> usize {
        let revoked = self.flows.revoke(serial, keep);
        tracing::info!(device = %serial, flows = revoked, "relay: flows revoked");
        revoked
    }

    /// The device's certificate is no longer acceptable: resets all its flows and closes
    /// all its connections on both listeners (HTTP/3 CONNECTION_CLOSE H3_REQUEST_CANCELLED,
    /// HTTP/2 GOAWAY INADEQUATE_SECURITY). Returns how many connections were closed. New
    /// connections with the same certificate are refused only by the verifier (a CRL) or by
    /// the authorizer's decisions.
    pub fn revoke_certificate(&self, serial: &str) -> usize {
        let flows = self.flows.revoke(serial, |_| false);
        let connections = self.flows.close_connections(serial);
        tracing::info!(device = %serial, flows, connections, "relay: device certificate revoked");
        connections
    }

    /// Graceful stop: new connections are refused (QUIC CONNECTION_REFUSED; the HTTP/2
    /// listening sockets close), every connection gets GOAWAY (RFC 9114 §5.2, RFC 9113 §6.8)
    /// and keeps its open requests until the device closes it; after `grace`, whatever is
    /// left is closed.
    pub async fn shutdown(mut self, grace: Duration) {
        tracing::info!("relay: shutting down");
        let _ = self.shutdown.send(true);
        let loops = std::mem::take(&mut self.accept_loops);
        let http2_loops = std::mem::take(&mut self.http2_accept_loops);
        let abort_handles: Vec<_> = loops.iter().map(|l| l.abort_handle()).collect();
        let http2_abort_handles: Vec<_> = http2_loops.iter().map(|l| l.abort_handle()).collect();
        let all = async {
            for accept_loop in loops.into_iter().chain(http2_loops) {
                let _ = accept_loop.await;
            }
        };
        tokio::pin!(all);
        if tokio::time::timeout(grace, &mut all).await.is_err() {
            // Aborting an HTTP/2 accept loop drops its connections.
            http2_abort_handles.iter().for_each(|h| h.abort());
            for endpoint in &self.endpoints {
                endpoint.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"relay shutting down");
            }
            if tokio::time::timeout(Duration::from_secs(2), &mut all)
                .await
                .is_err()
            {
                abort_handles.iter().for_each(|h| h.abort());
            }
        }
        for endpoint in &self.endpoints {
            endpoint.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"relay shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

impl Drop for RelayHandle {
    /// Dropping the handle stops the relay at once.
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for endpoint in &self.endpoints {
            endpoint.close(quinn::VarInt::from_u32(H3_NO_ERROR), b"relay stopped");
        }
        for accept_loop in self.accept_loops.iter().chain(&self.http2_accept_loops) {
            accept_loop.abort();
        }
    }
}
