//! CREATE_CHILD_SA (RFC 7296 §1.3): rekeying child SAs in both roles, with or without PFS
//! (§1.3.3, §2.17), and the peer's rekey of the IKE SA (§1.3.2, §2.18); plus the requests an
//! established SA makes (liveness checks, deletes).
//!
//! Our own IKE rekey, lifetimes and collisions are in `lifecycle.rs`; the rules for
//! simultaneous child rekeys (§2.8.1) and for a rekey meeting a delete (§2.25.1) are applied
//! here.

use super::*;

/// A child rekey we asked for.
#[derive(Debug)]
pub(crate) struct RekeyRequest {
    old_spi_in: u32,
    new_spi_in: u32,
    ni: Vec<u8>,
    ke: Option<KeyExchange>,
}

/// A new IKE SA agreed in a CREATE_CHILD_SA we answered, switched to after the answer.
#[derive(Debug)]
pub(crate) struct NewIke {
    pub(crate) spi_i: u64,
    pub(crate) spi_r: u64,
    pub(crate) chosen: IkeProposal,
    pub(crate) keys: IkeSaKeys,
    pub(crate) ni: Vec<u8>,
    pub(crate) nr: Vec<u8>,
}

impl IkeSa {
    pub(super) fn child_established(&mut self, child: ChildSa) {
        let rekey_at = self.record_child(&child);
        let spi_in = child.spi_in;
        self.events
            .push_back(Event::ChildSaEstablished(Box::new(child)));
        if let Some(at) = rekey_at {
            self.events.push_back(Event::RekeyScheduled {
                child: Some(spi_in),
                after: at.saturating_duration_since(self.now),
            });
        }
    }

    /// Remembers a child SA with its lifetime timers; returns when it is to be rekeyed.
    fn record_child(&mut self, child: &ChildSa) -> Option<Instant> {
        let (rekey_at, expire_at) = self.child_timers();
        self.children.push(ChildRecord {
            spi_in: child.spi_in,
            spi_out: child.spi_out,
            local_ts: child.local_ts.clone(),
            remote_ts: child.remote_ts.clone(),
            rekey_at,
            expire_at,
            replaced: false,
            delete_reason: None,
            awaiting: None,
        });
        rekey_at
    }

    /// Marks child SA `spi_in` replaced by a rekey: no more timers, deleted next (by us when
    /// `delete`, else by the peer).
    fn replace_child(&mut self, spi_in: u32, delete: bool, reason: &str) {
        if let Some(c) = self.children.iter_mut().find(|c| c.spi_in == spi_in) {
            c.replaced = true;
            c.rekey_at = None;
            c.expire_at = None;
            c.delete_reason = Some(reason.into());
        }
        self.ops.retain(|op| *op != Op::RekeyChild(spi_in));
        if delete {
            self.ops.push_front(Op::DeleteChild(spi_in));
        }
    }

    /// True while we are deleting child SA `spi_in` (or it was replaced by a rekey).
    fn child_going(&self, spi_in: u32) -> bool {
        self.ops.contains(&Op::DeleteChild(spi_in))
            || matches!(self.outstanding, Some(Outstanding::DeleteChild(s)) if s == spi_in)
            || self
                .children
                .iter()
                .any(|c| c.spi_in == spi_in && c.replaced)
    }

    fn child_keys_pfs(
        &self,
        proposal: &EspProposal,
        g_ir: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
    ) -> Result<ChildSaKeys, String> {
        let keys = self.keys.as_ref().ok_or("no IKE SA keys")?;
        let suite = ChildSuite::new(proposal.encryption[0], proposal.integrity.first().copied())
            .map_err(|e| e.to_string())?;
        ChildSaKeys::derive(keys, suite, g_ir, ni, nr).map_err(|e| e.to_string())
    }

