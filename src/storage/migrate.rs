//! Start-up migration of a data dir written by an older layout.
//!
//! Layout 1 kept every entry in one keyspace, `data`, keyed `bucket ‖ key`:
//! good for anti-entropy, which scans a bucket at a time, but every such scan
//! read the values too, and nothing could list keys in order. Layout 2 splits
//! it into `kv` (keyed by the key itself, so key order is storage order) and
//! `versions` (keyed `bucket ‖ key`, the version alone). See "On disk" in
//! `docs/design/data-model.md`.
//!
//! The move is crash-safe without a marker: each chunk inserts its entries
//! into both new keyspaces and removes them from `data` in one atomic batch,
//! so an interrupted migration resumes from what is left in `data`, and the
//! old keyspace is deleted only once it is empty.

use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions};

use crate::{
    error::Result,
    storage::{codec, digest::BucketHash},
};

/// Entries moved per atomic batch, and the value bytes after which a batch
/// ends early: together they bound the batch's memory (whatever the values
/// weigh) and what a crash repeats.
const CHUNK: usize = 1024;
const CHUNK_BYTES: usize = 16 * 1024 * 1024;

/// Moves a layout-1 `data` keyspace, if there is one, into `kv` and `versions`.
pub fn from_layout_1(db: &Database, kv: &Keyspace, versions: &Keyspace) -> Result<()> {
    if !db.keyspace_exists("data") {
        return Ok(());
    }
    let data = db.keyspace("data", KeyspaceCreateOptions::default)?;
    tracing::info!("migrating the data dir to storage layout 2 (kv + versions)");
    let started = Instant::now();
    let moved = chunked(db, &data, "migrating storage layout", |batch, k, v| {
        let key = codec::user_key(k)?;
        let (entry, applied_ms) = codec::decode_stored(v)?;
        batch.insert(kv, key.as_bytes(), v);
        batch.insert(versions, k, codec::encode_version(&entry, applied_ms));
        batch.remove(&data, k.to_vec());
        Ok(())
    })?;
    db.delete_keyspace(data)?;
    db.persist(fjall::PersistMode::SyncAll)?;
    tracing::info!(moved, took = ?started.elapsed(), "storage layout 2 in place");
    Ok(())
}

/// Where the data dir records the [`BucketHash::id`] its `versions`
/// keyspace is keyed by.
const META_BUCKET_KEY: &[u8] = b"bucket_key_id";

/// Rebuilds `versions` from `kv` when it was keyed by another bucket key
/// than `buckets` (a data dir from before keyed buckets, a new
/// `replication.bucket_key_file`, or a layout-1 move): every entry's
/// bucket prefix changes. Two passes, each in bounded atomic batches: empty
/// `versions`, then refill it from `kv`. The new id is recorded only after
/// both are durable, so a crash anywhere in between rebuilds again from
/// the start at the next open.
pub fn rekey_versions(
    db: &Database,
    kv: &Keyspace,
    versions: &Keyspace,
    meta: &Keyspace,
    buckets: &BucketHash,
) -> Result<()> {
    let want = buckets.id();
    let have = codec::read_u64(meta, META_BUCKET_KEY)?;
    if have == Some(want) {
        return Ok(());
    }
    if versions.first_key_value().is_some() || kv.first_key_value().is_some() {
        tracing::info!(
            had = have.map(|id| format!("{id:016x}")),
            now = format!("{want:016x}"),
            "the bucket key is new to this data dir: rebuilding the anti-entropy index"
        );
        let started = Instant::now();
        let removed = chunked(
            db,
            versions,
            "emptying the anti-entropy index",
            |batch, k, _| {
                batch.remove(versions, k.to_vec());
                Ok(())
            },
        )?;
        let added = chunked(
            db,
            kv,
            "rebuilding the anti-entropy index",
            |batch, k, v| {
                let key = codec::kv_user_key(k)?;
                let (entry, applied_ms) = codec::decode_stored(v)?;
                let version = codec::encode_version(&entry, applied_ms);
                batch.insert(versions, codec::version_key(buckets, &key), version);
                Ok(())
            },
        )?;
        tracing::info!(removed, added, took = ?started.elapsed(), "anti-entropy index rebuilt");
    }
    db.persist(fjall::PersistMode::SyncAll)?;
    meta.insert(META_BUCKET_KEY, want.to_be_bytes())?;
    db.persist(fjall::PersistMode::SyncAll)?;
    Ok(())
}

