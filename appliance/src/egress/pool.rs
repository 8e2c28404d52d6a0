//! NAT pool addresses: which address of a tunnel egress's `nat_pool` a device's flows leave
//! from.
//!
//! - The usable addresses of a pool are all of it, except, for an IPv4 pool shorter than /31,
//!   its network and broadcast addresses (a /31 or /32 uses every address, RFC 3021).
//! - `nat_mode = "per-device"`: each device holds a lease on one address of its own. A device
//!   seen for the first time gets the address at `hash(serial) mod size` (FNV-1a 64), or the
//!   next free one after it (linear probing, wrapping), so a device tends to get the same
//!   address even on another appliance with the same pool. A lease is sticky: the device keeps
//!   it across reconnects and across restarts, since leases are written (atomically: a
//!   temporary file, synced, renamed, off the relay's request path) to
//!   `STATE_DIR/nat-leases.json` after every new lease; the
//!   time each lease was last used is kept in memory and written with the next change and at
//!   shutdown. Each assignment is an event, `nat.assigned {egress, serial, address, reason}`
//!   with reason `new`, `restored` (first use of a lease read from the file) or `reclaimed`,
//!   so the enterprise firewall's log, which sees only the address, names the device.
//!   A lease file that cannot be read or parsed is logged and set aside as
//!   `nat-leases.json.corrupt`; the pools start empty. Leases outside the configured pool (the
//!   pool changed) are dropped.
//! - Exhaustion (every usable address leased): the least recently used lease of a device with
//!   no open flow through that egress is reclaimed for the new device (`nat.reclaimed {egress,
//!   address, from, to}`); when every leaseholder has an open flow, the request is refused
//!   (`502`, `Proxy-Status: …; error=connection_refused; details="NAT pool exhausted"`) and a
//!   `nat.exhausted {egress, pool, leases, alert}` event is emitted at most once a minute per
//!   egress.
//! - `nat_mode = "shared"`: no leases and no exclusivity: a device's flows leave from the
//!   address at `hash(serial) mod size`, so devices spread over the pool, each stays on one
//!   address, and several devices may share one. Never exhausted.

use crate::events::EventLog;
use config::NatMode;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The lease file's name inside `appliance.state_dir`.
pub const LEASE_FILE: &str = "nat-leases.json";

/// How often at most a pool's exhaustion is reported.
const EXHAUSTED_EVERY: Duration = Duration::from_secs(60);

/// The usable addresses of a pool: `count` addresses from `first` (as integers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slots {
    net: IpNet,
    first: u128,
    count: u128,
}

impl Slots {
    fn new(net: IpNet) -> Slots {
        let net = net.trunc();
        match net {
            IpNet::V4(n) => {
                let base = u128::from(u32::from(n.network()));
                let size = 1u128 << (32 - u32::from(n.prefix_len()));
                if n.prefix_len() < 31 {
                    // not the network and broadcast addresses
                    Slots {
                        net,
                        first: base + 1,
                        count: size - 2,
                    }
                } else {
                    Slots {
                        net,
                        first: base,
                        count: size,
                    }
                }
            }
            IpNet::V6(n) => {
                let bits = 128 - u32::from(n.prefix_len());
                Slots {
                    net,
                    first: u128::from(n.network()),
                    count: 1u128.checked_shl(bits).unwrap_or(u128::MAX),
                }
            }
        }
    }

