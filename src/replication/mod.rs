//! Replication: every node ships its own writes to every peer, and
//! anti-entropy repairs whatever the log cannot. `docs/design/replication.md`
//! and `docs/design/anti-entropy.md` have the whole design; this is the map
//! of the module.
//!
//! **Two tasks per peer**, coordinating only through the peer's shared state
//! ([`peer`]), which changes only by steps of the pure state [`machine`]. The
//! [`stream`]er ships the `log` keyspace (this node's own writes, by seq)
//! from a persisted cursor over one `ReplicateStream`, four batches in
//! flight, from the in-memory window or from disk, and sleeps on a `watch`
//! of the last committed seq when caught up. The backlog of a
//! peer that is away lives on disk, so memory does not grow with an outage.
//! The [`repair`]er runs anti-entropy rounds: at start-up, every interval
//! whether or not the stream is busy, and at once when the streamer finds a
//! gap (retention dropped what the peer needs) and pauses.
//!
//! **Nothing a peer sends can stall a stream.** Entries are checked one by
//! one ([`crate::wire`]); a refused entry is skipped and reported, never
//! retried forever. Every peer message is sized by encoded length below one
//! cluster-wide limit. Peer applies have their own lane into the writer, so
//! clients filling theirs never shed replication.
//!
//! **Anti-entropy** ([`anti_entropy`]) compares bucket digests, then the
//! `(key, version)` lists of differing buckets, a bounded step at a time, and
//! pushes and pulls what wins. The pure [`anti_entropy::plan`] decides, under
//! [`anti_entropy::Rules`]: periodic rounds leave in-flight entries to the
//! streams, repair rounds skip nothing, and catch-up rounds (a fresh or
//! stale start) only pull; a node whose data went back in time (an old copy,
//! recognised by the clock values its peers saw from it) also drops old keys
//! an up-to-date peer has purged.
//!
//! **Retention and tombstones** ([`log`]). Acknowledged records leave the
//! log; caps on bytes and age turn laggards over to repair. A tombstone is
//! purged after its TTL only once every peer is known to hold it: by ack for
//! our own deletes, by a complete round since it arrived for remote ones.

pub mod anti_entropy;
pub mod channel;
pub mod conflicts;
pub mod log;
pub mod machine;
pub mod manager;
mod paging;
pub mod peer;
pub mod quorum;
pub mod repair;
pub mod skew;
pub mod stream;

pub use channel::{PeerChannel, PeerCredential};
pub use manager::{Ctx, PeerManager, PeerView};

#[cfg(test)]
mod round_tests;
#[cfg(test)]
mod transcripts;
