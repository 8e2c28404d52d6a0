//! Benchmark (printed, never asserted): one iperf3 TCP stream through an IPsec tunnel between
//! two namespaces, for each pairing — strongSwan↔strongSwan (kernel-libipsec, the baseline),
//! attestgate↔strongSwan and attestgate↔attestgate — next to plain veth, all in one run, with
//! ratios against the baseline. Needs root. Build it in release: the ESP engine is optimized code
//! only there.
//!
//!   cargo build --release -p tests && sudo target/release/tunnel-bench [SECONDS] [KIND…]
//!
//! KIND is any of `veth`, `strongswan-strongswan`, `attestgate-strongswan`,
//! `attestgate-attestgate` (ESP in UDP 4500), `attestgate-attestgate-raw` (raw ESP, IP
//! protocol 50; strongSwan 5.9.8's kernel-libipsec cannot do raw ESP) — all when none is given.

#![allow(clippy::unwrap_used)] // a benchmark tool: a failed step ends it

use std::time::Duration;
use tests::ike_peer::Peer;
use tests::netns::{unique, veth, Netns};
use tests::strongswan::{iperf3, Auth, Charon, PeerConfig};

fn config(ike: &str, esp: &str) -> PeerConfig {
    PeerConfig {
        local_addr: "203.0.113.10".into(),
        remote_addr: "203.0.113.20".into(),
        local_id: "gw.attestgate.lab".into(),
        remote_id: "vpn.corp.lab".into(),
        auth: Auth::Psk("bench-psk-2b7e151628aed2a6".into()),
        ike_proposal: ike.into(),
        esp_proposal: esp.into(),
        local_ts: "198.18.100.0/24".into(),
        remote_ts: "198.19.0.0/24".into(),
        child_rekey: "1h".into(),
        ike_rekey: "4h".into(),
    }
}

fn hosts() -> (Netns, Netns) {
    let a = Netns::new("ba");
    let b = Netns::new("bb");
    veth(&a, "203.0.113.10/24", &b, "203.0.113.20/24");
    a.addr("lo", "198.18.100.1/24");
    b.addr("lo", "198.19.0.1/24");
    (a, b)
}

fn with_tun(ns: &Netns, role: &str, cfg: &PeerConfig, route: &str, src: &str, raw: bool) -> Peer {
    let tun = unique("t");
    let mut args = vec!["--tun", &tun, "--exit-after", "3600"];
    if raw {
        args.extend(["--raw-esp", "1"]);
    }
    let p = Peer::start_with(ns, role, cfg, &args);
    ns.ip(&["link", "set", &tun, "mtu", "1400", "up"]);
    ns.ip(&["route", "add", route, "dev", &tun, "src", src]);
    p
}

fn run(kind: &str, ike: &str, esp: &str, secs: u32) -> f64 {
    let (a, b) = hosts();
    let cfg = config(ike, esp);
    let measure = |a: &Netns, b: &Netns| iperf3(b, "198.19.0.1", a, "198.18.100.1", secs);
    match kind {
        "veth" => iperf3(&b, "203.0.113.20", &a, "203.0.113.10", secs),
        "strongswan-strongswan" => {
            let ca = Charon::start(&a, &cfg);
            let _cb = Charon::start(&b, &cfg.mirrored());
            ca.initiate();
            measure(&a, &b)
        }
        "attestgate-strongswan" => {
            let _sw = Charon::start(&b, &cfg.mirrored());
            let p = with_tun(
                &a,
                "initiator",
                &cfg,
                "198.19.0.0/24",
                "198.18.100.1",
                false,
            );
            p.wait_for("child_established", Duration::from_secs(20));
            measure(&a, &b)
        }
        _ => {
            // attestgate-attestgate: ESP in UDP 4500 (forced, as with strongSwan here);
            // attestgate-attestgate-raw: raw ESP, IP protocol 50 (no NAT on the path)
            let raw = kind.ends_with("-raw");
            let r = with_tun(
                &b,
                "responder",
                &cfg.mirrored(),
                "198.18.100.0/24",
                "198.19.0.1",
                raw,
            );
            let i = with_tun(&a, "initiator", &cfg, "198.19.0.0/24", "198.18.100.1", raw);
            i.wait_for("child_established", Duration::from_secs(20));
            r.wait_for("child_established", Duration::from_secs(5));
            measure(&a, &b)
        }
    }
}

fn main() {
    let secs: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let only: Vec<String> = std::env::args().skip(2).collect();
    println!("tunnel-bench: one iperf3 TCP stream, {secs} s each, same machine, same run");
    for (ike, esp) in [
        ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
    ] {
        println!("\nsuite {ike} / {esp}");
        let mut results = Vec::new();
        for kind in [
            "veth",
            "strongswan-strongswan",
            "attestgate-strongswan",
            "attestgate-attestgate",
            "attestgate-attestgate-raw",
        ] {
            if !only.is_empty() && !only.iter().any(|k| k == kind) {
                continue;
            }
            let bps = run(kind, ike, esp, secs);
            results.push((kind, bps));
        }
        let base = results
            .iter()
            .find(|(k, _)| *k == "strongswan-strongswan")
            .map_or(0.0, |r| r.1);
        for (kind, bps) in &results {
            let ratio = if base > 0.0 { bps / base } else { 0.0 };
            println!(
                "  {kind:<26} {:>7.3} Gbit/s   {ratio:>5.2}× strongSwan↔strongSwan",
                bps / 1e9
            );
        }
    }
}
