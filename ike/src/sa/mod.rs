//! The IKE SA as a sans-IO state machine (RFC 7296), in the style of quinn-proto: datagrams and
//! `now` go in through [`IkeSa::handle`] and [`IkeSa::handle_timeout`]; datagrams to send,
//! the next timer and events come out of [`IkeSa::poll_transmit`], [`IkeSa::poll_timeout`] and
//! [`IkeSa::poll_event`]. No sockets and no clock reads, so exchanges, retransmission and
//! failures are testable against a peer of our own in microseconds.
//!
//! Done: IKE_SA_INIT (with COOKIE and INVALID_KE_PAYLOAD retries as initiator), IKE_AUTH with a
//! pre-shared key (§2.15) and the first CHILD_SA with traffic selector narrowing (§2.9), as
//! initiator and as responder; NAT detection (§2.23) and the move to UDP 4500; retransmission
//! with exponential backoff (§2.1) and duplicate requests answered from the last response;
//! INFORMATIONAL requests from the peer (liveness checks, deletes).
//!
//! Not yet: certificate authentication (RFC 7427), CREATE_CHILD_SA (rekey of child and IKE
//! SAs), our own liveness checks, IKE fragmentation (RFC 7383), cookies as a responder.

mod negotiate;
mod protect;
#[cfg(test)]
mod tests;

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
    /// The peer deleted a child SA (its outbound SPI, i.e. our `spi_out`).
    ChildSaDeleted {
        spi_out: u32,
    },
    /// The IKE SA is gone (deleted by the peer, or failed).
    Closed {
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
}

fn random_u64(rng: &dyn SecureRandom) -> u64 {
    let mut b = [0u8; 8];
    let _ = rng.fill(&mut b);
    u64::from_be_bytes(b).max(1)
}

fn random_spi(rng: &dyn SecureRandom) -> u32 {
    let mut b = [0u8; 4];
    let _ = rng.fill(&mut b);
    // SPIs 1..=255 are reserved (RFC 4303 §2.1)
    u32::from_be_bytes(b).max(0x100)
}

fn notify(kind: NotifyType, data: Vec<u8>) -> Payload {
    Payload::Notify(NotifyPayload::new(kind, data))
}

fn find_notify(payloads: &[Payload], kind: NotifyType) -> Option<&NotifyPayload> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind == kind => Some(n),
        _ => None,
    })
}

fn error_notify(payloads: &[Payload]) -> Option<NotifyType> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind.is_error() => Some(n.kind),
        _ => None,
    })
}

