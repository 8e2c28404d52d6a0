//! The daemon's IPsec tunnels: one task per `tunnel` egress that keeps an IKE SA and its ESP
//! SAs up (initiator, re-initiating after failures), its TUN device, and a status the CLI shows
//! (`attestgate tunnels`) and controls (`attestgate tunnel up|down|rekey NAME`).
//!
//! When the task starts, the tunnel's NAT pool is put on the appliance and routed into the
//! tunnel's own table ([`super::routes::install_pool`]); the peer's traffic selectors are
//! routed into the TUN device, in that table, while their child SA is up ([`super::routes`],
//! routing protocol 245). The daemon removes the pool's routing when the egress stops.
//!
//! A tunnel with `initiate = false` is a responder: it waits for its peer's IKE_SA_INIT
//! ([`ike::tunnel::supervise_responder`]), shown as `waiting` while it has no SA.

use config::{EgressKind, Tunnel, TunnelAuth};
use ike::driver::{Command, IkeSockets};
use ike::sa::{Event, SaConfig, IKE_PORT};
use ike::tunnel::TunDevice;
use ike::wire::{AddressRange, TrafficSelector};
use ipnet::IpNet;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// One child SA as the CLI shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ChildStatus {
    pub spi_in: String,
    pub spi_out: String,
    pub proposal: String,
    pub local_ts: Vec<String>,
    pub remote_ts: Vec<String>,
    pub udp_encap: bool,
    #[serde(with = "crate::timefmt::unix_serde")]
    pub established_at: SystemTime,
    /// When this child SA is to be rekeyed (its lifetime minus a random margin).
    #[serde(with = "crate::timefmt::opt_unix")]
    pub rekey_at: Option<SystemTime>,
}

/// A tunnel's state for `attestgate tunnels`.
#[derive(Debug, Clone, Serialize)]
pub struct TunnelStatus {
    pub name: String,
    pub local: String,
    pub remote: String,
    /// `initiator` or `responder` (`initiate = false`).
    pub role: &'static str,
    /// `connecting`, `waiting` (a responder without an SA), `established`, `down`, `cleared`
    /// (peer dead, `dpd_action = clear`), `error`.
    pub state: &'static str,
    /// A responder's count of IKE_SA_INIT requests from addresses other than the peer's
    /// (dropped).
    pub foreign_inits: u64,
    pub tun: Option<String>,
    pub ike_spi_i: Option<String>,
    pub ike_spi_r: Option<String>,
    pub ike_proposal: Option<String>,
    pub nat_detected: bool,
    #[serde(with = "crate::timefmt::opt_unix")]
    pub established_at: Option<SystemTime>,
    pub children: Vec<ChildStatus>,
    pub rekeys: u64,
    pub last_alive: Option<i64>,
    pub last_event: Option<String>,
    /// When the IKE SA is to be rekeyed.
    #[serde(with = "crate::timefmt::opt_unix")]
    pub ike_rekey_at: Option<SystemTime>,
    pub ike_rekeys: u64,
}

type Shared = Arc<Mutex<TunnelStatus>>;

/// A running tunnel task and its controls.
#[derive(Debug)]
pub struct TunnelHandle {
    pub status: Shared,
    /// The NAT pool and routing table the task installed (removed by the daemon when the
    /// tunnel stops).
    pool: ipnet::IpNet,
    table: u32,
    foreign: Arc<AtomicU64>,
    control: mpsc::UnboundedSender<Control>,
    task: tokio::task::JoinHandle<()>,
}

/// What the CLI can ask of a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Up,
    Down,
    Rekey,
}

impl Drop for TunnelHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TunnelHandle {
    /// The NAT pool and the routing table of this tunnel.
    pub fn routing(&self) -> (ipnet::IpNet, u32) {
        (self.pool, self.table)
    }
    pub fn send(&self, c: Control) -> bool {
        self.control.send(c).is_ok()
    }
    pub fn snapshot(&self) -> Option<TunnelStatus> {
        let mut s = self.status.lock().ok().map(|s| s.clone())?;
        s.foreign_inits = self.foreign.load(Ordering::Relaxed);
        Some(s)
    }
}

