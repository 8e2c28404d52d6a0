//! The MASQUE relay terminator: the front door every managed Apple device talks to.
//!
//! # What is built
//!
//! - An HTTP/3 listener ([`Relay::bind`], `http3_listen`) on quinn 0.11 + h3 0.0.8, and an
//!   HTTP/2 listener (`http2_listen`, Apple's `HTTP2RelayURL`) on h2 0.4 over tokio-rustls; a
//!   relay runs either or both. Both use mutual TLS ([`tls`]): the device CA bundles (and
//!   optional CRL files) verify the client certificate during the handshake (rustls
//!   `WebPkiClientVerifier`, client authentication mandatory, ALPN `h3` / `h2`, 0-RTT off;
//!   TLS 1.3 only on QUIC, TLS 1.3 and 1.2 on TCP). Handshake failures are counted and logged
//!   with the reason.
//! - Device identity ([`identity`]) from the verified end-entity certificate, in the configured
//!   order of [`IdentitySource`]s: the RFC 4043 PermanentIdentifier SAN, Apple's attested serial
//!   extension, the subject CN or serialNumber; plus the attested UDID and OS version when
//!   present, the validity window, and the certificate's serial number (for an authorizer
//!   that keeps its own revocation list).
//! - Classic `CONNECT host:port` (RFC 9114 §4.4, RFC 9113 §8.5) on both listeners, with the
//!   same code path after the HTTP layer (`request`): every request is decided by the
//!   [`Authorizer`] the appliance implements; a forwarded request is dialled through an
//!   [`Egress`] first and answered `200` only once the TCP connection is up, then spliced byte
//!   for byte both ways with backpressure (QUIC flow control, HTTP/2 WINDOW_UPDATEs sent only
//!   once the bytes reached the target) and half-close. Refusals and failures carry a
//!   `Proxy-Status` field (RFC 9209, [`proxy_status`]).
//! - connect-udp ([`connect_udp`], RFC 9298): extended CONNECT with `:protocol = connect-udp`
//!   (RFC 9220 on HTTP/3; RFC 8441 with SETTINGS_ENABLE_CONNECT_PROTOCOL on HTTP/2) on the
//!   well-known URI template or a configured one, answered `200` with `capsule-protocol: ?1`
//!   once the egress's UDP socket is open; UDP payloads in QUIC DATAGRAM frames (context ID 0)
//!   on HTTP/3, or in DATAGRAM capsules on the stream on either listener, through the relay's
//!   own Capsule Protocol codec ([`capsule`], RFC 9297 §3.2; unknown capsule types skipped).
//! - Flows and revocation (`flows`): every flow is registered with its device, target,
//!   egress, listener, start time, bytes each way and, once dialled, the local address its
//!   target socket left from ([`FlowInfo::source`], [`RelayHandle::flows`]);
//!   [`RelayHandle::revoke`] resets a device's flows that a predicate does not keep
//!   (H3_REQUEST_CANCELLED / RST_STREAM CANCEL, target TCP reset) within milliseconds;
//!   [`RelayHandle::revoke_certificate`] closes all the device's connections. A per-device
//!   connection limit over both listeners (`max_connections_per_device`).
//! - An optional shared header secret ([`HeaderSecret`]) checked in constant time on every
//!   request of both listeners; missing or wrong → `403` with `Proxy-Status:
//!   …; error=connection_refused; details="missing or wrong relay header"`.
//! - Names resolved through the decided egress ([`DirectEgress::with_egress_dns`],
//!   [`EgressDns`]): its static hosts, then its own name servers (hickory-resolver, queried
//!   from the route's source address); NXDOMAIN or no records → `502` with `Proxy-Status:
//!   …; error=dns_error`, no answer → `504 dns_timeout`. An egress without name servers uses
//!   the host's resolver.
//! - Idle behaviour: no stream idle timeout by default (`limits.stream_idle_timeout` can set
//!   one for TCP flows), QUIC keepalive PINGs and HTTP/2 PINGs every `keepalive_interval`, a
//!   connection idle timeout, per-connection stream limits (QUIC MAX_STREAMS, 100 by
//!   default; 8 unidirectional streams) and the per-device connection limit.
//! - [`RelayStats`] counters shared by both listeners and a graceful [`RelayHandle::shutdown`].
//!   Malformed input is counted: `malformed_requests` (400s, requests h3 resets with
//!   H3_MESSAGE_ERROR or answers 431, malformed capsules), `http2_streams_refused` (streams h2
//!   refuses itself), `http2_protocol_errors` (HTTP/2 connections h2 closes), and
//!   `datagrams_dropped` (HTTP Datagrams for no connect-udp flow).
//!
//! # What is not built yet, or known limits
//!
//! - h3 0.0.8 accepts some malformed HTTP/3 requests the relay cannot see as such: a
//!   pseudo-header field after a regular one, a repeated pseudo-header field (the last one
//!   wins); they are decided and served (or answered 501) like well-formed ones
//!   (`tests/malformed.rs` records this).
//! - The peer's SETTINGS_H3_DATAGRAM is not checked before datagrams are sent (h3 0.0.8 keeps
//!   the peer's settings behind its unstable API); the QUIC `max_datagram_frame_size` is.
//! - Handshake-failure logs are not rate-limited; per-connection abuse limits do not exist
//!   beyond the stream and header limits. HTTP/3 connection-level protocol errors are not
//!   counted separately.
//! - `revoke_certificate` closes the connections that are open; a reconnect with the same
//!   certificate is refused only by a CRL or by the authorizer.
//! - The stream idle timeout applies to classic CONNECT flows, not to connect-udp.
//! - The benchmark measures the HTTP/3 listener only; no HTTP/2 throughput figure yet.
//!
//! HTTP Datagrams are read from and written to the quinn connection directly rather than
//! through h3-datagram: one reader per connection routes them by stream to the flows, and no
//! request task needs the h3 connection object.
//!
//! # Benchmark
//!
//! `cargo run --release -p relay --example relay_bench` prints the memory per idle device
//! connection (1,000 connections with one idle CONNECT stream each, clients in another
//! process), one CONNECT stream's throughput next to a TCP loopback copy and quinn's raw
//! stream, and full mutual-TLS handshakes per second (clients in another process, the relay
//! process's CPU time per handshake apart).
//!
//! # Tests
//!
//! `tests/h3_connect.rs` drives the HTTP/3 listener with aioquic (`tests/h3_client.py`, an
//! independent HTTP/3 client): it needs `python3 -m pip install aioquic`.
//! `tests/h2_connect.rs` drives the HTTP/2 listener with Node.js's built-in `http2` module
//! (`tests/h2_client.js`; run with Node 20). `tests/revocation.rs` revokes flows on both
//! listeners at once and checks the per-device limit and the header secret.
//! `tests/load.rs`: 1 GiB each way through one CONNECT with equal SHA-256 digests (aioquic;
//! `RELAY_BULK_MIB` changes the size), 1,000 concurrent CONNECTs over 10 connections.
//! `tests/malformed.rs`: malformed requests on both listeners (aioquic, and the raw HTTP/2
//! client `tests/h2_raw.py` on the `h2` library) and stray HTTP Datagrams.
//! `tests/idle.rs`: keepalive, the connection idle timeout, the stream idle timeout and the
//! stream limit.

