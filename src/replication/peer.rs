//! A peer's shared state, and the backoff its tasks use. Each peer has two
//! tasks: a [streamer](super::stream) and a [repairer](super::repair). They
//! coordinate only through this state, which changes only by steps of the
//! pure [state machine](super::machine): the streamer reports a gap, the
//! repairer's round clears it, and the actions of each step wake the other.

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    machine::{step, stream_gate, Event, Gate, PeerState},
    skew::Offset,
    Ctx,
};

/// A configured peer and its shared state.
#[derive(Debug)]
pub struct Peer {
    /// Its node id.
    pub id: String,
    /// Its gRPC URL.
    pub url: String,
    state: Mutex<PeerState>,
    /// Wakes the repairer (a repair was asked for).
    pub(crate) wake: Notify,
    /// Wakes the streamer (a repair or catch-up finished).
    pub(crate) unblocked: Notify,
    /// Its clock offset, from the answers it stamps.
    clock: Mutex<Offset>,
}

impl Peer {
    /// A peer starting from a persisted cursor; `catching_up` if this node
    /// started stale.
    pub fn new(id: String, url: String, acked_seq: u64, catching_up: bool) -> Self {
        Self {
            id,
            url,
            state: Mutex::new(PeerState::new(acked_seq, catching_up)),
            wake: Notify::new(),
            unblocked: Notify::new(),
            clock: Mutex::new(Offset::default()),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current state.
    pub fn state(&self) -> PeerState {
        self.lock().clone()
    }

    /// Steps the peer's state machine and carries out what it asks.
    pub(crate) fn handle(&self, ctx: &Ctx, event: Event) {
        let (act, moved) = {
            let mut state = self.lock();
            let before = state.acked_seq;
            let act = step(&mut state, event);
            (act, state.acked_seq != before)
        };
        if moved {
            // Writes waiting for a consistency level count again.
            ctx.acked.send_modify(|n| *n = n.wrapping_add(1));
        }
        if let Some(seq) = act.save_cursor {
            ctx.writer.save_cursor(&self.id, seq);
        }
        if act.wake_repairer {
            self.wake.notify_one();
        }
        if act.caught_up_with_one {
            ctx.caught_up_with_one();
        }
        if act.wake_streamer {
            self.unblocked.notify_waiters();
        }
        if act.synced {
            ctx.synced.send_replace(true);
        }
    }

    /// Records refusals the peer reported; logs the first of each new kind.
    pub(crate) fn refused(&self, n: u64, last: Option<String>) {
        if n == 0 {
            return;
        }
        let mut s = self.lock();
        s.refused += n;
        if last.is_some() && s.last_refused != last {
            tracing::warn!(
                peer = %self.id,
                refused = n,
                last = last.as_deref().unwrap_or_default(),
                "the peer refused entries; they were skipped and the stream goes on"
            );
            s.last_refused = last;
        }
        crate::metrics::peer_refused(&self.id, n);
    }

    /// The peer's estimated clock offset.
    pub fn clock(&self) -> Offset {
        *self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Learns from an answer the peer stamped `peer_ms`, to a request sent
    /// `rtt` ago: updates the offset, exports it, and warns as it nears
    /// `max_clock_skew_ms`.
    pub(crate) fn clock_sample(&self, ctx: &Ctx, rtt: std::time::Duration, peer_ms: u64) {
        let got_ms = ctx.clock.now_ms();
        let sent_ms = got_ms.saturating_sub(rtt.as_millis() as u64);
        let max = ctx.config.max_clock_skew_ms;
        let (before, after) = {
            let mut c = self.clock.lock().unwrap_or_else(|p| p.into_inner());
            let before = c.nearing(max);
            c.sample(sent_ms, got_ms, peer_ms);
            (before, *c)
        };
        if after.samples == 0 {
            return;
        }
        crate::metrics::peer_clock_offset(&self.id, after.offset_ms);
        if after.nearing(max) && !before {
            tracing::warn!(
                peer = %self.id,
                offset_ms = after.offset_ms,
                max_clock_skew_ms = max,
                "the peer's clock is more than half of max_clock_skew_ms away from ours; past it, \
                 the clock that runs ahead has its writes refused: check NTP on both"
            );
        }
    }

    /// Whether the streamer may run: see [`stream_gate`].
    pub(crate) fn gate(&self) -> Gate {
        stream_gate(&self.lock())
    }
}

/// Exponential backoff with jitter, from a seedable RNG so tests can replay it.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
    rng: SmallRng,
}

impl Backoff {
    /// Delays from `min`, doubling per failure, never above `max`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self {
            min,
            max,
            next: min,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The delay before the next retry: uniformly within the upper half of the
    /// current step, so that peers that failed together do not retry together.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = step / 2;
        half + self.rng.random_range(Duration::ZERO..=step - half)
    }

    /// `d` ± 25%, from the same seeded generator: spreads periodic rounds so
    /// that peers do not all repair at once.
    pub fn jittered(&mut self, d: Duration) -> Duration {
        let quarter = d / 4;
        d - quarter + self.rng.random_range(Duration::ZERO..=quarter * 2)
    }

    /// Back to the shortest delay after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Sleeps; true if shutdown came first.
pub(crate) async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap_and_resets() {
        let (min, max) = (Duration::from_millis(100), Duration::from_millis(800));
        let mut b = Backoff::new(min, max, 7);
        let steps = [100u64, 200, 400, 800, 800, 800];
        for step in steps {
            let d = b.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                d >= step / 2 && d <= step,
                "{d:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= min);
    }

    #[test]
    fn backoff_is_reproducible_from_its_seed() {
        let mk = || Backoff::new(Duration::from_millis(10), Duration::from_secs(1), 42);
        let (mut a, mut b) = (mk(), mk());
        for _ in 0..10 {
            assert_eq!(a.next_delay(), b.next_delay());
        }
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2), 3);
        for _ in 0..100 {
            let d = b.jittered(Duration::from_secs(40));
            assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(50));
        }
    }
}
