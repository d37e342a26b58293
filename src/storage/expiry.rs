//! The expiry sweeper: turns TTLs that ran out into changes for Watch.
//!
//! Reads never need it: an expired value reads as absent from its expiry
//! on, swept or not (`Entry::is_live`). What the sweeper adds is the event.
//! It reads the expiry index (`expires_ms ‖ key`, in time order) up to now
//! and hands what is due to the writer, which checks each key still holds
//! that expiry, records an EXPIRE change and drops the index entry in one
//! batch. Collection of the expired entry itself is tombstone collection's
//! job ([`crate::replication`]'s log task), by the same rules.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{blocking::Blocking, Store, WriterHandle};
use crate::clock::PhysicalClock;

/// How often the index is checked when nothing is due.
const TICK: Duration = Duration::from_millis(100);
/// Index entries handed to the writer at once.
const CHUNK: usize = 1024;

/// Runs until `shutdown`.
pub async fn sweep(
    store: Arc<Store>,
    writer: WriterHandle,
    clock: Arc<dyn PhysicalClock>,
    blocking: Blocking,
    shutdown: CancellationToken,
) {
    loop {
        let s = Arc::clone(&store);
        let now_ms = clock.now_ms();
        let due = blocking
            .run("expiry scan", move || s.feed.due(now_ms, CHUNK))
            .await
            .and_then(|r| r);
        let full = match due {
            Ok(d) if d.is_empty() => false,
            Ok(d) => {
                let n = d.len();
                match writer.expire(d).await {
                    Ok(_) => n == CHUNK,
                    Err(e) => {
                        tracing::warn!(error = %e, "expiry sweep stopped");
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "expiry scan failed");
                false
            }
        };
        if !full {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        } else if shutdown.is_cancelled() {
            return;
        }
    }
}
