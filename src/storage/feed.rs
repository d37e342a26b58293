//! The change feed: every change this node applies, in order, for Watch.
//!
//! The writer gives each change it commits (a local write, a peer's entry
//! that won, an expiry, a value forgotten in catch-up) the next *change
//! seq*, and writes it to the `changes` keyspace in the same batch, so the
//! feed is exactly as durable as the data. After the commit it publishes
//! the encoded changes on a bounded broadcast channel. A watcher subscribes
//! first and then reads the keyspace from its position, so it misses
//! nothing between the two; one that lags behind the channel goes back to
//! the keyspace. Only the newest `retain` changes are kept (at least
//! [`CHANNEL`]): a watcher
//! further behind than that gets a snapshot instead (see `api::watch`).
//!
//! The feed has an id, drawn when the data dir first opens with it: a
//! position means nothing on another node, or on a wiped one.

use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Keyspace, KeyspaceCreateOptions};
use prost::{bytes::Bytes, Message};
use tokio::sync::broadcast;

use crate::{
    error::{Error, Result},
    proto,
};

/// Changes a live watcher may fall behind the writer before it goes back
/// to reading the keyspace. The feed keeps at least this many on disk
/// (`storage.watch_retain_changes` may not be lower), so a change the
/// channel announces without its record is still there to read.
pub const CHANNEL: usize = crate::config::MIN_WATCH_RETAIN_CHANGES as usize;
/// The largest change record the channel carries; larger ones are
/// announced by seq alone and read from disk. The channel keeps its last
/// [`CHANNEL`] messages whether or not anyone reads them, so this bounds
/// its memory to 16 MiB whatever the values weigh.
pub const INLINE_BYTES: usize = 4096;
/// The `meta` key of the feed's id.
pub(crate) const META_FEED_ID: &[u8] = b"feed_id";
/// The `meta` key of the last change seq, written with every batch that has changes.
pub(crate) const META_CHANGE_SEQ: &[u8] = b"change_seq";

/// One committed change: its seq and its encoded [`proto::StoredChange`].
pub type Change = (u64, Bytes);

/// A change as the live channel carries it: its record, unless that is
/// larger than [`INLINE_BYTES`] (then read it with [`Feed::read_after`]).
pub type Live = (u64, Option<Bytes>);

/// The feed's keyspaces and live channel.
pub struct Feed {
    /// `change seq (u64 BE)` → `StoredChange`.
    pub(crate) changes: Keyspace,
    /// `expires_ms (u64 BE) ‖ key` → nothing: when each value with a TTL
    /// expires, for the sweeper that turns expiries into changes. Entries
    /// whose key was written again since are left for the sweeper to drop.
    pub(crate) expiry: Keyspace,
    id: u64,
    /// The last committed change seq.
    last: AtomicU64,
    /// The oldest change seq still kept (`last + 1` when none is).
    first: AtomicU64,
    tx: broadcast::Sender<Live>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("id", &self.id)
            .field("last", &self.last())
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Opens the feed's keyspaces, and its id and position from `meta`.
    pub(crate) fn open(
        db: &fjall::Database,
        meta: &Keyspace,
        opts: impl Fn() -> KeyspaceCreateOptions,
    ) -> Result<Self> {
        let changes = db.keyspace("changes", &opts)?;
        let expiry = db.keyspace("expiry", &opts)?;
        let id = match super::codec::read_u64(meta, META_FEED_ID)? {
            Some(id) => id,
            None => {
                let id = rand::random::<u64>() | 1;
                meta.insert(META_FEED_ID, id.to_be_bytes())?;
                id
            }
        };
        let mut last = super::codec::read_u64(meta, META_CHANGE_SEQ)?.unwrap_or(0);
        if let Some(kv) = changes.last_key_value() {
            last = last.max(seq_of(&kv.key()?)?);
        }
        let first = match changes.first_key_value() {
            Some(kv) => seq_of(&kv.key()?)?,
            None => last + 1,
        };
        Ok(Self {
            changes,
            expiry,
            id,
            last: AtomicU64::new(last),
            first: AtomicU64::new(first),
            tx: broadcast::channel(CHANNEL).0,
        })
    }

