//! The single writer: group commit of local writes and remote merges.
//!
//! Requests arrive over a bounded channel. The writer thread takes one, then
//! drains whatever else is already waiting (up to `max_batch`), writes them
//! all in one atomic batch, syncs once according to the fsync mode, and only
//! then answers. Concurrent clients therefore share one fsync. It runs on its
//! own OS thread because commits block on disk I/O.
//!
//! Admission goes through two [lanes](super::admission): clients are shed
//! with RESOURCE_EXHAUSTED when theirs is full, peer traffic waits in its own.
//! Peer cursors ride along in the batches (or in a batch of their own that is
//! not synced), so no runtime worker ever waits on the journal for them.

pub mod apply;
mod batch;

use std::{collections::HashMap, sync::Arc, thread, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::{
    clock::{Hlc, PhysicalClock},
    config::FsyncMode,
    error::{Error, Result},
    high_water::SeenMarks,
    storage::{
        admission::{Lane, LaneLimits, Permit},
        blocking::Blocking,
        Recovered, Store,
    },
    version::{Entry, NodeId, Version},
};

/// How the writer behaves.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Stamped into every local version.
    pub node_id: NodeId,
    /// When commits are synced.
    pub fsync: FsyncMode,
    /// Client writes admitted and not yet answered.
    pub clients: LaneLimits,
    /// Peer batches and repairs admitted and not yet answered.
    pub peers: LaneLimits,
    /// The most requests in one group commit.
    pub max_batch: usize,
    /// Remote versions further ahead of our wall clock than this are refused
    /// (see [`apply::decide`]).
    pub max_clock_skew: Duration,
    /// Remote tombstones older than this are not stored for a key this node lacks.
    pub tombstone_ttl: Duration,
    /// Changes kept in the feed for Watch (`storage.watch_retain_changes`).
    pub retain_changes: u64,
}

/// Room in the channel beyond the two lanes, for internal requests (purges,
/// cursors, close), which are few and never shed.
const INTERNAL_ROOM: usize = 64;

/// What travels over the writer's channel.
enum Msg {
    Request(Command),
    /// [`Pending`] holds something to persist.
    Wake,
    /// The start-up scan found no stored version above this one.
    StoredMax(u64),
    /// Stop taking requests; commit what is queued, sync and exit.
    Close,
}

/// `meta` records (peer cursors, the high-water marks peers reported) that
/// ride along with the next batch. They sit beside the queue rather than in
/// it, so saving one never depends on room in the queue, and a peer's three
/// seen marks are always saved together. Bounded by the peers: one cursor
/// and one set of marks each.
#[derive(Debug, Default)]
struct Pending {
    cursors: HashMap<String, u64>,
    seen: HashMap<String, SeenMarks>,
    /// A [`Msg::Wake`] is on its way, or the writer is about to look.
    woken: bool,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.cursors.is_empty() && self.seen.is_empty()
    }
}

/// The handles' and the writer's shared [`Pending`].
#[derive(Debug, Default, Clone)]
struct Shared(Arc<std::sync::Mutex<Pending>>);

impl Shared {
    /// Changes the pending records; true if the writer needs a wake-up.
    fn update(&self, f: impl FnOnce(&mut Pending)) -> bool {
        let mut p = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut p);
        !std::mem::replace(&mut p.woken, true)
    }

    /// Takes everything pending, for the batch being built.
    fn take(&self) -> Pending {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn is_empty(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_empty()
    }
}

/// A client's write as the writer takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalWrite {
    /// The key.
    pub key: String,
    /// What to store; `None` deletes.
    pub value: Option<Vec<u8>>,
    /// The value expires this many milliseconds after its version's time.
    pub ttl_ms: Option<u64>,
    /// Compare-and-set: the write commits only if the key is in this state.
    pub expect: Option<Expect>,
}

