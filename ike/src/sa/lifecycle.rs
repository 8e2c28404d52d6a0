//! The life of an IKE SA after IKE_AUTH (RFC 7296 §2.8): lifetimes by time with jitter (and
//! the ESP byte and packet limits the data plane enforces), our own rekey of the IKE SA
//! (§1.3.2, §2.18), simultaneous rekeys resolved by nonce (§2.8.1, §2.8.2) and the other
//! exchange collisions of §2.25, liveness checks when the peer has been quiet (§1.4), and the
//! IKE SAs a rekey retired, kept until their delete is done.

use super::*;
use crate::crypto::keys::rekey_skeyseed;
use crate::esp::EspLimits;

/// How long SAs live and when the peer is checked. `None` disables a limit. A rekey starts at
/// the lifetime minus a margin of 10 % plus up to another 10 % at random (so both ends rarely
/// start together); the SA expires at the lifetime itself (the hard limit): an IKE SA closes, a
/// child SA is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    pub ike: Option<Duration>,
    pub child: Option<Duration>,
    /// Octets an outbound child SA may carry (soft limit with the same margin).
    pub child_bytes: Option<u64>,
    /// Packets an outbound child SA may carry; below the sequence space, which the ESP engine
    /// guards anyway (RFC 4303 §3.3.3: the counter never cycles).
    pub child_packets: Option<u64>,
    /// A liveness check once nothing was heard from the peer for this long.
    pub dpd: Option<Duration>,
}

/// Why an IKE SA closed, for the owner's `dpd_action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCause {
    /// A request went unanswered up to the retransmission limit (§2.4): the peer is dead.
    PeerSilent,
    /// The peer deleted it.
    DeletedByPeer,
    /// We deleted it.
    Deleted,
    /// Its hard lifetime passed without a rekey.
    Expired,
    /// Negotiation or authentication failed.
    Failed,
}

fn random_below(max: u64, rng: &dyn SecureRandom) -> u64 {
    if max == 0 {
        return 0;
    }
    random_u64(rng) % max
}

impl Lifetimes {
    /// The rekey point of a lifetime: `hard` minus 10 % minus up to 10 % at random.
    pub fn soft(hard: Duration, rng: &dyn SecureRandom) -> Duration {
        let tenth = hard / 10;
        let jitter = Duration::from_nanos(random_below(
            u64::try_from(tenth.as_nanos()).unwrap_or(u64::MAX),
            rng,
        ));
        hard.saturating_sub(tenth + jitter)
    }

    fn soft_count(hard: u64, rng: &dyn SecureRandom) -> u64 {
        hard.saturating_sub(hard / 10 + random_below(hard / 10, rng))
    }

    /// Byte and packet limits for one outbound ESP SA, jittered like the time limits.
    pub fn esp_limits(&self) -> EspLimits {
        let rng = SystemRandom::new();
        EspLimits {
            soft_packets: self.child_packets.map(|h| Self::soft_count(h, &rng)),
            hard_packets: self.child_packets,
            soft_bytes: self.child_bytes.map(|h| Self::soft_count(h, &rng)),
            hard_bytes: self.child_bytes,
        }
    }
}

/// The IKE SA's own timers.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    /// Armed for the current IKE SA (again after each rekey).
    armed: bool,
    ike_rekey_at: Option<Instant>,
    ike_expire_at: Option<Instant>,
    /// Last authenticated message from the peer.
    last_heard: Option<Instant>,
    /// The D-H group the peer asked for in an INVALID_KE_PAYLOAD to our IKE rekey.
    ike_group: Option<DhGroup>,
    /// After losing an IKE rekey collision: no requests on the new SA until the peer shows it
    /// installed it (its delete of the old SA, or any message on the new one), at the latest
    /// until this instant — the peer may still wait for its own answer.
    pub(crate) quiet_until: Option<Instant>,
}

/// Our CREATE_CHILD_SA that rekeys the IKE SA.
#[derive(Debug)]
pub(crate) struct IkeRekeyRequest {
    spi_i: u64,
    ni: Vec<u8>,
    ke: KeyExchange,
}

/// The peer rekeyed child SA `old` (our inbound SPI) while our rekey of it was outstanding;
/// its exchange created `new` with nonces whose lower one is `nonce`.
#[derive(Debug)]
pub(crate) struct ChildCollision {
    pub(crate) old: u32,
    pub(crate) new: u32,
    pub(crate) nonce: Vec<u8>,
}

