//! One HTTP/3 connection: the handshake outcome, the device identity, and every request on
//! it (RFC 9114; classic CONNECT §4.4; extended CONNECT RFC 9220 with connect-udp, RFC 9298).
//! What happens to a request is shared with HTTP/2 (`request`); this module adapts h3's
//! request streams to it.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::Code;
use http::{Request, Response};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connect_udp::{read_datagrams, DatagramRoutes, QuicDatagrams};
use crate::flows::HttpVersion;
use crate::identity::chain_identity;
use crate::request::{serve_request, PeerInfo, RequestHead};
use crate::server::{count, Gauge, Shared};
use crate::stream::{DeviceError, DeviceRecv, DeviceRequest, DeviceSend, ResetReason};
use crate::{Authorizer, Egress};

/// H3_GENERAL_PROTOCOL_ERROR (RFC 9114 §8.1): closes a connection whose certificate carries
/// no device identity.
const H3_GENERAL_PROTOCOL_ERROR: u32 = 0x101;
/// H3_EXCESSIVE_LOAD (RFC 9114 §8.1): closes a connection beyond the device's limit.
const H3_EXCESSIVE_LOAD: u32 = 0x107;
/// H3_REQUEST_CANCELLED (RFC 9114 §8.1): closes the connections of a device whose
/// certificate is no longer accepted (`revoke_certificate`), as it cancels every request.
const H3_REQUEST_CANCELLED: u32 = 0x10c;

/// How long a closing connection waits for its request tasks to reset their flows.
const DRAIN: Duration = Duration::from_secs(1);

type Resolver = h3::server::RequestResolver<h3_quinn::Connection, Bytes>;
type BidiStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;
type SendHalf = h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;
type RecvHalf = h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;

/// The receiving half of a request stream, and whether a read is in progress: h3-quinn
/// 0.0.10 moves the QUIC stream into its read future while a read is pending and panics if
/// STOP_SENDING is asked for then (its `stop_sending` unwraps the stream). A pending read's
/// future owns the stream; dropping it makes quinn send STOP_SENDING itself (code 0).
struct H3Recv {
    stream: RecvHalf,
    reading: bool,
}

/// The connection-wide parts a request needs.
#[derive(Debug)]
struct Peer {
    info: PeerInfo,
    connection: quinn::Connection,
    datagrams: Arc<DatagramRoutes>,
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
            warn!(peer = %address, http = "h3", reason = %error, "relay: TLS handshake failed");
            return;
        }
    };
    count(&stats.connections_accepted);
    let _active = Gauge::new(&stats.connections_active);

    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok());
    let device = match chain_identity(chain.as_deref().map(Vec::as_slice), &shared.identity) {
        Ok(device) => device,
        Err(reason) => {
            count(&stats.identity_failures);
            warn!(peer = %address, http = "h3", %reason, "relay: refusing connection without device identity");
            connection.close(
                quinn::VarInt::from_u32(H3_GENERAL_PROTOCOL_ERROR),
                reason.as_bytes(),
            );
            return;
        }
    };
    let limit = shared.limits.max_connections_per_device;
    let registration = match shared.flows.connect(&device.serial, limit) {
        Ok(registration) => registration,
        Err(refused) => {
            count(&stats.device_limit_refusals);
            let reason = format!(
                "too many connections from device {} (limit {})",
                device.serial, refused.limit
            );
            warn!(peer = %address, http = "h3", device = %device.serial, limit = refused.limit, "relay: connection refused: device connection limit");
            connection.close(
                quinn::VarInt::from_u32(H3_EXCESSIVE_LOAD),
                reason.as_bytes(),
            );
            return;
        }
    };
    info!(peer = %address, http = "h3", device = %device.serial, source = %device.source, "relay: device connected");
    let peer = Arc::new(Peer {
        info: PeerInfo {
            device,
            address,
            http: HttpVersion::Http3,
        },
        connection: connection.clone(),
        datagrams: Arc::new(DatagramRoutes::default()),
    });
    let serial = &peer.info.device.serial;

    let mut h3_conn = match h3::server::builder()
        .enable_extended_connect(true)
        .enable_datagram(true)
        .max_field_section_size(shared.limits.max_header_bytes)
        .build::<_, Bytes>(h3_quinn::Connection::new(connection.clone()))
        .await
    {
        Ok(h3_conn) => h3_conn,
        Err(error) => {
            warn!(peer = %address, device = %serial, %error, "relay: HTTP/3 setup failed");
            return;
        }
    };

    let _datagram_reader = AbortOnDrop(tokio::spawn(read_datagrams(
        connection.clone(),
        peer.datagrams.clone(),
        shared.stats.clone(),
    )));
    let revoked = registration.closed();
    tokio::pin!(revoked);
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
                        debug!(peer = %address, device = %serial, "relay: connection closed");
                    } else {
                        info!(peer = %address, device = %serial, %error, "relay: connection ended");
                    }
                    break;
                }
            },
            () = &mut revoked => {
                count(&stats.connections_revoked);
                info!(peer = %address, http = "h3", device = %serial, "relay: certificate revoked; connection closed");
                connection.close(
                    quinn::VarInt::from_u32(H3_REQUEST_CANCELLED),
                    b"device certificate no longer accepted",
                );
                break;
            }
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
    // The streams are gone with the connection: let the flows reset their targets.
    let _ = tokio::time::timeout(DRAIN, async {
        while requests.join_next().await.is_some() {}
    })
    .await;
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn handle_request<A: Authorizer, E: Egress>(
    resolver: Resolver,
    peer: Arc<Peer>,
    shared: Arc<Shared<A, E>>,
) {
    let (request, stream): (Request<()>, BidiStream) = match resolver.resolve_request().await {
        Ok(resolved) => resolved,
        Err(error) => {
            // Malformed header sections are reset by h3 with H3_MESSAGE_ERROR (RFC 9114
            // §4.1.2) before they reach us.
            count(&shared.stats.malformed_requests);
            debug!(device = %peer.info.device.serial, %error, "relay: request refused by HTTP/3");
            return;
        }
    };
    let head = RequestHead {
        method: request.method(),
        uri: request.uri(),
        protocol: request
            .extensions()
            .get::<h3::ext::Protocol>()
            .map(|p| p.as_str()),
        headers: request.headers(),
    };
    let exchange = H3Exchange {
        stream,
        peer: peer.clone(),
    };
    serve_request(head, exchange, &peer.info, &shared).await;
}

