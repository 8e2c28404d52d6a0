//! The ESP data path of one tunnel in tokio: the SAD shared by the tasks that move packets, and
//! those tasks.
//!
//! - Encrypt task: reads the TUN device ([`TunReader`]: with offloads one read is a whole TCP
//!   super-segment, split into packets), picks the outbound SA by the packet's destination,
//!   seals every packet of the read under one short lock of the outbound SAD, then sends the
//!   ESP packets: runs of equal-sized datagrams to the same peer leave in one `sendmsg` with
//!   UDP GSO ([`EspUdp`]), raw ESP one packet per call ([`RawEsp`]).
//! - Decrypt task (UDP 4500): `recvmmsg` with UDP GRO, classifies each datagram (RFC 3948
//!   §2.2: IKE goes to the control loop, ESP is opened under one short lock of the inbound SAD
//!   per receive), and writes the inner packets to the TUN device in one batch, TCP segments of
//!   a flow coalesced into one super-segment ([`TunWriter`]).
//! - Decrypt task (raw ESP), started with the first child SA that is not UDP-encapsulated.
//!
//! The control loop (the IKE SA, in [`crate::tunnel::run`]) installs and removes SAs in the
//! [`Sad`] and hears from the encrypt task when an SA reaches its soft limit.
//!
//! Concurrency and the ESP rules: each outbound SA's sequence counter (RFC 4303 §3.3.3, never
//! cycles) and each inbound SA's replay window (§3.4.3) live inside their SA, which only one
//! task touches at a time under the SAD's mutex; the lock is taken once per batch, not per
//! packet, and never across an `await`. On these 2-core machines one task per direction is
//! what the cores can run (both peers, iperf3 and the kernel share them), so the TUN device
//! has one queue; a multi-queue device with a worker per core would need the sequence
//! number from an atomic and a sharded window, and is not done.

pub mod raw;
pub mod tun;
pub mod udp;

pub use raw::RawEsp;
pub use tun::{TunDevice, TunReader, TunWriter, TUN_BATCH, TUN_HEADROOM};
pub use udp::EspUdp;

use crate::esp::{InboundEsp, InnerPacket, Opened, OutboundEsp};
use crate::sa::ChildSa;
use crate::wire::{classify_udp4500, TrafficSelector, Udp4500};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

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
    /// System calls that moved a batch of ESP packets out (UDP GSO counts once per batch).
    pub send_calls: u64,
    /// Reads from the TUN device (with offloads one read may hold many packets).
    pub tun_reads: u64,
}

/// [`TunnelCounters`], updated by several tasks.
#[derive(Debug, Default)]
pub struct Counters {
    packets_out: AtomicU64,
    packets_in: AtomicU64,
    no_sa: AtomicU64,
    unknown_spi: AtomicU64,
    esp_dropped: AtomicU64,
    send_errors: AtomicU64,
    send_calls: AtomicU64,
    tun_reads: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> TunnelCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TunnelCounters {
            packets_out: get(&self.packets_out),
            packets_in: get(&self.packets_in),
            no_sa: get(&self.no_sa),
            unknown_spi: get(&self.unknown_spi),
            esp_dropped: get(&self.esp_dropped),
            send_errors: get(&self.send_errors),
            send_calls: get(&self.send_calls),
            tun_reads: get(&self.tun_reads),
        }
    }

    pub fn count_send_error(&self) {
        add(&self.send_errors, 1);
    }
}

/// Where a child SA's ESP packets go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EspPath {
    /// In UDP (RFC 3948) to this address (port 4500, or what a NAT mapped it to).
    Udp(SocketAddr),
    /// Directly over IP, protocol 50, to the tunnel's peer.
    Raw,
}

struct OutboundSa {
    esp: OutboundEsp,
    remote_ts: Vec<TrafficSelector>,
    spi_in: u32,
    path: EspPath,
    /// When the control loop was last told that this SA is due for a rekey.
    rekey_asked: Option<Instant>,
}

/// While an SA stays due for a rekey (the CREATE_CHILD_SA failed, or is slow), it is asked for
/// again this often, not on every packet.
const REKEY_REASK: Duration = Duration::from_secs(5);

impl OutboundSa {
    fn ask_rekey(&mut self, rekey: &mpsc::UnboundedSender<u32>) {
        let now = Instant::now();
        if self
            .rekey_asked
            .is_none_or(|at| now.duration_since(at) >= REKEY_REASK)
        {
            self.rekey_asked = Some(now);
            let _ = rekey.send(self.spi_in);
        }
    }
}

