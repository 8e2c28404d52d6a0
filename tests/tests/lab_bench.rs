//! The benchmark of issue 6, printed and never asserted (ignored: run it on purpose, as root):
//!
//!   cargo build --release -p attestgate -p tests --bins
//!   ATTESTGATE_LAB_BINS=$PWD/target/release cargo test -p tests --test lab_bench -- --ignored --nocapture
//!
//! (`ATTESTGATE_LAB_BINS` picks the daemon, lab server and `h3-bulk` the lab runs; without it,
//! the folder of this test's own profile. `LAB_BENCH_MIB` sets the bulk size, 64 MiB.)
//!
//! In one lab run (`tests::lab`): single TCP stream throughput over plain veth (appliance →
//! IdP over the wan bridge), over the IPsec tunnel without the relay (iperf3 from the
//! appliance bound to a NAT-pool address → LAN server, attestgate's ESP ↔ strongSwan
//! kernel-libipsec), and device → relay (HTTP/3) → ESP → LAN and device → relay → wan → IdP,
//! each with the Rust client `h3-bulk` (`tests/src/bin/h3-bulk.rs`) streaming to the lab
//! server's echo, so each way at once; then the aioquic client (`relay/tests/h3_client.py
//! bulk`) on the ESP path, for comparison with earlier figures (it tops out by itself near
//! 40–50 Mbit/s); then CONNECT to first byte over 1,000 requests through the relay and the
//! same without it (a TCP connect from a pool address), p50 and p99, with ratios.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed unwrap is a failed test

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use tests::lab::{Lab, LabBins, COMPLIANT, IDP, PUBLIC, RELAY};
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
    let dir = std::env::var_os("ATTESTGATE_LAB_BINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_BIN_EXE_lab-server"))
                .parent()
                .unwrap()
                .to_path_buf()
        });
    let h3_bulk = dir.join("h3-bulk");
    assert!(
        h3_bulk.exists(),
        "{} is missing: cargo build -p tests --bins",
        h3_bulk.display()
    );
    let mib = std::env::var("LAB_BENCH_MIB").unwrap_or_else(|_| "64".into());
    let bins = LabBins::in_dir(&dir);
    println!("binaries from {}", dir.display());
    let lab = Lab::start(bins);
    let cert = lab.device_cert(COMPLIANT);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");

    // plain veth (through the wan bridge), then ESP without the relay
    let plain = iperf3(&lab.idp, IDP, &lab.appliance, PUBLIC, 3);
    let lan = &lab.lan;
    let esp = iperf3(lan, tests::lab::APP, &lab.appliance, "198.18.100.60", 3);

    // device → relay → ESP → LAN echo, and device → relay → plain wan → IdP echo, with the
    // Rust client; then the aioquic client on the ESP path
    let relay_ca = lab.path("relay-ca.crt");
    let bulk = |authority: &str| -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.device.name])
            .arg(&h3_bulk)
            .args(["--relay", &format!("{RELAY}:443")])
            .args(["--server-name", "relay.attestgate.lab", "--ca"])
            .arg(&relay_ca)
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key)
            .args(["--authority", authority, "--mib", &mib, "--timeout", "180"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "h3-bulk to {authority}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        json(out)
    };
    let relay_esp = bulk("app.corp.lab:80");
    let relay_plain = bulk("idp.lab:443");
    let aioquic = json(
        Command::new("ip")
            .args(["netns", "exec", &lab.device.name, "python3"])
            .arg(&lab.bins.h3_client)
            .args(["bulk", "--host", RELAY, "--port", "443"])
            .args(["--server-name", "relay.attestgate.lab", "--ca"])
            .arg(&relay_ca)
            .arg("--cert")
            .arg(&cert.cert)
            .arg("--key")
            .arg(&cert.key)
            .args([
                "--authority",
                "app.corp.lab:80",
                "--send",
                "30000000",
                "--timeout",
                "60",
            ])
            .output()
            .unwrap(),
    );
    let mbit = |v: &Value| v["mbit_s_each_way"].as_f64().unwrap_or(0.0);
    let aioquic_mbit = aioquic["mb_per_s_each_way"].as_f64().unwrap_or(0.0) * 8.0;

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
        "device → relay (HTTP/3) → ESP → LAN echo:   {:8.1} Mbit/s each way, {:.1} both ({} MiB, {} s; the LAN server saw {})",
        mbit(&relay_esp),
        2.0 * mbit(&relay_esp),
        relay_esp["sent"].as_u64().unwrap_or(0) >> 20,
        relay_esp["seconds"],
        relay_esp["source_seen"]
    );
    println!(
        "device → relay (HTTP/3) → wan → IdP echo:   {:8.1} Mbit/s each way, {:.1} both (no tunnel; the IdP saw {})",
        mbit(&relay_plain),
        2.0 * mbit(&relay_plain),
        relay_plain["source_seen"]
    );
    println!(
        "  the same ESP path, aioquic client:         {:8.1} Mbit/s each way ({} bytes back for {} sent, the `seen` line first)",
        aioquic_mbit, aioquic["received"], aioquic["sent"]
    );
    let both = 2.0 * mbit(&relay_esp) * 1e6;
    println!(
        "ratios: ESP alone / plain veth {:.3}; relay+ESP / ESP alone {:.3} each way, {:.3} both ways; relay+ESP / plain veth {:.3} both ways; relay+wan / plain veth {:.3} both ways",
        esp / plain,
        mbit(&relay_esp) * 1e6 / esp,
        both / esp,
        both / plain,
        2.0 * mbit(&relay_plain) * 1e6 / plain
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
