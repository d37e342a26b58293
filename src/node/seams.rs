//! What a node takes from its environment, as values a simulation can
//! replace: see "Seams for testing" in `docs/design/testing.md`.

use std::sync::Arc;

use tonic::transport::Channel;

use crate::{
    clock::{PhysicalClock, SystemClock},
    config::PeerConfig,
    error::Result,
    security::tls,
    storage::blocking::Blocking,
};

/// Builds the channel to a peer from its URL.
pub type Connector = dyn Fn(&PeerConfig) -> Result<Channel> + Send + Sync;

/// What a node takes from its environment, so that a simulation can supply
/// all of it: wall-clock time, connections to peers, randomness, and where
/// blocking storage work runs.
#[derive(Clone)]
pub struct Seams {
    /// Wall-clock time (versions, TTLs, lag).
    pub clock: Arc<dyn PhysicalClock>,
    /// Builds the channel to a peer URL.
    pub connect: Arc<Connector>,
    /// Seeds the peer tasks' randomness; `None` draws from the OS.
    pub seed: Option<u64>,
    /// Where blocking storage work runs.
    pub blocking: Blocking,
}

impl Seams {
    /// The real world: the system clock, TCP, OS randomness, threads.
    pub fn production() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            connect: Arc::new(|p: &PeerConfig| tls::peer_channel(None, &p.id, &p.url)),
            seed: None,
            blocking: Blocking::Pool,
        }
    }
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("seed", &self.seed)
            .field("blocking", &self.blocking)
            .finish_non_exhaustive()
    }
}
