//! One HTTP/3 connection: the handshake outcome, the device identity, and every request on
//! it (RFC 9114; classic CONNECT §4.4; extended CONNECT RFC 9220 with connect-udp, RFC 9298).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connect_tcp::{splice, RequestStream, SpliceEnd};
use crate::connect_udp::{read_datagrams, relay_udp, DatagramRoutes, UdpEnd, UdpPathTemplate};
use crate::egress::EgressError;
use crate::identity::device_identity;
use crate::proxy_status::{proxy_status, ProxyError};
use crate::server::{RelayStats, Shared};
use crate::target::Target;
use crate::{
    Authorizer, DeviceIdentity, Egress, EgressRoute, Protocol, RelayDecision, RelayRequest,
};

/// H3_GENERAL_PROTOCOL_ERROR (RFC 9114 §8.1): closes a connection whose certificate carries
/// no device identity.
const H3_GENERAL_PROTOCOL_ERROR: u32 = 0x101;

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;

/// The device and path of one connection.
#[derive(Debug)]
struct Peer {
    device: DeviceIdentity,
    address: SocketAddr,
    connection: quinn::Connection,
    datagrams: Arc<DatagramRoutes>,
}

/// Increments a gauge for as long as it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn new(counter: &'a AtomicU64) -> Gauge<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Gauge(counter)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Completes the handshake of `incoming`, reads the device identity and serves requests until
/// the connection ends.
pub(crate) async fn serve_connection<A: Authorizer, E: Egress>(
    incoming: quinn::Incoming,
    shared: Arc<Shared<A, E>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stats = &shared.stats;
    let address = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            // With TLS 1.3 the client finishes first; a bad client certificate surfaces
            // here as a CONNECTION_CLOSE with a crypto error 0x100 + alert (RFC 9001 §4.8).
            count(&stats.handshake_failures);
            warn!(peer = %address, reason = %error, "relay: TLS handshake failed");
            return;
        }
    };
    count(&stats.connections_accepted);
    let _active = Gauge::new(&stats.connections_active);

    let device = match peer_device(&connection, &shared.identity) {
        Ok(device) => device,
        Err(reason) => {
            count(&stats.identity_failures);
            warn!(peer = %address, %reason, "relay: refusing connection without device identity");
            connection.close(
                quinn::VarInt::from_u32(H3_GENERAL_PROTOCOL_ERROR),
                reason.as_bytes(),
            );
            return;
        }
    };
    info!(peer = %address, device = %device.serial, source = %device.source, "relay: device connected");
    let peer = Arc::new(Peer {
        device,
        address,
        connection: connection.clone(),
        datagrams: Arc::new(DatagramRoutes::default()),
    });

    let mut h3_conn = match h3::server::builder()
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_field_section_size(shared.limits.max_header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone()))
        .await
    {
        Ok(h3_conn) => h3_conn,
        Err(error) => {
            warn!(peer = %address, device = %peer.device.serial, %error, "relay: HTTP/3 setup failed");
            return;
        }
    };

    let _datagram_reader = AbortOnDrop(tokio::spawn(read_datagrams(
        connection.clone(),
        peer.datagrams.clone(),
        shared.stats.clone(),
    )));
    let mut requests = JoinSet::new();
    let mut closing = false;
    loop {
        tokio::select! {
            accepted = h3_conn.accept() => match accepted {
                Ok(Some(resolver)) => {
                    requests.spawn(handle_request(resolver, peer.clone(), shared.clone()));
                }
                Ok(None) => break,
                Err(error) => {
                    if error.is_h3_no_error() {
                        debug!(peer = %address, device = %peer.device.serial, "relay: connection closed");
                    } else {
                        info!(peer = %address, device = %peer.device.serial, %error, "relay: connection ended");
                    }
                    break;
                }
            },
            _ = shutdown.changed(), if !closing => {
                closing = true;
                // RFC 9114 §5.2: GOAWAY, then let the accepted requests finish.
                // The connection then stays until the device closes it, or the relay's grace
                // period ends: closing it as soon as the last request ended could discard
                // stream data the device has not acknowledged yet (invariant 3).
                if let Err(error) = h3_conn.shutdown(0).await {
                    debug!(peer = %address, %error, "relay: GOAWAY not sent");
                }
            }
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The device identity of the verified end-entity certificate.
fn peer_device(
    connection: &quinn::Connection,
    sources: &[crate::IdentitySource],
) -> Result<DeviceIdentity, String> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no client certificate".to_string())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "empty client certificate chain".to_string())?;
    device_identity(leaf, sources).map_err(|e| e.to_string())
}

/// A request refused before it reaches the authorizer.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    details: String,
}

