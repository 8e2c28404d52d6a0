//! connect-udp (RFC 9298) on both listeners: UDP payloads travel as HTTP Datagrams (RFC 9297)
//! in QUIC DATAGRAM frames (RFC 9221) on HTTP/3, or as DATAGRAM capsules on the request
//! stream (RFC 9297 §3.5) on HTTP/2, and on HTTP/3 when the device prefers them.
//!
//! ```text
//! QUIC DATAGRAM payload = Quarter Stream ID (i)   RFC 9297 §2.1
//!                         Context ID (i)          RFC 9298 §4: 0 = a UDP payload
//!                         UDP payload (..)
//! DATAGRAM capsule      = Type 0x00 (i), Length (i), Context ID (i), UDP payload (..)
//! ```
//!
//! On HTTP/3, HTTP Datagrams are read from the QUIC connection directly (one reader per
//! connection, `read_datagrams`) and routed by stream to the flow that registered it
//! (`DatagramRoutes`); datagrams for no open flow are dropped and counted (RFC 9297 §2.1
//! allows dropping). Towards the device the relay sends QUIC DATAGRAM frames when the
//! connection negotiated them (`max_datagram_frame_size`, RFC 9221 §3), DATAGRAM capsules on
//! the stream otherwise. The peer's SETTINGS_H3_DATAGRAM is not checked: h3 0.0.8 does not
//! expose the peer's settings outside its unstable API.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::debug;

use crate::capsule::{encode_datagram, read_varint, write_varint, Capsule, CapsuleDecoder};
use crate::flows::Meter;
use crate::server::RelayStats;
use crate::stream::{DeviceError, DeviceRecv, DeviceSend, ResetReason};
use crate::target::{Target, TargetError};

/// The well-known URI template (RFC 9298 §3).
pub const WELL_KNOWN_UDP_PATH: &str = "/.well-known/masque/udp/{target_host}/{target_port}/";

/// The largest UDP payload (65535 − 8 bytes of UDP header).
const MAX_UDP_PAYLOAD: usize = 65_527;
/// Datagrams queued per flow before the relay drops (UDP semantics: never block the reader).
const FLOW_QUEUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Host,
    Port,
}

/// A connect-udp URI template's path (and query), with `{target_host}` and `{target_port}`
/// (RFC 9298 §2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpPathTemplate {
    parts: Vec<Part>,
}

impl UdpPathTemplate {
    /// Parses a template such as `/masque/udp/{target_host}/{target_port}/` or
    /// `/masque?h={target_host}&p={target_port}`.
    pub fn parse(template: &str) -> Result<UdpPathTemplate, String> {
        if !template.starts_with('/') {
            return Err(format!("`{template}` must start with `/`"));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{target_host}") {
                parts.push(Part::Host);
                rest = after;
            } else if let Some(after) = rest.strip_prefix("{target_port}") {
                parts.push(Part::Port);
                rest = after;
            } else {
                // Up to the next `{` after the first character (char boundaries only).
                let end = rest
                    .char_indices()
                    .skip(1)
                    .find(|(_, c)| *c == '{')
                    .map_or(rest.len(), |(i, _)| i);
                let literal = rest.get(..end).unwrap_or(rest);
                if literal.contains('{') || literal.contains('}') {
                    return Err(format!(
                        "`{template}`: only {{target_host}} and {{target_port}} are supported"
                    ));
                }
                parts.push(Part::Literal(literal.to_string()));
                rest = rest.get(end..).unwrap_or_default();
            }
        }
        let count = |wanted: &Part| parts.iter().filter(|p| *p == wanted).count();
        if count(&Part::Host) != 1 || count(&Part::Port) != 1 {
            return Err(format!(
                "`{template}` needs {{target_host}} and {{target_port}} exactly once each"
            ));
        }
        if parts
            .windows(2)
            .any(|w| !matches!(w[0], Part::Literal(_)) && !matches!(w[1], Part::Literal(_)))
        {
            return Err(format!("`{template}`: variables must be separated by text"));
        }
        Ok(UdpPathTemplate { parts })
    }

    /// The target named by `path`, or `None` when `path` does not match the template.
    pub fn match_path(&self, path: &str) -> Option<Result<Target, TargetError>> {
        let mut rest = path;
        let mut host = None;
        let mut port = None;
        for (i, part) in self.parts.iter().enumerate() {
            match part {
                Part::Literal(literal) => rest = rest.strip_prefix(literal.as_str())?,
                Part::Host | Part::Port => {
                    // A variable runs to the next literal (or the end).
                    let end = match self.parts.get(i + 1) {
                        Some(Part::Literal(next)) => rest.find(next.as_str())?,
                        _ => rest.len(),
                    };
                    let (value, after) = rest.split_at(end);
                    rest = after;
                    if value.is_empty() || value.contains(['/', '?', '&', '#']) {
                        return None;
                    }
                    let decoded = percent_decode(value)?;
                    if *part == Part::Host {
                        host = Some(decoded);
                    } else {
                        port = Some(decoded);
                    }
                }
            }
        }
        if !rest.is_empty() {
            return None;
        }
        Some(Target::from_parts(&host?, &port?))
    }
}

