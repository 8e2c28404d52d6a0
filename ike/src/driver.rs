//! The tokio side of IKE: UDP sockets on ports 500 and 4500 (RFC 3948: non-ESP marker,
//! keepalives) and a loop that feeds one [`IkeSa`] and sends what it asks for.
//!
//! Not yet: the endpoint that demultiplexes many SAs by SPI. The ESP data path is
//! [`crate::tunnel`] and [`crate::datapath`].

use crate::cookie::{Admission, CookieGate};
use crate::sa::{Event, IkeSa, SaConfig, Transmit, IKE_PORT, NATT_PORT};
use crate::wire::{
    classify_udp4500, with_non_esp_marker, ExchangeType, Header, HeaderRepr, Udp4500,
};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// A received datagram, classified.
#[derive(Debug)]
pub enum Received {
    /// An IKE message (marker removed), from `from`, on our `local_port`.
    Ike {
        data: Vec<u8>,
        from: SocketAddr,
        local_port: u16,
    },
    /// UDP-encapsulated ESP (RFC 3948 §2.1), for the data path.
    Esp { data: Vec<u8>, from: SocketAddr },
    /// A NAT keepalive or something malformed: nothing to do.
    Ignored,
}

/// The two IKE sockets of one local address.
#[derive(Debug)]
pub struct IkeSockets {
    ike: UdpSocket,
    natt: Arc<UdpSocket>,
    local: IpAddr,
}

impl IkeSockets {
    pub async fn bind(local: IpAddr) -> std::io::Result<IkeSockets> {
        Ok(IkeSockets {
            ike: UdpSocket::bind((local, IKE_PORT)).await?,
            natt: Arc::new(UdpSocket::bind((local, NATT_PORT)).await?),
            local,
        })
    }

    /// The port-500 socket.
    pub fn ike_socket(&self) -> &UdpSocket {
        &self.ike
    }

    /// The port-4500 socket (IKE after a NAT, and UDP-encapsulated ESP).
    pub fn natt_socket(&self) -> &UdpSocket {
        &self.natt
    }

    /// The port-4500 socket, shared with the data path's tasks.
    pub fn natt_shared(&self) -> Arc<UdpSocket> {
        self.natt.clone()
    }

    pub fn local(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.local, port)
    }

    pub async fn send(&self, t: &Transmit) -> std::io::Result<()> {
        let socket = if t.local_port == NATT_PORT {
            &self.natt
        } else {
            &self.ike
        };
        socket.send_to(&t.data, t.remote).await.map(|_| ())
    }

    pub async fn recv(&self) -> std::io::Result<Received> {
        let mut a = vec![0u8; 65_535];
        let mut b = vec![0u8; 65_535];
        tokio::select! {
            r = self.ike.recv_from(&mut a) => {
                let (n, from) = r?;
                a.truncate(n);
                Ok(Received::Ike { data: a, from, local_port: IKE_PORT })
            }
            r = self.natt.recv_from(&mut b) => {
                let (n, from) = r?;
                b.truncate(n);
                Ok(match classify_udp4500(&b) {
                    Udp4500::Ike(ike) => Received::Ike { data: ike.to_vec(), from, local_port: NATT_PORT },
                    Udp4500::Esp(_) => Received::Esp { data: b, from },
                    _ => Received::Ignored,
                })
            }
        }
    }
}

/// What the owner of a driven SA can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Rekey every child SA (CREATE_CHILD_SA).
    RekeyChildren,
    /// Send a liveness check.
    CheckLiveness,
    /// Delete the IKE SA.
    Delete,
    /// Rekey the IKE SA (CREATE_CHILD_SA, RFC 7296 §1.3.2).
    RekeyIke,
}

/// Drives `sa` until it closes, sending its events to `events`.
pub async fn drive(sockets: &IkeSockets, sa: IkeSa, events: mpsc::UnboundedSender<Event>) -> IkeSa {
    let (_keep, commands) = mpsc::unbounded_channel();
    drive_with(sockets, sa, events, commands).await
}

