//! The IKE SA as a sans-IO state machine (RFC 7296), in the style of quinn-proto: datagrams and
//! `now` go in through [`IkeSa::handle`] and [`IkeSa::handle_timeout`]; datagrams to send,
//! the next timer and events come out of [`IkeSa::poll_transmit`], [`IkeSa::poll_timeout`] and
//! [`IkeSa::poll_event`]. No sockets and no clock reads, so exchanges, retransmission and
//! failures are testable against a peer of our own in microseconds.
//!
//! Done: IKE_SA_INIT (with COOKIE and INVALID_KE_PAYLOAD retries as initiator), IKE_AUTH with a
//! pre-shared key (§2.15) and the first CHILD_SA with traffic selector narrowing (§2.9), as
//! initiator and as responder; NAT detection (§2.23) and the move to UDP 4500; retransmission
//! with exponential backoff (§2.1) up to a limit that closes the SA, duplicate requests answered
//! from the cached response (§2.2), out-of-window messages dropped; INFORMATIONAL (liveness
//! checks, deletes); CREATE_CHILD_SA rekeys of child SAs (`child.rs`) and of the IKE SA by
//! either end, simultaneous rekeys and other collisions, lifetimes with jitter and liveness
//! checks after silence (`lifecycle.rs`).
//!
//! IKE fragmentation (RFC 7383) lives in `fragment.rs`; a responder's cookies (§2.6) are decided
//! before an SA exists, by [`crate::cookie::CookieGate`]; certificates (RFC 7427) in
//! [`crate::cert`]; rekeys, collisions (§2.8.1), lifetimes and liveness in `lifecycle.rs`.
//!
//! INITIAL_CONTACT is reported ([`Event::InitialContact`]); deleting the other IKE SAs is up to
//! their owner.

mod auth;
mod child;
mod fragment;
#[cfg(test)]
mod fragment_tests;
mod info;
mod init;
mod lifecycle;
#[cfg(test)]
mod lifecycle_tests;
mod negotiate;
mod protect;
#[cfg(test)]
mod tests;

pub use fragment::{DEFAULT_FRAGMENT_SIZE, MAX_FRAGMENTS, MAX_REASSEMBLED};
pub use lifecycle::{CloseCause, Lifetimes};
pub use protect::ProtectError;

use crate::crypto::keys::{skeyseed, ChildSaKeys, ChildSuite, IkeSaKeys, IkeSuite, SaCipher};
use crate::crypto::{KeyExchange, SecretBytes};
use crate::proposal::{DhGroup, EspProposal, IkeProposal};
use crate::wire::{
    AuthMethod, AuthPayload, DeletePayload, ExchangeType, Flags, HeaderRepr, IdPayload, KePayload,
    Message, MessageBuilder, NoncePayload, NotifyPayload, NotifyType, Payload, PayloadType,
    Proposal, ProtocolId, SaPayload, TrafficSelector, TsPayload,
};
use crate::Identity;
use ring::rand::{SecureRandom, SystemRandom};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// IKE's ports (§2.23, RFC 3948).
pub const IKE_PORT: u16 = 500;
pub const NATT_PORT: u16 = 4500;

/// What one tunnel needs to negotiate.
#[derive(Debug, Clone)]
pub struct SaConfig {
    pub local_id: Identity,
    pub remote_id: Identity,
    pub psk: SecretBytes,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Our side's traffic selectors.
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side.
    pub remote_ts: Vec<TrafficSelector>,
    /// First retransmission after this; then ×2 each time (§2.1).
    pub retransmit_timeout: Duration,
    /// Requests sent at most this many times.
    pub retransmit_tries: u32,
    /// Carry ESP in UDP 4500 even without a NAT (RFC 3948), making the peer see one. Needed
    /// until raw ESP (IP protocol 50) is implemented.
    pub force_udp_encap: bool,
    /// Certificate authentication (RFC 7427 signatures, see [`crate::cert`]); the PSK is not
    /// used when this is set.
    pub cert: Option<Arc<crate::cert::CertAuth>>,
}

/// Which end started the IKE SA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// A datagram to send. `data` is the UDP payload, with the non-ESP marker already in front when
/// `local_port` is 4500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub local_port: u16,
    pub remote: SocketAddr,
    pub data: Vec<u8>,
}

