//! One tunnel's data plane in tokio: a TUN device, the IKE sockets, the IKE SA and its ESP SAs.
//! Packets the kernel routes into the TUN device leave encrypted in UDP 4500 (RFC 3948); ESP
//! that arrives is checked (replay, ICV, traffic selectors) and written back into the TUN
//! device. Child SAs are installed make-before-break as the IKE SA rekeys them, and a child SA
//! reaching its soft limit is rekeyed.
//!
//! The TUN device comes from the `tun-tap` crate (named by the product card); it does the one
//! `TUNSETIFF` ioctl, so this crate needs no `unsafe`. Its blocking file descriptor is set
//! non-blocking and driven by tokio's `AsyncFd`. tun-tap has no multi-queue or offloads; a
//! faster data path will need them.
//!
//! Not yet: raw ESP (IP protocol 50) when no NAT is on the path — only UDP encapsulation,
//! which every peer here (strongSwan with kernel-libipsec always encapsulates) uses; routes via
//! rtnetlink (the caller routes the remote selectors into the device).

use crate::driver::{Command, IkeSockets};
use crate::esp::{InboundEsp, InnerPacket, Opened, OutboundEsp};
use crate::sa::{Event, IkeSa};
use crate::wire::{classify_udp4500, TrafficSelector, Udp4500};
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// How often a NAT-keepalive is sent (RFC 3948 §4 suggests 20 s).
pub const NAT_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);

/// Packet and drop counts of a tunnel's data plane.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelCounters {
    pub packets_out: u64,
    pub packets_in: u64,
    /// Packets from the TUN device that no child SA covers.
    pub no_sa: u64,
    /// ESP for an SPI we do not have.
    pub unknown_spi: u64,
    /// ESP refused by its SA (replay, ICV, selectors, malformed).
    pub esp_dropped: u64,
    pub send_errors: u64,
}

/// A TUN device for one tunnel.
#[derive(Debug)]
pub struct TunDevice {
    fd: AsyncFd<tun_tap::Iface>,
}

impl TunDevice {
    /// Creates (or opens) the TUN device `name`, without packet information headers.
    pub fn create(name: &str) -> std::io::Result<TunDevice> {
        let iface = tun_tap::Iface::without_packet_info(name, tun_tap::Mode::Tun)?;
        iface.set_non_blocking()?;
        // `AsyncFd::new` is deprecated for lack of I/O safety; it holds here: the `Iface` owns
        // its descriptor and lives inside the `AsyncFd` until both are dropped together. The
        // replacement (`register`) is `unsafe`, which this crate does not allow.
        #[allow(deprecated)]
        let fd = AsyncFd::new(iface)?;
        Ok(TunDevice { fd })
    }

    pub fn name(&self) -> &str {
        self.fd.get_ref().name()
    }

    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| fd.get_ref().recv(buf)) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    async fn write(&self, packet: &[u8]) -> std::io::Result<()> {
        loop {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| fd.get_ref().send(packet)) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }
}

struct Outbound {
    esp: OutboundEsp,
    remote_ts: Vec<TrafficSelector>,
    spi_in: u32,
}

/// The outbound SAs of a tunnel, make-before-break: the newest covering SA sends. A child SA
/// the peer rekeyed (we answered) is only sent on once the peer deletes the old one, so the
/// peer has it installed by then (what strongSwan does too); an SA we rekeyed is used at once.
#[derive(Default)]
struct OutboundSet {
    live: Vec<Outbound>,
    /// (inbound SPI of the SA waited for, the staged SA)
    staged: Vec<(u32, Outbound)>,
}

impl OutboundSet {
    fn install(&mut self, o: Outbound, waits_for: Option<u32>) {
        match waits_for {
            Some(old) if self.live.iter().any(|l| l.spi_in == old) => self.staged.push((old, o)),
            _ => self.live.push(o),
        }
    }

    fn remove(&mut self, spi_in: u32) {
        self.live.retain(|o| o.spi_in != spi_in);
        self.staged.retain(|(_, o)| o.spi_in != spi_in);
        let (ready, wait): (Vec<_>, Vec<_>) =
            self.staged.drain(..).partition(|(old, _)| *old == spi_in);
        self.staged = wait;
        self.live.extend(ready.into_iter().map(|(_, o)| o));
    }

