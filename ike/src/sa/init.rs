//! IKE_SA_INIT (RFC 7296 §1.2): offers, choices, cookies (§2.6), INVALID_KE_PAYLOAD (§1.2),
//! NAT detection (§2.23), support for IKE fragmentation (RFC 7383 §2.3) and the IKE SA keys
//! (§2.14).

use super::*;

impl IkeSa {
    pub(super) fn nat_notifies(&self) -> [Payload; 2] {
        // With forced encapsulation we claim a source the peer cannot see, so it detects a
        // NAT too and both ends move to UDP 4500 (strongSwan's `encap = yes` does the same).
        let mut source = self.local;
        if self.config.force_udp_encap {
            source.set_port(0);
        }
        [
            notify(
                NotifyType::NAT_DETECTION_SOURCE_IP,
                negotiate::nat_hash(self.spi_i, self.spi_r, source),
            ),
            notify(
                NotifyType::NAT_DETECTION_DESTINATION_IP,
                negotiate::nat_hash(self.spi_i, self.spi_r, self.remote),
            ),
        ]
    }

    /// Compares the peer's NAT detection hashes with the addresses we see (§2.23).
    pub(super) fn detect_nat(&mut self, payloads: &[Payload], from: SocketAddr) {
        let theirs_src = find_notify(payloads, NotifyType::NAT_DETECTION_SOURCE_IP);
        let theirs_dst = find_notify(payloads, NotifyType::NAT_DETECTION_DESTINATION_IP);
        if let (Some(src), Some(dst)) = (theirs_src, theirs_dst) {
            let peer_behind_nat = src.data != negotiate::nat_hash(self.spi_i, self.spi_r, from);
            let we_behind_nat = dst.data != negotiate::nat_hash(self.spi_i, self.spi_r, self.local);
            self.nat_detected = peer_behind_nat || we_behind_nat || self.config.force_udp_encap;
        }
    }

    pub(super) fn derive_keys(
        &mut self,
        chosen: &IkeProposal,
        peer_ke: &[u8],
    ) -> Result<(), String> {
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

    pub(super) fn send_init(&mut self, now: Instant) {
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
        // RFC 7383 §2.3: announce that we can take fragmented messages
        payloads.push(notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, vec![]));
        payloads.extend(self.cert_init_payloads(false));
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

    pub(super) fn init_response_received(
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
        let sa = msg.payloads.sa();
        let ke = msg.payloads.ke();
        let nonce = msg.payloads.nonce();
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
        self.frag.negotiated =
            find_notify(&msg.payloads, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_some();
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

    pub(super) fn respond_init(&mut self, datagram: &[u8], _now: Instant) {
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
        let sa = msg.payloads.sa();
        let ke = msg.payloads.ke();
        let nonce = msg.payloads.nonce();
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
        // RFC 7383 §2.3: answer the initiator's announcement with ours
        if find_notify(&msg.payloads, NotifyType::IKEV2_FRAGMENTATION_SUPPORTED).is_some() {
            self.frag.negotiated = true;
            payloads.push(notify(NotifyType::IKEV2_FRAGMENTATION_SUPPORTED, vec![]));
        }
        payloads.extend(self.cert_init_payloads(true));
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
    pub(super) fn answer_stateless(&mut self, request: &HeaderRepr, payload: Payload) {
        if let Some(data) = crate::cookie::stateless_init_answer(request.initiator_spi, payload) {
            self.queue(data);
        }
    }
}
