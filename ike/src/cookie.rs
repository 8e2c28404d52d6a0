//! Stateless cookies for a responder under load (RFC 7296 §2.6), sans-IO.
//!
//! While fewer than `threshold` responder IKE SAs are half-open (IKE_SA_INIT answered,
//! IKE_AUTH not yet completed), every IKE_SA_INIT request is admitted. At or above it, a request
//! creates state only when it returns a cookie we made; any other gets a COOKIE notify and is
//! forgotten. A threshold of 0 asks every initiator for a cookie.
//!
//! The cookie is `VersionIDofSecret | MAC(secret, Ni | IPi | SPIi)` as §2.6 suggests, with
//! HMAC-SHA-256 keyed by the secret as the hash (a keyed MAC rather than a hash over a
//! concatenated secret). The secret is replaced every `rotate_every`; cookies made with the
//! previous one stay valid for one more period, so an initiator that got a cookie just before a
//! rotation is not turned away.

use crate::wire::{
    ExchangeType, Flags, HeaderRepr, Message, MessageBuilder, NotifyPayload, NotifyType, Payload,
    PayloadType,
};
use ring::hmac;
use ring::rand::SystemRandom;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How often the cookie secret is replaced unless configured otherwise.
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(300);

/// What to do with an IKE_SA_INIT request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Create a responder SA for it.
    Admit,
    /// Send this IKE message back to the request's source and keep nothing (§2.6).
    Challenge(Vec<u8>),
    /// Drop it without an answer (not an IKE_SA_INIT request, or one lacking a nonce).
    Drop,
}

struct Secret {
    version: u8,
    key: hmac::Key,
    since: Instant,
}

/// Decides which IKE_SA_INIT requests may create responder state.
pub struct CookieGate {
    threshold: usize,
    rotate_every: Duration,
    current: Secret,
    previous: Option<Secret>,
    rng: SystemRandom,
}

impl std::fmt::Debug for CookieGate {
    // the secrets are left out
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieGate")
            .field("threshold", &self.threshold)
            .field("rotate_every", &self.rotate_every)
            .field("version", &self.current.version)
            .finish_non_exhaustive()
    }
}

/// The random source failed, so no cookie secret could be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot generate a cookie secret: the random source failed")]
pub struct NoRandom;

impl CookieGate {
    /// A gate asking for cookies once `threshold` responder SAs are half-open, with a secret
    /// replaced every `rotate_every`.
    pub fn new(threshold: usize, rotate_every: Duration, now: Instant) -> Result<Self, NoRandom> {
        let rng = SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).map_err(|_| NoRandom)?;
        Ok(CookieGate {
            threshold,
            rotate_every,
            current: Secret {
                version: 0,
                key,
                since: now,
            },
            previous: None,
            rng,
        })
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// Looks at an IKE_SA_INIT request (without the non-ESP marker) from `from`, with
    /// `half_open` responder SAs currently waiting for IKE_AUTH.
    pub fn admit(
        &mut self,
        request: &[u8],
        from: IpAddr,
        half_open: usize,
        now: Instant,
    ) -> Admission {
        if half_open < self.threshold {
            return Admission::Admit;
        }
        self.rotate(now);
        let Ok(msg) = Message::parse(request) else {
            return Admission::Drop;
        };
        let h = msg.header;
        if h.exchange_type != ExchangeType::IKE_SA_INIT
            || h.flags.response
            || h.message_id != 0
            || h.responder_spi != 0
        {
            return Admission::Drop;
        }
        let mut nonce = None;
        let mut cookie = None;
        for p in &msg.payloads {
            match p {
                Payload::Nonce(n) if nonce.is_none() => nonce = Some(&n.data[..]),
                Payload::Notify(n) if n.kind == NotifyType::COOKIE && cookie.is_none() => {
                    cookie = Some(&n.data[..])
                }
                _ => {}
            }
        }
        let Some(ni) = nonce else {
            return Admission::Drop;
        };
        if cookie.is_some_and(|c| self.valid(c, ni, from, h.initiator_spi)) {
            return Admission::Admit;
        }
        match self.challenge(&h, ni, from) {
            Some(answer) => Admission::Challenge(answer),
            None => Admission::Drop,
        }
    }

