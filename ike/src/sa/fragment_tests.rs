//! Pair tests for IKE fragmentation (RFC 7383) and the responder's cookies (RFC 7296 §2.6):
//! our initiator against our responder over a virtual network that can drop, tamper with,
//! duplicate and reorder datagrams, with a virtual clock.

use super::*;
use crate::cookie::{Admission, CookieGate};
use crate::wire::{AddressRange, Header};

const I: &str = "203.0.113.10:500";
const R: &str = "203.0.113.20:500";

/// `n` /24 networks starting at `first_octet`.0.0 … each a selector of its own, to make
/// IKE_AUTH messages large (16 octets of TS payload each).
fn networks(second: u8, n: u8) -> Vec<TrafficSelector> {
    (0..n)
        .map(|k| {
            TrafficSelector::new(
                AddressRange::from_prefix(std::net::Ipv4Addr::new(198, second, k, 0).into(), 24)
                    .unwrap(),
            )
        })
        .collect()
}

fn config(
    ike: &str,
    ours: Vec<TrafficSelector>,
    theirs: Vec<TrafficSelector>,
    initiator: bool,
) -> Arc<SaConfig> {
    let me = Identity::parse(if initiator {
        "gw.attestgate.lab"
    } else {
        "vpn.corp.lab"
    })
    .unwrap();
    let peer = Identity::parse(if initiator {
        "vpn.corp.lab"
    } else {
        "gw.attestgate.lab"
    })
    .unwrap();
    Arc::new(SaConfig {
        local_id: me,
        remote_id: peer,
        psk: SecretBytes::from_slice(b"fragments-and-cookies"),
        ike_proposals: vec![IkeProposal::parse(ike).unwrap()],
        esp_proposals: vec![EspProposal::parse("aes256gcm16").unwrap()],
        local_ts: ours,
        remote_ts: theirs,
        retransmit_timeout: Duration::from_secs(1),
        retransmit_tries: 5,
        force_udp_encap: false,
        cert: None,
    })
}

fn is_fragment(d: &[u8]) -> bool {
    Header::new_checked(d).is_ok_and(|h| h.next_payload() == PayloadType::SKF)
}

fn exchange(d: &[u8]) -> Option<ExchangeType> {
    Header::new_checked(d).ok().map(|h| h.exchange_type())
}

/// The datagrams of one exchange among `seen`.
fn of(seen: &[Vec<u8>], kind: ExchangeType) -> Vec<&Vec<u8>> {
    seen.iter().filter(|d| exchange(d) == Some(kind)).collect()
}

/// What the network does to one burst of datagrams on its way.
type Path = Box<dyn FnMut(Vec<Vec<u8>>) -> Vec<Vec<u8>>>;

struct Net {
    i: IkeSa,
    r: Option<IkeSa>,
    r_config: Arc<SaConfig>,
    r_fragment_size: Option<usize>,
    gate: Option<CookieGate>,
    challenges: usize,
    now: Instant,
    to_r: Path,
    to_i: Path,
    /// Every datagram delivered, by direction.
    seen_by_r: Vec<Vec<u8>>,
    seen_by_i: Vec<Vec<u8>>,
    events_i: Vec<Event>,
    events_r: Vec<Event>,
}

fn payload(t: Transmit) -> Vec<u8> {
    if t.local_port == NATT_PORT {
        t.data[4..].to_vec()
    } else {
        t.data
    }
}

impl Net {
    fn new(ike: &str, i_ts: Vec<TrafficSelector>, r_ts: Vec<TrafficSelector>) -> Net {
        let now = Instant::now();
        let i = IkeSa::initiate(
            config(ike, i_ts.clone(), r_ts.clone(), true),
            I.parse().unwrap(),
            R.parse().unwrap(),
            now,
        );
        Net {
            i,
            r: None,
            r_config: config(ike, r_ts, i_ts, false),
            r_fragment_size: None,
            gate: None,
            challenges: 0,
            now,
            to_r: Box::new(|d| d),
            to_i: Box::new(|d| d),
            seen_by_r: vec![],
            seen_by_i: vec![],
            events_i: vec![],
            events_r: vec![],
        }
    }

    fn fragment_size(&mut self, size: usize) {
        self.i.set_fragment_size(size);
        self.r_fragment_size = Some(size);
    }