pub mod capsule;
mod connect_tcp;
pub mod connect_udp;
mod dns;
mod egress;
mod flows;
mod h2;
mod h3;
pub mod identity;
pub mod proxy_status;
mod request;
mod server;
mod stream;
mod target;
pub mod tls;

#[cfg(test)]
#[path = "../tests/support/certs.rs"]
mod test_certs;
#[cfg(test)]
#[path = "../tests/support/dns_server.rs"]
mod test_dns;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::SystemTime;

pub use dns::EgressDns;
pub use egress::{DirectEgress, Egress, EgressError};
pub use flows::{FlowInfo, HttpVersion};
pub use request::{HeaderSecret, HeaderSecretError};
pub use server::{
    Relay, RelayConfig, RelayError, RelayHandle, RelayLimits, RelayStats, RelayStatsSnapshot,
};
pub use target::{Target, TargetError};

/// Where a device's identity is read from in its client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentitySource {
    /// The PermanentIdentifier otherName SAN (RFC 4043), what ACME device-attest-01 issues.
    PermanentIdentifier,
    /// Apple's attested serial number extension, OID 1.2.840.113635.100.8.9.1.
    AppleSerialOid,
    /// The subject's common name.
    SubjectCn,
    /// The subject's serialNumber attribute (OID 2.5.4.5).
    SubjectSerialNumber,
}

impl IdentitySource {
    /// Every source, in the order the configuration documents them.
    pub const ALL: [IdentitySource; 4] = [
        IdentitySource::PermanentIdentifier,
        IdentitySource::AppleSerialOid,
        IdentitySource::SubjectCn,
        IdentitySource::SubjectSerialNumber,
    ];

