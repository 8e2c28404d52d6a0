//! Receive-side anti-replay (RFC 4303 §3.4.3) with extended sequence numbers (§2.2.1,
//! Appendix A), as a ring of 64-bit blocks in the style of RFC 6479: advancing the window
//! clears whole blocks instead of shifting the bitmap.
//!
//! The API is split so that a forged packet cannot move the window (§3.4.3: "the receive
//! window is updated only if the integrity verification succeeds"):
//! [`ReplayWindow::check`] before decryption returns the full 64-bit sequence number (the
//! ESN high half is needed for the ICV), and [`ReplayWindow::accept`] after the ICV verified
//! marks it seen and slides the window.

const BITS: u64 = 64;

/// Why a sequence number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ReplayError {
    #[error("sequence number already received (replay)")]
    Duplicate,
    #[error("sequence number is older than the anti-replay window")]
    TooOld,
    #[error("sequence number is outside the valid space (0, or past 2^64 - 1)")]
    Invalid,
}

/// The anti-replay window of one inbound SA.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Ring of bitmap blocks; its length is a power of two (RFC 6479 §2).
    blocks: Vec<u64>,
    /// Highest sequence number accepted so far; 0 before the first (sequence numbers start
    /// at 1, §3.3.3).
    top: u64,
    esn: bool,
    duplicates: u64,
    too_old: u64,
}

impl ReplayWindow {
    /// The window size asked for by default (RFC 4303 §3.4.3 suggests 64 at least; we keep
    /// 1024 so that multi-queue senders' reordering does not look like replay).
    pub const DEFAULT_MIN_WINDOW: u64 = 1024;

    /// A window of at least [`Self::DEFAULT_MIN_WINDOW`] packets.
    pub fn new(esn: bool) -> ReplayWindow {
        Self::with_window(esn, Self::DEFAULT_MIN_WINDOW)
    }

    /// A window of at least `min_packets` packets (clamped to 64..=65536). RFC 6479 §2: the
    /// ring holds one block more than the window, so the window is `(blocks - 1) * 64`.
    pub fn with_window(esn: bool, min_packets: u64) -> ReplayWindow {
        let min_packets = min_packets.clamp(BITS, 1 << 16);
        let blocks = (min_packets.div_ceil(BITS) + 1).next_power_of_two();
        ReplayWindow {
            blocks: vec![0; blocks as usize],
            top: 0,
            esn,
            duplicates: 0,
            too_old: 0,
        }
    }

    /// Packets the window covers: sequence numbers `highest - window + 1 ..= highest`.
    pub fn window(&self) -> u64 {
        (self.blocks.len() as u64 - 1) * BITS
    }

    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The highest sequence number accepted, 0 if none.
    pub fn highest(&self) -> u64 {
        self.top
    }

    /// Replays refused so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Packets refused as older than the window so far (an auditable event, §3.4.3).
    pub fn too_old(&self) -> u64 {
        self.too_old
    }

    /// The full sequence number for the received low 32 bits. Without ESN it is the value
    /// itself; with ESN the high 32 bits are inferred from the window (Appendix A2.2).
    fn infer(&self, low: u32) -> Result<u64, ReplayError> {
        if !self.esn {
            return match low {
                0 => Err(ReplayError::Invalid),
                _ => Ok(u64::from(low)),
            };
        }
        let w = self.window();
        let tl = self.top & 0xffff_ffff;
        let th = self.top >> 32;
        let low64 = u64::from(low);
        let high = if tl >= w - 1 {
            // Case A: the window lies within one subspace of 2^32.
            if low64 >= tl - (w - 1) {
                Some(th)
            } else {
                th.checked_add(1)
            }
        } else {
            // Case B: the window spans the end of the previous subspace. Before the first
            // wrap there is no previous subspace, so the number is ahead in this one.
            let bottom = (tl + (1 << 32) - (w - 1)) & 0xffff_ffff;
            if low64 >= bottom {
                Some(th.saturating_sub(1))
            } else {
                Some(th)
            }
        };
        match high.filter(|h| *h <= 0xffff_ffff) {
            Some(h) if (h << 32) | low64 != 0 => Ok((h << 32) | low64),
            _ => Err(ReplayError::Invalid),
        }
    }

    fn slot(&self, seq: u64) -> (usize, u64) {
        let mask = self.blocks.len() as u64 - 1;
        (((seq / BITS) & mask) as usize, 1 << (seq % BITS))
    }

    fn verdict(&self, seq: u64) -> Result<(), ReplayError> {
        if seq == 0 {
            return Err(ReplayError::Invalid);
        }
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.window() {
            return Err(ReplayError::TooOld);
        }
        let (block, bit) = self.slot(seq);
        match self.blocks.get(block) {
            Some(b) if b & bit == 0 => Ok(()),
            _ => Err(ReplayError::Duplicate),
        }
    }