    fn deliver_to_responder(&mut self, d: Vec<u8>) {
        self.seen_by_r.push(d.clone());
        let from: SocketAddr = I.parse().unwrap();
        if let Some(r) = self.r.as_mut().filter(|r| !r.is_closed()) {
            return r.handle(&d, from, self.now);
        }
        if let Some(gate) = self.gate.as_mut() {
            match gate.admit(&d, from.ip(), 0, self.now) {
                Admission::Admit => {}
                Admission::Challenge(answer) => {
                    self.challenges += 1;
                    self.seen_by_i.push(answer.clone());
                    return self.i.handle(&answer, R.parse().unwrap(), self.now);
                }
                Admission::Drop => return,
            }
        }
        let mut r = IkeSa::accept(
            self.r_config.clone(),
            &d,
            R.parse().unwrap(),
            from,
            self.now,
        );
        if let Some(size) = self.r_fragment_size {
            r.set_fragment_size(size);
        }
        self.r = Some(r);
    }

    /// Delivers datagrams and fires timers until both sides are quiet.
    fn run(&mut self) {
        for _ in 0..200 {
            let burst: Vec<Vec<u8>> = std::iter::from_fn(|| self.i.poll_transmit())
                .map(payload)
                .collect();
            let mut moved = !burst.is_empty();
            for d in (self.to_r)(burst) {
                self.deliver_to_responder(d);
            }
            if let Some(r) = self.r.as_mut() {
                let burst: Vec<Vec<u8>> = std::iter::from_fn(|| r.poll_transmit())
                    .map(payload)
                    .collect();
                moved |= !burst.is_empty();
                for d in (self.to_i)(burst) {
                    self.seen_by_i.push(d.clone());
                    self.i.handle(&d, R.parse().unwrap(), self.now);
                }
                self.events_r.extend(std::iter::from_fn(|| r.poll_event()));
            }
            self.events_i
                .extend(std::iter::from_fn(|| self.i.poll_event()));
            if moved {
                continue;
            }
            let next = [
                self.i.poll_timeout(),
                self.r.as_ref().and_then(IkeSa::poll_timeout),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(t) = next else { return };
            self.now = self.now.max(t);
            self.i.handle_timeout(self.now);
            if let Some(r) = self.r.as_mut() {
                r.handle_timeout(self.now);
            }
        }
    }

    fn assert_established(&self) {
        assert!(self.i.is_established(), "initiator: {:?}", self.events_i);
        let r = self.r.as_ref().unwrap();
        assert!(r.is_established(), "responder: {:?}", self.events_r);
        let child = |events: &[Event]| {
            events
                .iter()
                .find_map(|e| match e {
                    Event::ChildSaEstablished(c) => Some((c.spi_in, c.spi_out, c.local_ts.len())),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("no child SA: {events:?}"))
        };
        let (ci, cr) = (child(&self.events_i), child(&self.events_r));
        assert_eq!((ci.0, ci.1), (cr.1, cr.0));
    }
}

/// A pair with 100 selectors a side: each IKE_AUTH carries ~3.2 kB of TS payloads.
fn large(ike: &str) -> Net {
    Net::new(ike, networks(18, 100), networks(19, 100))
}

/// The IKE_AUTH request's datagrams as the responder got them.
fn auth_request(net: &Net) -> Vec<Vec<u8>> {
    of(&net.seen_by_r, ExchangeType::IKE_AUTH)
        .into_iter()
        .cloned()
        .collect()
}

fn fragments(seen: &[Vec<u8>]) -> usize {
    seen.iter().filter(|d| is_fragment(d)).count()
}

#[test]
fn a_large_ike_auth_travels_in_fragments_both_ways() {
    for ike in [
        "aes256gcm16-prfsha384-ecp384",
        "aes128-sha256-modp2048",
        "chacha20poly1305-prfsha256-x25519",
    ] {
        let mut net = large(ike);
        net.run();
        net.assert_established();
        assert!(net.i.fragmentation_negotiated());
        assert!(net.r.as_ref().unwrap().fragmentation_negotiated());
        // default size: 1280-octet IP datagrams
        assert!(fragments(&net.seen_by_r) >= 3, "{ike}");
        assert!(fragments(&net.seen_by_i) >= 3, "{ike}");
        for d in net.seen_by_r.iter().chain(&net.seen_by_i) {
            assert!(d.len() <= 1280 - 28, "{ike}: {}", d.len());
        }
        let child = net
            .events_i
            .iter()
            .find_map(|e| match e {
                Event::ChildSaEstablished(c) => Some(c),
                _ => None,
            })
            .unwrap();
        assert_eq!(child.local_ts.len(), 100);
        assert_eq!(child.remote_ts.len(), 100);
    }
}

#[test]
fn ike_sa_init_is_never_fragmented_and_later_messages_are() {
    // a fragment size far below IKE_SA_INIT's size (modp2048: a 256-octet KE payload)
    let mut net = Net::new("aes128-sha256-modp2048", networks(18, 6), networks(19, 6));
    net.fragment_size(300);
    net.run();
    net.assert_established();
    let init: Vec<&Vec<u8>> = of(&net.seen_by_r, ExchangeType::IKE_SA_INIT);
    assert_eq!(init.len(), 1);
    assert!(!is_fragment(init[0]) && init[0].len() > 300);
    let auth: Vec<&Vec<u8>> = of(&net.seen_by_r, ExchangeType::IKE_AUTH);
    assert!(auth.len() >= 2 && auth.iter().all(|d| is_fragment(d) && d.len() <= 272));
    // an established SA fragments later exchanges too (a rekey with many selectors)
    let spi = net.i.child_spis()[0];
    let before = fragments(&net.seen_by_r);
    net.i.rekey_child(spi, net.now);
    net.run();
    assert!(fragments(&net.seen_by_r) > before);
    assert!(
        net.events_i
            .iter()
            .any(|e| matches!(e, Event::ChildSaEstablished(c) if c.rekeys == Some(spi))),
        "{:?}",
        net.events_i
    );
}

#[test]
fn fragments_out_of_order_and_duplicated_reassemble_once() {
    let mut net = large("aes256gcm16-prfsha256-ecp256");
    // every burst arrives backwards and twice
    let mess = |burst: Vec<Vec<u8>>| -> Vec<Vec<u8>> {
        burst
            .into_iter()
            .rev()
            .flat_map(|d| [d.clone(), d])
            .collect()
    };
    net.to_r = Box::new(mess);
    net.to_i = Box::new(mess);
    net.run();
    net.assert_established();
    // the responder answered the IKE_AUTH request once: one set of response fragments, sent
    // twice by the network and by no retransmission
    let response_fragments = of(&net.seen_by_i, ExchangeType::IKE_AUTH).len();
    assert!(response_fragments >= 6 && response_fragments.is_multiple_of(2));
    let children = net
        .events_r
        .iter()
        .filter(|e| matches!(e, Event::ChildSaEstablished(_)))
        .count();
    assert_eq!(children, 1);
}

#[test]
fn a_lost_fragment_is_recovered_by_resending_all_fragments() {
    let mut net = large("aes256gcm16-prfsha256-ecp256");
    let mut dropped = false;
    net.to_r = Box::new(move |burst| {
        let mut burst = burst;
        if !dropped && burst.len() > 1 && burst.iter().all(|d| is_fragment(d)) {
            dropped = true;
            burst.remove(1);
        }
        burst
    });
    net.run();
    net.assert_established();
    // the first try lost fragment 2; the retransmission sent the same fragments again
    let auth: Vec<&Vec<u8>> = of(&net.seen_by_r, ExchangeType::IKE_AUTH);
    let total = auth.len() + 1;
    assert!(total.is_multiple_of(2), "{}", auth.len());
    let per_try = total / 2;
    assert_eq!(auth[0], auth[per_try - 1], "fragment 1 resent unchanged");
    assert_eq!(auth[1], auth[per_try + 1], "fragment 3 resent unchanged");
}

#[test]
fn a_tampered_fragment_is_dropped_before_reassembly() {
    let mut net = large("aes128-sha256-modp2048");
    let mut tampered = 0;
    net.to_i = Box::new(move |mut burst| {
        if tampered == 0 {
            if let Some(d) = burst.iter_mut().find(|d| is_fragment(d)) {
                let at = d.len() - 30; // ciphertext
                d[at] ^= 0x80;
                tampered += 1;
            }
        }
        burst
    });
    net.run();
    // the initiator kept waiting, retransmitted its request, and the responder answered again
    net.assert_established();
    let requests = of(&net.seen_by_r, ExchangeType::IKE_AUTH).len();
    let responses = of(&net.seen_by_i, ExchangeType::IKE_AUTH).len();
    assert!(
        requests >= 2 * 3 && responses >= 2 * 3,
        "{requests} {responses}"
    );
}

#[test]
fn a_retransmitted_fragmented_request_is_answered_on_its_first_fragment_only() {
    let mut net = large("aes256gcm16-prfsha256-ecp256");
    net.run();
    net.assert_established();
    let request = auth_request(&net);
    let answered = of(&net.seen_by_i, ExchangeType::IKE_AUTH).len();
    let r = net.r.as_mut().unwrap();
    let from: SocketAddr = I.parse().unwrap();
    // the later fragments alone get no answer
    for d in &request[1..] {
        r.handle(d, from, net.now);
    }
    assert!(r.poll_transmit().is_none());
    r.handle(&request[0], from, net.now);
    let again: Vec<Transmit> = std::iter::from_fn(|| r.poll_transmit()).collect();
    assert_eq!(again.len(), answered);
    assert!(again.iter().all(|t| is_fragment(&t.data)));
    assert!(r.is_established());
}

/// With the threshold at 0 every initiator is asked for a cookie; at 1 the first one is not.
#[test]
fn the_responder_asks_for_a_cookie_and_the_retry_establishes() {
    for (threshold, challenges) in [(0, 1), (1, 0)] {
        let mut net = Net::new(
            "aes256gcm16-prfsha256-x25519",
            networks(18, 1),
            networks(19, 1),
        );
        let gate = CookieGate::new(threshold, crate::cookie::DEFAULT_ROTATION, net.now);
        net.gate = Some(gate.unwrap());
        net.run();
        net.assert_established();
        assert_eq!(net.challenges, challenges);
        let init: Vec<&Vec<u8>> = of(&net.seen_by_r, ExchangeType::IKE_SA_INIT);
        assert_eq!(init.len(), 1 + challenges);
        // the retry carries the cookie as its first payload (§2.6)
        let last = Message::parse(init[challenges]).unwrap();
        assert_eq!(
            matches!(&last.payloads[0], Payload::Notify(n) if n.kind == NotifyType::COOKIE),
            challenges == 1,
            "{:?}",
            last.payloads
        );
    }
}

#[test]
fn without_negotiated_support_nothing_is_fragmented_and_fragments_are_ignored() {
    let mut net = large("aes256gcm16-prfsha256-ecp256");
    net.run();
    net.assert_established();
    let request = auth_request(&net);
    // as if neither end had announced IKEV2_FRAGMENTATION_SUPPORTED
    net.i.frag.negotiated = false;
    net.r.as_mut().unwrap().frag.negotiated = false;
    let spi = net.i.child_spis()[0];
    net.i.rekey_child(spi, net.now);
    net.run();
    let rekey = of(&net.seen_by_r, ExchangeType::CREATE_CHILD_SA);
    assert_eq!(rekey.len(), 1);
    assert!(!is_fragment(rekey[0]) && rekey[0].len() > 1280);
    assert!(net
        .events_i
        .iter()
        .any(|e| matches!(e, Event::ChildSaEstablished(c) if c.rekeys == Some(spi))));
    // a fragment now is dropped: no answer, no state change
    let r = net.r.as_mut().unwrap();
    r.handle(&request[0], I.parse().unwrap(), net.now);
    assert!(r.poll_transmit().is_none());
    assert!(r.is_established());
}

#[test]
fn mangled_fragments_never_panic_nor_disturb_the_sa() {
    let mut net = large("aes128-sha256-modp2048");
    net.run();
    net.assert_established();
    let request = auth_request(&net);
    let r = net.r.as_mut().unwrap();
    let from: SocketAddr = I.parse().unwrap();
    for d in &request {
        for cut in (0..d.len()).step_by(7) {
            r.handle(&d[..cut], from, net.now);
        }
        for at in (0..d.len()).step_by(3) {
            let mut bad = d.clone();
            bad[at] ^= 0xa5;
            r.handle(&bad, from, net.now);
        }
    }
    // no mangled copy made it answer again; the genuine fragment 1 still does
    let answers = std::iter::from_fn(|| r.poll_transmit()).count();
    assert_eq!(answers, 0);
    assert!(r.is_established());
    r.handle(&request[0], from, net.now);
    assert!(r.poll_transmit().is_some());
}
