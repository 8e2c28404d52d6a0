//! Batched UDP for ESP in UDP 4500 (RFC 3948): `recvmmsg` with UDP GRO on the way in, `sendmsg`
//! with UDP GSO (one call carrying many equal-sized datagrams) on the way out, through
//! quinn-udp's safe API over the tokio socket.

use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams taken per `recvmmsg`.
pub const RECV_BATCH: usize = 8;

/// Room for one GRO-coalesced receive (the kernel coalesces at most 64 KiB).
const RECV_BUF: usize = 65_536;

/// The largest payload one GSO send may carry.
pub const GSO_MAX_BYTES: usize = 64_000;

/// The port-4500 socket with its batching state. Cheap to clone.
#[derive(Clone)]
pub struct EspUdp {
    socket: Arc<UdpSocket>,
    state: Arc<UdpSocketState>,
}

impl std::fmt::Debug for EspUdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EspUdp")
            .field("local", &self.socket.local_addr().ok())
            .field("max_gso_segments", &self.state.max_gso_segments())
            .field("gro_segments", &self.state.gro_segments())
            .finish()
    }
}

impl EspUdp {
    /// Turns on GRO (and what quinn-udp needs) on `socket`. Fragmentation stays as it was:
    /// quinn-udp forbids it (QUIC probes its path MTU), but large IKE messages and ESP on a
    /// path with a smaller MTU must still go out fragmented, as before.
    pub fn new(socket: Arc<UdpSocket>) -> io::Result<EspUdp> {
        let v4 = socket.local_addr()?.is_ipv4();
        let v4_pmtu = rustix::net::sockopt::ip_mtu_discover(&*socket).ok();
        let v6_pmtu = rustix::net::sockopt::ipv6_mtu_discover(&*socket).ok();
        let state = UdpSocketState::new((&*socket).into())?;
        if let Some(value) = v4_pmtu {
            let _ = rustix::net::sockopt::set_ip_mtu_discover(&*socket, value);
        }
        if let Some(value) = v6_pmtu.filter(|_| !v4) {
            // IPV6_DONTFRAG stays set (no safe setter here): over IPv6 an oversized datagram
            // is refused rather than fragmented by us.
            let _ = rustix::net::sockopt::set_ipv6_mtu_discover(&*socket, value);
        }
        Ok(EspUdp {
            socket,
            state: Arc::new(state),
        })
    }

    /// How many datagrams one [`Self::send`] may carry.
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Sends `contents` to `to`: one datagram, or with `segment` consecutive datagrams of
    /// `segment` octets each (the last may be shorter), in one call.
    pub async fn send(&self, to: SocketAddr, contents: &[u8], segment: usize) -> io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: (segment > 0 && contents.len() > segment).then_some(segment),
            src_ip: None,
        };
        loop {
            self.socket.writable().await?;
            match self.socket.try_io(Interest::WRITABLE, || {
                self.state.try_send((&*self.socket).into(), &transmit)
            }) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Buffers for [`Self::recv`].
    pub fn recv_buffers(&self) -> RecvBuffers {
        RecvBuffers {
            bufs: std::array::from_fn(|_| vec![0; RECV_BUF]),
            meta: std::array::from_fn(|_| RecvMeta::default()),
            count: 0,
        }
    }

    /// Waits for datagrams and fills `into`; see [`RecvBuffers::datagrams`].
    pub async fn recv(&self, into: &mut RecvBuffers) -> io::Result<()> {
        loop {
            self.socket.readable().await?;
            let RecvBuffers { bufs, meta, count } = &mut *into;
            let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(b.as_mut_slice()));
            match self.socket.try_io(Interest::READABLE, || {
                self.state.recv((&*self.socket).into(), &mut slices, meta)
            }) {
                Ok(n) => {
                    *count = n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// What one receive brought: up to [`RECV_BATCH`] messages, each holding one datagram or, with
/// GRO, several of equal size back to back.
pub struct RecvBuffers {
    bufs: [Vec<u8>; RECV_BATCH],
    meta: [RecvMeta; RECV_BATCH],
    count: usize,
}

impl std::fmt::Debug for RecvBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBuffers")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

impl RecvBuffers {
    /// Message `i` of the last receive: its sender, its bytes and the size of the datagrams in
    /// it (the last one may be shorter).
    pub fn message(&mut self, i: usize) -> Option<(SocketAddr, &mut [u8], usize)> {
        if i >= self.count {
            return None;
        }
        let meta = self.meta.get(i)?;
        let (addr, len, stride) = (meta.addr, meta.len, meta.stride);
        let data = self.bufs.get_mut(i)?.get_mut(..len)?;
        Some((addr, data, stride.max(1)))
    }

    /// Messages in the last receive.
    pub fn count(&self) -> usize {
        self.count
    }
}
