//! The ESP data path of one child SA (RFC 4303, tunnel mode), sans-IO: [`OutboundEsp`] turns
//! inner IP packets into ESP packets, [`InboundEsp`] turns ESP packets back into inner packets
//! after every check of the receive path in the [module doc](super). No sockets and no clock:
//! the driver owns both halves (often on different tasks) and feeds them bytes.
//!
//! Per cipher:
//! - AES-GCM (RFC 4106) and ChaCha20-Poly1305 (RFC 7634 §2): an 8-octet explicit IV, here the
//!   64-bit sequence number, which never repeats under one key (RFC 4106 §3.1, §8.1); AAD is
//!   SPI || sequence number, 32 bits, or 64 with ESN (RFC 4106 §5, RFC 7634 §2.1); the
//!   plaintext is padded to 4 octets only (RFC 4303 §2.4); 16-octet ICV.
//! - AES-CBC (RFC 3602) with HMAC-SHA2 (RFC 4868): a random 16-octet IV (RFC 3602 §2.1),
//!   the plaintext padded to the block size, then the truncated HMAC over
//!   SPI || sequence number || IV || ciphertext, followed, with ESN, by the high 32 bits of the
//!   sequence number, which are authenticated but never sent (RFC 4303 §2.2.1, §3.3.2.1).
//!
//! Key material lives in [`SaCipher`], whose keys are wiped on drop; nothing here prints or
//! logs it.

use std::fmt;
use std::net::IpAddr;
use std::ops::Range;

use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroize;

use super::{
    strip_trailer, within, EspError, EspLayout, EspPacket, InnerPacket, NextHeader,
    OutboundSequence, ReplayError, ReplayWindow, ESP_HEADER_LEN,
};
use crate::crypto::aead::{self, AeadKey};
use crate::crypto::cbc::{self, CbcKey, IntegrityKey};
use crate::crypto::keys::SaCipher;
use crate::crypto::CryptoError;
use crate::proposal::{Esn, EspProposal};
use crate::sa::ChildSa;
use crate::wire::TrafficSelector;

/// Why a packet was dropped on the way in, or could not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EspSaError {
    #[error("ESP packet for SPI {got:#010x} reached the SA with SPI {expected:#010x}")]
    WrongSpi { expected: u32, got: u32 },
    #[error("ESP sequence number {seq} refused: {reason} (RFC 4303 §3.4.3)")]
    Replay { seq: u32, reason: ReplayError },
    #[error(
        "ESP packet {seq} failed its integrity check: forged, corrupted, or sealed with other keys"
    )]
    Authentication { seq: u64 },
    #[error("authenticated ESP packet has a bad trailer: {0}")]
    Padding(EspError),
    #[error(
        "inner packet {src} -> {dst} (protocol {protocol}) is outside the child SA's traffic \
         selectors (RFC 4301 §5.2)"
    )]
    OutsideSelectors {
        src: IpAddr,
        dst: IpAddr,
        protocol: u8,
    },
    #[error("malformed ESP packet: {0}")]
    Malformed(EspError),
    #[error("cannot send an empty packet")]
    EmptyInner,
    #[error("cannot send IP version {0}: tunnel mode carries IPv4 or IPv6 (RFC 4303 §2.6)")]
    NotIp(u8),
    #[error("{0}")]
    Exhausted(EspError),
    #[error("child SA lifetime reached ({limit} {what} sent); it must be rekeyed")]
    LifetimeExpired { what: &'static str, limit: u64 },
    #[error("ESP cipher: {0}")]
    Crypto(#[from] CryptoError),
}

/// Packets and octets through one SA, and why packets were dropped. Octets are those of the
/// inner IP packets (what lifetimes in bytes count), not of the ESP packets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EspCounters {
    pub packets_out: u64,
    pub bytes_out: u64,
    /// Dummy packets sent (Next Header 59, RFC 4303 §2.6).
    pub dummies_out: u64,
    pub packets_in: u64,
    pub bytes_in: u64,
    /// Dummy packets received and discarded.
    pub dummies_in: u64,
    /// Packets carrying another SA's SPI (a driver demultiplexing bug, or a stale SA).
    pub dropped_spi: u64,
    /// Replayed, older than the window, or sequence number 0 (RFC 4303 §3.4.3).
    pub dropped_replay: u64,
    /// ICV mismatch (RFC 4303 §3.4.4): forged or corrupted.
    pub dropped_auth: u64,
    /// Authenticated, but the padding was not 1, 2, 3, … (RFC 4303 §2.4).
    pub dropped_padding: u64,
    /// Authenticated, but the inner packet is outside the traffic selectors (RFC 4301 §5.2).
    pub dropped_selector: u64,
    /// Truncated, misaligned, reserved SPI, or an inner packet that is not IP.
    pub dropped_malformed: u64,
}