/// A child SA ready to carry ESP.
#[derive(Debug)]
pub struct ChildSa {
    /// The SPI the peer puts on packets to us.
    pub spi_in: u32,
    /// The SPI we put on packets to the peer.
    pub spi_out: u32,
    pub proposal: EspProposal,
    /// Which direction keys are ours: initiator→responder when we initiated the IKE SA.
    pub role: Role,
    pub keys: ChildSaKeys,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// ESP travels in UDP 4500 (a NAT was detected).
    pub udp_encap: bool,
    /// The inbound SPI of the child SA this one replaces (make-before-break: keep the old one
    /// until [`Event::ChildSaDeleted`] names it).
    pub rekeys: Option<u32>,
}

impl ChildSa {
    /// The cipher for packets we send.
    pub fn outbound(&self) -> Result<SaCipher, crate::crypto::CryptoError> {
        match self.role {
            Role::Initiator => self.keys.cipher(&self.keys.initiator_to_responder),
            Role::Responder => self.keys.cipher(&self.keys.responder_to_initiator),
        }
    }
    /// The cipher for packets we receive.
    pub fn inbound(&self) -> Result<SaCipher, crate::crypto::CryptoError> {
        match self.role {
            Role::Initiator => self.keys.cipher(&self.keys.responder_to_initiator),
            Role::Responder => self.keys.cipher(&self.keys.initiator_to_responder),
        }
    }
}

/// What happened, for the driver and the operator.
#[derive(Debug)]
pub enum Event {
    /// IKE_AUTH completed: the peer proved the PSK and its identity.
    IkeSaEstablished {
        spi_i: u64,
        spi_r: u64,
        proposal: IkeProposal,
        nat_detected: bool,
        remote: SocketAddr,
    },
    ChildSaEstablished(Box<ChildSa>),
    /// The IKE SA is up but its first child SA was refused.
    ChildSaFailed {
        reason: String,
    },
    /// A child SA is gone (deleted by the peer, or by us after a rekey), and why.
    ChildSaDeleted {
        spi_in: u32,
        spi_out: u32,
        reason: String,
    },
    /// A rekey or another CREATE_CHILD_SA failed; the old child SA stays.
    ChildRekeyFailed {
        spi_in: u32,
        reason: String,
    },
    /// The IKE SA was rekeyed (§2.18), by the peer or by us: new SPIs, the child SAs carry on.
    IkeSaRekeyed {
        spi_i: u64,
        spi_r: u64,
        reason: String,
    },
    /// Our rekey of the IKE SA failed; the current IKE SA stays (and is retried later).
    IkeRekeyFailed {
        reason: String,
    },
    /// A rekey is planned `after` from now: of child SA `child` (its inbound SPI), or of the
    /// IKE SA when `None` (lifetime minus a random margin).
    RekeyScheduled {
        child: Option<u32>,
        after: Duration,
    },
    /// The peer's IKE_AUTH carried INITIAL_CONTACT (§2.4): any other IKE SA with this peer
    /// and identity is stale and should be deleted by the owner of the SAs.
    InitialContact {
        remote_id: Identity,
    },
    /// A liveness check was answered.
    Alive,
    /// The IKE SA is gone (deleted by the peer, or failed).
    Closed {
        reason: String,
    },
    /// Not from an IKE SA but from the tunnel supervisor: the peer was found dead and
    /// `dpd_action = clear` keeps the tunnel down until traffic for it arrives.
    Cleared {
        reason: String,
    },
}

#[derive(Debug)]
enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    InitAnswered,
    Established,
    Closed,
}

#[derive(Debug)]
struct Pending {
    message_id: u32,
    data: Vec<u8>,
    tries: u32,
    next_at: Instant,
}

