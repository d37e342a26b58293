//! Log retention and tombstone collection: the policies (pure) and the
//! background task that applies them.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    clock::{from_physical_ms, physical_ms},
    replication::PeerManager,
    storage::Store,
    version::{Entry, Version},
};

/// Expired tombstones found waiting in one collection, listed at most this
/// many per pass; the rest wait for the next pass.
const PURGE_SCAN_LIMIT: usize = 1 << 20;

/// How often retention and the gauges run.
pub const TICK: Duration = Duration::from_secs(1);
/// Tombstones purged per writer request.
const PURGE_CHUNK: usize = 1024;

/// What log retention decides with, in one pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Every peer acknowledged every record up to this seq.
    pub min_acked: u64,
    /// The byte cap (`max_log_bytes`).
    pub max_bytes: u64,
    /// Records older than this physical time go (0: no age limit).
    pub cutoff_ms: u64,
    /// A peer repairing a gap will resume its stream after this seq: the
    /// records after it are held up to [`HELD_CAP_FACTOR`] times the byte
    /// cap. Otherwise, when more than the cap is written during one repair
    /// round, the stream that resumes finds a gap at once and the peer
    /// repairs forever.
    pub held_after: Option<u64>,
}

/// How far past `max_log_bytes` a repairing peer's backlog may hold the log.
pub const HELD_CAP_FACTOR: u64 = 2;

impl Retention {
    /// Whether the oldest remaining log record, `seq`, must go, with
    /// `bytes_left` in the log and written at `record_ms`.
    ///
    /// It goes if every peer acknowledged it, if the log is over its byte cap
    /// (the raised one for a held record), or if it is older than the age
    /// cutoff.
    pub fn drops(&self, seq: u64, bytes_left: u64, record_ms: u64) -> bool {
        let held = self.held_after.is_some_and(|after| seq > after);
        let cap = match held {
            true => self.max_bytes.saturating_mul(HELD_CAP_FACTOR),
            false => self.max_bytes,
        };
        seq <= self.min_acked
            || bytes_left > cap
            || (self.cutoff_ms > 0 && record_ms < self.cutoff_ms)
    }
}

/// What tombstone collection knows about one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGc {
    /// Our own log records with an HLC below this were acknowledged by the
    /// peer (`u64::MAX`: all of them; 0: one it needs already left the log).
    pub own_acked_below_hlc: u64,
    /// The visible time when the last complete anti-entropy round with the
    /// peer that pushed started (see `PeerState::last_complete_round_ms`).
    pub last_complete_round_ms: Option<u64>,
}

/// Whether `peer` is known to hold the tombstone `entry` (or something newer).
///
/// For our own delete: the peer acknowledged its log record. For a remote
/// one: a complete anti-entropy round with the peer started after we applied
/// it (`applied_ms`) and after its version left the in-flight window
/// (`settle_ms`), so the round compared it and delivered it if needed.
pub fn peer_holds(
    entry: &Entry,
    applied_ms: u64,
    self_id: &str,
    settle_ms: u64,
    peer: &PeerGc,
) -> bool {
    if crate::planted::active(crate::planted::Bug::PurgeWithoutAcks) {
        return true;
    }
    if *entry.version.node == *self_id {
        return entry.version.hlc < peer.own_acked_below_hlc;
    }
    let settled_ms = physical_ms(entry.version.hlc).saturating_add(settle_ms);
    peer.last_complete_round_ms
        .is_some_and(|r| r > applied_ms && r >= settled_ms)
}

/// Whether a tombstone may be purged: it is older than the TTL (`cutoff_hlc`)
/// and every configured peer is known to hold it. Purging one a peer lacks
/// would let the peer's older value come back through anti-entropy.
pub fn purgeable(
    entry: &Entry,
    applied_ms: u64,
    self_id: &str,
    cutoff_hlc: u64,
    settle_ms: u64,
    peers: &[PeerGc],
) -> bool {
    expired(entry, cutoff_hlc)
        && peers
            .iter()
            .all(|p| peer_holds(entry, applied_ms, self_id, settle_ms, p))
}