/// The security association database of one tunnel: outbound SAs in the order they were
/// installed (the newest covering SA sends), inbound SAs by SPI.
#[derive(Default)]
pub struct Sad {
    outbound: Mutex<Vec<OutboundSa>>,
    /// Outbound SAs of rekeys the peer made, by the inbound SPI of the SA they replace: they
    /// send once the peer deleted that one (by then it has installed the new SA).
    staged: Mutex<Vec<(u32, OutboundSa)>>,
    inbound: Mutex<HashMap<u32, InboundEsp>>,
    raw: OnceLock<RawEsp>,
}

impl std::fmt::Debug for Sad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sad")
            .field("outbound", &lock(&self.outbound).len())
            .field("inbound", &lock(&self.inbound).len())
            .field("raw", &self.raw.get().is_some())
            .finish()
    }
}

/// A poisoned lock (a task panicked while holding it) still guards consistent SAs: every
/// update of an SA is complete before it returns.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn covers(selectors: &[TrafficSelector], addr: std::net::IpAddr) -> bool {
    selectors.iter().any(|t| t.addresses.contains(addr))
}

impl Sad {
    /// Installs both halves of `child`, its outbound half sealing within `limits`.
    /// Make-before-break: the inbound SA takes packets at once and the old one stays until its
    /// delete. The outbound SA takes over sending at once (the one it rekeys stops sending),
    /// unless `waits_for` names an SA still sending: then it is staged until that one is
    /// removed.
    pub fn install(
        &self,
        child: &ChildSa,
        path: EspPath,
        limits: crate::esp::EspLimits,
        waits_for: Option<u32>,
    ) -> Result<(), crate::esp::EspSaError> {
        let out = OutboundEsp::from_child(child)?.with_limits(limits);
        let inn = InboundEsp::from_child(child)?;
        lock(&self.inbound).insert(child.spi_in, inn);
        let sa = OutboundSa {
            esp: out,
            remote_ts: child.remote_ts.clone(),
            spi_in: child.spi_in,
            path,
            rekey_asked: None,
        };
        let mut outbound = lock(&self.outbound);
        match waits_for {
            Some(old) if outbound.iter().any(|o| o.spi_in == old) => {
                lock(&self.staged).push((old, sa));
            }
            _ => {
                outbound.retain(|o| Some(o.spi_in) != child.rekeys);
                outbound.push(sa);
            }
        }
        Ok(())
    }

    /// Removes the child SA whose inbound SPI is `spi_in`; SAs staged behind it start sending.
    pub fn remove(&self, spi_in: u32) {
        lock(&self.inbound).remove(&spi_in);
        let mut outbound = lock(&self.outbound);
        outbound.retain(|o| o.spi_in != spi_in);
        let mut staged = lock(&self.staged);
        staged.retain(|(_, o)| o.spi_in != spi_in);
        let (ready, waiting): (Vec<_>, Vec<_>) =
            staged.drain(..).partition(|(old, _)| *old == spi_in);
        *staged = waiting;
        outbound.extend(ready.into_iter().map(|(_, o)| o));
    }

    /// The raw ESP socket, once one was opened.
    pub fn raw(&self) -> Option<&RawEsp> {
        self.raw.get()
    }

    /// Keeps `raw` as the raw ESP socket (the first one set stays).
    pub fn set_raw(&self, raw: RawEsp) -> bool {
        self.raw.set(raw).is_ok()
    }
}

/// One sealed packet in the encrypt task's batch buffer.
#[derive(Clone, Copy)]
struct Sealed {
    path: EspPath,
    start: usize,
    len: usize,
}

/// IKE messages from UDP 4500 waiting for the control loop.
pub const IKE_QUEUE: usize = 64;

/// Pause after an I/O error before trying again, so a failing device cannot spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// The encrypt task: TUN → ESP → UDP or raw IP. Runs until aborted. `rekey` hears the
/// inbound SPI of each SA that reached a soft or its hard limit (again every
/// [`REKEY_REASK`] while it stays so).
pub async fn encrypt_loop(
    mut tun: TunReader,
    sad: Arc<Sad>,
    udp: EspUdp,
    counters: Arc<Counters>,
    rekey: mpsc::UnboundedSender<u32>,
) {
    let mut batch: Vec<u8> = Vec::with_capacity(TUN_BATCH * 1500);
    let mut sealed: Vec<Sealed> = Vec::with_capacity(TUN_BATCH);
    loop {
        let n = match tun.read().await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "TUN read failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        add(&counters.tun_reads, 1);
        batch.clear();
        sealed.clear();
        {
            let mut outbound = lock(&sad.outbound);
            for i in 0..n {
                let packet = tun.packet(i);
                let Ok(inner) = InnerPacket::parse(packet) else {
                    continue;
                };
                let Some(o) = outbound
                    .iter_mut()
                    .rev()
                    .find(|o| covers(&o.remote_ts, inner.dst))
                else {
                    add(&counters.no_sa, 1);
                    continue;
                };
                let start = batch.len();
                match o.esp.seal(packet, &mut batch) {
                    Ok(info) => {
                        if info.rekey_due {
                            o.ask_rekey(&rekey);
                        }
                        sealed.push(Sealed {
                            path: o.path,
                            start,
                            len: info.len,
                        });
                    }
                    Err(_) => {
                        // past the hard limit: rekey, and drop until the new SA is up
                        o.ask_rekey(&rekey);
                        add(&counters.no_sa, 1);
                    }
                }
            }
        }
        send_sealed(&batch, &sealed, &udp, sad.raw(), &counters).await;
    }
}

