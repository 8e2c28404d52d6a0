//! Runs one attestgate IKE SA over real UDP sockets, for interop tests: as initiator or
//! responder, PSK, one child SA. Prints every event as a JSON line on stdout and keeps the SA
//! until killed (or `--exit-after` seconds).
//!
//! ike-peer --role initiator|responder --local IP --remote IP --local-id ID --remote-id ID
//!          --psk SECRET --ike PROPOSAL[,…] --esp PROPOSAL[,…] --local-ts CIDR --remote-ts CIDR
//!          [--fragment-size OCTETS] [--cookie-threshold N]
//!          [--tun NAME] [--raw-esp 1] [--restart 1] [--rekey-every S] [--dpd-every S]
//!          [--ike-lifetime SECS] [--child-lifetime SECS] [--child-bytes N] [--dpd SECS]
//!          [--dpd-action restart|clear] [--rekey-every SECS] [--ike-rekey-every SECS]
//!
//! Certificate authentication instead of the PSK: --cert PEM --key PEM --peer-ca PEM[,…]

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test tool: bad arguments end it

use ike::cert::CertAuth;
use ike::cookie::{CookieGate, DEFAULT_ROTATION};
use ike::crypto::SecretBytes;
use ike::driver::{accept, accept_with_cookies, drive_with, Command, IkeSockets};
use ike::sa::{Event, IkeSa, SaConfig, IKE_PORT};
use ike::tunnel::TunDevice;
use ike::wire::{AddressRange, TrafficSelector};
use ike::{EspProposal, Identity, IkeProposal};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn ts(cidr: &str) -> TrafficSelector {
    let (a, l) = cidr.split_once('/').expect("CIDR");
    TrafficSelector::new(
        AddressRange::from_prefix(a.parse().expect("address"), l.parse().expect("prefix"))
            .expect("prefix length"),
    )
}

fn describe(ts: &[TrafficSelector]) -> Vec<String> {
    ts.iter()
        .map(|t| match t.addresses {
            AddressRange::V4 { start, end } => format!("{start}-{end}"),
            AddressRange::V6 { start, end } => format!("{start}-{end}"),
        })
        .collect()
}