    /// The cookie the current secret gives this initiator.
    pub fn cookie(&self, ni: &[u8], from: IpAddr, spi_i: u64) -> Vec<u8> {
        let tag = mac(&self.current.key, ni, from, spi_i);
        let mut out = Vec::with_capacity(1 + tag.as_ref().len());
        out.push(self.current.version);
        out.extend_from_slice(tag.as_ref());
        out
    }

    fn valid(&self, cookie: &[u8], ni: &[u8], from: IpAddr, spi_i: u64) -> bool {
        let Some((&version, tag)) = cookie.split_first() else {
            return false;
        };
        let secret = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|s| s.version == version);
        secret.is_some_and(|s| hmac::verify(&s.key, &mac_input(ni, from, spi_i), tag).is_ok())
    }

    fn rotate(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.current.since);
        if age < self.rotate_every {
            return;
        }
        // a failing random source keeps the old secret rather than leaving none
        let Ok(key) = hmac::Key::generate(hmac::HMAC_SHA256, &self.rng) else {
            return;
        };
        let next = Secret {
            version: self.current.version.wrapping_add(1),
            key,
            since: now,
        };
        let old = std::mem::replace(&mut self.current, next);
        // the previous secret is honoured for one more period after it was replaced; one that
        // has been idle for two periods is simply gone
        self.previous = (age < self.rotate_every.saturating_mul(2)).then_some(old);
    }

    /// The stateless answer carrying the cookie (§2.6).
    fn challenge(&self, request: &HeaderRepr, ni: &[u8], from: IpAddr) -> Option<Vec<u8>> {
        let cookie = self.cookie(ni, from, request.initiator_spi);
        stateless_init_answer(
            request.initiator_spi,
            Payload::Notify(NotifyPayload::new(NotifyType::COOKIE, cookie)),
        )
    }
}

/// An unencrypted answer to an IKE_SA_INIT request that keeps no state: the request's SPI, a
/// zero responder SPI and one payload (a COOKIE, §2.6, or an error notify, §1.2).
pub(crate) fn stateless_init_answer(initiator_spi: u64, payload: Payload) -> Option<Vec<u8>> {
    let header = HeaderRepr {
        initiator_spi,
        responder_spi: 0,
        next_payload: PayloadType::NONE,
        exchange_type: ExchangeType::IKE_SA_INIT,
        flags: Flags {
            initiator: false,
            version: false,
            response: true,
        },
        message_id: 0,
        length: 0,
    };
    MessageBuilder::new(header).payload(payload).build().ok()
}

fn mac_input(ni: &[u8], from: IpAddr, spi_i: u64) -> Vec<u8> {
    let mut input = Vec::with_capacity(ni.len() + 16 + 8);
    input.extend_from_slice(ni);
    match from {
        IpAddr::V4(a) => input.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => input.extend_from_slice(&a.octets()),
    }
    input.extend_from_slice(&spi_i.to_be_bytes());
    input
}