    fn address(&self, index: u128) -> IpAddr {
        let value = self.first + index;
        match self.net {
            IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(value as u32)),
            IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(value)),
        }
    }

    /// The index of `address` among the usable addresses, if it is one.
    fn index(&self, address: IpAddr) -> Option<u128> {
        let value = match (self.net, address) {
            (IpNet::V4(_), IpAddr::V4(a)) => u128::from(u32::from(a)),
            (IpNet::V6(_), IpAddr::V6(a)) => u128::from(a),
            _ => return None,
        };
        let index = value.checked_sub(self.first)?;
        (index < self.count).then_some(index)
    }

    fn preferred(&self, serial: &str) -> u128 {
        u128::from(fnv1a64(serial.as_bytes())) % self.count
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[derive(Debug, Clone)]
struct Lease {
    index: u128,
    last_used: u64,
    /// Read from the file and not yet used by this process.
    restored: bool,
}

#[derive(Debug)]
struct Pool {
    slots: Slots,
    mode: NatMode,
    leases: BTreeMap<String, Lease>,
    /// index → serial, the inverse of `leases`.
    holders: BTreeMap<u128, String>,
    last_exhausted: Option<Instant>,
}

impl Pool {
    fn new(net: IpNet, mode: NatMode) -> Pool {
        Pool {
            slots: Slots::new(net),
            mode,
            leases: BTreeMap::new(),
            holders: BTreeMap::new(),
            last_exhausted: None,
        }
    }

    fn insert(&mut self, serial: &str, lease: Lease) {
        self.holders.insert(lease.index, serial.to_string());
        self.leases.insert(serial.to_string(), lease);
    }

    fn free_from(&self, start: u128) -> Option<u128> {
        if self.leases.len() as u128 >= self.slots.count {
            return None;
        }
        // fewer leases than slots: a free slot is at most `leases` steps away
        let mut index = start;
        loop {
            if !self.holders.contains_key(&index) {
                return Some(index);
            }
            index = if index + 1 >= self.slots.count {
                0
            } else {
                index + 1
            };
        }
    }
}

/// Why a device got no address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// Every address is leased to a device with an open flow.
    Exhausted,
    /// The egress has no pool (not a tunnel, or not configured yet).
    Unknown,
}

/// The on-disk form of the leases.
#[derive(Debug, Default, Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    egresses: BTreeMap<String, FilePool>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FilePool {
    pool: IpNet,
    leases: BTreeMap<String, FileLease>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileLease {
    address: IpAddr,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    pools: BTreeMap<String, Pool>,
    /// Leases read from the file for egresses not configured (yet), by egress.
    loaded: BTreeMap<String, FilePool>,
    /// Bumped on every change worth writing.
    generation: u64,
}

/// The NAT pools of every tunnel egress.
#[derive(Debug, Default)]
pub struct NatPools {
    file: Option<PathBuf>,
    inner: Mutex<Inner>,
    /// The generation last written (serializes writers; an older snapshot is not written).
    written: Mutex<u64>,
    /// Leases changed since the last write.
    dirty: AtomicBool,
    events: OnceLock<Arc<EventLog>>,
}