impl EspCounters {
    /// All drops together.
    pub fn dropped(&self) -> u64 {
        self.dropped_spi
            + self.dropped_replay
            + self.dropped_auth
            + self.dropped_padding
            + self.dropped_selector
            + self.dropped_malformed
    }

    /// Field-wise sum, e.g. of an SA's outbound and inbound halves for the operator.
    pub fn merge(self, other: EspCounters) -> EspCounters {
        EspCounters {
            packets_out: self.packets_out + other.packets_out,
            bytes_out: self.bytes_out + other.bytes_out,
            dummies_out: self.dummies_out + other.dummies_out,
            packets_in: self.packets_in + other.packets_in,
            bytes_in: self.bytes_in + other.bytes_in,
            dummies_in: self.dummies_in + other.dummies_in,
            dropped_spi: self.dropped_spi + other.dropped_spi,
            dropped_replay: self.dropped_replay + other.dropped_replay,
            dropped_auth: self.dropped_auth + other.dropped_auth,
            dropped_padding: self.dropped_padding + other.dropped_padding,
            dropped_selector: self.dropped_selector + other.dropped_selector,
            dropped_malformed: self.dropped_malformed + other.dropped_malformed,
        }
    }
}

/// When the outbound SA asks to be rekeyed and when it stops sending, as strongSwan's
/// `rekey_packets` / `life_packets` / `rekey_bytes` / `life_bytes`. `None` leaves a limit at
/// its default: the sequence space for packets (a soft limit at 15/16 of it, the hard limit
/// where it would cycle, RFC 4303 §3.3.3), none for bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EspLimits {
    pub soft_packets: Option<u64>,
    pub hard_packets: Option<u64>,
    pub soft_bytes: Option<u64>,
    pub hard_bytes: Option<u64>,
}

/// What [`OutboundEsp::seal`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct SealInfo {
    /// The full (64-bit) sequence number of the packet.
    pub seq: u64,
    /// Octets of ESP packet appended to `out`.
    pub len: usize,
    /// A soft limit is reached: start a CREATE_CHILD_SA rekey now (true from then on).
    pub rekey_due: bool,
}

/// What [`InboundEsp::open`] delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Opened {
    /// An inner packet within the SA's traffic selectors, at `at` in the output buffer (TFC
    /// padding, RFC 4303 §2.7, already cut off).
    Packet {
        inner: InnerPacket,
        seq: u64,
        at: Range<usize>,
    },
    /// A dummy packet (Next Header 59), to discard (RFC 4303 §2.6).
    Dummy { seq: u64 },
}

/// The ESN transform of a negotiated proposal (RFC 7296 §3.3.2: the responder picked one).
pub fn negotiated_esn(proposal: &EspProposal) -> bool {
    proposal.esn.first() == Some(&Esn::Yes)
}

/// IV, ICV and block lengths for `cipher`.
fn layout(cipher: &SaCipher) -> EspLayout {
    match cipher {
        SaCipher::Aead(_) => EspLayout {
            iv_len: aead::IV_LEN,
            icv_len: aead::ICV_LEN,
            block_len: 1,
        },
        SaCipher::EncryptThenMac { integrity, .. } => EspLayout {
            iv_len: cbc::BLOCK_LEN,
            icv_len: IntegrityKey::icv_len(integrity.algorithm()),
            block_len: cbc::BLOCK_LEN,
        },
    }
}

fn suite_name(cipher: &SaCipher) -> String {
    match cipher {
        SaCipher::Aead(key) => format!("{:?}", key.algorithm()),
        SaCipher::EncryptThenMac { cipher, integrity } => {
            format!("{:?}+{:?}", cipher.algorithm(), integrity.algorithm())
        }
    }
}

