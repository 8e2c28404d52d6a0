//! The tokio side of IKE: UDP sockets on ports 500 and 4500 (RFC 3948: non-ESP marker,
//! keepalives) and a loop that feeds one [`IkeSa`] and sends what it asks for.
//!
//! Not yet: the endpoint that demultiplexes many SAs by SPI. The ESP data path is
//! [`crate::tunnel`] and [`crate::datapath`].

use crate::cookie::{Admission, CookieGate};
use crate::sa::{Event, IkeSa, SaConfig, Transmit, IKE_PORT, NATT_PORT};
use crate::wire::{classify_udp4500, with_non_esp_marker, Udp4500};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;
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
            let now = Instant::now();
            let admission = match gate.as_mut() {
                Some((gate, half_open)) => gate.admit(&data, from.ip(), *half_open, now),
                None => Admission::Admit,
            };
            let answer = match admission {
                Admission::Admit => {
                    let sa =
                        IkeSa::accept(config.clone(), &data, sockets.local(local_port), from, now);
                    return Ok(sa);
                }
                Admission::Challenge(answer) => answer,
                Admission::Drop => continue,
            };
            let data = if local_port == NATT_PORT {
                with_non_esp_marker(&answer)
            } else {
                answer
            };
            let t = Transmit {
                local_port,
                remote: from,
                data,
            };
            if let Err(e) = sockets.send(&t).await {
                tracing::warn!(remote = %from, error = %e, "cannot send a COOKIE");
            }
        }
    }
}