    /// The feed's id: positions are only valid with it.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The last committed change seq.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// The oldest change seq still kept.
    pub fn first(&self) -> u64 {
        self.first.load(Ordering::Acquire)
    }

    /// Live changes from now on. Subscribe before reading the keyspace.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.tx.subscribe()
    }

    /// After a commit: the feed now ends at `last`, keeps from `first`, and
    /// these changes are sent live.
    pub(crate) fn publish(&self, last: u64, first: u64, changes: Vec<Change>) {
        self.first.store(first, Ordering::Release);
        self.last.store(last, Ordering::Release);
        for (seq, record) in changes {
            let inline = (record.len() <= INLINE_BYTES).then_some(record);
            // No receiver is fine: the changes are on disk.
            let _ = self.tx.send((seq, inline));
        }
    }

    /// Up to `max` kept changes after `after`, in order.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Vec<Change>> {
        let mut out = Vec::new();
        for kv in self.changes.range(change_key(after.saturating_add(1))..) {
            let (k, v) = kv.into_inner()?;
            out.push((seq_of(&k)?, Bytes::from(v.to_vec())));
            if out.len() >= max {
                break;
            }
        }
        super::blocking::charge(out.len() as u64, 0);
        Ok(out)
    }

    /// Up to `max` entries of the expiry index due at `now_ms`: their index
    /// key, user key and expiry.
    pub fn due(&self, now_ms: u64, max: usize) -> Result<Vec<(Vec<u8>, String, u64)>> {
        let mut out = Vec::new();
        for kv in self
            .expiry
            .range(..expiry_key(now_ms.saturating_add(1), ""))
        {
            let k = kv.key()?;
            let (at, key) = parse_expiry_key(&k)?;
            out.push((k.to_vec(), key, at));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

/// The `changes` key of a change seq.
pub fn change_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Corrupt(format!("change key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// The expiry-index key of `key` expiring at `at`: big-endian time first,
/// so the index is in expiry order.
pub fn expiry_key(at: u64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&at.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn parse_expiry_key(k: &[u8]) -> Result<(u64, String)> {
    let at: [u8; 8] = k
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::Corrupt("expiry key shorter than its time".into()))?;
    Ok((u64::from_be_bytes(at), super::codec::kv_user_key(&k[8..])?))
}

/// Encodes a change: the mutation's encoding as the log holds it (shared,
/// not copied, until the record is written), and its kind.
pub fn encode_change(mutation: Bytes, kind: proto::ChangeKind) -> Bytes {
    Bytes::from(
        proto::StoredChange {
            mutation,
            kind: kind as i32,
        }
        .encode_to_vec(),
    )
}

/// Decodes a change into its mutation and kind.
pub fn decode_change(bytes: &[u8]) -> Result<(proto::Mutation, proto::ChangeKind)> {
    let c = proto::StoredChange::decode(bytes)
        .map_err(|e| Error::Corrupt(format!("change record: {e}")))?;
    let m = proto::Mutation::decode(c.mutation)
        .map_err(|e| Error::Corrupt(format!("change record's mutation: {e}")))?;
    let kind = proto::ChangeKind::try_from(c.kind)
        .map_err(|_| Error::Corrupt(format!("change kind {}", c.kind)))?;
    Ok((m, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_keys_sort_by_time_and_round_trip() {
        assert!(expiry_key(2, "z") < expiry_key(256, "a"));
        let (at, key) = parse_expiry_key(&expiry_key(77, "k/1")).unwrap();
        assert_eq!((at, key.as_str()), (77, "k/1"));
        assert!(parse_expiry_key(b"short").is_err());
    }

    #[test]
    fn changes_round_trip_and_garbage_is_corrupt() {
        let m = proto::Mutation {
            key: "k".into(),
            version: Some(proto::Version {
                hlc: 5,
                node_id: "n1".into(),
            }),
            value: Some(b"v".to_vec()),
            expires_ms: 9,
        };
        let bytes = encode_change(m.encode_to_vec().into(), proto::ChangeKind::Expire);
        assert_eq!(
            decode_change(&bytes).unwrap(),
            (m, proto::ChangeKind::Expire)
        );
        assert!(decode_change(&[0xff, 0xff]).is_err());
    }
}