impl NatPools {
    /// Pools whose leases persist in `state_dir`/[`LEASE_FILE`], read now. An unreadable or
    /// corrupt file is logged and set aside; the pools start empty.
    pub fn open(state_dir: &Path) -> NatPools {
        let file = state_dir.join(LEASE_FILE);
        let loaded = match std::fs::read(&file) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeaseFile::default(),
            Err(e) => {
                tracing::warn!(file = %file.display(), error = %e, "cannot read the NAT leases; starting with none");
                LeaseFile::default()
            }
            Ok(bytes) => match serde_json::from_slice::<LeaseFile>(&bytes) {
                Ok(f) => f,
                Err(e) => {
                    let aside = file.with_extension("json.corrupt");
                    tracing::warn!(file = %file.display(), error = %e, moved_to = %aside.display(), "corrupt NAT lease file; starting with no leases");
                    let _ = std::fs::rename(&file, &aside);
                    LeaseFile::default()
                }
            },
        };
        NatPools {
            file: Some(file),
            inner: Mutex::new(Inner {
                loaded: loaded.egresses,
                ..Inner::default()
            }),
            written: Mutex::new(0),
            dirty: AtomicBool::new(false),
            events: OnceLock::new(),
        }
    }

    /// Pools that are not persisted.
    #[cfg(test)]
    pub fn in_memory() -> NatPools {
        NatPools::default()
    }

    /// Where assignments are reported.
    pub fn set_events(&self, events: Arc<EventLog>) {
        let _ = self.events.set(events);
    }

    fn emit(&self, kind: &str, fields: serde_json::Value) {
        match self.events.get() {
            Some(e) => e.emit(kind, fields),
            None => tracing::info!(event = kind, %fields, "nat"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the pools those of `cfg`'s tunnel egresses: new pools start with the leases read
    /// from the file that fall inside them; a changed pool keeps the leases still inside it;
    /// pools of removed egresses go.
    pub fn configure(&self, cfg: &config::Config) {
        let mut wanted = BTreeMap::new();
        for e in &cfg.egresses {
            if let config::EgressKind::Tunnel(t) = &e.kind {
                wanted.insert(e.name.value.clone(), (t.nat_pool.value, t.nat_mode));
            }
        }
        self.set_pools(wanted);
    }

    /// [`NatPools::configure`] from egress name → (pool, mode).
    pub fn set_pools(&self, wanted: BTreeMap<String, (IpNet, NatMode)>) {
        let changed = {
            let mut inner = self.lock();
            let wanted: BTreeMap<String, (IpNet, NatMode)> = wanted
                .into_iter()
                .map(|(n, (net, mode))| (n, (net.trunc(), mode)))
                .collect();
            let before = inner.pools.len();
            inner.pools.retain(|name, _| wanted.contains_key(name));
            let mut changed = inner.pools.len() != before;
            for (name, (net, mode)) in wanted {
                let same = inner
                    .pools
                    .get(&name)
                    .is_some_and(|p| p.slots.net == net && p.mode == mode);
                if same {
                    continue;
                }
                changed = true;
                // leases to carry over: the running pool's, else the file's
                let old: Vec<(String, IpAddr, u64, bool)> = match inner.pools.remove(&name) {
                    Some(p) => p
                        .leases
                        .iter()
                        .map(|(s, l)| (s.clone(), p.slots.address(l.index), l.last_used, false))
                        .collect(),
                    None => inner
                        .loaded
                        .remove(&name)
                        .map(|f| {
                            f.leases
                                .into_iter()
                                .map(|(s, l)| (s, l.address, l.last_used, true))
                                .collect()
                        })
                        .unwrap_or_default(),
                };
                let mut pool = Pool::new(net, mode);
                if mode == NatMode::PerDevice {
                    for (serial, address, last_used, restored) in old {
                        match pool.slots.index(address) {
                            Some(index) if !pool.holders.contains_key(&index) => pool.insert(
                                &serial,
                                Lease {
                                    index,
                                    last_used,
                                    restored,
                                },
                            ),
                            _ => {
                                tracing::info!(egress = %name, %serial, %address, "NAT lease dropped: not in the pool, or taken")
                            }
                        }
                    }
                }
                inner.pools.insert(name, pool);
            }
            if changed {
                inner.generation += 1;
            }
            changed
        };
        if changed {
            self.save();
        }
    }

    /// The source address of `serial`'s next flow through tunnel egress `egress`.
    /// `busy` lists the devices with an open flow through that egress; it is asked only when
    /// the pool is exhausted.
    pub fn address(
        &self,
        egress: &str,
        serial: &str,
        busy: impl FnOnce() -> BTreeSet<String>,
    ) -> Result<IpAddr, PoolError> {
        let now = unix_now();
        let mut events = Vec::new();
        let result = {
            let mut inner = self.lock();
            let Inner {
                pools, generation, ..
            } = &mut *inner;
            let Some(pool) = pools.get_mut(egress) else {
                return Err(PoolError::Unknown);
            };
            if pool.mode == NatMode::Shared {
                let slots = pool.slots;
                return Ok(slots.address(slots.preferred(serial)));
            }
            if let Some(lease) = pool.leases.get_mut(serial) {
                lease.last_used = now;
                let address = pool.slots.address(lease.index);
                if std::mem::take(&mut lease.restored) {
                    events.push((
                        "nat.assigned",
                        json!({"egress": egress, "serial": serial, "address": address.to_string(), "reason": "restored"}),
                    ));
                }
                Ok(address)
            } else if let Some(index) = pool.free_from(pool.slots.preferred(serial)) {
                let address = pool.slots.address(index);
                pool.insert(
                    serial,
                    Lease {
                        index,
                        last_used: now,
                        restored: false,
                    },
                );
                *generation += 1;
                events.push((
                    "nat.assigned",
                    json!({"egress": egress, "serial": serial, "address": address.to_string(), "reason": "new"}),
                ));
                Ok(address)
            } else {
                let busy = busy();
                let victim = pool
                    .leases
                    .iter()
                    .filter(|(s, _)| !busy.contains(*s))
                    .min_by_key(|(s, l)| (l.last_used, (*s).clone()))
                    .map(|(s, l)| (s.clone(), l.index));
                match victim {
                    Some((from, index)) => {
                        pool.leases.remove(&from);
                        pool.holders.remove(&index);
                        pool.insert(
                            serial,
                            Lease {
                                index,
                                last_used: now,
                                restored: false,
                            },
                        );
                        *generation += 1;
                        let address = pool.slots.address(index).to_string();
                        events.push((
                            "nat.reclaimed",
                            json!({"egress": egress, "address": address, "from": from, "to": serial}),
                        ));
                        events.push((
                            "nat.assigned",
                            json!({"egress": egress, "serial": serial, "address": address, "reason": "reclaimed"}),
                        ));
                        Ok(pool.slots.address(index))
                    }
                    None => {
                        let due = pool
                            .last_exhausted
                            .is_none_or(|t| t.elapsed() >= EXHAUSTED_EVERY);
                        if due {
                            pool.last_exhausted = Some(Instant::now());
                            events.push((
                                "nat.exhausted",
                                json!({"egress": egress, "pool": pool.slots.net.to_string(), "leases": pool.leases.len(), "refused": serial, "alert": true}),
                            ));
                        }
                        Err(PoolError::Exhausted)
                    }
                }
            }
        };
        if events.iter().any(|(k, _)| *k != "nat.exhausted") {
            self.dirty.store(true, Ordering::SeqCst);
        }
        for (kind, fields) in events {
            self.emit(kind, fields);
        }
        result
    }

    /// Writes the leases if [`NatPools::address`] changed them: on tokio's blocking pool when
    /// called inside a runtime (the relay's decisions must not wait for the disk), else here.
    pub fn save_if_changed(self: &Arc<Self>) {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let pools = self.clone();
                runtime.spawn_blocking(move || pools.save());
            }
            Err(_) => self.save(),
        }
    }

    /// The address `serial` holds in `egress`'s pool (per-device), without leasing one.
    #[cfg(test)]
    pub fn lease_of(&self, egress: &str, serial: &str) -> Option<IpAddr> {
        let inner = self.lock();
        let pool = inner.pools.get(egress)?;
        pool.leases.get(serial).map(|l| pool.slots.address(l.index))
    }

    /// Writes the leases to the lease file (atomically); failures are logged.
    pub fn save(&self) {
        let Some(file) = &self.file else { return };
        let (generation, text) = {
            let inner = self.lock();
            let mut out = LeaseFile {
                version: 1,
                egresses: BTreeMap::new(),
            };
            for (name, pool) in &inner.pools {
                if pool.mode != NatMode::PerDevice {
                    continue;
                }
                out.egresses.insert(
                    name.clone(),
                    FilePool {
                        pool: pool.slots.net,
                        leases: pool
                            .leases
                            .iter()
                            .map(|(s, l)| {
                                (
                                    s.clone(),
                                    FileLease {
                                        address: pool.slots.address(l.index),
                                        last_used: l.last_used,
                                    },
                                )
                            })
                            .collect(),
                    },
                );
            }
            // leases of egresses not configured at the moment are kept in the file
            for (name, f) in &inner.loaded {
                out.egresses.entry(name.clone()).or_insert(FilePool {
                    pool: f.pool,
                    leases: f
                        .leases
                        .iter()
                        .map(|(s, l)| {
                            (
                                s.clone(),
                                FileLease {
                                    address: l.address,
                                    last_used: l.last_used,
                                },
                            )
                        })
                        .collect(),
                });
            }
            match serde_json::to_string_pretty(&out) {
                Ok(t) => (inner.generation, t),
                Err(e) => return tracing::warn!(error = %e, "cannot serialize the NAT leases"),
            }
        };
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        if *written > generation {
            return; // a newer snapshot is already on disk
        }
        match write_atomically(file, text.as_bytes()) {
            Ok(()) => *written = generation,
            Err(e) => {
                self.emit(
                    "nat.store_failed",
                    json!({"file": file.display().to_string(), "error": e.to_string(), "alert": true}),
                );
            }
        }
    }
}

fn write_atomically(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = dest.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{LEASE_FILE}.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)?;
        // the rename itself is durable once the directory is synced
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Every lease of a per-device pool, for the tests' invariants.
#[cfg(test)]
impl NatPools {
    fn leases(&self, egress: &str) -> std::collections::HashMap<String, IpAddr> {
        let inner = self.lock();
        inner
            .pools
            .get(egress)
            .map(|p| {
                p.leases
                    .iter()
                    .map(|(s, l)| (s.clone(), p.slots.address(l.index)))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests;