/// One IKE SA.
#[derive(Debug)]
pub struct IkeSa {
    role: Role,
    config: Arc<SaConfig>,
    local: SocketAddr,
    remote: SocketAddr,
    natt: bool,
    nat_detected: bool,
    state: State,
    spi_i: u64,
    spi_r: u64,
    ni: Vec<u8>,
    nr: Vec<u8>,
    ke: Option<KeyExchange>,
    cookie: Option<Vec<u8>>,
    chosen: Option<IkeProposal>,
    keys: Option<IkeSaKeys>,
    cipher_out: Option<SaCipher>,
    cipher_in: Option<SaCipher>,
    /// RealMessage1 and RealMessage2 of §2.15.
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    child_spi: u32,
    next_request_id: u32,
    pending: Option<Pending>,
    expected_request_id: u32,
    last_response: Option<(u32, Vec<u8>)>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    rng: SystemRandom,
    /// The child SAs this IKE SA negotiated and that are not deleted.
    children: Vec<ChildRecord>,
    /// Requests waiting for the outstanding one to be answered (window size 1, §2.3).
    ops: VecDeque<Op>,
    /// What the outstanding request of an established SA is for.
    outstanding: Option<Outstanding>,
    /// IKE SAs this one replaced by rekeys (or redundant ones from a collision), kept to
    /// answer or send their deletes (§2.18, §2.8.2).
    retired: Vec<lifecycle::Retired>,
    /// An IKE rekey we answered, switched to once the answer is sent.
    new_ike: Option<Box<child::NewIke>>,
    /// An IKE rekey we answered while our own was outstanding (§2.8.2), kept until ours is
    /// answered and the collision can be resolved.
    held_ike: Option<Box<child::NewIke>>,
    ever_established: bool,
    /// IKE fragmentation (RFC 7383).
    frag: fragment::Fragmentation,
    /// The time of the last input, for timers armed by code without a `now`.
    now: Instant,
    lifetimes: Lifetimes,
    timers: lifecycle::Timers,
    cause: CloseCause,
    /// Child rekeys the peer made while ours of the same SA was outstanding (§2.8.1).
    collisions: Vec<lifecycle::ChildCollision>,
}

/// What we remember of a child SA.
#[derive(Debug, Clone)]
pub(crate) struct ChildRecord {
    pub(crate) spi_in: u32,
    pub(crate) spi_out: u32,
    pub(crate) local_ts: Vec<TrafficSelector>,
    pub(crate) remote_ts: Vec<TrafficSelector>,
    /// Soft and hard lifetime (§2.8); `None` when no lifetime applies or it was rekeyed.
    pub(crate) rekey_at: Option<Instant>,
    pub(crate) expire_at: Option<Instant>,
    /// Replaced by a rekey; waits for its delete.
    pub(crate) replaced: bool,
    /// Why it is being deleted, for the event.
    pub(crate) delete_reason: Option<String>,
    /// Made by the peer's rekey of this SA (its inbound SPI here), not rekeyed by us until the
    /// peer deleted that one — so the peer surely has it — or until the instant given.
    pub(crate) awaiting: Option<(u32, Instant)>,
}

/// A request an established SA still has to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    RekeyChild(u32),
    DeleteChild(u32),
    Liveness,
    DeleteIke,
    RekeyIke,
}

#[derive(Debug)]
enum Outstanding {
    RekeyChild(Box<child::RekeyRequest>),
    DeleteChild(u32),
    Liveness,
    DeleteIke,
    RekeyIke(Box<lifecycle::IkeRekeyRequest>),
}

pub(super) fn random_u64(rng: &dyn SecureRandom) -> u64 {
    let mut b = [0u8; 8];
    let _ = rng.fill(&mut b);
    u64::from_be_bytes(b).max(1)
}

pub(super) fn random_spi(rng: &dyn SecureRandom) -> u32 {
    let mut b = [0u8; 4];
    let _ = rng.fill(&mut b);
    // SPIs 1..=255 are reserved (RFC 4303 §2.1)
    u32::from_be_bytes(b).max(0x100)
}

/// Finds the first payload of each kind an exchange uses.
pub(super) trait Find {
    fn sa(&self) -> Option<&SaPayload>;
    fn ke(&self) -> Option<&KePayload>;
    fn nonce(&self) -> Option<&NoncePayload>;
    fn ts_i(&self) -> Option<&TsPayload>;
    fn ts_r(&self) -> Option<&TsPayload>;
    fn id_i(&self) -> Option<&IdPayload>;
    fn id_r(&self) -> Option<&IdPayload>;
    fn auth(&self) -> Option<&AuthPayload>;
}

macro_rules! finder {
    ($name:ident, $variant:ident, $ty:ty) => {
        fn $name(&self) -> Option<&$ty> {
            self.iter().find_map(|p| match p {
                Payload::$variant(v) => Some(v),
                _ => None,
            })
        }
    };
}

