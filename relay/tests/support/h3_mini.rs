//! A minimal HTTP/3 client on quinn for the benchmark and the tests that need to hold a
//! CONNECT stream in Rust: a control stream with empty SETTINGS, one HEADERS frame with a
//! static-table QPACK encoding, DATA frames. The h3 crate's client always sends `:scheme` and
//! `:path`, which a classic CONNECT must not carry (RFC 9114 §4.4).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use relay::capsule::{read_varint, write_varint};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

const CHUNK: usize = 64 * 1024;

/// The files a device client needs.
pub struct ClientFiles {
    pub server_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn client_endpoint(files: &ClientFiles, alpn: &[u8]) -> quinn::Endpoint {
    endpoint(files, alpn, true)
}

/// A client endpoint that never resumes a TLS session: every handshake is a full one
/// (certificates sent and verified both ways).
pub fn full_handshake_endpoint(files: &ClientFiles, alpn: &[u8]) -> quinn::Endpoint {
    endpoint(files, alpn, false)
}

fn endpoint(files: &ClientFiles, alpn: &[u8], resumption: bool) -> quinn::Endpoint {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&files.server_ca).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(&files.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    if !resumption {
        tls.resumption = rustls::client::Resumption::disabled();
    }
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Opens the client's control stream with empty SETTINGS (RFC 9114 §6.2.1); keep it open.
pub async fn control_stream(connection: &quinn::Connection) -> quinn::SendStream {
    let mut control = connection.open_uni().await.unwrap();
    control.write_all(&[0x00, 0x04, 0x00]).await.unwrap();
    control
}

/// One HTTP/3 frame header (RFC 9114 §7.1).
pub fn frame_header(frame_type: u64, length: u64, out: &mut BytesMut) {
    write_varint(frame_type, out).unwrap();
    write_varint(length, out).unwrap();
}

/// Reads HTTP/3 frames from a request stream: the response HEADERS, then DATA payloads.
pub struct FrameReader {
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl FrameReader {
    /// The next frame header (type, length), or `None` at the end of the stream.
    pub async fn header(&mut self) -> Option<(u64, u64)> {
        loop {
            if let Some((frame_type, a)) = read_varint(&self.buf) {
                if let Some((length, b)) = read_varint(&self.buf[a..]) {
                    self.buf.advance(a + b);
                    return Some((frame_type, length));
                }
            }
            match self.recv.read_chunk(CHUNK, true).await.unwrap() {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None => return None,
            }
        }
    }

    /// Consumes `length` payload bytes, returning them only when `keep`.
    pub async fn payload(&mut self, mut length: u64, keep: bool) -> Vec<u8> {
        let mut kept = Vec::new();
        loop {
            let n = (self.buf.len() as u64).min(length) as usize;
            if keep {
                kept.extend_from_slice(&self.buf[..n]);
            }
            self.buf.advance(n);
            length -= n as u64;
            if length == 0 {
                return kept;
            }
            let chunk = self.recv.read_chunk(CHUNK, true).await.unwrap().unwrap();
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }
}

/// Sends a classic CONNECT and waits for `200`.
pub async fn h3_connect(
    connection: &quinn::Connection,
    authority: &str,
) -> (quinn::SendStream, FrameReader) {
    let (mut send, recv) = connection.open_bi().await.unwrap();
    // QPACK (RFC 9204 §4.5): required insert count 0, base 0; `:method CONNECT` is static
    // entry 15 (indexed, 0b11xxxxxx); `:authority` is a literal with static name reference 0
    // (0b0101xxxx) and a 7-bit length prefix.
    assert!(authority.len() < 127);
    let mut block = vec![0x00, 0x00, 0xc0 | 15, 0x50, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut frame = BytesMut::new();
    frame_header(0x01, block.len() as u64, &mut frame);
    frame.extend_from_slice(&block);
    send.write_all(&frame).await.unwrap();
    let mut reader = FrameReader {
        recv,
        buf: BytesMut::new(),
    };
    loop {
        let (frame_type, length) = reader.header().await.expect("a response");
        let payload = reader.payload(length, true).await;
        if frame_type == 0x01 {
            // `:status 200` is static entry 25 (RFC 9204 Appendix A).
            assert_eq!(
                payload.get(2),
                Some(&(0xc0 | 25)),
                "relay answered {payload:02x?}"
            );
            return (send, reader);
        }
    }
}
