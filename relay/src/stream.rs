//! The device side of a flow, whichever listener it came in on: what the shared request logic
//! (`request`), the TCP splice (`connect_tcp`) and the UDP relay (`connect_udp`) need from an
//! HTTP/3 request stream (`h3`) or an HTTP/2 one (`h2`).

use std::fmt;
use std::future::Future;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;

use crate::connect_udp::QuicDatagrams;

/// Why the relay resets a stream; each listener maps it to its own error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResetReason {
    /// The flow was revoked: H3_REQUEST_CANCELLED (RFC 9114 §8.1), HTTP/2 CANCEL (RFC 9113
    /// §7).
    Cancelled,
    /// The TCP connection to the target failed: H3_CONNECT_ERROR (RFC 9114 §4.4), HTTP/2
    /// CONNECT_ERROR (RFC 9113 §8.5).
    ConnectError,
    /// A malformed capsule: H3_DATAGRAM_ERROR (RFC 9297 §2.1, §3.3); on HTTP/2 a malformed
    /// message, PROTOCOL_ERROR (RFC 9113 §8.1.1).
    MalformedCapsule,
    /// Nothing is wrong, the relay just stops: H3_NO_ERROR, HTTP/2 NO_ERROR.
    NoError,
}

/// A failure of the device's stream or connection, as text for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceError(pub String);

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl DeviceError {
    pub(crate) fn new(error: impl fmt::Display) -> DeviceError {
        DeviceError(error.to_string())
    }
}

/// Receiving from the device.
pub(crate) trait DeviceRecv: Send {
    /// The next chunk of the stream's payload; `Ok(None)` once the device ended its side.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, DeviceError>>;

    /// `n` bytes were handed on: let the device send that much more (HTTP/2 WINDOW_UPDATE,
    /// RFC 9113 §6.9; QUIC's stream flow control does this itself).
    fn release(&mut self, n: usize) -> Result<(), DeviceError>;

    /// Asks the device to stop sending (STOP_SENDING on HTTP/3; on HTTP/2 the RST_STREAM
    /// sent by [`DeviceSend::reset`] covers both directions).
    fn abort(&mut self, reason: ResetReason);
}

/// Sending to the device.
pub(crate) trait DeviceSend: Send {
    /// Sends `data`, waiting for flow-control credit (backpressure).
    fn send(&mut self, data: Bytes) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Ends the relay's side of the stream (FIN / END_STREAM).
    fn finish(&mut self) -> impl Future<Output = Result<(), DeviceError>> + Send;

    /// Resets the relay's side of the stream.
    fn reset(&mut self, reason: ResetReason);

    /// Ready when the device reset the stream, for a direction that is otherwise only
    /// waiting on the target. HTTP/3 (h3 0.0.8) cannot tell, and stays pending.
    fn poll_device_reset(&mut self, _cx: &mut Context<'_>) -> Poll<DeviceError> {
        Poll::Pending
    }
}

/// A request waiting for its answer.
pub(crate) trait DeviceRequest: Send + Sized {
    type Send: DeviceSend;
    type Recv: DeviceRecv;

    /// Sends a final, body-less answer and ends the stream.
    fn answer(self, response: Response<()>) -> impl Future<Output = ()> + Send;

    /// Sends the 2xx of a tunnel and hands back the stream's two directions.
    fn accept(
        self,
        response: Response<()>,
    ) -> impl Future<Output = Result<(Self::Send, Self::Recv), DeviceError>> + Send;

    /// Resets the stream without an answer.
    fn reset(self, reason: ResetReason);

    /// For connect-udp on HTTP/3: routes the stream's QUIC DATAGRAM frames to the flow from
    /// now on (called before the 2xx, so that datagrams sent right after it are kept).
    /// `None` on HTTP/2, where UDP payloads travel in DATAGRAM capsules only (RFC 9297 §3.5).
    fn quic_datagrams(&self) -> Option<QuicDatagrams>;
}