    /// The name used in the configuration file (`relay.identity`).
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::PermanentIdentifier => "permanent-identifier",
            IdentitySource::AppleSerialOid => "apple-serial",
            IdentitySource::SubjectCn => "subject-cn",
            IdentitySource::SubjectSerialNumber => "subject-serial",
        }
    }
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An identity source name that is not one of [`IdentitySource::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown identity source `{0}` (expected one of: permanent-identifier, apple-serial, subject-cn, subject-serial)")]
pub struct UnknownIdentitySource(pub String);

impl FromStr for IdentitySource {
    type Err = UnknownIdentitySource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        IdentitySource::ALL
            .into_iter()
            .find(|source| source.as_str() == s)
            .ok_or_else(|| UnknownIdentitySource(s.to_string()))
    }
}

/// A device as the relay knows it from its verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The serial number (devices are keyed by serial: on Macs the attested UDID differs from
    /// the MDM's).
    pub serial: String,
    /// Which certificate field it came from.
    pub source: IdentitySource,
    /// The attested UDID (OID 1.2.840.113635.100.8.9.2), when the certificate carries it.
    pub udid: Option<String>,
    /// The attested OS version (OID 1.2.840.113635.100.8.10.1), when the certificate carries it.
    pub os_version: Option<String>,
    /// The certificate's validity window.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The certificate's serial number: the DER INTEGER's content octets (RFC 5280 §4.1.2.2),
    /// for an authorizer that keeps its own revocation list.
    pub certificate_serial: Vec<u8>,
}

/// The transport a request asks to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Classic CONNECT (RFC 9114 §4.4).
    Tcp,
    /// connect-udp (RFC 9298).
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// One request, as the [`Authorizer`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct RelayRequest<'a> {
    /// The device, from its verified certificate.
    pub device: &'a DeviceIdentity,
    /// The target host: a DNS name (ASCII lowercase) or an IP address literal (no brackets).
    pub host: &'a str,
    pub port: u16,
    pub protocol: Protocol,
    /// The device's address as the relay sees it (the QUIC path's or the TCP connection's
    /// remote address).
    pub peer: SocketAddr,
    /// When the request is decided.
    pub now: SystemTime,
}

/// Where a forwarded request leaves the appliance.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EgressRoute {
    /// The egress's name, for logs and the flow list; opaque to the relay.
    pub name: String,
    /// The source address to bind the outgoing socket to; `None` lets the kernel choose.
    pub source: Option<IpAddr>,
}

/// The status a refused request is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyStatus {
    /// `403 Forbidden`.
    Forbidden,
    /// `502 Bad Gateway`: what Apple's relay client treats as "blocked".
    BadGateway,
}

impl DenyStatus {
    /// The HTTP status code.
    pub fn code(self) -> u16 {
        match self {
            DenyStatus::Forbidden => 403,
            DenyStatus::BadGateway => 502,
        }
    }
}

/// What the appliance decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayDecision {
    /// Dial the target through this egress.
    Forward { egress: EgressRoute },
    /// Refuse: the status, with `Proxy-Status: …; error=connection_refused`.
    Deny { status: DenyStatus },
    /// Tell the device to go direct: `503` with `Proxy-Status: …; error=destination_unavailable`.
    Direct,
    /// Refused for a reason of the appliance's own rather than policy (e.g. its NAT pool is
    /// exhausted): `502` with `Proxy-Status: …; error=connection_refused; details=…` carrying
    /// these details.
    Refuse { details: String },
}

/// The question the relay asks for every CONNECT / connect-udp. Implemented by the appliance.
///
/// Called on the relay's async runtime for every request: it must answer from memory and not
/// block. It must not panic (a panic ends that request without an answer).
pub trait Authorizer: Send + Sync + 'static {
    /// Decides one request.
    fn authorize(&self, request: &RelayRequest<'_>) -> RelayDecision;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_source_names_round_trip() {
        for source in IdentitySource::ALL {
            assert_eq!(source.as_str().parse::<IdentitySource>(), Ok(source));
        }
        let err = "subject".parse::<IdentitySource>().unwrap_err();
        assert!(err
            .to_string()
            .contains("unknown identity source `subject`"));
    }

    #[test]
    fn deny_status_codes() {
        assert_eq!(DenyStatus::Forbidden.code(), 403);
        assert_eq!(DenyStatus::BadGateway.code(), 502);
    }
}
