//! The writer's tests: real storage in a temporary directory, driven
//! through a handle or step by step through a bare [`Writer`](super::Writer).

use super::*;
use crate::clock::SystemClock;

fn opts(queue_depth: usize) -> WriterOptions {
    WriterOptions {
        node_id: "n1".into(),
        fsync: FsyncMode::Always,
        clients: LaneLimits {
            requests: queue_depth,
            bytes: 1 << 20,
        },
        peers: LaneLimits {
            requests: queue_depth,
            bytes: 1 << 20,
        },
        max_batch: 64,
        max_clock_skew: Duration::from_secs(60),
        tombstone_ttl: Duration::from_secs(3600),
        retain_changes: 1000,
    }
}

/// A running writer on the system clock.
fn start(
    store: Arc<Store>,
    rec: &Recovered,
    opts: WriterOptions,
) -> (WriterHandle, watch::Receiver<u64>, WriterJoin) {
    spawn(
        store,
        rec,
        Arc::new(SystemClock),
        opts,
        CancellationToken::new(),
        Blocking::Pool,
    )
    .unwrap()
}

fn open(dir: &std::path::Path) -> (Arc<Store>, Recovered) {
    Store::open(dir, "n1", "c", None, 8, 4).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_read_back_and_versions_increase() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let (w, mut seq, t) = start(store.clone(), &rec, opts(16));
    let v1 = w.write("k".into(), Some(b"a".to_vec())).await.unwrap();
    let v2 = w.write("k".into(), None).await.unwrap();
    assert!(v2 > v1);
    assert!(store.get("k").unwrap().unwrap().is_tombstone());
    assert_eq!(*seq.borrow_and_update(), 2);
    assert_eq!(store.log_after(0, 10, 1 << 20).unwrap().len(), 2);
    drop(w);
    t.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_merge_keeps_the_highest_version_and_advances_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let (w, _seq, t) = start(store.clone(), &rec, opts(16));
    // Ahead of this node's clock, but within max_clock_skew.
    let far = crate::clock::from_physical_ms(SystemClock.now_ms() + 30_000);
    let newer = Entry {
        version: Version {
            hlc: far,
            node: "n2".into(),
        },
        value: Some(b"new".to_vec()),
        expires_ms: None,
    };
    let older = Entry {
        version: Version {
            hlc: 5,
            node: "n3".into(),
        },
        value: Some(b"old".to_vec()),
        expires_ms: None,
    };
    let applied = w
        .apply(
            vec![("k".into(), newer.clone()), ("k".into(), older.clone())],
            false,
        )
        .await
        .unwrap();
    assert_eq!(applied.applied, 1);
    assert_eq!(
        w.apply(vec![("k".into(), newer.clone())], false)
            .await
            .unwrap()
            .applied,
        0,
        "replay"
    );
    assert_eq!(store.get("k").unwrap().unwrap(), newer);
    // A later local write must beat the remote one it has observed.
    let v = w.write("k".into(), Some(b"local".to_vec())).await.unwrap();
    assert!(v > newer.version);
    // Remote entries are not re-logged: the log holds only local writes.
    assert_eq!(store.log_after(0, 10, 1 << 20).unwrap().len(), 1);
    drop(w);
    t.join().await.unwrap();
}