impl LocalWrite {
    /// A plain write (or, for `None`, a delete): no TTL, no condition.
    pub fn new(key: String, value: Option<Vec<u8>>) -> Self {
        Self {
            key,
            value,
            ttl_ms: None,
            expect: None,
        }
    }
}

/// The state a compare-and-set expects a key to be in on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No live value: never written, deleted or expired.
    Absent,
    /// A live value at exactly this version.
    Version(Version),
}

impl Expect {
    /// Whether `current`, read at `now_ms`, is in the expected state.
    pub fn holds(&self, current: Option<&Entry>, now_ms: u64) -> bool {
        let live = current.filter(|e| e.is_live(now_ms));
        match self {
            Expect::Absent => live.is_none(),
            Expect::Version(v) => live.is_some_and(|e| &e.version == v),
        }
    }
}

enum Command {
    /// Local writes (one, or a client's batch).
    Local {
        writes: Vec<LocalWrite>,
        reply: oneshot::Sender<Result<Written>>,
        _permit: Option<Permit>,
    },
    Remote {
        mutations: Vec<(String, Entry)>,
        /// From the origin's log stream, not a repair: see [`WriterHandle::apply`].
        streamed: bool,
        reply: oneshot::Sender<Result<Applied>>,
        _permit: Option<Permit>,
    },
    /// Remove entries, each only if the key still holds exactly that version
    /// (and, with `only_tombstones`, only if it no longer reads as live).
    Forget {
        entries: Vec<(String, Version)>,
        only_tombstones: bool,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Expiry-index entries that are due: (index key, key, expiry).
    Expire {
        due: Vec<(Vec<u8>, String, u64)>,
        reply: oneshot::Sender<Result<u64>>,
    },
}

/// What the writer did with a batch of remote entries.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Entries stored.
    pub applied: u64,
    /// Entries refused: their position in the batch, their key and why.
    pub refused: Vec<(usize, String, apply::Refusal)>,
    /// Entries that met a local copy of another origin: what
    /// last-writer-wins decided, for the conflict ledger.
    pub contested: Vec<Contest>,
}

/// A remote entry that met a local copy written by another origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contest {
    /// The key.
    pub key: String,
    /// The local copy's version.
    pub local: Version,
    /// The remote entry's version.
    pub remote: Version,
    /// Whether the remote entry won (and is now stored).
    pub remote_won: bool,
}

/// What a committed request of local writes got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// One version per write, in order.
    pub versions: Vec<Version>,
    /// The log seq of the last write: every write of the request is at or
    /// below it in this node's log.
    pub seq: u64,
}

/// Submits writes to the writer thread. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WriterHandle {
    tx: mpsc::Sender<Msg>,
    clients: Lane,
    peers: Lane,
    pending: Shared,
}

/// Bytes a request holds in the queue, for the lanes: keys, values and a
/// fixed overhead per item.
fn local_bytes(writes: &[LocalWrite]) -> usize {
    writes
        .iter()
        .map(|w| w.key.len() + w.value.as_ref().map_or(0, Vec::len) + 64)
        .sum()
}

fn remote_bytes(mutations: &[(String, Entry)]) -> usize {
    mutations
        .iter()
        .map(|(k, e)| k.len() + e.value.as_ref().map_or(0, Vec::len) + e.version.node.len() + 64)
        .sum()
}

impl WriterHandle {
    /// Writes `value` (or a tombstone, for `None`) under a new local version,
    /// and returns once it is committed per the fsync mode.
    pub async fn write(&self, key: String, value: Option<Vec<u8>>) -> Result<Version> {
        self.write_one(LocalWrite::new(key, value)).await
    }

    /// Commits one write with its options (TTL, condition).
    pub async fn write_one(&self, write: LocalWrite) -> Result<Version> {
        let mut versions = self.write_batch(vec![write]).await?;
        versions
            .pop()
            .ok_or_else(|| Error::Corrupt("the writer answered a write with no version".into()))
    }