fn selectors(nets: &[config::Spanned<IpNet>]) -> Vec<TrafficSelector> {
    nets.iter()
        .filter_map(|n| AddressRange::from_prefix(n.value.network(), n.value.prefix_len()))
        .map(TrafficSelector::new)
        .collect()
}

/// The IKE configuration of a tunnel egress; reads the PSK file, or the certificate, key and
/// peer CAs.
pub fn sa_config(t: &Tunnel) -> Result<SaConfig, String> {
    let mut cert = None;
    let psk = match &t.auth {
        TunnelAuth::Psk { file } => {
            let text = std::fs::read(&file.value)
                .map_err(|e| format!("cannot read {}: {e}", file.value.display()))?;
            // a trailing newline is not part of the key
            let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
            ike::crypto::SecretBytes::from_slice(trimmed.strip_suffix(b"\r").unwrap_or(trimmed))
        }
        TunnelAuth::Certificate {
            certificate,
            private_key,
            peer_ca,
        } => {
            let cas: Vec<&std::path::Path> = peer_ca.iter().map(|p| p.value.as_path()).collect();
            let auth =
                ike::cert::CertAuth::from_files(&certificate.value, &private_key.value, &cas)
                    .map_err(|e| e.to_string())?;
            auth.check_identity(&t.local_id)?;
            cert = Some(Arc::new(auth));
            ike::crypto::SecretBytes::from_slice(&[])
        }
    };
    Ok(SaConfig {
        local_id: t.local_id.clone(),
        remote_id: t.remote_id.clone(),
        psk,
        ike_proposals: t.ike_proposals.clone(),
        esp_proposals: t.esp_proposals.clone(),
        local_ts: selectors(&t.local_ts),
        remote_ts: selectors(&t.remote_ts),
        retransmit_timeout: Duration::from_millis(500),
        retransmit_tries: 5,
        force_udp_encap: t.encap,
        cert,
    })
}

/// The lifetimes of a tunnel egress: rekey before `ike_lifetime` / `child_lifetime` /
/// `child_lifetime_bytes` (minus a random margin), liveness checks after `dpd_interval` of
/// silence from the peer.
pub fn lifetimes(t: &Tunnel) -> ike::sa::Lifetimes {
    ike::sa::Lifetimes {
        ike: Some(t.ike_lifetime),
        child: Some(t.child_lifetime),
        child_bytes: t.child_lifetime_bytes,
        child_packets: None,
        dpd: Some(t.dpd_interval.max(Duration::from_secs(1))),
    }
}

/// The TUN device name of a tunnel egress (at most 15 octets).
pub fn tun_name(egress: &str) -> String {
    let mut n = format!("ag-{egress}");
    n.truncate(15);
    n
}

fn describe(ts: &[TrafficSelector]) -> Vec<String> {
    ts.iter()
        .map(|t| match t.addresses {
            AddressRange::V4 { start, end } => format!("{start}-{end}"),
            AddressRange::V6 { start, end } => format!("{start}-{end}"),
        })
        .collect()
}

