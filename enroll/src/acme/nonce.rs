//! Replay nonces (RFC 8555 §6.5): random, single use, a bounded set of outstanding ones.
//! A nonce pushed out by newer ones (or lost in a restart) is simply `badNonce`: the client
//! retries with the fresh nonce that answer carries (§6.5).

use super::jws::b64u;
use ring::rand::SecureRandom;
use std::collections::{HashSet, VecDeque};

/// Outstanding nonces kept by default.
pub const DEFAULT_CAPACITY: usize = 16_384;

#[derive(Debug)]
pub struct Nonces {
    live: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
    rng: ring::rand::SystemRandom,
}

impl Nonces {
    pub fn new(capacity: usize) -> Nonces {
        Nonces {
            live: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            rng: ring::rand::SystemRandom::new(),
        }
    }

    /// A fresh nonce: 128 random bits, base64url (§6.5.1).
    pub fn issue(&mut self) -> Option<String> {
        let mut bytes = [0u8; 16];
        self.rng.fill(&mut bytes).ok()?;
        let nonce = b64u(&bytes);
        // a nonce stays good until `capacity` newer ones were issued
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.live.remove(&old);
                }
                None => break,
            }
        }
        self.live.insert(nonce.clone());
        self.order.push_back(nonce.clone());
        Some(nonce)
    }

    /// Uses up `nonce`; false when it was never issued, already used or forgotten.
    pub fn consume(&mut self, nonce: &str) -> bool {
        // the queue keeps a used one until it reaches the front; removing it from `live` is
        // what makes it unusable
        self.live.remove(nonce)
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_bounded() {
        let mut n = Nonces::new(3);
        let a = n.issue().unwrap();
        assert!(n.consume(&a));
        assert!(!n.consume(&a), "a nonce is good once");
        assert!(!n.consume("never-issued"));
        let first = n.issue().unwrap();
        for _ in 0..5 {
            n.issue().unwrap();
        }
        assert!(n.len() <= 3);
        assert!(!n.consume(&first), "the oldest is pushed out");
    }
}
