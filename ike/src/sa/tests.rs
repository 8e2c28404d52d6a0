//! Our initiator against our responder over a virtual network with a virtual clock.

use super::*;
use crate::wire::AddressRange;

// certificate authentication over the same pair harness
#[path = "cert_tests.rs"]
mod cert_tests;

fn ts(a: &str, b: &str) -> TrafficSelector {
    TrafficSelector::new(AddressRange::V4 {
        start: a.parse().unwrap(),
        end: b.parse().unwrap(),
    })
}

fn config(ike: &str, esp: &str, psk: &str, initiator: bool) -> Arc<SaConfig> {
    let (l, r) = (
        Identity::parse("gw.attestgate.lab").unwrap(),
        Identity::parse("vpn.corp.lab").unwrap(),
    );
    let (lts, rts) = (
        vec![ts("198.18.100.0", "198.18.100.255")],
        vec![ts("198.19.0.0", "198.19.0.255")],
    );
    Arc::new(SaConfig {
        local_id: if initiator { l.clone() } else { r.clone() },
        remote_id: if initiator { r } else { l },
        psk: SecretBytes::from_slice(psk.as_bytes()),
        ike_proposals: ike
            .split(',')
            .map(|p| IkeProposal::parse(p).unwrap())
            .collect(),
        esp_proposals: esp
            .split(',')
            .map(|p| EspProposal::parse(p).unwrap())
            .collect(),
        local_ts: if initiator { lts.clone() } else { rts.clone() },
        remote_ts: if initiator { rts } else { lts },
        retransmit_timeout: Duration::from_secs(1),
        retransmit_tries: 4,
        force_udp_encap: false,
        cert: None,
    })
}

const I: &str = "203.0.113.10:500";
const R: &str = "203.0.113.20:500";

struct Pair {
    i: IkeSa,
    r: Option<IkeSa>,
    r_config: Arc<SaConfig>,
    now: Instant,
    /// Seen from the responder, the initiator's address (differs from `I` behind a NAT).
    i_seen_as: SocketAddr,
    events_i: Vec<Event>,
    events_r: Vec<Event>,
    drop_next_to_i: usize,
}

fn strip(t: &Transmit) -> &[u8] {
    if t.local_port == NATT_PORT {
        &t.data[4..]
    } else {
        &t.data
    }
}

impl Pair {
    fn new(i: Arc<SaConfig>, r: Arc<SaConfig>) -> Pair {
        let now = Instant::now();
        Pair {
            i: IkeSa::initiate(i, I.parse().unwrap(), R.parse().unwrap(), now),
            r: None,
            r_config: r,
            now,
            i_seen_as: I.parse().unwrap(),
            events_i: vec![],
            events_r: vec![],
            drop_next_to_i: 0,
        }
    }

    /// Delivers datagrams until both sides are quiet.
    fn run(&mut self) {
        for _ in 0..50 {
            let mut moved = false;
            while let Some(t) = self.i.poll_transmit() {
                moved = true;
                let mut from = self.i_seen_as;
                from.set_port(if t.local_port == NATT_PORT {
                    from.port().max(NATT_PORT)
                } else {
                    from.port()
                });
                match self.r.as_mut() {
                    // an endpoint hands a new IKE_SA_INIT to a new responder SA
                    Some(r) if !r.is_closed() => r.handle(strip(&t), from, self.now),
                    _ => {
                        self.r = Some(IkeSa::accept(
                            self.r_config.clone(),
                            strip(&t),
                            R.parse().unwrap(),
                            from,
                            self.now,
                        ))
                    }
                }
            }
            if let Some(r) = self.r.as_mut() {
                while let Some(t) = r.poll_transmit() {
                    moved = true;
                    if self.drop_next_to_i > 0 {
                        self.drop_next_to_i -= 1;
                        continue;
                    }
                    let mut from: SocketAddr = R.parse().unwrap();
                    from.set_port(t.local_port);
                    self.i.handle(strip(&t), from, self.now);
                }
                while let Some(e) = r.poll_event() {
                    self.events_r.push(e);
                }
            }
            while let Some(e) = self.i.poll_event() {
                self.events_i.push(e);
            }
            if !moved {
                match self.i.poll_timeout() {
                    Some(t) if !self.i.is_established() && !self.i.is_closed() => {
                        self.now = t;
                        self.i.handle_timeout(self.now);
                    }
                    _ => return,
                }
            }
        }
    }

    fn child(events: &[Event]) -> Option<&ChildSa> {
        events.iter().find_map(|e| {
            if let Event::ChildSaEstablished(c) = e {
                Some(&**c)
            } else {
                None
            }
        })
    }