    fn route(&mut self, dst: IpAddr) -> Option<&mut Outbound> {
        self.live
            .iter_mut()
            .rev()
            .find(|o| covers(&o.remote_ts, dst))
    }
}

fn covers(selectors: &[TrafficSelector], addr: IpAddr) -> bool {
    selectors.iter().any(|t| t.addresses.contains(addr))
}

/// Runs the tunnel until its IKE SA closes. Events go to `events` after the data plane acted
/// on them; `commands` work as in [`crate::driver::drive_with`].
pub async fn run(
    sockets: &IkeSockets,
    tun: &TunDevice,
    mut sa: IkeSa,
    events: mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (IkeSa, TunnelCounters) {
    let mut counters = TunnelCounters::default();
    let mut inbound: HashMap<u32, InboundEsp> = HashMap::new();
    let mut outbound = OutboundSet::default();
    let mut tun_buf = vec![0u8; 65_535];
    let mut udp_buf = vec![0u8; 65_535];
    let mut ike_buf = vec![0u8; 65_535];
    let mut sealed = Vec::with_capacity(2048);
    // RFC 3948 §2.3: keep the NAT's mapping alive while nothing else is sent
    let mut keepalive = tokio::time::interval(NAT_KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        while let Some(t) = sa.poll_transmit() {
            if sockets.send(&t).await.is_err() {
                counters.send_errors += 1;
            }
        }
        while let Some(e) = sa.poll_event() {
            match &e {
                Event::ChildSaEstablished(child) => match (
                    OutboundEsp::from_child(child),
                    InboundEsp::from_child(child),
                ) {
                    (Ok(out), Ok(inn)) => {
                        inbound.insert(child.spi_in, inn);
                        // make-before-break: both old and new SA stay until the old one's
                        // delete; a rekey we made sends on the new one at once, one the peer
                        // made once the old one is deleted
                        let waits_for = child
                            .rekeys
                            .filter(|_| child.role == crate::sa::Role::Responder);
                        outbound.install(
                            Outbound {
                                esp: out.with_limits(sa.lifetimes().esp_limits()),
                                remote_ts: child.remote_ts.clone(),
                                spi_in: child.spi_in,
                            },
                            waits_for,
                        );
                    }
                    (Err(err), _) | (_, Err(err)) => {
                        tracing::warn!(error = %err, "cannot install child SA")
                    }
                },
                Event::ChildSaDeleted { spi_in, .. } => {
                    inbound.remove(spi_in);
                    outbound.remove(*spi_in);
                }
                _ => {}
            }
            let _ = events.send(e);
        }
        if sa.is_closed() {
            return (sa, counters);
        }
        let timeout = sa.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = tun.read(&mut tun_buf) => {
                let Ok(n) = r else { continue };
                let packet = &tun_buf[..n];
                let Ok(inner) = InnerPacket::parse(packet) else { continue };
                let Some(o) = outbound.route(inner.dst) else {
                    counters.no_sa += 1;
                    continue;
                };
                sealed.clear();
                match o.esp.seal(packet, &mut sealed) {
                    Ok(info) => {
                        if info.rekey_due {
                            sa.rekey_child(o.spi_in, Instant::now());
                        }
                        if sockets.natt_socket().send_to(&sealed, sa.remote()).await.is_ok() {
                            counters.packets_out += 1;
                        } else {
                            counters.send_errors += 1;
                        }
                    }
                    Err(_) => {
                        // past the hard limit: rekey, and drop until the new SA is up
                        sa.rekey_child(o.spi_in, Instant::now());
                        counters.no_sa += 1;
                    }
                }
            }
            r = sockets.natt_socket().recv_from(&mut udp_buf) => {
                let Ok((n, from)) = r else { continue };
                match classify_udp4500(&udp_buf[..n]) {
                    Udp4500::Ike(ike) => sa.handle(ike, from, Instant::now()),
                    Udp4500::Esp(_) => {
                        let spi = u32::from_be_bytes([udp_buf[0], udp_buf[1], udp_buf[2], udp_buf[3]]);
                        let Some(esp) = inbound.get_mut(&spi) else {
                            counters.unknown_spi += 1;
                            continue;
                        };
                        match esp.open_in_place(&mut udp_buf[..n]) {
                            Ok(Opened::Packet { at, .. }) => {
                                counters.packets_in += 1;
                                // the peer is alive: no liveness check needed (RFC 3706 idea)
                                sa.traffic_received(Instant::now());
                                let _ = tun.write(&udp_buf[at]).await;
                            }
                            Ok(Opened::Dummy { .. }) => {}
                            Err(_) => counters.esp_dropped += 1,
                        }
                    }
                    _ => {}
                }
            }
            r = sockets.ike_socket().recv_from(&mut ike_buf) => {
                if let Ok((n, from)) = r {
                    sa.handle(&ike_buf[..n], from, Instant::now());
                }
            }
            () = sleep => sa.handle_timeout(Instant::now()),
            _ = keepalive.tick() => {
                if sa.is_established() && sa.remote().port() == crate::sa::NATT_PORT {
                    let _ = sockets.natt_socket().send_to(&crate::wire::NAT_KEEPALIVE, sa.remote()).await;
                }
            }
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

/// What [`supervise`] does when liveness checks find the peer dead (`dpd_action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DpdAction {
    /// Initiate a new IKE SA at once (with backoff while the peer stays away).
    #[default]
    Restart,
    /// Stay down until traffic for the tunnel arrives on the TUN device (or the operator
    /// brings it up again), then initiate.
    Clear,
}

/// How [`supervise`] keeps a tunnel up.
#[derive(Debug, Clone)]
pub struct Supervision {
    pub config: std::sync::Arc<crate::sa::SaConfig>,
    pub local: std::net::SocketAddr,
    pub remote: std::net::SocketAddr,
    /// The longest wait between two attempts.
    pub max_delay: std::time::Duration,
    /// While false, no IKE SA is initiated (an operator brought the tunnel down).
    pub enabled: tokio::sync::watch::Receiver<bool>,
    /// SA lifetimes (rekey with jitter, hard expiry) and the liveness interval.
    pub lifetimes: crate::sa::Lifetimes,
    pub dpd_action: DpdAction,
}

/// Keeps a tunnel up as its initiator: whenever the IKE SA closes (the peer deleted it, stopped
/// answering liveness checks, or refused us), a new one is initiated after a delay that doubles
/// up to `max_delay` and resets once an SA was established — the `dpd_action = restart`
/// behaviour. With `dpd_action = clear`, a peer found dead leaves the tunnel down until a packet
/// for it arrives on the TUN device or the operator brings it up again. Returns when
/// `commands` is closed.
pub async fn supervise(
    sockets: &IkeSockets,
    tun: &TunDevice,
    mut plan: Supervision,
    events: mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        while !*plan.enabled.borrow_and_update() {
            if plan.enabled.changed().await.is_err() {
                return;
            }
        }
        let mut sa = IkeSa::initiate(plan.config.clone(), plan.local, plan.remote, Instant::now());
        sa.set_lifetimes(plan.lifetimes);
        let (sa, counters) = run(sockets, tun, sa, events.clone(), commands).await;
        tracing::info!(remote = %plan.remote, ?counters, "IKE SA closed");
        if plan.dpd_action == DpdAction::Clear
            && sa.was_established()
            && sa.close_cause() == crate::sa::CloseCause::PeerSilent
        {
            let _ = events.send(Event::Cleared {
                reason: format!(
                    "peer {} is dead; dpd_action = clear: waiting for traffic",
                    plan.remote
                ),
            });
            let mut buf = vec![0u8; 65_535];
            loop {
                tokio::select! {
                    // a packet to send: initiate (it is dropped; the sender retransmits)
                    _ = tun.read(&mut buf) => break,
                    // the operator's `tunnel up` (or down and up)
                    r = plan.enabled.changed() => if r.is_err() { return } else { break },
                    c = commands.recv() => match c {
                        None => return,
                        Some(Command::RekeyChildren | Command::RekeyIke) => break,
                        Some(_) => {}
                    },
                }
            }
            delay = std::time::Duration::from_millis(500);
            continue;
        }
        delay = if sa.was_established() {
            std::time::Duration::from_millis(500)
        } else {
            (delay * 2).min(plan.max_delay)
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            c = commands.recv() => if c.is_none() { return },
        }
    }
}
