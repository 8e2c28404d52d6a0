//! One tunnel's data plane in tokio: a TUN device, the IKE sockets, the IKE SA and its ESP SAs.
//! Packets the kernel routes into the TUN device leave encrypted, in UDP 4500 (RFC 3948) when
//! the child SA is UDP-encapsulated and as raw ESP (IP protocol 50) otherwise (RFC 7296
//! §2.23); ESP that arrives is checked (replay, ICV, traffic selectors) and written back into
//! the TUN device. Child SAs are installed make-before-break as the IKE SA rekeys them, and a
//! child SA reaching its soft limit is rekeyed.
//!
//! [`run`] is the control loop (the IKE SA, its timers and commands); the packets move in
//! tasks of their own, one per direction, batched and with the TUN device's offloads
//! ([`crate::datapath`]).
//!
//! Routes are the caller's: the appliance routes the remote selectors into the device with
//! rtnetlink as child SAs come and go.

pub use crate::datapath::{TunDevice, TunnelCounters};

use crate::datapath::{self, Counters, EspPath, EspUdp, RawEsp, Sad};
use crate::driver::{Command, IkeSockets};
use crate::sa::{Event, IkeSa};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// How often a NAT-keepalive is sent (RFC 3948 §4 suggests 20 s).
pub const NAT_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(20);