/// Issue 22, item 9: a data dir holding versions above its persisted
/// clock mark (a file-by-file copy of a running node) acknowledged local
/// writes that lost to the older ones already stored. Until the start-up
/// scan reports, a local write reads its key's stored version; after, the
/// clock has observed the highest.
#[test]
fn a_local_write_beats_stored_versions_above_the_persisted_clock_mark() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = crate::clock::from_physical_ms(SystemClock.now_ms() + 20_000);
    let stored = |key: &str| Entry {
        version: Version {
            hlc: ahead,
            node: "n2".into(),
        },
        value: Some(key.as_bytes().to_vec()),
        expires_ms: None,
    };
    let (store, rec) = open(dir.path());
    let mut w = bare_writer(store.clone(), &rec, Arc::new(SystemClock));
    let keys = ["early", "late"];
    commit_remote(
        &mut w,
        keys.iter().map(|k| (k.to_string(), stored(k))).collect(),
        false,
    );
    // The copy caught the data but not the clock mark: a writer that
    // starts from it.
    let unchecked = || {
        let mut w = bare_writer(store.clone(), &rec, Arc::new(SystemClock));
        w.clock_checked = false;
        w
    };
    assert!(rec.high_water < ahead);

    // Before the scan: the write reads what is stored under its key.
    let v = commit_local(&mut unchecked(), "early", Some(b"mine"));
    assert!(
        v > stored("early").version,
        "{v} loses to the stored version"
    );

    // The scan finds the highest stored version (now the write just made);
    // once the writer has it, the fast path (no read) still wins.
    let highest = store.max_stored_hlc(|| false).unwrap();
    assert_eq!(highest, Some(v.hlc));
    let mut w = unchecked();
    let (_tx, mut rx) = mpsc::channel(1);
    w.step(Msg::StoredMax(ahead), &mut rx, &mut Vec::new());
    assert!(w.clock_checked);
    let v = commit_local(&mut w, "late", Some(b"mine"));
    assert!(
        v > stored("late").version,
        "{v} loses to the stored version"
    );
    for key in keys {
        assert_eq!(
            store.get(key).unwrap().unwrap().value.as_deref(),
            Some(&b"mine"[..])
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_and_seq_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let last = {
        let (store, rec) = open(dir.path());
        let (w, _s, t) = spawn(
            store,
            &rec,
            Arc::new(SystemClock),
            opts(16),
            CancellationToken::new(),
            Blocking::Pool,
        )
        .unwrap();
        let v = w.write("a".into(), Some(vec![1])).await.unwrap();
        drop(w);
        t.join().await.unwrap();
        v
    };
    let (store, rec) = open(dir.path());
    assert!(rec.high_water >= last.hlc);
    assert_eq!(rec.last_seq, 1);
    assert!(!rec.fresh);
    // Even with the wall clock at zero, new versions come after old ones.
    struct Zero;
    impl PhysicalClock for Zero {
        fn now_ms(&self) -> u64 {
            0
        }
    }
    let (w, _s, t) = spawn(
        store,
        &rec,
        Arc::new(Zero),
        opts(16),
        CancellationToken::new(),
        Blocking::Pool,
    )
    .unwrap();
    assert!(w.write("a".into(), Some(vec![2])).await.unwrap() > last);
    drop(w);
    t.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncation_moves_the_log_start_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, rec) = open(dir.path());
        let (w, _s, t) = start(store.clone(), &rec, opts(16));
        for i in 0..10 {
            w.write(format!("k{i}"), Some(vec![0; 10])).await.unwrap();
        }
        let full = store.log_bytes();
        assert_eq!(store.log_first_seq().unwrap(), Some(1));
        let (n, bytes) = store.truncate_log(|seq, _, _| seq <= 5).unwrap();
        assert_eq!(n, 5);
        assert_eq!(store.log_bytes(), full - bytes);
        assert_eq!(store.log_first_seq().unwrap(), Some(6));
        assert_eq!(store.log_after(0, 100, 1 << 20).unwrap()[0].0, 6);
        store.truncate_log(|seq, _, _| seq <= 8).unwrap();
        assert_eq!(store.log_first_seq().unwrap(), Some(9));
        drop(w);
        t.join().await.unwrap();
    }
    let (store, rec) = open(dir.path());
    assert_eq!(rec.last_seq, 10);
    assert_eq!(store.log_first_seq().unwrap(), Some(9));
    assert_eq!(store.truncate_log(|_, _, _| true).unwrap().0, 2);
    assert_eq!(store.log_first_seq().unwrap(), None);
    assert_eq!(store.log_bytes(), 0);
}

/// A writer without its thread, so a test can hand `commit` any batch.
fn bare_writer(store: Arc<Store>, rec: &Recovered, clock: Arc<dyn PhysicalClock>) -> Writer {
    Writer {
        hlc: Hlc::new(clock, rec.high_water),
        last_seq: rec.last_seq,
        change_seq: store.feed.last(),
        first_change: store.feed.first(),
        store,
        opts: opts(16),
        seq_tx: watch::channel(0).0,
        fatal: CancellationToken::new(),
        failed: None,
        pending: Shared::default(),
        clock_checked: true,
    }
}