    fn closed(events: &[Event]) -> Option<&str> {
        events.iter().find_map(|e| {
            if let Event::Closed { reason } = e {
                Some(reason.as_str())
            } else {
                None
            }
        })
    }
}

fn established(ike: &str, esp: &str) -> Pair {
    let mut p = Pair::new(
        config(ike, esp, "secret", true),
        config(ike, esp, "secret", false),
    );
    p.run();
    assert!(p.i.is_established(), "initiator: {:?}", p.events_i);
    assert!(
        p.r.as_ref().unwrap().is_established(),
        "responder: {:?}",
        p.events_r
    );
    p
}

#[test]
fn every_suite_establishes_with_matching_child_keys() {
    for (ike, esp) in [
        ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16"),
        ("aes128-sha256-modp2048", "aes128gcm16"),
        ("aes256-sha512-ecp256", "aes256-sha256"),
    ] {
        let p = established(ike, esp);
        let ci = Pair::child(&p.events_i).unwrap_or_else(|| panic!("{ike}: {:?}", p.events_i));
        let cr = Pair::child(&p.events_r).unwrap_or_else(|| panic!("{ike}: {:?}", p.events_r));
        assert_eq!(ci.spi_out, cr.spi_in, "{ike}");
        assert_eq!(ci.spi_in, cr.spi_out, "{ike}");
        assert_eq!(
            ci.keys.initiator_to_responder.encryption.as_bytes(),
            cr.keys.initiator_to_responder.encryption.as_bytes(),
            "{ike}"
        );
        assert_ne!(
            ci.keys.initiator_to_responder.encryption.as_bytes(),
            ci.keys.responder_to_initiator.encryption.as_bytes()
        );
        assert_eq!(ci.proposal.to_string(), format!("{esp}-noesn"));
        assert_eq!(ci.local_ts, vec![ts("198.18.100.0", "198.18.100.255")]);
        assert_eq!(cr.local_ts, vec![ts("198.19.0.0", "198.19.0.255")]);
        assert!(!ci.udp_encap);
    }
}

#[test]
fn wrong_psk_fails_on_both_sides_with_a_reason() {
    let mut p = Pair::new(
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "one", true),
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "two", false),
    );
    p.run();
    assert!(p.i.is_closed());
    assert!(
        Pair::closed(&p.events_r)
            .unwrap()
            .contains("failed to prove the pre-shared key"),
        "{:?}",
        p.events_r
    );
    assert!(
        Pair::closed(&p.events_i)
            .unwrap()
            .contains("refused our authentication"),
        "{:?}",
        p.events_i
    );
}

#[test]
fn invalid_ke_payload_makes_the_initiator_retry_with_the_asked_group() {
    let mut p = Pair::new(
        config(
            "aes256gcm16-prfsha256-x25519-ecp256",
            "aes256gcm16",
            "s",
            true,
        ),
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false),
    );
    // the first responder answers INVALID_KE_PAYLOAD statelessly and closes; a new one takes the retry
    p.run();
    assert!(
        Pair::closed(&p.events_r)
            .unwrap()
            .contains("asked for Ecp256"),
        "{:?}",
        p.events_r
    );
    assert!(p.i.is_established(), "{:?}", p.events_i);
    assert!(p.events_i.iter().any(|e| matches!(e, Event::IkeSaEstablished { proposal, .. } if proposal.dh == vec![DhGroup::Ecp256])));
}

#[test]
fn no_common_proposal_names_both_sides_offers() {
    let mut p = Pair::new(
        config(
            "chacha20poly1305-prfsha256-x25519",
            "aes256gcm16",
            "s",
            true,
        ),
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false),
    );
    p.run();
    let r = Pair::closed(&p.events_r).unwrap();
    assert!(
        r.contains("peer offered chacha20poly1305-prfsha256-x25519")
            && r.contains("we accept aes256gcm16-prfsha256-ecp256"),
        "{r}"
    );
    assert!(Pair::closed(&p.events_i)
        .unwrap()
        .contains("NO_PROPOSAL_CHOSEN"));
}

#[test]
fn lost_responses_are_retransmitted_and_duplicates_answered_again() {
    let mut p = Pair::new(
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", true),
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false),
    );
    p.drop_next_to_i = 2; // IKE_SA_INIT response and its first answer to the retransmission
    p.run();
    assert!(p.i.is_established(), "{:?}", p.events_i);
    assert_eq!(
        p.events_r
            .iter()
            .filter(|e| matches!(e, Event::ChildSaEstablished(_)))
            .count(),
        1
    );
}