// two workers: the data path encrypts and decrypts in tasks of their own
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut opt = HashMap::new();
    for pair in args.chunks(2) {
        opt.insert(
            pair[0].trim_start_matches("--").to_string(),
            pair.get(1).cloned().unwrap_or_default(),
        );
    }
    let get = |k: &str| {
        opt.get(k)
            .unwrap_or_else(|| panic!("--{k} is required"))
            .clone()
    };
    let config = Arc::new(SaConfig {
        local_id: Identity::parse(&get("local-id")).unwrap(),
        remote_id: Identity::parse(&get("remote-id")).unwrap(),
        psk: SecretBytes::from_slice(opt.get("psk").map(String::as_bytes).unwrap_or_default()),
        ike_proposals: get("ike")
            .split(',')
            .map(|p| IkeProposal::parse(p).unwrap())
            .collect(),
        esp_proposals: get("esp")
            .split(',')
            .map(|p| EspProposal::parse(p).unwrap())
            .collect(),
        local_ts: get("local-ts").split(',').map(ts).collect(),
        remote_ts: get("remote-ts").split(',').map(ts).collect(),
        retransmit_timeout: Duration::from_millis(500),
        retransmit_tries: opt
            .get("retransmit-tries")
            .and_then(|s| s.parse().ok())
            .unwrap_or(6),
        // UDP-encapsulated ESP unless --raw-esp: then only when a NAT is detected (RFC 7296
        // §2.23), else raw ESP (IP protocol 50)
        force_udp_encap: !opt.contains_key("raw-esp"),
        cert: opt.get("cert").map(|cert| {
            let cas: Vec<String> = get("peer-ca").split(',').map(String::from).collect();
            let key = get("key");
            let auth = CertAuth::from_files(Path::new(cert), Path::new(&key), &cas)
                .unwrap_or_else(|e| panic!("certificate authentication: {e}"));
            Arc::new(auth)
        }),
    });
    if opt.contains_key("cert") == opt.contains_key("psk") {
        panic!("give either --psk or --cert/--key/--peer-ca");
    }
    let secs = |k: &str| {
        opt.get(k)
            .and_then(|s| s.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
    };
    let lifetimes = ike::sa::Lifetimes {
        ike: secs("ike-lifetime"),
        child: secs("child-lifetime"),
        child_bytes: opt.get("child-bytes").and_then(|s| s.parse().ok()),
        child_packets: None,
        dpd: secs("dpd"),
    };
    let local: IpAddr = get("local").parse().unwrap();
    let remote: IpAddr = get("remote").parse().unwrap();
    let sockets = IkeSockets::bind(local).await.expect("bind 500/4500");
    // --tun NAME: carry ESP between that TUN device and the peer
    let tun = opt
        .get("tun")
        .map(|name| TunDevice::create(name).expect("TUN device"));
    let tun_name = tun.as_ref().map(|t| t.name().to_string());
    println!(
        "{}",
        json!({"event": "listening", "local": local.to_string(), "tun": tun_name})
    );
    let mut sa = if get("role") == "initiator" {
        IkeSa::initiate(
            config.clone(),
            SocketAddr::new(local, IKE_PORT),
            SocketAddr::new(remote, IKE_PORT),
            Instant::now(),
        )
    } else if let Some(threshold) = opt.get("cookie-threshold") {
        // --cookie-threshold N: ask for a cookie (RFC 7296 §2.6) at N half-open SAs; this
        // responder has none before it accepts, so 0 asks every initiator
        let now = Instant::now();
        let mut gate = CookieGate::new(threshold.parse().unwrap(), DEFAULT_ROTATION, now).unwrap();
        accept_with_cookies(&sockets, config.clone(), &mut gate, 0)
            .await
            .expect("receive")
    } else {
        accept(&sockets, config.clone()).await.expect("receive")
    };
    // --fragment-size N: IKE fragments (RFC 7383) of at most N-octet IP datagrams
    if let Some(size) = opt.get("fragment-size") {
        sa.set_fragment_size(size.parse().unwrap());
    }
    sa.set_lifetimes(lifetimes);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let line = match e {
                Event::IkeSaEstablished {
                    spi_i,
                    spi_r,
                    proposal,
                    nat_detected,
                    remote,
                } => json!({
                    "event": "ike_established", "spi_i": format!("{spi_i:016x}"), "spi_r": format!("{spi_r:016x}"),
                    "proposal": proposal.to_string(), "nat": nat_detected, "remote": remote.to_string()}),
                Event::ChildSaEstablished(c) => json!({
                    "event": "child_established", "spi_in": format!("{:08x}", c.spi_in), "spi_out": format!("{:08x}", c.spi_out),
                    "proposal": c.proposal.to_string(), "udp_encap": c.udp_encap,
                    "rekeys": c.rekeys.map(|s| format!("{s:08x}")),
                    "local_ts": describe(&c.local_ts), "remote_ts": describe(&c.remote_ts)}),
                Event::ChildSaFailed { reason } => {
                    json!({"event": "child_failed", "reason": reason})
                }
                Event::ChildSaDeleted {
                    spi_in,
                    spi_out,
                    reason,
                } => json!({"event": "child_deleted",
                    "spi_in": format!("{spi_in:08x}"), "spi_out": format!("{spi_out:08x}"), "reason": reason}),
                Event::ChildRekeyFailed { spi_in, reason } => json!({"event": "child_rekey_failed",
                    "spi_in": format!("{spi_in:08x}"), "reason": reason}),
                Event::IkeSaRekeyed {
                    spi_i,
                    spi_r,
                    reason,
                } => json!({"event": "ike_rekeyed",
                    "spi_i": format!("{spi_i:016x}"), "spi_r": format!("{spi_r:016x}"), "reason": reason}),
                Event::IkeRekeyFailed { reason } => {
                    json!({"event": "ike_rekey_failed", "reason": reason})
                }
                Event::RekeyScheduled { child, after } => json!({"event": "rekey_scheduled",
                    "child": child.map(|s| format!("{s:08x}")), "after_ms": after.as_millis() as u64}),
                Event::InitialContact { remote_id } => {
                    json!({"event": "initial_contact", "remote_id": remote_id.to_string()})
                }
                Event::Alive => json!({"event": "alive"}),
                Event::Closed { reason } => json!({"event": "closed", "reason": reason}),
                Event::Cleared { reason } => json!({"event": "cleared", "reason": reason}),
            };
            println!("{line}");
        }
    });
    let exit_after = opt
        .get("exit-after")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(600);
    let (ctl, mut commands) = tokio::sync::mpsc::unbounded_channel();
    for (key, command) in [
        ("rekey-every", Command::RekeyChildren),
        ("dpd-every", Command::CheckLiveness),
        ("ike-rekey-every", Command::RekeyIke),
    ] {
        if let Some(secs) = opt.get(key).and_then(|s| s.parse::<f64>().ok()) {
            let ctl = ctl.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs_f64(secs));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if ctl.send(command).is_err() {
                        break;
                    }
                }
            });
        }
    }
    // kept open: the supervisor returns once its command channel closes
    let _ctl = ctl;
    let limit = Duration::from_secs(exit_after);
    match &tun {
        // --restart: keep the tunnel up as initiator (dpd_action = restart)
        Some(tun) if opt.contains_key("restart") => {
            let (local, remote) = (SocketAddr::new(local, IKE_PORT), sa.remote());
            let (_on, enabled) = tokio::sync::watch::channel(true);
            let plan = ike::tunnel::Supervision {
                config,
                local,
                remote,
                max_delay: Duration::from_secs(5),
                enabled,
                fragment_size: opt
                    .get("fragment-size")
                    .map_or(ike::sa::DEFAULT_FRAGMENT_SIZE, |s| s.parse().unwrap()),
                lifetimes,
                dpd_action: if opt.get("dpd-action").map(String::as_str) == Some("clear") {
                    ike::tunnel::DpdAction::Clear
                } else {
                    ike::tunnel::DpdAction::Restart
                },
            };
            let run = ike::tunnel::supervise(&sockets, tun, plan, tx, &mut commands);
            let _ = tokio::time::timeout(limit, run).await;
        }
        Some(tun) => {
            let run = ike::tunnel::run(&sockets, tun, sa, tx, &mut commands);
            if let Ok((_, counters)) = tokio::time::timeout(limit, run).await {
                eprintln!("ike-peer: tunnel closed: {counters:?}");
            }
        }
        None => {
            let _ = tokio::time::timeout(limit, drive_with(&sockets, sa, tx, commands)).await;
        }
    }
    let _ = printer.await;
}