/// RFC 3986 §2.1 percent-decoding; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Which flow receives the HTTP Datagrams of which request stream, on one connection.
#[derive(Debug, Default)]
pub(crate) struct DatagramRoutes {
    routes: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
}

/// Removes a route when its flow ends.
#[derive(Debug)]
pub(crate) struct Route {
    routes: Arc<DatagramRoutes>,
    stream_id: u64,
}

impl Drop for Route {
    fn drop(&mut self) {
        self.routes.lock().remove(&self.stream_id);
    }
}

impl DatagramRoutes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Bytes>>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Routes the datagrams of `stream_id` to the returned receiver until the guard drops.
    pub(crate) fn register(self: &Arc<Self>, stream_id: u64) -> (mpsc::Receiver<Bytes>, Route) {
        let (tx, rx) = mpsc::channel(FLOW_QUEUE);
        self.lock().insert(stream_id, tx);
        let route = Route {
            routes: self.clone(),
            stream_id,
        };
        (rx, route)
    }

    /// Hands `payload` to the flow of `stream_id`; false when there is none or it is full.
    fn deliver(&self, stream_id: u64, payload: Bytes) -> bool {
        self.lock()
            .get(&stream_id)
            .is_some_and(|tx| tx.try_send(payload).is_ok())
    }
}

