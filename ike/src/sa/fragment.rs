//! IKE fragmentation (RFC 7383): large encrypted messages leave as SKF fragments, each
//! protected on its own, and fragments from the peer are checked one by one and put back
//! together.
//!
//! Support is announced in IKE_SA_INIT (§2.3, `init.rs`); IKE_SA_INIT itself is never
//! fragmented (§2.5). Sending hooks into [`IkeSa::queue`]: a whole SK message larger than the
//! fragment size is cut into fragments once, and every retransmission sends all of them again,
//! unchanged (§2.6.1). Receiving hooks into [`IkeSa::handle`]: a fragment is taken only for the
//! message ID the SA waits for and only after its integrity check (§2.6); a fragment of a
//! request we already answered makes us resend the answer only when it is fragment 1 (§2.6.1).
//! The reassembled message is handed to the ordinary path as one SK message sealed again under
//! the inbound key, so every exchange handler reads it unchanged.
//!
//! Not done: path MTU discovery (§2.5.2) and a reassembly timer; a partial message is simply
//! replaced by the next message's fragments, and its size is bounded.

use super::*;
use crate::wire::Header;
use zeroize::Zeroizing;

/// The IP datagram size fragments are cut to by default: 1280 octets, the IPv6 minimum MTU,
/// for IPv4 too (RFC 7383 §2.5.1 discusses the choice; strongSwan's default is the same).
pub const DEFAULT_FRAGMENT_SIZE: usize = 1280;

/// More fragments than this for one message are refused (§2.6: limits against exhaustion).
pub const MAX_FRAGMENTS: u16 = 64;

/// A reassembled message may hold at most this many octets of inner payloads. It must also fit
/// one SK payload (a 16-bit length) to be handed to the ordinary path.
pub const MAX_REASSEMBLED: usize = 60_000;

/// How many sent messages keep their fragments for retransmission: the outstanding request and
/// the last response.
const SENT_KEPT: usize = 2;

/// The fragmentation state of one IKE SA.
#[derive(Debug)]
pub(super) struct Fragmentation {
    /// Both ends announced support (§2.3).
    pub(super) negotiated: bool,
    /// The largest IP datagram a fragment may make.
    ip_size: usize,
    /// Fragments of requests from the peer, and of responses to our requests.
    requests: Reassembler,
    responses: Reassembler,
    /// Messages we fragmented: the whole message and its fragments.
    sent: VecDeque<(Vec<u8>, Vec<Vec<u8>>)>,
}

impl Default for Fragmentation {
    fn default() -> Self {
        Fragmentation {
            negotiated: false,
            ip_size: DEFAULT_FRAGMENT_SIZE,
            requests: Reassembler::default(),
            responses: Reassembler::default(),
            sent: VecDeque::new(),
        }
    }
}

impl Fragmentation {
    /// The largest IKE message (UDP payload without the non-ESP marker) a fragment may be.
    fn max_message(&self, remote: SocketAddr, natt: bool) -> usize {
        let ip_header = if remote.is_ipv4() { 20 } else { 40 };
        let marker = if natt { 4 } else { 0 };
        self.ip_size.saturating_sub(ip_header + 8 + marker)
    }
}

/// A checked fragment's content, as [`Reassembler::add`] takes it.
#[derive(Debug)]
pub(crate) struct Fragment {
    pub(crate) number: u16,
    pub(crate) total: u16,
    /// The first inner payload's type; only fragment 1's counts (§2.5).
    pub(crate) first_inner: PayloadType,
    pub(crate) inner: Zeroizing<Vec<u8>>,
}