/// Drives `sa` until it closes, taking commands from `commands`.
pub async fn drive_with(
    sockets: &IkeSockets,
    mut sa: IkeSa,
    events: mpsc::UnboundedSender<Event>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> IkeSa {
    loop {
        while let Some(t) = sa.poll_transmit() {
            if let Err(e) = sockets.send(&t).await {
                tracing::warn!(remote = %t.remote, error = %e, "IKE send failed");
            }
        }
        while let Some(e) = sa.poll_event() {
            let _ = events.send(e);
        }
        if sa.is_closed() {
            return sa;
        }
        let timeout = sa.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = sockets.recv() => match r {
                Ok(Received::Ike { data, from, .. }) => sa.handle(&data, from, Instant::now()),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "IKE receive failed"),
            },
            () = sleep => sa.handle_timeout(Instant::now()),
            Some(c) = commands.recv() => {
                let now = Instant::now();
                match c {
                    Command::RekeyChildren => {
                        for spi in sa.child_spis() {
                            sa.rekey_child(spi, now);
                        }
                    }
                    Command::CheckLiveness => sa.check_liveness(now),
                    Command::Delete => sa.delete(now),
                    Command::RekeyIke => sa.rekey_ike(now),
                }
            }
        }
    }
}

/// Waits for an IKE_SA_INIT request and answers it as responder.
pub async fn accept(sockets: &IkeSockets, config: Arc<SaConfig>) -> std::io::Result<IkeSa> {
    accept_gated(sockets, config, None).await
}

/// Like [`accept`], but each IKE_SA_INIT request passes `gate` first (RFC 7296 §2.6): with
/// `half_open` responder SAs still waiting for IKE_AUTH at or above its threshold, only a
/// request returning a valid cookie creates an SA; the others get a COOKIE answer and leave no
/// state behind.
pub async fn accept_with_cookies(
    sockets: &IkeSockets,
    config: Arc<SaConfig>,
    gate: &mut CookieGate,
    half_open: usize,
) -> std::io::Result<IkeSa> {
    accept_gated(sockets, config, Some((gate, half_open))).await
}

async fn accept_gated(
    sockets: &IkeSockets,
    config: Arc<SaConfig>,
    mut gate: Option<(&mut CookieGate, usize)>,
) -> std::io::Result<IkeSa> {
    loop {
        if let Received::Ike {
            data,
            from,
            local_port,
        } = sockets.recv().await?
        {
            let gate = gate.as_mut().map(|(g, n)| (&mut **g, *n));
            let local = sockets.local(local_port);
            match answer_init(&config, gate, &data, local, from, Instant::now()) {
                InitAnswer::Accepted(sa) => return Ok(*sa),
                InitAnswer::Answer(t) => send_cookie(sockets, &t).await,
                InitAnswer::Dropped => {}
            }
        }
    }
}

async fn send_cookie(sockets: &IkeSockets, t: &Transmit) {
    if let Err(e) = sockets.send(t).await {
        tracing::warn!(remote = %t.remote, error = %e, "cannot send a COOKIE");
    }
}

/// What a responder does with an IKE_SA_INIT request.
#[derive(Debug)]
pub enum InitAnswer {
    /// A responder SA for it (possibly already closed after queueing an error answer).
    Accepted(Box<IkeSa>),
    /// A COOKIE answer to send; no state kept (RFC 7296 §2.6).
    Answer(Transmit),
    /// Nothing to do.
    Dropped,
}

/// Answers an IKE_SA_INIT request (`data`, marker removed) that arrived on `local` from
/// `from`, first passing `gate` (with its half-open count) when there is one.
pub fn answer_init(
    config: &Arc<SaConfig>,
    gate: Option<(&mut CookieGate, usize)>,
    data: &[u8],
    local: SocketAddr,
    from: SocketAddr,
    now: Instant,
) -> InitAnswer {
    let admission = match gate {
        Some((gate, half_open)) => gate.admit(data, from.ip(), half_open, now),
        None => Admission::Admit,
    };
    match admission {
        Admission::Admit => InitAnswer::Accepted(Box::new(IkeSa::accept(
            config.clone(),
            data,
            local,
            from,
            now,
        ))),
        Admission::Challenge(answer) => InitAnswer::Answer(Transmit {
            local_port: local.port(),
            remote: from,
            data: if local.port() == NATT_PORT {
                with_non_esp_marker(&answer)
            } else {
                answer
            },
        }),
        Admission::Drop => InitAnswer::Dropped,
    }
}

/// The initiator's SPI of an IKE_SA_INIT request (a request with a zero responder SPI, RFC
/// 7296 §3.1), or `None` for any other datagram.
pub fn init_request_spi(data: &[u8]) -> Option<u64> {
    let header = Header::new_checked(data).ok()?;
    let h = HeaderRepr::parse(&header).ok()?;
    (h.exchange_type == ExchangeType::IKE_SA_INIT && !h.flags.response && h.responder_spi == 0)
        .then_some(h.initiator_spi)
}

/// The most half-open SAs remembered; older ones are forgotten first.
const HALF_OPEN_MAX: usize = 1024;

