//! Where blocking storage work runs.
//!
//! In production, reads and scans that touch the disk run on tokio's
//! blocking pool and the writer has an OS thread of its own, so that no
//! runtime worker waits on I/O. A deterministic simulation cannot allow
//! either: work on another thread finishes at a moment the simulation does
//! not control. There the same code runs inline, on the calling task.
//!
//! Simulated time would stand still while it does, and a cost that grows
//! with the data (a scan that outlives its RPC's deadline) would never show.
//! So scans report what they read to [`charge`], and inline work then sleeps
//! for what that would have taken at the [`ScanCost`] the simulation set.

use std::{cell::Cell, time::Duration};

use crate::error::{Error, Result};

thread_local! {
    /// Entries and bytes the scans on this thread read, since it started.
    static SCANNED: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Records that a scan read `entries` entries holding `bytes` bytes of
/// values. Costs two thread-local additions; only the simulation reads it.
pub fn charge(entries: u64, bytes: u64) {
    SCANNED.with(|c| {
        let (e, b) = c.get();
        c.set((e.wrapping_add(entries), b.wrapping_add(bytes)));
    });
}

/// What a scan costs in simulated time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScanCost {
    /// Per entry read.
    pub ns_per_entry: u64,
    /// Per KiB of values read.
    pub ns_per_kib: u64,
}

impl ScanCost {
    fn of(&self, entries: u64, bytes: u64) -> Duration {
        Duration::from_nanos(
            entries
                .saturating_mul(self.ns_per_entry)
                .saturating_add((bytes / 1024).saturating_mul(self.ns_per_kib)),
        )
    }
}

/// How blocking work is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Blocking {
    /// On tokio's blocking pool (and the writer on its own thread).
    #[default]
    Pool,
    /// On the calling task, then a simulated sleep for the scans it did:
    /// for deterministic simulation only.
    Inline(ScanCost),
}

impl Blocking {
    /// Runs `f`; `what` names it if it panics.
    pub async fn run<T, F>(self, what: &'static str, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Blocking::Inline(cost) => {
                let before = SCANNED.with(Cell::get);
                let out = f();
                let after = SCANNED.with(Cell::get);
                let took = cost.of(
                    after.0.wrapping_sub(before.0),
                    after.1.wrapping_sub(before.1),
                );
                if !took.is_zero() {
                    tokio::time::sleep(took).await;
                }
                Ok(out)
            }
            Blocking::Pool => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| Error::Unavailable(format!("{what} failed: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_ways_return_the_result_and_a_panic_is_an_error() {
        for b in [Blocking::Pool, Blocking::Inline(ScanCost::default())] {
            assert_eq!(b.run("add", || 2 + 2).await.unwrap(), 4);
        }
        let err = Blocking::Pool
            .run("the scan", || -> () { panic!("boom") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the scan"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn inline_work_takes_the_simulated_time_of_what_it_scanned() {
        let cost = ScanCost {
            ns_per_entry: 1_000,
            ns_per_kib: 1_000_000,
        };
        let start = tokio::time::Instant::now();
        Blocking::Inline(cost)
            .run("scan", || charge(2_000, 3 * 1024))
            .await
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(5));
        // Work that scanned nothing takes no time.
        Blocking::Inline(cost).run("noop", || ()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(5));
    }
}
