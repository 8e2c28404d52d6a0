//! IKE_AUTH (RFC 7296 §1.2): shared-key authentication (§2.15), certificate authentication with
//! signatures (RFC 7427, RFC 4754; see [`crate::cert`]) and the first child SA with traffic
//! selector narrowing (§2.9).

use super::*;

/// The PRF, RealMessage, the other side's nonce and SK_p of one side's AUTH (§2.15).
type AuthInputs<'a> = (crate::proposal::Prf, &'a [u8], &'a [u8], &'a [u8]);

impl IkeSa {
    /// What the AUTH of one side covers (§2.15): the PRF, that side's IKE_SA_INIT message,
    /// the other side's nonce, and that side's SK_p.
    fn auth_inputs(&self, ours: bool) -> Option<AuthInputs<'_>> {
        let keys = self.keys.as_ref()?;
        let prf = self.chosen.as_ref()?.prf[0];
        let from_initiator = ours == (self.role == Role::Initiator);
        Some(if from_initiator {
            (prf, &self.init_request, &self.nr, keys.sk_pi.as_bytes())
        } else {
            (prf, &self.init_response, &self.ni, keys.sk_pr.as_bytes())
        })
    }

    /// Our AUTH value, or the value we expect from the peer.
    pub(super) fn auth_value(
        &self,
        ours: bool,
        id: &IdPayload,
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let (prf, real, nonce, sk_p) = self.auth_inputs(ours)?;
        let psk = self.config.psk.as_bytes();
        Some(negotiate::psk_auth(
            prf,
            psk,
            real,
            nonce,
            sk_p,
            &id.auth_octets(),
        ))
    }

    /// InitiatorSignedOctets or ResponderSignedOctets (§2.15): the sender's IKE_SA_INIT
    /// message, the other side's nonce, and prf(SK_p, RestOfIDPayload).
    fn signed_octets(&self, ours: bool, id: &IdPayload) -> Option<Vec<u8>> {
        let (prf, real, nonce, sk_p) = self.auth_inputs(ours)?;
        let maced_id = crate::crypto::prf::prf(prf, sk_p, &id.auth_octets());
        Some([real, nonce, &maced_id].concat())
    }

    /// The hashes the peer announced in its IKE_SA_INIT (RFC 7427 §4).
    fn peer_signature_hashes(&self) -> Vec<u16> {
        let theirs = match self.role {
            Role::Initiator => &self.init_response,
            Role::Responder => &self.init_request,
        };
        Message::parse(theirs)
            .ok()
            .and_then(|m| {
                find_notify(&m.payloads, NotifyType::SIGNATURE_HASH_ALGORITHMS)
                    .and_then(|n| n.signature_hashes())
            })
            .unwrap_or_default()
    }

    /// With certificates: SIGNATURE_HASH_ALGORITHMS in both IKE_SA_INIT messages (RFC 7427
    /// §4) and, in the response, CERTREQ naming the CAs we trust (§3.7).
    pub(super) fn cert_init_payloads(&self, response: bool) -> Vec<Payload> {
        let Some(cert) = self.config.cert.as_ref() else {
            return vec![];
        };
        let hashes = crate::cert::SUPPORTED_HASHES
            .iter()
            .flat_map(|h| h.to_be_bytes())
            .collect();
        let mut out = vec![notify(NotifyType::SIGNATURE_HASH_ALGORITHMS, hashes)];
        if response {
            out.push(certreq(cert));
        }
        out
    }

    /// Our ID, and with certificates our CERT payloads (and, from the initiator, CERTREQ) and
    /// AUTH, in the order §1.2 shows them.
    fn our_auth_payloads(&self, id: IdPayload) -> Result<Vec<Payload>, String> {
        let initiator = self.role == Role::Initiator;
        let Some(cert) = self.config.cert.as_ref() else {
            let auth = self.auth_value(true, &id).ok_or("no keys")?;
            let id = if initiator {
                Payload::IdInitiator(id)
            } else {
                Payload::IdResponder(id)
            };
            return Ok(vec![
                id,
                Payload::Auth(AuthPayload {
                    method: AuthMethod::SHARED_KEY_MIC,
                    data: auth.to_vec(),
                }),
            ]);
        };
        let octets = self.signed_octets(true, &id).ok_or("no keys")?;
        let (method, data) = cert
            .sign(&octets, &self.peer_signature_hashes())
            .map_err(|e| e.to_string())?;
        let mut out = vec![if initiator {
            Payload::IdInitiator(id)
        } else {
            Payload::IdResponder(id)
        }];
        out.extend(cert.chain().iter().map(|c| {
            Payload::Cert(crate::wire::CertPayload {
                encoding: crate::wire::CertEncoding::X509_SIGNATURE,
                data: c.clone(),
            })
        }));
        if initiator {
            out.push(certreq(cert));
        }
        out.push(Payload::Auth(AuthPayload { method, data }));
        Ok(out)
    }

    pub(super) fn send_auth(&mut self, now: Instant) {
        let id = match IdPayload::from_identity(&self.config.local_id) {
            Ok(id) => id,
            Err(e) => return self.close(format!("local identity: {e}")),
        };
        let mut inner = match self.our_auth_payloads(id) {
            Ok(p) => p,
            Err(e) => return self.close(format!("cannot authenticate: {e}")),
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
        inner.extend([
            notify(NotifyType::INITIAL_CONTACT, vec![]),
            Payload::Sa(SaPayload { proposals }),
            Payload::TsInitiator(TsPayload::new(self.config.local_ts.clone())),
            Payload::TsResponder(TsPayload::new(self.config.remote_ts.clone())),
        ]);
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
            return self.close(if self.config.cert.is_some() {
                format!(
                    "peer refused our authentication (does it trust our certificate's CA, and \
                     does it expect {} as our identity?)",
                    self.config.local_id
                )
            } else {
                format!(
                    "peer refused our authentication (is the PSK for {} the same on both ends?)",
                    self.config.local_id
                )
            });
        }
        let id = payloads.id_r();
        let auth = payloads.auth();
        let (Some(id), Some(auth)) = (id, auth) else {
            let why = error_notify(&payloads)
                .map(notify_name)
                .unwrap_or_else(|| "no IDr or AUTH".into());
            return self.close(format!("IKE_AUTH failed: {why}"));
        };
        if let Err(why) = self.verify_peer(&payloads, id, auth) {
            // §2.21.2: the responder learns it in a separate INFORMATIONAL; no answer awaited
            let header = self.header(ExchangeType::INFORMATIONAL, self.next_request_id, false);
            let failed = [notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
            if let Some(data) = self.seal(&header, &failed) {
                self.queue(data);
            }
            return self.close(why);
        }
        self.remote = from;
        self.state = State::Established;
        self.expected_request_id = 0;
        self.established_event();
        self.child_from_auth_response(&payloads);
    }

    /// The peer's identity is the configured one and its AUTH proves the shared key (§2.15),
    /// compared in constant time, or is a signature by a certificate that chains to our CAs
    /// and names that identity; the same check for both roles.
    fn verify_peer(
        &self,
        payloads: &[Payload],
        id: &IdPayload,
        auth: &AuthPayload,
    ) -> Result<(), String> {
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
        if let Some(cert) = self.config.cert.as_ref() {
            let octets = self.signed_octets(false, id).ok_or("no keys")?;
            return cert.verify_peer(&x509_certs(payloads), id, auth.method, &auth.data, &octets);
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
        if let Err(why) = self.verify_peer(payloads, id, auth) {
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
        let mut out = match self.our_auth_payloads(our_id) {
            Ok(p) => p,
            Err(e) => {
                self.close(format!("cannot authenticate: {e}"));
                return vec![notify(NotifyType::AUTHENTICATION_FAILED, vec![])];
            }
        };
        self.state = State::Established;
        self.established_event();
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

/// CERTREQ for X.509 signatures with our trusted CAs' key hashes (RFC 7296 §3.7).
fn certreq(cert: &crate::cert::CertAuth) -> Payload {
    Payload::CertReq(crate::wire::CertPayload {
        encoding: crate::wire::CertEncoding::X509_SIGNATURE,
        data: cert.certreq(),
    })
}

/// The X.509 data of every CERT payload, in order (RFC 7296 §3.6: the first holds the key).
fn x509_certs(payloads: &[Payload]) -> Vec<&[u8]> {
    payloads
        .iter()
        .filter_map(|p| match p {
            Payload::Cert(c) if c.encoding == crate::wire::CertEncoding::X509_SIGNATURE => {
                Some(c.data.as_slice())
            }
            _ => None,
        })
        .collect()
}