/// Runs `each` over every entry of `ks` in key order, committing its
/// batch every [`CHUNK`] entries or [`CHUNK_BYTES`] value bytes and
/// logging `doing` every 5 s; the number of entries seen. `each` may
/// remove what it is given: each chunk starts past the last key seen, as
/// starting over from the front would step over the tombstones of every
/// chunk before it.
fn chunked(
    db: &Database,
    ks: &Keyspace,
    doing: &str,
    mut each: impl FnMut(&mut fjall::OwnedWriteBatch, &[u8], &[u8]) -> Result<()>,
) -> Result<u64> {
    let (mut seen, mut last_report) = (0u64, Instant::now());
    let mut after: Option<Vec<u8>> = None;
    loop {
        let mut batch = db.batch();
        let (mut n, mut bytes) = (0, 0);
        let lower = match after.take() {
            Some(k) => std::ops::Bound::Excluded(k),
            None => std::ops::Bound::Unbounded,
        };
        for item in ks.range::<Vec<u8>, _>((lower, std::ops::Bound::Unbounded)) {
            if n == CHUNK || bytes >= CHUNK_BYTES {
                break;
            }
            let (k, v) = item.into_inner()?;
            bytes += v.len();
            each(&mut batch, &k, &v)?;
            after = Some(k.to_vec());
            n += 1;
        }
        if n == 0 {
            return Ok(seen);
        }
        batch.commit()?;
        seen += n as u64;
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            tracing::info!(entries = seen, "{doing}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        storage::{Refresh, Store},
        version::{Entry, Version},
    };

    fn entry(hlc: u64, value: Option<&[u8]>) -> Entry {
        Entry {
            version: Version {
                hlc,
                node: "n1".into(),
            },
            value: value.map(<[u8]>::to_vec),
            expires_ms: None,
        }
    }

    #[test]
    fn a_layout_1_dir_opens_with_every_entry_in_both_new_keyspaces() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * CHUNK as u64 + 7;
        {
            // Write layout 1 by hand: `data`, keyed bucket ‖ key.
            let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
            let data = store
                .db
                .keyspace("data", KeyspaceCreateOptions::default)
                .unwrap();
            for i in 0..n {
                let key = format!("k{i:05}");
                let value = (i % 10 != 0).then_some(b"v".as_slice());
                let stored = codec::encode_entry(&entry(i + 1, value), 5);
                let k = codec::version_key(&BucketHash::default(), &key);
                data.insert(k, stored).unwrap();
            }
        }
        let (store, rec) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        assert!(!rec.fresh);
        assert!(!store.db.keyspace_exists("data"));
        assert_eq!(store.get("k00003").unwrap(), Some(entry(4, Some(b"v"))));
        assert!(store.get("k00010").unwrap().unwrap().is_tombstone());
        let mut tombstones = 0;
        store
            .for_each_version(|_, v| {
                tombstones += u64::from(v.tombstone);
                assert_eq!(v.applied_ms, if v.tombstone { 5 } else { 0 });
                Ok(true)
            })
            .unwrap();
        assert_eq!(tombstones, n.div_ceil(10));
        let view = store.refresh_digests(usize::MAX, Refresh::Wait).unwrap();
        assert!(view.unsettled.is_empty());
        assert_eq!(store.key_count(), n);
        // Key order is storage order now.
        let first: Vec<String> = store
            .scan_after(None, 3)
            .unwrap()
            .into_iter()
            .map(|(_, k, _)| k)
            .collect();
        assert_eq!(first, ["k00000", "k00001", "k00002"]);
        drop(store);
        // A second open has nothing to move.
        let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        assert_eq!(store.get("k00003").unwrap(), Some(entry(4, Some(b"v"))));
    }

    #[test]
    fn a_new_bucket_key_rebuilds_versions_under_it_and_nothing_else_changes() {
        let dir = tempfile::tempdir().unwrap();
        let n = CHUNK as u64 + 9;
        let digests = |store: &Store| {
            let view = store.refresh_digests(usize::MAX, Refresh::Wait).unwrap();
            assert!(view.unsettled.is_empty());
            view.digests
        };
        let (before, old_buckets) = {
            let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
            let mut batch = store.db.batch();
            for i in 0..n {
                store.batch_put(
                    &mut batch,
                    &format!("k{i:05}"),
                    &entry(i + 1, Some(b"v")),
                    5,
                );
            }
            batch.commit().unwrap();
            (digests(&store), store.buckets())
        };
        let (store, _) = Store::open(dir.path(), "n1", "c", Some(b"secret"), 8, 4).unwrap();
        let buckets = store.buckets();
        assert_ne!(buckets, old_buckets);
        let mut keys = 0;
        for item in store.versions.iter() {
            let k = item.key().unwrap();
            let key = codec::user_key(&k).unwrap();
            assert_eq!(&k[..2], &buckets.of(key.as_bytes()).to_be_bytes(), "{key}");
            keys += 1;
        }
        assert_eq!(keys, n, "every key once, under its new bucket");
        assert_eq!(store.get("k00007").unwrap(), Some(entry(8, Some(b"v"))));
        // The same entries, placed anew: digests differ bucket by bucket but
        // a node rebuilt the same way agrees with this one.
        assert_ne!(digests(&store), before);
        drop(store);
        let (store, _) = Store::open(dir.path(), "n1", "c", Some(b"secret"), 8, 4).unwrap();
        assert_eq!(store.buckets(), buckets, "a second open keeps the key");
        drop(store);
        let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        assert_eq!(
            digests(&store),
            before,
            "and back: the first placement again"
        );
    }
}