#[test]
fn a_silent_peer_ends_in_a_timeout() {
    let mut sa = IkeSa::initiate(
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", true),
        I.parse().unwrap(),
        R.parse().unwrap(),
        Instant::now(),
    );
    let mut sent = 0;
    while !sa.is_closed() {
        while sa.poll_transmit().is_some() {
            sent += 1;
        }
        let now = sa.poll_timeout().unwrap();
        sa.handle_timeout(now);
    }
    assert_eq!(sent, 4);
    assert!(
        matches!(sa.poll_event(), Some(Event::Closed { reason }) if reason.contains("did not answer after 4"))
    );
}

#[test]
fn a_nat_moves_the_exchange_to_port_4500() {
    let mut p = Pair::new(
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", true),
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false),
    );
    p.i_seen_as = "198.51.100.77:31000".parse().unwrap();
    p.run();
    assert!(p.i.is_established(), "{:?}", p.events_i);
    assert!(Pair::child(&p.events_i).unwrap().udp_encap);
    assert!(p.events_i.iter().any(|e| matches!(
        e,
        Event::IkeSaEstablished {
            nat_detected: true,
            ..
        }
    )));
}

#[test]
fn traffic_selectors_are_narrowed_by_the_responder() {
    let i = config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", true);
    let mut r = (*config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false)).clone();
    r.local_ts = vec![ts("198.19.0.0", "198.19.0.127")];
    let mut p = Pair::new(i, Arc::new(r));
    p.run();
    let c = Pair::child(&p.events_i).unwrap();
    assert_eq!(c.remote_ts, vec![ts("198.19.0.0", "198.19.0.127")]);
    // disjoint: the IKE SA stays, the child SA is refused with TS_UNACCEPTABLE
    let i = config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", true);
    let mut r = (*config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false)).clone();
    r.local_ts = vec![ts("203.0.113.0", "203.0.113.255")];
    let mut p = Pair::new(i, Arc::new(r));
    p.run();
    assert!(p.i.is_established());
    assert!(
        p.events_i.iter().any(
            |e| matches!(e, Event::ChildSaFailed { reason } if reason.contains("TS_UNACCEPTABLE"))
        ),
        "{:?}",
        p.events_i
    );
}

#[test]
fn garbage_never_panics_and_changes_nothing() {
    let mut p = established("aes256gcm16-prfsha256-ecp256", "aes256gcm16");
    let (si, sr) = p.i.spis();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..5000usize {
        let len = n % 300;
        let mut d = Vec::with_capacity(len);
        for _ in 0..len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            d.push(x as u8);
        }
        if len >= 16 && n % 2 == 0 {
            d[..8].copy_from_slice(&si.to_be_bytes());
            d[8..16].copy_from_slice(&sr.to_be_bytes());
        }
        p.i.handle(&d, R.parse().unwrap(), p.now);
        p.r.as_mut().unwrap().handle(&d, I.parse().unwrap(), p.now);
        let _ = IkeSa::accept(
            p.r_config.clone(),
            &d,
            R.parse().unwrap(),
            I.parse().unwrap(),
            p.now,
        );
    }
    assert!(p.i.is_established() && p.r.as_ref().unwrap().is_established());
}

fn children(events: &[Event]) -> Vec<&ChildSa> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::ChildSaEstablished(c) = e {
                Some(&**c)
            } else {
                None
            }
        })
        .collect()
}

fn deleted(events: &[Event]) -> Vec<(u32, u32)> {
    events
        .iter()
        .filter_map(|e| {
            if let Event::ChildSaDeleted {
                spi_in, spi_out, ..
            } = e
            {
                Some((*spi_in, *spi_out))
            } else {
                None
            }
        })
        .collect()
}

