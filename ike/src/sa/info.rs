//! INFORMATIONAL exchanges (RFC 7296 §1.4): liveness checks and deletes.

use super::*;

impl IkeSa {
    /// Liveness checks get an empty answer; deletes are confirmed (§1.4.1).
    pub(super) fn answer_informational(&mut self, payloads: &[Payload]) -> Vec<Payload> {
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
