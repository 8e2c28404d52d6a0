//! Throughput of one CONNECT stream through the relay over HTTP/3 on loopback, next to a plain
//! TCP loopback copy and to quinn's own bulk stream (the QUIC ceiling), all in one run; plus
//! mutual-TLS handshakes per second. Prints, never asserts.
//!
//! ```sh
//! cargo run --release -p relay --example relay_bench            # 128 MiB per transfer
//! RELAY_BENCH_MIB=512 cargo run --release -p relay --example relay_bench
//! ```
//!
//! The device side is the minimal HTTP/3 client of `tests/support/h3_mini.rs` on quinn,
//! because the h3 crate's client always sends `:scheme` and `:path`, which a classic CONNECT
//! must not carry (RFC 9114 §4.4) and the relay refuses.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/support/certs.rs"]
mod certs;
#[path = "../tests/support/h3_mini.rs"]
mod h3_mini;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use relay::tls::TlsFiles;
use relay::{
    Authorizer, DirectEgress, EgressRoute, Relay, RelayConfig, RelayDecision, RelayRequest,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use certs::{write_file, DeviceCert, TestCa};
use h3_mini::{client_endpoint, control_stream, frame_header, h3_connect, ClientFiles};

const CHUNK: usize = 64 * 1024;

#[derive(Debug)]
struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _request: &RelayRequest<'_>) -> RelayDecision {
        RelayDecision::Forward {
            egress: EgressRoute {
                name: "bench".into(),
                source: None,
            },
        }
    }
}

/// A TCP server: the first byte says `D` (send `size` bytes, then close) or `U` (read to
/// end of file, then close).
async fn tcp_target(size: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            stream.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let mut command = [0u8; 1];
                if stream.read_exact(&mut command).await.is_err() {
                    return;
                }
                let buf = vec![0x5a; CHUNK];
                if command[0] == b'D' {
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        if stream.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                        left -= n as u64;
                    }
                    let _ = stream.shutdown().await;
                    let _ = stream.read(&mut [0u8; 1]).await;
                } else {
                    let mut sink = vec![0u8; CHUNK];
                    while let Ok(n) = stream.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                    let _ = stream.shutdown().await;
                }
            });
        }
    });
    address
}

async fn tcp_transfer(target: SocketAddr, size: u64, download: bool) -> Duration {
    let mut stream = TcpStream::connect(target).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let started = Instant::now();
    if download {
        stream.write_all(b"D").await.unwrap();
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        assert_eq!(total, size);
    } else {
        stream.write_all(b"U").await.unwrap();
        let buf = vec![0x5a; CHUNK];
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            stream.write_all(&buf[..n]).await.unwrap();
            left -= n as u64;
        }
        stream.shutdown().await.unwrap();
        let _ = stream.read(&mut [0u8; 1]).await.unwrap();
    }
    started.elapsed()
}

/// A QUIC server (quinn, same TLS material as the relay) speaking the `D`/`U` protocol on
/// raw bidirectional streams: the QUIC ceiling.
fn raw_quic_server(files: &TlsFiles, size: u64) -> SocketAddr {
    let material = relay::tls::TlsMaterial::load(files).unwrap();
    let mut tls = material.h3_server_config().unwrap();
    tls.alpn_protocols = vec![b"bench".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let address = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let mut command = [0u8; 1];
                        recv.read_exact(&mut command).await.unwrap();
                        if command[0] == b'D' {
                            let chunk = Bytes::from(vec![0x5au8; CHUNK]);
                            let mut left = size;
                            while left > 0 {
                                let n = left.min(CHUNK as u64) as usize;
                                send.write_chunk(chunk.slice(..n)).await.unwrap();
                                left -= n as u64;
                            }
                        } else {
                            while let Some(chunk) = recv.read_chunk(CHUNK, true).await.unwrap() {
                                drop(chunk);
                            }
                        }
                        send.finish().unwrap();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });
    address
}

async fn quic_transfer(connection: &quinn::Connection, size: u64, download: bool) -> Duration {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let started = Instant::now();
    if download {
        send.write_all(b"D").await.unwrap();
        let mut total = 0u64;
        while let Some(chunk) = recv.read_chunk(CHUNK, true).await.unwrap() {
            total += chunk.bytes.len() as u64;
        }
        assert_eq!(total, size);
    } else {
        send.write_all(b"U").await.unwrap();
        let chunk = Bytes::from(vec![0x5au8; CHUNK]);
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            send.write_chunk(chunk.slice(..n)).await.unwrap();
            left -= n as u64;
        }
        send.finish().unwrap();
        while recv.read_chunk(CHUNK, true).await.unwrap().is_some() {}
    }
    started.elapsed()
}

