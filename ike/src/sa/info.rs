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
                        if let Some(held) = self.held_ike.take() {
                            // §2.25.2: the peer finished its rekey (which we answered while
                            // ours was outstanding) and deletes the old SA: switch to its new
                            // one once this answer is sent, and forget our own rekey
                            self.new_ike = Some(held);
                            return vec![];
                        }
                        self.cause = CloseCause::DeletedByPeer;
                        self.close("peer deleted the IKE SA".into());
                        return vec![];
                    }
                    DeletePayload::Child { protocol, spis } if *protocol == ProtocolId::ESP => {
                        let ours = self.peer_deleted_children(spis);
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

    /// The peer deleted the child SAs it receives on (`spis`, our outbound SPIs); returns our
    /// inbound SPIs of them for the answer (§1.4.1).
    pub(super) fn peer_deleted_children(&mut self, spis: &[u32]) -> Vec<u32> {
        let mut ours = Vec::new();
        for spi in spis {
            if let Some(pos) = self.children.iter().position(|c| c.spi_out == *spi) {
                let c = self.children.remove(pos);
                self.child_gone(c.spi_in);
                ours.push(c.spi_in);
                // a delete we queued for it is moot now (§1.4.1: simultaneous deletes)
                self.ops.retain(|op| *op != Op::DeleteChild(c.spi_in));
                let reason = if c.replaced {
                    "replaced by a rekey; deleted by the peer"
                } else {
                    "deleted by the peer"
                };
                self.events.push_back(Event::ChildSaDeleted {
                    spi_in: c.spi_in,
                    spi_out: c.spi_out,
                    reason: reason.into(),
                });
            }
        }
        ours
    }
}