/// Commits one local write (`None`: a delete) through a bare writer.
fn commit_local(w: &mut Writer, key: &str, value: Option<&[u8]>) -> Version {
    let mut out = w
        .commit(&mut [Command::Local {
            writes: vec![LocalWrite::new(key.into(), value.map(<[u8]>::to_vec))],
            reply: oneshot::channel().0,
            _permit: None,
        }])
        .unwrap();
    match out.pop() {
        Some(Outcome::Local(Ok(mut w))) => w.versions.pop().expect("a version"),
        _ => panic!("a local outcome"),
    }
}

/// Commits one batch of remote entries through a bare writer.
fn commit_remote(w: &mut Writer, mutations: Vec<(String, Entry)>, streamed: bool) -> Applied {
    let mut out = w
        .commit(&mut [Command::Remote {
            mutations,
            streamed,
            reply: oneshot::channel().0,
            _permit: None,
        }])
        .unwrap();
    match out.pop() {
        Some(Outcome::Applied(a)) => a,
        _ => panic!("an applied outcome"),
    }
}

/// Checks that the refreshed digests and key count equal those rebuilt
/// from what is stored; the key count.
fn digests_match_a_recount(store: &Store) -> u64 {
    let (digests, keys) = recount(store);
    let view = store
        .refresh_digests(usize::MAX, crate::storage::Refresh::Wait)
        .unwrap();
    assert_eq!(view.digests, digests);
    assert!(view.unsettled.is_empty());
    assert_eq!(store.key_count(), keys);
    keys
}

/// The digests and key count rebuilt from what is stored.
fn recount(store: &Store) -> (crate::storage::Digests, u64) {
    let mut d = crate::storage::Digests::default();
    let mut n = 0;
    store
        .for_each_version(|k, v| {
            d.replace(&store.buckets(), k.as_bytes(), None, &v.version);
            n += 1;
            Ok(true)
        })
        .unwrap();
    (d, n)
}

#[test]
fn purge_and_write_of_one_key_in_one_batch_keep_digests_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let mut w = bare_writer(store.clone(), &rec, Arc::new(SystemClock));
    let local = |k: &str, v: Option<&[u8]>| Command::Local {
        writes: vec![LocalWrite::new(k.into(), v.map(<[u8]>::to_vec))],
        reply: oneshot::channel().0,
        _permit: None,
    };
    w.commit(&mut [
        local("k", Some(b"a")),
        local("k", None),
        local("other", Some(b"o")),
    ])
    .unwrap();
    let tomb = store.get("k").unwrap().unwrap();
    assert!(tomb.is_tombstone());
    // In one batch: purge the tombstone, then write the key again.
    let purge = Command::Forget {
        entries: vec![("k".into(), tomb.version.clone())],
        only_tombstones: true,
        reply: oneshot::channel().0,
    };
    w.commit(&mut [purge, local("k", Some(b"b"))]).unwrap();
    assert_eq!(
        store.get("k").unwrap().unwrap().value.as_deref(),
        Some(&b"b"[..])
    );
    assert_eq!(digests_match_a_recount(&store), 2);
}

