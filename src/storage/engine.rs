//! The fjall database, its keyspaces, and the reads that bypass the writer.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use prost::{bytes::Bytes, Message};

use crate::{
    error::{Error, Result},
    high_water::SeenMarks,
    proto,
    storage::{
        codec,
        digest::{bucket_of, entry_hash, DigestBook, Digests},
        lock::DirLock,
        window::{LogWindow, WINDOW_BYTES},
    },
    version::{Entry, Version},
};

const META_HLC: &[u8] = b"hlc";
const META_LAST_SEQ: &[u8] = b"last_seq";
/// Every log seq below it was deleted by retention: start-up scans the log
/// from here instead of stepping over the tombstones of the whole history.
const META_LOG_START: &[u8] = b"log_start";
const META_NODE_ID: &[u8] = b"node_id";
const META_CLUSTER_ID: &[u8] = b"cluster_id";
const CURSOR_PREFIX: &str = "cursor/";
const SEEN_PREFIX: &str = "seen_high_water/";
const SEEN_INCARNATION_PREFIX: &str = "seen_incarnation/";
const SEEN_PRIOR_PREFIX: &str = "seen_prior/";
/// The cap on the journal, which is what a start-up replays: fjall's
/// default is 512 MiB; its minimum, 64 MiB, keeps a restart after kill -9
/// short at the cost of more frequent memtable flushes.
const MAX_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// The `meta` key of a peer's cursor.
pub fn cursor_key(peer: &str) -> String {
    format!("{CURSOR_PREFIX}{peer}")
}

/// The `meta` keys of what a peer reported, run by run: the highest mark of
/// its newest run, that run's tag, and the highest mark of its other runs.
pub fn seen_keys(peer: &str) -> [String; 3] {
    [
        format!("{SEEN_PREFIX}{peer}"),
        format!("{SEEN_INCARNATION_PREFIX}{peer}"),
        format!("{SEEN_PRIOR_PREFIX}{peer}"),
    ]
}

