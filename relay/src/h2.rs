//! The HTTP/2 fallback listener (Apple's `HTTP2RelayURL`): TLS on TCP with ALPN `h2` and
//! mutual TLS (the same verifier and identity extraction as HTTP/3), then h2 (RFC 9113) with
//! classic CONNECT (RFC 9113 §8.5) and extended CONNECT (RFC 8441:
//! SETTINGS_ENABLE_CONNECT_PROTOCOL = 1) for connect-udp with DATAGRAM capsules on the stream
//! (RFC 9298 §5, RFC 9297 §3.5). What happens to a request is shared with HTTP/3
//! (`request`); this module adapts h2's streams to it.
//!
//! - Flow control: received DATA is credited back (WINDOW_UPDATE, RFC 9113 §6.9) only once
//!   it was written to the target, and DATA to the device is sent only within the credit the
//!   device granted, so both directions push back like TCP does.
//! - Connections send a PING every `keepalive_interval` and are closed when no PING answer
//!   comes within `connection_idle_timeout` (RFC 9113 §6.7); streams have no idle timeout.
//! - Refusals: a connection beyond the device's limit gets GOAWAY ENHANCE_YOUR_CALM; one
//!   whose certificate carries no device identity, or whose device's certificate was revoked
//!   (`revoke_certificate`), gets GOAWAY INADEQUATE_SECURITY (RFC 9113 §7).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::server::{Connection, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::connect_udp::QuicDatagrams;
use crate::flows::HttpVersion;
use crate::identity::chain_identity;
use crate::request::{serve_request, PeerInfo, RequestHead};
use crate::server::{count, Gauge, Shared};
use crate::stream::{DeviceError, DeviceRecv, DeviceRequest, DeviceSend, ResetReason};
use crate::tls::ALPN_H2;
use crate::{Authorizer, Egress};

/// The receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE, RFC 9113 §6.5.2): the
/// most a device can send ahead of what the target accepted.
const STREAM_WINDOW: u32 = 256 * 1024;
/// The connection's receive window (RFC 9113 §6.9.2).
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// How long a closing connection may take to send its GOAWAY and let its flows reset.
const DRAIN: Duration = Duration::from_secs(1);