/// Reads the connection's QUIC DATAGRAM frames until it closes and routes them by stream.
pub(crate) async fn read_datagrams(
    connection: quinn::Connection,
    routes: Arc<DatagramRoutes>,
    stats: Arc<RelayStats>,
) {
    while let Ok(datagram) = connection.read_datagram().await {
        let routed = read_varint(&datagram).is_some_and(|(quarter, n)| {
            // RFC 9297 §2.1: the stream is the Quarter Stream ID × 4.
            quarter
                .checked_mul(4)
                .is_some_and(|stream_id| routes.deliver(stream_id, datagram.slice(n..)))
        });
        if !routed {
            stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The QUIC side of a connect-udp flow on HTTP/3: its datagrams from the device, and how
/// to send datagrams back.
#[derive(Debug)]
pub(crate) struct QuicDatagrams {
    pub receiver: mpsc::Receiver<Bytes>,
    /// Keeps the stream's datagrams routed to `receiver` while the flow lives.
    pub route: Route,
    pub connection: quinn::Connection,
    /// The request stream's ID (RFC 9297 §2.1: datagrams carry it divided by four).
    pub stream_id: u64,
}

/// How a connect-udp flow ended.
#[derive(Debug)]
pub(crate) enum UdpEnd {
    /// The device finished its side of the stream.
    Finished,
    /// The stream or the connection failed.
    Device(DeviceError),
    /// The device sent a malformed capsule; the stream was reset (RFC 9297 §3.3).
    Malformed(String),
    /// The flow was revoked; the stream was cancelled.
    Revoked,
}

/// The next datagram of the flow, if it has a QUIC side.
async fn next_datagram(receiver: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Relays UDP payloads between the device (QUIC datagrams on HTTP/3, DATAGRAM capsules on
/// the stream on either listener) and `socket` (connected to the target) until the device
/// ends the stream or `revoked` resolves.
///
/// Towards the device: QUIC DATAGRAM frames when the flow has a QUIC side that negotiated
/// them (RFC 9221 §3), DATAGRAM capsules on the stream otherwise (RFC 9297 §3.5), which is
/// always the case on HTTP/2.
pub(crate) async fn relay_udp<S: DeviceSend, R: DeviceRecv>(
    mut send: S,
    mut recv: R,
    socket: UdpSocket,
    quic: Option<QuicDatagrams>,
    meter: Meter<'_>,
    revoked: impl Future<Output = ()>,
) -> UdpEnd {
    let stats = meter.stats;
    let (mut datagrams, quic_out) = match quic {
        Some(quic) => {
            let mut prefix = BytesMut::new();
            // A u64 / 4 fits a varint (2^62 - 1); context ID 0 means "UDP payload".
            let _ = write_varint(quic.stream_id / 4, &mut prefix);
            prefix.put_u8(0);
            (
                Some(quic.receiver),
                Some((quic.connection, prefix.freeze(), quic.route)),
            )
        }
        None => (None, None),
    };
    let mut datagrams_open = datagrams.is_some();
    let mut decoder = CapsuleDecoder::new(MAX_UDP_PAYLOAD as u64 + 8);
    let mut capsules = BytesMut::new();
    let mut udp_buf = vec![0u8; MAX_UDP_PAYLOAD];
    tokio::pin!(revoked);

    let to_target = |payload: Bytes| {
        // RFC 9298 §4: context ID 0 carries a UDP payload; other IDs are dropped.
        match read_varint(&payload) {
            Some((0, n)) => {
                let udp = payload.slice(n..);
                meter.add_from_device(udp.len() as u64);
                // A connected UDP socket may report an earlier ICMP error here; UDP is lossy.
                if let Err(error) = socket.try_send(&udp) {
                    debug!(%error, "relay: UDP payload not sent to the target");
                }
            }
            _ => {
                stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    };

    loop {
        tokio::select! {
            () = &mut revoked => {
                send.reset(ResetReason::Cancelled);
                recv.abort(ResetReason::Cancelled);
                return UdpEnd::Revoked;
            }
            payload = next_datagram(&mut datagrams), if datagrams_open => match payload {
                Some(payload) => to_target(payload),
                None => datagrams_open = false,
            },
            received = poll_fn(|cx| recv.poll_data(cx)) => match received {
                Ok(Some(chunk)) => {
                    // UDP needs no backpressure: the window reopens as soon as the capsules
                    // are read (the decoder bounds what is buffered).
                    if let Err(error) = recv.release(chunk.len()) {
                        return UdpEnd::Device(error);
                    }
                    capsules.put(chunk);
                    loop {
                        match decoder.decode(&mut capsules) {
                            Ok(Some(Capsule::Datagram(payload))) => to_target(payload),
                            Ok(None) => break,
                            Err(error) => {
                                // RFC 9297 §3.3: a malformed capsule aborts the stream.
                                send.reset(ResetReason::MalformedCapsule);
                                recv.abort(ResetReason::MalformedCapsule);
                                return UdpEnd::Malformed(error.to_string());
                            }
                        }
                    }
                }
                Ok(None) => {
                    if let Err(error) = decoder.finish(&capsules) {
                        send.reset(ResetReason::MalformedCapsule);
                        return UdpEnd::Malformed(error.to_string());
                    }
                    // RFC 9298 §3: the UDP association lives as long as the stream.
                    if let Err(error) = send.finish().await {
                        return UdpEnd::Device(error);
                    }
                    return UdpEnd::Finished;
                }
                Err(error) => {
                    send.reset(ResetReason::NoError);
                    return UdpEnd::Device(error);
                }
            },
            received = socket.recv(&mut udp_buf) => {
                let n = match received {
                    Ok(n) => n,
                    Err(error) => {
                        debug!(%error, "relay: UDP receive error (ICMP from the target?)");
                        continue;
                    }
                };
                let udp = udp_buf.get(..n).unwrap_or_default();
                meter.add_to_device(n as u64);
                match &quic_out {
                    Some((connection, prefix, _route)) if connection.max_datagram_size().is_some() => {
                        let mut datagram = BytesMut::with_capacity(prefix.len() + n);
                        datagram.put_slice(prefix);
                        datagram.put_slice(udp);
                        if connection.send_datagram(datagram.freeze()).is_err() {
                            // Too large for the path, or the buffer is full: UDP is lossy.
                            stats.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        let mut value = Vec::with_capacity(1 + n);
                        value.push(0);
                        value.extend_from_slice(udp);
                        let mut capsule = BytesMut::new();
                        let _ = encode_datagram(&value, &mut capsule);
                        if let Err(error) = send.send(capsule.freeze()).await {
                            return UdpEnd::Device(error);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn well_known() -> UdpPathTemplate {
        UdpPathTemplate::parse(WELL_KNOWN_UDP_PATH).unwrap()
    }

    fn target(t: &UdpPathTemplate, path: &str) -> Option<(String, u16)> {
        t.match_path(path)
            .map(|r| r.map(|t| (t.host, t.port)).unwrap_or_default())
    }

    #[test]
    fn well_known_template() {
        let t = well_known();
        assert_eq!(
            target(&t, "/.well-known/masque/udp/192.0.2.6/443/"),
            Some(("192.0.2.6".into(), 443))
        );
        // RFC 9298 §2: IPv6 colons are percent-encoded.
        assert_eq!(
            target(&t, "/.well-known/masque/udp/2001%3Adb8%3A%3A42/53/"),
            Some(("2001:db8::42".into(), 53))
        );
        assert_eq!(
            target(&t, "/.well-known/masque/udp/Example.COM/4433/"),
            Some(("example.com".into(), 4433))
        );
        assert_eq!(target(&t, "/.well-known/masque/udp/example.com/443"), None);
        assert_eq!(
            target(&t, "/.well-known/masque/udp/example.com/443/x"),
            None
        );
        assert_eq!(target(&t, "/.well-known/masque/udp//443/"), None);
        assert_eq!(target(&t, "/.well-known/masque/udp/a/b/443/"), None);
        assert_eq!(target(&t, "/other/udp/example.com/443/"), None);
        assert!(matches!(
            t.match_path("/.well-known/masque/udp/example.com/0/"),
            Some(Err(_))
        ));
        assert!(t.match_path("/.well-known/masque/udp/exa%ZZ/53/").is_none());
    }

    #[test]
    fn query_template() {
        let t = UdpPathTemplate::parse("/masque?h={target_host}&p={target_port}").unwrap();
        assert_eq!(
            target(&t, "/masque?h=dns.example&p=53"),
            Some(("dns.example".into(), 53))
        );
        assert_eq!(target(&t, "/masque?h=dns.example&p=53&x=1"), None);
    }

    #[test]
    fn bad_templates() {
        for template in [
            "masque/{target_host}/{target_port}",
            "/masque/{target_host}",
            "/masque/{target_host}/{target_host}/{target_port}",
            "/masque/{target_host}{target_port}",
            "/masque/{target_host}/{target_port}/{other}",
            "/ü{target_host}/{target_port}{",
        ] {
            assert!(UdpPathTemplate::parse(template).is_err(), "{template}");
        }
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab%3a").as_deref(), Some("a:b:"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn routes_deliver_until_dropped() {
        let routes = Arc::new(DatagramRoutes::default());
        let (mut rx, route) = routes.register(4);
        assert!(routes.deliver(4, Bytes::from_static(b"x")));
        assert!(!routes.deliver(8, Bytes::from_static(b"x")));
        assert_eq!(rx.try_recv().unwrap(), Bytes::from_static(b"x"));
        drop(route);
        assert!(!routes.deliver(4, Bytes::from_static(b"x")));
    }
}
