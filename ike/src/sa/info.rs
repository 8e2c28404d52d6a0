//! INFORMATIONAL exchanges (RFC 7296 §1.4): liveness checks and deletes.

use super::*;

impl IkeSa {
    /// Liveness checks get an empty answer; deletes are confirmed (§1.4.1).
    pub(super) fn answer_informational(&mut self, payloads: &[Payload]) -> Vec<Payload> {
        if find_notify(payloads, NotifyType::AUTHENTICATION_FAILED).is_some() {
            // the initiator refused our IKE_AUTH response (§2.21.2)
            self.close("peer refused our authentication after IKE_AUTH".into());
            return vec![];
        }
        let mut out = Vec::new();
        for p in payloads {
            if let Payload::Delete(d) = p {
                match d {
                    DeletePayload::Ike => {
                        self.close("peer deleted the IKE SA".into());
                        return vec![];
                    }
                    DeletePayload::Child { protocol, spis } if *protocol == ProtocolId::ESP => {
                        // the peer names its inbound SPIs, our outbound ones; we answer with
                        // ours (§1.4.1)
                        let mut ours = Vec::new();
                        for spi in spis {
                            if let Some(pos) = self.children.iter().position(|c| c.spi_out == *spi)
                            {
                                let c = self.children.remove(pos);
                                ours.push(c.spi_in);
                                self.events.push_back(Event::ChildSaDeleted {
                                    spi_in: c.spi_in,
                                    spi_out: c.spi_out,
                                });
                            }
                        }
                        if !ours.is_empty() {
                            out.push(Payload::Delete(DeletePayload::Child {
                                protocol: *protocol,
                                spis: ours,
                            }));
                        }
                    }
                    DeletePayload::Child { .. } => {}
                }
            }
        }
        out
    }
}