/// Accepts TCP connections until shutdown, then waits for the open ones to end.
pub(crate) async fn accept_loop<A: Authorizer, E: Egress>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared<A, E>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut listener = Some(listener);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = accept(&listener) => match accepted {
                Ok((tcp, address)) => {
                    connections.spawn(serve_connection(
                        tcp,
                        address,
                        acceptor.clone(),
                        shared.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    warn!(%error, "relay: HTTP/2 accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Stop listening (new connections are refused by the kernel), let the open ones
            // see the shutdown and send GOAWAY.
            _ = shutdown.changed(), if listener.is_some() => {
                listener = None;
                if connections.is_empty() {
                    break;
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {
                if listener.is_none() && connections.is_empty() {
                    break;
                }
            }
        }
    }
}

async fn accept(listener: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// TLS, identity, the per-device limit, then HTTP/2 until the connection ends.
async fn serve_connection<A: Authorizer, E: Egress>(
    tcp: TcpStream,
    address: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared<A, E>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stats = &shared.stats;
    let limits = &shared.limits;
    // CONNECT streams carry interactive traffic.
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            // The verifier's reason: no certificate, unknown issuer, expired, revoked.
            count(&stats.handshake_failures);
            warn!(peer = %address, http = "h2", reason = %error, "relay: TLS handshake failed");
            return;
        }
        Err(_) => {
            count(&stats.handshake_failures);
            warn!(peer = %address, http = "h2", timeout = ?limits.handshake_timeout, "relay: TLS handshake did not complete in time");
            return;
        }
    };
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(ALPN_H2) {
        // RFC 9113 §3.2: HTTP/2 over TLS is negotiated with ALPN `h2`.
        count(&stats.handshake_failures);
        warn!(peer = %address, http = "h2", "relay: TLS handshake without ALPN h2; closed");
        return;
    }
    let identity = chain_identity(session.peer_certificates(), &shared.identity);
    count(&stats.connections_accepted);
    let _active = Gauge::new(&stats.connections_active);

    let mut builder = h2::server::Builder::new();
    builder
        .enable_connect_protocol()
        .max_concurrent_streams(limits.max_streams_per_connection)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW);
    let handshake = builder.handshake::<_, Bytes>(tls);
    let mut connection = match tokio::time::timeout(limits.handshake_timeout, handshake).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            debug!(peer = %address, %error, "relay: HTTP/2 preface not received");
            return;
        }
        Err(_) => {
            debug!(peer = %address, "relay: HTTP/2 preface not received in time");
            return;
        }
    };

    let device = match identity {
        Ok(device) => device,
        Err(reason) => {
            count(&stats.identity_failures);
            warn!(peer = %address, http = "h2", %reason, "relay: refusing connection without device identity");
            return go_away(connection, Reason::INADEQUATE_SECURITY).await;
        }
    };
    let registration = match shared
        .flows
        .connect(&device.serial, limits.max_connections_per_device)
    {
        Ok(registration) => registration,
        Err(refused) => {
            count(&stats.device_limit_refusals);
            warn!(peer = %address, http = "h2", device = %device.serial, limit = refused.limit, "relay: connection refused: device connection limit");
            return go_away(connection, Reason::ENHANCE_YOUR_CALM).await;
        }
    };
    info!(peer = %address, http = "h2", device = %device.serial, source = %device.source, "relay: device connected");
    let peer = Arc::new(PeerInfo {
        device,
        address,
        http: HttpVersion::Http2,
    });
    let serial = &peer.device.serial;

    let keepalive = keepalive(
        connection.ping_pong(),
        limits.keepalive_interval,
        limits.connection_idle_timeout,
    );
    tokio::pin!(keepalive);
    let revoked = registration.closed();
    tokio::pin!(revoked);
    let drain = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain);
    let mut requests = JoinSet::new();
    let (mut closing, mut aborting) = (false, false);
    // The next client stream ID expected (odd, in order: RFC 9113 §5.1.1).
    let mut next_stream_id = 1u32;
    loop {
        tokio::select! {
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    let id = respond.stream_id().as_u32();
                    if id > next_stream_id {
                        // The streams in between were refused by h2 itself.
                        let refused = u64::from((id - next_stream_id) / 2);
                        stats.http2_streams_refused.fetch_add(refused, Ordering::Relaxed);
                        debug!(peer = %address, device = %serial, refused, "relay: HTTP/2 streams refused by the protocol layer");
                    }
                    next_stream_id = id.saturating_add(2);
                    requests.spawn(handle_request(request, respond, peer.clone(), shared.clone()));
                }
                Some(Err(error)) => {
                    if error.is_library() {
                        // h2 found the device's error and sent GOAWAY.
                        count(&stats.http2_protocol_errors);
                    }
                    info!(peer = %address, device = %serial, %error, "relay: connection ended");
                    break;
                }
                None => {
                    debug!(peer = %address, device = %serial, "relay: connection closed");
                    break;
                }
            },
            () = &mut revoked, if !aborting => {
                count(&stats.connections_revoked);
                info!(peer = %address, http = "h2", device = %serial, "relay: certificate revoked; connection closed");
                connection.abrupt_shutdown(Reason::INADEQUATE_SECURITY);
                aborting = true;
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            reason = &mut keepalive, if !aborting => {
                info!(peer = %address, device = %serial, %reason, "relay: connection closed: keepalive");
                connection.abrupt_shutdown(Reason::NO_ERROR);
                aborting = true;
                drain.as_mut().reset(tokio::time::Instant::now() + DRAIN);
            }
            _ = shutdown.changed(), if !closing => {
                // RFC 9113 §6.8: GOAWAY, then the open streams finish.
                closing = true;
                connection.graceful_shutdown();
            }
            () = &mut drain => break,
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
        }
    }
    // The streams are gone with the connection: let the flows reset their targets.
    let _ = tokio::time::timeout(DRAIN, async {
        while requests.join_next().await.is_some() {}
    })
    .await;
}

/// Sends GOAWAY with `reason` and closes the connection (RFC 9113 §6.8).
async fn go_away<T: AsyncRead + AsyncWrite + Unpin>(
    mut connection: Connection<T, Bytes>,
    reason: Reason,
) {
    connection.abrupt_shutdown(reason);
    let _ = tokio::time::timeout(DRAIN, poll_fn(|cx| connection.poll_closed(cx))).await;
}

