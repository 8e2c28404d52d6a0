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
    mut sa: IkeSa,
    events: mpsc::UnboundedSender<Event>,
    commands: &mut mpsc::UnboundedReceiver<Command>,
) -> (IkeSa, TunnelCounters) {
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
            return (sa, counters.snapshot());
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
        if sa.is_closed() {
            return (sa, counters.snapshot());
        }
        let timeout = sa.poll_timeout();
        let sleep = async {
            match timeout {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((message, from)) = ike_rx.recv() => sa.handle(&message, from, Instant::now()),
            r = sockets.ike_socket().recv_from(&mut ike_buf) => {
                if let Ok((n, from)) = r {
                    sa.handle(&ike_buf[..n], from, Instant::now());
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
                    // a packet to send: initiate (it is dropped; the sender retransmits)
                    _ = reader.read() => break,
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
