//! The lab for the relay tests: certificates on disk, a test authorizer, the relay (both
//! listeners) with the real `DirectEgress`, TCP and UDP target servers on 127.0.0.1, and the
//! independent clients run as child processes that are killed if they hang: aioquic
//! (`tests/h3_client.py`) on HTTP/3 and Node.js `http2` (`tests/h2_client.js`) on HTTP/2.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use relay::tls::TlsFiles;
use relay::{
    Authorizer, DenyStatus, DirectEgress, EgressDns, EgressRoute, Protocol, Relay, RelayConfig,
    RelayDecision, RelayHandle, RelayRequest, RelayStatsSnapshot,
};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::certs::{write_file, DeviceCert, TestCa, Validity};
use super::dns_server::{dns_server, Query};

pub const GOOD: &str = "C02GOOD0001";
pub const DENIED: &str = "C02DENY0001";
/// A second allowed device.
pub const OTHER: &str = "C02OTHR0001";

/// Certificates on disk for one test.
pub struct Pki {
    _dir: tempfile::TempDir,
    pub server_ca: PathBuf,
    pub files: TlsFiles,
    /// name → (certificate, key)
    pub devices: HashMap<&'static str, (PathBuf, PathBuf)>,
    /// A CRL of the device CA that revokes the `revoked` device.
    pub crl: PathBuf,
}

pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let server_ca = TestCa::new("Relay Server CA");
    let device_ca = TestCa::new("Device CA");
    let foreign_ca = TestCa::new("Foreign CA");
    let server = server_ca.issue_server();
    let files = TlsFiles {
        certificate: write_file(path, "relay.pem", &server.cert_pem),
        private_key: write_file(path, "relay.key", &server.key_pem),
        device_ca: vec![write_file(path, "device-ca.pem", &device_ca.cert_pem())],
        crl: vec![],
    };
    let issued = [
        ("good", device_ca.issue_device(&DeviceCert::attested(GOOD))),
        (
            "other",
            device_ca.issue_device(&DeviceCert::attested(OTHER)),
        ),
        (
            "denied",
            device_ca.issue_device(&DeviceCert::attested(DENIED)),
        ),
        (
            "foreign",
            foreign_ca.issue_device(&DeviceCert::attested("C02FRGN0001")),
        ),
        (
            "expired",
            device_ca.issue_device(&DeviceCert {
                validity: Validity::Expired,
                ..DeviceCert::attested("C02EXPD0001")
            }),
        ),
        (
            "revoked",
            device_ca.issue_device(&DeviceCert::attested("C02RVKD0001")),
        ),
        (
            "no-identity",
            device_ca.issue_device(&DeviceCert {
                common_name: Some("just a name".into()),
                ..DeviceCert::default()
            }),
        ),
    ];
    let revoked = issued
        .iter()
        .find(|(name, _)| *name == "revoked")
        .map(|(_, cert)| cert.serial_number.clone())
        .unwrap();
    let crl = write_file(path, "device-ca.crl", &device_ca.crl_pem(&[&revoked]));
    let devices = issued
        .into_iter()
        .map(|(name, cert)| {
            let cert_path = write_file(path, &format!("{name}.pem"), &cert.cert_pem);
            let key_path = write_file(path, &format!("{name}.key"), &cert.key_pem);
            (name, (cert_path, key_path))
        })
        .collect();
    Pki {
        server_ca: write_file(path, "server-ca.pem", &server_ca.cert_pem()),
        _dir: dir,
        files,
        devices,
        crl,
    }
}

/// What the test authorizer was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub serial: String,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub peer: IpAddr,
}

/// Denies the `DENIED` device and `blocked.test`, answers 403 for `forbidden.test`, go-direct
/// for `direct.test`, and forwards the rest from 127.0.0.1.
#[derive(Debug, Default)]
pub struct TestPolicy {
    pub asked: Mutex<Vec<Asked>>,
}

impl Authorizer for TestPolicy {
    fn authorize(&self, request: &RelayRequest<'_>) -> RelayDecision {
        self.asked.lock().unwrap().push(Asked {
            serial: request.device.serial.clone(),
            host: request.host.to_string(),
            port: request.port,
            protocol: request.protocol,
            peer: request.peer.ip(),
        });
        if request.device.serial == DENIED || request.host == "blocked.test" {
            RelayDecision::Deny {
                status: DenyStatus::BadGateway,
            }
        } else if request.host == "forbidden.test" {
            RelayDecision::Deny {
                status: DenyStatus::Forbidden,
            }
        } else if request.host == "direct.test" {
            RelayDecision::Direct
        } else if request.host == "exhausted.test" {
            RelayDecision::Refuse {
                details: "NAT pool exhausted".into(),
            }
        } else {
            RelayDecision::Forward {
                egress: EgressRoute {
                    name: "lab".into(),
                    source: Some("127.0.0.1".parse().unwrap()),
                },
            }
        }
    }
}