fn notify_name(kind: NotifyType) -> String {
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
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`IkeSa::handle_timeout`] wants to be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.next_at)
    }

    /// Retransmits the outstanding request or gives up (§2.1).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(p) = self.pending.as_mut() else {
            return;
        };
        if now < p.next_at {
            return;
        }
        if p.tries >= self.config.retransmit_tries {
            let tries = p.tries;
            self.pending = None;
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
        if self.is_closed() {
            return;
        }
        let header = match Message::parse(datagram) {
            Ok(m) => m.header,
            Err(_) if self.keys.is_some() => {
                // Encrypted messages with unknown inner payload types still parse; anything
                // else is garbage: counted by the driver, dropped here (§2.21).
                return;
            }
            Err(_) => return,
        };
        // A retransmitted IKE_SA_INIT request still carries a zero responder SPI.
        let init_retransmit = header.exchange_type == ExchangeType::IKE_SA_INIT
            && !header.flags.response
            && header.responder_spi == 0;
        if header.initiator_spi != self.spi_i
            || (self.spi_r != 0 && header.responder_spi != self.spi_r && !init_retransmit)
        {
            return;
        }
        if header.flags.response {
            self.handle_response(header, datagram, from, now);
        } else {
            self.handle_request(header, datagram, from, now);
        }
    }

    // ---- helpers ---------------------------------------------------------------------------

    fn nonce(&self) -> Vec<u8> {
        let mut n = vec![0u8; 32];
        let _ = self.rng.fill(&mut n);
        n
    }

    fn close(&mut self, reason: String) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.pending = None;
            self.events.push_back(Event::Closed { reason });
        }
    }

    fn queue(&mut self, data: Vec<u8>) {
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

    fn send_request(&mut self, data: Vec<u8>, message_id: u32, now: Instant) {
        self.pending = Some(Pending {
            message_id,
            data: data.clone(),
            tries: 1,
            next_at: now + self.config.retransmit_timeout,
        });
        self.queue(data);
    }

    fn header(&self, exchange: ExchangeType, message_id: u32, response: bool) -> HeaderRepr {
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

    fn nat_notifies(&self) -> [Payload; 2] {
        [
            notify(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                negotiate::nat_hash(self.spi_i, self.spi_r, self.local),
            ),
            notify(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                negotiate::nat_hash(self.spi_i, self.spi_r, self.remote),
            ),
        ]
    }

    /// Compares the peer's NAT detection hashes with the addresses we see (§2.23).
    fn detect_nat(&mut self, payloads: &[Payload], from: SocketAddr) {
        let theirs_src = find_notify(payloads, NotifyType::NAT_DETECTION_SOURCE_IP);
        let theirs_dst = find_notify(payloads, NotifyType::NAT_DETECTION_DESTINATION_IP);
        if let (Some(src), Some(dst)) = (theirs_src, theirs_dst) {
            let peer_behind_nat = src.data != negotiate::nat_hash(self.spi_i, self.spi_r, from);
            let we_behind_nat = dst.data != negotiate::nat_hash(self.spi_i, self.spi_r, self.local);
            self.nat_detected = peer_behind_nat || we_behind_nat;
        }
    }

    fn derive_keys(&mut self, chosen: &IkeProposal, peer_ke: &[u8]) -> Result<(), String> {
        let ke = self.ke.as_ref().ok_or("no key exchange")?;
        let g_ir = ke
            .compute(peer_ke)
            .map_err(|e| format!("peer's KE payload: {e}"))?;
        let suite = IkeSuite::new(
            chosen.encryption[0],
            chosen.integrity.first().copied(),
            chosen.prf[0],
        )
        .map_err(|e| e.to_string())?;
        let seed = skeyseed(chosen.prf[0], &self.ni, &self.nr, &g_ir);
        let keys = IkeSaKeys::derive(
            suite,
            &seed,
            &self.ni,
            &self.nr,
            &self.spi_i.to_be_bytes(),
            &self.spi_r.to_be_bytes(),
        )
        .map_err(|e| e.to_string())?;
        let (out, inn) = match self.role {
            Role::Initiator => (keys.initiator_cipher(), keys.responder_cipher()),
            Role::Responder => (keys.responder_cipher(), keys.initiator_cipher()),
        };
        self.cipher_out = Some(out.map_err(|e| e.to_string())?);
        self.cipher_in = Some(inn.map_err(|e| e.to_string())?);
        self.keys = Some(keys);
        self.chosen = Some(chosen.clone());
        self.ke = None; // the private value is no longer needed (zeroized on drop)
        Ok(())
    }

    /// Our AUTH value, or the value we expect from the peer.
    fn auth_value(&self, ours: bool, id: &IdPayload) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let keys = self.keys.as_ref()?;
        let prf = self.chosen.as_ref()?.prf[0];
        let from_initiator = ours == (self.role == Role::Initiator);
        let (real, nonce, sk_p) = if from_initiator {
            (&self.init_request, &self.nr, &keys.sk_pi)
        } else {
            (&self.init_response, &self.ni, &keys.sk_pr)
        };
        Some(negotiate::psk_auth(
            prf,
            self.config.psk.as_bytes(),
            real,
            nonce,
            sk_p.as_bytes(),
            &id.auth_octets(),
        ))
    }

    fn seal(&self, header: &HeaderRepr, inner: &[Payload]) -> Option<Vec<u8>> {
        protect::seal(self.cipher_out.as_ref()?, header, inner, &self.rng).ok()
    }

    fn child_keys(&self, proposal: &EspProposal) -> Result<ChildSaKeys, String> {
        let keys = self.keys.as_ref().ok_or("no IKE SA keys")?;
        let suite = ChildSuite::new(proposal.encryption[0], proposal.integrity.first().copied())
            .map_err(|e| e.to_string())?;
        ChildSaKeys::derive(keys, suite, None, &self.ni, &self.nr).map_err(|e| e.to_string())
    }

    // ---- initiator -------------------------------------------------------------------------

    fn send_init(&mut self, now: Instant) {
        let Some(ke) = self.ke.as_ref() else { return };
        let proposals = self
            .config
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| Proposal::from_ike(u8::try_from(i + 1).unwrap_or(u8::MAX), &[], p))
            .collect();
        let mut payloads = Vec::new();
        if let Some(cookie) = &self.cookie {
            // §2.6: the cookie goes first, everything else unchanged
            payloads.push(notify(NotifyType::COOKIE, cookie.clone()));
        }
        payloads.push(Payload::Sa(SaPayload { proposals }));
        payloads.push(Payload::Ke(KePayload::new(
            ke.group(),
            ke.public_value().to_vec(),
        )));
        payloads.push(Payload::Nonce(NoncePayload {
            data: self.ni.clone(),
        }));
        payloads.extend(self.nat_notifies());
        match MessageBuilder::new(self.header(ExchangeType::IKE_SA_INIT, 0, false))
            .payloads(payloads)
            .build()
        {
            Ok(data) => {
                self.init_request = data.clone();
                self.state = State::InitSent;
                self.send_request(data, 0, now);
                self.next_request_id = 1;
            }
            Err(e) => self.close(format!("cannot build IKE_SA_INIT: {e}")),
        }
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
            State::Established
                if self
                    .cipher_in
                    .as_ref()
                    .is_some_and(|c| protect::open(c, datagram).is_ok()) =>
            {
                self.pending = None;
            }
            _ => {}
        }
    }

    fn init_response_received(
        &mut self,
        header: HeaderRepr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let Ok(msg) = Message::parse(datagram) else {
            return;
        };
        if let Some(cookie) = find_notify(&msg.payloads, NotifyType::COOKIE) {
            if self.cookie.is_some() && self.cookie.as_deref() == Some(&cookie.data[..]) {
                return self.close("peer keeps asking for the same cookie".into());
            }
            self.cookie = Some(cookie.data.clone());
            self.pending = None;
            return self.send_init(now);
        }
        if let Some(n) = find_notify(&msg.payloads, NotifyType::INVALID_KE_PAYLOAD) {
            let wanted = n.invalid_ke_group();
            let ours = self
                .config
                .ike_proposals
                .iter()
                .flat_map(|p| p.dh.iter().copied())
                .find(|g| Some(g.transform_id()) == wanted);
            let current = self.ke.as_ref().map(KeyExchange::group);
            return match ours {
                Some(g) if Some(g) != current => match KeyExchange::generate(g, &self.rng) {
                    Ok(ke) => {
                        // §1.2: retry with the group the responder asked for
                        self.ke = Some(ke);
                        self.pending = None;
                        self.send_init(now)
                    }
                    Err(e) => self.close(format!("cannot generate a {g:?} key: {e}")),
                },
                _ => self.close(format!(
                    "peer wants D-H group {wanted:?}, which we do not offer"
                )),
            };
        }
        if let Some(err) = error_notify(&msg.payloads) {
            let offered: Vec<String> = self
                .config
                .ike_proposals
                .iter()
                .map(|p| p.to_string())
                .collect();
            return self.close(format!(
                "peer refused IKE_SA_INIT: {} (we offered {})",
                notify_name(err),
                offered.join(", ")
            ));
        }
        let sa = msg.payloads.iter().find_map(|p| {
            if let Payload::Sa(s) = p {
                Some(s)
            } else {
                None
            }
        });
        let ke = msg.payloads.iter().find_map(|p| {
            if let Payload::Ke(k) = p {
                Some(k)
            } else {
                None
            }
        });
        let nonce = msg.payloads.iter().find_map(|p| {
            if let Payload::Nonce(n) = p {
                Some(n)
            } else {
                None
            }
        });
        let (Some(sa), Some(ke), Some(nonce)) = (sa, ke, nonce) else {
            return self.close("IKE_SA_INIT response lacks SA, KE or Nonce".into());
        };
        let chosen = match sa.proposals.as_slice() {
            [one] => one.to_ike().ok(),
            _ => None,
        };
        let Some(chosen) =
            chosen.filter(|c| negotiate::ike_acceptable(c, &self.config.ike_proposals))
        else {
            return self.close("peer chose an IKE proposal we did not offer".into());
        };
        if Some(chosen.dh[0]) != self.ke.as_ref().map(KeyExchange::group)
            || Some(chosen.dh[0].transform_id()) != Some(ke.group)
        {
            return self.close("peer's KE payload does not match the chosen group".into());
        }
        if header.responder_spi == 0 {
            return self.close("peer sent a zero responder SPI".into());
        }
        self.spi_r = header.responder_spi;
        self.nr = nonce.data.clone();
        self.init_response = datagram.to_vec();
        self.detect_nat(&msg.payloads, from);
        if let Err(e) = self.derive_keys(&chosen, &ke.data) {
            return self.close(e);
        }
        self.pending = None;
        if self.nat_detected || self.natt {
            // §2.23: continue on port 4500 once a NAT is seen
            self.natt = true;
            self.remote.set_port(NATT_PORT);
            self.local.set_port(NATT_PORT);
        }
        self.send_auth(now);
    }

    fn send_auth(&mut self, now: Instant) {
        let id = match IdPayload::from_identity(&self.config.local_id) {
            Ok(id) => id,
            Err(e) => return self.close(format!("local identity: {e}")),
        };
        let Some(auth) = self.auth_value(true, &id) else {
            return self.close("no keys".into());
        };
        let proposals = self
            .config
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Proposal::from_esp(
                    u8::try_from(i + 1).unwrap_or(u8::MAX),
                    self.child_spi,
                    &EspProposal {
                        dh: vec![],
                        ..p.clone()
                    },
                )
            })
            .collect();
        let inner = vec![
            Payload::IdInitiator(id),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: auth.to_vec(),
            }),
            notify(NotifyType::INITIAL_CONTACT, vec![]),
            Payload::Sa(SaPayload { proposals }),
            Payload::TsInitiator(TsPayload::new(self.config.local_ts.clone())),
            Payload::TsResponder(TsPayload::new(self.config.remote_ts.clone())),
        ];
        let header = self.header(ExchangeType::IKE_AUTH, 1, false);
        match self.seal(&header, &inner) {
            Some(data) => {
                self.state = State::AuthSent;
                self.send_request(data, 1, now);
                self.next_request_id = 2;
            }
            None => self.close("cannot encrypt IKE_AUTH".into()),
        }
    }

    fn auth_response_received(&mut self, datagram: &[u8], from: SocketAddr) {
        let Some(cipher) = self.cipher_in.as_ref() else {
            return;
        };
        let Ok((_, payloads)) = protect::open(cipher, datagram) else {
            return;
        };
        self.pending = None;
        if find_notify(&payloads, NotifyType::AUTHENTICATION_FAILED).is_some() {
            return self.close(format!(
                "peer refused our authentication (is the PSK for {} the same on both ends?)",
                self.config.local_id
            ));
        }
        let id = payloads.iter().find_map(|p| {
            if let Payload::IdResponder(i) = p {
                Some(i)
            } else {
                None
            }
        });
        let auth = payloads.iter().find_map(|p| {
            if let Payload::Auth(a) = p {
                Some(a)
            } else {
                None
            }
        });
        let (Some(id), Some(auth)) = (id, auth) else {
            let why = error_notify(&payloads)
                .map(notify_name)
                .unwrap_or_else(|| "no IDr or AUTH".into());
            return self.close(format!("IKE_AUTH failed: {why}"));
        };
        match id.to_identity() {
            Ok(peer) if peer == self.config.remote_id => {}
            Ok(peer) => {
                return self.close(format!(
                    "peer identifies as {peer}, expected {}",
                    self.config.remote_id
                ))
            }
            Err(e) => return self.close(format!("peer identity: {e}")),
        }
        let expected = self.auth_value(false, id);
        let ok = auth.method == AuthMethod::SHARED_KEY_MIC
            && expected
                .is_some_and(|e| subtle::ConstantTimeEq::ct_eq(&e[..], &auth.data[..]).into());
        if !ok {
            return self.close(format!(
                "peer {} failed to prove the pre-shared key",
                self.config.remote_id
            ));
        }
        self.remote = from;
        self.state = State::Established;
        self.expected_request_id = 0;
        self.established_event();
        self.child_from_auth_response(&payloads);
    }

    fn established_event(&mut self) {
        if let Some(p) = self.chosen.clone() {
            self.events.push_back(Event::IkeSaEstablished {
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                proposal: p,
                nat_detected: self.nat_detected,
                remote: self.remote,
            });
        }
    }

    fn child_from_auth_response(&mut self, payloads: &[Payload]) {
        if let Some(err) = error_notify(payloads) {
            return self.events.push_back(Event::ChildSaFailed {
                reason: format!("peer refused the child SA: {}", notify_name(err)),
            });
        }
        let sa = payloads.iter().find_map(|p| {
            if let Payload::Sa(s) = p {
                Some(s)
            } else {
                None
            }
        });
        let tsi = payloads.iter().find_map(|p| {
            if let Payload::TsInitiator(t) = p {
                Some(t)
            } else {
                None
            }
        });
        let tsr = payloads.iter().find_map(|p| {
            if let Payload::TsResponder(t) = p {
                Some(t)
            } else {
                None
            }
        });
        let (Some(sa), Some(tsi), Some(tsr)) = (sa, tsi, tsr) else {
            return self.events.push_back(Event::ChildSaFailed {
                reason: "IKE_AUTH response lacks SA or TS".into(),
            });
        };
        let chosen = match sa.proposals.as_slice() {
            [one] => one.to_esp().ok().zip(one.child_spi()),
            _ => None,
        };
        let Some((proposal, spi_out)) =
            chosen.filter(|(c, _)| negotiate::esp_acceptable(c, &self.config.esp_proposals))
        else {
            return self.events.push_back(Event::ChildSaFailed {
                reason: "peer chose an ESP proposal we did not offer".into(),
            });
        };
        if !negotiate::within(&tsi.selectors, &self.config.local_ts)
            || !negotiate::within(&tsr.selectors, &self.config.remote_ts)
        {
            return self.events.push_back(Event::ChildSaFailed {
                reason: "peer's traffic selectors are not within ours".into(),
            });
        }
        match self.child_keys(&proposal) {
            Ok(keys) => self
                .events
                .push_back(Event::ChildSaEstablished(Box::new(ChildSa {
                    spi_in: self.child_spi,
                    spi_out,
                    proposal,
                    role: self.role,
                    keys,
                    local_ts: tsi.selectors.clone(),
                    remote_ts: tsr.selectors.clone(),
                    udp_encap: self.natt,
                }))),
            Err(e) => self.events.push_back(Event::ChildSaFailed { reason: e }),
        }
    }

    // ---- responder -------------------------------------------------------------------------

    fn respond_init(&mut self, datagram: &[u8], _now: Instant) {
        let Ok(msg) = Message::parse(datagram) else {
            return self.close("malformed IKE_SA_INIT".into());
        };
        let h = msg.header;
        if h.exchange_type != ExchangeType::IKE_SA_INIT
            || h.flags.response
            || h.message_id != 0
            || h.responder_spi != 0
        {
            return self.close("not an IKE_SA_INIT request".into());
        }
        self.spi_i = h.initiator_spi;
        self.expected_request_id = 1;
        let sa = msg.payloads.iter().find_map(|p| {
            if let Payload::Sa(s) = p {
                Some(s)
            } else {
                None
            }
        });
        let ke = msg.payloads.iter().find_map(|p| {
            if let Payload::Ke(k) = p {
                Some(k)
            } else {
                None
            }
        });
        let nonce = msg.payloads.iter().find_map(|p| {
            if let Payload::Nonce(n) = p {
                Some(n)
            } else {
                None
            }
        });
        let (Some(sa), Some(ke), Some(nonce)) = (sa, ke, nonce) else {
            self.answer_stateless(&h, notify(NotifyType::INVALID_SYNTAX, vec![]));
            return self.close("IKE_SA_INIT request lacks SA, KE or Nonce".into());
        };
        let Some((number, mut chosen, groups)) =
            negotiate::choose_ike(&sa.proposals, &self.config.ike_proposals)
        else {
            let theirs: Vec<String> = sa
                .proposals
                .iter()
                .filter_map(|p| p.to_ike().ok())
                .map(|p| p.to_string())
                .collect();
            let ours: Vec<String> = self
                .config
                .ike_proposals
                .iter()
                .map(|p| p.to_string())
                .collect();
            self.answer_stateless(&h, notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![]));
            return self.close(format!(
                "no IKE proposal in common: peer offered {}; we accept {}",
                theirs.join(", "),
                ours.join(", ")
            ));
        };
        let Some(group) = groups
            .iter()
            .copied()
            .find(|g| g.transform_id() == ke.group)
        else {
            // §1.2: tell the initiator which group we want
            self.answer_stateless(
                &h,
                Payload::Notify(NotifyPayload::invalid_ke(groups[0].transform_id())),
            );
            return self.close(format!(
                "peer's KE used group {}, asked for {:?}",
                ke.group, groups[0]
            ));
        };
        chosen.dh = vec![group];
        let kex = match KeyExchange::generate(group, &self.rng) {
            Ok(k) => k,
            Err(e) => return self.close(format!("cannot generate a {group:?} key: {e}")),
        };
        self.ni = nonce.data.clone();
        self.nr = self.nonce();
        self.spi_r = random_u64(&self.rng);
        self.init_request = datagram.to_vec();
        self.detect_nat(&msg.payloads, self.remote);
        let our_ke = kex.public_value().to_vec();
        self.ke = Some(kex);
        if let Err(e) = self.derive_keys(&chosen, &ke.data) {
            self.answer_stateless(&h, notify(NotifyType::INVALID_SYNTAX, vec![]));
            return self.close(e);
        }
        let mut proposal = Proposal::from_ike(number, &[], &chosen);
        proposal.number = number;
        let mut payloads = vec![
            Payload::Sa(SaPayload {
                proposals: vec![proposal],
            }),
            Payload::Ke(KePayload::new(group, our_ke)),
            Payload::Nonce(NoncePayload {
                data: self.nr.clone(),
            }),
        ];
        payloads.extend(self.nat_notifies());
        match MessageBuilder::new(self.header(ExchangeType::IKE_SA_INIT, 0, true))
            .payloads(payloads)
            .build()
        {
            Ok(data) => {
                self.init_response = data.clone();
                self.last_response = Some((0, data.clone()));
                self.queue(data);
            }
            Err(e) => self.close(format!("cannot build IKE_SA_INIT response: {e}")),
        }
    }

    /// An unencrypted error answer to IKE_SA_INIT, responder SPI zero (§2.6, §1.2).
    fn answer_stateless(&mut self, request: &HeaderRepr, payload: Payload) {
        let header = HeaderRepr {
            initiator_spi: request.initiator_spi,
            responder_spi: 0,
            next_payload: PayloadType::NONE,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags {
                initiator: false,
                version: false,
                response: true,
            },
            message_id: 0,
            length: 0,
        };
        if let Ok(data) = MessageBuilder::new(header).payload(payload).build() {
            self.queue(data);
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
                vec![notify(NotifyType::NO_ADDITIONAL_SAS, vec![])]
            }
            _ => return,
        };
        let h = self.header(header.exchange_type, header.message_id, true);
        if let Some(data) = self.seal(&h, &response) {
            self.last_response = Some((header.message_id, data.clone()));
            self.expected_request_id = header.message_id.wrapping_add(1);
            self.queue(data);
        }
        let _ = now;
    }

    fn answer_auth(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        let id = payloads.iter().find_map(|p| {
            if let Payload::IdInitiator(i) = p {
                Some(i)
            } else {
                None
            }
        });
        let auth = payloads.iter().find_map(|p| {
            if let Payload::Auth(a) = p {
                Some(a)
            } else {
                None
            }
        });
        let (Some(id), Some(auth)) = (id, auth) else {
            self.close("IKE_AUTH request lacks IDi or AUTH".into());
            return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
        };
        match id.to_identity() {
            Ok(peer) if peer == self.config.remote_id => {}
            Ok(peer) => {
                self.close(format!(
                    "peer identifies as {peer}, expected {}",
                    self.config.remote_id
                ));
                return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
            }
            Err(e) => {
                self.close(format!("peer identity: {e}"));
                return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
            }
        }
        let expected = self.auth_value(false, id);
        let ok = auth.method == AuthMethod::SHARED_KEY_MIC
            && expected
                .is_some_and(|e| subtle::ConstantTimeEq::ct_eq(&e[..], &auth.data[..]).into());
        if !ok {
            self.close(format!(
                "peer {} failed to prove the pre-shared key",
                self.config.remote_id
            ));
            return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
        }
        let our_id = match IdPayload::from_identity(&self.config.local_id) {
            Ok(i) => i,
            Err(e) => {
                self.close(format!("local identity: {e}"));
                return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
            }
        };
        let Some(our_auth) = self.auth_value(true, &our_id) else {
            return vec![];
        };
        self.state = State::Established;
        self.established_event();
        let mut out = vec![
            Payload::IdResponder(our_id),
            Payload::Auth(AuthPayload {
                method: AuthMethod::SHARED_KEY_MIC,
                data: our_auth.to_vec(),
            }),
        ];
        out.extend(self.answer_child(payloads));
        out
    }

    /// The first child SA, carried in IKE_AUTH (§1.2). A refusal leaves the IKE SA up.
    fn answer_child(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        let sa = payloads.iter().find_map(|p| {
            if let Payload::Sa(s) = p {
                Some(s)
            } else {
                None
            }
        });
        let tsi = payloads.iter().find_map(|p| {
            if let Payload::TsInitiator(t) = p {
                Some(t)
            } else {
                None
            }
        });
        let tsr = payloads.iter().find_map(|p| {
            if let Payload::TsResponder(t) = p {
                Some(t)
            } else {
                None
            }
        });
        let (Some(sa), Some(tsi), Some(tsr)) = (sa, tsi, tsr) else {
            self.events.push_back(Event::ChildSaFailed {
                reason: "IKE_AUTH without a child SA".into(),
            });
            return vec![];
        };
        let Some((number, spi_out, proposal)) =
            negotiate::choose_esp(&sa.proposals, &self.config.esp_proposals, None)
        else {
            let theirs: Vec<String> = sa
                .proposals
                .iter()
                .filter_map(|p| p.to_esp().ok())
                .map(|p| p.to_string())
                .collect();
            self.events.push_back(Event::ChildSaFailed {
                reason: format!(
                    "no ESP proposal in common: peer offered {}",
                    theirs.join(", ")
                ),
            });
            return vec![notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![])];
        };
        // the peer's initiator side is our remote side
        let ts_i = negotiate::narrow(&tsi.selectors, &self.config.remote_ts);
        let ts_r = negotiate::narrow(&tsr.selectors, &self.config.local_ts);
        if ts_i.is_empty() || ts_r.is_empty() {
            self.events.push_back(Event::ChildSaFailed {
                reason: "peer's traffic selectors do not overlap ours".into(),
            });
            return vec![notify(NotifyType::TS_UNACCEPTABLE, vec![])];
        }
        let keys = match self.child_keys(&proposal) {
            Ok(k) => k,
            Err(e) => {
                self.events.push_back(Event::ChildSaFailed { reason: e });
                return vec![notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![])];
            }
        };
        let mut p = Proposal::from_esp(number, self.child_spi, &proposal);
        p.number = number;
        self.events
            .push_back(Event::ChildSaEstablished(Box::new(ChildSa {
                spi_in: self.child_spi,
                spi_out,
                proposal,
                role: self.role,
                keys,
                local_ts: ts_r.clone(),
                remote_ts: ts_i.clone(),
                udp_encap: self.natt,
            })));
        vec![
            Payload::Sa(SaPayload { proposals: vec![p] }),
            Payload::TsInitiator(TsPayload::new(ts_i)),
            Payload::TsResponder(TsPayload::new(ts_r)),
        ]
    }

    /// Liveness checks get an empty answer; deletes are confirmed (§1.4.1).
    fn answer_informational(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        let mut out = Vec::new();
        for p in payloads {
            if let Payload::Delete(d) = p {
                match d {
                    DeletePayload::Ike => {
                        self.close("peer deleted the IKE SA".into());
                        return vec![];
                    }
                    DeletePayload::Child { protocol, spis } if *protocol == ProtocolId::ESP => {
                        for spi in spis {
                            self.events
                                .push_back(Event::ChildSaDeleted { spi_out: *spi });
                        }
                        out.push(Payload::Delete(DeletePayload::Child {
                            protocol: *protocol,
                            spis: vec![self.child_spi],
                        }));
                    }
                    DeletePayload::Child { .. } => {}
                }
            }
        }
        out
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