fn check_spi(spi: u32) -> Result<(), EspSaError> {
    // SPIs 0..=255 never appear on the wire (RFC 4303 §2.1).
    if spi < 256 {
        return Err(EspSaError::Malformed(EspError::ReservedSpi(spi)));
    }
    Ok(())
}

fn low32(seq: u64) -> u32 {
    (seq & 0xffff_ffff) as u32
}

/// The associated data of the combined-mode ciphers: SPI || 32-bit sequence number, or
/// SPI || 64-bit ESN (RFC 4106 §5, RFC 7634 §2.1).
fn aead_aad(spi: u32, seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        aad[4..].copy_from_slice(&seq.to_be_bytes());
        (aad, 12)
    } else {
        aad[4..8].copy_from_slice(&low32(seq).to_be_bytes());
        (aad, 8)
    }
}

/// The default padding 1, 2, 3, … (RFC 4303 §2.4); never more than 15 octets here.
const PADDING: [u8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16];

/// Octets of padding so that payload, padding, Pad Length and Next Header fill whole units of
/// `alignment` (a power of two of at most 16).
fn padding_len(payload_len: usize, alignment: usize) -> usize {
    (alignment - (payload_len + 2) % alignment) % alignment
}

fn push_header(out: &mut Vec<u8>, spi: u32, seq: u64) {
    out.extend_from_slice(&spi.to_be_bytes());
    // Only the low 32 bits travel; with ESN the receiver infers the rest (RFC 4303 §2.2.1).
    out.extend_from_slice(&low32(seq).to_be_bytes());
}

fn push_payload(out: &mut Vec<u8>, payload: &[u8], alignment: usize, next_header: NextHeader) {
    let pad = padding_len(payload.len(), alignment);
    out.extend_from_slice(payload);
    out.extend_from_slice(PADDING.get(..pad).unwrap_or_default());
    out.push(pad as u8);
    out.push(next_header.0);
}

/// Appends an AEAD-protected ESP packet with the given IV (RFC 4106 §3, RFC 7634 §2). The
/// caller guarantees that `iv` never repeats under `key`.
#[allow(clippy::too_many_arguments, reason = "one ESP packet's fields")]
fn seal_aead(
    key: &AeadKey,
    spi: u32,
    seq: u64,
    esn: bool,
    iv: &[u8; aead::IV_LEN],
    payload: &[u8],
    next_header: NextHeader,
    out: &mut Vec<u8>,
) -> Result<(), EspSaError> {
    let body = out.len() + ESP_HEADER_LEN + aead::IV_LEN;
    out.reserve(ESP_HEADER_LEN + aead::IV_LEN + payload.len() + 3 + 2 + aead::ICV_LEN);
    push_header(out, spi, seq);
    out.extend_from_slice(iv);
    // No block alignment, only the 4-octet one of RFC 4303 §2.4 (RFC 4106 §3.2, RFC 7634 §2).
    push_payload(out, payload, 4, next_header);
    let (aad, aad_len) = aead_aad(spi, seq, esn);
    let plaintext = out.get_mut(body..).unwrap_or_default();
    let icv = key.seal_in_place_detached(iv, aad.get(..aad_len).unwrap_or_default(), plaintext)?;
    out.extend_from_slice(&icv);
    Ok(())
}

/// Appends an AES-CBC + HMAC ESP packet (RFC 3602 §3, RFC 4868, RFC 4303 §3.3.2.1).
#[allow(clippy::too_many_arguments, reason = "one ESP packet's fields")]
fn seal_cbc(
    cipher: &CbcKey,
    integrity: &IntegrityKey,
    spi: u32,
    seq: u64,
    esn: bool,
    iv: &[u8; cbc::BLOCK_LEN],
    payload: &[u8],
    next_header: NextHeader,
    out: &mut Vec<u8>,
) -> Result<(), EspSaError> {
    let start = out.len();
    let body = start + ESP_HEADER_LEN + cbc::BLOCK_LEN;
    out.reserve(ESP_HEADER_LEN + cbc::BLOCK_LEN + payload.len() + 15 + 2 + 32);
    push_header(out, spi, seq);
    out.extend_from_slice(iv);
    push_payload(out, payload, cbc::BLOCK_LEN, next_header);
    cipher.encrypt_in_place(iv, out.get_mut(body..).unwrap_or_default())?;
    let packet = out.get(start..).unwrap_or_default();
    let icv = if esn {
        // RFC 4303 §2.2.1: the high-order 32 bits are authenticated, not sent.
        let high = ((seq >> 32) as u32).to_be_bytes();
        integrity.compute_parts(&[packet, &high])
    } else {
        integrity.compute(packet)
    };
    out.extend_from_slice(icv.as_bytes());
    Ok(())
}

