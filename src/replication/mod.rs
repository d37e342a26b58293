//! Replication: every node ships its own writes to every peer, and
//! anti-entropy repairs whatever the log cannot.
//!
//! **Streaming.** The cluster is a full mesh with no forwarding: the `log`
//! keyspace holds only the writes that originated on this node, keyed by a
//! local sequence number, and each [`peer`] task ships them straight from
//! disk. A peer task keeps a persisted cursor (the highest seq the peer
//! acknowledged), reads a bounded batch after it, sends `Replicate`, advances
//! the cursor on the ack, and sleeps on a `watch` of the last committed seq
//! when it is caught up. The backlog of a peer that is away lives on disk,
//! not in a queue, so memory does not grow with an outage. The receiver's
//! merge is idempotent, so a batch re-sent after a lost ack or a crash is
//! harmless and cursors are persisted lazily.
//!
//! **Retention** ([`log`]). Records every peer acknowledged are deleted. The
//! log is also capped by `max_log_bytes` and `max_log_age_secs`; a peer whose
//! cursor falls behind the log's start notices the gap on its next read and
//! is repaired by anti-entropy instead. It is never left silently divergent.
//!
//! **Anti-entropy** ([`anti_entropy`]). Each node keeps XOR digests of 4096
//! key buckets, updated on every apply. A round sends the digests to a peer,
//! which answers with the buckets that differ; for those the two sides
//! compare `(key, version)` lists and the initiator pushes what it has newer
//! and pulls what the peer has newer. One round therefore repairs both sides.
//! Rounds run at start-up, periodically, and at once for a peer marked for
//! repair. A node with an empty disk, or restored from an old copy, becomes
//! complete this way.
//!
//! Answers to a round are bounded in bytes and say how much of the request
//! they covered, so a round works the same for any keyspace or value size.
//! Periodic rounds wait until the log stream to that peer is caught up:
//! mid-stream every bucket differs, and a round would only resend what
//! streaming is about to deliver.
//!
//! **Tombstones** are purged once older than `tombstone_ttl_secs` and, for
//! this node's own deletes, acknowledged by every peer. A tombstone past its
//! TTL that arrives from a peer deletes what it beats but is not stored, so
//! a purge sticks even while peers purge at different moments. A node away
//! longer than the TTL can resurrect deleted keys, as with Cassandra's
//! `gc_grace_seconds`.

pub mod anti_entropy;
pub mod log;
pub mod manager;
pub mod peer;

pub use manager::{Ctx, PeerManager, PeerView};
