//! Durable state of one node, on the fjall LSM engine.
//!
//! Six keyspaces are written together in atomic batches:
//!
//! - `kv`: `key` → [`StoredEntry`](crate::proto::StoredEntry), so key order
//!   is storage order.
//! - `versions`: `bucket (u16 BE) ‖ key` → [`StoredVersion`](crate::proto::StoredVersion),
//!   written in the same batch as every `kv` change. Anti-entropy and
//!   tombstone collection scan it, a bucket or all of it, and never read a
//!   value; prefixing the key with its bucket lets a repair range-scan
//!   exactly one bucket instead of the whole map.
//! - `log`: `seq (u64 BE)` → [`Mutation`](crate::proto::Mutation): the writes
//!   that originated on this node, in order. Peers are fed from here, so a
//!   peer's backlog lives on disk, never in memory; the newest records are
//!   also kept encoded in a bounded [`window`] that the streams that keep up
//!   read instead.
//! - `changes` and `expiry`: the [`feed`] of every change applied here,
//!   for Watch, and when each value with a TTL expires, for the
//!   [`expiry`] sweeper that turns expiries into changes.
//! - `meta`: the HLC high-water mark, the last log seq, the node and cluster
//!   ids the directory belongs to, and (with replication) the peer cursors.
//!
//! Every mutation goes through one [`writer`] thread, admitted through two
//! [`admission`] lanes so that clients filling theirs never shed peers. It
//! drains all pending requests into one batch, stamps local writes with the
//! HLC, merges remote ones with last-writer-wins, commits once and syncs once
//! (group commit), then answers everyone. Having a single writer makes read-modify-write
//! merges race-free and lets the clock live without a lock.
//!
//! A storage failure poisons the engine. The writer then refuses every write
//! with UNAVAILABLE and the node reports NOT_SERVING: it fails stop rather than
//! carry on after a sync it cannot trust, but stays up to be inspected.

pub mod admission;
pub mod blocking;
mod buckets;
pub mod codec;
pub mod digest;
mod engine;
pub mod expiry;
pub mod feed;
mod lock;
mod migrate;
pub mod positions;
pub mod scan;
pub mod window;
pub mod writer;

pub use buckets::Reach;
pub use digest::{BucketHash, DigestView, Digests, BUCKETS};
pub use engine::{cursor_key, seen_keys, Recovered, Refresh, Store};
pub use writer::{apply::Refusal, Applied, Contest, WriterHandle, WriterOptions, Written};
