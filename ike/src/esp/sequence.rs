//! Send-side sequence numbers (RFC 4303 §3.3.3): start at 1, never cycle.

use super::EspError;

/// The outbound sequence counter of one SA.
///
/// §3.3.3: "the sender MUST NOT send a packet on an SA if doing so would cause the sequence
/// number to cycle"; the SA has to be rekeyed first. [`OutboundSequence::rekey_due`] turns
/// true at a soft limit, early enough for a CREATE_CHILD_SA exchange to finish, and
/// [`OutboundSequence::next_seq`] refuses past the hard limit: 2^32 - 1 without ESN, 2^64 - 1
/// with ESN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundSequence {
    /// The last number handed out; 0 before the first packet.
    last: u64,
    esn: bool,
    soft_limit: u64,
}

impl OutboundSequence {
    /// A counter whose soft limit leaves 1/16 of the space (2^28 packets without ESN) for the
    /// rekey to complete.
    pub fn new(esn: bool) -> OutboundSequence {
        let hard = Self::hard_limit_for(esn);
        Self::with_soft_limit(esn, hard - hard / 16)
    }

    /// A counter that asks for a rekey once `soft_limit` packets were sent (capped at the
    /// hard limit).
    pub fn with_soft_limit(esn: bool, soft_limit: u64) -> OutboundSequence {
        OutboundSequence {
            last: 0,
            esn,
            soft_limit: soft_limit.min(Self::hard_limit_for(esn)),
        }
    }

    fn hard_limit_for(esn: bool) -> u64 {
        if esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// The last sequence number that may be sent on this SA.
    pub fn hard_limit(&self) -> u64 {
        Self::hard_limit_for(self.esn)
    }

    pub fn soft_limit(&self) -> u64 {
        self.soft_limit
    }

    /// The last number handed out, 0 if none.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The full sequence number for the next packet: its low 32 bits go on the wire, the
    /// high 32 bits (ESN) into the ICV (§2.2.1).
    pub fn next_seq(&mut self) -> Result<u64, EspError> {
        if self.last >= self.hard_limit() {
            return Err(EspError::SequenceExhausted {
                limit: self.hard_limit(),
            });
        }
        self.last += 1;
        Ok(self.last)
    }

    /// The SA should be rekeyed now.
    pub fn rekey_due(&self) -> bool {
        self.last >= self.soft_limit
    }

    /// No packet can be sent any more.
    pub fn exhausted(&self) -> bool {
        self.last >= self.hard_limit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_one() {
        let mut s = OutboundSequence::new(false);
        assert_eq!(s.last(), 0);
        assert_eq!(s.next_seq(), Ok(1));
        assert_eq!(s.next_seq(), Ok(2));
        assert!(!s.rekey_due());
    }

    #[test]
    fn never_cycles_without_esn() {
        let mut s = OutboundSequence::with_soft_limit(false, u64::from(u32::MAX) - 2);
        s.last = u64::from(u32::MAX) - 3;
        assert!(!s.rekey_due());
        assert_eq!(s.next_seq(), Ok(u64::from(u32::MAX) - 2));
        assert!(s.rekey_due());
        assert_eq!(s.next_seq(), Ok(u64::from(u32::MAX) - 1));
        assert_eq!(s.next_seq(), Ok(u64::from(u32::MAX)));
        assert!(s.exhausted());
        let refused = s.next_seq();
        assert_eq!(
            refused,
            Err(EspError::SequenceExhausted {
                limit: u64::from(u32::MAX)
            })
        );
        assert_eq!(s.next_seq(), refused);
        assert_eq!(s.last(), u64::from(u32::MAX));
    }

    #[test]
    fn esn_goes_past_2_pow_32_and_stops_at_2_pow_64() {
        let mut s = OutboundSequence::new(true);
        s.last = u64::from(u32::MAX);
        assert_eq!(s.next_seq(), Ok(1 << 32));
        assert!(!s.rekey_due());
        s.last = u64::MAX - 1;
        assert!(s.rekey_due());
        assert_eq!(s.next_seq(), Ok(u64::MAX));
        assert!(s.next_seq().is_err());
    }

    #[test]
    fn default_soft_limit_leaves_room() {
        let s = OutboundSequence::new(false);
        assert_eq!(
            s.soft_limit(),
            u64::from(u32::MAX) - u64::from(u32::MAX) / 16
        );
        assert_eq!(
            OutboundSequence::with_soft_limit(false, u64::MAX).soft_limit(),
            u64::from(u32::MAX)
        );
    }
}
