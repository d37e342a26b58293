//! The peer manager: starts one task per peer plus retention, and answers
//! questions about replication state (status, gauges, retention bounds).

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    clock::{physical_ms, PhysicalClock},
    config::{PeerConfig, ReplicationConfig},
    error::{Error, Result},
    high_water::SeenMarks,
    replication::{
        conflicts::{classify, Conflict, Counts, Ledger},
        log,
        machine::PeerState,
        peer::{Backoff, Peer},
        quorum::{Level, Tally},
        repair,
        skew::Offset,
        stream, PeerChannel,
    },
    storage::{blocking::Blocking, Contest, Store, WriterHandle},
};

/// What every replication task needs.
#[derive(Debug)]
pub struct Ctx {
    /// This node.
    pub node_id: String,
    /// Its cluster; sent with every request so peers can check it.
    pub cluster_id: String,
    /// Local storage (the log is read from here).
    pub store: Arc<Store>,
    /// For applying what anti-entropy pulls and for purges.
    pub writer: WriterHandle,
    /// Replication settings.
    pub config: ReplicationConfig,
    /// Becomes true after the first anti-entropy round with any peer.
    pub synced: watch::Sender<bool>,
    /// Wall-clock time for lag, retention, TTLs and the in-flight window.
    pub clock: Arc<dyn PhysicalClock>,
    /// The seq of the last committed local write.
    pub seq: watch::Receiver<u64>,
    /// Peers this node is still catching up with (fresh or stale start).
    pub catching_up: AtomicUsize,
    /// Where blocking storage reads run (inline only in simulation).
    pub blocking: Blocking,
    /// The HLC high-water mark this node started from. A peer that saw a
    /// higher one from it before means its data went back in time.
    pub recovered_high_water: u64,
    /// Tags this run in every Digest: the HLC at start-up.
    pub incarnation: u64,
    /// The high-water marks each peer reported, run by run (persisted).
    pub seen_high_water: std::sync::Mutex<std::collections::HashMap<String, SeenMarks>>,
    /// Seeds every peer task's randomness; `None` draws from the OS.
    pub seed: Option<u64>,
    /// Bumped whenever a peer's acknowledged seq moves: wakes the writes
    /// waiting for a consistency level.
    pub acked: watch::Sender<u64>,
    /// What last-writer-wins decided against someone: counts and the last
    /// conflicts.
    pub conflicts: Ledger,
}

impl Ctx {
    /// The digests, after rescanning on the blocking pool what changed
    /// since the last call, up to `budget` versions (see
    /// [`Store::refresh_digests`](crate::storage::Store::refresh_digests)).
    pub async fn digests(
        &self,
        budget: usize,
        mode: crate::storage::Refresh,
    ) -> crate::error::Result<crate::storage::DigestView> {
        let store = Arc::clone(&self.store);
        self.blocking
            .run("digest refresh", move || {
                store.refresh_digests(budget, mode)
            })
            .await?
    }

    /// The seq of the last committed local write.
    pub fn last_seq(&self) -> u64 {
        *self.seq.borrow()
    }

    /// Fresh, or stale and not yet caught up with every peer: peers must not
    /// take this node's lack of an old key as proof it was deleted.
    pub fn catching_up(&self) -> bool {
        self.catching_up.load(Ordering::Relaxed) > 0
    }

    /// Records the high-water mark that run `incarnation` of `peer` reports;
    /// returns the highest mark its other runs reported (0 if none).
    pub fn peer_reports_high_water(&self, peer: &str, incarnation: u64, hlc: u64) -> u64 {
        let (answer, changed) = {
            let mut seen = self
                .seen_high_water
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let e = seen.entry(peer.to_string()).or_default();
            let before = *e;
            let answer = e.report(incarnation, hlc);
            (answer, (*e != before).then_some(*e))
        };
        if let Some(marks) = changed {
            self.writer.save_seen_marks(peer, marks);
        }
        answer
    }

    /// Records the conflicts among `contests`, entries `sender` delivered.
    /// `saw(origin, hlc)` says whether peer `origin` had seen this node's
    /// own write at `hlc`, when that can be told.
    pub fn note_contests(
        &self,
        sender: &str,
        contests: &[Contest],
        saw: impl Fn(&str, u64) -> Option<bool>,
    ) {
        let now_ms = self.clock.now_ms();
        for c in contests {
            let seen = if *c.local.node == *self.node_id {
                saw(&c.remote.node, c.local.hlc)
            } else {
                None
            };
            let max_skew = self.config.max_clock_skew_ms;
            let Some(kind) = classify(&c.local, &c.remote, c.remote_won, seen, max_skew) else {
                continue;
            };
            let (kept, lost) = if c.remote_won {
                (c.remote.clone(), c.local.clone())
            } else {
                (c.local.clone(), c.remote.clone())
            };
            tracing::debug!(key = ?c.key, %kept, %lost, peer = sender, ?kind, "conflict");
            self.conflicts.record(Conflict {
                key: c.key.clone(),
                kind,
                kept,
                lost,
                peer: sender.to_string(),
                at_ms: now_ms,
            });
        }
    }

