//! What both listeners do with a request, once their HTTP layer parsed it: the shared header
//! secret, the method and target (classic CONNECT, RFC 9114 §4.4 / RFC 9113 §8.5; extended
//! CONNECT with connect-udp, RFC 9220 / RFC 8441 and RFC 9298), the [`Authorizer`]'s
//! decision and its answer with Proxy-Status (RFC 9209), the flow registration, the egress,
//! then the TCP splice or the UDP relay.

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Uri};
use subtle::ConstantTimeEq;
use tracing::{debug, info};
use zeroize::Zeroizing;

use crate::connect_tcp::{splice, SpliceEnd};
use crate::connect_udp::{relay_udp, UdpEnd, UdpPathTemplate};
use crate::egress::EgressError;
use crate::flows::{Flow, FlowSpec, HttpVersion, Meter};
use crate::proxy_status::{proxy_status, ProxyError};
use crate::server::{count, Gauge, RelayStats, Shared};
use crate::stream::{DeviceRequest, ResetReason};
use crate::target::Target;
use crate::{
    Authorizer, DeviceIdentity, Egress, EgressRoute, Protocol, RelayDecision, RelayRequest,
};

/// The `details` of the answer to a request without the right header secret.
pub(crate) const SECRET_REFUSAL: &str = "missing or wrong relay header";

/// How many times a request is decided again when revocations keep racing with it.
const MAX_DECISIONS: usize = 8;

/// A header every request must carry with this exact value (`relay.header_secret`): a
/// second factor next to the client certificate, as Apple's relay payload can add headers
/// to every request. Compared in constant time (the length is not hidden); the value is
/// never printed and is zeroized when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct HeaderSecret {
    name: HeaderName,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for HeaderSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderSecret")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a header secret cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderSecretError {
    #[error("`{0}` is not a valid HTTP field name (lowercase token characters, RFC 9110 §5.1)")]
    BadName(String),
    #[error("`{0}` is an HTTP/2 and HTTP/3 connection field; pick another name")]
    ReservedName(String),
    #[error("the secret must be 16 to 1024 bytes of visible ASCII without spaces (it is {0} bytes or contains others)")]
    BadValue(usize),
}

impl HeaderSecret {
    /// A secret `value` expected in header `name`.
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Result<HeaderSecret, HeaderSecretError> {
        let value = Zeroizing::new(value.into());
        let parsed = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HeaderSecretError::BadName(name.to_string()))?;
        if parsed.as_str() != name {
            // Field names are lowercase on HTTP/2 and HTTP/3 (RFC 9113 §8.2.1).
            return Err(HeaderSecretError::BadName(name.to_string()));
        }
        // RFC 9113 §8.2.2: connection-specific fields are malformed on HTTP/2 and HTTP/3.
        if matches!(
            name,
            "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
        ) {
            return Err(HeaderSecretError::ReservedName(name.to_string()));
        }
        if !(16..=1024).contains(&value.len()) || !value.iter().all(|b| b.is_ascii_graphic()) {
            return Err(HeaderSecretError::BadValue(value.len()));
        }
        Ok(HeaderSecret {
            name: parsed,
            secret: value,
        })
    }

    /// The header's name.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    /// Whether `headers` carry the secret exactly once.
    pub(crate) fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter();
        match (values.next(), values.next()) {
            (Some(value), None) => bool::from(value.as_bytes().ct_eq(self.secret.as_slice())),
            _ => false,
        }
    }
}

/// The device and path of one connection.
#[derive(Debug, Clone)]
pub(crate) struct PeerInfo {
    pub device: DeviceIdentity,
    pub address: SocketAddr,
    pub http: HttpVersion,
}

/// The parts of a request the relay looks at.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// `:protocol` of an extended CONNECT (RFC 8441 §4, RFC 9220 §3).
    pub protocol: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A request refused before it reaches the authorizer.
#[derive(Debug)]
struct Rejection {
    status: StatusCode,
    details: String,
}

