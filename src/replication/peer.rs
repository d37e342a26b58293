//! One task per peer: stream the log, repair on demand, back off on errors.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    proto::{self, anti_entropy_client::AntiEntropyClient, replication_client::ReplicationClient},
    replication::{anti_entropy, Ctx},
};

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
}

/// A configured peer and its shared state.
#[derive(Debug)]
pub struct Peer {
    /// Its node id.
    pub id: String,
    /// Its gRPC URL.
    pub url: String,
    state: Mutex<PeerState>,
    wake: Notify,
}

impl Peer {
    /// A peer starting from a persisted cursor.
    pub fn new(id: String, url: String, acked_seq: u64) -> Self {
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
            }),
            wake: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, PeerState> {
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

    fn failed(&self, error: String) {
        let mut s = self.lock();
        s.connected = false;
        s.last_error = Some(error);
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

/// Runs until `shutdown`: stream the log to `peer`, repair when needed.
pub async fn run(
    ctx: Arc<Ctx>,
    peer: Arc<Peer>,
    channel: Channel,
    mut seq_rx: watch::Receiver<u64>,
    shutdown: CancellationToken,
) {
    let cfg = &ctx.config;
    let timeout = Duration::from_millis(cfg.rpc_timeout_ms);
    let mut repl = ReplicationClient::new(channel.clone())
        .max_encoding_message_size(ctx.max_peer_message)
        .max_decoding_message_size(ctx.max_peer_message);
    let mut ae = AntiEntropyClient::new(channel)
        .max_encoding_message_size(ctx.max_peer_message)
        .max_decoding_message_size(ctx.max_peer_message * 4);
    // All of this task's randomness (backoff and round jitter) comes from
    // this seed, so a simulation can replay it by fixing the seed.
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.backoff_min_ms),
        Duration::from_millis(cfg.backoff_max_ms),
        rand::random(),
    );
    let interval = Duration::from_secs(cfg.anti_entropy_interval_secs);
    // A round at start-up finds what was missed while this node was down.
    let mut next_round = Instant::now();
    let mut pending: VecDeque<InFlight> = VecDeque::with_capacity(PIPELINE);

    while !shutdown.is_cancelled() {
        let (needs_repair, cursor) = {
            let s = peer.state();
            (s.needs_repair, s.acked_seq)
        };
        // A periodic round waits until the log stream is caught up: while
        // records are in flight every bucket differs, and a round would only
        // rescan and resend what streaming is about to deliver.
        let caught_up = pending.is_empty() && cursor >= *seq_rx.borrow();
        if needs_repair || (caught_up && Instant::now() >= next_round) {
            abort_all(&mut pending);
            let resume_at = *seq_rx.borrow();
            peer.lock().phase = Phase::Repairing;
            tracing::info!(peer = %peer.id, marked = needs_repair, "anti-entropy round starting");
            let round = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = anti_entropy::round(&ctx, &peer.id, &mut ae, &mut repl) => r,
            };
            match round {
                Ok(stats) => {
                    let acked = {
                        let mut s = peer.lock();
                        s.phase = Phase::Streaming;
                        s.connected = true;
                        s.last_error = None;
                        s.repair_rounds += 1;
                        s.keys_repaired += stats.pushed + stats.pulled;
                        if s.needs_repair {
                            // Everything committed before the round began was
                            // in the data the round compared.
                            s.needs_repair = false;
                            s.acked_seq = s.acked_seq.max(resume_at);
                        }
                        s.acked_seq
                    };
                    if acked != cursor {
                        persist_cursor(&ctx, &peer.id, acked);
                    }
                    tracing::info!(
                        peer = %peer.id,
                        buckets = stats.differing_buckets,
                        pushed = stats.pushed,
                        pulled = stats.pulled,
                        "anti-entropy round done"
                    );
                    crate::metrics::anti_entropy_round(&peer.id, stats.pushed + stats.pulled);
                    ctx.synced.send_replace(true);
                    backoff.reset();
                    next_round = Instant::now() + backoff.jittered(interval);
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.id, error = %e, "anti-entropy round failed");
                    peer.lock().phase = Phase::Streaming;
                    peer.failed(e.to_string());
                    let delay = backoff.next_delay();
                    next_round = Instant::now() + delay;
                    if sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                }
            }
            continue;
        }

        // Read after the last batch sent, which may still be in flight.
        let read_from = pending.back().map_or(cursor, |p: &InFlight| p.upto);
        if pending.len() < PIPELINE {
            // Mark the seq seen before reading, so a commit after the read wakes us.
            let last_seq = *seq_rx.borrow_and_update();
            let batch = {
                let store = Arc::clone(&ctx.store);
                let (n, b) = (cfg.batch_max_entries, cfg.batch_max_bytes);
                tokio::task::spawn_blocking(move || store.log_after(read_from, n, b)).await
            };
            let batch = match batch {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::error!(peer = %peer.id, error = %e, "cannot read the log");
                    abort_all(&mut pending);
                    if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::error!(peer = %peer.id, error = %e, "log reader panicked");
                    abort_all(&mut pending);
                    return;
                }
            };
            // Records must follow without a hole: retention may delete from
            // the head of the log while this batch is being read.
            let gap = match batch.first() {
                Some((first, _)) => {
                    *first != read_from + 1 || batch.windows(2).any(|w| w[1].0 != w[0].0 + 1)
                }
                None => last_seq > read_from,
            };
            if gap {
                tracing::warn!(
                    peer = %peer.id,
                    cursor,
                    "peer fell behind the start of the log; repairing it with anti-entropy"
                );
                abort_all(&mut pending);
                peer.mark_for_repair();
                continue;
            }
            if let Some(&(upto, _)) = batch.last() {
                let count = batch.len() as u64;
                let mut request = tonic::Request::new(proto::ReplicateRequest {
                    cluster_id: ctx.cluster_id.clone(),
                    origin: ctx.node_id.clone(),
                    mutations: batch.into_iter().map(|(_, m)| m).collect(),
                });
                request.set_timeout(timeout);
                let mut client = repl.clone();
                let send = tokio::spawn(async move {
                    match tokio::time::timeout(timeout, client.replicate(request)).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
                        Err(_) => Err(format!("deadline of {timeout:?} exceeded")),
                    }
                });
                pending.push_back(InFlight { upto, count, send });
                continue;
            }
            if pending.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = seq_rx.changed() => if changed.is_err() { return },
                    _ = peer.wake.notified() => {}
                    _ = tokio::time::sleep_until(next_round.into()) => {}
                }
                continue;
            }
        }

        // Acknowledge in order: the cursor passes a batch only once every
        // batch before it was acknowledged too.
        let Some(mut front) = pending.pop_front() else {
            continue;
        };
        let sent = tokio::select! {
            _ = shutdown.cancelled() => {
                front.send.abort();
                abort_all(&mut pending);
                return;
            }
            r = &mut front.send => r.unwrap_or_else(|e| Err(format!("send task failed: {e}"))),
        };
        match sent {
            Ok(()) => {
                {
                    let mut s = peer.lock();
                    s.acked_seq = s.acked_seq.max(front.upto);
                    s.connected = true;
                    s.last_error = None;
                }
                persist_cursor(&ctx, &peer.id, front.upto);
                crate::metrics::replicated_out(&peer.id, front.count);
                backoff.reset();
            }
            Err(error) => {
                // Later batches may still land; the merge makes that harmless,
                // and they are sent again from the cursor.
                abort_all(&mut pending);
                let delay = backoff.next_delay();
                tracing::debug!(peer = %peer.id, %error, ?delay, "replicate failed");
                peer.failed(error);
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
    abort_all(&mut pending);
}

/// Batches sent to one peer and not yet acknowledged, at most this many, so
/// that reading and encoding the next batch overlaps the peer applying this one.
const PIPELINE: usize = 2;

/// A Replicate request on its way.
struct InFlight {
    /// The seq of its last record.
    upto: u64,
    /// Its records.
    count: u64,
    send: tokio::task::JoinHandle<Result<(), String>>,
}

fn abort_all(pending: &mut VecDeque<InFlight>) {
    for p in pending.drain(..) {
        p.send.abort();
    }
}

fn persist_cursor(ctx: &Ctx, peer: &str, seq: u64) {
    if let Err(e) = ctx.store.set_cursor(peer, seq) {
        // Harmless: the peer will be sent some records again after a restart.
        tracing::warn!(peer, error = %e, "cannot persist the peer cursor");
    }
}

/// Sleeps; true if shutdown came first.
async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
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
        let p = Peer::new("n2".into(), "http://x".into(), 5);
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