/// Random CBC IVs, fetched from the system RNG 16 at a time rather than one system call per
/// packet. Unused IVs are wiped on drop.
struct IvPool {
    rng: SystemRandom,
    bytes: [u8; 16 * cbc::BLOCK_LEN],
    used: usize,
}

impl IvPool {
    fn new() -> IvPool {
        IvPool {
            rng: SystemRandom::new(),
            bytes: [0; 16 * cbc::BLOCK_LEN],
            used: 16 * cbc::BLOCK_LEN,
        }
    }

    fn next_iv(&mut self) -> Result<[u8; cbc::BLOCK_LEN], EspSaError> {
        if self.used + cbc::BLOCK_LEN > self.bytes.len() {
            self.rng
                .fill(&mut self.bytes)
                .map_err(|_| EspSaError::Crypto(CryptoError::Rng))?;
            self.used = 0;
        }
        let mut iv = [0u8; cbc::BLOCK_LEN];
        if let Some(next) = self.bytes.get_mut(self.used..self.used + cbc::BLOCK_LEN) {
            iv.copy_from_slice(next);
            next.zeroize();
        }
        self.used += cbc::BLOCK_LEN;
        Ok(iv)
    }
}

impl Drop for IvPool {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// The sending half of a child SA.
pub struct OutboundEsp {
    spi: u32,
    cipher: SaCipher,
    esn: bool,
    sequence: OutboundSequence,
    limits: EspLimits,
    /// Used by CBC only; filled on first use.
    ivs: IvPool,
    counters: EspCounters,
    rekey_reported: bool,
}

impl OutboundEsp {
    /// The SA that puts `spi` on its packets, with the default limits.
    pub fn new(spi: u32, cipher: SaCipher, esn: bool) -> Result<OutboundEsp, EspSaError> {
        check_spi(spi)?;
        Ok(OutboundEsp {
            spi,
            cipher,
            esn,
            sequence: OutboundSequence::new(esn),
            limits: EspLimits::default(),
            ivs: IvPool::new(),
            counters: EspCounters::default(),
            rekey_reported: false,
        })
    }

    /// Our half of a negotiated child SA: its `spi_out`, the keys for what we send
    /// ([`ChildSa::outbound`]) and the negotiated ESN.
    pub fn from_child(child: &ChildSa) -> Result<OutboundEsp, EspSaError> {
        Self::new(
            child.spi_out,
            child.outbound()?,
            negotiated_esn(&child.proposal),
        )
    }

