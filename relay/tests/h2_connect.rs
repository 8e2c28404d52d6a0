//! The HTTP/2 listener against an independent client: Node.js's built-in `http2` module
//! (`tests/h2_client.js`, nghttp2 inside) plays the managed device on Apple's HTTP/2 fallback,
//! with certificates made at test time, the real `DirectEgress` and servers on 127.0.0.1.
//!
//! Needs `node` on the PATH (run with Node 20).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/lab.rs"]
mod lab;

use std::net::IpAddr;
use std::time::Duration;

use relay::{HttpVersion, Protocol};
use serde_json::Value;

use lab::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_round_trips_one_mib() {
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::Echo).await;
    let size = 1024 * 1024;
    let out = lab
        .node(
            Some("good"),
            &[
                "connect",
                "--authority",
                &authority(address),
                "--send",
                &size.to_string(),
            ],
        )
        .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["proxy_status"], Value::Null, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    assert_eq!(out["rst_code"], 0, "{out}");
    assert_eq!(out["sent"], size, "{out}");
    assert_eq!(out["received"], size, "{out}");
    // SHA-256 equal both ways: what the device sent reached the target, and came back.
    assert_eq!(out["received_sha256"], out["sent_sha256"], "{out}");
    let at_target = next(&mut received).await;
    assert_eq!(at_target.bytes, size as u64);
    assert_eq!(at_target.sha256, out["sent_sha256"].as_str().unwrap());

    let asked = lab.policy.asked.lock().unwrap().clone();
    assert_eq!(
        asked,
        vec![Asked {
            serial: GOOD.into(),
            host: "127.0.0.1".into(),
            port: address.port(),
            protocol: Protocol::Tcp,
            peer: "127.0.0.1".parse().unwrap(),
        }]
    );
    let stats = lab
        .stats_until(|s| s.flows_active == 0 && s.bytes_to_devices == size as u64)
        .await;
    assert_eq!(stats.flows_opened, 1);
    assert_eq!(stats.bytes_from_devices, size as u64);
    assert_eq!(stats.bytes_to_devices, size as u64);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.handshake_failures, 0);
    assert!(lab.relay.flows().is_empty(), "the flow left the registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_device_first() {
    // The target answers only after end of file: the device's END_STREAM must become a TCP
    // FIN, and the answer must still reach the device after its side is closed.
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::EchoAfterEof).await;
    let out = lab
        .node(
            Some("good"),
            &[
                "connect",
                "--authority",
                &authority(address),
                "--send",
                "300000",
            ],
        )
        .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    assert_eq!(out["received"], 300000, "{out}");
    assert_eq!(out["received_sha256"], out["sent_sha256"], "{out}");
    assert_eq!(next(&mut received).await.bytes, 300000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_target_first() {
    // The target closes its side first: the device sees END_STREAM, and can still send.
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::TalksFirst).await;
    let out = lab
        .node(
            Some("good"),
            &[
                "connect",
                "--authority",
                &authority(address),
                "--send",
                "100000",
                "--wait-end-first",
            ],
        )
        .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["ended_before_send"], true, "{out}");
    assert_eq!(out["received_before_send"], GREETING.len(), "{out}");
    assert_eq!(out["rst_code"], 0, "{out}");
    let at_target = next(&mut received).await;
    assert_eq!(at_target.bytes, 100000);
    assert_eq!(at_target.sha256, out["sent_sha256"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backpressure_when_the_target_does_not_read() {
    // The device pushes 64 MiB at a target that never reads: once the kernel's TCP buffers
    // are full the relay stops crediting the device (no WINDOW_UPDATE), so what it took from
    // the device stops growing, far below what was offered, and nothing piles up in memory.
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Stall).await;
    let offered: u64 = 64 << 20;
    let (target, size) = (authority(address), offered.to_string());
    let args = [
        "connect",
        "--authority",
        &target,
        "--send",
        &size,
        "--timeout",
        "12",
    ];
    let client = lab.node(Some("good"), &args);
    let watch = async {
        // Node may take seconds to start on a loaded machine: wait for the flow, then give the
        // buffers time to fill
        let deadline = std::time::Instant::now() + Duration::from_secs(8);
        while lab.relay.flows().is_empty() {
            assert!(std::time::Instant::now() < deadline, "no flow registered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        // the flow records the address its target socket left from
        let source = lab.relay.flows()[0]
            .source
            .expect("source recorded once dialled");
        assert!(source.ip().is_loopback() && source.port() != 0, "{source}");
        let first = lab.relay.flows()[0].bytes_from_device;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = lab.relay.flows()[0].bytes_from_device;
        (first, second)
    };
    let (out, (first, second)) = tokio::join!(client, watch);
    assert_eq!(out["timeout"], true, "{out}");
    println!("bytes taken from the device with a stalled target: {first} then {second}");
    assert_eq!(first, second, "the device is held back");
    assert!(first > 0 && first < offered / 2, "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_proxy_status() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let connect = |authority: String| vec!["connect".to_string(), "--authority".into(), authority];
    let run = |device: &'static str, args: Vec<String>| {
        let lab = &lab;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.node(Some(device), &args).await
        }
    };

    // A denied device → 502 connection_refused, the stream ended cleanly.
    let out = run("denied", connect(authority(address))).await;
    assert_eq!(out["status"], 502, "{out}");
    assert_eq!(
        out["proxy_status"],
        r#"attestgate; error=connection_refused; details="denied by policy""#
    );
    assert!(out["stream_error"].is_null(), "{out}");
    let out = run("good", connect("forbidden.test:443".into())).await;
    assert_eq!(out["status"], 403, "{out}");
    let out = run("good", connect("direct.test:443".into())).await;
    assert_eq!(out["status"], 503, "{out}");
    assert!(out["proxy_status"]
        .as_str()
        .unwrap()
        .starts_with("attestgate; error=destination_unavailable"));
    // Refused by the appliance for a reason of its own: 502 with its details.
    let out = run("good", connect("exhausted.test:443".into())).await;
    assert_eq!(out["status"], 502, "{out}");
    assert_eq!(
        out["proxy_status"],
        r#"attestgate; error=connection_refused; details="NAT pool exhausted""#
    );
    // Malformed and unsupported requests the HTTP/2 layer lets through.
    let out = run("good", connect("no-port.test".into())).await;
    assert_eq!(out["status"], 400, "{out}");
    assert!(out["proxy_status"]
        .as_str()
        .unwrap()
        .starts_with("attestgate; error=http_request_error; details="));
    let mut get = connect("host.test:443".into());
    get.extend(["--method".into(), "GET".into()]);
    assert_eq!(run("good", get).await["status"], 501);

    let stats = lab.relay.stats().snapshot();
    assert_eq!((stats.denied, stats.direct), (3, 1), "{stats:?}");
    assert_eq!(
        (stats.malformed_requests, stats.unsupported_requests),
        (1, 1)
    );
    assert_eq!(stats.flows_opened, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_in_the_handshake() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    // TLS 1.3: the client finishes its side first, then reads the server's alert (RFC 8446
    // §6.2): certificate_required, unknown_ca, certificate_expired, certificate_revoked.
    let cases = [
        (None, "CERTIFICATE_REQUIRED"),
        (Some("foreign"), "UNKNOWN_CA"),
        (Some("expired"), "CERTIFICATE_EXPIRED"),
        (Some("revoked"), "CERTIFICATE_REVOKED"),
    ];
    for (device, alert) in cases {
        let out = lab
            .node(
                device,
                &[
                    "connect",
                    "--authority",
                    &authority(address),
                    "--timeout",
                    "10",
                ],
            )
            .await;
        assert!(out["status"].is_null(), "{device:?}: {out}");
        // Node reports the alert on the session or on the pending stream.
        let error = [&out["error"], &out["stream_error"]]
            .iter()
            .filter_map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        assert!(error.contains(alert), "{device:?}: {out}");
    }
    let stats = lab.stats_until(|s| s.handshake_failures >= 4).await;
    assert_eq!(stats.handshake_failures, 4);
    assert_eq!(stats.connections_accepted, 0);
    assert!(lab.policy.asked.lock().unwrap().is_empty());

    // A verified certificate without a device identity: GOAWAY INADEQUATE_SECURITY (0xc).
    let out = lab
        .node(
            Some("no-identity"),
            &["connect", "--authority", "host.test:443", "--timeout", "10"],
        )
        .await;
    assert!(out["status"].is_null(), "{out}");
    assert_eq!(out["goaway"], 0xc, "{out}");
    assert_eq!(
        lab.stats_until(|s| s.identity_failures >= 1)
            .await
            .identity_failures,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_udp_round_trips_capsules() {
    let lab = lab().await;
    let (address, mut sources) = udp_echo().await;
    let path = format!("/.well-known/masque/udp/127.0.0.1/{}/", address.port());
    let out = lab
        .node(
            Some("good"),
            &[
                "udp",
                "--authority",
                "localhost:443",
                "--path",
                &path,
                "--datagrams",
                "10",
            ],
        )
        .await;
    // RFC 8441 §3: the relay announced SETTINGS_ENABLE_CONNECT_PROTOCOL = 1.
    assert_eq!(out["enable_connect_protocol"], true, "{out}");
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["capsule_protocol"], "?1", "{out}");
    assert_eq!(out["echoed"], 10, "{out}");
    assert_eq!(out["unexpected"], 0, "{out}");
    assert_eq!(out["other_capsules"], 0, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    let from = tokio::time::timeout(Duration::from_secs(5), sources.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());

    let asked = lab.policy.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].protocol, Protocol::Udp);
    // The unknown capsule was skipped; the datagram with context ID 7 dropped and counted.
    let stats = lab
        .stats_until(|s| s.flows_active == 0 && s.datagrams_dropped >= 1)
        .await;
    assert_eq!(stats.flows_opened, 1);
    assert_eq!(stats.datagrams_dropped, 1, "{stats:?}");
    assert_eq!(stats.malformed_requests, 0, "{stats:?}");
    assert!(stats.bytes_to_devices > 0);

    let out = lab
        .node(
            Some("denied"),
            &["udp", "--authority", "localhost:443", "--path", &path],
        )
        .await;
    assert_eq!(out["status"], 502, "{out}");
    let out = lab
        .node(
            Some("good"),
            &[
                "udp",
                "--authority",
                "localhost:443",
                "--path",
                "/masque/udp/x/53/",
            ],
        )
        .await;
    assert_eq!(out["status"], 400, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_listeners_share_counters_and_the_flow_list() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let h3 = lab.hold(Client::Aioquic, "good", address).await;
    let h2 = lab.hold(Client::Node, "other", address).await;
    let flows = lab.relay.flows();
    assert_eq!(flows.len(), 2, "{flows:?}");
    let by_http = |http| flows.iter().find(|f| f.http == http).unwrap();
    assert_eq!(by_http(HttpVersion::Http3).device, GOOD);
    assert_eq!(by_http(HttpVersion::Http2).device, OTHER);
    let stats = lab.relay.stats().snapshot();
    assert_eq!(stats.connections_active, 2);
    assert_eq!(stats.flows_active, 2);
    // A killed Node process closes its TCP connection: the HTTP/2 flow and connection end.
    // (A killed aioquic process sends nothing: its QUIC connection lives until the idle
    // timeout.)
    h2.kill().await;
    let stats = lab
        .stats_until(|s| s.flows_active == 1 && s.connections_active == 1)
        .await;
    assert_eq!((stats.flows_active, stats.connections_active), (1, 1));
    let flows = lab.relay.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].http, HttpVersion::Http3);
    h3.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_and_closes_after_the_grace_period() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let mut held = lab.hold(Client::Node, "good", address).await;
    let Lab {
        relay, pki: _pki, ..
    } = lab;
    let started = std::time::Instant::now();
    // The held flow never ends by itself: the relay waits for the grace period, then closes.
    relay.shutdown(Duration::from_secs(1)).await;
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1) && elapsed < Duration::from_secs(5));
    let out = held.next_event().await;
    assert_eq!(out["event"], "closed", "{out}");
    // GOAWAY NO_ERROR (RFC 9113 §6.8) came first.
    assert_eq!(out["goaway"], 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_only_relay_and_its_configuration_errors() {
    let lab = lab_with(|config| config.http3_listen.clear()).await;
    assert!(lab.relay.local_addrs().is_empty());
    assert_eq!(lab.relay.local_addr(), lab.relay.http2_local_addrs()[0]);
    let (address, _received) = target(TargetKind::Echo).await;
    let out = lab
        .node(
            Some("good"),
            &["connect", "--authority", &authority(address), "--send", "5"],
        )
        .await;
    assert_eq!(out["received"], 5, "{out}");

    let policy = std::sync::Arc::new(TestPolicy::default());
    let egress = std::sync::Arc::new(relay::DirectEgress::default());
    let mut config = relay::RelayConfig::new(vec![], lab.pki.files.clone());
    config.http2_listen = vec![lab.relay.http2_local_addrs()[0]];
    let err = relay::Relay::bind(config.clone(), policy.clone(), egress.clone()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("relay.http2_listen: binding TCP 127.0.0.1:"),
        "{err}"
    );
    config.http2_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.limits.max_connections_per_device = 0;
    let err = relay::Relay::bind(config, policy, egress).unwrap_err();
    assert_eq!(
        err.to_string(),
        "relay.limits.max_connections_per_device: must be at least 1"
    );
}
