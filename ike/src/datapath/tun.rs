//! The TUN device of a tunnel, with the kernel's offloads when it has them.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD` (TSO4, TSO6, checksum offload) the kernel's TCP hands
//! the device whole TCP super-segments of up to 64 KiB with a virtio-net header in front; one
//! read then carries ~45 packets of a 1400-octet MTU, which are split here (GSO) into the
//! packets ESP encrypts. The other way, decrypted TCP segments of one flow are coalesced (GRO)
//! into one super-segment per write, so the receiving TCP stack handles one large packet
//! instead of dozens. This is what the kernel does for virtio NICs and what wireguard-go does
//! for its TUN device; it is the largest single saving of the data path, since per-packet
//! system calls and per-packet TCP processing cost far more than the AEAD.
//!
//! The ioctls and the segmentation come from the `tun-rs` crate, whose API is safe (tun-tap has
//! no offloads and no virtio header); this crate has no `unsafe`. Without offload support the
//! device is opened plainly and each read or write carries one packet.

use std::io;
use std::sync::Arc;
use tun_rs::{AsyncDevice, DeviceBuilder, GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Octets kept free in front of each packet handed to [`TunWriter::write_batch`] (room for the
/// virtio-net header).
pub const TUN_HEADROOM: usize = VIRTIO_NET_HDR_LEN;

/// The most packets one read can yield, and the most one write batch should hold.
pub const TUN_BATCH: usize = IDEAL_BATCH_SIZE;

/// The largest packet the device carries after segmentation (its MTU may be at most this).
const MAX_SEGMENT: usize = 16 * 1024;

/// A TUN device for one tunnel, without packet information headers. Cheap to clone: the
/// clones share one descriptor.
#[derive(Clone)]
pub struct TunDevice {
    dev: Arc<AsyncDevice>,
    name: String,
    offload: bool,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("name", &self.name)
            .field("offload", &self.offload)
            .finish_non_exhaustive()
    }
}

impl TunDevice {
    /// Creates (or opens) the TUN device `name`, with offloads if the kernel has them.
    pub fn create(name: &str) -> io::Result<TunDevice> {
        let build = |offload: bool| {
            DeviceBuilder::new()
                .name(name)
                .offload(offload)
                .build_async()
        };
        let (dev, offload) = match build(true) {
            Ok(dev) => (dev, true),
            Err(e) => {
                tracing::info!(tun = name, error = %e, "TUN offloads unavailable; one packet per read");
                (build(false)?, false)
            }
        };
        let name = dev.name().unwrap_or_else(|_| name.to_string());
        Ok(TunDevice {
            dev: Arc::new(dev),
            name,
            offload,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the device has the virtio-net header and TCP segmentation offloads.
    pub fn offload(&self) -> bool {
        self.offload
    }

    /// A reader with its own buffers, for the task that encrypts.
    pub fn reader(&self) -> TunReader {
        TunReader {
            dev: self.dev.clone(),
            original: vec![0; VIRTIO_NET_HDR_LEN + 65_535],
            bufs: vec![vec![0; MAX_SEGMENT]; TUN_BATCH],
            sizes: vec![0; TUN_BATCH],
        }
    }

    /// A writer with its own coalescing state, for the task that decrypts.
    pub fn writer(&self) -> TunWriter {
        TunWriter {
            dev: self.dev.clone(),
            gro: GROTable::default(),
        }
    }
}

/// Reads packets from the device: one read, then split into its packets.
pub struct TunReader {
    dev: Arc<AsyncDevice>,
    original: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
}

impl std::fmt::Debug for TunReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunReader").finish_non_exhaustive()
    }
}

impl TunReader {
    /// Waits for the next read and returns how many packets it held; they are
    /// [`Self::packet`]`(0..n)`.
    pub async fn read(&mut self) -> io::Result<usize> {
        self.dev
            .recv_multiple(&mut self.original, &mut self.bufs, &mut self.sizes, 0)
            .await
    }

    /// Packet `i` of the last read (empty when out of range).
    pub fn packet(&self, i: usize) -> &[u8] {
        match (self.bufs.get(i), self.sizes.get(i)) {
            (Some(buf), Some(&n)) => buf.get(..n).unwrap_or_default(),
            _ => &[],
        }
    }
}

/// Writes packets to the device, coalescing TCP segments of one flow when offloads are on.
pub struct TunWriter {
    dev: Arc<AsyncDevice>,
    gro: GROTable,
}

impl std::fmt::Debug for TunWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunWriter").finish_non_exhaustive()
    }
}

impl TunWriter {
    /// Writes `packets`, each an IP packet after [`TUN_HEADROOM`] octets of scratch space.
    /// The buffers may be changed (coalesced packets grow the first of their flow).
    pub async fn write_batch(&mut self, packets: &mut [Vec<u8>]) -> io::Result<()> {
        if packets.is_empty() {
            return Ok(());
        }
        self.dev
            .send_multiple(&mut self.gro, packets, TUN_HEADROOM)
            .await
            .map(|_| ())
    }
}
