//! The byte-exact splice between a CONNECT stream and its TCP connection (RFC 9114 §4.4,
//! RFC 9113 §8.5), the same for both listeners.
//!
//! - Bytes go through unchanged in both directions, one chunk at a time: a direction reads
//!   its next chunk only once the previous one was accepted by the other side, so flow
//!   control (QUIC's, or HTTP/2 WINDOW_UPDATEs released only once the bytes were written to
//!   TCP) and the TCP window push back on the sender (backpressure), and memory stays
//!   bounded by one chunk per direction.
//! - Half-close: the device finishing its side of the stream (FIN / END_STREAM) becomes a
//!   TCP FIN (`shutdown(Write)`), and TCP end of file finishes the relay's side of the
//!   stream; the other direction keeps flowing until it ends too.
//! - Errors: a TCP error resets the stream with CONNECT_ERROR both ways; a stream reset or a
//!   lost connection closes the TCP connection with RST ("the proxy SHOULD close the TCP
//!   connection with the RST bit set", RFC 9114 §4.4; RFC 9113 §8.5).
//! - Revocation: the stream is reset with H3_REQUEST_CANCELLED / CANCEL and the TCP
//!   connection with RST, at once.
//! - Idleness: none by default (push channels keep CONNECT streams idle for hours); with
//!   `stream_idle_timeout`, a flow that carried no byte either way for that long is ended:
//!   the stream reset with H3_NO_ERROR / NO_ERROR, the TCP connection with RST.

use std::future::{poll_fn, Future};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::flows::Meter;
use crate::stream::{DeviceError, DeviceRecv, DeviceSend, ResetReason};

/// How much is read from TCP before it is handed to the stream.
const CHUNK: usize = 64 * 1024;

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// Both directions finished cleanly.
    Finished { up: u64, down: u64 },
    /// The device side failed (stream reset, connection lost); TCP was reset.
    Device(DeviceError),
    /// The target side failed; the stream was reset with CONNECT_ERROR.
    Target(std::io::Error),
    /// The flow was revoked; the stream was cancelled and TCP reset.
    Revoked,
    /// Nothing moved for the stream idle timeout; the stream and TCP were reset.
    Idle,
}

enum Failure {
    Device(DeviceError),
    Target(std::io::Error),
}

/// Relays between the device's stream (already answered 2xx) and `tcp` until both
/// directions end, one fails, or `revoked` resolves.
pub(crate) async fn splice<S: DeviceSend, R: DeviceRecv>(
    mut send: S,
    mut recv: R,
    mut tcp: TcpStream,
    meter: Meter<'_>,
    revoked: impl Future<Output = ()>,
    idle_timeout: Option<Duration>,
) -> SpliceEnd {
    let started = Instant::now();
    // When bytes last moved, in milliseconds since `started`.
    let last_activity = AtomicU64::new(0);
    let touch = || {
        let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_activity.store(now, Ordering::Relaxed);
    };
    let idle = async {
        let Some(timeout) = idle_timeout else {
            return std::future::pending().await;
        };
        loop {
            let last = Duration::from_millis(last_activity.load(Ordering::Relaxed));
            let quiet = started.elapsed().saturating_sub(last);
            if quiet >= timeout {
                return;
            }
            tokio::time::sleep(timeout - quiet).await;
        }
    };
    let outcome = {
        let (tcp_read, mut tcp_write) = tcp.split();
        let up = async {
            let mut total = 0u64;
            let mut finished = false;
            while !finished {
                // Wait for data holding no buffer (an idle flow costs no memory), then take
                // whatever else is already there (QUIC hands over about one packet per
                // chunk): one TCP write per batch, not per packet; a lone chunk is written
                // as it is, without a copy.
                let first = match poll_fn(|cx| recv.poll_data(cx)).await {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(error) => return Err(Failure::Device(error)),
                };
                let mut batch: Option<BytesMut> = None;
                let mut len = first.len();
                while len < CHUNK {
                    match poll_fn(|cx| Poll::Ready(recv.poll_data(cx))).await {
                        Poll::Ready(Ok(Some(chunk))) => {
                            let buf = batch.get_or_insert_with(|| {
                                let mut buf = BytesMut::with_capacity(CHUNK.max(len));
                                buf.put(first.clone());
                                buf
                            });
                            len += chunk.len();
                            buf.put(chunk);
                        }
                        Poll::Ready(Ok(None)) => {
                            finished = true;
                            break;
                        }
                        Poll::Ready(Err(error)) => return Err(Failure::Device(error)),
                        Poll::Pending => break,
                    }
                }
                let mut data = batch.map_or(first, BytesMut::freeze);
                tcp_write
                    .write_all_buf(&mut data)
                    .await
                    .map_err(Failure::Target)?;
                // Only now may the device send more (HTTP/2 flow control).
                recv.release(len).map_err(Failure::Device)?;
                touch();
                total += len as u64;
                meter.add_from_device(len as u64);
            }
            // The device finished its side: half-close towards the target.
            tcp_write.shutdown().await.map_err(Failure::Target)?;
            Ok::<u64, Failure>(total)
        };
        let down = async {
            let mut total = 0u64;
            loop {
                // Wait until the target sent something before taking a buffer: an idle flow
                // holds none.
                tokio::select! {
                    ready = tcp_read.readable() => ready.map_err(Failure::Target)?,
                    error = poll_fn(|cx| send.poll_device_reset(cx)) => {
                        return Err(Failure::Device(error));
                    }
                };
                let mut buf = BytesMut::with_capacity(CHUNK);
                let n = match tcp_read.try_read_buf(&mut buf) {
                    Ok(n) => n,
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(error) => return Err(Failure::Target(error)),
                };
                if n == 0 {
                    // Target end of file: finish the relay's side of the stream.
                    send.finish().await.map_err(Failure::Device)?;
                    return Ok::<u64, Failure>(total);
                }
                // The stream keeps what it sends until the device acknowledges it: a small
                // read is copied out rather than pinning a whole chunk.
                let data = if n < CHUNK / 4 {
                    Bytes::copy_from_slice(&buf)
                } else {
                    buf.freeze()
                };
                send.send(data).await.map_err(Failure::Device)?;
                touch();
                total += n as u64;
                meter.add_to_device(n as u64);
            }
        };
        tokio::select! {
            result = async { tokio::try_join!(up, down) } => Some(Ok(result)),
            () = revoked => None,
            () = idle => Some(Err(())),
        }
    };
    match outcome {
        Some(Ok(Ok((up, down)))) => SpliceEnd::Finished { up, down },
        Some(Err(())) => {
            let _ = tcp.set_zero_linger();
            send.reset(ResetReason::NoError);
            recv.abort(ResetReason::NoError);
            SpliceEnd::Idle
        }
        Some(Ok(Err(Failure::Device(error)))) => {
            // Best effort: the socket is dropped right after either way.
            let _ = tcp.set_zero_linger();
            send.reset(ResetReason::ConnectError);
            recv.abort(ResetReason::ConnectError);
            SpliceEnd::Device(error)
        }
        Some(Ok(Err(Failure::Target(error)))) => {
            send.reset(ResetReason::ConnectError);
            recv.abort(ResetReason::ConnectError);
            SpliceEnd::Target(error)
        }
        None => {
            let _ = tcp.set_zero_linger();
            send.reset(ResetReason::Cancelled);
            recv.abort(ResetReason::Cancelled);
            SpliceEnd::Revoked
        }
    }
}