    /// Writes many keys in one group commit; one version per write, in order.
    /// A full client lane is an immediate [`Error::Overloaded`]. If any
    /// write's condition does not hold, none is committed
    /// ([`Error::Precondition`]).
    pub async fn write_batch(&self, writes: Vec<LocalWrite>) -> Result<Vec<Version>> {
        Ok(self.write_logged(writes).await?.versions)
    }

    /// [`write_batch`](Self::write_batch), also answering where the writes
    /// went in this node's log: what a peer must have acknowledged to hold
    /// them all.
    pub async fn write_logged(&self, writes: Vec<LocalWrite>) -> Result<Written> {
        let permit = self.clients.try_admit(local_bytes(&writes))?;
        self.call(|reply| Command::Local {
            writes,
            reply,
            _permit: Some(permit),
        })
        .await
    }

    /// Merges remote entries by [`apply::decide`]; returns how many won and
    /// which were refused. Waits for room in the peer lane, which clients
    /// cannot fill.
    ///
    /// With `streamed` (the origin's log stream rather than a repair), a
    /// value older than the tombstone horizon for a key this node lacks is
    /// not applied: a stream held up longer than the TTL may deliver a write
    /// whose delete every node has since applied and purged. If the value is
    /// still live somewhere, anti-entropy delivers it as a repair.
    pub async fn apply(&self, mutations: Vec<(String, Entry)>, streamed: bool) -> Result<Applied> {
        let permit = self.peers.admit(remote_bytes(&mutations)).await?;
        self.call(|reply| Command::Remote {
            mutations,
            streamed,
            reply,
            _permit: Some(permit),
        })
        .await
    }

    /// Purges tombstones that are still current; returns how many went.
    pub async fn purge(&self, tombstones: Vec<(String, Version)>) -> Result<u64> {
        self.call(|reply| Command::Forget {
            entries: tombstones,
            only_tombstones: true,
            reply,
        })
        .await
    }

    /// Drops entries (values or tombstones) still at these versions, with no
    /// tombstone left behind: for a node catching up, whose old copies its
    /// peers no longer hold. Returns how many went.
    pub async fn forget(&self, entries: Vec<(String, Version)>) -> Result<u64> {
        self.call(|reply| Command::Forget {
            entries,
            only_tombstones: false,
            reply,
        })
        .await
    }

    /// Records the expiries that are due as changes (for the keys that still
    /// hold them) and drops their index entries; how many were recorded.
    pub async fn expire(&self, due: Vec<(Vec<u8>, String, u64)>) -> Result<u64> {
        self.call(|reply| Command::Expire { due, reply }).await
    }

    /// Records a peer's cursor; it is persisted with the next batch (the
    /// highest saved wins, so saves from two tasks cannot move it back).
    /// Never waits.
    pub fn save_cursor(&self, peer: &str, seq: u64) {
        let key = crate::storage::cursor_key(peer);
        self.wake_if(self.pending.update(|p| {
            let c = p.cursors.entry(key).or_insert(seq);
            *c = (*c).max(seq);
        }));
    }

    /// Records how far `origin`'s log is applied here; persisted with the
    /// next batch, like a cursor, but set rather than raised (see
    /// `storage::positions`). Call it only once every batch up to `seq` is
    /// committed. Never waits.
    pub fn save_position(&self, origin: &str, seq: u64) {
        let key = crate::storage::positions::key(origin);
        self.wake_if(self.pending.update(|p| {
            p.cursors.insert(key, seq);
        }));
    }

    /// Records the high-water marks a peer reported, likewise, as a unit.
    /// Each field only grows within a run and the run tag only grows, so the
    /// greatest (incarnation, prior, current) is the newest state.
    pub fn save_seen_marks(&self, peer: &str, marks: SeenMarks) {
        let key = |m: &SeenMarks| (m.incarnation, m.prior, m.current);
        self.wake_if(self.pending.update(|p| {
            let e = p.seen.entry(peer.to_string()).or_insert(marks);
            if key(&marks) > key(e) {
                *e = marks;
            }
        }));
    }