/// Responder IKE SAs that answered IKE_SA_INIT and have not completed IKE_AUTH (the
/// "half-open" SAs of RFC 7296 §2.6), each forgotten after a timeout.
#[derive(Debug)]
pub struct HalfOpen {
    timeout: Duration,
    open: VecDeque<(u64, Instant)>,
}

impl HalfOpen {
    pub fn new(timeout: Duration) -> Self {
        HalfOpen {
            timeout,
            open: VecDeque::new(),
        }
    }

    /// The SA with initiator SPI `spi_i` answered IKE_SA_INIT.
    pub fn opened(&mut self, spi_i: u64, now: Instant) {
        if self.open.len() >= HALF_OPEN_MAX {
            self.open.pop_front();
        }
        self.open.push_back((spi_i, now));
    }

    /// The SA with initiator SPI `spi_i` completed IKE_AUTH or closed.
    pub fn completed(&mut self, spi_i: u64) {
        self.open.retain(|(spi, _)| *spi != spi_i);
    }

    /// How many are half-open now.
    pub fn count(&mut self, now: Instant) -> usize {
        let timeout = self.timeout;
        self.open
            .retain(|(_, at)| now.saturating_duration_since(*at) < timeout);
        self.open.len()
    }
}

/// Waits for an IKE_SA_INIT request from `peer` and answers it as responder behind `gate`
/// (with `half_open`'s count, RFC 7296 §2.6); the SA is counted as half-open. IKE_SA_INIT
/// requests from any other address are dropped and counted in `foreign`; other messages are
/// dropped.
pub async fn accept_peer(
    sockets: &IkeSockets,
    config: &Arc<SaConfig>,
    peer: IpAddr,
    gate: &mut CookieGate,
    half_open: &mut HalfOpen,
    foreign: &AtomicU64,
) -> std::io::Result<IkeSa> {
    loop {
        let Received::Ike {
            data,
            from,
            local_port,
        } = sockets.recv().await?
        else {
            continue;
        };
        let Some(spi_i) = init_request_spi(&data) else {
            continue;
        };
        if from.ip() != peer {
            foreign.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let now = Instant::now();
        let count = half_open.count(now);
        let local = sockets.local(local_port);
        match answer_init(config, Some((gate, count)), &data, local, from, now) {
            InitAnswer::Accepted(sa) => {
                if !sa.is_closed() {
                    half_open.opened(spi_i, now);
                }
                return Ok(*sa);
            }
            InitAnswer::Answer(t) => send_cookie(sockets, &t).await,
            InitAnswer::Dropped => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(spi_r: u64, exchange: u8, flags: u8) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
        h.extend_from_slice(&spi_r.to_be_bytes());
        h.extend_from_slice(&[0, 0x20, exchange, flags]);
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&28u32.to_be_bytes());
        h
    }

    #[test]
    fn only_ike_sa_init_requests_with_a_zero_responder_spi_are_new() {
        assert_eq!(
            init_request_spi(&header(0, 34, 0x08)),
            Some(0x1122_3344_5566_7788)
        );
        // a response, another SA's request, another exchange, garbage
        assert_eq!(init_request_spi(&header(0, 34, 0x20)), None);
        assert_eq!(init_request_spi(&header(7, 34, 0x08)), None);
        assert_eq!(init_request_spi(&header(0, 35, 0x08)), None);
        assert_eq!(init_request_spi(&[0u8; 10]), None);
        assert_eq!(init_request_spi(&header(0, 34, 0x08)[..27]), None);
    }

    #[test]
    fn half_open_sas_complete_or_expire() {
        let t0 = Instant::now();
        let mut h = HalfOpen::new(Duration::from_secs(30));
        h.opened(1, t0);
        h.opened(2, t0 + Duration::from_secs(10));
        h.opened(3, t0 + Duration::from_secs(20));
        assert_eq!(h.count(t0 + Duration::from_secs(20)), 3);
        h.completed(2);
        assert_eq!(h.count(t0 + Duration::from_secs(20)), 2);
        // the first expires 30 s after it was answered
        assert_eq!(h.count(t0 + Duration::from_secs(30)), 1);
        assert_eq!(h.count(t0 + Duration::from_secs(50)), 0);
        for spi in 0..(HALF_OPEN_MAX as u64 + 5) {
            h.opened(spi, t0 + Duration::from_secs(60));
        }
        assert_eq!(h.count(t0 + Duration::from_secs(60)), HALF_OPEN_MAX);
    }
}
