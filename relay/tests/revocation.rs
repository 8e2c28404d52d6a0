//! Flows, revocation, the per-device connection limit and the header secret, on both
//! listeners at once: aioquic (`tests/h3_client.py`) on HTTP/3 and Node.js `http2`
//! (`tests/h2_client.js`) on HTTP/2 play the devices.
//!
//! Needs `python3` with aioquic and `node`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/lab.rs"]
mod lab;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use relay::{HeaderSecret, HttpVersion, Protocol};
use serde_json::Value;

use lab::*;

/// H3_REQUEST_CANCELLED (RFC 9114 §8.1).
const H3_REQUEST_CANCELLED: u64 = 0x10c;
/// HTTP/2 CANCEL (RFC 9113 §7).
const H2_CANCEL: u64 = 0x8;

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_resets_a_devices_flows_on_both_listeners_within_a_second() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    // Transfers in progress: the revoked device on both listeners, another device on each.
    let mut good_h3 = lab.hold(Client::Aioquic, "good", address).await;
    let mut good_h2 = lab.hold(Client::Node, "good", address).await;
    let mut other_h3 = lab.hold(Client::Aioquic, "other", address).await;
    let mut other_h2 = lab.hold(Client::Node, "other", address).await;

    // The flow list: four TCP flows through the lab egress, bytes flowing both ways.
    let flows = lab.relay.flows();
    assert_eq!(flows.len(), 4, "{flows:?}");
    for flow in &flows {
        assert_eq!(flow.protocol, Protocol::Tcp);
        assert_eq!(flow.egress, "lab");
        assert_eq!(flow.target.port, address.port());
        assert!(
            flow.bytes_from_device > 0 && flow.bytes_to_device > 0,
            "{flow:?}"
        );
        assert!(flow.started <= SystemTime::now());
    }
    let mut good: Vec<HttpVersion> = flows
        .iter()
        .filter(|f| f.device == GOOD)
        .map(|f| f.http)
        .collect();
    good.sort_by_key(|h| h.to_string());
    assert_eq!(good, vec![HttpVersion::Http2, HttpVersion::Http3]);

    // Keeping every flow revokes nothing.
    assert_eq!(lab.relay.revoke(GOOD, |_| true), 0);

    let before = lab.relay.flows();
    let revoked_at = now_ms();
    let started = Instant::now();
    assert_eq!(lab.relay.revoke(GOOD, |_| false), 2);
    // The relay's side: both flows reset their streams and targets and left the registry.
    while lab.relay.flows().iter().any(|f| f.device == GOOD) {
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "flows still open"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let relay_latency = started.elapsed();

    let h3 = good_h3.next_event().await;
    assert_eq!(h3["event"], "closed", "{h3}");
    assert_eq!(h3["reset"], H3_REQUEST_CANCELLED, "{h3}");
    let h3_latency = h3["reset_at_ms"].as_f64().unwrap() - revoked_at;
    let h2 = good_h2.next_event().await;
    assert_eq!(h2["event"], "closed", "{h2}");
    assert_eq!(h2["rst_code"], H2_CANCEL, "{h2}");
    let h2_latency = h2["at_ms"].as_f64().unwrap() - revoked_at;
    println!(
        "revocation latency: relay side (revoke() until both flows were reset) {relay_latency:?}; \
         revoke() until the device saw its stream reset: HTTP/3 (aioquic) {h3_latency:.1} ms, \
         HTTP/2 (Node) {h2_latency:.1} ms"
    );
    // DESIGN.md invariant 2 / issue 4: within one second.
    assert!(h3_latency < 1000.0, "HTTP/3 reset after {h3_latency} ms");
    assert!(h2_latency < 1000.0, "HTTP/2 reset after {h2_latency} ms");

    // The other device's flows are untouched and keep moving.
    let stats = lab.stats_until(|s| s.flows_active == 2).await;
    assert_eq!(stats.flows_revoked, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = lab.relay.flows();
    assert_eq!(after.len(), 2, "{after:?}");
    for flow in &after {
        assert_eq!(flow.device, OTHER);
        let earlier = before.iter().find(|f| f.id == flow.id).unwrap();
        assert!(
            flow.bytes_to_device > earlier.bytes_to_device,
            "still flowing: {flow:?}"
        );
    }
    assert!(other_h3.is_running() && other_h2.is_running());
    other_h3.kill().await;
    other_h2.kill().await;
    // The revoked device's connections stay open (only the flows were revoked).
    assert_eq!(lab.relay.stats().snapshot().connections_revoked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_certificate_closes_the_devices_connections() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let mut good_h3 = lab.hold(Client::Aioquic, "good", address).await;
    let mut good_h2 = lab.hold(Client::Node, "good", address).await;
    let mut other_h2 = lab.hold(Client::Node, "other", address).await;

    let revoked_at = now_ms();
    assert_eq!(lab.relay.revoke_certificate(GOOD), 2);
    let h3 = good_h3.next_event().await;
    // The flow is cancelled and the connection closed with H3_REQUEST_CANCELLED.
    assert_eq!(h3["terminated"]["error_code"], H3_REQUEST_CANCELLED, "{h3}");
    assert!(h3["terminated"]["reason"]
        .as_str()
        .unwrap()
        .contains("certificate"));
    let h2 = good_h2.next_event().await;
    assert_eq!(h2["event"], "closed", "{h2}");
    // GOAWAY INADEQUATE_SECURITY (RFC 9113 §7); the stream ends with the flow's RST_STREAM
    // CANCEL or, when the GOAWAY came first, with the session's error.
    assert_eq!(h2["goaway"], 0xc, "{h2}");
    let rst = h2["rst_code"].as_u64().unwrap();
    assert!(rst == H2_CANCEL || rst == 0xc, "{h2}");
    let latency = h2["at_ms"].as_f64().unwrap() - revoked_at;
    assert!(latency < 1000.0, "HTTP/2 closed after {latency} ms");

    let stats = lab
        .stats_until(|s| s.connections_active == 1 && s.flows_active == 1)
        .await;
    assert_eq!(stats.connections_revoked, 2);
    assert_eq!(stats.connections_active, 1);
    assert_eq!(lab.relay.flows()[0].device, OTHER);
    assert!(other_h2.is_running());
    other_h2.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_device_are_limited() {
    let lab = lab_with(|config| config.limits.max_connections_per_device = 1).await;
    let (address, _received) = target(TargetKind::Echo).await;
    let held = lab.hold(Client::Node, "good", address).await;
    let connect = [
        "connect",
        "--authority",
        &authority(address),
        "--send",
        "10",
    ];

    // A second connection of the same device, on either listener, is refused.
    let out = lab.client(Some("good"), &connect).await;
    assert_eq!(out["status"], Value::Null, "{out}");
    assert_eq!(out["terminated"]["error_code"], 0x107, "{out}"); // H3_EXCESSIVE_LOAD
    assert!(out["terminated"]["reason"]
        .as_str()
        .unwrap()
        .contains("too many connections from device C02GOOD0001 (limit 1)"));
    let out = lab.node(Some("good"), &connect).await;
    assert_eq!(out["status"], Value::Null, "{out}");
    assert_eq!(out["goaway"], 0xb, "{out}"); // ENHANCE_YOUR_CALM
                                             // Another device is not affected.
    assert_eq!(lab.node(Some("other"), &connect).await["status"], 200);
    assert_eq!(lab.relay.stats().snapshot().device_limit_refusals, 2);

    // Once the first connection is gone, the device may connect again.
    held.kill().await;
    lab.stats_until(|s| s.connections_active == 0).await;
    let out = lab.node(Some("good"), &connect).await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["received"], 10, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_secret_is_required_on_both_listeners() {
    const SECRET: &str = "s3cr3t-0123456789-abcdef";
    let lab = lab_with(|config| {
        config.header_secret = Some(HeaderSecret::new("x-relay-secret", SECRET).unwrap())
    })
    .await;
    let (address, _received) = target(TargetKind::Echo).await;
    let target = authority(address);
    let right = "x-relay-secret:s3cr3t-0123456789-abcdef";
    let wrong = "x-relay-secret:s3cr3t-0123456789-abcdeX";
    let refused =
        r#"attestgate; error=connection_refused; details="missing or wrong relay header""#;

    for client in [Client::Aioquic, Client::Node] {
        let args = |header: Option<&'static str>| {
            let mut args = vec!["connect", "--authority", &target, "--send", "1000"];
            args.extend(header.map(|h| ["--header", h]).into_iter().flatten());
            args
        };
        let out = lab.run(client, Some("good"), &args(None)).await;
        assert_eq!(out["status"], 403, "{client:?} without the header: {out}");
        assert_eq!(out["proxy_status"], refused, "{client:?}: {out}");
        let out = lab.run(client, Some("good"), &args(Some(wrong))).await;
        assert_eq!(out["status"], 403, "{client:?} with a wrong secret: {out}");
        let out = lab.run(client, Some("good"), &args(Some(right))).await;
        assert_eq!(out["status"], 200, "{client:?} with the secret: {out}");
        assert_eq!(out["received"], 1000, "{client:?}: {out}");
    }
    let stats = lab.relay.stats().snapshot();
    assert_eq!(stats.header_secret_refusals, 4);
    assert_eq!(stats.flows_opened, 2);
    // Refused before the authorizer is asked.
    assert_eq!(lab.policy.asked.lock().unwrap().len(), 2);
}