/// An IKE SA that is no longer the current one: replaced by a rekey, or redundant after a
/// collision. It answers the peer's requests (a retransmission gets the cached answer, a
/// delete is confirmed) and sends our delete of it, then goes away.
#[derive(Debug)]
pub(crate) struct Retired {
    pub(crate) spi_i: u64,
    pub(crate) spi_r: u64,
    /// Our Initiator flag on it: set when we were its original initiator.
    initiator_flag: bool,
    cipher_in: SaCipher,
    cipher_out: SaCipher,
    expected_request_id: u32,
    last_response: Option<(u32, Vec<u8>)>,
    next_request_id: u32,
    /// Our delete of it, until answered or given up.
    pub(crate) pending: Option<Pending>,
    drop_at: Instant,
}

/// The keys of the IKE SA that replaces the one with keys `old` (§2.18): SKEYSEED =
/// prf(SK_d (old), g^ir (new) | Ni | Nr), then the new SA's suite, nonces and SPIs (§2.14).
pub(super) fn rekeyed_ike_keys(
    old: &IkeSaKeys,
    chosen: &IkeProposal,
    g_ir: &[u8],
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> Result<IkeSaKeys, String> {
    let seed = rekey_skeyseed(old, g_ir, ni, nr);
    let suite = IkeSuite::new(
        chosen.encryption[0],
        chosen.integrity.first().copied(),
        chosen.prf[0],
    )
    .map_err(|e| e.to_string())?;
    IkeSaKeys::derive(
        suite,
        &seed,
        ni,
        nr,
        &spi_i.to_be_bytes(),
        &spi_r.to_be_bytes(),
    )
    .map_err(|e| e.to_string())
}

/// The lower of two nonces, compared as unsigned big-endian octet strings (§2.8.1).
fn lower<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    a.min(b)
}

