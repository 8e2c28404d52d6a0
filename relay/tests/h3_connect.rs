//! The HTTP/3 relay against an independent client: aioquic (`tests/h3_client.py`) plays the
//! managed device, with certificates made at test time, the real `DirectEgress` and TCP
//! servers on 127.0.0.1.
//!
//! Needs `python3` with aioquic (`python3 -m pip install aioquic`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/h3_mini.rs"]
mod h3_mini;
#[path = "support/lab.rs"]
mod lab;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use relay::{DirectEgress, IdentitySource, Protocol, Relay, RelayConfig, RelayError};
use serde_json::Value;

use h3_mini::{
    client_endpoint, control_stream, frame_header, h3_connect, ClientFiles, FrameReader,
};
use lab::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_round_trips_one_mib() {
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::Echo).await;
    let size = 1024 * 1024;
    let out = lab
        .connect_good(address, &["--send", &size.to_string()])
        .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["proxy_status"], Value::Null, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    assert_eq!(out["sent"], size, "{out}");
    assert_eq!(out["received"], size, "{out}");
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
    assert_eq!(stats.flows_active, 0);
    assert_eq!(stats.bytes_from_devices, size as u64);
    assert_eq!(stats.bytes_to_devices, size as u64);
    assert_eq!(stats.handshake_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_device_first() {
    // The target answers only after end of file: the device's FIN must become a TCP FIN,
    // and the answer must still reach the device after its side is closed.
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::EchoAfterEof).await;
    let out = lab
        .client(
            Some("good"),
            &[
                "connect",
                "--authority",
                &authority(address),
                "--send",
                "200000",
            ],
        )
        .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    assert_eq!(out["received"], 200000, "{out}");
    assert_eq!(out["received_sha256"], out["sent_sha256"], "{out}");
    assert_eq!(next(&mut received).await.bytes, 200000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_target_first() {
    // The target closes its side first: the device sees the stream end, and can still send.
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::TalksFirst).await;
    let out = lab
        .client(
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
    assert_eq!(out["send_acknowledged"], true, "{out}");
    let at_target = next(&mut received).await;
    assert_eq!(at_target.bytes, 100000);
    assert_eq!(at_target.sha256, out["sent_sha256"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_proxy_status() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;

    // Denied device → 502 connection_refused.
    let out = lab
        .client(
            Some("denied"),
            &["connect", "--authority", &authority(address)],
        )
        .await;
    assert_eq!(out["status"], 502, "{out}");
    assert_eq!(
        out["proxy_status"],
        r#"attestgate; error=connection_refused; details="denied by policy""#
    );
    assert_eq!(out["ended"], true, "{out}");

    // Denied target, and a 403 policy.
    let out = lab
        .client(
            Some("good"),
            &["connect", "--authority", "blocked.test:443"],
        )
        .await;
    assert_eq!(out["status"], 502, "{out}");
    let out = lab
        .client(
            Some("good"),
            &["connect", "--authority", "forbidden.test:443"],
        )
        .await;
    assert_eq!(out["status"], 403, "{out}");
    assert!(out["proxy_status"]
        .as_str()
        .unwrap()
        .starts_with("attestgate; error=connection_refused"));

    // Go direct → 503 destination_unavailable.
    let out = lab
        .client(Some("good"), &["connect", "--authority", "direct.test:443"])
        .await;
    assert_eq!(out["status"], 503, "{out}");
    assert!(out["proxy_status"]
        .as_str()
        .unwrap()
        .starts_with("attestgate; error=destination_unavailable"));

    // A port nobody listens on → 502 connection_refused with details.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = lab
        .client(
            Some("good"),
            &["connect", "--authority", &authority(closed)],
        )
        .await;
    assert_eq!(out["status"], 502, "{out}");
    let value = out["proxy_status"].as_str().unwrap();
    assert!(
        value.starts_with("attestgate; error=connection_refused; details="),
        "{value}"
    );
    assert!(value.contains(&closed.to_string()), "{value}");

    let stats = lab.relay.stats().snapshot();
    assert_eq!(
        (stats.denied, stats.direct, stats.egress_failures),
        (3, 1, 1)
    );
    assert_eq!(stats.flows_opened, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unsupported_requests() {
    let lab = lab().await;
    let cases: &[(&[&str], u64)] = &[
        (&["--authority", "no-port.test"], 400),
        (&["--authority", "host.test:0"], 400),
        (&["--authority", "user@host.test:443"], 400),
        // Classic CONNECT carries :authority only (RFC 9114 §4.4).
        (
            &[
                "--authority",
                "host.test:443",
                "--scheme",
                "https",
                "--path",
                "/",
            ],
            400,
        ),
        (
            &[
                "--authority",
                "host.test:443",
                "--method",
                "GET",
                "--scheme",
                "https",
                "--path",
                "/",
            ],
            501,
        ),
        (
            &[
                "--authority",
                "host.test:443",
                "--protocol",
                "webtransport",
                "--scheme",
                "https",
                "--path",
                "/session",
            ],
            501,
        ),
    ];
    for (args, status) in cases {
        let mut full = vec!["connect"];
        full.extend_from_slice(args);
        let out = lab.client(Some("good"), &full).await;
        assert_eq!(out["status"], *status, "{args:?}: {out}");
        assert_eq!(out["ended"], true, "{args:?}: {out}");
        assert!(
            out["proxy_status"]
                .as_str()
                .unwrap()
                .starts_with("attestgate; error=http_request_error; details="),
            "{out}"
        );
    }
    // What the HTTP/3 layer itself finds malformed (an authority the URI grammar refuses, an
    // unknown :protocol) is reset with H3_MESSAGE_ERROR (0x10e, RFC 9114 §4.1.2), counted,
    // never a panic; the connection survives.
    let resets: &[&[&str]] = &[
        &["--authority", "[2001:db8::1:443"],
        &[
            "--authority",
            "host.test:443",
            "--protocol",
            "bogus",
            "--scheme",
            "https",
            "--path",
            "/",
        ],
    ];
    for args in resets {
        let mut full = vec!["connect"];
        full.extend_from_slice(args);
        let out = lab.client(Some("good"), &full).await;
        assert_eq!(out["status"], Value::Null, "{out}");
        assert_eq!(out["reset"], 0x10e, "{out}");
        assert_eq!(out["terminated"], Value::Null, "{out}");
    }

    let stats = lab.stats_until(|s| s.malformed_requests >= 6).await;
    assert_eq!(stats.malformed_requests, 6, "{stats:?}");
    assert_eq!(stats.unsupported_requests, 2, "{stats:?}");
    assert!(lab.policy.asked.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_client_certificates_are_refused_in_the_handshake() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    // TLS alerts (RFC 8446 §6): certificate_required 116, unknown_ca 48, certificate_expired
    // 45; QUIC carries them as 0x100 + alert (RFC 9001 §4.8).
    let cases = [
        (None, 0x100 + 116),
        (Some("foreign"), 0x100 + 48),
        (Some("expired"), 0x100 + 45),
    ];
    for (device, code) in cases {
        let out = lab
            .client(
                device,
                &[
                    "connect",
                    "--authority",
                    &authority(address),
                    "--timeout",
                    "5",
                ],
            )
            .await;
        assert_eq!(out["status"], Value::Null, "{device:?}: {out}");
        assert_eq!(out["terminated"]["error_code"], code, "{device:?}: {out}");
    }
    let stats = lab.stats_until(|s| s.handshake_failures >= 3).await;
    assert_eq!(stats.handshake_failures, 3);
    assert_eq!(stats.connections_accepted, 0);
    assert!(lab.policy.asked.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificate_is_refused_and_crl_optional() {
    // Every lab relay loads the device CA's CRL; the revoked device is refused with
    // certificate_revoked (44), the others pass (see the other tests).
    let lab = lab().await;
    let out = lab
        .client(
            Some("revoked"),
            &["connect", "--authority", "host.test:443", "--timeout", "5"],
        )
        .await;
    assert_eq!(out["terminated"]["error_code"], 0x100 + 44, "{out}");
    assert_eq!(
        lab.stats_until(|s| s.handshake_failures >= 1)
            .await
            .handshake_failures,
        1
    );

    // Without the CRL the same certificate is accepted.
    let lab = lab_with(|config| config.tls.crl.clear()).await;
    let (address, _received) = target(TargetKind::Echo).await;
    let out = lab
        .client(
            Some("revoked"),
            &[
                "connect",
                "--authority",
                &authority(address),
                "--send",
                "10",
            ],
        )
        .await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["received"], 10, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_without_identity_closes_the_connection() {
    let lab = lab().await;
    let out = lab
        .client(
            Some("no-identity"),
            &["connect", "--authority", "host.test:443", "--timeout", "5"],
        )
        .await;
    assert_eq!(out["status"], Value::Null, "{out}");
    assert_eq!(out["terminated"]["error_code"], 0x101, "{out}");
    assert!(out["terminated"]["reason"]
        .as_str()
        .unwrap()
        .contains("no device identity"));
    let stats = lab.stats_until(|s| s.identity_failures >= 1).await;
    assert_eq!(stats.identity_failures, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_on_one_connection() {
    let lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let out = lab
        .client(
            Some("good"),
            &[
                "concurrent",
                "--authority",
                &authority(address),
                "--streams",
                "100",
                "--send",
                "20000",
            ],
        )
        .await;
    assert_eq!(out["ok"], 100, "{out}");
    assert_eq!(out["distinct_stream_ids"], 100, "{out}");
    let stats = lab.stats_until(|s| s.flows_active == 0).await;
    assert_eq!(stats.flows_opened, 100);
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.bytes_from_devices, 100 * 20000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_and_bind_errors() {
    let lab = lab().await;
    let started = Instant::now();
    lab.relay.shutdown(Duration::from_secs(5)).await;
    // No connection is open: nothing to wait for.
    assert!(started.elapsed() < Duration::from_secs(3));

    let policy = Arc::new(TestPolicy::default());
    let egress = Arc::new(DirectEgress::default());
    let mut config = RelayConfig::new(vec![], lab.pki.files.clone());
    assert!(matches!(
        Relay::bind(config.clone(), policy.clone(), egress.clone()),
        Err(RelayError::NoListener)
    ));
    config.http3_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.identity = vec![];
    assert!(matches!(
        Relay::bind(config.clone(), policy.clone(), egress.clone()),
        Err(RelayError::NoIdentitySource)
    ));
    config.identity = vec![IdentitySource::SubjectCn];
    config.tls.private_key = config.tls.certificate.clone();
    let err = Relay::bind(config, policy, egress).unwrap_err().to_string();
    assert!(
        err.contains("relay.pem: contains no PRIVATE KEY block"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_udp_round_trips_datagrams_and_capsules() {
    let lab = lab().await;
    let (address, mut sources) = udp_echo().await;
    let path = format!("/.well-known/masque/udp/127.0.0.1/{}/", address.port());
    let out = lab
        .client(
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
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["capsule_protocol"], "?1", "{out}");
    assert_eq!(out["echoed"], 11, "{out}");
    assert_eq!(out["capsule_echoed"], true, "{out}");
    assert_eq!(out["unexpected"], 0, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    // The egress bound the route's source address.
    let from = tokio::time::timeout(Duration::from_secs(5), sources.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());

    let asked = lab.policy.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].protocol, Protocol::Udp);
    assert_eq!(
        (asked[0].host.as_str(), asked[0].port),
        ("127.0.0.1", address.port())
    );
    // The datagram with context ID 7 was dropped.
    let stats = lab
        .stats_until(|s| s.flows_active == 0 && s.datagrams_dropped >= 1)
        .await;
    assert_eq!(stats.flows_opened, 1);
    assert_eq!(stats.datagrams_dropped, 1, "{stats:?}");
    assert!(stats.bytes_to_devices > 0);

    // Denied and unknown-path connect-udp requests.
    let out = lab
        .client(
            Some("denied"),
            &["udp", "--authority", "localhost:443", "--path", &path],
        )
        .await;
    assert_eq!(out["status"], 502, "{out}");
    let out = lab
        .client(
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
async fn graceful_shutdown_lets_open_flows_finish() {
    let Lab { pki, relay, .. } = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let (cert, key) = pki.devices["good"].clone();
    let files = ClientFiles {
        server_ca: pki.server_ca.clone(),
        cert,
        key,
    };
    let endpoint = client_endpoint(&files, b"h3");
    let relay_address = relay.local_addr();
    let connection = endpoint
        .connect(relay_address, "localhost")
        .unwrap()
        .await
        .unwrap();
    let _control = control_stream(&connection).await;
    let (mut send, mut reader) = h3_connect(&connection, &address.to_string()).await;

    async fn echo(send: &mut quinn::SendStream, reader: &mut FrameReader, text: &[u8]) {
        let mut frame = bytes::BytesMut::new();
        frame_header(0x00, text.len() as u64, &mut frame);
        frame.extend_from_slice(text);
        send.write_all(&frame).await.unwrap();
        let mut got = Vec::new();
        while got.len() < text.len() {
            let (frame_type, length) = reader.header().await.unwrap();
            let payload = reader.payload(length, true).await;
            if frame_type == 0x00 {
                got.extend_from_slice(&payload);
            }
        }
        assert_eq!(got, text);
    }
    echo(&mut send, &mut reader, b"before shutdown").await;

    let stats = relay.stats().clone();
    let started = Instant::now();
    let shutdown = tokio::spawn(relay.shutdown(Duration::from_secs(20)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!shutdown.is_finished(), "waits for the open flow");

    // The open flow still works; a new connection is refused.
    echo(&mut send, &mut reader, b"during the grace period").await;
    let refused = endpoint.connect(relay_address, "localhost").unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), refused)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(refused, quinn::ConnectionError::ConnectionClosed(ref c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED),
        "{refused:?}"
    );

    // The flow ends and the device, having seen GOAWAY, closes the connection (RFC 9114
    // §5.2): the shutdown completes long before the grace period.
    send.finish().unwrap();
    while reader.header().await.is_some() {}
    connection.close(quinn::VarInt::from_u32(0x100), b"done");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("shutdown completes once the device closed")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(stats.snapshot().flows_opened, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_resolve_through_the_egress() {
    let mut lab = lab().await;
    let (address, _received) = target(TargetKind::Echo).await;
    let port = address.port().to_string();
    // Through the `lab` egress's name server, then its static hosts.
    for name in [DNS_NAME, STATIC_NAME] {
        let authority = format!("{name}:{port}");
        let out = lab
            .client(
                Some("good"),
                &["connect", "--authority", &authority, "--send", "1000"],
            )
            .await;
        assert_eq!(out["status"], 200, "{name}: {out}");
        assert_eq!(out["received"], 1000, "{name}: {out}");
    }
    // Only the first name was asked for, from the route's source address, A only (the
    // source is IPv4).
    let query = lab.dns_queries.recv().await.unwrap();
    assert_eq!(
        (query.name.as_str(), query.qtype, query.from.ip()),
        (DNS_NAME, 1, "127.0.0.1".parse::<IpAddr>().unwrap())
    );
    assert!(lab.dns_queries.try_recv().is_err());

    // A name the egress's server does not know: 502 with Proxy-Status dns_error (RFC 9209
    // §2.3.2).
    let out = lab
        .client(
            Some("good"),
            &["connect", "--authority", "missing.lab.test:443"],
        )
        .await;
    assert_eq!(out["status"], 502, "{out}");
    let value = out["proxy_status"].as_str().unwrap();
    assert!(
        value.starts_with("attestgate; error=dns_error; details=\"resolving missing.lab.test"),
        "{value}"
    );
    let stats = lab.stats_until(|s| s.egress_failures >= 1).await;
    assert_eq!((stats.egress_failures, stats.flows_opened), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_http_server() {
    let lab = lab().await;
    let (address, mut received) = target(TargetKind::Http).await;
    let request = format!("GET / HTTP/1.1\\r\\nHost: {address}\\r\\nConnection: close\\r\\n\\r\\n");
    let out = lab.connect_good(address, &["--payload", &request]).await;
    assert_eq!(out["status"], 200, "{out}");
    assert_eq!(out["ended"], true, "{out}");
    let text = out["received_text"].as_str().unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with(&format!("\r\n\r\n{HTTP_BODY}")), "{text}");
    // The server got the request byte for byte.
    let at_target = next(&mut received).await;
    assert_eq!(at_target.sha256, out["sent_sha256"].as_str().unwrap());
    assert_eq!(at_target.bytes, out["sent"].as_u64().unwrap());
}