    /// Sets the limits. The sequence number carries on: it is never reset, since with the
    /// combined-mode ciphers it is also the IV (RFC 4106 §3.1).
    pub fn with_limits(mut self, limits: EspLimits) -> OutboundEsp {
        self.limits = limits;
        self
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The last sequence number sent, 0 before the first packet.
    pub fn last_seq(&self) -> u64 {
        self.sequence.last()
    }

    pub fn counters(&self) -> EspCounters {
        self.counters
    }

    /// A soft limit is reached: the SA should be rekeyed.
    pub fn rekey_due(&self) -> bool {
        self.sequence.rekey_due()
            || self
                .limits
                .soft_packets
                .is_some_and(|soft| self.sequence.last() >= soft)
            || self
                .limits
                .soft_bytes
                .is_some_and(|soft| self.counters.bytes_out >= soft)
    }

    /// Encrypts `inner`, an IPv4 or IPv6 packet, and appends the ESP packet to `out` (which
    /// may already hold e.g. a UDP encapsulation header). Refuses once a hard limit is reached
    /// (RFC 4303 §3.3.3: a sequence number never cycles); on error `out` is left as it was.
    pub fn seal(&mut self, inner: &[u8], out: &mut Vec<u8>) -> Result<SealInfo, EspSaError> {
        let next_header = match inner.first().map(|b| b >> 4) {
            Some(4) => NextHeader::IPV4,
            Some(6) => NextHeader::IPV6,
            Some(version) => return Err(EspSaError::NotIp(version)),
            None => return Err(EspSaError::EmptyInner),
        };
        let info = self.seal_payload(inner, next_header, out)?;
        self.counters.packets_out += 1;
        self.counters.bytes_out += inner.len() as u64;
        Ok(SealInfo {
            rekey_due: self.check_rekey(),
            ..info
        })
    }

    /// Appends a dummy packet (Next Header 59) of `len` zero octets, for traffic flow
    /// confidentiality (RFC 4303 §2.6); the peer discards it after checking its ICV.
    pub fn seal_dummy(&mut self, len: usize, out: &mut Vec<u8>) -> Result<SealInfo, EspSaError> {
        let info = self.seal_payload(&vec![0; len], NextHeader::NO_NEXT, out)?;
        self.counters.dummies_out += 1;
        Ok(SealInfo {
            rekey_due: self.check_rekey(),
            ..info
        })
    }

    fn check_rekey(&mut self) -> bool {
        let due = self.rekey_due();
        if due && !self.rekey_reported {
            self.rekey_reported = true;
            let spi = format!("{:#010x}", self.spi);
            tracing::info!(
                spi = %spi,
                packets = self.sequence.last(),
                bytes = self.counters.bytes_out,
                "outbound ESP SA reached its soft limit; rekey due"
            );
        }
        due
    }

    fn seal_payload(
        &mut self,
        payload: &[u8],
        next_header: NextHeader,
        out: &mut Vec<u8>,
    ) -> Result<SealInfo, EspSaError> {
        let used = [
            ("packets", self.limits.hard_packets, self.sequence.last()),
            ("octets", self.limits.hard_bytes, self.counters.bytes_out),
        ];
        for (what, limit, used) in used {
            if let Some(limit) = limit.filter(|limit| used >= *limit) {
                return Err(EspSaError::LifetimeExpired { what, limit });
            }
        }
        let seq = self.sequence.next_seq().map_err(EspSaError::Exhausted)?;
        let start = out.len();
        let sealed = match &self.cipher {
            // The IV is the sequence number: unique per key without a random source (RFC 4106
            // §3.1), and it never cycles (§3.3.3).
            SaCipher::Aead(key) => seal_aead(
                key,
                self.spi,
                seq,
                self.esn,
                &seq.to_be_bytes(),
                payload,
                next_header,
                out,
            ),
            SaCipher::EncryptThenMac { cipher, integrity } => self.ivs.next_iv().and_then(|iv| {
                seal_cbc(
                    cipher,
                    integrity,
                    self.spi,
                    seq,
                    self.esn,
                    &iv,
                    payload,
                    next_header,
                    out,
                )
            }),
        };
        if let Err(e) = sealed {
            out.truncate(start);
            return Err(e);
        }
        Ok(SealInfo {
            seq,
            len: out.len() - start,
            rekey_due: false,
        })
    }
}

impl fmt::Debug for OutboundEsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundEsp")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &suite_name(&self.cipher))
            .field("esn", &self.esn)
            .field("last_seq", &self.sequence.last())
            .field("limits", &self.limits)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What passed the steps before decryption.
struct Admitted {
    seq: u64,
    /// Offset of the ciphertext (after the IV) in the packet.
    body: usize,
    ciphertext_len: usize,
}

/// The receiving half of a child SA.
pub struct InboundEsp {
    spi: u32,
    cipher: SaCipher,
    layout: EspLayout,
    esn: bool,
    window: ReplayWindow,
    /// Our side of the SA: inner destinations.
    local_ts: Vec<TrafficSelector>,
    /// The peer's side: inner sources.
    remote_ts: Vec<TrafficSelector>,
    counters: EspCounters,
}

impl InboundEsp {
    /// The SA the peer sends to with `spi`, admitting inner packets from `remote_ts` to
    /// `local_ts`.
    pub fn new(
        spi: u32,
        cipher: SaCipher,
        esn: bool,
        local_ts: Vec<TrafficSelector>,
        remote_ts: Vec<TrafficSelector>,
    ) -> Result<InboundEsp, EspSaError> {
        check_spi(spi)?;
        Ok(InboundEsp {
            spi,
            layout: layout(&cipher),
            cipher,
            esn,
            window: ReplayWindow::new(esn),
            local_ts,
            remote_ts,
            counters: EspCounters::default(),
        })
    }