    /// Sends the request for `op`; false when there was nothing to send.
    pub(super) fn send_op(&mut self, op: Op, now: Instant) -> bool {
        let id = self.next_request_id;
        let (exchange, inner, outstanding) = match op {
            Op::Liveness => (ExchangeType::INFORMATIONAL, vec![], Outstanding::Liveness),
            Op::DeleteIke => (
                ExchangeType::INFORMATIONAL,
                vec![Payload::Delete(DeletePayload::Ike)],
                Outstanding::DeleteIke,
            ),
            Op::RekeyIke => match self.rekey_ike_request() {
                Some((inner, outstanding)) => (ExchangeType::CREATE_CHILD_SA, inner, outstanding),
                None => return false,
            },
            Op::DeleteChild(spi_in) => {
                if !self.children.iter().any(|c| c.spi_in == spi_in) {
                    return false;
                }
                let d = DeletePayload::Child {
                    protocol: ProtocolId::ESP,
                    spis: vec![spi_in],
                };
                (
                    ExchangeType::INFORMATIONAL,
                    vec![Payload::Delete(d)],
                    Outstanding::DeleteChild(spi_in),
                )
            }
            Op::RekeyChild(old) => {
                let Some(rec) = self
                    .children
                    .iter_mut()
                    .find(|c| c.spi_in == old && !c.replaced)
                else {
                    return false;
                };
                if rec.awaiting.is_some_and(|(_, until)| now < until) {
                    // the peer may not have our answer that made it yet (a reordered
                    // request would find no such SA): try again in a second
                    rec.rekey_at = Some(now + Duration::from_secs(1));
                    return false;
                }
                let rec = rec.clone();
                let new_spi_in = random_spi(&self.rng);
                let ni = self.nonce();
                // PFS with the first group our ESP proposals name (§1.3.1)
                let group = self
                    .config
                    .esp_proposals
                    .iter()
                    .find_map(|p| p.dh.first().copied());
                let ke = match group.map(|g| KeyExchange::generate(g, &self.rng)) {
                    Some(Ok(k)) => Some(k),
                    Some(Err(e)) => {
                        self.events.push_back(Event::ChildRekeyFailed {
                            spi_in: old,
                            reason: format!("key generation: {e}"),
                        });
                        return false;
                    }
                    None => None,
                };
                let proposals = self
                    .config
                    .esp_proposals
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        Proposal::from_esp(u8::try_from(i + 1).unwrap_or(u8::MAX), new_spi_in, p)
                    })
                    .collect();
                let mut inner = vec![
                    Payload::Notify(NotifyPayload::child(
                        ProtocolId::ESP,
                        old,
                        NotifyType::REKEY_SA,
                        vec![],
                    )),
                    Payload::Sa(SaPayload { proposals }),
                    Payload::Nonce(NoncePayload { data: ni.clone() }),
                ];
                if let Some(k) = &ke {
                    inner.push(Payload::Ke(KePayload::new(
                        k.group(),
                        k.public_value().to_vec(),
                    )));
                }
                inner.push(Payload::TsInitiator(TsPayload::new(rec.local_ts)));
                inner.push(Payload::TsResponder(TsPayload::new(rec.remote_ts)));
                let req = RekeyRequest {
                    old_spi_in: old,
                    new_spi_in,
                    ni,
                    ke,
                };
                (
                    ExchangeType::CREATE_CHILD_SA,
                    inner,
                    Outstanding::RekeyChild(Box::new(req)),
                )
            }
        };
        let header = self.header(exchange, id, false);
        match self.seal(&header, &inner) {
            Some(data) => {
                self.send_request(data, id, now);
                self.next_request_id = id.wrapping_add(1);
                self.outstanding = Some(outstanding);
                true
            }
            None => false,
        }
    }

    /// The answer to our outstanding request arrived (already decrypted).
    pub(super) fn exchange_answered(&mut self, payloads: &[Payload], now: Instant) {
        match self.outstanding.take() {
            Some(Outstanding::Liveness) => self.events.push_back(Event::Alive),
            Some(Outstanding::DeleteIke) => {
                self.cause = CloseCause::Deleted;
                self.close("deleted".into())
            }
            Some(Outstanding::DeleteChild(spi_in)) => self.forget_child(spi_in),
            Some(Outstanding::RekeyChild(req)) => self.rekey_answered(*req, payloads),
            Some(Outstanding::RekeyIke(req)) => self.ike_rekey_answered(*req, payloads),
            None => {}
        }
        self.start_next_op(now);
    }

    /// Child SA `spi_in` is gone: SAs that waited for it to be deleted are confirmed.
    pub(super) fn child_gone(&mut self, spi_in: u32) {
        for c in &mut self.children {
            if c.awaiting.is_some_and(|(old, _)| old == spi_in) {
                c.awaiting = None;
            }
        }
    }

    fn forget_child(&mut self, spi_in: u32) {
        self.child_gone(spi_in);
        if let Some(pos) = self.children.iter().position(|c| c.spi_in == spi_in) {
            let c = self.children.remove(pos);
            self.events.push_back(Event::ChildSaDeleted {
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                reason: c.delete_reason.unwrap_or_else(|| "deleted by us".into()),
            });
        }
    }

    fn rekey_answered(&mut self, req: RekeyRequest, payloads: &[Payload]) {
        let old = req.old_spi_in;
        let fail = |sa: &mut IkeSa, reason: String| {
            sa.events.push_back(Event::ChildRekeyFailed {
                spi_in: old,
                reason,
            })
        };
        if let Some(err) = error_notify(payloads) {
            if let Some(pos) = self.collisions.iter().position(|c| c.old == old) {
                // §2.25.1: the peer completed its own rekey of this SA first and deletes it
                self.collisions.remove(pos);
                self.replace_child(old, false, "replaced by the peer's rekey");
            } else if err == NotifyType::CHILD_SA_NOT_FOUND {
                // §2.25: the peer no longer has it; drop it silently
                if let Some(c) = self.children.iter_mut().find(|c| c.spi_in == old) {
                    c.delete_reason = Some("the peer no longer has it (CHILD_SA_NOT_FOUND)".into());
                }
                self.child_gone(old);
                if let Some(pos) = self.children.iter().position(|c| c.spi_in == old) {
                    let c = self.children.remove(pos);
                    self.events.push_back(Event::ChildSaDeleted {
                        spi_in: c.spi_in,
                        spi_out: c.spi_out,
                        reason: c.delete_reason.unwrap_or_default(),
                    });
                }
            } else if let Some(c) = self
                .children
                .iter_mut()
                .find(|c| c.spi_in == old && !c.replaced)
            {
                // §2.25: retry after a while, not at once
                let wait =
                    Duration::from_secs(2) + Duration::from_millis(random_u64(&self.rng) % 3000);
                c.rekey_at = Some(self.now + wait);
            }
            return fail(
                self,
                format!("peer refused the rekey: {}", notify_name(err)),
            );
        }
        let sa = payloads.sa();
        let nonce = payloads.nonce();
        let ke = payloads.ke();
        let tsi = payloads.ts_i();
        let tsr = payloads.ts_r();
        let (Some(sa), Some(nonce), Some(tsi), Some(tsr)) = (sa, nonce, tsi, tsr) else {
            return fail(
                self,
                "CREATE_CHILD_SA response lacks SA, Nonce or TS".into(),
            );
        };
        let chosen = match sa.proposals.as_slice() {
            [one] => one.to_esp().ok().zip(one.child_spi()),
            _ => None,
        };
        let Some((proposal, spi_out)) =
            chosen.filter(|(c, _)| negotiate::esp_acceptable(c, &self.config.esp_proposals))
        else {
            return fail(self, "peer chose an ESP proposal we did not offer".into());
        };
        let g_ir = match (&req.ke, ke) {
            (Some(ours), Some(theirs)) if theirs.group == ours.group().transform_id() => {
                match ours.compute(&theirs.data) {
                    Ok(g) => Some(g),
                    Err(e) => return fail(self, format!("peer's KE payload: {e}")),
                }
            }
            (None, None) => None,
            _ => return fail(self, "PFS key exchange does not match".into()),
        };
        let (local_ts, remote_ts) = match self.children.iter().find(|c| c.spi_in == old) {
            Some(rec) => (rec.local_ts.clone(), rec.remote_ts.clone()),
            // the peer deleted it meanwhile (§2.25.1); check against the configuration
            None => (self.config.local_ts.clone(), self.config.remote_ts.clone()),
        };
        if !negotiate::within(&tsi.selectors, &local_ts)
            || !negotiate::within(&tsr.selectors, &remote_ts)
        {
            return fail(
                self,
                "peer's traffic selectors are not within the rekeyed SA's".into(),
            );
        }
        match self.child_keys_pfs(
            &proposal,
            g_ir.as_deref().map(|v| &v[..]),
            &req.ni,
            &nonce.data,
        ) {
            Ok(keys) => {
                let old_alive = self.children.iter().any(|c| c.spi_in == old);
                let redundant = self.ours_is_redundant(old, &req.ni, &nonce.data);
                let child = ChildSa {
                    spi_in: req.new_spi_in,
                    spi_out,
                    proposal,
                    // §2.17: keys follow the roles of this exchange
                    role: Role::Initiator,
                    keys,
                    local_ts: tsi.selectors.clone(),
                    remote_ts: tsr.selectors.clone(),
                    udp_encap: self.natt,
                    rekeys: Some(old),
                };
                if redundant == Some(true) {
                    // never used: recorded only to delete it
                    self.record_child(&child);
                } else {
                    self.child_established(child);
                }
                match redundant {
                    Some(true) => {
                        // §2.8.1: ours has the lowest nonce: we delete it, the peer deletes
                        // the old one
                        self.replace_child(
                            req.new_spi_in,
                            true,
                            "redundant after a simultaneous rekey (lowest nonce, RFC 7296 §2.8.1)",
                        );
                        self.replace_child(old, false, "replaced by the peer's rekey");
                    }
                    _ if !old_alive && redundant.is_none() => {
                        // §2.25.1: the peer deleted the SA we were rekeying; so goes the new one
                        self.replace_child(
                            req.new_spi_in,
                            true,
                            "the peer deleted the SA this rekey replaced",
                        );
                    }
                    // make-before-break: the new SA is up; now retire the old one (§1.3.3)
                    _ => self.replace_child(old, true, "replaced by our rekey"),
                }
            }
            Err(e) => fail(self, e),
        }
    }

    /// A CREATE_CHILD_SA request from the peer: a child rekey, a new child SA, or an IKE rekey.
    pub(super) fn answer_create_child(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        let sa = payloads.sa();
        let nonce = payloads.nonce();
        let (Some(sa), Some(nonce)) = (sa, nonce) else {
            return vec![notify(NotifyType::INVALID_SYNTAX, vec![])];
        };
        if sa
            .proposals
            .first()
            .is_some_and(|p| p.protocol == ProtocolId::IKE)
        {
            return self.answer_rekey_ike(payloads);
        }
        let ke = payloads.ke();
        let tsi = payloads.ts_i();
        let tsr = payloads.ts_r();
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
            return vec![notify(NotifyType::INVALID_SYNTAX, vec![])];
        };
        let rekeyed = match find_notify(payloads, NotifyType::REKEY_SA).map(|n| n.child_spi()) {
            // the SPI the peer receives on, i.e. our outbound SPI (§1.3.3)
            Some(Some(spi)) => match self.children.iter().find(|c| c.spi_out == spi) {
                // §2.25.1: a rekey of an SA we are deleting is refused for now
                Some(c) if self.child_going(c.spi_in) => {
                    return vec![notify(NotifyType::TEMPORARY_FAILURE, vec![])]
                }
                Some(c) => Some(c.spi_in),
                None => {
                    return vec![Payload::Notify(NotifyPayload::child(
                        ProtocolId::ESP,
                        spi,
                        NotifyType::CHILD_SA_NOT_FOUND,
                        vec![],
                    ))]
                }
            },
            Some(None) => return vec![notify(NotifyType::INVALID_SYNTAX, vec![])],
            None => None,
        };
        let pfs = match ke {
            Some(k) => match crate::wire::suite::dh_group(k.group) {
                Some(g) => Some(g),
                None => {
                    return vec![Payload::Notify(NotifyPayload::invalid_ke(
                        self.preferred_pfs_group().map_or(0, |g| g.transform_id()),
                    ))]
                }
            },
            None => None,
        };
        let Some((number, spi_out, proposal)) =
            negotiate::choose_esp(&sa.proposals, &self.config.esp_proposals, pfs)
        else {
            if pfs.is_some() {
                if let Some(g) = self.preferred_pfs_group() {
                    if negotiate::choose_esp(&sa.proposals, &self.config.esp_proposals, Some(g))
                        .is_some()
                    {
                        return vec![Payload::Notify(NotifyPayload::invalid_ke(g.transform_id()))];
                    }
                }
            }
            return vec![notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![])];
        };
        let (ts_i, ts_r) = (
            negotiate::narrow(&tsi.selectors, &self.config.remote_ts),
            negotiate::narrow(&tsr.selectors, &self.config.local_ts),
        );
        if ts_i.is_empty() || ts_r.is_empty() {
            return vec![notify(NotifyType::TS_UNACCEPTABLE, vec![])];
        }
        let nr = self.nonce();
        let (our_ke, g_ir) = match (pfs, ke) {
            (Some(g), Some(theirs)) => match KeyExchange::generate(g, &self.rng)
                .and_then(|k| k.compute(&theirs.data).map(|s| (k, s)))
            {
                Ok((k, s)) => (Some(k), Some(s)),
                Err(_) => return vec![notify(NotifyType::INVALID_SYNTAX, vec![])],
            },
            _ => (None, None),
        };
        let keys =
            match self.child_keys_pfs(&proposal, g_ir.as_deref().map(|v| &v[..]), &nonce.data, &nr)
            {
                Ok(k) => k,
                Err(_) => return vec![notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![])],
            };
        let spi_in = random_spi(&self.rng);
        let mut p = Proposal::from_esp(number, spi_in, &proposal);
        p.number = number;
        if let Some(old) = rekeyed {
            match &self.outstanding {
                // §2.8.1: both ends rekey this SA; resolved when our answer comes
                Some(Outstanding::RekeyChild(r)) if r.old_spi_in == old => {
                    self.collisions.push(lifecycle::ChildCollision {
                        old,
                        new: spi_in,
                        nonce: nonce.data.as_slice().min(nr.as_slice()).to_vec(),
                    })
                }
                // the peer deletes the old SA once this answer is in
                _ => self.replace_child(old, false, "replaced by the peer's rekey"),
            }
        }
        let awaiting = rekeyed.map(|old| (old, self.now + Duration::from_secs(10)));
        self.child_established(ChildSa {
            spi_in,
            spi_out,
            proposal,
            role: Role::Responder,
            keys,
            local_ts: ts_r.clone(),
            remote_ts: ts_i.clone(),
            udp_encap: self.natt,
            rekeys: rekeyed,
        });
        if let Some(c) = self.children.iter_mut().find(|c| c.spi_in == spi_in) {
            c.awaiting = awaiting;
        }
        let mut out = vec![
            Payload::Sa(SaPayload { proposals: vec![p] }),
            Payload::Nonce(NoncePayload { data: nr }),
        ];
        if let Some(k) = our_ke {
            out.push(Payload::Ke(KePayload::new(
                k.group(),
                k.public_value().to_vec(),
            )));
        }
        out.push(Payload::TsInitiator(TsPayload::new(ts_i)));
        out.push(Payload::TsResponder(TsPayload::new(ts_r)));
        out
    }

    fn preferred_pfs_group(&self) -> Option<DhGroup> {
        self.config
            .esp_proposals
            .iter()
            .find_map(|p| p.dh.first().copied())
    }

    /// The peer rekeys the IKE SA (§1.3.2): answer on this SA, then continue on the new one.
    fn answer_rekey_ike(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        // §2.25.2: not while we delete the IKE SA or create, rekey or delete a child SA
        let busy = matches!(
            self.outstanding,
            Some(Outstanding::DeleteIke | Outstanding::RekeyChild(_) | Outstanding::DeleteChild(_))
        ) || self.ops.contains(&Op::DeleteIke);
        if busy {
            return vec![notify(NotifyType::TEMPORARY_FAILURE, vec![])];
        }
        let sa = payloads.sa();
        let nonce = payloads.nonce();
        let ke = payloads.ke();
        let (Some(sa), Some(nonce), Some(ke)) = (sa, nonce, ke) else {
            return vec![notify(NotifyType::INVALID_SYNTAX, vec![])];
        };
        let Some((number, mut chosen, groups)) =
            negotiate::choose_ike(&sa.proposals, &self.config.ike_proposals)
        else {
            return vec![notify(NotifyType::NO_PROPOSAL_CHOSEN, vec![])];
        };
        let Some(group) = groups
            .iter()
            .copied()
            .find(|g| g.transform_id() == ke.group)
        else {
            return vec![Payload::Notify(NotifyPayload::invalid_ke(
                groups[0].transform_id(),
            ))];
        };
        chosen.dh = vec![group];
        let spi_i = sa
            .proposals
            .iter()
            .find(|p| p.number == number)
            .and_then(|p| <[u8; 8]>::try_from(p.spi.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|s| *s != 0);
        let Some(spi_i) = spi_i else {
            return vec![notify(NotifyType::INVALID_SYNTAX, vec![])];
        };
        let spi_r = random_u64(&self.rng);
        let nr = self.nonce();
        let Some(old_keys) = self.keys.as_ref() else {
            return vec![];
        };
        let derived = KeyExchange::generate(group, &self.rng)
            .map_err(|e| e.to_string())
            .and_then(|k| {
                let g_ir = k.compute(&ke.data).map_err(|e| e.to_string())?;
                let keys = lifecycle::rekeyed_ike_keys(
                    old_keys,
                    &chosen,
                    &g_ir,
                    &nonce.data,
                    &nr,
                    spi_i,
                    spi_r,
                )?;
                Ok((k, keys))
            });
        let (our_ke, keys) = match derived {
            Ok(v) => v,
            Err(_) => return vec![notify(NotifyType::INVALID_SYNTAX, vec![])],
        };
        let mut p = Proposal::from_ike(number, &spi_r.to_be_bytes(), &chosen);
        p.number = number;
        let new = Box::new(NewIke {
            spi_i,
            spi_r,
            chosen,
            keys,
            ni: nonce.data.clone(),
            nr: nr.clone(),
        });
        if matches!(self.outstanding, Some(Outstanding::RekeyIke(_))) {
            // §2.8.2: both ends rekey the IKE SA; decided when our answer comes
            self.held_ike = Some(new);
        } else {
            self.new_ike = Some(new);
        }
        vec![
            Payload::Sa(SaPayload { proposals: vec![p] }),
            Payload::Nonce(NoncePayload { data: nr }),
            Payload::Ke(KePayload::new(group, our_ke.public_value().to_vec())),
        ]
    }

    /// After answering an IKE rekey: the peer initiated it, so it is the initiator of the new
    /// IKE SA (§2.18); message IDs start again from zero.
    pub(super) fn switch_to_rekeyed_ike(&mut self) {
        if let Some(new) = self.new_ike.take() {
            self.install_ike(*new, false, false, "rekeyed by the peer");
        }
    }
}