impl Find for [Payload] {
    finder!(sa, Sa, SaPayload);
    finder!(ke, Ke, KePayload);
    finder!(nonce, Nonce, NoncePayload);
    finder!(ts_i, TsInitiator, TsPayload);
    finder!(ts_r, TsResponder, TsPayload);
    finder!(id_i, IdInitiator, IdPayload);
    finder!(id_r, IdResponder, IdPayload);
    finder!(auth, Auth, AuthPayload);
}

pub(super) fn notify(kind: NotifyType, data: Vec<u8>) -> Payload {
    Payload::Notify(NotifyPayload::new(kind, data))
}

pub(super) fn find_notify(payloads: &[Payload], kind: NotifyType) -> Option<&NotifyPayload> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind == kind => Some(n),
        _ => None,
    })
}

pub(super) fn error_notify(payloads: &[Payload]) -> Option<NotifyType> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind.is_error() => Some(n.kind),
        _ => None,
    })
}

pub(super) fn notify_name(kind: NotifyType) -> String {
    kind.name()
        .map(str::to_string)
        .unwrap_or_else(|| format!("notify {}", kind.0))
}

impl IkeSa {
    fn blank(role: Role, config: Arc<SaConfig>, local: SocketAddr, remote: SocketAddr) -> IkeSa {
        let rng = SystemRandom::new();
        IkeSa {
            role,
            config,
            local,
            remote,
            natt: local.port() == NATT_PORT,
            nat_detected: false,
            state: State::InitSent,
            spi_i: 0,
            spi_r: 0,
            ni: Vec::new(),
            nr: Vec::new(),
            ke: None,
            cookie: None,
            chosen: None,
            keys: None,
            cipher_out: None,
            cipher_in: None,
            init_request: Vec::new(),
            init_response: Vec::new(),
            child_spi: random_spi(&rng),
            next_request_id: 0,
            pending: None,
            expected_request_id: 0,
            last_response: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            rng,
            children: Vec::new(),
            ops: VecDeque::new(),
            outstanding: None,
            retired: Vec::new(),
            new_ike: None,
            held_ike: None,
            ever_established: false,
            frag: fragment::Fragmentation::default(),
            now: Instant::now(),
            lifetimes: Lifetimes::default(),
            timers: lifecycle::Timers::default(),
            cause: CloseCause::Failed,
            collisions: Vec::new(),
        }
    }

