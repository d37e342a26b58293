//! Where blocking storage work runs.
//!
//! In production, reads and scans that touch the disk run on tokio's
//! blocking pool and the writer has an OS thread of its own, so that no
//! runtime worker waits on I/O. A deterministic simulation cannot allow
//! either: work on another thread finishes at a moment the simulation does
//! not control. There the same code runs inline, on the calling task, and
//! simulated time stands still while it does.

use crate::error::{Error, Result};

/// How blocking work is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Blocking {
    /// On tokio's blocking pool (and the writer on its own thread).
    #[default]
    Pool,
    /// On the calling task: for deterministic simulation only.
    Inline,
}

impl Blocking {
    /// Runs `f`; `what` names it if it panics.
    pub async fn run<T, F>(self, what: &'static str, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Blocking::Inline => Ok(f()),
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
        for b in [Blocking::Pool, Blocking::Inline] {
            assert_eq!(b.run("add", || 2 + 2).await.unwrap(), 4);
        }
        let err = Blocking::Pool
            .run("the scan", || -> () { panic!("boom") })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the scan"), "{err}");
    }
}