/// Starts every `tunnel` egress of `cfg`; `tables` names each one's routing table
/// ([`super::routes::table_numbers`]).
pub fn start_all(
    cfg: &config::Config,
    tables: &BTreeMap<String, u32>,
    events: Arc<crate::events::EventLog>,
) -> BTreeMap<String, TunnelHandle> {
    let mut out = BTreeMap::new();
    for e in &cfg.egresses {
        let EgressKind::Tunnel(t) = &e.kind else {
            continue;
        };
        let name = e.name.value.clone();
        let status = Arc::new(Mutex::new(TunnelStatus {
            name: name.clone(),
            local: t.local_address.to_string(),
            remote: t.remote_address.value.to_string(),
            role: role(t),
            state: idle(t),
            foreign_inits: 0,
            tun: None,
            ike_spi_i: None,
            ike_spi_r: None,
            ike_proposal: None,
            nat_detected: false,
            established_at: None,
            children: Vec::new(),
            rekeys: 0,
            last_alive: None,
            last_event: None,
            ike_rekey_at: None,
            ike_rekeys: 0,
        }));
        let (control, rx) = mpsc::unbounded_channel();
        let foreign = Arc::new(AtomicU64::new(0));
        let Some(table) = tables.get(&name).copied() else {
            events.emit(
                "tunnel.error",
                json!({"tunnel": name, "error": "no routing table assigned"}),
            );
            continue;
        };
        let task = tokio::spawn(run_tunnel(
            name.clone(),
            table,
            (**t).clone(),
            status.clone(),
            rx,
            events.clone(),
            foreign.clone(),
        ));
        out.insert(
            name,
            TunnelHandle {
                status,
                pool: t.nat_pool.value,
                table,
                foreign,
                control,
                task,
            },
        );
    }
    out
}

fn role(t: &Tunnel) -> &'static str {
    if t.initiate {
        "initiator"
    } else {
        "responder"
    }
}

/// The state of a tunnel without an IKE SA.
fn idle(t: &Tunnel) -> &'static str {
    if t.initiate {
        "connecting"
    } else {
        "waiting"
    }
}

fn set(status: &Shared, f: impl FnOnce(&mut TunnelStatus)) {
    if let Ok(mut s) = status.lock() {
        f(&mut s);
    }
}