/// Sends a PING every `interval` (RFC 9113 §6.7); resolves with the reason when one is not
/// answered within `timeout`.
async fn keepalive(ping_pong: Option<PingPong>, interval: Duration, timeout: Duration) -> String {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(error)) => return format!("PING failed: {error}"),
            Err(_) => return format!("no PING answer within {timeout:?}"),
        }
    }
}

async fn handle_request<A: Authorizer, E: Egress>(
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: Arc<PeerInfo>,
    shared: Arc<Shared<A, E>>,
) {
    let (parts, body) = request.into_parts();
    let head = RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        protocol: parts
            .extensions
            .get::<h2::ext::Protocol>()
            .map(|p| p.as_str()),
        headers: &parts.headers,
    };
    serve_request(head, H2Exchange { respond, body }, &peer, &shared).await;
}

fn reason(reset: ResetReason) -> Reason {
    match reset {
        ResetReason::Cancelled => Reason::CANCEL,
        ResetReason::ConnectError => Reason::CONNECT_ERROR,
        ResetReason::MalformedCapsule => Reason::PROTOCOL_ERROR,
        ResetReason::NoError => Reason::NO_ERROR,
    }
}

/// A request stream waiting for its answer.
struct H2Exchange {
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl DeviceRequest for H2Exchange {
    type Send = SendStream<Bytes>;
    type Recv = RecvStream;

    async fn answer(mut self, response: Response<()>) {
        let status = response.status();
        // RFC 9113 §8.1: a complete response may come before the request is complete; h2
        // then sends RST_STREAM NO_ERROR when the stream is dropped, after the response (an
        // explicit reset now would discard the queued HEADERS).
        if let Err(error) = self.respond.send_response(response, true) {
            debug!(%status, %error, "relay: answer not delivered");
        }
    }

    async fn accept(
        mut self,
        response: Response<()>,
    ) -> Result<(SendStream<Bytes>, RecvStream), DeviceError> {
        let send = self
            .respond
            .send_response(response, false)
            .map_err(DeviceError::new)?;
        Ok((send, self.body))
    }

    fn reset(mut self, reset: ResetReason) {
        self.respond.send_reset(reason(reset));
    }

    fn quic_datagrams(&self) -> Option<QuicDatagrams> {
        None
    }
}

impl DeviceRecv for RecvStream {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, DeviceError>> {
        RecvStream::poll_data(self, cx).map(|received| match received {
            Some(Ok(chunk)) => Ok(Some(chunk)),
            Some(Err(error)) => Err(DeviceError::new(error)),
            None => Ok(None),
        })
    }

    fn release(&mut self, n: usize) -> Result<(), DeviceError> {
        if n == 0 {
            return Ok(());
        }
        self.flow_control()
            .release_capacity(n)
            .map_err(DeviceError::new)
    }

    fn abort(&mut self, _reason: ResetReason) {
        // RST_STREAM (sent by the send side) closes both directions on HTTP/2.
    }
}

impl DeviceSend for SendStream<Bytes> {
    async fn send(&mut self, mut data: Bytes) -> Result<(), DeviceError> {
        while !data.is_empty() {
            // Send only within the credit the device granted (RFC 9113 §6.9), so a device
            // that reads slowly slows the target down instead of filling memory.
            self.reserve_capacity(data.len());
            let mut capacity = self.capacity();
            if capacity == 0 {
                capacity = match poll_fn(|cx| self.poll_capacity(cx)).await {
                    Some(Ok(capacity)) => capacity,
                    Some(Err(error)) => return Err(DeviceError::new(error)),
                    None => return Err(DeviceError("the stream was closed".into())),
                };
            }
            let chunk = data.split_to(capacity.min(data.len()));
            self.send_data(chunk, false).map_err(DeviceError::new)?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<(), DeviceError> {
        self.send_data(Bytes::new(), true).map_err(DeviceError::new)
    }

    fn reset(&mut self, reset: ResetReason) {
        self.send_reset(reason(reset));
    }

    fn poll_device_reset(&mut self, cx: &mut Context<'_>) -> Poll<DeviceError> {
        self.poll_reset(cx).map(|reset| match reset {
            Ok(reason) => DeviceError(format!("stream reset by the device ({reason})")),
            Err(error) => DeviceError::new(error),
        })
    }
}