pub struct Lab {
    pub pki: Pki,
    pub relay: RelayHandle,
    pub policy: Arc<TestPolicy>,
    /// The queries the `lab` egress's name server received.
    pub dns_queries: mpsc::UnboundedReceiver<Query>,
}

/// A name the `lab` egress's name server answers with 127.0.0.1.
pub const DNS_NAME: &str = "target.lab.test";
/// A name in the `lab` egress's static hosts (127.0.0.1).
pub const STATIC_NAME: &str = "static.lab.test";

pub async fn lab() -> Lab {
    lab_with(|_| {}).await
}

/// A lab whose relay configuration `adjust` may change.
pub async fn lab_with(adjust: impl FnOnce(&mut RelayConfig)) -> Lab {
    let pki = pki();
    let policy = Arc::new(TestPolicy::default());
    let mut config = RelayConfig::new(vec!["127.0.0.1:0".parse().unwrap()], pki.files.clone());
    config.http2_listen = vec!["127.0.0.1:0".parse().unwrap()];
    config.tls.crl = vec![pki.crl.clone()];
    adjust(&mut config);
    // The `lab` egress resolves through its own name server and static hosts.
    let names = [(DNS_NAME.to_string(), "127.0.0.1".parse().unwrap())];
    let (server, dns_queries) = dns_server(names.into_iter().collect()).await;
    let hosts = [(STATIC_NAME.to_string(), vec!["127.0.0.1".parse().unwrap()])];
    let egress = DirectEgress::default().with_egress_dns(
        "lab",
        EgressDns {
            servers: vec![server],
            hosts: hosts.into_iter().collect(),
        },
    );
    let relay = Relay::bind(config, policy.clone(), Arc::new(egress)).unwrap();
    Lab {
        pki,
        relay,
        policy,
        dns_queries,
    }
}

/// Which independent client plays the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// aioquic on the HTTP/3 listener.
    Aioquic,
    /// Node.js `http2` on the HTTP/2 listener.
    Node,
    /// The raw HTTP/2 client on the `h2` library (`tests/h2_raw.py`), for malformed input.
    RawH2,
}