#[test]
fn an_expired_remote_tombstone_is_stored_only_where_it_beats_a_value() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let mut w = bare_writer(store.clone(), &rec, Arc::new(SystemClock));
    let at = |ms: u64, value: Option<&[u8]>| Entry {
        version: Version {
            hlc: crate::clock::from_physical_ms(ms),
            node: "n2".into(),
        },
        value: value.map(<[u8]>::to_vec),
        expires_ms: None,
    };
    let remote = |key: &str, e: Entry| Command::Remote {
        mutations: vec![(key.into(), e)],
        streamed: false,
        reply: oneshot::channel().0,
        _permit: None,
    };
    // Long ago: a value, then its delete, both far older than the TTL.
    w.commit(&mut [remote("old", at(1_000, Some(b"v")))])
        .unwrap();
    assert!(store.get("old").unwrap().is_some());
    w.commit(&mut [
        remote("old", at(2_000, None)),
        remote("never", at(2_000, None)),
    ])
    .unwrap();
    let old = store.get("old").unwrap().expect("the delete is kept");
    assert!(
        old.is_tombstone(),
        "an expired delete that beat a value is stored: peers count this node as \
         holding it before they purge theirs (simulation seed 1111)"
    );
    assert_eq!(
        store.get("never").unwrap(),
        None,
        "an expired tombstone for an absent key is not stored"
    );
    assert_eq!(digests_match_a_recount(&store), 1);
    // A recent tombstone is stored as usual.
    let now = SystemClock.now_ms();
    w.commit(&mut [remote("fresh", at(now, None))]).unwrap();
    assert!(store.get("fresh").unwrap().unwrap().is_tombstone());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lane_full_of_writes_does_not_shed_peer_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let mut o = opts(2);
    o.clients.requests = 1;
    let (w, _s, t) = start(store.clone(), &rec, o);
    // Hold the only client slot, as a flood of clients would.
    let _held = w.clients.try_admit(1).unwrap();
    let err = w.write("c".into(), Some(vec![1])).await.unwrap_err();
    assert!(matches!(err, Error::Overloaded(_)), "{err}");
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::ResourceExhausted
    );
    let remote = Entry {
        version: Version {
            hlc: 7,
            node: "n2".into(),
        },
        value: Some(b"r".to_vec()),
        expires_ms: None,
    };
    let applied = tokio::time::timeout(
        Duration::from_secs(10),
        w.apply(vec![("r".into(), remote)], false),
    )
    .await
    .expect("a peer batch waited on the client lane")
    .unwrap();
    assert_eq!(applied.applied, 1);
    drop(w);
    t.join().await.unwrap();
}

/// Issue 22, item 1: one entry near the HLC's ceiling used to drag the
/// clock with it, and every later local version was refused by every peer.
#[test]
fn a_remote_version_far_ahead_is_refused_unobserved_and_taken_once_the_clock_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let now = 1_800_000_000_000u64;
    let clock = Arc::new(crate::clock::tests::ManualClock(
        std::sync::atomic::AtomicU64::new(now),
    ));
    let mut w = bare_writer(store.clone(), &rec, clock.clone());
    let entry = |ms: u64| Entry {
        version: Version {
            hlc: crate::clock::from_physical_ms(ms),
            node: "n2".into(),
        },
        value: Some(b"future".to_vec()),
        expires_ms: None,
    };
    let remote = |w: &mut Writer, e: &Entry| {
        commit_remote(
            w,
            vec![("ok".into(), entry(now)), ("k".into(), e.clone())],
            true,
        )
    };
    let ceiling = entry((1 << 47) - 1);
    let ahead = entry(now + 61_000);
    for far in [&ceiling, &ahead] {
        let done = remote(&mut w, far);
        assert_eq!(done.refused.len(), 1, "{done:?}");
        let (at, key, why) = &done.refused[0];
        assert_eq!((*at, key.as_str()), (1, "k"));
        assert!(why.to_string().contains("max_clock_skew_ms"), "{why}");
        assert_eq!(
            store.get("k").unwrap(),
            None,
            "a refused entry is not stored"
        );
    }
    let v = commit_local(&mut w, "mine", Some(b"v"));
    assert_eq!(
        crate::clock::physical_ms(v.hlc),
        now,
        "the clock did not observe the refused versions"
    );
    // Once this node's clock is within the limit, the same entry is taken.
    clock
        .0
        .store(now + 1_000, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(remote(&mut w, &ahead).refused, vec![]);
    assert_eq!(store.get("k").unwrap(), Some(ahead.clone()));
    let v = commit_local(&mut w, "k", Some(b"mine"));
    assert!(v > ahead.version, "the clock observed the accepted version");
}