    /// The first round with one more peer finished.
    pub(crate) fn caught_up_with_one(&self) {
        let left = self.catching_up.fetch_sub(1, Ordering::Relaxed);
        if left == 1 {
            tracing::info!("caught up with every peer");
        }
    }
}

/// A peer's state plus the figures derived from the log.
#[derive(Debug, Clone)]
pub struct PeerView {
    /// Its node id.
    pub id: String,
    /// Its URL.
    pub url: String,
    /// The task's state.
    pub state: PeerState,
    /// Local writes not yet acknowledged.
    pub backlog_entries: u64,
    /// Their approximate bytes (entries × mean record size).
    pub backlog_bytes: u64,
    /// Age of the oldest unacknowledged write, in seconds.
    pub lag_seconds: f64,
    /// Its estimated clock offset.
    pub clock: Offset,
    /// Conflicts counted for writes it delivered.
    pub conflicts: Counts,
}

/// Owns the peer tasks.
#[derive(Debug)]
pub struct PeerManager {
    ctx: Arc<Ctx>,
    peers: Vec<Arc<Peer>>,
    /// A channel to each peer, in the order of `peers`: for reads at a
    /// consistency level and read repair.
    channels: Vec<PeerChannel>,
}

impl PeerManager {
    /// Starts a streamer and a repairer per peer (from its persisted cursor)
    /// and the retention task. With `catch_up` (a fresh or stale start) every
    /// peer begins in catch-up. Cursors of peers no longer configured are
    /// dropped: removing a peer from the config is how it is decommissioned.
    pub fn start(
        ctx: Arc<Ctx>,
        peers: &[PeerConfig],
        catch_up: bool,
        connect: &dyn Fn(&PeerConfig) -> Result<PeerChannel>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>> {
        for old in ctx.store.cursor_peers()? {
            if !peers.iter().any(|p| p.id == old) {
                ctx.store.remove_cursor(&old)?;
                tracing::info!(
                    peer = %old,
                    "peer decommissioned (no longer configured): its cursor is dropped; \
                     it no longer holds back log retention or tombstone collection"
                );
            }
        }
        crate::metrics::register(&peers.iter().map(|p| p.id.clone()).collect::<Vec<_>>());
        let mut list = Vec::with_capacity(peers.len());
        let mut channels = Vec::with_capacity(peers.len());
        for p in peers {
            let seen = ctx.store.seen_marks(&p.id)?;
            ctx.seen_high_water
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(p.id.clone(), seen);
            let cursor = ctx.store.cursor(&p.id)?;
            list.push(Arc::new(Peer::new(
                p.id.clone(),
                p.url.clone(),
                cursor,
                catch_up,
            )));
            channels.push(connect(p)?);
        }
        if catch_up {
            ctx.catching_up.store(list.len(), Ordering::Relaxed);
        }
        let manager = Arc::new(Self {
            ctx,
            peers: list,
            channels: channels.clone(),
        });
        let cfg = &manager.ctx.config;
        let seed = manager.ctx.seed;
        let backoff = |peer: &str, task: u64| {
            // Each task draws its jitter from its own seeded generator: from
            // the simulation's seed when it has one, so that a run replays.
            let seed = seed.map_or_else(rand::random, |s| {
                xxhash_rust::xxh3::xxh3_64_with_seed(peer.as_bytes(), s ^ task)
            });
            Backoff::new(
                Duration::from_millis(cfg.backoff_min_ms),
                Duration::from_millis(cfg.backoff_max_ms),
                seed,
            )
        };
        for (peer, channel) in manager.peers.iter().zip(channels) {
            tracker.spawn(stream::run(
                Arc::clone(&manager.ctx),
                Arc::clone(peer),
                channel.clone(),
                manager.ctx.seq.clone(),
                backoff(&peer.id, 1),
                shutdown.clone(),
            ));
            tracker.spawn(repair::run(
                Arc::clone(&manager.ctx),
                Arc::clone(peer),
                channel,
                backoff(&peer.id, 2),
                shutdown.clone(),
            ));
        }
        tracker.spawn(log::run(Arc::clone(&manager), shutdown.clone()));
        if manager.peers.is_empty() {
            manager.ctx.synced.send_replace(true);
        }
        Ok(manager)
    }

    /// Each peer with a channel to it.
    pub fn channels(&self) -> impl Iterator<Item = (&Arc<Peer>, &PeerChannel)> {
        self.peers.iter().zip(&self.channels)
    }

    /// Records the conflicts among `contests`, which `sender` delivered.
    pub fn note_contests(&self, sender: &str, contests: &[Contest]) {
        if contests.is_empty() {
            return;
        }
        self.ctx.note_contests(sender, contests, |origin, hlc| {
            let peer = self.peers.iter().find(|p| p.id == origin)?;
            Some(hlc < self.own_acked_below_hlc(peer.state().acked_seq))
        });
    }

    /// Each peer and the last seq of this node's log it acknowledged.
    pub fn acked(&self) -> Vec<(String, u64)> {
        self.peers
            .iter()
            .map(|p| (p.id.clone(), p.state().acked_seq))
            .collect()
    }

    /// Waits until enough peers for `level` have acknowledged this node's
    /// log up to `seq`, or until `deadline`: then the error names who has
    /// the write and who does not.
    pub async fn await_acked(
        &self,
        seq: u64,
        level: Level,
        deadline: tokio::time::Instant,
    ) -> Result<Tally> {
        let mut changed = self.ctx.acked.subscribe();
        loop {
            changed.borrow_and_update();
            let tally = Tally::at(&self.acked(), seq);
            if tally.meets(level) {
                return Ok(tally);
            }
            tokio::select! {
                r = changed.changed() => {
                    if r.is_err() {
                        return Err(Error::Unavailable("the node is stopping".into()));
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Tally::at(&self.acked(), seq).timed_out(level));
                }
            }
        }
    }

    /// The peers, for tombstone collection and status.
    pub fn peers(&self) -> &[Arc<Peer>] {
        &self.peers
    }

    /// The shared context.
    pub fn ctx(&self) -> &Arc<Ctx> {
        &self.ctx
    }

    /// Becomes true after the first anti-entropy round with a peer.
    pub fn synced(&self) -> watch::Receiver<bool> {
        self.ctx.synced.subscribe()
    }

    /// The seq of the last committed local write.
    pub fn last_seq(&self) -> u64 {
        self.ctx.last_seq()
    }

    /// The highest seq every peer acknowledged: what retention may delete.
    /// With no peers, everything.
    pub fn min_acked(&self) -> u64 {
        self.peers
            .iter()
            .map(|p| p.state().acked_seq)
            .min()
            .unwrap_or_else(|| self.last_seq())
    }

    /// The lowest cursor of the peers whose repair holds the log (see
    /// [`PeerState::holds_log`](super::machine::PeerState::holds_log)).
    pub fn log_held_after(&self) -> Option<u64> {
        self.peers
            .iter()
            .filter_map(|p| {
                let s = p.lock();
                s.holds_log.then_some(s.acked_seq)
            })
            .min()
    }

    /// For a peer whose cursor is `acked_seq`: our own log records with an
    /// HLC below the returned value were acknowledged by it (`u64::MAX` if it
    /// has everything; 0 if a record it needs already left the log, so that
    /// none of our tombstones is purged until the peer is repaired).
    pub fn own_acked_below_hlc(&self, acked_seq: u64) -> u64 {
        if acked_seq >= self.last_seq() {
            return u64::MAX;
        }
        match self.ctx.store.log_entry(acked_seq + 1) {
            Ok(Some(m)) => m.version.map_or(0, |v| v.hlc),
            _ => 0,
        }
    }

    /// Every peer with its backlog and lag.
    pub fn views(&self) -> Vec<PeerView> {
        let store = &self.ctx.store;
        let last = self.last_seq();
        let first = store.log_first_seq().ok().flatten();
        let log_len = first.map_or(0, |f| last.saturating_sub(f) + 1);
        let mean = store.log_bytes().checked_div(log_len).unwrap_or(0);
        let now_ms = self.ctx.clock.now_ms();
        self.peers
            .iter()
            .map(|p| {
                let state = p.state();
                let backlog = last.saturating_sub(state.acked_seq);
                let lag_seconds = if backlog == 0 {
                    0.0
                } else {
                    let oldest = store
                        .log_entry(state.acked_seq + 1)
                        .ok()
                        .flatten()
                        .or_else(|| first.and_then(|f| store.log_entry(f).ok().flatten()));
                    oldest.and_then(|m| m.version).map_or(0.0, |v| {
                        now_ms.saturating_sub(physical_ms(v.hlc)) as f64 / 1e3
                    })
                };
                PeerView {
                    id: p.id.clone(),
                    url: p.url.clone(),
                    clock: p.clock(),
                    conflicts: self.ctx.conflicts.counts(&p.id),
                    backlog_entries: backlog,
                    backlog_bytes: backlog * mean,
                    lag_seconds,
                    state,
                }
            })
            .collect()
    }

    /// Publishes per-peer and log gauges to the metrics recorder.
    pub fn export_gauges(&self) {
        for v in self.views() {
            crate::metrics::peer_gauges(crate::metrics::PeerGauges {
                peer: &v.id,
                backlog_entries: v.backlog_entries,
                backlog_bytes: v.backlog_bytes,
                lag_seconds: v.lag_seconds,
                acked_seq: v.state.acked_seq,
                connected: v.state.connected,
            });
        }
        crate::metrics::store_gauges(self.ctx.store.log_bytes(), self.ctx.store.key_count());
    }
}