/// What a fragment did to the message being reassembled.
#[derive(Debug)]
pub(crate) enum Added {
    /// Kept; more are missing.
    Incomplete,
    /// The last missing one: the whole message's inner payloads.
    Complete {
        first_inner: PayloadType,
        inner: Zeroizing<Vec<u8>>,
    },
    /// Already had it (§2.6: duplicates are ignored).
    Duplicate,
    /// Refused; the reason is for logs and tests.
    Refused(&'static str),
}

/// Which message a reassembly belongs to: the IKE SA's SPIs (a rekeyed IKE SA starts its
/// message IDs again) and the message ID.
pub(crate) type MessageKey = (u64, u64, u32);

#[derive(Debug)]
struct Partial {
    key: MessageKey,
    total: u16,
    first_inner: PayloadType,
    parts: Vec<Option<Zeroizing<Vec<u8>>>>,
    len: usize,
}

/// Reassembles one message at a time (§2.6): fragments of another message replace it.
#[derive(Debug, Default)]
pub(crate) struct Reassembler {
    partial: Option<Partial>,
}

impl Reassembler {
    /// Adds a fragment whose integrity was already checked.
    pub(crate) fn add(&mut self, key: MessageKey, f: Fragment) -> Added {
        if f.number == 0 || f.number > f.total {
            return Added::Refused("Fragment Number is not within 1..=Total Fragments");
        }
        if f.total > MAX_FRAGMENTS {
            return Added::Refused("more fragments than we reassemble");
        }
        let restart = match &self.partial {
            None => true,
            Some(p) if p.key != key => true,
            // §2.6: a larger Total Fragments means the sender cut the message again into
            // smaller pieces (§2.5.2); those replace what we have, and a fragment of the older,
            // coarser cut arriving late is dropped
            Some(p) if f.total > p.total => true,
            Some(p) if f.total < p.total => {
                return Added::Refused("Total Fragments smaller than earlier fragments")
            }
            Some(_) => false,
        };
        if restart {
            self.partial = Some(Partial {
                key,
                total: f.total,
                first_inner: PayloadType::NONE,
                parts: vec![None; usize::from(f.total)],
                len: 0,
            });
        }
        let Some(p) = self.partial.as_mut() else {
            return Added::Refused("no reassembly");
        };
        let index = usize::from(f.number - 1);
        let Some(slot) = p.parts.get_mut(index) else {
            return Added::Refused("Fragment Number is not within 1..=Total Fragments");
        };
        if slot.is_some() {
            return Added::Duplicate;
        }
        if p.len + f.inner.len() > MAX_REASSEMBLED {
            self.partial = None;
            return Added::Refused("reassembled message would be too large");
        }
        p.len += f.inner.len();
        if f.number == 1 {
            p.first_inner = f.first_inner;
        }
        *slot = Some(f.inner);
        if p.parts.iter().any(Option::is_none) {
            return Added::Incomplete;
        }
        let Some(p) = self.partial.take() else {
            return Added::Refused("no reassembly");
        };
        let mut inner = Zeroizing::new(Vec::with_capacity(p.len));
        for part in p.parts.into_iter().flatten() {
            inner.extend_from_slice(&part);
        }
        Added::Complete {
            first_inner: p.first_inner,
            inner,
        }
    }
}

impl IkeSa {
    /// Sets the largest IP datagram (header included) a fragment may make, like strongSwan's
    /// `charon.fragment_size`; [`DEFAULT_FRAGMENT_SIZE`] unless set. Applies to messages sent
    /// after the call, once both ends announced fragmentation support.
    pub fn set_fragment_size(&mut self, ip_size: usize) {
        self.frag.ip_size = ip_size;
    }

    /// True when both ends announced IKE fragmentation support (RFC 7383 §2.3).
    pub fn fragmentation_negotiated(&self) -> bool {
        self.frag.negotiated
    }

    /// The fragments to send instead of `data`, when `data` is an SK message too large for one
    /// datagram and fragmentation was negotiated. The same message always gets the same
    /// fragments, so retransmissions resend all of them unchanged.
    pub(super) fn fragments_for(&mut self, data: &[u8]) -> Option<Vec<Vec<u8>>> {
        if !self.frag.negotiated {
            return None;
        }
        let max = self.frag.max_message(self.remote, self.natt);
        if data.len() <= max {
            return None;
        }
        let header = Header::new_checked(data).ok()?;
        // §2.5: only encrypted messages, and never IKE_SA_INIT
        if header.next_payload() != PayloadType::SK
            || header.exchange_type() == ExchangeType::IKE_SA_INIT
        {
            return None;
        }
        if let Some((_, fragments)) = self.frag.sent.iter().find(|(whole, _)| whole == data) {
            return Some(fragments.clone());
        }
        // Our own message, opened again with our outbound key to cut its inner payloads.
        let cipher = self.cipher_out.as_ref()?;
        let whole = protect::open_inner(cipher, data).ok()?;
        let fragments = protect::seal_fragments(
            cipher,
            &whole.header,
            whole.first_inner,
            &whole.inner,
            max,
            &self.rng,
        )
        .ok()?;
        if self.frag.sent.len() >= SENT_KEPT {
            self.frag.sent.pop_front();
        }
        self.frag.sent.push_back((data.to_vec(), fragments.clone()));
        Some(fragments)
    }

