//! The byte-exact splice between a CONNECT stream and its TCP connection (RFC 9114 §4.4).
//!
//! - Bytes go through unchanged in both directions, one chunk at a time: a direction reads
//!   its next chunk only once the previous one was accepted by the other side, so QUIC flow
//!   control and the TCP window push back on the sender (backpressure) and memory stays
//!   bounded by one chunk per direction.
//! - Half-close: the device finishing its side of the stream (FIN) becomes a TCP FIN
//!   (`shutdown(Write)`), and TCP end of file finishes the relay's side of the stream; the
//!   other direction keeps flowing until it ends too.
//! - Errors: a TCP error resets the stream with `H3_CONNECT_ERROR` both ways; a stream reset
//!   or a lost connection closes the TCP connection with RST ("the proxy SHOULD close the TCP
//!   connection with the RST bit set", RFC 9114 §4.4).

use std::future::poll_fn;
use std::sync::atomic::Ordering;
use std::task::Poll;

use bytes::{BufMut, Bytes, BytesMut};
use h3::error::{Code, StreamError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::server::RelayStats;

/// The request stream of one CONNECT.
pub(crate) type RequestStream = h3::server::RequestStream<h3_quinn::BidiStream<Bytes>, Bytes>;

/// How much is read from TCP before it is handed to the stream.
const CHUNK: usize = 64 * 1024;

/// How a splice ended.
#[derive(Debug)]
pub(crate) enum SpliceEnd {
    /// Both directions finished cleanly.
    Finished { up: u64, down: u64 },
    /// The device side failed (stream reset, connection lost); TCP was reset.
    Device(StreamError),
    /// The target side failed; the stream was reset with H3_CONNECT_ERROR.
    Target(std::io::Error),
}

enum Failure {
    Device(StreamError),
    Target(std::io::Error),
}

/// Relays between `stream` (already answered 200) and `tcp` until both directions end or one
/// fails.
pub(crate) async fn splice(
    stream: RequestStream,
    mut tcp: TcpStream,
    stats: &RelayStats,
) -> SpliceEnd {
    let (mut send, mut recv) = stream.split();
    let result = {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        let up = async {
            let mut total = 0u64;
            let mut buf = BytesMut::with_capacity(CHUNK);
            let mut finished = false;
            while !finished {
                // Wait for data, then take whatever else is already there (QUIC hands over
                // about one packet per chunk): one TCP write per batch, not per packet.
                match recv.recv_data().await {
                    Ok(Some(chunk)) => buf.put(chunk),
                    Ok(None) => finished = true,
                    Err(error) => return Err(Failure::Device(error)),
                }
                while !finished && buf.len() < CHUNK {
                    match poll_fn(|cx| Poll::Ready(recv.poll_recv_data(cx))).await {
                        Poll::Ready(Ok(Some(chunk))) => buf.put(chunk),
                        Poll::Ready(Ok(None)) => finished = true,
                        Poll::Ready(Err(error)) => return Err(Failure::Device(error)),
                        Poll::Pending => break,
                    }
                }
                let n = buf.len() as u64;
                tcp_write
                    .write_all_buf(&mut buf)
                    .await
                    .map_err(Failure::Target)?;
                total += n;
                stats.bytes_from_devices.fetch_add(n, Ordering::Relaxed);
            }
            // The device finished its side: half-close towards the target.
            tcp_write.shutdown().await.map_err(Failure::Target)?;
            Ok::<u64, Failure>(total)
        };
        let down = async {
            let mut total = 0u64;
            let mut buf = BytesMut::with_capacity(CHUNK);
            loop {
                buf.reserve(CHUNK);
                let n = tcp_read.read_buf(&mut buf).await.map_err(Failure::Target)?;
                if n == 0 {
                    // Target end of file: finish the relay's side of the stream.
                    send.finish().await.map_err(Failure::Device)?;
                    return Ok::<u64, Failure>(total);
                }
                send.send_data(buf.split().freeze())
                    .await
                    .map_err(Failure::Device)?;
                total += n as u64;
                stats
                    .bytes_to_devices
                    .fetch_add(n as u64, Ordering::Relaxed);
            }
        };
        tokio::try_join!(up, down)
    };
    match result {
        Ok((up, down)) => SpliceEnd::Finished { up, down },
        Err(Failure::Device(error)) => {
            // Best effort: the socket is dropped right after either way.
            let _ = tcp.set_zero_linger();
            send.stop_stream(Code::H3_CONNECT_ERROR);
            recv.stop_sending(Code::H3_CONNECT_ERROR);
            SpliceEnd::Device(error)
        }
        Err(Failure::Target(error)) => {
            send.stop_stream(Code::H3_CONNECT_ERROR);
            recv.stop_sending(Code::H3_CONNECT_ERROR);
            SpliceEnd::Target(error)
        }
    }
}