fn rekey_from(initiator_side: bool, esp: &str) {
    let mut p = established("aes256gcm16-prfsha256-ecp256", esp);
    let first_i = Pair::child(&p.events_i).unwrap().spi_in;
    let first_r = Pair::child(&p.events_r).unwrap().spi_in;
    let now = p.now;
    if initiator_side {
        p.i.rekey_child(first_i, now);
    } else {
        p.r.as_mut().unwrap().rekey_child(first_r, now);
    }
    p.run();
    let (ci, cr) = (children(&p.events_i), children(&p.events_r));
    assert_eq!(
        (ci.len(), cr.len()),
        (2, 2),
        "{:?} / {:?}",
        p.events_i,
        p.events_r
    );
    let (ni, nr) = (ci[1], cr[1]);
    assert_eq!(ni.rekeys, Some(first_i));
    assert_eq!(nr.rekeys, Some(first_r));
    assert_eq!(ni.spi_out, nr.spi_in);
    assert_eq!(ni.spi_in, nr.spi_out);
    assert_ne!(ni.spi_in, first_i);
    // both ends agree on the new keys in each direction
    assert!(ni.outbound().is_ok());
    let key = |c: &ChildSa, out: bool| {
        let k = match (c.role, out) {
            (Role::Initiator, true) | (Role::Responder, false) => &c.keys.initiator_to_responder,
            _ => &c.keys.responder_to_initiator,
        };
        k.encryption.as_bytes().to_vec()
    };
    assert_eq!(key(ni, true), key(nr, false));
    assert_eq!(key(ni, false), key(nr, true));
    assert_ne!(
        key(ni, true),
        key(ci[0], true),
        "rekeyed SA reuses the old keys"
    );
    // the old SA is deleted on both ends, the new one stays
    assert_eq!(
        deleted(&p.events_i),
        vec![(first_i, Pair::child(&p.events_i).unwrap().spi_out)]
    );
    assert_eq!(
        deleted(&p.events_r),
        vec![(first_r, Pair::child(&p.events_r).unwrap().spi_out)]
    );
    assert_eq!(p.i.child_spis(), vec![ni.spi_in]);
    assert_eq!(p.r.as_ref().unwrap().child_spis(), vec![nr.spi_in]);
    assert_eq!(ni.proposal.dh.is_empty(), !esp.contains("ecp"));
}

#[test]
fn child_rekey_from_the_initiator_without_pfs() {
    rekey_from(true, "aes256gcm16");
}

#[test]
fn child_rekey_from_the_responder_with_pfs() {
    rekey_from(false, "aes256gcm16-ecp256");
}

#[test]
fn repeated_rekeys_keep_one_child_sa() {
    let mut p = established("chacha20poly1305-prfsha256-x25519", "chacha20poly1305");
    for n in 0..5 {
        let spi = p.i.child_spis()[0];
        let now = p.now;
        if n % 2 == 0 {
            p.i.rekey_child(spi, now);
        } else {
            let rspi = p.r.as_ref().unwrap().child_spis()[0];
            p.r.as_mut().unwrap().rekey_child(rspi, now);
        }
        p.run();
        assert_eq!(
            p.i.child_spis().len(),
            1,
            "after rekey {n}: {:?}",
            p.events_i
        );
        assert_ne!(p.i.child_spis()[0], spi);
    }
    assert_eq!(children(&p.events_i).len(), 6);
    assert_eq!(deleted(&p.events_r).len(), 5);
}

#[test]
fn liveness_checks_are_answered_and_delete_closes_both_ends() {
    let mut p = established("aes256gcm16-prfsha256-ecp256", "aes256gcm16");
    let now = p.now;
    p.i.check_liveness(now);
    p.run();
    assert!(p.events_i.iter().any(|e| matches!(e, Event::Alive)));
    p.r.as_mut().unwrap().check_liveness(now);
    p.run();
    assert!(p.events_r.iter().any(|e| matches!(e, Event::Alive)));
    p.i.delete(now);
    p.run();
    assert!(p.i.is_closed() && p.r.as_ref().unwrap().is_closed());
    assert_eq!(Pair::closed(&p.events_r), Some("peer deleted the IKE SA"));
}

#[test]
fn a_dead_peer_is_noticed_by_the_liveness_check() {
    let mut p = established("aes256gcm16-prfsha256-ecp256", "aes256gcm16");
    let now = p.now;
    p.i.check_liveness(now);
    // the peer is gone: nothing is delivered, the timers run out
    while !p.i.is_closed() {
        while p.i.poll_transmit().is_some() {}
        let at = p.i.poll_timeout().unwrap();
        p.i.handle_timeout(at);
    }
    let mut reason = None;
    while let Some(e) = p.i.poll_event() {
        if let Event::Closed { reason: r } = e {
            reason = Some(r);
        }
    }
    assert!(reason.unwrap().contains("did not answer"));
}

#[test]
fn forced_encapsulation_makes_both_ends_use_udp_4500() {
    let mut i = (*config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", true)).clone();
    i.force_udp_encap = true;
    let mut p = Pair::new(
        Arc::new(i),
        config("aes256gcm16-prfsha256-ecp256", "aes256gcm16", "s", false),
    );
    p.run();
    assert!(Pair::child(&p.events_i).unwrap().udp_encap);
    assert!(
        Pair::child(&p.events_r).unwrap().udp_encap,
        "the responder did not see the faked NAT"
    );
}