/// Accepts classic CONNECT with a valid `host:port` (RFC 9114 §4.4, RFC 9113 §8.5) and
/// connect-udp with a path that matches one of `udp_paths` (RFC 9298 §3.4).
fn classify(
    head: &RequestHead<'_>,
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
    if *head.method != Method::CONNECT {
        return Err(reject(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "method {} is not served; this is a CONNECT relay",
                head.method
            ),
        ));
    }
    let uri = head.uri;
    if let Some(protocol) = head.protocol {
        if protocol != "connect-udp" {
            return Err(reject(
                StatusCode::NOT_IMPLEMENTED,
                format!("extended CONNECT with :protocol {protocol} is not served"),
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
        // RFC 9114 §4.4, RFC 9113 §8.5: ":scheme and :path pseudo-header fields are omitted".
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
pub(crate) fn response(status: StatusCode, proxy_status: Option<String>) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Some(value) = proxy_status.and_then(|v| HeaderValue::from_str(&v).ok()) {
        response.headers_mut().insert("proxy-status", value);
    }
    response
}

/// Serves one request to its end.
pub(crate) async fn serve_request<Q: DeviceRequest, A: Authorizer, E: Egress>(
    head: RequestHead<'_>,
    exchange: Q,
    peer: &PeerInfo,
    shared: &Shared<A, E>,
) {
    let stats = &shared.stats;
    let device = &peer.device.serial;
    let http = peer.http;
    count(&stats.requests);
    let refuse = |status: StatusCode, error: ProxyError, details: &str| {
        response(
            status,
            Some(proxy_status(&shared.proxy_name, error, Some(details))),
        )
    };

    if let Some(secret) = &shared.header_secret {
        if !secret.matches(head.headers) {
            count(&stats.header_secret_refusals);
            info!(%device, %http, header = secret.name(), "relay: request without the header secret refused");
            let answer = refuse(
                StatusCode::FORBIDDEN,
                ProxyError::ConnectionRefused,
                SECRET_REFUSAL,
            );
            return exchange.answer(answer).await;
        }
    }

    let (protocol, target) = match classify(&head, &shared.udp_paths, stats) {
        Ok(classified) => classified,
        Err(rejection) => {
            info!(%device, %http, method = %head.method, status = %rejection.status, details = %rejection.details, "relay: request rejected");
            let answer = refuse(
                rejection.status,
                ProxyError::HttpRequestError,
                &rejection.details,
            );
            return exchange.answer(answer).await;
        }
    };

    // Decide, and register the flow at the generation read before deciding: a revoke in
    // between makes the registration fail, and the request is decided again (flows).
    let mut decided = None;
    for _ in 0..MAX_DECISIONS {
        let generation = shared.flows.generation();
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
                info!(%device, %http, %target, status = status.code(), "relay: denied");
                let status = StatusCode::from_u16(status.code()).unwrap_or(StatusCode::BAD_GATEWAY);
                let answer = refuse(status, ProxyError::ConnectionRefused, "denied by policy");
                return exchange.answer(answer).await;
            }
            RelayDecision::Refuse { details } => {
                count(&stats.denied);
                info!(%device, %http, %target, %details, "relay: refused");
                let answer = refuse(
                    StatusCode::BAD_GATEWAY,
                    ProxyError::ConnectionRefused,
                    &details,
                );
                return exchange.answer(answer).await;
            }
            RelayDecision::Direct => {
                count(&stats.direct);
                info!(%device, %http, %target, "relay: go direct");
                let answer = refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ProxyError::DestinationUnavailable,
                    "not relayed: go direct",
                );
                return exchange.answer(answer).await;
            }
            RelayDecision::Forward { egress } => egress,
        };
        let spec = FlowSpec {
            device: device.clone(),
            target: target.clone(),
            protocol,
            http,
            egress: route.name.clone(),
            peer: peer.address,
        };
        if let Some(flow) = shared.flows.register(spec, generation) {
            decided = Some((route, flow));
            break;
        }
    }
    let Some((route, flow)) = decided else {
        info!(%device, %http, %target, "relay: revocations kept racing with the decision; refused");
        let answer = refuse(
            StatusCode::BAD_GATEWAY,
            ProxyError::ProxyInternalError,
            "the decision could not settle; retry",
        );
        return exchange.answer(answer).await;
    };

    let context = FlowContext {
        target: &target,
        route: &route,
        flow,
        peer,
    };
    match protocol {
        Protocol::Tcp => forward_tcp(exchange, context, shared).await,
        Protocol::Udp => forward_udp(exchange, context, shared).await,
    }
}

/// A decided, registered flow.
struct FlowContext<'a> {
    target: &'a Target,
    route: &'a EgressRoute,
    flow: Flow,
    peer: &'a PeerInfo,
}

/// Runs `dial` under the connect timeout; `Err(None)` when the flow is revoked meanwhile.
async fn dial<T>(
    dial: impl std::future::Future<Output = Result<T, EgressError>>,
    context: &FlowContext<'_>,
    timeout: std::time::Duration,
) -> Result<T, Option<EgressError>> {
    tokio::select! {
        dialled = tokio::time::timeout(timeout, dial) => {
            dialled.unwrap_or(Err(EgressError::Timeout(timeout))).map_err(Some)
        }
        () = context.flow.revoked() => Err(None),
    }
}