    /// Starts an IKE SA towards `remote` (port 500), from `local`.
    pub fn initiate(
        config: Arc<SaConfig>,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> IkeSa {
        let mut sa = IkeSa::blank(Role::Initiator, config, local, remote);
        sa.now = now;
        sa.spi_i = random_u64(&sa.rng);
        sa.ni = sa.nonce();
        let group = sa
            .config
            .ike_proposals
            .first()
            .and_then(|p| p.dh.first().copied());
        match group {
            Some(g) => match KeyExchange::generate(g, &sa.rng) {
                Ok(ke) => {
                    sa.ke = Some(ke);
                    sa.send_init(now);
                }
                Err(e) => sa.close(format!("cannot generate a {g:?} key: {e}")),
            },
            None => sa.close("no IKE proposal configured".into()),
        }
        sa
    }

    /// Answers an IKE_SA_INIT request that arrived on `local` from `remote`. The returned SA
    /// may already be closed (after queueing an error answer) when nothing was acceptable.
    pub fn accept(
        config: Arc<SaConfig>,
        datagram: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
    ) -> IkeSa {
        let mut sa = IkeSa::blank(Role::Responder, config, local, remote);
        sa.now = now;
        sa.state = State::InitAnswered;
        sa.respond_init(datagram, now);
        sa
    }

    pub fn role(&self) -> Role {
        self.role
    }
    pub fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }
    /// True once IKE_AUTH completed, even after the SA closed.
    pub fn was_established(&self) -> bool {
        self.ever_established
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Inbound SPIs of the live child SAs (not those replaced by a rekey and being deleted).
    pub fn child_spis(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter(|c| !c.replaced)
            .map(|c| c.spi_in)
            .collect()
    }

    /// Rekeys child SA `spi_in` with CREATE_CHILD_SA (§1.3.3), make-before-break.
    pub fn rekey_child(&mut self, spi_in: u32, now: Instant) {
        self.push_op(Op::RekeyChild(spi_in), now);
    }

    /// Sends a liveness check (an empty INFORMATIONAL, §1.4); an unanswered one closes the SA.
    pub fn check_liveness(&mut self, now: Instant) {
        self.push_op(Op::Liveness, now);
    }

    /// Deletes the IKE SA and its child SAs (§1.4.1).
    pub fn delete(&mut self, now: Instant) {
        self.push_op(Op::DeleteIke, now);
    }

    fn push_op(&mut self, op: Op, now: Instant) {
        self.now = self.now.max(now);
        if !self.ops.contains(&op) {
            self.ops.push_back(op);
        }
        self.start_next_op(now);
    }

    pub(super) fn start_next_op(&mut self, now: Instant) {
        if self.pending.is_some() || !self.is_established() || self.quiet() {
            return;
        }
        while let Some(op) = self.ops.pop_front() {
            if self.send_op(op, now) {
                return;
            }
        }
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`IkeSa::handle_timeout`] wants to be called: a retransmission, a rekey or
    /// expiry, or a liveness check.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.is_closed() {
            return None;
        }
        let retransmit = self.pending.as_ref().map(|p| p.next_at);
        [retransmit, self.lifecycle_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Retransmits the outstanding request or gives up (§2.1); runs lifetime and liveness
    /// timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.is_closed() {
            return;
        }
        self.lifecycle_timers(now);
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if now < p.next_at {
            return;
        }
        if p.tries >= self.config.retransmit_tries {
            let tries = p.tries;
            self.pending = None;
            self.cause = CloseCause::PeerSilent;
            self.close(format!(
                "peer {} did not answer after {tries} transmissions",
                self.remote
            ));
            return;
        }
        p.tries += 1;
        p.next_at = now + self.config.retransmit_timeout * 2u32.saturating_pow(p.tries - 1);
        let data = p.data.clone();
        self.queue(data);
    }

    /// Takes one IKE datagram (without the non-ESP marker) from `from`.
    pub fn handle(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        self.now = self.now.max(now);
        if self.is_closed() {
            return;
        }
        // Garbage is dropped without an answer (§2.21).
        let Ok(Message { header, .. }) = Message::parse(datagram) else {
            return;
        };
        if let Some(i) = self
            .retired
            .iter()
            .position(|o| o.spi_i == header.initiator_spi && o.spi_r == header.responder_spi)
        {
            return self.handle_retired(i, header, datagram, from, now);
        }
        // A retransmitted IKE_SA_INIT request still carries a zero responder SPI.
        let init_retransmit = header.exchange_type == ExchangeType::IKE_SA_INIT
            && !header.flags.response
            && header.responder_spi == 0;
        if header.initiator_spi != self.spi_i
            || (self.spi_r != 0 && header.responder_spi != self.spi_r && !init_retransmit)
        {
            return;
        }
        if header.next_payload == PayloadType::SKF {
            return self.handle_fragment(header, datagram, from, now);
        }
        if header.flags.response {
            self.handle_response(header, datagram, from, now);
        } else {
            self.handle_request(header, datagram, from, now);
        }
        self.arm_timers();
    }

    pub(super) fn nonce(&self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        let _ = self.rng.fill(&mut n);
        n
    }

    pub(super) fn close(&mut self, reason: String) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.pending = None;
            self.timers = lifecycle::Timers::default();
            self.events.push_back(Event::Closed { reason });
        }
    }

    pub(super) fn queue(&mut self, data: Vec<u8>) {
        if let Some(fragments) = self.fragments_for(&data) {
            return fragments.into_iter().for_each(|f| self.queue(f));
        }
        let (local_port, data) = if self.natt {
            let mut d = Vec::with_capacity(data.len() + 4);
            d.extend_from_slice(&crate::wire::NON_ESP_MARKER);
            d.extend_from_slice(&data);
            (NATT_PORT, d)
        } else {
            (IKE_PORT, data)
        };
        self.transmits.push_back(Transmit {
            local_port,
            remote: self.remote,
            data,
        });
    }

    pub(super) fn send_request(&mut self, data: Vec<u8>, message_id: u32, now: Instant) {
        self.pending = Some(Pending {
            message_id,
            data: data.clone(),
            tries: 1,
            next_at: now + self.config.retransmit_timeout,
        });
        self.queue(data);
    }

    pub(super) fn header(
        &self,
        exchange: ExchangeType,
        message_id: u32,
        response: bool,
    ) -> HeaderRepr {
        HeaderRepr {
            initiator_spi: self.spi_i,
            responder_spi: self.spi_r,
            next_payload: PayloadType::NONE,
            exchange_type: exchange,
            flags: Flags {
                initiator: self.role == Role::Initiator,
                version: false,
                response,
            },
            message_id,
            length: 0,
        }
    }

    pub(super) fn seal(&self, header: &HeaderRepr, inner: &[Payload]) -> Option<Vec<u8>> {
        protect::seal(self.cipher_out.as_ref()?, header, inner, &self.rng).ok()
    }

    pub(super) fn child_keys(&self, proposal: &EspProposal) -> Result<ChildSaKeys, String> {
        let keys = self.keys.as_ref().ok_or("no IKE SA keys")?;
        let suite = ChildSuite::new(proposal.encryption[0], proposal.integrity.first().copied())
            .map_err(|e| e.to_string())?;
        ChildSaKeys::derive(keys, suite, None, &self.ni, &self.nr).map_err(|e| e.to_string())
    }

    fn handle_response(
        &mut self,
        header: HeaderRepr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let Some(pending) = self.pending.as_ref() else {
            return;
        };
        if header.message_id != pending.message_id {
            return; // a late or forged answer (§2.2)
        }
        match self.state {
            State::InitSent if header.exchange_type == ExchangeType::IKE_SA_INIT => {
                self.init_response_received(header, datagram, from, now)
            }
            State::AuthSent if header.exchange_type == ExchangeType::IKE_AUTH => {
                self.auth_response_received(datagram, from)
            }
            State::Established => {
                let Some(Ok((_, payloads))) =
                    self.cipher_in.as_ref().map(|c| protect::open(c, datagram))
                else {
                    return;
                };
                self.pending = None;
                self.heard(now);
                self.timers.quiet_until = None;
                self.exchange_answered(&payloads, now);
            }
            _ => {}
        }
    }

    fn handle_request(
        &mut self,
        header: HeaderRepr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        // §2.2: a retransmitted request gets the same answer again
        if let Some((id, data)) = &self.last_response {
            if header.message_id == *id {
                let data = data.clone();
                if from.port() == NATT_PORT && !self.natt {
                    self.natt = true;
                    self.remote = from;
                }
                return self.queue(data);
            }
        }
        if header.message_id != self.expected_request_id {
            return;
        }
        let Some(cipher) = self.cipher_in.as_ref() else {
            return;
        };
        let Ok((_, payloads)) = protect::open(cipher, datagram) else {
            return;
        };
        self.heard(now);
        self.timers.quiet_until = None; // the peer uses this SA: it has installed it
        if header.exchange_type == ExchangeType::IKE_AUTH
            && find_notify(&payloads, NotifyType::INITIAL_CONTACT).is_some()
        {
            // §2.4: the peer forgot every other IKE SA it had with us; the owner deletes them
            self.events.push_back(Event::InitialContact {
                remote_id: self.config.remote_id.clone(),
            });
        }
        // §2.23: answer to where an authenticated request came from
        if from.port() == NATT_PORT {
            self.natt = true;
            self.local.set_port(NATT_PORT);
        }
        self.remote = from;
        let response = match (&self.state, header.exchange_type) {
            (State::InitAnswered, ExchangeType::IKE_AUTH) => self.answer_auth(&payloads),
            (State::Established, ExchangeType::INFORMATIONAL) => {
                self.answer_informational(&payloads)
            }
            (State::Established, ExchangeType::CREATE_CHILD_SA) => {
                self.answer_create_child(&payloads)
            }
            _ => return,
        };
        let h = self.header(header.exchange_type, header.message_id, true);
        if let Some(data) = self.seal(&h, &response) {
            self.last_response = Some((header.message_id, data.clone()));
            self.expected_request_id = header.message_id.wrapping_add(1);
            self.queue(data);
        }
        // an IKE SA rekey takes effect once its answer is on its way (§2.18)
        self.switch_to_rekeyed_ike();
        self.start_next_op(now);
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Initiator => "initiator",
            Role::Responder => "responder",
        })
    }
}

/// The D-H group used by a proposal list's first proposal, for logs.
pub fn first_group(p: &[IkeProposal]) -> Option<DhGroup> {
    p.first().and_then(|p| p.dh.first().copied())
}