#[test]
fn cursors_ride_along_and_a_batch_of_cursors_alone_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let mut w = bare_writer(store.clone(), &rec, Arc::new(SystemClock));
    w.pending.update(|p| {
        p.cursors.insert(crate::storage::cursor_key("n2"), 42);
    });
    w.commit(&mut []).unwrap();
    assert_eq!(store.cursor("n2").unwrap(), 42);
    assert!(w.pending.is_empty());
}

/// When `key` was applied, as stored.
fn applied_ms(store: &Store, key: &str) -> Option<u64> {
    let mut applied = None;
    store
        .for_each_version(|k, v| {
            if k == key {
                applied = Some(v.applied_ms);
            }
            Ok(true)
        })
        .unwrap();
    applied
}

/// Issue 22, item 7: `applied_ms` is stamped before the commit, so a
/// round that started during a slow commit counted as proof that a peer
/// holds a tombstone the round never saw. Rounds now take the visible
/// time, which covers only entries already committed and marked.
#[test]
fn the_visible_time_follows_commits_and_never_lets_applied_ms_fall_below_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let clock = Arc::new(crate::clock::tests::ManualClock(
        std::sync::atomic::AtomicU64::new(5_000),
    ));
    let mut w = bare_writer(store.clone(), &rec, clock.clone());
    assert_eq!(
        store.visible_ms(),
        0,
        "nothing is proven before the writer runs"
    );
    commit_local(&mut w, "a", None);
    assert_eq!(store.visible_ms(), 5_000);
    // Idle: everything is visible up to the wall clock.
    clock.0.store(7_000, std::sync::atomic::Ordering::SeqCst);
    w.idle();
    assert_eq!(store.visible_ms(), 7_000);
    // The wall clock steps back: the next entry is still stamped at or
    // above the visible time, so no round that started before it is
    // taken as proof of it.
    clock.0.store(6_000, std::sync::atomic::Ordering::SeqCst);
    commit_local(&mut w, "b", None);
    assert_eq!(applied_ms(&store, "b"), Some(7_000));
    assert_eq!(store.visible_ms(), 7_000);
}

/// A delete followed by no other write was never collected: the visible
/// time stayed at the moment the writer went idle, so no later round
/// could prove the tombstone held once it had left the in-flight window
/// (the liveness test `a_node_restored_from_an_old_copy_...` failed with a
/// 2 s window every time, and with 0.5 s under load).
#[test]
fn rounds_while_the_writer_sleeps_see_everything_up_to_their_start() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let clock = Arc::new(crate::clock::tests::ManualClock(
        std::sync::atomic::AtomicU64::new(5_000),
    ));
    let mut w = bare_writer(store.clone(), &rec, clock.clone());
    commit_local(&mut w, "a", None);
    w.idle();
    assert_eq!(
        store.round_visible_ms(9_000),
        9_000,
        "asleep: all is visible"
    );
    assert_eq!(store.visible_ms(), 9_000, "and published");
    assert_eq!(store.round_visible_ms(8_000), 9_000, "never lowered");
    // Awake, a round gets what the last commit published, not its start.
    store.writer_wakes();
    assert_eq!(store.round_visible_ms(20_000), 9_000);
    // What the writer stamps after waking is at or above what rounds saw,
    // even with its clock behind theirs: no round counts as proof of it.
    commit_local(&mut w, "b", None);
    assert_eq!(applied_ms(&store, "b"), Some(9_000));
}