/// Accepts classic CONNECT with a valid `host:port` (RFC 9114 §4.4) and connect-udp with a
/// path that matches one of `udp_paths` (RFC 9298 §3.4).
fn classify(
    request: &Request<()>,
    udp_paths: &[UdpPathTemplate],
    stats: &RelayStats,
) -> Result<(Protocol, Target), Rejection> {
    let reject = |status: StatusCode, details: String| {
        if status == StatusCode::BAD_REQUEST {
            count(&stats.malformed_requests);
        } else {
            count(&stats.unsupported_requests);
        }
        Rejection { status, details }
    };
    if request.method() != Method::CONNECT {
        return Err(reject(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "method {} is not served; this is a CONNECT relay",
                request.method()
            ),
        ));
    }
    let uri = request.uri();
    if let Some(protocol) = request.extensions().get::<h3::ext::Protocol>() {
        // Extended CONNECT (RFC 9220).
        if *protocol != h3::ext::Protocol::CONNECT_UDP {
            return Err(reject(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "extended CONNECT with :protocol {} is not served",
                    protocol.as_str()
                ),
            ));
        }
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or_default();
        return match udp_paths.iter().find_map(|t| t.match_path(path)) {
            Some(Ok(target)) => Ok((Protocol::Udp, target)),
            Some(Err(error)) => Err(reject(StatusCode::BAD_REQUEST, error.to_string())),
            None => Err(reject(
                StatusCode::BAD_REQUEST,
                format!("connect-udp path {path} matches no URI template of this relay"),
            )),
        };
    }
    if uri.scheme().is_some() || uri.path_and_query().is_some() {
        // RFC 9114 §4.4: ":scheme and :path pseudo-header fields are omitted".
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "classic CONNECT carries :authority only, no :scheme or :path".to_string(),
        ));
    }
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    Target::parse_authority(authority)
        .map(|target| (Protocol::Tcp, target))
        .map_err(|e| reject(StatusCode::BAD_REQUEST, e.to_string()))
}

/// A response with an optional Proxy-Status field.
fn response(status: StatusCode, proxy_status: Option<String>) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Some(value) = proxy_status.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("proxy-status", value);
    }
    response
}

/// Sends a final, body-less answer and ends the stream.
async fn answer(stream: &mut RequestStream, response: Response<()>) {
    let status = response.status();
    if let Err(error) = stream.send_response(response).await {
        debug!(%status, %error, "relay: answer not delivered");
        return;
    }
    if let Err(error) = stream.finish().await {
        debug!(%status, %error, "relay: stream not finished");
    }
}

async fn handle_request<A: Authorizer, E: Egress>(
    resolver: Resolver,
    peer: Arc<Peer>,
    shared: Arc<Shared<A, E>>,
) {
    let stats = &shared.stats;
    let device = &peer.device.serial;
    let (request, mut stream) = match resolver.resolve_request().await {
        Ok(resolved) => resolved,
        Err(error) => {
            // Malformed header sections are reset by h3 with H3_MESSAGE_ERROR (RFC 9114
            // §4.1.2) before they reach us.
            count(&stats.malformed_requests);
            debug!(%device, %error, "relay: request refused by HTTP/3");
            return;
        }
    };
    count(&stats.requests);
    let (protocol, target) = match classify(&request, &shared.udp_paths, stats) {
        Ok(classified) => classified,
        Err(rejection) => {
            info!(%device, method = %request.method(), status = %rejection.status, details = %rejection.details, "relay: request rejected");
            let value = proxy_status(
                &shared.proxy_name,
                ProxyError::HttpRequestError,
                Some(&rejection.details),
            );
            answer(&mut stream, response(rejection.status, Some(value))).await;
            return;
        }
    };

    let decision = shared.authorizer.authorize(&RelayRequest {
        device: &peer.device,
        host: &target.host,
        port: target.port,
        protocol,
        peer: peer.address,
        now: SystemTime::now(),
    });
    let route = match decision {
        RelayDecision::Deny { status } => {
            count(&stats.denied);
            info!(%device, %target, status = status.code(), "relay: denied");
            let value = proxy_status(
                &shared.proxy_name,
                ProxyError::ConnectionRefused,
                Some("denied by policy"),
            );
            let status = StatusCode::from_u16(status.code()).unwrap_or(StatusCode::BAD_GATEWAY);
            answer(&mut stream, response(status, Some(value))).await;
            return;
        }
        RelayDecision::Direct => {
            count(&stats.direct);
            info!(%device, %target, "relay: go direct");
            let value = proxy_status(
                &shared.proxy_name,
                ProxyError::DestinationUnavailable,
                Some("not relayed: go direct"),
            );
            answer(
                &mut stream,
                response(StatusCode::SERVICE_UNAVAILABLE, Some(value)),
            )
            .await;
            return;
        }
        RelayDecision::Forward { egress } => egress,
    };

    match protocol {
        Protocol::Tcp => forward_tcp(stream, &target, &route, &peer, &shared).await,
        Protocol::Udp => forward_udp(stream, &target, &route, &peer, &shared).await,
    }
}