async fn run_tunnel(
    name: String,
    table: u32,
    t: Tunnel,
    status: Shared,
    mut control: mpsc::UnboundedReceiver<Control>,
    log: Arc<crate::events::EventLog>,
    foreign: Arc<AtomicU64>,
) {
    // an error is logged when it changes, not every time it repeats
    let fail = |why: String| {
        let mut changed = false;
        set(&status, |s| {
            s.state = "error";
            changed = s.last_event.as_deref() != Some(why.as_str());
            s.last_event = Some(why.clone());
        });
        if changed {
            log.emit("tunnel.error", json!({"tunnel": name, "error": why}));
        }
    };
    // the pool is routed (into an `unreachable default` until a child SA is up) before
    // anything else, so that pool-sourced traffic never takes the main table
    if let Err(e) = super::routes::install_pool(t.nat_pool.value, table).await {
        log.emit("tunnel.error", json!({"tunnel": name, "error": e}));
    }
    let config = match sa_config(&t) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(e),
    };
    // bind, then create the device, retrying while the address or device is not there yet;
    // no TUN device is made on a host that does not have the tunnel's address
    let (sockets, tun) = loop {
        let ready = match IkeSockets::bind(t.local_address).await {
            Err(e) => Err(format!(
                "cannot bind {}:{IKE_PORT}/4500: {e}",
                t.local_address
            )),
            Ok(s) => TunDevice::create(&tun_name(&name))
                .map(|d| (s, d))
                .map_err(|e| format!("cannot create TUN device {}: {e}", tun_name(&name))),
        };
        match ready {
            Ok(pair) => break pair,
            Err(e) => {
                fail(format!("{e}; retrying in 10 s"));
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    c = control.recv() => if c.is_none() { return },
                }
            }
        }
    };
    set(&status, |s| {
        s.tun = Some(tun.name().to_string());
        s.state = idle(&t);
    });
    let local = SocketAddr::new(t.local_address, IKE_PORT);
    let remote = SocketAddr::new(t.remote_address.value, IKE_PORT);
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Event>();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Command>();
    // events → routes, status and the event log
    {
        let idle = idle(&t);
        let status = status.clone();
        let name = name.clone();
        let log = log.clone();
        let device = tun.name().to_string();
        let mtu = t.mtu;
        tokio::spawn(async move {
            let mut routes = match super::routes::TunnelRoutes::open(&device, table, mtu).await {
                Ok(r) => Some(r),
                Err(e) => {
                    log.emit("tunnel.error", json!({"tunnel": name, "error": e}));
                    None
                }
            };
            while let Some(e) = ev_rx.recv().await {
                if let Some(routes) = routes.as_mut() {
                    route_event(&name, routes, &log, &e).await;
                }
                on_event(&name, &status, &log, e, idle);
            }
            if let Some(mut routes) = routes {
                routes.clear().await;
            }
        });
    }
    // the operator's controls: rekey and down go to the SA, up/down gate the supervisor
    let (enabled_tx, enabled) = tokio::sync::watch::channel(true);
    {
        let idle = idle(&t);
        let status = status.clone();
        let name = name.clone();
        let log = log.clone();
        tokio::spawn(async move {
            while let Some(c) = control.recv().await {
                match c {
                    Control::Rekey => {
                        let _ = cmd_tx.send(Command::RekeyIke);
                        let _ = cmd_tx.send(Command::RekeyChildren);
                    }
                    Control::Down => {
                        let _ = enabled_tx.send(false);
                        let _ = cmd_tx.send(Command::Delete);
                        set(&status, |s| {
                            s.state = "down";
                            s.last_event = Some("brought down by the operator".into());
                        });
                        log.emit("tunnel.down", json!({"tunnel": name, "reason": "operator"}));
                    }
                    Control::Up => {
                        let _ = enabled_tx.send(true);
                        set(&status, |s| s.state = idle);
                        log.emit("tunnel.up", json!({"tunnel": name, "reason": "operator"}));
                    }
                }
            }
        });
    }
    let plan = ike::tunnel::Supervision {
        config,
        local,
        remote,
        max_delay: Duration::from_secs(30),
        enabled,
        fragment_size: usize::from(t.fragment_size),
        lifetimes: lifetimes(&t),
        dpd_action: match t.dpd_action {
            config::DpdAction::Restart => ike::tunnel::DpdAction::Restart,
            config::DpdAction::Clear => ike::tunnel::DpdAction::Clear,
        },
    };
    if t.initiate {
        ike::tunnel::supervise(&sockets, &tun, plan, ev_tx, &mut cmd_rx).await;
    } else {
        let responding = ike::tunnel::Responding {
            cookie_threshold: usize::try_from(t.cookie_threshold).unwrap_or(usize::MAX),
            half_open_timeout: HALF_OPEN_TIMEOUT,
            foreign,
        };
        ike::tunnel::supervise_responder(&sockets, &tun, plan, responding, ev_tx, &mut cmd_rx)
            .await;
    }
}

/// How long a responder IKE SA counts as half-open (IKE_SA_INIT answered, IKE_AUTH not done);
/// strongSwan's `charon.half_open_timeout` is 30 s too.
const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Routes the peer's selectors of each child SA into the tunnel's device while it is up.
async fn route_event(
    name: &str,
    routes: &mut super::routes::TunnelRoutes,
    log: &crate::events::EventLog,
    e: &Event,
) {
    match e {
        Event::ChildSaEstablished(c) => {
            for error in routes.add(c.spi_in, &c.remote_ts).await {
                log.emit("tunnel.error", json!({"tunnel": name, "error": error}));
            }
        }
        Event::ChildSaDeleted { spi_in, .. } => routes.remove(*spi_in).await,
        Event::Closed { .. } => routes.clear().await,
        _ => {}
    }
}

