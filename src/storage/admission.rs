//! Admission to the writer: two lanes, each bounded in requests and bytes.
//!
//! Client writes and peer traffic (replicated batches and repairs) share one
//! writer, but not one budget. If they did, a node saturated by clients would
//! shed the batches its peers send, and their streams would stall behind
//! retries. So each kind has its own lane: a client that finds its lane full
//! is told RESOURCE_EXHAUSTED at once, while a peer request waits for room in
//! its own lane (within its gRPC deadline), which clients cannot fill.
//!
//! A permit is held from admission until the writer has answered the request,
//! so the lanes bound both the queue and the batch being committed. A request
//! larger than its whole lane takes the whole lane rather than waiting forever.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// One lane's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLimits {
    /// Requests admitted and not yet answered.
    pub requests: usize,
    /// Their bytes (keys and values).
    pub bytes: usize,
}

/// A lane: two semaphores, one counting requests, one counting bytes.
#[derive(Debug, Clone)]
pub struct Lane {
    requests: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    limits: LaneLimits,
    /// Names the config keys in overload errors.
    config: &'static str,
}

/// Room in a lane, released when dropped.
#[derive(Debug)]
pub struct Permit {
    _request: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl Lane {
    /// A lane with these bounds; `config` names its settings for errors.
    pub fn new(limits: LaneLimits, config: &'static str) -> Self {
        // Semaphores count in u32; no lane needs more bytes than that.
        let bytes = limits.bytes.clamp(1, u32::MAX as usize);
        Self {
            requests: Arc::new(Semaphore::new(limits.requests.max(1))),
            bytes: Arc::new(Semaphore::new(bytes)),
            limits: LaneLimits {
                requests: limits.requests.max(1),
                bytes,
            },
            config,
        }
    }

    fn cost(&self, bytes: usize) -> u32 {
        bytes.clamp(1, self.limits.bytes) as u32
    }

    /// Room for a request of `bytes`, now or [`Error::Overloaded`].
    pub fn try_admit(&self, bytes: usize) -> Result<Permit> {
        let full = || {
            Error::Overloaded(format!(
                "write queue is full ({} requests or {} bytes pending, {}); retry with backoff",
                self.limits.requests, self.limits.bytes, self.config
            ))
        };
        let request = Arc::clone(&self.requests)
            .try_acquire_owned()
            .map_err(|_| full())?;
        let bytes = Arc::clone(&self.bytes)
            .try_acquire_many_owned(self.cost(bytes))
            .map_err(|_| full())?;
        Ok(Permit {
            _request: request,
            _bytes: bytes,
        })
    }

    /// Room for a request of `bytes`, waiting for it.
    pub async fn admit(&self, bytes: usize) -> Result<Permit> {
        let closed = |_| Error::Unavailable("the writer has stopped".into());
        let request = Arc::clone(&self.requests)
            .acquire_owned()
            .await
            .map_err(closed)?;
        let bytes = Arc::clone(&self.bytes)
            .acquire_many_owned(self.cost(bytes))
            .await
            .map_err(closed)?;
        Ok(Permit {
            _request: request,
            _bytes: bytes,
        })
    }

    /// The most requests this lane admits at once.
    pub fn max_requests(&self) -> usize {
        self.limits.requests
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_lane_refuses_by_count_and_by_bytes() {
        let lane = Lane::new(
            LaneLimits {
                requests: 2,
                bytes: 100,
            },
            "limits.x",
        );
        let a = lane.try_admit(10).unwrap();
        let _b = lane.try_admit(10).unwrap();
        let err = lane.try_admit(1).unwrap_err();
        assert!(matches!(err, Error::Overloaded(_)), "{err}");
        assert!(err.to_string().contains("limits.x"), "{err}");
        drop(a);
        let _c = lane.try_admit(1).unwrap();

        let bytes = Lane::new(
            LaneLimits {
                requests: 10,
                bytes: 100,
            },
            "limits.x",
        );
        let _big = bytes.try_admit(90).unwrap();
        assert!(bytes.try_admit(20).is_err(), "bytes bound the lane too");
    }

    #[tokio::test]
    async fn a_request_larger_than_the_lane_takes_all_of_it_instead_of_waiting_forever() {
        let lane = Lane::new(
            LaneLimits {
                requests: 4,
                bytes: 100,
            },
            "limits.x",
        );
        let p = lane.admit(1_000_000).await.unwrap();
        assert!(lane.try_admit(1).is_err());
        drop(p);
        assert!(lane.try_admit(1).is_ok());
    }

    #[tokio::test]
    async fn lanes_are_independent() {
        let clients = Lane::new(
            LaneLimits {
                requests: 1,
                bytes: 10,
            },
            "limits.write_queue_depth",
        );
        let peers = Lane::new(
            LaneLimits {
                requests: 1,
                bytes: 10,
            },
            "limits.peer_queue_depth",
        );
        let _held = clients.try_admit(1).unwrap();
        assert!(clients.try_admit(1).is_err());
        // A full client lane leaves the peer lane untouched.
        let p = tokio::time::timeout(std::time::Duration::from_secs(1), peers.admit(5)).await;
        assert!(p.is_ok(), "peer admission waited on the client lane");
    }
}