/// The next send of a batch starting at `sealed[i]`: how many packets it takes. Consecutive
/// UDP datagrams to one peer go together, all of the first one's size but the last, which may
/// be shorter (UDP GSO's rule), at most `max` of them and [`udp::GSO_MAX_BYTES`] in all; a raw
/// ESP packet goes alone.
fn next_send(sealed: &[Sealed], i: usize, max: usize) -> usize {
    let Some(first) = sealed.get(i) else {
        return 0;
    };
    if first.path == EspPath::Raw {
        return 1;
    }
    let mut taken = 1;
    let mut bytes = first.len;
    while let Some(s) = sealed.get(i + taken) {
        if taken >= max
            || s.path != first.path
            || s.len > first.len
            || bytes + s.len > udp::GSO_MAX_BYTES
        {
            break;
        }
        bytes += s.len;
        taken += 1;
        if s.len < first.len {
            break; // only the last datagram of a GSO send may be shorter
        }
    }
    taken
}

/// Sends the packets of one batch, as [`next_send`] groups them.
async fn send_sealed(
    batch: &[u8],
    sealed: &[Sealed],
    udp: &EspUdp,
    raw: Option<&RawEsp>,
    counters: &Counters,
) {
    let max = udp.max_segments();
    let mut i = 0;
    while let Some(first) = sealed.get(i).copied() {
        let taken = next_send(sealed, i, max);
        let end = sealed
            .get(i + taken - 1)
            .map_or(first.start, |last| last.start + last.len);
        let contents = batch.get(first.start..end);
        let result = match (first.path, contents) {
            (EspPath::Raw, Some(packet)) => match raw {
                Some(raw) => raw.send(packet).await,
                None => Err(std::io::Error::other("no raw ESP socket")),
            },
            (EspPath::Udp(to), Some(contents)) => udp.send(to, contents, first.len).await,
            (_, None) => Err(std::io::Error::other("batch out of range")),
        };
        match result {
            Ok(()) => {
                add(&counters.packets_out, taken as u64);
                add(&counters.send_calls, 1);
            }
            Err(e) => {
                tracing::debug!(error = %e, "ESP send failed");
                add(&counters.send_errors, taken as u64);
            }
        }
        i += taken.max(1);
    }
}

/// A buffer for one packet to the TUN device, with the capacity of a whole coalesced
/// super-segment: segments of a flow are appended to the first one's buffer, and only when it
/// has room for 64 KiB without reallocating (tun-rs). The memory is reserved, not touched.
fn tun_buffer() -> Vec<u8> {
    Vec::with_capacity(2 * TUN_HEADROOM + 65_535)
}

/// Opens `esp` with its SA into `buf` (after [`TUN_HEADROOM`] octets); true when `buf` then
/// holds an inner packet for the TUN device.
fn open_into(
    inbound: &mut HashMap<u32, InboundEsp>,
    esp: &[u8],
    buf: &mut Vec<u8>,
    counters: &Counters,
) -> bool {
    let spi = match esp.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok()) {
        Some(b) => u32::from_be_bytes(b),
        None => return false,
    };
    let Some(sa) = inbound.get_mut(&spi) else {
        add(&counters.unknown_spi, 1);
        return false;
    };
    buf.clear();
    buf.resize(TUN_HEADROOM, 0);
    match sa.open(esp, buf) {
        Ok(Opened::Packet { .. }) => {
            add(&counters.packets_in, 1);
            true
        }
        Ok(Opened::Dummy { .. }) => false,
        Err(_) => {
            add(&counters.esp_dropped, 1);
            false
        }
    }
}