    fn count(&mut self, result: Result<(), ReplayError>) -> Result<(), ReplayError> {
        match result {
            Err(ReplayError::Duplicate) => self.duplicates += 1,
            Err(ReplayError::TooOld) => self.too_old += 1,
            _ => {}
        }
        result
    }

    /// Before decryption: the full sequence number of a packet carrying `low`, if it is new
    /// and within (or ahead of) the window. Does not change the window.
    pub fn check(&mut self, low: u32) -> Result<u64, ReplayError> {
        let seq = self.infer(low)?;
        let verdict = self.verdict(seq);
        self.count(verdict)?;
        Ok(seq)
    }

    /// After the ICV verified: marks `seq` (from [`Self::check`]) received and slides the
    /// window if it is ahead. Checks again, since another packet with the same number may
    /// have been accepted in between.
    pub fn accept(&mut self, seq: u64) -> Result<(), ReplayError> {
        let verdict = self.verdict(seq);
        self.count(verdict)?;
        if seq > self.top {
            // RFC 6479 §2: clear the blocks the window moves into, at most the whole ring.
            let old_block = self.top / BITS;
            let new_block = seq / BITS;
            let steps = (new_block - old_block).min(self.blocks.len() as u64);
            for i in 1..=steps {
                let (block, _) = self.slot((old_block + i) * BITS);
                if let Some(b) = self.blocks.get_mut(block) {
                    *b = 0;
                }
            }
            self.top = seq;
        }
        let (block, bit) = self.slot(seq);
        if let Some(b) = self.blocks.get_mut(block) {
            *b |= bit;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::XorShift;
    use std::collections::BTreeSet;

    fn receive(w: &mut ReplayWindow, low: u32) -> Result<u64, ReplayError> {
        let seq = w.check(low)?;
        w.accept(seq)?;
        Ok(seq)
    }

    #[test]
    fn window_size_is_at_least_what_was_asked() {
        assert!(ReplayWindow::new(false).window() >= 1024);
        assert_eq!(ReplayWindow::new(false).window(), 1984);
        assert_eq!(ReplayWindow::with_window(false, 64).window(), 64);
        assert_eq!(ReplayWindow::with_window(false, 65).window(), 192);
        assert_eq!(ReplayWindow::with_window(false, 0).window(), 64);
    }

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new(false);
        for seq in 1..=5000u32 {
            assert_eq!(receive(&mut w, seq), Ok(u64::from(seq)));
        }
        assert_eq!(w.highest(), 5000);
        for seq in [5000, 4999, 5000 - 1983] {
            assert_eq!(w.check(seq), Err(ReplayError::Duplicate), "{seq}");
        }
        assert_eq!(w.check(5000 - 1984), Err(ReplayError::TooOld));
        assert_eq!(w.check(1), Err(ReplayError::TooOld));
        assert_eq!((w.duplicates(), w.too_old()), (3, 2));
        assert_eq!(w.check(0), Err(ReplayError::Invalid));
    }

    #[test]
    fn reordered_within_the_window() {
        let mut w = ReplayWindow::new(false);
        // Odd numbers first, then the even ones late but within the window.
        for seq in (1..=3000u32).step_by(2) {
            receive(&mut w, seq).unwrap();
        }
        for seq in (2..=3000u32).step_by(2) {
            let result = receive(&mut w, seq);
            // The window ends at 2999 until 3000 itself arrives.
            if seq == 3000 || 2999 - seq < 1984 {
                assert_eq!(result, Ok(u64::from(seq)), "{seq}");
            } else {
                assert_eq!(result, Err(ReplayError::TooOld), "{seq}");
            }
        }
        // Reversed order inside one window.
        let mut w = ReplayWindow::new(false);
        for seq in (1..=1984u32).rev() {
            assert_eq!(receive(&mut w, seq), Ok(u64::from(seq)));
        }
        assert_eq!(w.check(1984), Err(ReplayError::Duplicate));
    }

    #[test]
    fn huge_jumps_clear_the_ring() {
        let mut w = ReplayWindow::new(false);
        for seq in 1..=100 {
            receive(&mut w, seq).unwrap();
        }
        receive(&mut w, 1_000_000).unwrap();
        // Blocks reused by the jump hold no stale bits: 999_999 - 64*k is fresh.
        for seq in (1_000_000 - 1983..1_000_000).rev() {
            assert_eq!(receive(&mut w, seq), Ok(u64::from(seq)));
        }
        assert_eq!(w.check(50), Err(ReplayError::TooOld));
        assert_eq!(w.check(1_000_000), Err(ReplayError::Duplicate));
        receive(&mut w, u32::MAX).unwrap();
        assert_eq!(w.check(u32::MAX), Err(ReplayError::Duplicate));
    }

    #[test]
    fn forged_packets_do_not_move_the_window() {
        let mut w = ReplayWindow::new(false);
        receive(&mut w, 10).unwrap();
        // A forged packet far ahead passes check but never reaches accept (its ICV failed).
        assert_eq!(w.check(4_000_000), Ok(4_000_000));
        assert_eq!(w.highest(), 10);
        assert_eq!(receive(&mut w, 5), Ok(5));
        // Two copies of the same packet both pass check; the second accept refuses.
        let a = w.check(11).unwrap();
        let b = w.check(11).unwrap();
        assert_eq!(w.accept(a), Ok(()));
        assert_eq!(w.accept(b), Err(ReplayError::Duplicate));
    }

    #[test]
    fn esn_wraps_across_2_pow_32() {
        let mut w = ReplayWindow::new(true);
        assert_eq!(receive(&mut w, 0xffff_ff00), Ok(0xffff_ff00));
        assert_eq!(receive(&mut w, 0xffff_ffff), Ok(0xffff_ffff));
        // Low 32 bits restart: the high half becomes 1.
        assert_eq!(receive(&mut w, 0), Ok(1 << 32));
        assert_eq!(receive(&mut w, 5), Ok((1 << 32) + 5));
        // A late packet from before the wrap is placed in subspace 0 and accepted once.
        assert_eq!(receive(&mut w, 0xffff_ff80), Ok(0xffff_ff80));
        assert_eq!(w.check(0xffff_ff80), Err(ReplayError::Duplicate));
        assert_eq!(w.check(0xffff_ff00), Err(ReplayError::Duplicate));
        assert_eq!(w.check(0), Err(ReplayError::Duplicate));
        // Older than the window in subspace 0 reads as far ahead in subspace 1 (Appendix A);
        // the ICV, computed with the wrong high half, then fails and accept is never called.
        assert_eq!(w.check(0x1000), Ok((1 << 32) + 0x1000));
        // Without ESN, zero is never valid.
        assert_eq!(ReplayWindow::new(false).check(0), Err(ReplayError::Invalid));
        assert_eq!(ReplayWindow::new(true).check(0), Err(ReplayError::Invalid));
    }

    #[test]
    fn esn_reconstruction_matches_the_true_number() {
        // Walk true 64-bit numbers with reordering smaller than the window, jumping ahead now
        // and then (never by more than 2^31, within Appendix A's assumption) and often to just
        // before a 2^32 boundary so the walk crosses it. The low 32 bits alone must give back
        // the true number.
        let mut rng = XorShift(42);
        let mut w = ReplayWindow::with_window(true, 256);
        let window = w.window();
        let mut truth: u64 = 1;
        let mut seen = BTreeSet::new();
        let mut crossings = 0;
        for i in 0..200_000u64 {
            if i % 5000 == 4999 {
                let next_boundary = ((truth >> 32) + 1) << 32;
                truth = if next_boundary - truth <= 1 << 31 {
                    (next_boundary - 500 - rng.next_u64() % 1000).max(truth)
                } else {
                    truth + (1 << 31)
                };
            }
            let before = truth >> 32;
            truth += rng.next_u64() % 8;
            if truth >> 32 != before {
                crossings += 1;
            }
            let jitter = rng.next_u64() % (window - 1);
            let seq = truth.saturating_sub(jitter).max(1);
            let expected = if seen.contains(&seq) {
                Err(ReplayError::Duplicate)
            } else {
                Ok(seq)
            };
            let got = receive(&mut w, seq as u32);
            assert_eq!(got, expected, "true {seq:#x}, top {:#x}", w.highest());
            if got.is_ok() {
                seen.insert(seq);
            }
            // Keep the model small: forget what is far below the window.
            if seen.len() > 4096 {
                let floor = w.highest().saturating_sub(2 * window);
                seen.retain(|s| *s >= floor);
            }
        }
        assert!(crossings >= 10, "{crossings}");
        assert!(w.highest() > 10 << 32);
    }

    #[test]
    fn matches_a_naive_model() {
        let mut rng = XorShift(7);
        let mut w = ReplayWindow::with_window(false, 128);
        let window = w.window();
        let mut accepted = BTreeSet::new();
        let mut top = 0u64;
        for _ in 0..100_000 {
            let r = rng.next_u64();
            let seq = match r % 10 {
                0 => top + 1 + (r >> 8) % 5000,                    // jump ahead
                1..=2 => top + 1,                                  // in order
                _ => top.saturating_sub((r >> 8) % (window + 40)), // late, some too late
            }
            .min(u64::from(u32::MAX)) as u32;
            let seq64 = u64::from(seq);
            let expected = if seq == 0 {
                Err(ReplayError::Invalid)
            } else if seq64 > top {
                Ok(seq64)
            } else if top - seq64 >= window {
                Err(ReplayError::TooOld)
            } else if accepted.contains(&seq64) {
                Err(ReplayError::Duplicate)
            } else {
                Ok(seq64)
            };
            assert_eq!(receive(&mut w, seq), expected);
            if expected.is_ok() {
                accepted.insert(seq64);
                top = top.max(seq64);
            }
        }
    }
}