async fn relay_transfer(
    connection: &quinn::Connection,
    target: SocketAddr,
    size: u64,
    download: bool,
) -> Duration {
    let (mut send, mut reader) = h3_connect(connection, &target.to_string()).await;
    let started = Instant::now();
    let mut out = BytesMut::new();
    frame_header(0x00, 1, &mut out);
    out.put_u8(if download { b'D' } else { b'U' });
    send.write_all(&out).await.unwrap();
    if download {
        let mut total = 0u64;
        while let Some((frame_type, length)) = reader.header().await {
            reader.payload(length, false).await;
            if frame_type == 0x00 {
                total += length;
            }
        }
        assert_eq!(total, size);
    } else {
        let payload = Bytes::from(vec![0x5au8; CHUNK]);
        let mut header = BytesMut::new();
        let mut left = size;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            header.clear();
            frame_header(0x00, n as u64, &mut header);
            send.write_all(&header).await.unwrap();
            send.write_chunk(payload.slice(..n)).await.unwrap();
            left -= n as u64;
        }
        send.finish().unwrap();
        while reader.header().await.is_some() {}
    }
    started.elapsed()
}

fn mb_per_s(size: u64, elapsed: Duration) -> f64 {
    size as f64 / 1e6 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mib: u64 = std::env::var("RELAY_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128);
    let size = mib * 1024 * 1024;

    let dir = tempfile::tempdir().unwrap();
    let server_ca = TestCa::new("Bench Server CA");
    let device_ca = TestCa::new("Bench Device CA");
    let server = server_ca.issue_server();
    let device = device_ca.issue_device(&DeviceCert::attested("C02BENCH001"));
    let files = TlsFiles {
        certificate: write_file(dir.path(), "relay.pem", &server.cert_pem),
        private_key: write_file(dir.path(), "relay.key", &server.key_pem),
        device_ca: vec![write_file(
            dir.path(),
            "device-ca.pem",
            &device_ca.cert_pem(),
        )],
        crl: vec![],
    };
    let client_files = ClientFiles {
        server_ca: write_file(dir.path(), "server-ca.pem", &server_ca.cert_pem()),
        cert: write_file(dir.path(), "device.pem", &device.cert_pem),
        key: write_file(dir.path(), "device.key", &device.key_pem),
    };

    let target = tcp_target(size).await;
    let config = RelayConfig::new(vec!["127.0.0.1:0".parse().unwrap()], files.clone());
    let relay = Relay::bind(
        config,
        Arc::new(AllowAll),
        Arc::new(DirectEgress::default()),
    )
    .unwrap();
    let raw = raw_quic_server(&files, size);

    let h3_client = client_endpoint(&client_files, b"h3");
    let relay_conn = h3_client
        .connect(relay.local_addr(), "localhost")
        .unwrap()
        .await
        .unwrap();
    let _control = control_stream(&relay_conn).await;
    let raw_client = client_endpoint(&client_files, b"bench");
    let raw_conn = raw_client.connect(raw, "localhost").unwrap().await.unwrap();

    println!(
        "relay_bench: {mib} MiB per transfer, one stream, loopback, {} build",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("{:<34} {:>14} {:>14}", "", "download MB/s", "upload MB/s");
    let mut rows = Vec::new();
    for (name, kind) in [
        ("tcp loopback copy (baseline)", 0),
        ("quinn raw stream (QUIC ceiling)", 1),
        ("relay CONNECT over HTTP/3", 2),
    ] {
        let mut rates = [0f64; 2];
        for (i, download) in [true, false].into_iter().enumerate() {
            // The best of two runs (the first also warms the path up).
            for _ in 0..2 {
                let elapsed = match kind {
                    0 => tcp_transfer(target, size, download).await,
                    1 => quic_transfer(&raw_conn, size, download).await,
                    _ => relay_transfer(&relay_conn, target, size, download).await,
                };
                rates[i] = rates[i].max(mb_per_s(size, elapsed));
            }
        }
        println!("{name:<34} {:>14.0} {:>14.0}", rates[0], rates[1]);
        rows.push(rates);
    }
    println!(
        "ratio relay / tcp:       download {:.2}  upload {:.2}",
        rows[2][0] / rows[0][0],
        rows[2][1] / rows[0][1]
    );
    println!(
        "ratio relay / quinn raw: download {:.2}  upload {:.2}",
        rows[2][0] / rows[1][0],
        rows[2][1] / rows[1][1]
    );

    // Mutual-TLS handshakes per second: 8 concurrent clients, full handshakes (no
    // resumption: a fresh endpoint per client with no session cache shared).
    let handshakes = 400usize;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let endpoint = client_endpoint(&client_files, b"h3");
        let address = relay.local_addr();
        tasks.push(tokio::spawn(async move {
            for _ in 0..handshakes / 8 {
                let connection = endpoint
                    .connect(address, "localhost")
                    .unwrap()
                    .await
                    .unwrap();
                connection.close(0u32.into(), b"");
            }
            endpoint.wait_idle().await;
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "mTLS handshakes (QUIC + TLS 1.3, ECDSA P-256, 8 concurrent clients): {handshakes} in {:.2} s = {:.0}/s",
        elapsed.as_secs_f64(),
        handshakes as f64 / elapsed.as_secs_f64()
    );
    let stats = relay.stats().snapshot();
    println!(
        "relay counters: connections {} handshake failures {} flows {} bytes from devices {} to devices {}",
        stats.connections_accepted,
        stats.handshake_failures,
        stats.flows_opened,
        stats.bytes_from_devices,
        stats.bytes_to_devices
    );
    relay_conn.close(0x100u32.into(), b"");
    relay.shutdown(Duration::from_secs(1)).await;
}