impl IkeSa {
    /// Sets the lifetimes and the liveness interval; timers start once the SA is established
    /// (at once if it already is).
    pub fn set_lifetimes(&mut self, lifetimes: Lifetimes) {
        self.lifetimes = lifetimes;
        self.timers.armed = false;
        self.arm_timers();
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// Why the SA closed (meaningful once [`IkeSa::is_closed`]).
    pub fn close_cause(&self) -> CloseCause {
        self.cause
    }

    /// Rekeys the IKE SA with CREATE_CHILD_SA (§1.3.2): new keys from the old SK_d and a new
    /// D-H exchange, the child SAs move to the new IKE SA, the old one is deleted.
    pub fn rekey_ike(&mut self, now: Instant) {
        self.push_op(Op::RekeyIke, now);
    }

    /// Deletes child SA `spi_in` (§1.4.1).
    pub fn delete_child(&mut self, spi_in: u32, now: Instant) {
        if let Some(c) = self.children.iter_mut().find(|c| c.spi_in == spi_in) {
            c.delete_reason
                .get_or_insert_with(|| "deleted by us".into());
            c.rekey_at = None;
            c.expire_at = None;
        }
        self.push_op(Op::DeleteChild(spi_in), now);
    }

    /// When the IKE SA's rekey is planned, if a lifetime applies.
    pub fn next_ike_rekey(&self) -> Option<Instant> {
        self.timers.ike_rekey_at
    }

    /// ESP traffic arrived from the peer: it is alive, no liveness check needed yet.
    pub fn traffic_received(&mut self, now: Instant) {
        self.heard(now);
    }

    pub(super) fn heard(&mut self, now: Instant) {
        self.timers.last_heard = Some(now);
    }

    /// The peer showed it uses the current IKE SA: requests may go out again.
    pub(super) fn peer_installed(&mut self, now: Instant) {
        if self.timers.quiet_until.take().is_some() {
            self.start_next_op(now);
        }
    }

    /// True while requests wait for the peer to install a new IKE SA.
    pub(super) fn quiet(&self) -> bool {
        self.timers.quiet_until.is_some_and(|t| self.now < t)
    }

    pub(super) fn child_timers(&self) -> (Option<Instant>, Option<Instant>) {
        match self.lifetimes.child {
            Some(hard) => (
                Some(self.now + Lifetimes::soft(hard, &self.rng)),
                Some(self.now + hard),
            ),
            None => (None, None),
        }
    }

    /// Arms the IKE SA's lifetime once it is established.
    pub(super) fn arm_timers(&mut self) {
        if self.timers.armed || !self.is_established() {
            return;
        }
        self.timers.armed = true;
        self.timers.last_heard = Some(self.now);
        if let Some(hard) = self.lifetimes.ike {
            let soft = Lifetimes::soft(hard, &self.rng);
            self.timers.ike_rekey_at = Some(self.now + soft);
            self.timers.ike_expire_at = Some(self.now + hard);
            self.events.push_back(Event::RekeyScheduled {
                child: None,
                after: soft,
            });
        } else {
            self.timers.ike_rekey_at = None;
            self.timers.ike_expire_at = None;
        }
    }

    pub(super) fn lifecycle_timeout(&self) -> Option<Instant> {
        let mut at: Vec<Instant> = Vec::new();
        at.extend(self.timers.quiet_until);
        at.extend(self.timers.ike_rekey_at);
        at.extend(self.timers.ike_expire_at);
        if let (Some(dpd), Some(heard), true) = (
            self.lifetimes.dpd,
            self.timers.last_heard,
            self.is_established(),
        ) {
            at.push(heard + dpd);
        }
        for c in self.children.iter().filter(|c| !c.replaced) {
            at.extend(c.rekey_at);
            at.extend(c.expire_at);
        }
        for r in &self.retired {
            at.push(r.drop_at);
            at.extend(r.pending.as_ref().map(|p| p.next_at));
        }
        at.into_iter().min()
    }

    /// Runs whatever lifetime, liveness and retired-SA timers are due.
    pub(super) fn lifecycle_timers(&mut self, now: Instant) {
        self.retired_timers(now);
        if self.timers.quiet_until.is_some_and(|t| now >= t) {
            self.peer_installed(now);
        }
        if !self.is_established() {
            return;
        }
        if self.timers.ike_expire_at.is_some_and(|t| now >= t) {
            self.cause = CloseCause::Expired;
            return self.close("IKE SA lifetime expired before a rekey completed".into());
        }
        if self.timers.ike_rekey_at.is_some_and(|t| now >= t) {
            self.timers.ike_rekey_at = None;
            self.push_op(Op::RekeyIke, now);
        }
        let mut due = Vec::new();
        for c in self.children.iter_mut().filter(|c| !c.replaced) {
            if c.expire_at.is_some_and(|t| now >= t) {
                c.expire_at = None;
                c.rekey_at = None;
                c.delete_reason = Some("hard lifetime expired before a rekey completed".into());
                due.push(Op::DeleteChild(c.spi_in));
            } else if c.rekey_at.is_some_and(|t| now >= t) {
                c.rekey_at = None;
                due.push(Op::RekeyChild(c.spi_in));
            }
        }
        for op in due {
            self.push_op(op, now);
        }
        if let (Some(dpd), Some(heard)) = (self.lifetimes.dpd, self.timers.last_heard) {
            if now >= heard + dpd {
                // an outstanding request tests liveness by itself (§2.4)
                self.timers.last_heard = Some(now);
                if self.pending.is_none() {
                    self.push_op(Op::Liveness, now);
                }
            }
        }
    }

    /// Builds our IKE rekey request: an SA payload with the new initiator SPI, Ni and KEi.
    pub(super) fn rekey_ike_request(&mut self) -> Option<(Vec<Payload>, Outstanding)> {
        let current = self.chosen.as_ref()?.dh.first().copied()?;
        let group = self.timers.ike_group.unwrap_or(current);
        let ke = match KeyExchange::generate(group, &self.rng) {
            Ok(k) => k,
            Err(e) => {
                self.events.push_back(Event::IkeRekeyFailed {
                    reason: format!("key generation: {e}"),
                });
                return None;
            }
        };
        let spi_i = random_u64(&self.rng);
        let ni = self.nonce();
        let proposals = self
            .config
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Proposal::from_ike(
                    u8::try_from(i + 1).unwrap_or(u8::MAX),
                    &spi_i.to_be_bytes(),
                    p,
                )
            })
            .collect();
        let inner = vec![
            Payload::Sa(SaPayload { proposals }),
            Payload::Nonce(NoncePayload { data: ni.clone() }),
            Payload::Ke(KePayload::new(group, ke.public_value().to_vec())),
        ];
        Some((
            inner,
            Outstanding::RekeyIke(Box::new(IkeRekeyRequest { spi_i, ni, ke })),
        ))
    }

    fn retry_ike_rekey_later(&mut self, reason: String) {
        // §2.25: wait before retrying, so the peer can finish what it is doing
        let wait = Duration::from_secs(2) + Duration::from_millis(random_below(3000, &self.rng));
        self.timers.ike_rekey_at = Some(self.now + wait);
        self.events.push_back(Event::IkeRekeyFailed {
            reason: format!("{reason}; retrying in {} ms", wait.as_millis()),
        });
    }

    /// The answer to our IKE rekey.
    pub(super) fn ike_rekey_answered(&mut self, req: IkeRekeyRequest, payloads: &[Payload]) {
        if let Some(err) = error_notify(payloads) {
            if let Some(held) = self.held_ike.take() {
                // the peer finished its own rekey first and refused ours (§2.25.2): its new
                // IKE SA, which we answered, is the one
                return self.install_ike(
                    *held,
                    false,
                    false,
                    "rekeyed by the peer (ours refused during the collision)",
                );
            }
            if err == NotifyType::INVALID_KE_PAYLOAD {
                let wanted = find_notify(payloads, err).and_then(|n| n.invalid_ke_group());
                let ours = self
                    .config
                    .ike_proposals
                    .iter()
                    .flat_map(|p| p.dh.iter().copied())
                    .find(|g| Some(g.transform_id()) == wanted);
                if let Some(g) = ours.filter(|g| Some(*g) != self.timers.ike_group) {
                    // §1.2 applies to the rekey as well: retry with the group asked for
                    self.timers.ike_group = Some(g);
                    self.ops.push_front(Op::RekeyIke);
                    return;
                }
            }
            return self.retry_ike_rekey_later(format!(
                "peer refused the IKE rekey: {}",
                notify_name(err)
            ));
        }
        match self.new_ike_from_answer(req, payloads) {
            Ok(ours) => match self.held_ike.take() {
                Some(theirs) => self.resolve_ike_collision(ours, *theirs),
                None => self.install_ike(ours, true, true, "rekeyed by us"),
            },
            Err(why) => self.retry_ike_rekey_later(why),
        }
    }

    fn new_ike_from_answer(
        &self,
        req: IkeRekeyRequest,
        payloads: &[Payload],
    ) -> Result<child::NewIke, String> {
        let (Some(sa), Some(nonce), Some(ke)) = (payloads.sa(), payloads.nonce(), payloads.ke())
        else {
            return Err("IKE rekey response lacks SA, Nonce or KE".into());
        };
        let [one] = sa.proposals.as_slice() else {
            return Err("IKE rekey response must choose one proposal".into());
        };
        let chosen = one
            .to_ike()
            .ok()
            .filter(|c| negotiate::ike_acceptable(c, &self.config.ike_proposals))
            .ok_or("peer chose an IKE proposal we did not offer")?;
        let spi_r = <[u8; 8]>::try_from(one.spi.as_slice())
            .ok()
            .map(u64::from_be_bytes)
            .filter(|s| *s != 0)
            .ok_or("peer's new IKE SPI is malformed")?;
        if chosen.dh.first().copied() != Some(req.ke.group())
            || ke.group != req.ke.group().transform_id()
        {
            return Err("peer's KE payload does not match the chosen group".into());
        }
        let old = self.keys.as_ref().ok_or("no IKE SA keys")?;
        let g_ir = req
            .ke
            .compute(&ke.data)
            .map_err(|e| format!("peer's KE payload: {e}"))?;
        let keys = rekeyed_ike_keys(old, &chosen, &g_ir, &req.ni, &nonce.data, req.spi_i, spi_r)?;
        Ok(child::NewIke {
            spi_i: req.spi_i,
            spi_r,
            chosen,
            keys,
            ni: req.ni,
            nr: nonce.data.clone(),
        })
    }

    /// Both ends rekeyed the IKE SA at once (§2.8.2): the new SA made with the lowest of the
    /// four nonces is redundant and deleted by the end that initiated it; the end that
    /// initiated the surviving one deletes the old IKE SA. Child SAs go to the survivor.
    fn resolve_ike_collision(&mut self, ours: child::NewIke, theirs: child::NewIke) {
        let ours_lower = lower(&ours.ni, &ours.nr) < lower(&theirs.ni, &theirs.nr);
        if ours_lower {
            self.retire_new(ours, true, true);
            self.install_ike(
                theirs,
                false,
                false,
                "rekeyed by the peer (simultaneous rekey; ours had the lowest nonce and is deleted)",
            );
            self.timers.quiet_until = Some(self.now + self.retired_linger());
        } else {
            self.retire_new(theirs, false, false);
            self.install_ike(
                ours,
                true,
                true,
                "rekeyed by us (simultaneous rekey; the peer's had the lowest nonce)",
            );
        }
    }

    /// Keeps a new IKE SA that lost a collision only long enough to delete it (when we made it)
    /// or to confirm the peer's delete of it.
    fn retire_new(&mut self, new: child::NewIke, we_initiated: bool, delete: bool) {
        let (Ok(i), Ok(r)) = (new.keys.initiator_cipher(), new.keys.responder_cipher()) else {
            return;
        };
        let (cipher_out, cipher_in) = if we_initiated { (i, r) } else { (r, i) };
        let mut retired = Retired {
            spi_i: new.spi_i,
            spi_r: new.spi_r,
            initiator_flag: we_initiated,
            cipher_in,
            cipher_out,
            expected_request_id: 0,
            last_response: None,
            next_request_id: 0,
            pending: None,
            drop_at: self.now + self.retired_linger(),
        };
        if delete {
            self.send_retired_delete(&mut retired);
        }
        self.retired.push(retired);
    }

    fn retired_linger(&self) -> Duration {
        let total: u32 = (0..self.config.retransmit_tries)
            .map(|n| 1u32 << n.min(16))
            .sum();
        (self.config.retransmit_timeout * total).max(Duration::from_secs(30))
    }

    fn send_retired_delete(&mut self, r: &mut Retired) {
        let h = HeaderRepr {
            initiator_spi: r.spi_i,
            responder_spi: r.spi_r,
            next_payload: PayloadType::NONE,
            exchange_type: ExchangeType::INFORMATIONAL,
            flags: Flags {
                initiator: r.initiator_flag,
                version: false,
                response: false,
            },
            message_id: r.next_request_id,
            length: 0,
        };
        if let Ok(data) = protect::seal(
            &r.cipher_out,
            &h,
            &[Payload::Delete(DeletePayload::Ike)],
            &self.rng,
        ) {
            r.pending = Some(Pending {
                message_id: r.next_request_id,
                data: data.clone(),
                tries: 1,
                next_at: self.now + self.config.retransmit_timeout,
            });
            r.next_request_id = r.next_request_id.wrapping_add(1);
            self.queue(data);
        }
    }

    /// Makes `new` the current IKE SA (§2.18): we are its initiator when we started the rekey;
    /// message IDs start from zero; the child SAs stay. The old SA is retired, and deleted by
    /// us when `delete_old`.
    pub(super) fn install_ike(
        &mut self,
        new: child::NewIke,
        we_initiated: bool,
        delete_old: bool,
        reason: &str,
    ) {
        let (Ok(i), Ok(r)) = (new.keys.initiator_cipher(), new.keys.responder_cipher()) else {
            return;
        };
        let (out, inn) = if we_initiated { (i, r) } else { (r, i) };
        let old_in = self.cipher_in.replace(inn);
        let old_out = self.cipher_out.replace(out);
        if let (Some(cipher_in), Some(cipher_out)) = (old_in, old_out) {
            let mut old = Retired {
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                initiator_flag: self.role == Role::Initiator,
                cipher_in,
                cipher_out,
                expected_request_id: self.expected_request_id,
                last_response: self.last_response.take(),
                next_request_id: self.next_request_id,
                pending: None,
                drop_at: self.now + self.retired_linger(),
            };
            if delete_old {
                self.send_retired_delete(&mut old);
            }
            self.retired.push(old);
        }
        self.role = if we_initiated {
            Role::Initiator
        } else {
            Role::Responder
        };
        self.spi_i = new.spi_i;
        self.spi_r = new.spi_r;
        self.chosen = Some(new.chosen);
        self.keys = Some(new.keys);
        self.ni = new.ni;
        self.nr = new.nr;
        self.next_request_id = 0;
        self.expected_request_id = 0;
        self.last_response = None;
        self.pending = None;
        self.outstanding = None;
        self.held_ike = None;
        // a rekey of ours still queued would replace the new SA at once
        self.ops.retain(|op| *op != Op::RekeyIke);
        self.timers.armed = false;
        self.timers.ike_group = None;
        self.events.push_back(Event::IkeSaRekeyed {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            reason: reason.into(),
        });
        self.arm_timers();
    }

    fn retired_timers(&mut self, now: Instant) {
        let mut resend = Vec::new();
        let tries = self.config.retransmit_tries;
        let base = self.config.retransmit_timeout;
        self.retired.retain_mut(|r| {
            if now >= r.drop_at {
                return false;
            }
            if let Some(p) = r.pending.as_mut() {
                if now >= p.next_at {
                    if p.tries >= tries {
                        // the peer may have dropped it already; nothing else to do (§2.4)
                        return false;
                    }
                    p.tries += 1;
                    p.next_at = now + base * 2u32.saturating_pow(p.tries - 1);
                    resend.push(p.data.clone());
                }
            }
            true
        });
        for d in resend {
            self.queue(d);
        }
    }

    /// A message on a retired IKE SA: the answer to our delete of it, or the peer's requests
    /// (its delete, a retransmission whose answer was lost, a liveness check).
    pub(super) fn handle_retired(
        &mut self,
        i: usize,
        header: HeaderRepr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let Some(r) = self.retired.get_mut(i) else {
            return;
        };
        if header.flags.response {
            if r.pending.as_ref().map(|p| p.message_id) == Some(header.message_id)
                && protect::open(&r.cipher_in, datagram).is_ok()
            {
                self.retired.remove(i);
            }
            return;
        }
        // §2.2: a retransmitted request gets the same answer again
        if let Some((id, data)) = &r.last_response {
            if *id == header.message_id {
                let data = data.clone();
                return self.queue(data);
            }
        }
        if header.message_id != r.expected_request_id {
            return;
        }
        let Ok((_, payloads)) = protect::open(&r.cipher_in, datagram) else {
            return;
        };
        if payloads
            .iter()
            .any(|p| matches!(p, Payload::Delete(DeletePayload::Ike)))
        {
            self.peer_installed(now);
        }
        let Some(r) = self.retired.get_mut(i) else {
            return;
        };
        let answer = if header.exchange_type == ExchangeType::CREATE_CHILD_SA {
            // §2.25: the SA is being replaced; the peer retries on the new one
            vec![notify(NotifyType::TEMPORARY_FAILURE, vec![])]
        } else {
            Vec::new()
        };
        let h = HeaderRepr {
            initiator_spi: r.spi_i,
            responder_spi: r.spi_r,
            next_payload: PayloadType::NONE,
            exchange_type: header.exchange_type,
            flags: Flags {
                initiator: r.initiator_flag,
                version: false,
                response: true,
            },
            message_id: header.message_id,
            length: 0,
        };
        r.expected_request_id = header.message_id.wrapping_add(1);
        if let Ok(data) = protect::seal(&r.cipher_out, &h, &answer, &self.rng) {
            r.last_response = Some((header.message_id, data.clone()));
            self.remote = from;
            self.queue(data);
        }
        // child SA deletes sent on the old IKE SA still apply (§1.4: its successor owns them)
        let child_deletes: Vec<u32> = payloads
            .iter()
            .filter_map(|p| match p {
                Payload::Delete(DeletePayload::Child { protocol, spis })
                    if *protocol == ProtocolId::ESP =>
                {
                    Some(spis.clone())
                }
                _ => None,
            })
            .flatten()
            .collect();
        self.peer_deleted_children(&child_deletes);
        // a deleted retired SA stays until `drop_at` to answer retransmissions of the delete
        self.heard(now);
    }

    /// Resolves a child rekey collision once our answer is in (§2.8.1): true when our new SA
    /// `ours` (made with nonces `ni`, `nr`) is the redundant one.
    pub(super) fn ours_is_redundant(&mut self, old: u32, ni: &[u8], nr: &[u8]) -> Option<bool> {
        let pos = self.collisions.iter().position(|c| c.old == old)?;
        let theirs = self.collisions.remove(pos);
        let ours_lower = lower(ni, nr) < theirs.nonce.as_slice();
        if !ours_lower {
            // the peer deletes its redundant SA; no timers for it meanwhile
            if let Some(c) = self.children.iter_mut().find(|c| c.spi_in == theirs.new) {
                c.replaced = true;
            }
        }
        Some(ours_lower)
    }
}
