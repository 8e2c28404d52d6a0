//! Idle behaviour of the HTTP/3 listener: no stream idle timeout by default (a CONNECT
//! stream idle for longer than the connection idle timeout keeps working, because the
//! relay's QUIC keepalives keep the connection alive), a device that vanishes is dropped at
//! the connection idle timeout, an optional stream idle timeout ends quiet flows, and the
//! per-connection stream limit holds further requests back (QUIC MAX_STREAMS).
//!
//! The device is quinn with the minimal HTTP/3 client of `support/h3_mini.rs` (no keepalive
//! of its own), or aioquic for the vanishing device.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/certs.rs"]
mod certs;
#[path = "support/dns_server.rs"]
mod dns_server;
#[path = "support/h3_mini.rs"]
mod h3_mini;
#[path = "support/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use h3_mini::{
    client_endpoint, control_stream, frame_header, h3_connect, ClientFiles, FrameReader,
};
use lab::*;

fn client_files(lab: &Lab) -> ClientFiles {
    let (cert, key) = lab.pki.devices["good"].clone();
    ClientFiles {
        server_ca: lab.pki.server_ca.clone(),
        cert,
        key,
    }
}

/// Sends `text` in one DATA frame and reads it back from the echo target.
async fn echo(send: &mut quinn::SendStream, reader: &mut FrameReader, text: &[u8]) {
    let mut frame = BytesMut::new();
    frame_header(0x00, text.len() as u64, &mut frame);
    frame.extend_from_slice(text);
    send.write_all(&frame).await.unwrap();
    let mut got = Vec::new();
    while got.len() < text.len() {
        let (frame_type, length) = reader.header().await.expect("the stream is open");
        let payload = reader.payload(length, true).await;
        if frame_type == 0x00 {
            got.extend_from_slice(&payload);
        }
    }
    assert_eq!(got, text);
}

fn short_idle(config: &mut relay::RelayConfig) {
    config.limits.keepalive_interval = Duration::from_millis(300);
    config.limits.connection_idle_timeout = Duration::from_millis(1500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stream_outlives_the_connection_idle_timeout() {
    let lab = lab_with(short_idle).await;
    let (address, _received) = target(TargetKind::Echo).await;
    let endpoint = client_endpoint(&client_files(&lab), b"h3");
    let connection = endpoint
        .connect(lab.relay.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let _control = control_stream(&connection).await;
    let (mut send, mut reader) = h3_connect(&connection, &address.to_string()).await;
    echo(&mut send, &mut reader, b"before").await;
    // Three idle timeouts without a byte on the stream: the relay's PINGs (RFC 9000 §19.2)
    // keep the connection, and nothing times the stream out.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(connection.close_reason().is_none(), "the connection lives");
    echo(&mut send, &mut reader, b"after an idle while").await;
    let stats = lab.relay.stats().snapshot();
    assert_eq!((stats.connections_active, stats.flows_active), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_device_is_dropped_at_the_idle_timeout() {
    let lab = lab_with(short_idle).await;
    let (address, _received) = target(TargetKind::Echo).await;
    let held = lab.hold(Client::Aioquic, "good", address).await;
    assert_eq!(lab.relay.stats().snapshot().flows_active, 1);
    // SIGKILL: the device sends nothing more, not even CONNECTION_CLOSE.
    held.kill().await;
    let killed = Instant::now();
    let stats = lab
        .stats_until(|s| s.connections_active == 0 && s.flows_active == 0)
        .await;
    let after = killed.elapsed();
    assert_eq!((stats.connections_active, stats.flows_active), (0, 0));
    // Gone after the idle timeout (1.5 s; RFC 9000 §10.1 allows up to 3 PTOs more), not
    // before it.
    assert!(after >= Duration::from_millis(1000), "{after:?}");
    assert!(after < Duration::from_secs(6), "{after:?}");
    assert!(lab.relay.flows().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_when_configured() {
    let lab = lab_with(|config| {
        config.limits.stream_idle_timeout = Some(Duration::from_millis(800));
    })
    .await;
    let (address, _received) = target(TargetKind::Echo).await;
    let endpoint = client_endpoint(&client_files(&lab), b"h3");
    let connection = endpoint
        .connect(lab.relay.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let _control = control_stream(&connection).await;
    let (mut send, mut reader) = h3_connect(&connection, &address.to_string()).await;
    // Traffic more often than the timeout keeps the flow.
    for i in 0..4 {
        echo(&mut send, &mut reader, format!("ping {i}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then silence: the relay resets the stream (H3_NO_ERROR) and the flow ends.
    let quiet = Instant::now();
    let stats = lab.stats_until(|s| s.flows_active == 0).await;
    assert_eq!(stats.flows_active, 0);
    let after = quiet.elapsed();
    assert!(after >= Duration::from_millis(300), "{after:?}");
    assert!(after < Duration::from_secs(3), "{after:?}");
    // The connection stays.
    assert!(connection.close_reason().is_none());
    assert_eq!(stats.connections_active, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_per_connection_are_limited() {
    let lab = lab_with(|config| config.limits.max_streams_per_connection = 3).await;
    let (address, _received) = target(TargetKind::Echo).await;
    let endpoint = client_endpoint(&client_files(&lab), b"h3");
    let connection = endpoint
        .connect(lab.relay.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let _control = control_stream(&connection).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(h3_connect(&connection, &address.to_string()).await);
    }
    // A fourth request stream is not granted (QUIC MAX_STREAMS, RFC 9000 §4.6) while
    // three are open.
    let fourth = tokio::time::timeout(Duration::from_millis(500), connection.open_bi()).await;
    assert!(fourth.is_err(), "no fourth stream while three are open");
    // Ending one makes room.
    let (mut send, mut reader) = open.pop().unwrap();
    send.finish().unwrap();
    while reader.header().await.is_some() {}
    let (mut send, mut reader) = tokio::time::timeout(
        Duration::from_secs(5),
        h3_connect(&connection, &address.to_string()),
    )
    .await
    .expect("a stream once one ended");
    echo(&mut send, &mut reader, b"fourth").await;
    assert_eq!(lab.relay.stats().snapshot().flows_opened, 4);
}
