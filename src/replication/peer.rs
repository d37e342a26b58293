//! A peer's shared state, and the backoff its tasks use. Each peer has two
//! tasks: a [streamer](super::stream) and a [repairer](super::repair). They
//! coordinate only through this state: the streamer marks a gap, the repairer
//! clears it and wakes the streamer.

use std::{
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a peer task is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Shipping the log.
    Streaming,
    /// Running anti-entropy.
    Repairing,
}

impl Phase {
    /// The name shown in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Streaming => "streaming",
            Phase::Repairing => "repairing",
        }
    }
}

/// The replication state of one peer, shared with status and retention.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// The last RPC succeeded.
    pub connected: bool,
    /// Highest local seq the peer acknowledged (persisted as its cursor).
    pub acked_seq: u64,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
    /// What the task is doing.
    pub phase: Phase,
    /// Anti-entropy rounds finished with this peer.
    pub repair_rounds: u64,
    /// Keys those rounds pushed or pulled.
    pub keys_repaired: u64,
    /// The log no longer holds what the peer needs: repair, then resume at
    /// the seq captured when the repair started.
    pub needs_repair: bool,
    /// This node started fresh or stale: anti-entropy with the peer is
    /// pull-only until the first round with it finishes.
    pub catching_up: bool,
    /// The first round with the peer since this node started has finished.
    /// The stream waits for it: it tells whether this node's data went back
    /// in time, and then the old records in the log must not be sent.
    pub first_round_done: bool,
    /// The peer's answer about this node's high-water mark has been checked
    /// since start-up (once: later answers reflect this run's own reports).
    pub high_water_checked: bool,
    /// That check found this node's data went back in time: rounds with the
    /// peer catch up and drop old keys it lacks until one finishes.
    pub regressed: bool,
    /// Entries the peer refused, by stream or repair (they were skipped).
    pub refused: u64,
    /// The last refusal, as "key: reason".
    pub last_refused: Option<String>,
    /// Wall-clock ms at which the last complete round with the peer started:
    /// it then held, or beat, every settled entry this node held.
    pub last_complete_round_ms: Option<u64>,
    /// Expired tombstones waiting on this peer, from the last collection.
    pub tombstones_waiting: u64,
}

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
}

impl Peer {
    /// A peer starting from a persisted cursor; `catching_up` if this node
    /// started stale.
    pub fn new(id: String, url: String, acked_seq: u64, catching_up: bool) -> Self {
        Self {
            id,
            url,
            state: Mutex::new(PeerState {
                connected: false,
                acked_seq,
                last_error: None,
                phase: Phase::Streaming,
                repair_rounds: 0,
                keys_repaired: 0,
                needs_repair: false,
                catching_up,
                first_round_done: false,
                high_water_checked: false,
                regressed: false,
                refused: 0,
                last_refused: None,
                last_complete_round_ms: None,
                tombstones_waiting: 0,
            }),
            wake: Notify::new(),
            unblocked: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, PeerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A copy of the current state.
    pub fn state(&self) -> PeerState {
        self.lock().clone()
    }

    /// Asks the task to run anti-entropy with this peer now.
    pub fn mark_for_repair(&self) {
        self.lock().needs_repair = true;
        self.wake.notify_one();
    }

    pub(crate) fn failed(&self, error: String) {
        let mut s = self.lock();
        s.connected = false;
        s.last_error = Some(error);
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

    /// The streamer must wait: a repair or catch-up is due first.
    pub(crate) fn stream_blocked(&self) -> bool {
        let s = self.lock();
        s.needs_repair || s.catching_up || s.regressed || !s.first_round_done
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
    fn marking_for_repair_is_visible_in_state() {
        let p = Peer::new("n2".into(), "http://x".into(), 5, false);
        assert!(!p.state().needs_repair);
        p.mark_for_repair();
        assert!(p.state().needs_repair);
        assert_eq!(p.state().acked_seq, 5);
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