/// The key has read as absent since before the cutoff: a tombstone older
/// than it, or a value that expired before it.
fn expired(entry: &Entry, cutoff_hlc: u64) -> bool {
    match entry.value {
        None => entry.version.hlc < cutoff_hlc,
        Some(_) => entry
            .expires_ms
            .is_some_and(|e| e < physical_ms(cutoff_hlc)),
    }
}

/// Runs retention every [`TICK`] and tombstone collection every
/// `tombstone_ttl / 8` (at least every second, at most every 10 minutes).
pub async fn run(manager: Arc<PeerManager>, shutdown: CancellationToken) {
    let ctx = manager.ctx();
    let clock = Arc::clone(&ctx.clock);
    let ttl = Duration::from_secs(ctx.config.tombstone_ttl_secs);
    let gc_every = (ttl / 8).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_gc = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        manager.export_gauges();
        let now_ms = clock.now_ms();
        let min_acked = manager.min_acked();
        let policy = Retention {
            min_acked,
            max_bytes: ctx.config.max_log_bytes,
            cutoff_ms: match ctx.config.max_log_age_secs {
                0 => 0,
                age => now_ms.saturating_sub(age.saturating_mul(1000)),
            },
            held_after: manager.log_held_after(),
        };
        let store = Arc::clone(&ctx.store);
        let started = std::time::Instant::now();
        let truncated = ctx
            .blocking
            .run("log truncation", move || {
                store.truncate_log(|seq, m, left| {
                    let ms = m.version.as_ref().map_or(0, |v| physical_ms(v.hlc));
                    policy.drops(seq, left, ms)
                })
            })
            .await
            .and_then(|r| r);
        crate::metrics::stage("retention", started.elapsed());
        match truncated {
            Ok((0, _)) => {}
            Ok((n, bytes)) => {
                tracing::debug!(records = n, bytes, min_acked, "log truncated");
                crate::metrics::log_truncated(n);
            }
            Err(crate::Error::Storage(fjall::Error::Poisoned)) => {
                // Storage failed and the node refuses writes until restarted;
                // retrying every tick would only repeat the same error.
                tracing::error!("storage failed: log retention and tombstone collection stop");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "log truncation failed"),
        }

        if last_gc.elapsed() >= gc_every {
            last_gc = tokio::time::Instant::now();
            let cutoff_hlc = from_physical_ms(now_ms.saturating_sub(ttl.as_millis() as u64));
            collect_tombstones(&manager, cutoff_hlc, &shutdown).await;
        }
    }
}

/// A tombstone to purge: its key and the version it must still have.
type Purge = (String, Version);

/// What tombstone collection decides with.
struct Gc<'a> {
    self_id: &'a str,
    cutoff_hlc: u64,
    settle_ms: u64,
    peers: &'a [PeerGc],
}

/// The tombstones that may be purged, and how many expired ones wait on each
/// peer. A full scan can be long: shutdown (`stop`) and a bound on what one
/// pass lists end it early.
fn scan(
    store: &Store,
    gc: &Gc<'_>,
    stop: &CancellationToken,
) -> crate::Result<(Vec<Purge>, Vec<u64>)> {
    let mut out: Vec<Purge> = Vec::new();
    let mut waiting = vec![0u64; gc.peers.len()];
    store.for_each_version(|key, indexed| {
        if stop.is_cancelled() {
            return Ok(false);
        }
        if !indexed.tombstone && indexed.expires_ms.is_none() {
            return Ok(true);
        }
        let applied_ms = indexed.applied_ms;
        let entry = indexed.as_entry();
        if !expired(&entry, gc.cutoff_hlc) {
            return Ok(true);
        }
        let mut all = true;
        for (i, p) in gc.peers.iter().enumerate() {
            if !peer_holds(&entry, applied_ms, gc.self_id, gc.settle_ms, p) {
                waiting[i] += 1;
                all = false;
            }
        }
        if all {
            out.push((key, entry.version));
        }
        Ok(out.len() < PURGE_SCAN_LIMIT)
    })?;
    Ok((out, waiting))
}

