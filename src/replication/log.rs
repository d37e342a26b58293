//! Log retention and tombstone collection: the policies (pure) and the
//! background task that applies them.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    clock::{from_physical_ms, physical_ms},
    replication::PeerManager,
    version::{Entry, Version},
};

/// How often retention and the gauges run.
pub const TICK: Duration = Duration::from_secs(1);
/// Tombstones purged per writer request.
const PURGE_CHUNK: usize = 1024;

/// Whether the oldest remaining log record must go.
///
/// It goes if every peer acknowledged it, if the log is over its byte cap,
/// or if it is older than the age cutoff (`cutoff_ms == 0`: no age limit).
pub fn drop_record(
    seq: u64,
    min_acked: u64,
    bytes_left: u64,
    max_bytes: u64,
    record_ms: u64,
    cutoff_ms: u64,
) -> bool {
    seq <= min_acked || bytes_left > max_bytes || (cutoff_ms > 0 && record_ms < cutoff_ms)
}

/// Whether a tombstone may be purged.
///
/// It must be older than the TTL (`cutoff_hlc`). If this node issued it, every
/// peer must also have acknowledged it, which holds when it is older than the
/// oldest unacknowledged log record (`safe_hlc`). Remote tombstones were
/// shipped to every peer by their own origin.
pub fn purgeable(entry: &Entry, self_id: &str, cutoff_hlc: u64, safe_hlc: u64) -> bool {
    entry.is_tombstone()
        && entry.version.hlc < cutoff_hlc
        && (&*entry.version.node != self_id || entry.version.hlc < safe_hlc)
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
        let max_bytes = ctx.config.max_log_bytes;
        let cutoff_ms = match ctx.config.max_log_age_secs {
            0 => 0,
            age => now_ms.saturating_sub(age * 1000),
        };
        let store = Arc::clone(&ctx.store);
        let truncated = tokio::task::spawn_blocking(move || {
            store.truncate_log(|seq, m, left| {
                let ms = m.version.as_ref().map_or(0, |v| physical_ms(v.hlc));
                drop_record(seq, min_acked, left, max_bytes, ms, cutoff_ms)
            })
        })
        .await;
        match truncated {
            Ok(Ok((0, _))) => {}
            Ok(Ok((n, bytes))) => {
                tracing::debug!(records = n, bytes, min_acked, "log truncated");
                crate::metrics::log_truncated(n);
            }
            Ok(Err(crate::Error::Storage(fjall::Error::Poisoned))) => {
                // Storage failed and the node refuses writes until restarted;
                // retrying every tick would only repeat the same error.
                tracing::error!("storage failed: log retention and tombstone collection stop");
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "log truncation failed"),
            Err(e) => tracing::warn!(error = %e, "log truncation panicked"),
        }

        if last_gc.elapsed() >= gc_every {
            last_gc = tokio::time::Instant::now();
            let cutoff_hlc = from_physical_ms(now_ms.saturating_sub(ttl.as_millis() as u64));
            let safe_hlc = manager.oldest_unacked_hlc();
            collect_tombstones(&manager, cutoff_hlc, safe_hlc).await;
        }
    }
}

async fn collect_tombstones(manager: &PeerManager, cutoff_hlc: u64, safe_hlc: u64) {
    let ctx = manager.ctx();
    let store = Arc::clone(&ctx.store);
    let self_id = ctx.node_id.clone();
    let found = tokio::task::spawn_blocking(move || {
        let mut out: Vec<(String, Version)> = Vec::new();
        store.for_each(|key, entry| {
            if purgeable(&entry, &self_id, cutoff_hlc, safe_hlc) {
                out.push((key, entry.version));
            }
            Ok(())
        })?;
        Ok::<_, crate::Error>(out)
    })
    .await;
    let tombstones = match found {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return tracing::warn!(error = %e, "tombstone scan failed"),
        Err(e) => return tracing::warn!(error = %e, "tombstone scan panicked"),
    };
    let mut purged = 0;
    for chunk in tombstones.chunks(PURGE_CHUNK) {
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

    #[test]
    fn acknowledged_records_go_first() {
        assert!(drop_record(5, 5, 0, 100, 1_000, 0));
        assert!(!drop_record(6, 5, 0, 100, 1_000, 0));
    }

    #[test]
    fn the_byte_cap_drops_unacknowledged_records() {
        assert!(drop_record(6, 5, 101, 100, 1_000, 0));
        assert!(!drop_record(6, 5, 100, 100, 1_000, 0));
    }

    #[test]
    fn the_age_cap_drops_old_records_unless_disabled() {
        assert!(drop_record(6, 5, 0, 100, 999, 1_000));
        assert!(!drop_record(6, 5, 0, 100, 1_000, 1_000));
        assert!(!drop_record(6, 5, 0, 100, 1, 0));
    }

    fn tomb(hlc: u64, node: &str) -> Entry {
        Entry {
            version: Version {
                hlc,
                node: node.into(),
            },
            value: None,
        }
    }

    #[test]
    fn only_old_enough_tombstones_are_purged() {
        assert!(purgeable(&tomb(10, "n2"), "n1", 11, 0));
        assert!(!purgeable(&tomb(11, "n2"), "n1", 11, 0));
        let mut live = tomb(1, "n2");
        live.value = Some(vec![]);
        assert!(!purgeable(&live, "n1", 11, u64::MAX));
    }

    #[test]
    fn own_tombstones_wait_for_every_peer() {
        // Some peer has not acknowledged anything at or after hlc 5.
        assert!(!purgeable(&tomb(7, "n1"), "n1", 100, 5));
        assert!(purgeable(&tomb(4, "n1"), "n1", 100, 5));
    }
}