/// Answers a failed egress with its status and Proxy-Status.
async fn egress_failed<A: Authorizer, E: Egress>(
    mut stream: RequestStream,
    error: EgressError,
    target: &Target,
    route: &EgressRoute,
    peer: &Peer,
    shared: &Shared<A, E>,
) {
    count(&shared.stats.egress_failures);
    let (status, kind) = error.status();
    info!(device = %peer.device.serial, %target, egress = %route.name, %error, "relay: target not reached");
    let value = proxy_status(&shared.proxy_name, kind, Some(&error.details()));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    answer(&mut stream, response(status, Some(value))).await;
}

/// Classic CONNECT: dial first, answer 200 only once the target is reached (RFC 9114 §4.4),
/// then splice.
async fn forward_tcp<A: Authorizer, E: Egress>(
    mut stream: RequestStream,
    target: &Target,
    route: &EgressRoute,
    peer: &Peer,
    shared: &Shared<A, E>,
) {
    let stats = &shared.stats;
    let device = &peer.device.serial;
    let timeout = shared.limits.connect_timeout;
    let connected = tokio::time::timeout(
        timeout,
        shared.egress.connect_tcp(route, &target.host, target.port),
    )
    .await
    .unwrap_or(Err(EgressError::Timeout(timeout)));
    let tcp = match connected {
        Ok(tcp) => tcp,
        Err(error) => return egress_failed(stream, error, target, route, peer, shared).await,
    };
    if let Err(error) = stream.send_response(response(StatusCode::OK, None)).await {
        debug!(%device, %target, %error, "relay: 200 not delivered");
        return;
    }
    count(&stats.flows_opened);
    let _flow = Gauge::new(&stats.flows_active);
    info!(%device, %target, egress = %route.name, source = ?route.source, "relay: TCP flow opened");
    match splice(stream, tcp, stats).await {
        SpliceEnd::Finished { up, down } => {
            info!(%device, %target, egress = %route.name, up, down, "relay: TCP flow closed")
        }
        SpliceEnd::Device(error) => {
            info!(%device, %target, egress = %route.name, %error, "relay: TCP flow ended by the device side; target reset")
        }
        SpliceEnd::Target(error) => {
            info!(%device, %target, egress = %route.name, %error, "relay: TCP flow ended by the target side; stream reset")
        }
    }
}

/// connect-udp: open the UDP socket, answer 200 with `capsule-protocol: ?1` (RFC 9298 §3.5,
/// RFC 9297 §3.4), then relay datagrams until the device ends the stream.
async fn forward_udp<A: Authorizer, E: Egress>(
    mut stream: RequestStream,
    target: &Target,
    route: &EgressRoute,
    peer: &Peer,
    shared: &Shared<A, E>,
) {
    let stats = &shared.stats;
    let device = &peer.device.serial;
    let timeout = shared.limits.connect_timeout;
    let bound = tokio::time::timeout(
        timeout,
        shared.egress.bind_udp(route, &target.host, target.port),
    )
    .await
    .unwrap_or(Err(EgressError::Timeout(timeout)));
    let socket = match bound {
        Ok(socket) => socket,
        Err(error) => return egress_failed(stream, error, target, route, peer, shared).await,
    };
    // Registered before the 200 so that datagrams sent right after it are not dropped.
    let (datagrams, _route) = peer.datagrams.register(stream.id().into_inner());
    let mut ok = response(StatusCode::OK, None);
    ok.headers_mut()
        .insert("capsule-protocol", HeaderValue::from_static("?1"));
    if let Err(error) = stream.send_response(ok).await {
        debug!(%device, %target, %error, "relay: 200 not delivered");
        return;
    }
    count(&stats.flows_opened);
    let _flow = Gauge::new(&stats.flows_active);
    info!(%device, %target, egress = %route.name, source = ?route.source, "relay: UDP flow opened");
    match relay_udp(stream, socket, datagrams, peer.connection.clone(), stats).await {
        UdpEnd::Finished => info!(%device, %target, egress = %route.name, "relay: UDP flow closed"),
        UdpEnd::Device(error) => {
            info!(%device, %target, egress = %route.name, %error, "relay: UDP flow ended by the device side")
        }
        UdpEnd::Malformed(error) => {
            count(&stats.malformed_requests);
            info!(%device, %target, egress = %route.name, %error, "relay: UDP flow reset: malformed capsule")
        }
    }
}