async fn collect_tombstones(manager: &PeerManager, cutoff_hlc: u64, shutdown: &CancellationToken) {
    let ctx = manager.ctx();
    let store = Arc::clone(&ctx.store);
    let self_id = ctx.node_id.clone();
    let settle_ms = ctx.config.rpc_timeout_ms;
    let peers: Vec<PeerGc> = manager
        .peers()
        .iter()
        .map(|p| {
            let s = p.state();
            PeerGc {
                own_acked_below_hlc: manager.own_acked_below_hlc(s.acked_seq),
                last_complete_round_ms: s.last_complete_round_ms,
            }
        })
        .collect();
    let stop = shutdown.clone();
    let found = ctx
        .blocking
        .run("tombstone scan", move || {
            let gc = Gc {
                self_id: &self_id,
                cutoff_hlc,
                settle_ms,
                peers: &peers,
            };
            scan(&store, &gc, &stop)
        })
        .await
        .and_then(|r| r);
    let (tombstones, waiting) = match found {
        Ok(t) => t,
        Err(e) => return tracing::warn!(error = %e, "tombstone scan failed"),
    };
    for (peer, n) in manager.peers().iter().zip(waiting) {
        peer.lock().tombstones_waiting = n;
        crate::metrics::tombstones_waiting(&peer.id, n);
    }
    let mut purged = 0;
    for chunk in tombstones.chunks(PURGE_CHUNK) {
        if shutdown.is_cancelled() {
            break;
        }
        match ctx.writer.purge(chunk.to_vec()).await {
            Ok(n) => purged += n,
            Err(e) => return tracing::warn!(error = %e, "tombstone purge failed"),
        }
    }
    if purged > 0 {
        tracing::info!(purged, "purged expired tombstones");
        crate::metrics::tombstones_purged(purged);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cutoff_ms: u64, held_after: Option<u64>) -> Retention {
        Retention {
            min_acked: 5,
            max_bytes: 100,
            cutoff_ms,
            held_after,
        }
    }

    #[test]
    fn acknowledged_records_go_first() {
        assert!(policy(0, None).drops(5, 0, 1_000));
        assert!(!policy(0, None).drops(6, 0, 1_000));
    }

    #[test]
    fn the_byte_cap_drops_unacknowledged_records() {
        assert!(policy(0, None).drops(6, 101, 1_000));
        assert!(!policy(0, None).drops(6, 100, 1_000));
    }

    #[test]
    fn the_age_cap_drops_old_records_unless_disabled() {
        assert!(policy(1_000, None).drops(6, 0, 999));
        assert!(!policy(1_000, None).drops(6, 0, 1_000));
        assert!(!policy(0, None).drops(6, 0, 1));
    }

    /// Issue 22, item 6: when more than the byte cap was written during a
    /// repair round, retention dropped the records the stream was to resume
    /// from, and the peer found a gap at once and repaired forever.
    #[test]
    fn a_repairing_peers_backlog_is_held_up_to_twice_the_cap() {
        let held = policy(0, Some(5));
        assert!(!held.drops(6, 150, 1_000), "held past the cap");
        assert!(!held.drops(6, 200, 1_000));
        assert!(held.drops(6, 201, 1_000), "but not past twice the cap");
        // Records the repairing peer has acknowledged are not held by it.
        assert!(policy(0, Some(3)).drops(4, 0, 1_000));
        assert!(policy(0, Some(9)).drops(6, 101, 1_000));
        // Acknowledged by everyone: gone whatever is held.
        assert!(held.drops(5, 0, 1_000));
    }

    fn tomb(hlc: u64, node: &str) -> Entry {
        Entry {
            version: Version {
                hlc,
                node: node.into(),
            },
            value: None,
            expires_ms: None,
        }
    }

    fn peer(own_acked_below_hlc: u64, round: Option<u64>) -> PeerGc {
        PeerGc {
            own_acked_below_hlc,
            last_complete_round_ms: round,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scan_stops_at_shutdown_and_counts_what_waits_on_each_peer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, w, _seq, join) = crate::storage::writer::for_tests(dir.path());
        for i in 0..10 {
            w.write(format!("k{i}"), None).await.unwrap();
        }
        drop(w);
        join.join().await.unwrap();
        // Our own deletes: one peer acknowledged everything, one nothing.
        let peers = [peer(u64::MAX, None), peer(0, None)];
        let gc = Gc {
            self_id: "n1",
            cutoff_hlc: u64::MAX,
            settle_ms: 0,
            peers: &peers,
        };
        let (purgeable, waiting) = scan(&store, &gc, &CancellationToken::new()).unwrap();
        assert!(purgeable.is_empty());
        assert_eq!(waiting, [0, 10]);
        let all_acked = [peer(u64::MAX, None)];
        let gc = Gc {
            peers: &all_acked,
            ..gc
        };
        assert_eq!(
            scan(&store, &gc, &CancellationToken::new())
                .unwrap()
                .0
                .len(),
            10
        );
        let stopped = CancellationToken::new();
        stopped.cancel();
        let (found, _) = scan(&store, &gc, &stopped).unwrap();
        assert!(found.is_empty(), "a cancelled scan reads nothing more");
    }

    #[test]
    fn only_expired_tombstones_are_purged() {
        let all = [peer(u64::MAX, Some(u64::MAX))];
        let t = tomb(from_physical_ms(10), "n2");
        assert!(purgeable(&t, 0, "n1", from_physical_ms(11), 0, &all));
        assert!(!purgeable(&t, 0, "n1", from_physical_ms(10), 0, &all));
        let mut live = t.clone();
        live.value = Some(vec![]);
        assert!(!purgeable(&live, 0, "n1", u64::MAX, 0, &all));
        // A value that expired is collected like a tombstone, from its expiry.
        let mut expiring = live.clone();
        expiring.expires_ms = Some(20);
        assert!(purgeable(&expiring, 0, "n1", from_physical_ms(21), 0, &all));
        assert!(!purgeable(
            &expiring,
            0,
            "n1",
            from_physical_ms(20),
            0,
            &all
        ));
    }

    #[test]
    fn own_tombstones_wait_for_every_peer_to_acknowledge_them() {
        let t = tomb(7, "n1");
        assert!(!purgeable(
            &t,
            0,
            "n1",
            100,
            0,
            &[peer(u64::MAX, None), peer(5, None)]
        ));
        assert!(purgeable(
            &t,
            0,
            "n1",
            100,
            0,
            &[peer(u64::MAX, None), peer(8, None)]
        ));
    }

    #[test]
    fn a_remote_tombstone_waits_for_a_complete_round_with_every_peer_after_it_arrived() {
        // Deleted on n3 at 1 000 ms; it reached us late, at 50 000 ms.
        let t = tomb(from_physical_ms(1_000), "n3");
        let cutoff = u64::MAX;
        let settle = 5_000;
        // The TTL alone is not enough: no round proves the peers hold it.
        assert!(!purgeable(
            &t,
            50_000,
            "n1",
            cutoff,
            settle,
            &[peer(u64::MAX, None)]
        ));
        // A round that started before it arrived says nothing about it.
        assert!(!purgeable(
            &t,
            50_000,
            "n1",
            cutoff,
            settle,
            &[peer(u64::MAX, Some(40_000))]
        ));
        // A round after it arrived, with every peer: now it may go.
        assert!(purgeable(
            &t,
            50_000,
            "n1",
            cutoff,
            settle,
            &[peer(0, Some(60_000))]
        ));
        assert!(!purgeable(
            &t,
            50_000,
            "n1",
            cutoff,
            settle,
            &[peer(0, Some(60_000)), peer(0, Some(45_000))]
        ));
        // Its version must also have left the in-flight window by then, or
        // the round may have skipped it.
        let recent = tomb(from_physical_ms(58_000), "n3");
        assert!(!purgeable(
            &recent,
            50_000,
            "n1",
            cutoff,
            settle,
            &[peer(0, Some(60_000))]
        ));
    }
}