impl Lab {
    /// The command line of `client` as `device` (or without a certificate for `None`).
    fn command(
        &self,
        client: Client,
        device: Option<&str>,
        args: &[&str],
    ) -> tokio::process::Command {
        let (program, script, port) = match client {
            Client::Aioquic => ("python3", "h3_client.py", self.relay.local_addrs()[0]),
            Client::Node => ("node", "h2_client.js", self.relay.http2_local_addrs()[0]),
            Client::RawH2 => ("python3", "h2_raw.py", self.relay.http2_local_addrs()[0]),
        };
        let script = format!("{}/tests/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut command = tokio::process::Command::new(program);
        command
            .arg(script)
            .args(args)
            .arg("--port")
            .arg(port.port().to_string())
            .arg("--ca")
            .arg(&self.pki.server_ca)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        if let Some(device) = device {
            let (cert, key) = &self.pki.devices[device];
            command.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        command
    }

    /// Runs the aioquic client as `device` (or without a certificate for `None`) and returns
    /// its JSON. The process is killed if it outlives the test's patience.
    pub async fn client(&self, device: Option<&str>, args: &[&str]) -> Value {
        self.run(Client::Aioquic, device, args).await
    }

    /// One aioquic CONNECT as the `good` device to `target`, with `extra` arguments.
    pub async fn connect_good(&self, target: SocketAddr, extra: &[&str]) -> Value {
        let authority = authority(target);
        let mut args = vec!["connect", "--authority", &authority];
        args.extend_from_slice(extra);
        self.client(Some("good"), &args).await
    }

    /// Runs the Node.js HTTP/2 client as `device` and returns its JSON.
    pub async fn node(&self, device: Option<&str>, args: &[&str]) -> Value {
        self.run(Client::Node, device, args).await
    }

    /// Runs `client` to its end and returns its JSON.
    pub async fn run(&self, client: Client, device: Option<&str>, args: &[&str]) -> Value {
        self.run_for(Duration::from_secs(120), client, device, args)
            .await
    }

    /// Runs the aioquic client with more patience than [`Lab::client`].
    pub async fn client_for(
        &self,
        patience: Duration,
        device: Option<&str>,
        args: &[&str],
    ) -> Value {
        self.run_for(patience, Client::Aioquic, device, args).await
    }

    /// Runs `client` to its end, killing it after `patience`, and returns its JSON.
    pub async fn run_for(
        &self,
        patience: Duration,
        client: Client,
        device: Option<&str>,
        args: &[&str],
    ) -> Value {
        let child = self
            .command(client, device, args)
            .spawn()
            .unwrap_or_else(|e| panic!("{client:?} client runs (python3 with aioquic; node): {e}"));
        let output = tokio::time::timeout(patience, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("the client finishes within {patience:?} (killed)"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "{client:?} client failed: {}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!("{client:?} client output is not JSON ({e}): {stdout}\nstderr: {stderr}")
        })
    }

    /// Starts `client` in `hold` mode as `device` (a certificate name of [`pki`]) towards
    /// `target` and waits until its flow carries data both ways.
    pub async fn hold(&self, client: Client, device: &str, target: SocketAddr) -> HeldFlow {
        let authority = target.to_string();
        let mut child = self
            .command(
                client,
                Some(device),
                &["hold", "--authority", &authority, "--timeout", "60"],
            )
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut held = HeldFlow {
            client,
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        };
        let event = held.next_event().await;
        assert_eq!(event["event"], "flowing", "{client:?} as {device}: {event}");
        held
    }

    /// Waits until the counters satisfy `done` (they are updated by the relay's tasks).
    pub async fn stats_until(
        &self,
        done: impl Fn(&RelayStatsSnapshot) -> bool,
    ) -> RelayStatsSnapshot {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stats = self.relay.stats().snapshot();
            if done(&stats) || Instant::now() > deadline {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A client process holding one busy CONNECT flow (`hold` mode).
pub struct HeldFlow {
    pub client: Client,
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl HeldFlow {
    /// The client's next JSON line (its final one when the flow ended).
    pub async fn next_event(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{:?} client reports within 60 s", self.client))
            .unwrap();
        let Some(line) = line else {
            let mut stderr = String::new();
            if let Some(mut err) = self.child.stderr.take() {
                let _ = err.read_to_string(&mut stderr).await;
            }
            panic!(
                "{:?} client ended without output; stderr: {stderr}",
                self.client
            );
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{:?} client line is not JSON ({e}): {line}", self.client))
    }

    /// Whether the client process is still running (its flow was not ended).
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Kills the client (and so its connection).
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What a target server received on one connection: byte count and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub bytes: u64,
    pub sha256: String,
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Clone, Copy)]
pub enum TargetKind {
    /// Echoes as it reads; closes its side after the client's FIN.
    Echo,
    /// Reads to end of file, then sends everything back and closes.
    EchoAfterEof,
    /// Sends a greeting and closes its side first, then reads to end of file.
    TalksFirst,
    /// Accepts and never reads (backpressure tests).
    Stall,
    /// A minimal HTTP/1.1 server: reads one request head, answers `200` with [`HTTP_BODY`]
    /// and closes (RFC 9112).
    Http,
}

pub const HTTP_BODY: &str = "hello over HTTP/1.1 through the relay\n";

pub const GREETING: &[u8] = b"hello from the target\n";

/// A TCP server on 127.0.0.1 that reports what each connection received.
pub async fn target(kind: TargetKind) -> (SocketAddr, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
                let mut total = 0u64;
                let mut buf = vec![0u8; 64 * 1024];
                let mut kept = Vec::new();
                if let TargetKind::Http = kind {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{HTTP_BODY}",
                        HTTP_BODY.len()
                    );
                    let _ = stream.write_all(answer.as_bytes()).await;
                    let _ = stream.shutdown().await;
                    digest.update(&head);
                    let _ = tx.send(Received {
                        bytes: head.len() as u64,
                        sha256: hex(digest.finish().as_ref()),
                    });
                    return;
                }
                if let TargetKind::Stall = kind {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    drop(stream);
                    return;
                }
                if let TargetKind::TalksFirst = kind {
                    stream.write_all(GREETING).await.unwrap();
                    stream.shutdown().await.unwrap();
                }
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    digest.update(&buf[..n]);
                    total += n as u64;
                    match kind {
                        TargetKind::Echo => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                        TargetKind::EchoAfterEof => kept.extend_from_slice(&buf[..n]),
                        TargetKind::TalksFirst | TargetKind::Stall | TargetKind::Http => {}
                    }
                }
                match kind {
                    TargetKind::Echo => {
                        let _ = stream.shutdown().await;
                    }
                    TargetKind::EchoAfterEof => {
                        let _ = stream.write_all(&kept).await;
                        let _ = stream.shutdown().await;
                    }
                    TargetKind::TalksFirst | TargetKind::Stall | TargetKind::Http => {}
                }
                let _ = tx.send(Received {
                    bytes: total,
                    sha256: hex(digest.finish().as_ref()),
                });
            });
        }
    });
    (address, rx)
}

/// The next report of a target server, or a panic after 30 s.
pub async fn next(received: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(30), received.recv())
        .await
        .expect("the target reports within 30 s")
        .expect("the target server runs")
}

pub fn authority(address: SocketAddr) -> String {
    address.to_string()
}

/// A UDP echo server on 127.0.0.1; reports each datagram's source address.
pub async fn udp_echo() -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = tx.send(from);
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    (address, rx)
}