/// Aborts the data-path tasks when the control loop ends, however it ends.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs the tunnel until its IKE SA closes. Events go to `events` after the data plane acted
/// on them; `commands` work as in [`crate::driver::drive_with`].
pub async fn run(
    sockets: &IkeSockets,
    tun: &TunDevice,
    sa: IkeSa,
    events: mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (IkeSa, TunnelCounters) {
    let (sa, counters, _) = run_until(sockets, tun, sa, events, commands, None).await;
    (sa, counters)
}

/// [`run`], and for a responder also taking a new IKE SA from its peer: returns when the IKE
/// SA closes or a new one replaced it (the third value).
async fn run_until(
    sockets: &IkeSockets,
    tun: &TunDevice,
    mut sa: IkeSa,
    events: mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    mut responder: Option<&mut Responder>,
) -> (IkeSa, TunnelCounters, Option<IkeSa>) {
    let counters = Arc::new(Counters::default());
    let sad = Arc::new(Sad::default());
    let (ike_tx, mut ike_rx) = mpsc::channel(datapath::IKE_QUEUE);
    let (rekey_tx, mut rekey_rx) = mpsc::unbounded_channel();
    let mut tasks = Tasks(Vec::new());
    let udp = match EspUdp::new(sockets.natt_shared()) {
        Ok(udp) => udp,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up UDP 4500 for ESP");
            sa.delete(Instant::now());
            return (sa, counters.snapshot(), None);
        }
    };
    tasks.0.push(tokio::spawn(datapath::encrypt_loop(
        tun.reader(),
        sad.clone(),
        udp.clone(),
        counters.clone(),
        rekey_tx,
    )));
    tasks.0.push(tokio::spawn(datapath::decrypt_udp_loop(
        udp,
        tun.writer(),
        sad.clone(),
        counters.clone(),
        ike_tx,
    )));
    // packets the decrypt tasks counted so far: ESP from the peer proves it alive
    let mut packets_in_seen = 0u64;
    let mut ike_buf = vec![0u8; 65_535];
    // RFC 3948 §2.3: keep the NAT's mapping alive while nothing else is sent
    let mut keepalive = tokio::time::interval(NAT_KEEPALIVE_INTERVAL);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // a responder's SA must complete IKE_AUTH within the half-open timeout: an IKE_SA_INIT
    // with a forged source (RFC 7296 §2.6) must not hold the tunnel in a half-open SA
    let auth_deadline = responder
        .as_deref()
        .map(|r| Instant::now() + r.half_open_timeout);
    loop {
        while let Some(t) = sa.poll_transmit() {
            if sockets.send(&t).await.is_err() {
                counters.count_send_error();
            }
        }
        while let Some(e) = sa.poll_event() {
            match &e {
                Event::ChildSaEstablished(child) => {
                    let path = if child.udp_encap {
                        EspPath::Udp(sa.remote())
                    } else {
                        if sad.raw().is_none() {
                            match RawEsp::open(sockets.local(0).ip(), sa.remote().ip()) {
                                Ok(raw) => {
                                    sad.set_raw(raw.clone());
                                    tasks.0.push(tokio::spawn(datapath::decrypt_raw_loop(
                                        raw,
                                        tun.writer(),
                                        sad.clone(),
                                        counters.clone(),
                                    )));
                                }
                                Err(err) => {
                                    tracing::warn!(error = %err, "cannot open a raw ESP socket")
                                }
                            }
                        }
                        EspPath::Raw
                    };
                    // make-before-break: a rekey we made sends on the new SA at once, one the peer
                    // made only once the peer deleted the old SA (it has the new one by then)
                    let waits_for = child
                        .rekeys
                        .filter(|_| child.role == crate::sa::Role::Responder);
                    let limits = sa.lifetimes().esp_limits();
                    if let Err(err) = sad.install(child, path, limits, waits_for) {
                        tracing::warn!(error = %err, "cannot install child SA")
                    }
                }
                Event::ChildSaDeleted { spi_in, .. } => sad.remove(*spi_in),
                _ => {}
            }
            let _ = events.send(e);
        }
        if let Some(r) = responder.as_deref_mut() {
            for t in r.out.drain(..) {
                if sockets.send(&t).await.is_err() {
                    counters.count_send_error();
                }
            }
            if sa.is_established() || sa.is_closed() {
                r.half_open.completed(sa.spis().0);
            }
            if r.candidate.as_ref().is_some_and(IkeSa::is_established) {
                return (sa, counters.snapshot(), r.candidate.take());
            }
        }
        if sa.is_closed() {
            return (sa, counters.snapshot(), None);
        }
        let half_open = auth_deadline.filter(|_| !sa.is_established());
        if half_open.is_some_and(|d| Instant::now() >= d) {
            let reason = "no IKE_AUTH from the peer within the half-open timeout";
            tracing::info!(remote = %sa.remote(), reason, "responder IKE SA dropped");
            let _ = events.send(Event::Closed {
                reason: reason.to_string(),
            });
            // a candidate the peer is setting up meanwhile carries on (supervise_responder)
            return (sa, counters.snapshot(), None);
        }
        let timeout = match (sa.poll_timeout(), half_open) {
            (Some(t), Some(d)) => Some(t.min(d)),
            (t, d) => t.or(d),
        };
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((message, from)) = ike_rx.recv() => {
                let local = sockets.local(crate::sa::NATT_PORT);
                if !responder.as_deref_mut().is_some_and(|r| r.offer(&sa, &message, local, from)) {
                    sa.handle(&message, from, Instant::now());
                }
            }
            r = sockets.ike_socket().recv_from(&mut ike_buf) => {
                if let Ok((n, from)) = r {
                    let local = sockets.local(crate::sa::IKE_PORT);
                    if !responder.as_deref_mut().is_some_and(|r| r.offer(&sa, &ike_buf[..n], local, from)) {
                        sa.handle(&ike_buf[..n], from, Instant::now());
                    }
                }
            }
            Some(spi) = rekey_rx.recv() => sa.rekey_child(spi, Instant::now()),
            () = sleep => {
                let now = Instant::now();
                // ESP arrived since the last timer: the peer is alive, no liveness check is
                // due (checked here, not per packet, so the decrypt task stays lock-free)
                let packets_in = counters.snapshot().packets_in;
                if packets_in != packets_in_seen {
                    packets_in_seen = packets_in;
                    sa.traffic_received(now);
                }
                sa.handle_timeout(now);
            }
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
    /// The largest IP datagram of an IKE fragment (RFC 7383), see [`IkeSa::set_fragment_size`].
    pub fragment_size: usize,
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
        sa.set_fragment_size(plan.fragment_size);
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
            let mut reader = tun.reader();
            loop {
                tokio::select! {
                    // a packet the tunnel's selectors cover (RFC 4301 §5.1: only traffic the SPD
                    // protects triggers SA setup; the kernel's own IPv6 neighbour discovery or
                    // MLD on the device does not): initiate (the packet is dropped, its sender
                    // retransmits). A read error initiates too, rather than wait on a broken device.
                    r = reader.read() => match r {
                        Ok(n) => {
                            let wanted = (0..n).map(|i| reader.packet(i)).find(|p| {
                                protected(&plan.config.local_ts, &plan.config.remote_ts, p)
                            });
                            if let Some(p) = wanted.and_then(|p| crate::esp::InnerPacket::parse(p).ok()) {
                                tracing::info!(src = %p.src, dst = %p.dst, protocol = p.protocol, "traffic for the cleared tunnel: initiating");
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "TUN read failed while cleared: initiating");
                            break;
                        }
                    },
                    // the operator's `tunnel up` (or down and up)
                    r = plan.enabled.changed() => if r.is_err() { return } else {
                        tracing::info!("brought up while cleared: initiating");
                        break
                    },
                    c = commands.recv() => match c {
                        None => return,
                        Some(Command::RekeyChildren | Command::RekeyIke) => {
                            tracing::info!("rekey asked while cleared: initiating");
                            break
                        }
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

/// True when `packet` (read from the TUN device) is traffic the tunnel protects: from one of
/// our traffic selectors to one of the peer's.
fn protected(
    local_ts: &[crate::wire::TrafficSelector],
    remote_ts: &[crate::wire::TrafficSelector],
    packet: &[u8],
) -> bool {
    crate::esp::InnerPacket::parse(packet)
        .is_ok_and(|p| crate::esp::within(local_ts, remote_ts, &p))
}

/// How [`supervise_responder`] answers its peer.
#[derive(Debug, Clone)]
pub struct Responding {
    /// Half-open IKE SAs at which an IKE_SA_INIT request must return a cookie (RFC 7296 §2.6);
    /// 0 asks for one every time.
    pub cookie_threshold: usize,
    /// How long an IKE SA counts as half-open without completing IKE_AUTH.
    pub half_open_timeout: std::time::Duration,
    /// IKE_SA_INIT requests from addresses other than the peer's, dropped.
    pub foreign: Arc<std::sync::atomic::AtomicU64>,
}

/// The responder's side of [`run_until`]: the cookie gate, the half-open SAs, and a new IKE SA
/// the peer is setting up while the current one is still up.
struct Responder {
    config: Arc<crate::sa::SaConfig>,
    peer: std::net::IpAddr,
    fragment_size: usize,
    lifetimes: crate::sa::Lifetimes,
    gate: crate::cookie::CookieGate,
    half_open: crate::driver::HalfOpen,
    foreign: Arc<std::sync::atomic::AtomicU64>,
    /// How long an SA may wait for IKE_AUTH.
    half_open_timeout: std::time::Duration,
    /// A new IKE SA from the peer, replacing the current one once IKE_AUTH completes.
    candidate: Option<IkeSa>,
    /// Datagrams to send: the candidate's and COOKIE answers.
    out: Vec<crate::sa::Transmit>,
}

impl Responder {
    /// Takes an IKE message arriving on `local` while `sa` is the tunnel's SA, when it belongs
    /// to a new IKE SA (an IKE_SA_INIT request from the peer, e.g. after it restarted, or a
    /// message of the candidate SA it created). Returns false for messages `sa` should get.
    /// A new SA replaces the current one only once authenticated, so an IKE_SA_INIT with a
    /// forged source cannot take a working tunnel down.
    fn offer(
        &mut self,
        sa: &IkeSa,
        data: &[u8],
        local: std::net::SocketAddr,
        from: std::net::SocketAddr,
    ) -> bool {
        let now = Instant::now();
        let spi = crate::driver::init_request_spi(data);
        if let Some(c) = self.candidate.as_mut() {
            let ours = crate::wire::Header::new_checked(data)
                .is_ok_and(|h| h.initiator_spi() == c.spis().0);
            // a retransmitted IKE_SA_INIT request goes to the candidate too
            if ours && (spi.is_none() || spi == Some(c.spis().0)) {
                c.handle(data, from, now);
                self.take_candidate_output();
                return true;
            }
        }
        let Some(spi_i) = spi else {
            return false;
        };
        if spi_i == sa.spis().0 {
            // a retransmission of the request that made the current SA
            return false;
        }
        if from.ip() != self.peer {
            self.foreign
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return true;
        }
        let count = self.half_open.count(now);
        match crate::driver::answer_init(
            &self.config,
            Some((&mut self.gate, count)),
            data,
            local,
            from,
            now,
        ) {
            crate::driver::InitAnswer::Accepted(mut new) => {
                new.set_fragment_size(self.fragment_size);
                new.set_lifetimes(self.lifetimes);
                self.half_open.opened(spi_i, now);
                if let Some(old) = self.candidate.replace(*new) {
                    self.half_open.completed(old.spis().0);
                }
                self.take_candidate_output();
            }
            crate::driver::InitAnswer::Answer(t) => self.out.push(t),
            crate::driver::InitAnswer::Dropped => {}
        }
        true
    }

    /// Queues the candidate's datagrams; a candidate that failed is forgotten.
    fn take_candidate_output(&mut self) {
        let Some(c) = self.candidate.as_mut() else {
            return;
        };
        while let Some(t) = c.poll_transmit() {
            self.out.push(t);
        }
        if c.is_closed() {
            while let Some(e) = c.poll_event() {
                if let Event::Closed { reason } = e {
                    tracing::info!(remote = %c.remote(), %reason, "a new IKE SA from the peer failed");
                }
            }
            self.half_open.completed(c.spis().0);
            self.candidate = None;
        }
    }
}

/// Keeps a tunnel up as a responder: waits for an IKE_SA_INIT request from `plan.remote`'s
/// address (requests from elsewhere are dropped and counted in `responding.foreign`), answers
/// it behind a cookie gate (RFC 7296 §2.6) and runs the tunnel as [`run`] does. When the IKE SA
/// closes it waits again. An IKE_SA_INIT from the peer while an SA is up (it restarted, or
/// re-authenticates) makes a second SA that replaces the first once IKE_AUTH completed; the old
/// one is dropped without a Delete (the peer that restarted no longer knows it) and a
/// [`Event::Closed`] says so. `plan.max_delay` is not used. Returns when `commands` is closed.
pub async fn supervise_responder(
    sockets: &IkeSockets,
    tun: &TunDevice,
    mut plan: Supervision,
    responding: Responding,
    events: mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) {
    let gate = match crate::cookie::CookieGate::new(
        responding.cookie_threshold,
        crate::cookie::DEFAULT_ROTATION,
        Instant::now(),
    ) {
        Ok(g) => g,
        Err(e) => {
            let _ = events.send(Event::Closed {
                reason: e.to_string(),
            });
            return;
        }
    };
    let mut r = Responder {
        config: plan.config.clone(),
        peer: plan.remote.ip(),
        fragment_size: plan.fragment_size,
        lifetimes: plan.lifetimes,
        gate,
        half_open: crate::driver::HalfOpen::new(responding.half_open_timeout),
        foreign: responding.foreign,
        half_open_timeout: responding.half_open_timeout,
        candidate: None,
        out: Vec::new(),
    };
    let mut next: Option<IkeSa> = None;
    loop {
        // while down, requests are read and dropped
        while !*plan.enabled.borrow_and_update() {
            next = None;
            r.candidate = None;
            tokio::select! {
                c = plan.enabled.changed() => if c.is_err() { return },
                c = commands.recv() => if c.is_none() { return },
                _ = sockets.recv() => {}
            }
        }
        let sa = match next.take() {
            Some(sa) => sa,
            None => {
                let accepted = tokio::select! {
                    a = crate::driver::accept_peer(sockets, &r.config, r.peer, &mut r.gate, &mut r.half_open, &r.foreign) => a,
                    c = plan.enabled.changed() => if c.is_err() { return } else { continue },
                    c = commands.recv() => if c.is_none() { return } else { continue },
                };
                match accepted {
                    Ok(mut sa) => {
                        sa.set_fragment_size(plan.fragment_size);
                        sa.set_lifetimes(plan.lifetimes);
                        sa
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "IKE receive failed");
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
        };
        let (old, counters, new) =
            run_until(sockets, tun, sa, events.clone(), commands, Some(&mut r)).await;
        tracing::info!(remote = %old.remote(), ?counters, replaced = new.is_some(), "IKE SA ended");
        if new.is_some() && !old.is_closed() {
            let _ = events.send(Event::Closed {
                reason: "replaced by a new IKE SA the peer set up".into(),
            });
        }
        // the old SA closed while a new one was half-way: carry on with that one
        next = new.or_else(|| r.candidate.take());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::protected;
    use crate::wire::{AddressRange, TrafficSelector};

    fn ts(prefix: &str, len: u8) -> Vec<TrafficSelector> {
        vec![TrafficSelector::new(
            AddressRange::from_prefix(prefix.parse().unwrap(), len).unwrap(),
        )]
    }

    fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        // ICMP echo request, 8 octets
        let mut p = vec![0x45, 0, 0, 28, 0, 1, 0, 0, 64, 1, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&[8, 0, 0, 0, 0, 1, 0, 1]);
        p
    }

    #[test]
    fn only_traffic_the_selectors_cover_brings_a_cleared_tunnel_up() {
        let (local, remote) = (ts("198.18.100.0", 24), ts("198.19.0.0", 24));
        assert!(protected(
            &local,
            &remote,
            &ipv4([198, 18, 100, 7], [198, 19, 0, 10])
        ));
        // the wrong way round, or outside the selectors
        assert!(!protected(
            &local,
            &remote,
            &ipv4([198, 19, 0, 10], [198, 18, 100, 7])
        ));
        assert!(!protected(
            &local,
            &remote,
            &ipv4([203, 0, 113, 10], [198, 19, 0, 10])
        ));
        // an IPv6 router solicitation the kernel sends on the device (fe80::1 → ff02::2)
        let mut rs = vec![0x60, 0, 0, 0, 0, 8, 58, 255];
        rs.extend_from_slice(&[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        rs.extend_from_slice(&[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        rs.extend_from_slice(&[133, 0, 0, 0, 0, 0, 0, 0]);
        assert!(!protected(&local, &remote, &rs));
        // not an IP packet at all
        assert!(!protected(&local, &remote, &[]));
        assert!(!protected(&local, &remote, &[0x45, 0, 0]));
    }
}