fn mac(key: &hmac::Key, ni: &[u8], from: IpAddr, spi_i: u64) -> hmac::Tag {
    hmac::sign(key, &mac_input(ni, from, spi_i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{NoncePayload, NotifyPayload};

    const SPI: u64 = 0x0123_4567_89ab_cdef;

    fn from() -> IpAddr {
        "203.0.113.10".parse().unwrap()
    }

    fn request(spi: u64, cookie: Option<Vec<u8>>) -> Vec<u8> {
        let header = HeaderRepr {
            initiator_spi: spi,
            responder_spi: 0,
            next_payload: PayloadType::NONE,
            exchange_type: ExchangeType::IKE_SA_INIT,
            flags: Flags {
                initiator: true,
                ..Flags::default()
            },
            message_id: 0,
            length: 0,
        };
        let mut payloads = Vec::new();
        if let Some(c) = cookie {
            payloads.push(Payload::Notify(NotifyPayload::new(NotifyType::COOKIE, c)));
        }
        payloads.push(Payload::Nonce(NoncePayload {
            data: vec![0x42; 32],
        }));
        MessageBuilder::new(header)
            .payloads(payloads)
            .build()
            .unwrap()
    }

    /// The cookie a challenge carries.
    fn cookie_of(answer: &Admission) -> Vec<u8> {
        let Admission::Challenge(data) = answer else {
            panic!("no challenge: {answer:?}");
        };
        let msg = Message::parse(data).unwrap();
        assert!(msg.header.flags.response);
        assert_eq!(msg.header.responder_spi, 0);
        assert_eq!(msg.header.initiator_spi, SPI);
        match &msg.payloads[..] {
            [Payload::Notify(n)] if n.kind == NotifyType::COOKIE => {
                assert!((1..=64).contains(&n.data.len()));
                n.data.clone()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn below_the_threshold_everything_is_admitted() {
        let now = Instant::now();
        let mut gate = CookieGate::new(3, DEFAULT_ROTATION, now).unwrap();
        assert_eq!(gate.admit(b"garbage", from(), 2, now), Admission::Admit);
        assert_eq!(
            gate.admit(&request(SPI, None), from(), 0, now),
            Admission::Admit
        );
        // at the threshold a cookie is needed
        let c = cookie_of(&gate.admit(&request(SPI, None), from(), 3, now));
        assert_eq!(
            gate.admit(&request(SPI, Some(c)), from(), 3, now),
            Admission::Admit
        );
    }

    #[test]
    fn only_the_right_cookie_admits() {
        let now = Instant::now();
        let mut gate = CookieGate::new(0, DEFAULT_ROTATION, now).unwrap();
        let c = cookie_of(&gate.admit(&request(SPI, None), from(), 0, now));
        assert_eq!(c.len(), 33);
        assert_eq!(
            gate.admit(&request(SPI, Some(c.clone())), from(), 0, now),
            Admission::Admit
        );
        // bound to the SPI, the address and the nonce, and not forgeable
        assert_ne!(
            gate.admit(&request(SPI + 1, Some(c.clone())), from(), 0, now),
            Admission::Admit
        );
        let other: IpAddr = "203.0.113.11".parse().unwrap();
        assert_ne!(
            gate.admit(&request(SPI, Some(c.clone())), other, 0, now),
            Admission::Admit
        );
        let mut bad = c.clone();
        bad[5] ^= 1;
        // a wrong cookie gets a fresh challenge, whose cookie is the right one again
        let again = gate.admit(&request(SPI, Some(bad)), from(), 0, now);
        assert_eq!(cookie_of(&again), c);
        assert_ne!(
            gate.admit(&request(SPI, Some(vec![0])), from(), 0, now),
            Admission::Admit
        );
        // responses, other exchanges and garbage leave no trace and get no answer
        assert_eq!(gate.admit(b"", from(), 0, now), Admission::Drop);
        let mut response = request(SPI, None);
        response[19] |= 0x20;
        assert_eq!(gate.admit(&response, from(), 0, now), Admission::Drop);
        for cut in 0..request(SPI, None).len() {
            let _ = gate.admit(&request(SPI, None)[..cut], from(), 0, now);
        }
    }

    #[test]
    fn the_previous_secret_is_honoured_for_one_period() {
        let t0 = Instant::now();
        let period = Duration::from_secs(60);
        let mut gate = CookieGate::new(0, period, t0).unwrap();
        let old = cookie_of(&gate.admit(&request(SPI, None), from(), 0, t0));
        // rotated: the old cookie still works, new requests get the new version
        let t1 = t0 + period + Duration::from_secs(1);
        let new = cookie_of(&gate.admit(&request(SPI, None), from(), 0, t1));
        assert_ne!(new[0], old[0]);
        assert_eq!(
            gate.admit(&request(SPI, Some(old.clone())), from(), 0, t1),
            Admission::Admit
        );
        // rotated again: the first secret is gone
        let t2 = t1 + period;
        assert_ne!(
            gate.admit(&request(SPI, Some(old)), from(), 0, t2),
            Admission::Admit
        );
        assert_eq!(
            gate.admit(&request(SPI, Some(new.clone())), from(), 0, t2),
            Admission::Admit
        );
        // idle for two periods: nothing old survives
        let t3 = t2 + period * 3;
        assert_ne!(
            gate.admit(&request(SPI, Some(new)), from(), 0, t3),
            Admission::Admit
        );
        assert!(!format!("{gate:?}").contains("key"));
    }
}