    /// The peer's half of a negotiated child SA: its `spi_in`, the keys for what we receive
    /// ([`ChildSa::inbound`]), the negotiated ESN and traffic selectors.
    pub fn from_child(child: &ChildSa) -> Result<InboundEsp, EspSaError> {
        Self::new(
            child.spi_in,
            child.inbound()?,
            negotiated_esn(&child.proposal),
            child.local_ts.clone(),
            child.remote_ts.clone(),
        )
    }

    pub fn spi(&self) -> u32 {
        self.spi
    }

    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The highest sequence number accepted so far, 0 if none.
    pub fn highest_seq(&self) -> u64 {
        self.window.highest()
    }

    pub fn counters(&self) -> EspCounters {
        self.counters
    }

    /// Checks and decrypts `packet` (from its SPI to its ICV) and appends the inner packet to
    /// `out`; on error `out` is left as it was. Every refusal is counted.
    pub fn open(&mut self, packet: &[u8], out: &mut Vec<u8>) -> Result<Opened, EspSaError> {
        let start = out.len();
        let result = self.admit(packet).and_then(|admitted| {
            let (head, body) =
                packet
                    .split_at_checked(admitted.body)
                    .ok_or(EspSaError::Malformed(EspError::Truncated {
                        what: "ESP packet",
                        needed: admitted.body,
                        available: packet.len(),
                    }))?;
            out.extend_from_slice(body);
            let body = out.get_mut(start..).unwrap_or_default();
            self.finish(head, body, &admitted, start)
        });
        match &result {
            Ok(Opened::Packet { at, .. }) => out.truncate(at.end),
            _ => out.truncate(start),
        }
        self.count(&result);
        result
    }

    /// As [`Self::open`], decrypting in `packet` itself: the inner packet is `packet[at]`.
    /// On error the contents of `packet` are unspecified.
    pub fn open_in_place(&mut self, packet: &mut [u8]) -> Result<Opened, EspSaError> {
        let result = self.admit(packet).and_then(|admitted| {
            let available = packet.len();
            let (head, body) =
                packet
                    .split_at_mut_checked(admitted.body)
                    .ok_or(EspSaError::Malformed(EspError::Truncated {
                        what: "ESP packet",
                        needed: admitted.body,
                        available,
                    }))?;
            self.finish(head, body, &admitted, admitted.body)
        });
        self.count(&result);
        result
    }

    /// Receive path up to the crypto (module doc of [`super`]): header, SPI, anti-replay check
    /// before any crypto (RFC 4303 §3.4.3), split for the cipher.
    fn admit(&mut self, packet: &[u8]) -> Result<Admitted, EspSaError> {
        let view = EspPacket::new_checked(packet).map_err(EspSaError::Malformed)?;
        if view.spi() != self.spi {
            return Err(EspSaError::WrongSpi {
                expected: self.spi,
                got: view.spi(),
            });
        }
        let low = view.sequence_number();
        let seq = self
            .window
            .check(low)
            .map_err(|reason| EspSaError::Replay { seq: low, reason })?;
        let parts = view.split(&self.layout).map_err(EspSaError::Malformed)?;
        Ok(Admitted {
            seq,
            body: ESP_HEADER_LEN + parts.iv.len(),
            ciphertext_len: parts.ciphertext.len(),
        })
    }

    /// The rest of the receive path: ICV and decryption, window update, trailer, inner packet
    /// and selectors. `head` is SPI, sequence number and IV; `body` the ciphertext and ICV,
    /// found at `offset` of the caller's buffer.
    fn finish(
        &mut self,
        head: &[u8],
        body: &mut [u8],
        admitted: &Admitted,
        offset: usize,
    ) -> Result<Opened, EspSaError> {
        let seq = admitted.seq;
        self.unprotect(seq, head, body, admitted.ciphertext_len)?;
        // Only now, with the ICV verified, may the window move (RFC 4303 §3.4.3).
        self.window
            .accept(seq)
            .map_err(|reason| EspSaError::Replay {
                seq: low32(seq),
                reason,
            })?;
        let plaintext = body.get(..admitted.ciphertext_len).unwrap_or_default();
        let (payload, next_header) = strip_trailer(plaintext).map_err(EspSaError::Padding)?;
        if next_header.is_dummy() {
            return Ok(Opened::Dummy { seq });
        }
        let inner = InnerPacket::parse_with(next_header, payload).map_err(EspSaError::Malformed)?;
        // The peer's side is the source, ours the destination (RFC 4301 §5.2).
        if !within(&self.remote_ts, &self.local_ts, &inner) {
            return Err(EspSaError::OutsideSelectors {
                src: inner.src,
                dst: inner.dst,
                protocol: inner.protocol,
            });
        }
        Ok(Opened::Packet {
            inner,
            seq,
            at: offset..offset + inner.len,
        })
    }