    /// Takes an SKF message (RFC 7383 §2.6).
    pub(super) fn handle_fragment(
        &mut self,
        header: HeaderRepr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        // §2.6: fragments are only valid when negotiated, and never in IKE_SA_INIT
        if !self.frag.negotiated || header.exchange_type == ExchangeType::IKE_SA_INIT {
            return;
        }
        let Some(cipher) = self.cipher_in.as_ref() else {
            return;
        };
        let id = header.message_id;
        let answered = self.last_response.as_ref().map(|(i, _)| *i);
        if header.flags.response {
            if self.pending.as_ref().map(|p| p.message_id) != Some(id) {
                return;
            }
        } else if answered == Some(id) {
            // §2.6.1: a retransmitted request is answered again once, on its first fragment
            // (not on every fragment), and only when that fragment is genuine
            if protect::open_inner(cipher, datagram)
                .is_ok_and(|o| o.fragment.is_some_and(|(n, _)| n == 1))
            {
                self.handle_request(header, datagram, from, now);
            }
            return;
        } else if id != self.expected_request_id {
            return;
        }
        // §2.6: every fragment is checked before it is kept
        let Ok(opened) = protect::open_inner(cipher, datagram) else {
            return;
        };
        let Some((number, total)) = opened.fragment else {
            return;
        };
        let fragment = Fragment {
            number,
            total,
            first_inner: opened.first_inner,
            inner: opened.inner,
        };
        let key = (self.spi_i, self.spi_r, id);
        let added = if header.flags.response {
            self.frag.responses.add(key, fragment)
        } else {
            self.frag.requests.add(key, fragment)
        };
        let (first_inner, inner) = match added {
            Added::Complete { first_inner, inner } => (first_inner, inner),
            Added::Refused(why) => {
                return tracing::debug!(message_id = id, why, "IKE fragment refused");
            }
            Added::Incomplete | Added::Duplicate => return,
        };
        match protect::seal_inner(cipher, &header, first_inner, None, &inner, &self.rng) {
            Ok(whole) => self.handle(&whole, from, now),
            Err(e) => tracing::debug!(error = %e, "reassembled IKE message not usable"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keys::SaCipher;
    use crate::crypto::SecretBytes;
    use crate::proposal::{Encryption, Integrity};
    use crate::wire::{Flags, IdPayload, IdType, Message};

    fn ciphers() -> Vec<SaCipher> {
        let key = |n: usize| SecretBytes::from_slice(&vec![7u8; n]);
        vec![
            SaCipher::new(Encryption::AesGcm16_256, None, &key(36), &key(0)).unwrap(),
            SaCipher::new(
                Encryption::AesCbc128,
                Some(Integrity::HmacSha256_128),
                &key(16),
                &key(32),
            )
            .unwrap(),
        ]
    }

    fn header() -> HeaderRepr {
        HeaderRepr {
            initiator_spi: 0x1111,
            responder_spi: 0x2222,
            next_payload: PayloadType::NONE,
            exchange_type: ExchangeType::IKE_AUTH,
            flags: Flags {
                initiator: true,
                ..Flags::default()
            },
            message_id: 1,
            length: 0,
        }
    }

    /// A big IKE_AUTH-like body: an ID payload and a large notify.
    fn big_message() -> (PayloadType, Vec<u8>) {
        let payloads = vec![
            Payload::IdInitiator(IdPayload {
                id_type: IdType::FQDN,
                reserved: [0; 3],
                data: b"gw.attestgate.lab".to_vec(),
            }),
            notify(NotifyType(40_000), (0..3000u32).map(|i| i as u8).collect()),
        ];
        let mut out = Vec::new();
        let first = crate::wire::emit_payloads(&payloads, &mut out).unwrap();
        (first, out)
    }

    fn fragments(cipher: &SaCipher, max: usize) -> Vec<Vec<u8>> {
        let (first, body) = big_message();
        protect::seal_fragments(cipher, &header(), first, &body, max, &SystemRandom::new()).unwrap()
    }

    fn add(r: &mut Reassembler, cipher: &SaCipher, datagram: &[u8]) -> Added {
        let o = protect::open_inner(cipher, datagram).unwrap();
        let (number, total) = o.fragment.unwrap();
        r.add(
            (0x1111, 0x2222, o.header.message_id),
            Fragment {
                number,
                total,
                first_inner: o.first_inner,
                inner: o.inner,
            },
        )
    }

    fn complete(added: Added) -> Vec<u8> {
        match added {
            Added::Complete { first_inner, inner } => {
                let (first, body) = big_message();
                assert_eq!(first_inner, first);
                assert_eq!(*inner, body);
                inner.to_vec()
            }
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn fragments_fit_the_size_and_reassemble_in_order() {
        for cipher in ciphers() {
            let frags = fragments(&cipher, 500);
            assert!(frags.len() >= 7, "{}", frags.len());
            for (i, f) in frags.iter().enumerate() {
                assert!(f.len() <= 500, "{}", f.len());
                // each is a well-formed IKE message with one SKF payload
                match &Message::parse(f).unwrap().payloads[..] {
                    [Payload::EncryptedFragment(skf)] => {
                        assert_eq!(usize::from(skf.number), i + 1);
                        assert_eq!(usize::from(skf.total), frags.len());
                        // §2.5: only the first names the first inner payload
                        assert_eq!(skf.first_inner == PayloadType::NONE, i > 0);
                    }
                    other => panic!("{other:?}"),
                }
                // a fragment is not a whole message
                assert!(protect::open(&cipher, f).is_err());
            }
            let mut r = Reassembler::default();
            let (last, rest) = frags.split_last().unwrap();
            for f in rest {
                assert!(matches!(add(&mut r, &cipher, f), Added::Incomplete));
            }
            complete(add(&mut r, &cipher, last));
        }
    }

    #[test]
    fn out_of_order_and_duplicates() {
        let cipher = &ciphers()[0];
        let frags = fragments(cipher, 700);
        let mut r = Reassembler::default();
        let n = frags.len();
        // last first, then backwards, with every fragment sent twice
        for (k, i) in (1..n).rev().enumerate() {
            assert!(matches!(add(&mut r, cipher, &frags[i]), Added::Incomplete));
            assert!(
                matches!(add(&mut r, cipher, &frags[i]), Added::Duplicate),
                "step {k}"
            );
        }
        complete(add(&mut r, cipher, &frags[0]));
        // after completion a late duplicate starts nothing complete
        assert!(matches!(add(&mut r, cipher, &frags[1]), Added::Incomplete));
    }

    #[test]
    fn a_missing_fragment_keeps_the_message_incomplete() {
        let cipher = &ciphers()[1];
        let frags = fragments(cipher, 600);
        let mut r = Reassembler::default();
        for (i, f) in frags.iter().enumerate() {
            if i == 2 {
                continue;
            }
            assert!(matches!(add(&mut r, cipher, f), Added::Incomplete));
        }
        // the retransmission brings the missing one
        complete(add(&mut r, cipher, &frags[2]));
    }

    #[test]
    fn total_fragments_must_agree() {
        let cipher = &ciphers()[0];
        let small = fragments(cipher, 400);
        let large = fragments(cipher, 1200);
        assert!(small.len() > large.len());
        let mut r = Reassembler::default();
        // fragments of the coarser cut, then the sender cuts finer (§2.6): start over
        assert!(matches!(add(&mut r, cipher, &large[0]), Added::Incomplete));
        assert!(matches!(add(&mut r, cipher, &small[1]), Added::Incomplete));
        // a fragment claiming fewer fragments than the new cut is stale
        assert!(matches!(add(&mut r, cipher, &large[1]), Added::Refused(_)));
        for f in &small[2..] {
            assert!(matches!(add(&mut r, cipher, f), Added::Incomplete));
        }
        complete(add(&mut r, cipher, &small[0]));

        // numbers outside 1..=total and too many fragments are refused
        let lie = |number, total| Fragment {
            number,
            total,
            first_inner: PayloadType::NONE,
            inner: Zeroizing::new(vec![1]),
        };
        let mut r = Reassembler::default();
        assert!(matches!(r.add((1, 2, 3), lie(3, 2)), Added::Refused(_)));
        assert!(matches!(r.add((1, 2, 3), lie(0, 2)), Added::Refused(_)));
        assert!(matches!(
            r.add((1, 2, 3), lie(1, MAX_FRAGMENTS + 1)),
            Added::Refused(_)
        ));
        // a message that grows past the limit is dropped whole
        let big = |number| Fragment {
            number,
            total: 2,
            first_inner: PayloadType::NONE,
            inner: Zeroizing::new(vec![0; MAX_REASSEMBLED / 2 + 1]),
        };
        assert!(matches!(r.add((1, 2, 3), big(1)), Added::Incomplete));
        assert!(matches!(r.add((1, 2, 3), big(2)), Added::Refused(_)));
        assert!(matches!(r.add((1, 2, 3), big(2)), Added::Incomplete));
        // another message ID replaces the one being reassembled (one at a time)
        assert!(matches!(r.add((1, 2, 4), lie(1, 2)), Added::Incomplete));
        assert!(matches!(
            r.add((1, 2, 4), lie(2, 2)),
            Added::Complete { .. }
        ));
    }

    #[test]
    fn tampered_or_lying_fragments_fail_their_integrity_check() {
        for cipher in ciphers() {
            let frags = fragments(&cipher, 500);
            let f = &frags[1];
            // every octet after the IKE header's SPIs is covered: flipping one is caught,
            // including the Fragment Number and Total Fragments fields (§2.5)
            for at in [17, 20, 24, 33, 34, 35, 36, 40, f.len() - 20, f.len() - 1] {
                let mut bad = f.clone();
                bad[at] ^= 0x01;
                assert!(
                    protect::open_inner(&cipher, &bad).is_err(),
                    "flip at {at} accepted"
                );
            }
            // cut short or garbage: refused, no panic
            for cut in 0..f.len() {
                assert!(protect::open_inner(&cipher, &f[..cut]).is_err());
            }
        }
    }
}