fn code(reason: ResetReason) -> Code {
    match reason {
        ResetReason::Cancelled => Code::H3_REQUEST_CANCELLED,
        ResetReason::ConnectError => Code::H3_CONNECT_ERROR,
        ResetReason::MalformedCapsule => Code::H3_DATAGRAM_ERROR,
        ResetReason::NoError => Code::H3_NO_ERROR,
    }
}

/// A request stream waiting for its answer.
struct H3Exchange {
    stream: BidiStream,
    peer: Arc<Peer>,
}

impl DeviceRequest for H3Exchange {
    type Send = SendHalf;
    type Recv = H3Recv;

    async fn answer(mut self, response: Response<()>) {
        let status = response.status();
        if let Err(error) = self.stream.send_response(response).await {
            debug!(%status, %error, "relay: answer not delivered");
            return;
        }
        if let Err(error) = self.stream.finish().await {
            debug!(%status, %error, "relay: stream not finished");
        }
    }

    async fn accept(mut self, response: Response<()>) -> Result<(SendHalf, H3Recv), DeviceError> {
        self.stream
            .send_response(response)
            .await
            .map_err(DeviceError::new)?;
        let (send, stream) = self.stream.split();
        let recv = H3Recv {
            stream,
            reading: false,
        };
        Ok((send, recv))
    }

    fn reset(mut self, reason: ResetReason) {
        self.stream.stop_stream(code(reason));
        self.stream.stop_sending(code(reason));
    }

    fn quic_datagrams(&self) -> Option<QuicDatagrams> {
        let stream_id = self.stream.id().into_inner();
        let (receiver, route) = self.peer.datagrams.register(stream_id);
        Some(QuicDatagrams {
            receiver,
            route,
            connection: self.peer.connection.clone(),
            stream_id,
        })
    }
}

impl DeviceRecv for H3Recv {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, DeviceError>> {
        let polled = self.stream.poll_recv_data(cx);
        self.reading = polled.is_pending();
        polled.map(|received| match received {
            Ok(Some(mut chunk)) => Ok(Some(chunk.copy_to_bytes(chunk.remaining()))),
            Ok(None) => Ok(None),
            Err(error) => Err(DeviceError::new(error)),
        })
    }

    fn release(&mut self, _n: usize) -> Result<(), DeviceError> {
        // QUIC stream flow control credits what the application has read.
        Ok(())
    }

    fn abort(&mut self, reason: ResetReason) {
        if !self.reading {
            self.stream.stop_sending(code(reason));
        }
    }
}

impl DeviceSend for SendHalf {
    async fn send(&mut self, data: Bytes) -> Result<(), DeviceError> {
        self.send_data(data).await.map_err(DeviceError::new)
    }

    async fn finish(&mut self) -> Result<(), DeviceError> {
        h3::server::RequestStream::finish(self)
            .await
            .map_err(DeviceError::new)
    }

    fn reset(&mut self, reason: ResetReason) {
        self.stop_stream(code(reason));
    }
}