    /// A full queue needs no wake-up: the batch it holds takes the pending
    /// records along.
    fn wake_if(&self, needed: bool) {
        if needed {
            let _ = self.tx.try_send(Msg::Wake);
        }
    }

    /// Sends a command and waits for its answer. Admission happened before:
    /// the lanes bound what is queued, so this waits only for internal room.
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Request(make(reply)))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Asks the writer to finish: requests already queued are committed, later
    /// ones get UNAVAILABLE. Used at shutdown, when connections that have not
    /// drained in time may still hold handles.
    pub async fn close(&self) {
        let _ = self.tx.send(Msg::Close).await;
    }
}

fn stopped() -> Error {
    Error::Unavailable("the writer has stopped (node shutting down)".into())
}

/// The running writer: an OS thread, or a task in simulation.
#[derive(Debug)]
pub enum WriterJoin {
    /// Production: commits block on disk, so they get a thread of their own.
    Thread(thread::JoinHandle<()>),
    /// Simulation: the same loop inline on a task ([`Blocking::Inline`]).
    Task(tokio::task::JoinHandle<()>),
}

impl WriterJoin {
    /// Waits for the writer to finish (after every handle is gone or closed).
    pub async fn join(self) -> Result<()> {
        let panicked = || Error::Unavailable("the writer panicked".into());
        match self {
            WriterJoin::Thread(t) => tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(|_| panicked())?
                .map_err(|_| panicked()),
            WriterJoin::Task(t) => t.await.map_err(|_| panicked()),
        }
    }
}

/// Starts the writer (a thread, or with [`Blocking::Inline`] a task). It runs
/// until every [`WriterHandle`] is dropped, then syncs and exits. `seq`
/// receives the last committed log seq; `fatal` is cancelled if storage fails.
pub fn spawn(
    store: Arc<Store>,
    recovered: &Recovered,
    clock: Arc<dyn PhysicalClock>,
    opts: WriterOptions,
    fatal: CancellationToken,
    blocking: Blocking,
) -> Result<(WriterHandle, watch::Receiver<u64>, WriterJoin)> {
    let clients = Lane::new(opts.clients, "limits.write_queue_depth/write_queue_bytes");
    let peers = Lane::new(opts.peers, "limits.peer_queue_depth/peer_queue_bytes");
    let (tx, rx) = mpsc::channel(clients.max_requests() + peers.max_requests() + INTERNAL_ROOM);
    let (seq_tx, seq_rx) = watch::channel(recovered.last_seq);
    let pending = Shared::default();
    let handle = WriterHandle {
        tx,
        clients,
        peers,
        pending: pending.clone(),
    };
    let writer = Writer {
        hlc: Hlc::new(clock, recovered.high_water),
        last_seq: recovered.last_seq,
        change_seq: store.feed.last(),
        first_change: store.feed.first(),
        store,
        opts,
        seq_tx,
        fatal,
        failed: None,
        pending,
        clock_checked: recovered.fresh,
    };
    if !recovered.fresh {
        scan_stored_versions(Arc::clone(&writer.store), handle.tx.clone(), blocking);
    }
    let join = match blocking {
        Blocking::Inline(_) => WriterJoin::Task(tokio::spawn(writer.run_inline(rx))),
        Blocking::Pool => WriterJoin::Thread(
            thread::Builder::new()
                .name("meshkv-writer".into())
                .spawn(move || writer.run(rx))
                .map_err(|e| Error::io("cannot start the writer thread", e))?,
        ),
    };
    Ok((handle, seq_rx, join))
}