/// Issue 22, item 8: a cursor or seen mark saved while the queue was full
/// was dropped, and a peer's three marks could be saved in part.
#[test]
fn records_saved_while_the_queue_is_full_go_with_the_next_batch_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let mut w = bare_writer(store.clone(), &rec, Arc::new(SystemClock));
    let (tx, mut rx) = mpsc::channel(1);
    let lane = |l| Lane::new(l, "test");
    let h = WriterHandle {
        tx,
        clients: lane(opts(16).clients),
        peers: lane(opts(16).peers),
        pending: w.pending.clone(),
    };
    // The queue is full: one purge waits in it.
    let (reply, _answer) = oneshot::channel();
    h.tx.try_send(Msg::Request(Command::Forget {
        entries: Vec::new(),
        only_tombstones: true,
        reply,
    }))
    .unwrap_or_else(|_| panic!("room for one"));
    h.save_cursor("n2", 42);
    h.save_cursor("n2", 40); // a late save from another task
    let run1 = SeenMarks {
        incarnation: 10,
        current: 500,
        prior: 0,
    };
    let run2 = SeenMarks {
        incarnation: 60,
        current: 50,
        prior: 500,
    };
    h.save_seen_marks("n3", run2);
    h.save_seen_marks("n3", run1); // older, and saved late
    let first = rx.try_recv().unwrap();
    w.step(first, &mut rx, &mut Vec::new());
    assert_eq!(store.cursor("n2").unwrap(), 42);
    assert_eq!(store.seen_marks("n3").unwrap(), run2);
    assert!(w.pending.is_empty());
    // With an empty queue a save wakes the writer itself.
    h.save_cursor("n2", 43);
    let wake = rx.try_recv().expect("a wake-up");
    w.step(wake, &mut rx, &mut Vec::new());
    assert_eq!(store.cursor("n2").unwrap(), 43);
}

