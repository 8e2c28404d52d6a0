//! The benchmark of issue 6, printed and never asserted (ignored: run it on purpose, as root,
//! after `cargo build -p attestgate`):
//!
//!   cargo build --release -p attestgate -p tests --bins
//!   ATTESTGATE_LAB_BINS=$PWD/target/release cargo test -p tests --test lab_bench -- --ignored --nocapture
//!
//! In one lab run (`tests::lab`): single TCP stream throughput over plain veth (appliance →
//! IdP over the wan bridge), over the IPsec tunnel without the relay (iperf3 from the
//! appliance bound to a NAT-pool address → LAN server, attestgate's ESP ↔ strongSwan
//! kernel-libipsec), and device → relay (HTTP/3, aioquic) → ESP → LAN (an echo, so each way);
//! then CONNECT to first byte over 1,000 requests through the relay and the same without it
//! (a TCP connect from a pool address), p50 and p99, with ratios.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::path::Path;
use std::process::Command;
use tests::lab::{Lab, LabBins, COMPLIANT, IDP, PUBLIC};
use tests::strongswan::iperf3;

fn json(out: std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
#[ignore = "a benchmark: run with --ignored --nocapture"]
fn lab_throughput_and_connect_latency() {
    if !tests::require_root("lab_bench") {
        return;
    }
    let bins = LabBins::in_dir(
        Path::new(env!("CARGO_BIN_EXE_lab-server"))
            .parent()
            .unwrap(),
    );
    let lab = Lab::start(bins);
    let cert = lab.device_cert(COMPLIANT);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // plain veth (through the wan bridge), then ESP without the relay
    let plain = iperf3(&lab.idp, IDP, &lab.appliance, PUBLIC, 3);
    let lan = &lab.lan;
    let esp = iperf3(lan, tests::lab::APP, &lab.appliance, "198.18.100.60", 3);

    // device → relay → ESP → LAN echo; and device → relay → plain wan → IdP echo
    let bulk = |authority: &str| -> Value {
        json(
            Command::new("ip")
                .args(["netns", "exec", &lab.device.name, "python3"])
                .arg(&lab.bins.h3_client)
                .args(["bulk", "--host", "198.51.100.1", "--port", "443"])
                .args(["--server-name", "relay.attestgate.lab", "--ca"])
                .arg(lab.path("relay-ca.crt"))
                .arg("--cert")
                .arg(&cert.cert)
                .arg("--key")
                .arg(&cert.key)
                .args([
                    "--authority",
                    authority,
                    "--send",
                    "30000000",
                    "--timeout",
                    "60",
                ])
                .output()
                .unwrap(),
        )
    };
    let relay_esp = bulk("app.corp.lab:80");
    let relay_plain = bulk("idp.lab:443");
    let mbit = |v: &Value| v["mb_per_s_each_way"].as_f64().unwrap_or(0.0) * 8.0;

    // CONNECT → first byte
    let ttfb = |args: &[&str], ns: &str| -> Value {
        json(
            Command::new("ip")
                .args(["netns", "exec", ns, "python3"])
                .arg(root.join("tests/lab/ttfb.py"))
                .args(args)
                .output()
                .unwrap(),
        )
    };
    let ca = lab.path("relay-ca.crt").display().to_string();
    let (c, k) = (
        cert.cert.display().to_string(),
        cert.key.display().to_string(),
    );
    let through_relay = ttfb(
        &[
            "relay",
            "--ca",
            &ca,
            "--cert",
            &c,
            "--key",
            &k,
            "--authority",
            "app.corp.lab:80",
            "-n",
            "1000",
        ],
        &lab.device.name,
    );
    let direct = ttfb(
        &[
            "direct",
            "--source",
            "198.18.100.61",
            "--target",
            "198.19.0.10:80",
            "-n",
            "1000",
        ],
        &lab.appliance.name,
    );

    println!("\n== lab benchmark (single TCP stream; one run, same machine)");
    println!(
        "plain veth (appliance → IdP, wan bridge):     {:8.1} Mbit/s",
        plain / 1e6
    );
    println!(
        "ESP tunnel without the relay (pool → LAN):   {:8.1} Mbit/s  ({:.3} of plain veth)",
        esp / 1e6,
        esp / plain
    );
    println!(
        "device → relay (HTTP/3) → ESP → LAN echo:   {:8.1} Mbit/s each way  ({:.3} of the tunnel alone; {} bytes back for {} sent, the server's `seen` line first)",
        mbit(&relay_esp),
        mbit(&relay_esp) * 1e6 / esp,
        relay_esp["received"],
        relay_esp["sent"]
    );
    println!(
        "device → relay (HTTP/3) → wan → IdP echo:   {:8.1} Mbit/s each way  (the aioquic client's own ceiling)",
        mbit(&relay_plain)
    );
    println!(
        "CONNECT → first byte through the relay + ESP: p50 {} ms, p99 {} ms (n {}, errors {})",
        through_relay["p50_ms"],
        through_relay["p99_ms"],
        through_relay["n"],
        through_relay["errors"]
    );
    println!(
        "TCP connect → first byte from the pool, no relay: p50 {} ms, p99 {} ms (n {}, errors {})",
        direct["p50_ms"], direct["p99_ms"], direct["n"], direct["errors"]
    );
    if let (Some(a), Some(b), Some(c), Some(d)) = (
        through_relay["p50_ms"].as_f64(),
        direct["p50_ms"].as_f64(),
        through_relay["p99_ms"].as_f64(),
        direct["p99_ms"].as_f64(),
    ) {
        println!(
            "time added by the relay per request: p50 {:.2} ms, p99 {:.2} ms",
            a - b,
            c - d
        );
    }
}