/// The decrypt task of UDP 4500: ESP → TUN; IKE messages (non-ESP marker removed) go to
/// `ike` with their sender (up to [`IKE_QUEUE`] waiting). Runs until aborted.
pub async fn decrypt_udp_loop(
    udp: EspUdp,
    mut tun: TunWriter,
    sad: Arc<Sad>,
    counters: Arc<Counters>,
    ike: mpsc::Sender<(Vec<u8>, SocketAddr)>,
) {
    let mut rx = udp.recv_buffers();
    let mut out: Vec<Vec<u8>> = (0..TUN_BATCH).map(|_| tun_buffer()).collect();
    loop {
        if let Err(e) = udp.recv(&mut rx).await {
            tracing::debug!(error = %e, "UDP 4500 receive failed");
            tokio::time::sleep(ERROR_PAUSE).await;
            continue;
        }
        let mut ready = 0;
        {
            let mut inbound = lock(&sad.inbound);
            for m in 0..rx.count() {
                let Some((from, data, stride)) = rx.message(m) else {
                    continue;
                };
                for datagram in data.chunks(stride) {
                    match classify_udp4500(datagram) {
                        Udp4500::Ike(message) => {
                            // a full queue drops the message, as a full socket
                            // buffer would: a flood of IKE cannot grow memory
                            let _ = ike.try_send((message.to_vec(), from));
                        }
                        Udp4500::Esp(esp) => {
                            if ready == out.len() {
                                out.push(tun_buffer());
                            }
                            if let Some(buf) = out.get_mut(ready) {
                                if open_into(&mut inbound, esp, buf, &counters) {
                                    ready += 1;
                                }
                            }
                        }
                        Udp4500::Keepalive | Udp4500::Malformed(_) => {}
                    }
                }
            }
        }
        if let Some(packets) = out.get_mut(..ready) {
            if let Err(e) = tun.write_batch(packets).await {
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
    }
}

/// The decrypt task of raw ESP: protocol 50 → TUN. Runs until aborted. After each wait it
/// takes whatever else is queued (up to a batch) so the TUN write can coalesce.
pub async fn decrypt_raw_loop(
    raw: RawEsp,
    mut tun: TunWriter,
    sad: Arc<Sad>,
    counters: Arc<Counters>,
) {
    let mut buf = vec![0u8; 65_536];
    let mut out: Vec<Vec<u8>> = (0..TUN_BATCH).map(|_| tun_buffer()).collect();
    loop {
        let first = match raw.recv(&mut buf).await {
            Ok(at) => at,
            Err(e) => {
                tracing::debug!(error = %e, "raw ESP receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let mut ready = 0;
        {
            let mut inbound = lock(&sad.inbound);
            let mut at = Some(first);
            while let Some(range) = at.take() {
                if let (Some(esp), Some(dst)) = (buf.get(range), out.get_mut(ready)) {
                    if open_into(&mut inbound, esp, dst, &counters) {
                        ready += 1;
                    }
                }
                if ready < out.len() {
                    at = raw.try_recv(&mut buf).ok().flatten();
                }
            }
        }
        if let Some(packets) = out.get_mut(..ready) {
            if let Err(e) = tun.write_batch(packets).await {
                tracing::debug!(error = %e, "TUN write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(sizes: &[usize], path: EspPath) -> Vec<Sealed> {
        let mut start = 0;
        sizes
            .iter()
            .map(|&len| {
                let s = Sealed { path, start, len };
                start += len;
                s
            })
            .collect()
    }

    fn sends(sealed: &[Sealed], max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < sealed.len() {
            let n = next_send(sealed, i, max);
            assert!(n >= 1);
            out.push(n);
            i += n;
        }
        out
    }

    fn udp() -> EspPath {
        EspPath::Udp("203.0.113.20:4500".parse().unwrap())
    }

    #[test]
    fn equal_datagrams_go_in_one_gso_send_with_a_shorter_last() {
        let s = batch(&[1438, 1438, 1438, 700], udp());
        assert_eq!(sends(&s, 64), [4]);
        // a longer datagram after a shorter one starts a new send
        let s = batch(&[1438, 700, 1438, 1438], udp());
        assert_eq!(sends(&s, 64), [2, 2]);
        // a longer one than the first cannot join
        let s = batch(&[700, 1438], udp());
        assert_eq!(sends(&s, 64), [1, 1]);
    }

    #[test]
    fn gso_sends_respect_the_segment_and_byte_limits() {
        let s = batch(&[1000; 10], udp());
        assert_eq!(sends(&s, 4), [4, 4, 2]);
        assert_eq!(sends(&s, 1), [1; 10]);
        let s = batch(&[1438; 100], udp());
        let per = udp::GSO_MAX_BYTES / 1438;
        let got = sends(&s, 128);
        assert!(got.iter().all(|&n| n <= per), "{got:?}");
        assert_eq!(got.iter().sum::<usize>(), 100);
    }

    #[test]
    fn raw_esp_and_other_peers_split_sends() {
        let s = batch(&[1438; 3], EspPath::Raw);
        assert_eq!(sends(&s, 64), [1, 1, 1]);
        let mut s = batch(&[1438; 4], udp());
        s[2].path = EspPath::Udp("198.51.100.7:4500".parse().unwrap());
        assert_eq!(sends(&s, 64), [2, 1, 1]);
        assert_eq!(next_send(&s, 9, 64), 0);
    }
}
