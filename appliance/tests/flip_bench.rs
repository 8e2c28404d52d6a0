//! Live enforcement benchmark (issue 5): 1,000 open CONNECT flows (10 devices × 100 streams,
//! HTTP/3 through the daemon's relay) and 100 compliance flips, each a risk report on the
//! admin listener (kept-alive HTTPS) for one device; measured from the request being written
//! to the last of that device's 100 streams being reset. Prints median and p99; asserts only
//! that every affected stream was reset and no other one was (a benchmark, not a timed test).
//!
//! ```sh
//! cargo test --release -p attestgate --test flip_bench -- --ignored --nocapture
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness

mod common;
#[path = "../../relay/tests/support/h3_mini.rs"]
mod h3_mini;

use bytes::BytesMut;
use common::{device_certificate_named, echo_server, free_port, free_udp_port, Lab};
use h3_mini::{client_endpoint, control_stream, frame_header, ClientFiles};
use relay::capsule::read_varint;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEVICES: usize = 10;
const STREAMS: usize = 100;
const FLIPS: usize = 100;

/// Opens a classic CONNECT and waits for its `200`; returns the receive side to hold.
async fn connect(c: &quinn::Connection, authority: &str) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = c.open_bi().await.unwrap();
    // QPACK (RFC 9204 §4.5): `:method CONNECT` static 15, `:authority` literal with name ref 0
    let mut block = vec![0x00, 0x00, 0xc0 | 15, 0x50, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut frame = BytesMut::new();
    frame_header(0x01, block.len() as u64, &mut frame);
    frame.extend_from_slice(&block);
    send.write_all(&frame).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some((t, a)) = read_varint(&buf) {
            if let Some((len, b)) = read_varint(&buf[a..]) {
                if buf.len() >= a + b + len as usize {
                    assert_eq!(t, 0x01);
                    // `:status 200` is static entry 25 (RFC 9204 Appendix A)
                    assert_eq!(buf.get(a + b + 2), Some(&(0xc0 | 25)), "{buf:02x?}");
                    return (send, recv);
                }
            }
        }
        let chunk = recv.read_chunk(4096, true).await.unwrap().unwrap();
        buf.extend_from_slice(&chunk.bytes);
    }
}

/// 100 streams of one device; each task reports when its stream is reset.
async fn open_device(
    endpoint: &quinn::Endpoint,
    relay: std::net::SocketAddr,
    authority: &str,
    resets: tokio::sync::mpsc::UnboundedSender<(usize, Instant)>,
    device: usize,
) -> (quinn::Connection, quinn::SendStream, Vec<quinn::SendStream>) {
    let c = endpoint
        .connect(relay, "relay.attestgate.lab")
        .unwrap()
        .await
        .unwrap();
    let control = control_stream(&c).await;
    let mut sends = Vec::new();
    for _ in 0..STREAMS {
        let (send, mut recv) = connect(&c, authority).await;
        sends.push(send);
        let resets = resets.clone();
        tokio::spawn(async move {
            loop {
                match recv.read_chunk(4096, true).await {
                    Ok(Some(_)) => continue,
                    _ => {
                        let _ = resets.send((device, Instant::now()));
                        return;
                    }
                }
            }
        });
    }
    (c, control, sends)
}

/// A kept-alive HTTPS client for the risk feed.
struct Admin {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

impl Admin {
    async fn connect(lab: &Lab, port: u16) -> Admin {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                rustls_pki_types::CertificateDer::from_pem_file(lab.dir.join("relay-ca.crt"))
                    .unwrap(),
            )
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tcp.set_nodelay(true).unwrap();
        let name = rustls_pki_types::ServerName::try_from("relay.attestgate.lab").unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        Admin { tls }
    }