    /// Verifies the ICV and decrypts `body` (ciphertext || ICV) in place: afterwards its first
    /// `ciphertext_len` octets are the plaintext. `head` is SPI || sequence number || IV.
    fn unprotect(
        &self,
        seq: u64,
        head: &[u8],
        body: &mut [u8],
        ciphertext_len: usize,
    ) -> Result<(), EspSaError> {
        let auth_failed = EspSaError::Authentication { seq };
        let (header, iv) = head
            .split_at_checked(ESP_HEADER_LEN)
            .ok_or(auth_failed.clone())?;
        match &self.cipher {
            SaCipher::Aead(key) => {
                let iv: &[u8; aead::IV_LEN] = iv.try_into().map_err(|_| auth_failed.clone())?;
                let (aad, aad_len) = aead_aad(self.spi, seq, self.esn);
                key.open_in_place(iv, aad.get(..aad_len).unwrap_or_default(), body)
                    .map_err(|_| auth_failed)?;
            }
            SaCipher::EncryptThenMac { cipher, integrity } => {
                let iv: &[u8; cbc::BLOCK_LEN] = iv.try_into().map_err(|_| auth_failed.clone())?;
                let (ciphertext, icv) = body
                    .split_at_mut_checked(ciphertext_len)
                    .ok_or(auth_failed.clone())?;
                // Integrity first, then decryption (RFC 4303 §3.4.4.1).
                let high = ((seq >> 32) as u32).to_be_bytes();
                let esn_part: &[u8] = if self.esn { &high } else { &[] };
                integrity
                    .verify_parts(&[header, iv, ciphertext, esn_part], icv)
                    .map_err(|_| auth_failed)?;
                cipher
                    .decrypt_in_place(iv, ciphertext)
                    .map_err(EspSaError::Crypto)?;
            }
        }
        Ok(())
    }

    fn count(&mut self, result: &Result<Opened, EspSaError>) {
        let c = &mut self.counters;
        match result {
            Ok(Opened::Packet { inner, .. }) => {
                c.packets_in += 1;
                c.bytes_in += inner.len as u64;
            }
            Ok(Opened::Dummy { .. }) => c.dummies_in += 1,
            Err(EspSaError::WrongSpi { .. }) => c.dropped_spi += 1,
            Err(EspSaError::Replay { .. }) => c.dropped_replay += 1,
            Err(EspSaError::Authentication { .. }) => c.dropped_auth += 1,
            Err(EspSaError::Padding(_)) => c.dropped_padding += 1,
            Err(EspSaError::OutsideSelectors { .. }) => c.dropped_selector += 1,
            Err(_) => c.dropped_malformed += 1,
        }
    }
}

impl fmt::Debug for InboundEsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InboundEsp")
            .field("spi", &format_args!("{:#010x}", self.spi))
            .field("suite", &suite_name(&self.cipher))
            .field("esn", &self.esn)
            .field("highest_seq", &self.window.highest())
            .field("window", &self.window.window())
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Both halves of a child SA. The fields are public so that a driver can move each half to
/// the task that uses it (TUN reader: outbound; socket reader: inbound).
#[derive(Debug)]
pub struct EspSa {
    pub outbound: OutboundEsp,
    pub inbound: InboundEsp,
}

impl EspSa {
    /// The data path of a negotiated child SA, keys chosen by our role (RFC 7296 §2.17).
    pub fn from_child(child: &ChildSa) -> Result<EspSa, EspSaError> {
        Ok(EspSa {
            outbound: OutboundEsp::from_child(child)?,
            inbound: InboundEsp::from_child(child)?,
        })
    }

    /// Both directions' counters together.
    pub fn counters(&self) -> EspCounters {
        self.outbound.counters().merge(self.inbound.counters())
    }
}

#[cfg(test)]
mod tests;