/// The open storage of one node. Reads go straight to the engine (it is
/// thread-safe); every write goes through the [`writer`](super::writer).
pub struct Store {
    pub(crate) db: Database,
    pub(crate) data: Keyspace,
    pub(crate) log: Keyspace,
    pub(crate) meta: Keyspace,
    /// Touched by the writer after every commit; scanned lazily by
    /// [`Store::refresh_digests`] for anti-entropy and status.
    digests: Mutex<DigestBook>,
    /// Held by the one refresh that scans at a time, so that concurrent
    /// callers wait for its result instead of scanning the same buckets.
    refresh: Mutex<()>,
    /// Bytes of log records on disk (values only), for `max_log_bytes`.
    log_bytes: AtomicU64,
    /// Every log seq below this has been deleted. The log is a queue: records
    /// leave from its head, and an LSM keeps their tombstones until compaction,
    /// so every scan starts here instead of walking the deleted head again.
    log_start: AtomicU64,
    /// The HLC high-water mark as of the last commit.
    high_water: AtomicU64,
    /// See [`Store::visible_ms`].
    visible_ms: AtomicU64,
    /// The newest log records, encoded, for the streams that keep up.
    pub window: LogWindow,
    _lock: DirLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// What start-up learned from the disk.
#[derive(Debug)]
pub struct Recovered {
    /// The highest HLC timestamp ever issued or observed here.
    pub high_water: u64,
    /// The seq of the last local write in the log.
    pub last_seq: u64,
    /// True if the directory held no data: a new or wiped node.
    pub fresh: bool,
}

fn read_u64(ks: &Keyspace, key: &[u8]) -> Result<Option<u64>> {
    match ks.get(key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                Error::Corrupt(format!(
                    "meta {:?} is not a u64",
                    String::from_utf8_lossy(key)
                ))
            })?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` and checks that it belongs to
    /// this node and cluster. Nothing here reads every key: the digests are
    /// rebuilt by the first [`Store::refresh_digests`], so a restart takes
    /// as long as the journal replay, not as long as the data.
    pub fn open(
        dir: &Path,
        node_id: &str,
        cluster_id: &str,
        cache_mb: u64,
        memtable_mb: u64,
    ) -> Result<(Arc<Store>, Recovered)> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("cannot create data dir {}", dir.display()), e))?;
        let lock = DirLock::acquire(dir)?;
        let db = Database::builder(dir.join("db"))
            .cache_size(cache_mb * 1024 * 1024)
            // The writer decides when to sync; fjall must not do it behind our back.
            .manual_journal_persist(true)
            // The journal is replayed at start-up: its cap bounds restart time.
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .open()?;
        // Memtables bound most of the engine's memory; fjall's default is 64 MiB each.
        let memtable = memtable_mb.max(1) * 1024 * 1024;
        let opts = move || KeyspaceCreateOptions::default().max_memtable_size(memtable);
        let data = db.keyspace("data", opts)?;
        let log = db.keyspace("log", opts)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;

        for (key, want, what) in [
            (META_NODE_ID, node_id, "node"),
            (META_CLUSTER_ID, cluster_id, "cluster"),
        ] {
            match meta.get(key)? {
                Some(have) if have.as_ref() != want.as_bytes() => {
                    return Err(Error::Config(format!(
                        "data dir {} belongs to {what} {:?}, not {want:?}; use another data_dir",
                        dir.display(),
                        String::from_utf8_lossy(&have),
                    )))
                }
                Some(_) => {}
                None => meta.insert(key, want.as_bytes())?,
            }
        }

        // Written in every commit batch, so it covers every stored version.
        let high_water = read_u64(&meta, META_HLC)?.unwrap_or(0);
        let mut last_seq = read_u64(&meta, META_LAST_SEQ)?.unwrap_or(0);
        if let Some(kv) = log.last_key_value() {
            last_seq = last_seq.max(codec::log_seq(&kv.key()?)?);
        }
        let mut log_bytes = 0u64;
        let mut log_start = last_seq + 1;
        let deleted_below = read_u64(&meta, META_LOG_START)?.unwrap_or(0);
        for (i, kv) in log.range(codec::log_key(deleted_below)..).enumerate() {
            let (k, v) = kv.into_inner()?;
            if i == 0 {
                log_start = codec::log_seq(&k)?;
            }
            log_bytes += v.len() as u64;
        }

        let fresh = data.first_key_value().is_none();
        db.persist(PersistMode::SyncAll)?;
        let store = Arc::new(Store {
            db,
            data,
            log,
            meta,
            digests: Mutex::new(DigestBook::all_dirty()),
            refresh: Mutex::new(()),
            log_bytes: AtomicU64::new(log_bytes),
            log_start: AtomicU64::new(log_start),
            high_water: AtomicU64::new(high_water),
            visible_ms: AtomicU64::new(0),
            window: LogWindow::new(last_seq, WINDOW_BYTES),
            _lock: lock,
        });
        Ok((
            store,
            Recovered {
                high_water,
                last_seq,
                fresh,
            },
        ))
    }

    /// The newest entry this node holds for `key` (tombstones included).
    pub fn get(&self, key: &str) -> Result<Option<Entry>> {
        self.data
            .get(codec::data_key(key))?
            .map(|v| codec::decode_entry(&v))
            .transpose()
    }

    /// Encoded log records from disk with seq greater than `after`, at most
    /// `max_entries` and about `max_bytes` (always at least one record if any
    /// exists). Records are never decoded: the receiver checks each one.
    /// Streams that keep up read the same records from [`Store::window`].
    pub fn log_after(
        &self,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Bytes)>> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let from = after
            .saturating_add(1)
            .max(self.log_start.load(Ordering::Acquire));
        for kv in self.log.range(codec::log_key(from)..) {
            let (k, v) = kv.into_inner()?;
            let framed = crate::wire::framed_len(v.len());
            if !out.is_empty() && (out.len() >= max_entries || bytes + framed > max_bytes) {
                break;
            }
            bytes += framed;
            out.push((codec::log_seq(&k)?, Bytes::copy_from_slice(&v)));
        }
        Ok(out)
    }

    /// The seq of the oldest record still in the log, if any.
    pub fn log_first_seq(&self) -> Result<Option<u64>> {
        let start = codec::log_key(self.log_start.load(Ordering::Acquire));
        self.log
            .range(start..)
            .next()
            .map(|kv| codec::log_seq(&kv.key()?))
            .transpose()
    }

    /// The log record with this seq, if it is still in the log.
    pub fn log_entry(&self, seq: u64) -> Result<Option<proto::Mutation>> {
        self.log
            .get(codec::log_key(seq))?
            .map(|v| {
                proto::Mutation::decode(v.as_ref())
                    .map_err(|e| Error::Corrupt(format!("log record {seq}: {e}")))
            })
            .transpose()
    }

    /// Bytes of log records on disk.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn add_log_bytes(&self, n: u64) {
        self.log_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Keys held, tombstones included, as of the last digest refresh.
    pub fn key_count(&self) -> u64 {
        self.book().keys()
    }

    /// Deletes log records from the start for as long as `drop(seq, record,
    /// log_bytes_left)` says so. Returns (records, bytes) removed.
    pub fn truncate_log(
        &self,
        mut drop: impl FnMut(u64, &proto::Mutation, u64) -> bool,
    ) -> Result<(u64, u64)> {
        const CHUNK: usize = 4096;
        let (mut records, mut bytes) = (0u64, 0u64);
        loop {
            let mut batch = self.db.batch();
            let mut n = 0;
            let mut done = true;
            let mut next_start = None;
            let start = codec::log_key(self.log_start.load(Ordering::Acquire));
            for kv in self.log.range(start..) {
                let (k, v) = kv.into_inner()?;
                let seq = codec::log_seq(&k)?;
                let m = proto::Mutation::decode(v.as_ref())
                    .map_err(|e| Error::Corrupt(format!("log record {seq}: {e}")))?;
                let left = self.log_bytes().saturating_sub(bytes);
                if !drop(seq, &m, left) {
                    break;
                }
                batch.remove(&self.log, k);
                bytes += v.len() as u64;
                records += 1;
                n += 1;
                next_start = Some(seq + 1);
                if n == CHUNK {
                    done = false;
                    break;
                }
            }
            if let Some(next) = next_start {
                batch.insert(&self.meta, META_LOG_START, next.to_be_bytes().to_vec());
                batch.commit()?;
                self.log_start.fetch_max(next, Ordering::AcqRel);
                self.window.forget_before(next);
            }
            if done {
                break;
            }
        }
        self.log_bytes
            .fetch_sub(bytes.min(self.log_bytes()), Ordering::Relaxed);
        Ok((records, bytes))
    }

    /// The persisted cursor of a peer: the highest seq it acknowledged.
    pub fn cursor(&self, peer: &str) -> Result<u64> {
        Ok(read_u64(&self.meta, cursor_key(peer).as_bytes())?.unwrap_or(0))
    }

    /// The high-water marks `peer` reported to this node, run by run.
    pub fn seen_marks(&self, peer: &str) -> Result<SeenMarks> {
        let [current, incarnation, prior] =
            seen_keys(peer).map(|k| read_u64(&self.meta, k.as_bytes()));
        Ok(SeenMarks {
            incarnation: incarnation?.unwrap_or(0),
            current: current?.unwrap_or(0),
            prior: prior?.unwrap_or(0),
        })
    }

    /// Adds a `meta` counter (a cursor, a seen high-water mark) to a writer
    /// batch. They ride along with writes (or in a batch of their own that is
    /// not synced): losing one to a crash only costs a little repeated work.
    pub(crate) fn batch_meta_u64(&self, batch: &mut fjall::OwnedWriteBatch, key: &str, v: u64) {
        batch.insert(&self.meta, key, v.to_be_bytes().to_vec());
    }

    /// Every entry stored with an `applied_ms` below this is committed and
    /// its bucket marked dirty, so any digest computed from now on covers it.
    /// An anti-entropy round takes this at its start as the proof time that
    /// tombstone collection trusts (`applied_ms` alone is stamped before the
    /// commit, and a round started during a slow commit would count as proof
    /// without the entry). Raised by the writer after each commit and
    /// whenever it goes idle; 0 after a restart, where every bucket starts
    /// dirty and the writer's first idle moment raises it.
    pub fn visible_ms(&self) -> u64 {
        self.visible_ms.load(Ordering::Acquire)
    }

    pub(crate) fn publish_visible(&self, ms: u64) {
        self.visible_ms.fetch_max(ms, Ordering::AcqRel);
    }

    /// The HLC high-water mark as of the last commit.
    pub fn high_water(&self) -> u64 {
        self.high_water.load(Ordering::Relaxed)
    }

    pub(crate) fn set_high_water(&self, hlc: u64) {
        self.high_water.fetch_max(hlc, Ordering::Relaxed);
    }

    /// The peers that have a persisted cursor.
    pub fn cursor_peers(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.meta.prefix(CURSOR_PREFIX) {
            let k = kv.key()?;
            out.push(String::from_utf8_lossy(&k[CURSOR_PREFIX.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Forgets a decommissioned peer's cursor and what it reported. Only at
    /// start-up, before the writer runs.
    pub fn remove_cursor(&self, peer: &str) -> Result<()> {
        for k in seen_keys(peer) {
            self.meta.remove(k)?;
        }
        Ok(self.meta.remove(cursor_key(peer))?)
    }

    /// `(key, version)` of every entry in `buckets`, in order, bucket by bucket;
    /// stops after the bucket where the pairs' encoded size passes `budget`.
    /// Returns the pairs and how many buckets they cover (at least one, if
    /// any were asked for). Values are never decoded.
    pub fn bucket_versions(
        &self,
        buckets: &[u16],
        budget: usize,
    ) -> Result<(Vec<(String, Version)>, usize)> {
        let (mut out, mut bytes, mut covered) = (Vec::new(), 0usize, 0usize);
        for b in buckets {
            if covered > 0 && bytes > budget {
                break;
            }
            for kv in self.data.prefix(b.to_be_bytes()) {
                let (k, v) = kv.into_inner()?;
                let key = codec::user_key(&k)?;
                let version = codec::decode_version(&v)?;
                // Key, hlc, node id and framing, as a KeyVersion on the wire.
                bytes += key.len() + version.node.len() + 24;
                out.push((key, version));
            }
            covered += 1;
        }
        Ok((out, covered))
    }

    /// Up to `max` entries in storage order after the data key `after` (from
    /// the start if `None`), each with its data key to resume from: a scan in
    /// chunks that holds nothing open between them.
    pub fn scan_after(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, String, Entry)>> {
        use std::ops::Bound;
        let lower = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.data.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            let (k, v) = kv.into_inner()?;
            out.push((k.to_vec(), codec::user_key(&k)?, codec::decode_entry(&v)?));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }

    /// The highest HLC of any stored entry, reading versions only; `None` if
    /// `stop` said so first (it is asked every 65536 entries).
    pub fn max_stored_hlc(&self, stop: impl Fn() -> bool) -> Result<Option<u64>> {
        let mut max = 0;
        for (i, kv) in self.data.iter().enumerate() {
            if i % 65_536 == 65_535 && stop() {
                return Ok(None);
            }
            let (_, v) = kv.into_inner()?;
            max = max.max(codec::decode_version(&v)?.hlc);
        }
        Ok(Some(max))
    }

    /// Every entry with the moment it was applied (tombstones only; 0 for
    /// values), in storage order, until `f` returns `Ok(false)`.
    pub fn for_each(&self, mut f: impl FnMut(String, Entry, u64) -> Result<bool>) -> Result<()> {
        for kv in self.data.iter() {
            let (k, v) = kv.into_inner()?;
            let (entry, applied_ms) = codec::decode_stored(&v)?;
            if !f(codec::user_key(&k)?, entry, applied_ms)? {
                break;
            }
        }
        Ok(())
    }

    /// The digest bookkeeping, locked. Hold the guard briefly and never
    /// across `.await`.
    fn book(&self) -> MutexGuard<'_, DigestBook> {
        // A panic while holding this lock leaves plain integers behind: still usable.
        self.digests.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks the buckets of `keys` dirty. The writer calls it after each
    /// commit, which is what lets it skip reading the versions it replaces.
    pub(crate) fn touch_digests<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut book = self.book();
        for key in keys {
            book.touch(bucket_of(key.as_bytes()));
        }
    }

    /// The digests of every bucket, after rescanning the buckets written
    /// since the last refresh. Blocking: one prefix scan per dirty bucket,
    /// which after a restart is every key. A bucket a commit touches during
    /// its scan keeps its scanned digest and stays dirty for the next call.
    pub fn refresh_digests(&self) -> Result<Digests> {
        let _one_at_a_time = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        let dirty = self.book().dirty();
        let started = std::time::Instant::now();
        for &(bucket, generation) in &dirty {
            let (mut digest, mut count) = (0u64, 0u32);
            for kv in self.data.prefix(bucket.to_be_bytes()) {
                let (k, v) = kv.into_inner()?;
                // The data key is `bucket (2 bytes) ‖ key`.
                digest ^= entry_hash(&k[2..], &codec::decode_version(&v)?);
                count = count.saturating_add(1);
            }
            self.book().settle(bucket, generation, digest, count);
        }
        let took = started.elapsed();
        if took > std::time::Duration::from_secs(1) {
            tracing::info!(
                buckets = dirty.len(),
                keys = self.key_count(),
                ?took,
                "digests rebuilt"
            );
        }
        Ok(self.book().digests().clone())
    }

    /// Syncs the journal to disk.
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// Adds the clock high-water mark and the last log seq to a batch, so that
    /// both are exactly as durable as the writes they cover.
    pub(crate) fn batch_meta(&self, batch: &mut fjall::OwnedWriteBatch, hlc: u64, seq: u64) {
        batch.insert(&self.meta, META_HLC, hlc.to_be_bytes().to_vec());
        batch.insert(&self.meta, META_LAST_SEQ, seq.to_be_bytes().to_vec());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_scan_returns_versions_and_stops_after_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "n1", "c", 8, 4).unwrap();
        // Large values in many buckets; the scan decodes versions only.
        let mut batch = store.db.batch();
        let mut buckets = std::collections::BTreeSet::new();
        for i in 0..400 {
            let key = format!("key-{i}");
            buckets.insert(crate::storage::bucket_of(key.as_bytes()));
            let entry = Entry {
                version: Version {
                    hlc: i,
                    node: "n1".into(),
                },
                value: Some(vec![7; 64 * 1024]),
            };
            batch.insert(
                &store.data,
                codec::data_key(&key),
                codec::encode_entry(&entry, 0),
            );
        }
        batch.commit().unwrap();
        let buckets: Vec<u16> = buckets.into_iter().collect();
        let (all, covered) = store.bucket_versions(&buckets, usize::MAX).unwrap();
        assert_eq!((all.len(), covered), (400, buckets.len()));
        // A budget of one pair's size covers one bucket, never none.
        let (some, covered) = store.bucket_versions(&buckets, 1).unwrap();
        assert_eq!(covered, 1);
        assert!(!some.is_empty() && some.len() < 400);
        // The versions come back right although the values are skipped.
        let all: std::collections::BTreeMap<String, Version> = all.into_iter().collect();
        for i in [0u64, 123, 399] {
            assert_eq!(all[&format!("key-{i}")].hlc, i);
        }
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, rec) = Store::open(dir.path(), "n1", "c", 8, 4).unwrap();
        assert!(rec.fresh);
        let err = Store::open(dir.path(), "n1", "c", 8, 4).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_dir_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), "n1", "c", 8, 4).unwrap());
        let err = Store::open(dir.path(), "n2", "c", 8, 4).unwrap_err();
        assert!(err.to_string().contains("belongs to node"), "{err}");
    }
}