    /// Writes one POST /risk; returns when it was written and the status.
    async fn risk(&mut self, serial: &str, level: &str) -> (Instant, u16) {
        let body = format!(r#"{{"serial":"{serial}","level":"{level}"}}"#);
        // jamf:s3cret-pw (RFC 7617)
        let req = format!(
            "POST /risk HTTP/1.1\r\nhost: relay.attestgate.lab\r\nauthorization: Basic amFtZjpzM2NyZXQtcHc=\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.tls.write_all(req.as_bytes()).await.unwrap();
        self.tls.flush().await.unwrap();
        let sent = Instant::now();
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.tls.read(&mut chunk).await.unwrap();
            assert!(n > 0, "admin listener closed the connection");
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text[..end]
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = text[9..12].parse().unwrap();
                    return (sent, status);
                }
            }
        }
    }
}

#[test]
#[ignore = "benchmark: cargo test --release -p attestgate --test flip_bench -- --ignored --nocapture"]
fn thousand_flows_hundred_flips() {
    let relay_port = free_udp_port();
    let admin_port = free_port();
    let lab = Lab::with_admin(relay_port, admin_port);
    let mut devices = String::new();
    for i in 0..DEVICES {
        let serial = format!("BENCH{i:04}");
        device_certificate_named(&lab.dir, &serial, &format!("dev{i}"));
        devices.push_str(&format!(
            "[[device]]\nserial = \"{serial}\"\nmanaged = true\ngroups = [\"Compliant Macs\"]\nrisk = \"secure\"\n"
        ));
    }
    std::fs::write(lab.dir.join("devices.toml"), devices).unwrap();
    let echo = echo_server();
    let daemon = lab.start();
    lab.wait_for(
        "the relay and admin listener",
        Duration::from_secs(20),
        || {
            let s = lab.json(&["status"]);
            s["relay"]["state"]
                .as_str()
                .unwrap_or("")
                .starts_with("listening")
                && s["compliance"]["admin"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("listening")
        },
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .build()
        .unwrap();
    let relay: std::net::SocketAddr = format!("127.0.0.1:{relay_port}").parse().unwrap();
    let authority = format!("127.0.0.1:{echo}");
    let latencies = rt.block_on(async {
        let endpoints: Vec<quinn::Endpoint> = (0..DEVICES)
            .map(|i| {
                client_endpoint(
                    &ClientFiles {
                        server_ca: lab.dir.join("relay-ca.crt"),
                        cert: lab.dir.join(format!("dev{i}.crt")),
                        key: lab.dir.join(format!("dev{i}.key")),
                    },
                    b"h3",
                )
            })
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut held = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            held.push(open_device(e, relay, &authority, tx.clone(), i).await);
        }
        let open = lab.json(&["flows"])["flows"].as_array().unwrap().len();
        assert_eq!(open, DEVICES * STREAMS);
        eprintln!("{open} flows open");
        let mut admin = Admin::connect(&lab, admin_port).await;
        let mut latencies = Vec::new();
        for flip in 0..FLIPS {
            let i = flip % DEVICES;
            let serial = format!("BENCH{i:04}");
            let (sent, status) = admin.risk(&serial, "high").await;
            assert_eq!(status, 200);
            let mut last = sent;
            for _ in 0..STREAMS {
                let (device, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                    .await
                    .expect("a stream was not reset within 10 s")
                    .unwrap();
                assert_eq!(device, i, "a stream of another device was reset");
                last = last.max(at);
            }
            latencies.push(last.duration_since(sent));
            let (_, status) = admin.risk(&serial, "secure").await;
            assert_eq!(status, 200);
            // the device reconnects its 100 flows (trusted again)
            held[i] = open_device(&endpoints[i], relay, &authority, tx.clone(), i).await;
        }
        assert!(rx.try_recv().is_err(), "an unaffected stream was reset");
        latencies
    });
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let p = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    eprintln!(
        "{FLIPS} flips, {} open flows, {STREAMS} reset per flip: risk report written → last stream reset: median {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        DEVICES * STREAMS,
        p(0.5),
        p(0.99),
        ms[ms.len() - 1]
    );
    lab.stop(daemon);
}