#[tokio::test(start_paused = true)]
async fn periodic_sync_runs_until_stopped_not_until_shutdown_begins() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let syncs = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&syncs);
    let stop = CancellationToken::new();
    let task = tokio::spawn(periodic_sync(
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
        Duration::from_millis(100),
        CancellationToken::new(),
        stop.clone(),
        Blocking::Pool,
    ));
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let before = syncs.load(Ordering::SeqCst);
    assert!(before >= 5, "{before} syncs in a second");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        syncs.load(Ordering::SeqCst) > before,
        "still syncing until stopped"
    );
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_commits_only_when_its_condition_holds() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let (w, _seq, t) = start(store.clone(), &rec, opts(16));
    let cas = |value: Option<&[u8]>, expect| LocalWrite {
        expect: Some(expect),
        ..LocalWrite::new("k".into(), value.map(<[u8]>::to_vec))
    };
    let v1 = w.write_one(cas(Some(b"1"), Expect::Absent)).await.unwrap();
    let err = w
        .write_one(cas(Some(b"x"), Expect::Absent))
        .await
        .unwrap_err();
    match &err {
        Error::Precondition { current, message } => {
            assert_eq!(current.as_ref(), Some(&v1));
            assert!(
                message.contains("absent") && message.contains(&v1.to_string()),
                "{message}"
            );
        }
        other => panic!("{other}"),
    }
    let v2 = w
        .write_one(cas(Some(b"2"), Expect::Version(v1.clone())))
        .await
        .unwrap();
    // A stale version loses, and so does a delete expecting it.
    assert!(w
        .write_one(cas(Some(b"y"), Expect::Version(v1.clone())))
        .await
        .is_err());
    assert!(w.write_one(cas(None, Expect::Version(v1))).await.is_err());
    assert_eq!(store.get("k").unwrap().unwrap().value.unwrap(), b"2");
    let v3 = w.write_one(cas(None, Expect::Version(v2))).await.unwrap();
    // Deleted: absent again, so "absent" holds and the deleted version does not.
    assert!(w
        .write_one(cas(Some(b"z"), Expect::Version(v3)))
        .await
        .is_err());
    w.write_one(cas(Some(b"3"), Expect::Absent)).await.unwrap();

    // A batch whose second condition fails commits none of it.
    let batch = vec![
        LocalWrite::new("other".into(), Some(b"o".to_vec())),
        cas(Some(b"4"), Expect::Absent),
    ];
    assert!(w.write_batch(batch).await.is_err());
    assert!(store.get("other").unwrap().is_none());
    assert_eq!(store.get("k").unwrap().unwrap().value.unwrap(), b"3");
    drop(w);
    t.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_sets_an_expiry_from_the_version_and_a_rewrite_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let (w, _seq, t) = start(store.clone(), &rec, opts(16));
    let v = w
        .write_one(LocalWrite {
            ttl_ms: Some(1_000),
            ..LocalWrite::new("k".into(), Some(b"v".to_vec()))
        })
        .await
        .unwrap();
    let e = store.get("k").unwrap().unwrap();
    let expiry = crate::clock::physical_ms(v.hlc) + 1_000;
    assert_eq!(e.expires_ms, Some(expiry));
    assert!(e.is_live(expiry - 1) && !e.is_live(expiry));
    // Expired: a condition of "absent" holds.
    assert!(Expect::Absent.holds(Some(&e), expiry));
    w.write("k".into(), Some(b"w".to_vec())).await.unwrap();
    assert_eq!(store.get("k").unwrap().unwrap().expires_ms, None);
    drop(w);
    t.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_goes_to_the_feed_in_order_and_old_ones_are_trimmed() {
    use crate::{proto::ChangeKind, storage::feed::decode_change};
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let mut o = opts(16);
    o.retain_changes = 5;
    let (w, _seq, t) = start(store.clone(), &rec, o);
    let mut live = store.feed.subscribe();
    for i in 0..20 {
        w.write(format!("k{i}"), Some(vec![b'v'; 10]))
            .await
            .unwrap();
    }
    w.write("k0".into(), None).await.unwrap();
    let remote = Entry::new(
        Version {
            hlc: crate::clock::from_physical_ms(crate::clock::SystemClock.now_ms()),
            node: "n2".into(),
        },
        Some(b"r".to_vec()),
    );
    assert_eq!(
        w.apply(vec![("k1".into(), remote)], true)
            .await
            .unwrap()
            .applied,
        1
    );
    let feed = &store.feed;
    assert_eq!(feed.last(), 22);
    // Trimmed to the newest 5.
    assert_eq!(feed.first(), 18);
    let kept = feed.read_after(0, 100).unwrap();
    let seqs: Vec<u64> = kept.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![18, 19, 20, 21, 22]);
    let (m, kind) = decode_change(&kept[3].1).unwrap();
    assert_eq!((m.key.as_str(), kind), ("k0", ChangeKind::Delete));
    let (m, kind) = decode_change(&kept[4].1).unwrap();
    assert_eq!((m.key.as_str(), kind), ("k1", ChangeKind::Put));
    assert_eq!(m.version.unwrap().node_id, "n2");
    // Live: every change, in order, small records inline.
    for want in 1..=22 {
        let (seq, record) = live.recv().await.unwrap();
        assert_eq!(seq, want);
        assert!(record.is_some());
    }
    drop(w);
    t.join().await.unwrap();
    // The feed's position survives a reopen.
    drop(store);
    let (store, _) = open(dir.path());
    assert_eq!((store.feed.first(), store.feed.last()), (18, 22));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_that_falls_due_becomes_a_change_once() {
    use crate::{proto::ChangeKind, storage::feed::decode_change};
    let dir = tempfile::tempdir().unwrap();
    let (store, rec) = open(dir.path());
    let (w, _seq, t) = start(store.clone(), &rec, opts(16));
    let ttl = |key: &str, ms| LocalWrite {
        ttl_ms: Some(ms),
        ..LocalWrite::new(key.into(), Some(b"v".to_vec()))
    };
    w.write_one(ttl("gone", 1)).await.unwrap();
    w.write_one(ttl("rewritten", 1)).await.unwrap();
    w.write("rewritten".into(), Some(b"kept".to_vec()))
        .await
        .unwrap();
    w.write_one(ttl("later", 3_600_000)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let now = crate::clock::SystemClock.now_ms();
    let due = store.feed.due(now, 100).unwrap();
    assert_eq!(due.len(), 2, "the index holds both short expiries");
    assert_eq!(
        w.expire(due).await.unwrap(),
        1,
        "only the key still holding it"
    );
    assert!(store.feed.due(now, 100).unwrap().is_empty());
    let (seq, record) = store.feed.read_after(0, 100).unwrap().pop().unwrap();
    assert_eq!(seq, store.feed.last());
    let (m, kind) = decode_change(&record).unwrap();
    assert_eq!((m.key.as_str(), kind), ("gone", ChangeKind::Expire));
    drop(w);
    t.join().await.unwrap();
}