struct Writer {
    store: Arc<Store>,
    hlc: Hlc,
    last_seq: u64,
    /// The last change seq committed to the feed.
    change_seq: u64,
    /// The oldest change seq the feed keeps.
    first_change: u64,
    opts: WriterOptions,
    seq_tx: watch::Sender<u64>,
    fatal: CancellationToken,
    /// Set after a failed commit: every later write is refused with this.
    failed: Option<String>,
    /// `meta` records to persist with the next batch.
    pending: Shared,
    /// The clock has observed every stored version (the start-up scan is
    /// done). Until then each local write reads its key's stored version
    /// first, so that it wins even if the data dir holds versions above its
    /// persisted clock mark (a file-by-file copy of a running node).
    clock_checked: bool,
}

/// What one request gets back once the batch is committed.
enum Outcome {
    Local(Result<Written>),
    Applied(Applied),
    Count(u64),
}

impl Writer {
    /// The production loop, on its own OS thread.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut cmds = Vec::with_capacity(self.opts.max_batch);
        loop {
            let first = match rx.try_recv() {
                Ok(m) => m,
                Err(_) => {
                    self.idle();
                    let woke = rx.blocking_recv();
                    self.store.writer_wakes();
                    match woke {
                        Some(m) => m,
                        None => break,
                    }
                }
            };
            self.step(first, &mut rx, &mut cmds);
        }
        self.finish();
    }

    /// Nothing is being committed and everything committed is marked: all
    /// is visible up to now.
    fn idle(&self) {
        self.store.writer_sleeps(self.hlc.wall_ms());
    }

    /// The same loop as a task, committing inline: for simulation, where
    /// another thread would make runs irreproducible.
    async fn run_inline(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut cmds = Vec::with_capacity(self.opts.max_batch);
        loop {
            let first = match rx.try_recv() {
                Ok(m) => m,
                Err(_) => {
                    self.idle();
                    let woke = rx.recv().await;
                    self.store.writer_wakes();
                    match woke {
                        Some(m) => m,
                        None => break,
                    }
                }
            };
            self.step(first, &mut rx, &mut cmds);
        }
        self.finish();
    }

    fn take(&mut self, msg: Msg, cmds: &mut Vec<Command>, rx: &mut mpsc::Receiver<Msg>) {
        match msg {
            // Later receives still return what is buffered, then None.
            Msg::Close => rx.close(),
            Msg::Wake => {}
            Msg::StoredMax(hlc) => {
                let lead_ms = self.opts.max_clock_skew.as_millis() as u64;
                let limit = crate::clock::from_physical_ms(self.hlc.wall_ms() + lead_ms);
                if hlc > limit {
                    tracing::warn!(
                        stored = hlc,
                        "a stored version is further ahead of the clock than max_clock_skew_ms; \
                         the clock follows it only that far"
                    );
                }
                self.hlc.observe(hlc.min(limit));
                self.clock_checked = true;
                tracing::debug!(stored = hlc, "the clock has observed every stored version");
            }
            Msg::Request(cmd) => cmds.push(cmd),
        }
    }

    /// One group commit: `first` and whatever else is already queued.
    fn step(&mut self, first: Msg, rx: &mut mpsc::Receiver<Msg>, cmds: &mut Vec<Command>) {
        self.take(first, cmds, rx);
        while cmds.len() < self.opts.max_batch {
            match rx.try_recv() {
                Ok(c) => self.take(c, cmds, rx),
                Err(_) => break,
            }
        }
        if cmds.is_empty() && self.pending.is_empty() {
            return;
        }
        let result = match &self.failed {
            Some(why) => Err(why.clone()),
            None => self.commit(cmds).map_err(|e| e.to_string()),
        };
        match result {
            Ok(outcomes) => {
                for (cmd, outcome) in cmds.drain(..).zip(outcomes) {
                    match (cmd, outcome) {
                        (Command::Local { reply, .. }, Outcome::Local(v)) => {
                            let _ = reply.send(v);
                        }
                        (Command::Remote { reply, .. }, Outcome::Applied(a)) => {
                            let _ = reply.send(Ok(a));
                        }
                        (Command::Forget { reply, .. }, Outcome::Count(n))
                        | (Command::Expire { reply, .. }, Outcome::Count(n)) => {
                            let _ = reply.send(Ok(n));
                        }
                        _ => unreachable!("outcomes are built in command order"),
                    }
                }
            }
            Err(why) => {
                self.pending.take();
                for cmd in cmds.drain(..) {
                    let err = || Error::Unavailable(why.clone());
                    match cmd {
                        Command::Local { reply, .. } => drop(reply.send(Err(err()))),
                        Command::Remote { reply, .. } => drop(reply.send(Err(err()))),
                        Command::Forget { reply, .. } | Command::Expire { reply, .. } => {
                            drop(reply.send(Err(err())))
                        }
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        if self.failed.is_none() {
            // Records saved after the last batch (a cursor acked at shutdown).
            if !self.pending.is_empty() {
                if let Err(e) = self.commit(&mut []) {
                    tracing::error!(error = %e, "final commit of cursors failed");
                }
            }
            if let Err(e) = self.store.sync() {
                tracing::error!(error = %e, "final sync failed");
            }
        }
        tracing::debug!(last_seq = self.last_seq, "writer stopped");
    }
}

/// A store of node "n1" in `dir` and its writer (no fsync, roomy lanes): for
/// tests elsewhere in the crate that need real storage behind them.
#[cfg(test)]
pub(crate) fn for_tests(
    dir: &std::path::Path,
) -> (Arc<Store>, WriterHandle, watch::Receiver<u64>, WriterJoin) {
    let (store, rec) = Store::open(dir, "n1", "c", None, 8, 4).expect("open a test store");
    let lane = LaneLimits {
        requests: 64,
        bytes: 1 << 26,
    };
    let (writer, seq, join) = spawn(
        Arc::clone(&store),
        &rec,
        Arc::new(crate::clock::SystemClock),
        WriterOptions {
            node_id: "n1".into(),
            fsync: FsyncMode::Never,
            clients: lane,
            peers: lane,
            max_batch: 64,
            max_clock_skew: Duration::from_secs(60),
            tombstone_ttl: Duration::from_secs(3600),
            retain_changes: 1000,
        },
        CancellationToken::new(),
        Blocking::Pool,
    )
    .expect("spawn a test writer");
    (store, writer, seq, join)
}

/// Reads the version of every stored entry in the background and tells the
/// writer the highest; it stops early if the writer closes first.
fn scan_stored_versions(store: Arc<Store>, tx: mpsc::Sender<Msg>, blocking: Blocking) {
    tokio::spawn(async move {
        let closed = tx.clone();
        let started = std::time::Instant::now();
        let scanned = blocking
            .run("stored version scan", move || {
                store.max_stored_hlc(|| closed.is_closed())
            })
            .await;
        match scanned {
            Ok(Ok(Some(max))) => {
                tracing::debug!(took = ?started.elapsed(), "stored versions scanned");
                let _ = tx.send(Msg::StoredMax(max)).await;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) | Err(e) => {
                tracing::warn!(error = %e, "cannot scan the stored versions; local writes keep reading the old version first");
            }
        }
    });
}

/// Syncs every `interval` for `fsync = "periodic"` until `stop`. The server
/// cancels `stop` only after the writer thread has exited, so that writes
/// committed while shutdown drains are synced on schedule too (the writer
/// syncs once more as it exits).
pub async fn periodic_sync(
    sync: impl Fn() -> Result<()> + Send + Sync + Clone + 'static,
    interval: Duration,
    fatal: CancellationToken,
    stop: CancellationToken,
    blocking: Blocking,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = fatal.cancelled() => return,
            _ = tick.tick() => {}
        }
        let s = sync.clone();
        if let Err(e) = blocking.run("periodic sync", s).await.and_then(|r| r) {
            tracing::error!(error = %e, "periodic sync failed: failing stop for writes");
            fatal.cancel();
            return;
        }
    }
}

#[cfg(test)]
mod tests;
