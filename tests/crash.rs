//! Invariant 1: an acknowledged write (fsync=always) survives kill -9.

mod common;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use common::{Node, PATIENCE};
use meshkv::proto;

/// What a key must hold after the crash, per the acknowledgements seen.
#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Value(Vec<u8>),
    Absent,
    /// The last operation on it was in flight at the kill: either outcome is fine.
    Unknown,
}

const WRITERS: usize = 8;
const CYCLES: usize = 5;
/// Acknowledgements to wait for before each kill, so that it lands mid-load.
const ACKS_BEFORE_KILL: usize = 300;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_under_concurrent_load() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1").arg("--fsync").arg("always");
    node.start().await;
    let expected: Arc<Mutex<HashMap<String, Expect>>> = Arc::default();
    let mut total_acked = 0;

    for cycle in 0..CYCLES {
        let acks = Arc::new(AtomicUsize::new(0));
        let killed = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..WRITERS {
            let (mut kv, acks, killed, expected) =
                (node.kv(), acks.clone(), killed.clone(), expected.clone());
            writers.push(tokio::spawn(async move {
                let mut failures = 0;
                for n in 0.. {
                    // Every 5th operation deletes the key written just before.
                    let (key, result, expect) = if n % 5 == 4 {
                        let key = format!("c{cycle}-w{w}-{}", n - 1);
                        let r = kv
                            .delete(proto::DeleteRequest {
                                key: key.clone(),
                                expect: None,
                                ..Default::default()
                            })
                            .await
                            .map(drop);
                        (key, r, Expect::Absent)
                    } else {
                        let key = format!("c{cycle}-w{w}-{n}");
                        let value = format!("{key}={}", n * 31).into_bytes();
                        let r = kv
                            .write(proto::WriteRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(drop);
                        (key, r, Expect::Value(value))
                    };
                    let outcome = match result {
                        Ok(()) => {
                            acks.fetch_add(1, Ordering::SeqCst);
                            expect
                        }
                        Err(_) => {
                            failures += 1;
                            Expect::Unknown
                        }
                    };
                    expected.lock().unwrap().insert(key, outcome);
                    // Until a request fails after the kill: responses the node
                    // had already written still arrive after it died.
                    if killed.load(Ordering::SeqCst) && failures > 0 {
                        return failures;
                    }
                }
                unreachable!()
            }));
        }

        let deadline = Instant::now() + PATIENCE;
        while acks.load(Ordering::SeqCst) < ACKS_BEFORE_KILL {
            assert!(
                Instant::now() < deadline,
                "cycle {cycle}: writes are not being acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        node.kill9();
        killed.store(true, Ordering::SeqCst);
        let mut failures = 0;
        for w in writers {
            failures += w.await.unwrap();
        }
        // Every writer went on until the dead node failed one of its requests.
        assert!(
            failures >= WRITERS,
            "cycle {cycle}: the node kept answering after kill -9"
        );
        total_acked += acks.load(Ordering::SeqCst);

        node.start().await;
        let expected = expected.lock().unwrap().clone();
        let mut kv = node.kv();
        let (mut checked, mut unknown) = (0, 0);
        for (key, want) in &expected {
            let got = kv
                .read(proto::ReadRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            match want {
                Expect::Value(v) => {
                    assert!(got.found, "cycle {cycle}: acknowledged write {key} lost");
                    assert_eq!(&got.value, v, "cycle {cycle}: {key} has the wrong value");
                    checked += 1;
                }
                Expect::Absent => {
                    assert!(
                        !got.found,
                        "cycle {cycle}: acknowledged delete of {key} lost"
                    );
                    checked += 1;
                }
                Expect::Unknown => unknown += 1,
            }
        }
        println!(
            "cycle {cycle}: {} acked this cycle, {checked} keys verified, {unknown} in flight at kill",
            acks.load(Ordering::SeqCst)
        );
    }
    assert!(total_acked >= CYCLES * ACKS_BEFORE_KILL);
}