/// Answers a failed dial: the egress error's status and Proxy-Status, or a reset when the
/// flow was revoked while dialling.
async fn dial_failed<Q: DeviceRequest, A: Authorizer, E: Egress>(
    exchange: Q,
    error: Option<EgressError>,
    context: &FlowContext<'_>,
    shared: &Shared<A, E>,
) {
    let device = &context.peer.device.serial;
    let (target, egress) = (context.target, &context.route.name);
    let Some(error) = error else {
        count(&shared.stats.flows_revoked);
        info!(%device, %target, %egress, "relay: flow revoked while dialling; stream cancelled");
        return exchange.reset(ResetReason::Cancelled);
    };
    count(&shared.stats.egress_failures);
    let (status, kind) = error.status();
    info!(%device, %target, %egress, %error, "relay: target not reached");
    let value = proxy_status(&shared.proxy_name, kind, Some(&error.details()));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    exchange.answer(response(status, Some(value))).await;
}

/// Classic CONNECT: dial first, answer 200 only once the target is reached (RFC 9114 §4.4,
/// RFC 9113 §8.5), then splice.
async fn forward_tcp<Q: DeviceRequest, A: Authorizer, E: Egress>(
    exchange: Q,
    context: FlowContext<'_>,
    shared: &Shared<A, E>,
) {
    let stats = &shared.stats;
    let (target, route) = (context.target, context.route);
    let connect = shared.egress.connect_tcp(route, &target.host, target.port);
    let tcp = match dial(connect, &context, shared.limits.connect_timeout).await {
        Ok(tcp) => tcp,
        Err(error) => return dial_failed(exchange, error, &context, shared).await,
    };
    if let Ok(local) = tcp.local_addr() {
        context.flow.set_source(local);
    }
    let device = &context.peer.device.serial;
    let (flow, egress, http) = (context.flow.id(), &route.name, context.peer.http);
    let (send, recv) = match exchange.accept(response(StatusCode::OK, None)).await {
        Ok(halves) => halves,
        Err(error) => return debug!(%device, %target, %error, "relay: 200 not delivered"),
    };
    count(&stats.flows_opened);
    let _active = Gauge::new(&stats.flows_active);
    info!(%device, %http, %target, flow, %egress, source = ?context.flow.source(), "relay: TCP flow opened");
    let meter = Meter {
        stats,
        flow: &context.flow,
    };
    let idle_timeout = shared.limits.stream_idle_timeout;
    match splice(send, recv, tcp, meter, context.flow.revoked(), idle_timeout).await {
        SpliceEnd::Finished { up, down } => {
            info!(%device, %target, flow, %egress, up, down, "relay: TCP flow closed")
        }
        SpliceEnd::Device(error) => {
            info!(%device, %target, flow, %egress, %error, "relay: TCP flow ended by the device side; target reset")
        }
        SpliceEnd::Target(error) => {
            info!(%device, %target, flow, %egress, %error, "relay: TCP flow ended by the target side; stream reset")
        }
        SpliceEnd::Idle => {
            info!(%device, %target, flow, %egress, timeout = ?idle_timeout, "relay: TCP flow idle; stream and target reset")
        }
        SpliceEnd::Revoked => {
            count(&stats.flows_revoked);
            info!(%device, %target, flow, %egress, "relay: TCP flow revoked; stream cancelled, target reset")
        }
    }
}