fn on_event(
    name: &str,
    status: &Shared,
    log: &crate::events::EventLog,
    e: Event,
    idle: &'static str,
) {
    let now = SystemTime::now();
    match e {
        Event::IkeSaEstablished {
            spi_i,
            spi_r,
            proposal,
            nat_detected,
            remote,
        } => {
            set(status, |s| {
                s.state = "established";
                s.ike_spi_i = Some(format!("{spi_i:016x}"));
                s.ike_spi_r = Some(format!("{spi_r:016x}"));
                s.ike_proposal = Some(proposal.to_string());
                s.nat_detected = nat_detected;
                s.established_at = Some(now);
                s.children.clear();
            });
            log.emit("tunnel.ike_established", json!({"tunnel": name, "proposal": proposal.to_string(), "remote": remote.to_string(), "nat": nat_detected}));
        }
        Event::ChildSaEstablished(c) => {
            let child = ChildStatus {
                spi_in: format!("{:08x}", c.spi_in),
                spi_out: format!("{:08x}", c.spi_out),
                proposal: c.proposal.to_string(),
                local_ts: describe(&c.local_ts),
                remote_ts: describe(&c.remote_ts),
                udp_encap: c.udp_encap,
                established_at: now,
                rekey_at: None,
            };
            set(status, |s| {
                if c.rekeys.is_some() {
                    s.rekeys += 1;
                }
                s.children.push(child.clone());
            });
            log.emit("tunnel.child_established", json!({"tunnel": name, "spi_in": child.spi_in, "spi_out": child.spi_out, "proposal": child.proposal, "rekeys": c.rekeys.map(|r| format!("{r:08x}"))}));
        }
        Event::ChildSaDeleted {
            spi_in,
            spi_out,
            reason,
        } => {
            let spi = format!("{spi_in:08x}");
            set(status, |s| s.children.retain(|c| c.spi_in != spi));
            log.emit(
                "tunnel.child_deleted",
                json!({"tunnel": name, "spi_in": spi, "spi_out": format!("{spi_out:08x}"), "reason": reason}),
            );
        }
        Event::ChildSaFailed { reason } | Event::ChildRekeyFailed { reason, .. } => {
            set(status, |s| s.last_event = Some(reason.clone()));
            log.emit(
                "tunnel.child_failed",
                json!({"tunnel": name, "reason": reason}),
            );
        }
        Event::IkeSaRekeyed {
            spi_i,
            spi_r,
            reason,
        } => {
            set(status, |s| {
                s.ike_spi_i = Some(format!("{spi_i:016x}"));
                s.ike_spi_r = Some(format!("{spi_r:016x}"));
                s.ike_rekeys += 1;
            });
            log.emit(
                "tunnel.ike_rekeyed",
                json!({"tunnel": name, "spi_i": format!("{spi_i:016x}"), "spi_r": format!("{spi_r:016x}"), "reason": reason}),
            );
        }
        Event::IkeRekeyFailed { reason } => {
            set(status, |s| s.last_event = Some(reason.clone()));
            log.emit(
                "tunnel.ike_rekey_failed",
                json!({"tunnel": name, "reason": reason}),
            );
        }
        Event::RekeyScheduled { child, after } => {
            let at = now + after;
            set(status, |s| match child {
                None => s.ike_rekey_at = Some(at),
                Some(spi) => {
                    let spi = format!("{spi:08x}");
                    if let Some(c) = s.children.iter_mut().find(|c| c.spi_in == spi) {
                        c.rekey_at = Some(at);
                    }
                }
            });
        }
        Event::InitialContact { remote_id } => {
            log.emit(
                "tunnel.initial_contact",
                json!({"tunnel": name, "remote_id": remote_id.to_string()}),
            );
        }
        Event::Cleared { reason } => {
            set(status, |s| {
                if s.state != "down" {
                    s.state = "cleared";
                }
                s.children.clear();
                s.ike_rekey_at = None;
                s.last_event = Some(reason.clone());
            });
            log.emit("tunnel.cleared", json!({"tunnel": name, "reason": reason}));
        }
        Event::Alive => set(status, |s| s.last_alive = Some(crate::timefmt::unix(now))),
        Event::Closed { reason } => {
            set(status, |s| {
                if s.state != "down" {
                    s.state = idle;
                }
                s.children.clear();
                s.ike_rekey_at = None;
                s.last_event = Some(reason.clone());
            });
            log.emit("tunnel.closed", json!({"tunnel": name, "reason": reason}));
        }
    }
}
