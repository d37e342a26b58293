//! Estimating each peer's clock offset from replication traffic.
//!
//! Every answer a peer sends (a stream batch's, a Digest's) carries its
//! wall clock as it answered. Against this node's clock at the send and at
//! the answer, that gives NTP's estimate: the peer's time less the
//! midpoint of the round trip, wrong by at most half the round trip. The
//! estimate is smoothed over samples, and samples whose round trip is much
//! longer than the best seen (a batch queued behind others) count less.
//!
//! The offset matters because last-writer-wins orders by clock: a peer
//! running ahead wins concurrent writes, and one ahead by more than
//! `max_clock_skew_ms` has its writes refused. So it is shown in status,
//! exported, and warned about once it passes half that limit.

/// A peer's estimated clock offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offset {
    /// The peer's clock less ours, in milliseconds (positive: it is ahead).
    pub offset_ms: i64,
    /// The shortest round trip seen, in milliseconds.
    pub best_rtt_ms: u64,
    /// Samples taken.
    pub samples: u64,
}

impl Offset {
    /// Takes one sample: sent at `sent_ms`, answered at `got_ms` (both our
    /// clock), stamped `peer_ms` by the peer. A peer that stamps nothing
    /// (0) teaches nothing.
    pub fn sample(&mut self, sent_ms: u64, got_ms: u64, peer_ms: u64) {
        if peer_ms == 0 || got_ms < sent_ms {
            return;
        }
        let rtt = got_ms - sent_ms;
        let mid = sent_ms + rtt / 2;
        let estimate =
            i64::try_from(peer_ms).unwrap_or(i64::MAX) - i64::try_from(mid).unwrap_or(i64::MAX);
        if self.samples == 0 {
            self.offset_ms = estimate;
            self.best_rtt_ms = rtt;
        } else {
            self.best_rtt_ms = self.best_rtt_ms.min(rtt);
            // A slow answer's midpoint is less sure: weigh it less.
            let weight = if rtt <= 2 * self.best_rtt_ms + 10 {
                4
            } else {
                16
            };
            self.offset_ms += (estimate - self.offset_ms) / weight;
        }
        self.samples += 1;
    }

    /// Whether the offset has passed half of `max_skew_ms`: time to warn,
    /// before the peer's writes are refused.
    pub fn nearing(&self, max_skew_ms: u64) -> bool {
        self.samples > 0 && self.offset_ms.unsigned_abs().saturating_mul(2) >= max_skew_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_the_peer_time_less_the_round_trips_midpoint() {
        let mut o = Offset::default();
        o.sample(1_000, 1_010, 31_005);
        assert_eq!((o.offset_ms, o.best_rtt_ms), (30_000, 10));
        // Later samples move it a quarter of the way, slow ones less.
        o.sample(2_000, 2_010, 32_405);
        assert_eq!(o.offset_ms, 30_100);
        o.sample(3_000, 4_000, 33_500 + 1_600);
        assert_eq!(o.offset_ms, 30_100 + (31_600 - 30_100) / 16);
        // A peer behind us, and one that stamps nothing.
        let mut b = Offset::default();
        b.sample(50_000, 50_002, 20_001);
        assert_eq!(b.offset_ms, -30_000);
        b.sample(50_000, 50_002, 0);
        assert_eq!(b.samples, 1);
    }

    #[test]
    fn a_warning_is_due_at_half_the_limit_either_way() {
        let at = |ms| Offset {
            offset_ms: ms,
            best_rtt_ms: 1,
            samples: 1,
        };
        assert!(!at(29_999).nearing(60_000));
        assert!(at(30_000).nearing(60_000));
        assert!(at(-45_000).nearing(60_000));
        assert!(!Offset::default().nearing(0), "no samples, no warning");
    }
}