/// connect-udp: open the UDP socket, answer 200 with `capsule-protocol: ?1` (RFC 9298 §3.5,
/// RFC 9297 §3.4), then relay datagrams until the device ends the stream.
async fn forward_udp<Q: DeviceRequest, A: Authorizer, E: Egress>(
    exchange: Q,
    context: FlowContext<'_>,
    shared: &Shared<A, E>,
) {
    let stats = &shared.stats;
    let (target, route) = (context.target, context.route);
    let bind = shared.egress.bind_udp(route, &target.host, target.port);
    let socket = match dial(bind, &context, shared.limits.connect_timeout).await {
        Ok(socket) => socket,
        Err(error) => return dial_failed(exchange, error, &context, shared).await,
    };
    if let Ok(local) = socket.local_addr() {
        context.flow.set_source(local);
    }
    let device = &context.peer.device.serial;
    let (flow, egress, http) = (context.flow.id(), &route.name, context.peer.http);
    let quic = exchange.quic_datagrams();
    let mut ok = response(StatusCode::OK, None);
    ok.headers_mut()
        .insert("capsule-protocol", HeaderValue::from_static("?1"));
    let (send, recv) = match exchange.accept(ok).await {
        Ok(halves) => halves,
        Err(error) => return debug!(%device, %target, %error, "relay: 200 not delivered"),
    };
    count(&stats.flows_opened);
    let _active = Gauge::new(&stats.flows_active);
    info!(%device, %http, %target, flow, %egress, source = ?context.flow.source(), "relay: UDP flow opened");
    let meter = Meter {
        stats,
        flow: &context.flow,
    };
    match relay_udp(send, recv, socket, quic, meter, context.flow.revoked()).await {
        UdpEnd::Finished => info!(%device, %target, flow, %egress, "relay: UDP flow closed"),
        UdpEnd::Device(error) => {
            info!(%device, %target, flow, %egress, %error, "relay: UDP flow ended by the device side")
        }
        UdpEnd::Malformed(error) => {
            count(&stats.malformed_requests);
            info!(%device, %target, flow, %egress, %error, "relay: UDP flow reset: malformed capsule")
        }
        UdpEnd::Revoked => {
            count(&stats.flows_revoked);
            info!(%device, %target, flow, %egress, "relay: UDP flow revoked; stream cancelled")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_secret_matches_exactly_once() {
        let secret = HeaderSecret::new("x-relay-secret", "0123456789abcdef").unwrap();
        let mut headers = HeaderMap::new();
        assert!(!secret.matches(&headers));
        headers.insert(
            "x-relay-secret",
            HeaderValue::from_static("0123456789abcdeX"),
        );
        assert!(!secret.matches(&headers));
        headers.insert(
            "x-relay-secret",
            HeaderValue::from_static("0123456789abcdef"),
        );
        assert!(secret.matches(&headers));
        headers.append(
            "x-relay-secret",
            HeaderValue::from_static("0123456789abcdef"),
        );
        assert!(!secret.matches(&headers), "a repeated header is refused");
        headers.remove("x-relay-secret");
        headers.insert(
            "x-relay-secret",
            HeaderValue::from_static("0123456789abcde"),
        );
        assert!(!secret.matches(&headers), "a prefix is not the secret");
        assert!(!format!("{secret:?}").contains("0123"));
    }

    #[test]
    fn header_secret_validation() {
        assert!(matches!(
            HeaderSecret::new("X-Relay", "0123456789abcdef"),
            Err(HeaderSecretError::BadName(_))
        ));
        assert!(matches!(
            HeaderSecret::new("bad name", "0123456789abcdef"),
            Err(HeaderSecretError::BadName(_))
        ));
        assert!(matches!(
            HeaderSecret::new("connection", "0123456789abcdef"),
            Err(HeaderSecretError::ReservedName(_))
        ));
        assert_eq!(
            HeaderSecret::new("x-relay", "short"),
            Err(HeaderSecretError::BadValue(5))
        );
        assert!(HeaderSecret::new("x-relay", "0123456789 abcdef").is_err());
    }

    #[test]
    fn classify_requests() {
        let stats = RelayStats::default();
        let templates =
            vec![UdpPathTemplate::parse(crate::connect_udp::WELL_KNOWN_UDP_PATH).unwrap()];
        let headers = HeaderMap::new();
        let run = |method: Method, uri: &str, protocol: Option<&str>| {
            let uri: Uri = uri.parse().unwrap();
            let head = RequestHead {
                method: &method,
                uri: &uri,
                protocol,
                headers: &headers,
            };
            classify(&head, &templates, &stats)
                .map(|(p, t)| (p, t.to_string()))
                .map_err(|r| r.status.as_u16())
        };
        assert_eq!(
            run(Method::CONNECT, "login.example:443", None),
            Ok((Protocol::Tcp, "login.example:443".into()))
        );
        assert_eq!(
            run(
                Method::CONNECT,
                "https://relay.example/.well-known/masque/udp/192.0.2.1/53/",
                Some("connect-udp")
            ),
            Ok((Protocol::Udp, "192.0.2.1:53".into()))
        );
        assert_eq!(run(Method::GET, "https://relay.example/", None), Err(501));
        assert_eq!(
            run(
                Method::CONNECT,
                "https://relay.example/x",
                Some("websocket")
            ),
            Err(501)
        );
        assert_eq!(
            run(
                Method::CONNECT,
                "https://relay.example/x",
                Some("connect-udp")
            ),
            Err(400)
        );
        assert_eq!(
            run(Method::CONNECT, "https://a.example:443/", None),
            Err(400)
        );
        let snapshot = stats.snapshot();
        assert_eq!(
            (snapshot.malformed_requests, snapshot.unsupported_requests),
            (2, 2)
        );
    }
}
