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
        digest::{entry_hash, BucketHash, DigestBook, DigestView},
        lock::DirLock,
        window::{LogWindow, WINDOW_BYTES},
    },
    version::Entry,
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

/// The top bit of `Store::visible_ms`: the writer is asleep, with nothing
/// being committed.
const WRITER_IDLE: u64 = 1 << 63;

/// The open storage of one node. Reads go straight to the engine (it is
/// thread-safe); every write goes through the [`writer`](super::writer).
pub struct Store {
    pub(crate) db: Database,
    /// `key` → `StoredEntry`.
    pub(crate) kv: Keyspace,
    /// `bucket ‖ key` → `StoredVersion`, written with every `kv` change.
    pub(crate) versions: Keyspace,
    /// Which bucket each key's `versions` entry is in.
    buckets: BucketHash,
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
    /// Every change applied here, for Watch.
    pub feed: super::feed::Feed,
    /// How far each origin's log is applied here, for write tokens.
    pub positions: super::positions::Positions,
    _lock: DirLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// How [`Store::refresh_digests`] treats a refresh already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Wait for it, then scan: for rounds and their own digests.
    Wait,
    /// Answer from the book at once: for a peer's Digest, which has a deadline.
    IfIdle,
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

impl Store {
    /// Opens (or creates) the store in `dir` and checks that it belongs to
    /// this node and cluster. Nothing here reads every key: the digests are
    /// rebuilt by the first [`Store::refresh_digests`], so a restart takes
    /// as long as the journal replay, not as long as the data (except once
    /// after the bucket key changes: see `migrate::rekey_versions`).
    /// `bucket_secret` keys the anti-entropy buckets with the cluster id.
    pub fn open(
        dir: &Path,
        node_id: &str,
        cluster_id: &str,
        bucket_secret: Option<&[u8]>,
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
        let kv = db.keyspace("kv", opts)?;
        let versions = db.keyspace("versions", opts)?;
        let log = db.keyspace("log", opts)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        // Smaller buffers: changes are read back rarely, expiries are tiny.
        let small = memtable.div_ceil(4);
        let feed = super::feed::Feed::open(&db, &meta, move || {
            KeyspaceCreateOptions::default().max_memtable_size(small)
        })?;

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
        let high_water = codec::read_u64(&meta, META_HLC)?.unwrap_or(0);
        let mut last_seq = codec::read_u64(&meta, META_LAST_SEQ)?.unwrap_or(0);
        if let Some(kv) = log.last_key_value() {
            last_seq = last_seq.max(codec::log_seq(&kv.key()?)?);
        }
        let mut log_bytes = 0u64;
        let mut log_start = last_seq + 1;
        let deleted_below = codec::read_u64(&meta, META_LOG_START)?.unwrap_or(0);
        for (i, kv) in log.range(codec::log_key(deleted_below)..).enumerate() {
            let (k, v) = kv.into_inner()?;
            if i == 0 {
                log_start = codec::log_seq(&k)?;
            }
            log_bytes += v.len() as u64;
        }

        super::migrate::from_layout_1(&db, &kv, &versions)?;
        let buckets = BucketHash::keyed(cluster_id, bucket_secret);
        super::migrate::rekey_versions(&db, &kv, &versions, &meta, &buckets)?;
        let fresh = kv.first_key_value().is_none();
        db.persist(PersistMode::SyncAll)?;
        let positions = super::positions::Positions::load(&meta)?;
        let store = Arc::new(Store {
            db,
            kv,
            versions,
            buckets,
            log,
            meta,
            digests: Mutex::new(DigestBook::all_dirty()),
            refresh: Mutex::new(()),
            log_bytes: AtomicU64::new(log_bytes),
            log_start: AtomicU64::new(log_start),
            high_water: AtomicU64::new(high_water),
            visible_ms: AtomicU64::new(0),
            window: LogWindow::new(last_seq, WINDOW_BYTES),
            feed,
            positions,
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
        self.kv
            .get(key.as_bytes())?
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
        Ok(codec::read_u64(&self.meta, cursor_key(peer).as_bytes())?.unwrap_or(0))
    }

    /// The high-water marks `peer` reported to this node, run by run.
    pub fn seen_marks(&self, peer: &str) -> Result<SeenMarks> {
        let [current, incarnation, prior] =
            seen_keys(peer).map(|k| codec::read_u64(&self.meta, k.as_bytes()));
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
        self.visible_ms.load(Ordering::Acquire) & !WRITER_IDLE
    }

    /// The visible time for an anti-entropy round that starts at `now_ms`.
    /// While the writer is idle, everything committed is marked, so that is
    /// `now_ms`, and it is published: the writer stamps what it applies
    /// after waking at or above it. Without this an idle node's visible time
    /// stayed where its last commit left it, and no later round could prove
    /// a tombstone held once it had left the in-flight window: with no
    /// writes after a delete, tombstones were never collected.
    pub fn round_visible_ms(&self, now_ms: u64) -> u64 {
        let mut v = self.visible_ms.load(Ordering::Acquire);
        loop {
            if v & WRITER_IDLE == 0 {
                return v;
            }
            let raised = (v & !WRITER_IDLE).max(now_ms & !WRITER_IDLE);
            // Only while the writer still sleeps: once it has woken, it may
            // be committing entries stamped below `now_ms`.
            match self.visible_ms.compare_exchange_weak(
                v,
                raised | WRITER_IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return raised,
                Err(current) => v = current,
            }
        }
    }

    /// After a commit: everything stamped up to `ms` is marked.
    pub(crate) fn publish_visible(&self, ms: u64) {
        self.visible_ms
            .fetch_max(ms & !WRITER_IDLE, Ordering::AcqRel);
    }

    /// The writer goes to sleep with everything committed up to `ms`.
    pub(crate) fn writer_sleeps(&self, ms: u64) {
        let _ = self
            .visible_ms
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v & !WRITER_IDLE).max(ms & !WRITER_IDLE) | WRITER_IDLE)
            });
    }

    /// The writer woke for work: rounds no longer raise the visible time.
    /// An atomic step on the same value as theirs, so every raise a round
    /// made before it is seen when the writer next stamps.
    pub(crate) fn writer_wakes(&self) {
        self.visible_ms.fetch_and(!WRITER_IDLE, Ordering::AcqRel);
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

    /// Up to `max` entries in key order after the key `after` (from the
    /// start if `None`), each with its stored key to resume from: a scan in
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
        let mut bytes = 0;
        for kv in self.kv.range::<Vec<u8>, _>((lower, Bound::Unbounded)) {
            let (k, v) = kv.into_inner()?;
            bytes += v.len() as u64;
            out.push((
                k.to_vec(),
                codec::kv_user_key(&k)?,
                codec::decode_entry(&v)?,
            ));
            if out.len() >= max {
                break;
            }
        }
        super::blocking::charge(out.len() as u64, bytes);
        Ok(out)
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
            book.touch(self.buckets.of(key.as_bytes()));
        }
    }

    /// The digests, after rescanning dirty buckets until about `budget`
    /// versions were read (the bucket in progress is always finished), with
    /// the buckets left unsettled. One refresh scans at a time: with
    /// [`Refresh::Wait`] a caller waits for the one running, with
    /// [`Refresh::IfIdle`] it answers from the book at once instead, so a
    /// burst of callers never queues up scans. Blocking. A bucket a commit
    /// touches during its scan keeps its scanned digest and stays dirty.
    pub fn refresh_digests(&self, budget: usize, mode: Refresh) -> Result<DigestView> {
        let one_at_a_time = match mode {
            Refresh::Wait => Some(self.refresh.lock().unwrap_or_else(|p| p.into_inner())),
            Refresh::IfIdle => match self.refresh.try_lock() {
                Ok(g) => Some(g),
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            },
        };
        if let Some(_scanning) = one_at_a_time {
            self.rescan_dirty(budget)?;
        }
        Ok(self.book().view())
    }

    /// Rescans dirty buckets, versions only, until `budget` versions were read.
    fn rescan_dirty(&self, budget: usize) -> Result<()> {
        let dirty = self.book().dirty();
        let started = std::time::Instant::now();
        let (mut read, mut scanned) = (0usize, 0usize);
        for &(bucket, generation) in &dirty {
            if read >= budget {
                break;
            }
            let (mut digest, mut count) = (0u64, 0u32);
            for kv in self.versions.prefix(bucket.to_be_bytes()) {
                let (k, v) = kv.into_inner()?;
                // The versions key is `bucket (2 bytes) ‖ key`.
                digest ^= entry_hash(&k[2..], &codec::decode_version(&v)?.version);
                count = count.saturating_add(1);
            }
            read += count as usize;
            scanned += 1;
            super::blocking::charge(u64::from(count), 0);
            let mut book = self.book();
            book.settle(bucket, generation, digest, count);
            book.resume_after(bucket);
        }
        let took = started.elapsed();
        if took > std::time::Duration::from_secs(1) {
            tracing::info!(
                buckets = scanned,
                versions = read,
                left = dirty.len() - scanned,
                ?took,
                "digests rescanned"
            );
        }
        Ok(())
    }

    /// Where keys fall into anti-entropy buckets on this node.
    pub fn buckets(&self) -> BucketHash {
        self.buckets
    }

    /// Syncs the journal to disk.
    pub fn sync(&self) -> Result<()> {
        Ok(self.db.persist(PersistMode::SyncAll)?)
    }

    /// Adds `entry` under `key` to a batch: its `kv` entry and its
    /// `versions` entry, which must never be written apart.
    pub(crate) fn batch_put(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        key: &str,
        entry: &Entry,
        applied_ms: u64,
    ) {
        batch.insert(&self.kv, key, codec::encode_entry(entry, applied_ms));
        batch.insert(
            &self.versions,
            codec::version_key(&self.buckets, key),
            codec::encode_version(entry, applied_ms),
        );
        // An entry applied already expired never needs sweeping: its change
        // is an expiry from the start.
        if let Some(at) = entry.expires_ms.filter(|_| entry.is_live(applied_ms)) {
            batch.insert(&self.feed.expiry, super::feed::expiry_key(at, key), []);
        }
    }

    /// Adds the removal of `key` from both keyspaces to a batch.
    pub(crate) fn batch_remove(&self, batch: &mut fjall::OwnedWriteBatch, key: &str) {
        batch.remove(&self.kv, key);
        batch.remove(&self.versions, codec::version_key(&self.buckets, key));
    }

    /// Adds the clock high-water mark, the last log seq and the last change
    /// seq to a batch, so that all are exactly as durable as the writes they
    /// cover.
    pub(crate) fn batch_meta(
        &self,
        batch: &mut fjall::OwnedWriteBatch,
        hlc: u64,
        seq: u64,
        change_seq: u64,
    ) {
        batch.insert(&self.meta, META_HLC, hlc.to_be_bytes().to_vec());
        batch.insert(&self.meta, META_LAST_SEQ, seq.to_be_bytes().to_vec());
        batch.insert(
            &self.meta,
            super::feed::META_CHANGE_SEQ,
            change_seq.to_be_bytes().to_vec(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        storage::{Digests, BUCKETS},
        version::Version,
    };

    /// Issue 22, item 3: a Digest answer rescanned every dirty bucket in
    /// full, values included, however long that took.
    #[test]
    fn a_digest_refresh_reads_no_values_and_stops_at_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        let mut batch = store.db.batch();
        let keys = 3_000;
        for i in 0..keys {
            let entry = Entry {
                version: Version {
                    hlc: i + 1,
                    node: "n1".into(),
                },
                value: Some(vec![1; 100]),
                expires_ms: None,
            };
            store.batch_put(&mut batch, &format!("k{i}"), &entry, 0);
        }
        batch.commit().unwrap();
        // Garbage where the values are: a refresh that read one would fail.
        for i in 0..keys {
            store
                .kv
                .insert(format!("k{i}"), [0xff, 0xff, 0xff])
                .unwrap();
        }
        let full = {
            let mut d = Digests::default();
            for i in 0..keys {
                let v = Version {
                    hlc: i + 1,
                    node: "n1".into(),
                };
                d.replace(&store.buckets(), format!("k{i}").as_bytes(), None, &v);
            }
            d
        };

        // Another refresh running: an answer does not wait for it, nor scan.
        let busy = store.refresh.lock().unwrap();
        let view = store.refresh_digests(100, Refresh::IfIdle).unwrap();
        assert_eq!(view.unsettled.len(), BUCKETS);
        drop(busy);

        // One bounded call reads its budget and at most one bucket more; the
        // buckets it did not reach are compared as if they differed.
        let view = store.refresh_digests(100, Refresh::IfIdle).unwrap();
        let settled = BUCKETS - view.unsettled.len();
        assert!((1..=BUCKETS).contains(&settled));
        // The key count is summed from the scans so far: what this one read.
        let read = store.key_count();
        assert!((100..120).contains(&read), "{read} versions read");
        let compare = view.to_compare(&full);
        assert!(view.unsettled.iter().all(|b| compare.contains(b)));

        // Bounded calls in turn settle every bucket, and then agree with
        // the digests of what is stored.
        let mut calls = 1;
        while !store
            .refresh_digests(100, Refresh::IfIdle)
            .unwrap()
            .unsettled
            .is_empty()
        {
            calls += 1;
            assert!(calls < 200, "bounded refreshes never settle");
        }
        let view = store.refresh_digests(100, Refresh::IfIdle).unwrap();
        assert_eq!(view.digests, full);
        assert!(view.to_compare(&full).is_empty());
        assert_eq!(store.key_count(), keys);
    }

    #[test]
    fn a_second_open_of_the_same_dir_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, rec) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        assert!(rec.fresh);
        let err = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap_err();
        assert!(matches!(err, Error::Locked { .. }), "{err}");
        assert!(
            err.to_string().contains(&std::process::id().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_dir_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap());
        let err = Store::open(dir.path(), "n2", "c", None, 8, 4).unwrap_err();
        assert!(err.to_string().contains("belongs to node"), "{err}");
    }
}
