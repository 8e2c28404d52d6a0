//! IKE_AUTH (RFC 7296 §1.2): shared-key authentication (§2.15) and the first child SA with
//! traffic selector narrowing (§2.9).

use super::*;

impl IkeSa {
    /// Our AUTH value, or the value we expect from the peer.
    pub(super) fn auth_value(
        &self,
        ours: bool,
        id: &IdPayload,
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
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

    pub(super) fn send_auth(&mut self, now: Instant) {
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

    pub(super) fn auth_response_received(&mut self, datagram: &[u8], from: SocketAddr) {
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
        let id = payloads.id_r();
        let auth = payloads.auth();
        let (Some(id), Some(auth)) = (id, auth) else {
            let why = error_notify(&payloads)
                .map(notify_name)
                .unwrap_or_else(|| "no IDr or AUTH".into());
            return self.close(format!("IKE_AUTH failed: {why}"));
        };
        if let Err(why) = self.verify_peer(id, auth) {
            return self.close(why);
        }
        self.remote = from;
        self.state = State::Established;
        self.expected_request_id = 0;
        self.established_event();
        self.child_from_auth_response(&payloads);
    }

    /// The peer's identity is the configured one and its AUTH proves the shared key (§2.15),
    /// compared in constant time; the same check for both roles.
    fn verify_peer(&self, id: &IdPayload, auth: &AuthPayload) -> Result<(), String> {
        match id.to_identity() {
            Ok(peer) if peer == self.config.remote_id => {}
            Ok(peer) => {
                return Err(format!(
                    "peer identifies as {peer}, expected {}",
                    self.config.remote_id
                ))
            }
            Err(e) => return Err(format!("peer identity: {e}")),
        }
        let expected = self.auth_value(false, id);
        let ok = auth.method == AuthMethod::SHARED_KEY_MIC
            && expected
                .is_some_and(|e| subtle::ConstantTimeEq::ct_eq(&e[..], &auth.data[..]).into());
        if ok {
            Ok(())
        } else {
            Err(format!(
                "peer {} failed to prove the pre-shared key",
                self.config.remote_id
            ))
        }
    }

    pub(super) fn established_event(&mut self) {
        self.ever_established = true;
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

    pub(super) fn child_from_auth_response(&mut self, payloads: &[Payload]) {
        if let Some(err) = error_notify(payloads) {
            return self.events.push_back(Event::ChildSaFailed {
                reason: format!("peer refused the child SA: {}", notify_name(err)),
            });
        }
        let sa = payloads.sa();
        let tsi = payloads.ts_i();
        let tsr = payloads.ts_r();
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
            Ok(keys) => self.child_established(ChildSa {
                spi_in: self.child_spi,
                spi_out,
                proposal,
                role: self.role,
                keys,
                local_ts: tsi.selectors.clone(),
                remote_ts: tsr.selectors.clone(),
                udp_encap: self.natt,
                rekeys: None,
            }),
            Err(e) => self.events.push_back(Event::ChildSaFailed { reason: e }),
        }
    }

    pub(super) fn answer_auth(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        let id = payloads.id_i();
        let auth = payloads.auth();
        let (Some(id), Some(auth)) = (id, auth) else {
            self.close("IKE_AUTH request lacks IDi or AUTH".into());
            return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
        };
        if let Err(why) = self.verify_peer(id, auth) {
            self.close(why);
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
    pub(super) fn answer_child(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        let sa = payloads.sa();
        let tsi = payloads.ts_i();
        let tsr = payloads.ts_r();
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
        self.child_established(ChildSa {
            spi_in: self.child_spi,
            spi_out,
            proposal,
            role: self.role,
            keys,
            local_ts: ts_r.clone(),
            remote_ts: ts_i.clone(),
            udp_encap: self.natt,
            rekeys: None,
        });
        vec![
            Payload::Sa(SaPayload { proposals: vec![p] }),
            Payload::TsInitiator(TsPayload::new(ts_i)),
            Payload::TsResponder(TsPayload::new(ts_r)),
        ]
    }
}
