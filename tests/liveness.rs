//! Replication never stalls and never diverges, with real processes: nodes
//! with different limits, a node whose client queue is full, anti-entropy
//! under a steady load, refusals that do not block, a peer decommissioned,
//! a node restored from an old copy, and stalled dumps.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::{
    cluster::{self, converge, dump, scrape, status, wait_until, Load},
    Node,
};
use meshkv::proto::{self, admin_client::AdminClient};

async fn write(node: &Node, key: &str, value: Vec<u8>) -> proto::Version {
    node.kv()
        .write(proto::WriteRequest {
            key: key.into(),
            value,
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("write {key} to {}: {e}", node.id))
        .into_inner()
        .version
        .expect("a version")
}

async fn read(node: &Node, key: &str) -> Option<Vec<u8>> {
    let r = node
        .kv()
        .read(proto::ReadRequest {
            key: key.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    r.found.then_some(r.value)
}

/// The reproduction: node1 accepts 2 MiB values, its peers 1 MiB.
/// A 1.5 MiB write on node1 used to be refused by the peers as a whole batch,
/// retried forever, and every later write stuck behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_over_a_peers_client_limit_never_blocks_later_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    let n1 = nodes
        .remove(0)
        .env("MESHKV_LIMITS__MAX_VALUE_BYTES", "2097152");
    nodes.insert(0, n1);
    cluster::start_all(&mut nodes).await;

    let big = vec![0xab; 1536 * 1024];
    write(&nodes[0], "big", big.clone()).await;
    for i in 0..20 {
        write(&nodes[0], &format!("small-{i}"), vec![i as u8; 8]).await;
    }
    let started = Instant::now();
    for peer in &nodes[1..] {
        wait_until(
            &format!("the 20 later writes on {}", peer.id),
            Duration::from_secs(10),
            || async {
                for i in 0..20 {
                    if read(peer, &format!("small-{i}")).await.is_none() {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        // Peers accept what the origin acknowledged: the big entry is applied.
        assert_eq!(
            read(peer, "big").await.as_deref(),
            Some(&big[..]),
            "{}",
            peer.id
        );
        // Clients of that peer are still held to its own limit.
        let err = peer
            .kv()
            .write(proto::WriteRequest {
                key: "big2".into(),
                value: big.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        // Refused by the message limit derived from it (OUT_OF_RANGE) or by
        // the value check itself (INVALID_ARGUMENT).
        assert!(
            matches!(
                err.code(),
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange
            ),
            "{err}"
        );
    }
    println!(
        "mismatched limits: 1.5 MiB entry and 20 later writes on both peers after {:?}",
        started.elapsed()
    );
}

/// A batch with malformed entries is applied but for them; the refusals are
/// reported to the sender and counted by the receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_entry_is_skipped_reported_and_counted_never_a_stall() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &["--metrics-listen", "127.0.0.1:0"]);
    cluster::start_all(&mut nodes).await;
    let m = |key: &str, node: &str, hlc: u64| proto::Mutation {
        key: key.into(),
        version: Some(proto::Version {
            hlc,
            node_id: node.into(),
        }),
        value: Some(b"v".to_vec()),
        expires_ms: 0,
    };
    let resp = nodes[1]
        .replication()
        .replicate(proto::ReplicateRequest {
            upto_seq: 0,
            // As a repair: these versions are far older than the horizon.
            repair: true,
            cluster_id: "meshkv".into(),
            origin: "node1".into(),
            mutations: vec![
                m("before", "node1", 1 << 20),
                m("bad-node", &"x".repeat(65), 1 << 20),
                m("far-beyond", "node1", u64::MAX),
                m("after", "node1", 1 << 20),
            ],
        })
        .await
        .expect("a batch with bad entries is not an error")
        .into_inner();
    assert_eq!(resp.applied, 2);
    let refused: Vec<(u32, &str)> = resp
        .refused
        .iter()
        .map(|r| (r.index, r.key.as_str()))
        .collect();
    assert_eq!(refused, [(1, "bad-node"), (2, "far-beyond")]);
    assert!(read(&nodes[1], "before").await.is_some());
    assert!(read(&nodes[1], "after").await.is_some());
    assert!(read(&nodes[1], "bad-node").await.is_none());
    let metrics = scrape(&nodes[1]).await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("meshkv_replicated_in_refused_total"))
        .unwrap_or_else(|| panic!("no refusal counter:\n{metrics}"));
    assert!(line.contains("node1") && line.ends_with(" 2"), "{line}");
}

/// Issue 22, item 1, as a user found it: one entry at the HLC's ceiling,
/// sent to node1 in node2's name, used to raise node1's clock so far that
/// every later write of node1 was refused by every peer, and anti-entropy
/// spread the entry (and the stall) to every node. Now the entry is refused
/// and the clock does not move: writes on every node reach every peer,
/// before and after anti-entropy rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_from_the_far_future_is_refused_and_replication_stays_live() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = cluster::nodes(tmp.path(), 3, &[])
        .into_iter()
        .map(|n| n.env("MESHKV_REPLICATION__ANTI_ENTROPY_INTERVAL_SECS", "1"))
        .collect();
    cluster::start_all(&mut nodes).await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let m = |key: &str, hlc: u64| proto::Mutation {
        key: key.into(),
        version: Some(proto::Version {
            hlc,
            node_id: "node2".into(),
        }),
        value: Some(b"x".to_vec()),
        expires_ms: 0,
    };
    let resp = nodes[0]
        .replication()
        .replicate(proto::ReplicateRequest {
            upto_seq: 0,
            cluster_id: "meshkv".into(),
            origin: "node2".into(),
            mutations: vec![m("p", i64::MAX as u64), m("q", (now_ms + 3_600_000) << 16)],
            repair: false,
        })
        .await
        .expect("a batch with refused entries is not an error")
        .into_inner();
    assert_eq!(resp.applied, 0);
    let refused: Vec<(u32, &str)> = resp
        .refused
        .iter()
        .map(|r| (r.index, r.key.as_str()))
        .collect();
    assert_eq!(refused, [(0, "p"), (1, "q")], "{resp:?}");
    assert!(
        resp.refused[1]
            .reason
            .contains("ahead of this node's clock"),
        "{resp:?}"
    );

    let rounds = |st: proto::ClusterStatusResponse| -> Vec<u64> {
        st.peers.iter().map(|p| p.repair_rounds).collect()
    };
    for pass in ["before", "after"] {
        let before: Vec<Vec<u64>> = {
            let mut v = Vec::new();
            for n in &nodes {
                v.push(rounds(status(n).await));
            }
            v
        };
        for (i, n) in nodes.iter().enumerate() {
            let v = write(n, &format!("k-{pass}-{i}"), b"v".to_vec()).await;
            assert!(
                v.hlc >> 16 < now_ms + 600_000,
                "{}'s clock moved to {} ms",
                n.id,
                v.hlc >> 16
            );
        }
        for (i, from) in nodes.iter().enumerate() {
            for to in &nodes {
                let key = format!("k-{pass}-{i}");
                wait_until(
                    &format!("{key} from {} on {} ({pass} anti-entropy)", from.id, to.id),
                    Duration::from_secs(10),
                    || async { read(to, &key).await.is_some() },
                )
                .await;
            }
        }
        for n in &nodes {
            assert_eq!(read(n, "p").await, None, "{}", n.id);
            assert_eq!(read(n, "q").await, None, "{}", n.id);
        }
        // Let every node finish at least two rounds with every peer.
        for (n, was) in nodes.iter().zip(&before) {
            wait_until(
                &format!("two anti-entropy rounds on {}", n.id),
                Duration::from_secs(20),
                || async {
                    let now = rounds(status(n).await);
                    now.len() == was.len() && now.iter().zip(was).all(|(a, b)| *a >= b + 2)
                },
            )
            .await;
        }
    }
}

/// Issue 22, item 2: a node with a live peer took the whole 10 s drain
/// timeout to stop, because the peer's inbound ReplicateStream never ended,
/// and Docker's 10 s grace period turned every stop into a SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_live_peers_exits_zero_within_two_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;
    for (i, n) in nodes.iter().enumerate() {
        write(n, &format!("k{i}"), b"v".to_vec()).await;
    }
    for n in &nodes {
        wait_until(
            &format!("{} streaming to every peer", n.id),
            Duration::from_secs(20),
            || async {
                let st = status(n).await;
                st.peers.len() == 2 && st.peers.iter().all(|p| p.phase == "streaming")
            },
        )
        .await;
    }
    // Stop them one by one: the first two with live peers on both sides.
    for n in nodes.iter_mut() {
        let started = Instant::now();
        let exit = n.terminate().await;
        let took = started.elapsed();
        let log = n.log();
        assert!(exit.success(), "{} exited {exit}:\n{log}", n.id);
        assert!(
            took < Duration::from_secs(2),
            "{} took {took:?} to stop:\n{log}",
            n.id
        );
        assert!(!log.contains("did not drain"), "{}:\n{log}", n.id);
        assert!(log.contains("stopped cleanly"), "{}:\n{log}", n.id);
    }
}

/// Clients flood node2 until its client queue refuses them; node1's writes
/// keep reaching node2 through the peer lane, with no replication error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_keeps_flowing_into_a_node_whose_client_queue_is_full() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &[]);
    let n2 = nodes
        .remove(1)
        .env("MESHKV_LIMITS__WRITE_QUEUE_DEPTH", "1")
        .env("MESHKV_LIMITS__MAX_BATCH", "1");
    nodes.push(n2);
    cluster::start_all(&mut nodes).await;

    let stop = Arc::new(AtomicBool::new(false));
    let shed = Arc::new(AtomicU64::new(0));
    let mut flood = Vec::new();
    for c in 0..48 {
        let (mut kv, stop, shed) = (nodes[1].kv(), stop.clone(), shed.clone());
        flood.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = kv
                    .write(proto::WriteRequest {
                        key: format!("flood-{c}-{}", i % 50),
                        value: vec![0; 512],
                        ..Default::default()
                    })
                    .await;
                if matches!(&r, Err(s) if s.code() == tonic::Code::ResourceExhausted) {
                    shed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    wait_until(
        "the flood to fill node2's client queue",
        Duration::from_secs(30),
        || async { shed.load(Ordering::Relaxed) > 100 },
    )
    .await;

    let started = Instant::now();
    // Every replication error node1 reports toward node2 along the way.
    let errors = std::sync::Mutex::new(Vec::new());
    let backlog = || async {
        let s = status(&nodes[0]).await;
        let p = &s.peers[0];
        if !p.last_error.is_empty() {
            errors.lock().unwrap().push(p.last_error.clone());
        }
        p.backlog_entries
    };
    for i in 0..200 {
        write(&nodes[0], &format!("repl-{i}"), vec![1; 64]).await;
        if i % 20 == 0 {
            backlog().await;
        }
    }
    wait_until(
        "node1's 200 writes on node2",
        Duration::from_secs(10),
        || async { backlog().await == 0 },
    )
    .await;
    let errors = errors.into_inner().unwrap();
    let took = started.elapsed();
    let shed_during = shed.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    for i in (0..200).step_by(37) {
        assert!(
            read(&nodes[1], &format!("repl-{i}")).await.is_some(),
            "repl-{i}"
        );
    }
    assert!(
        errors.is_empty(),
        "replication to the flooded node failed: {errors:?}"
    );
    println!("client queue full ({shed_during} client writes shed): 200 replicated writes landed in {took:?} without a replication error");
}

/// With rounds every 5 s and a steady write load at half the cluster's
/// measured maximum, every peer completes periodic rounds throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_rounds_complete_under_a_steady_half_load() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = cluster::nodes(tmp.path(), 3, &[])
        .into_iter()
        .map(|n| n.env("MESHKV_REPLICATION__ANTI_ENTROPY_INTERVAL_SECS", "5"))
        .collect();
    cluster::start_all(&mut nodes).await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let urls: Vec<String> = refs.iter().map(|n| n.url()).collect();

    // The maximum: as fast as 4 clients per node can go, for 5 s.
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (urls, stop) = (urls.clone(), stop.clone());
        tokio::spawn(async move {
            Load {
                keyspace: 5_000,
                ..Load::default()
            }
            .run(urls, stop)
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::Relaxed);
    let max = probe.await.unwrap().acked.len() as f64 / 5.0;
    let target = (max / 2.0).max(50.0);

    // Half of it, paced, for 60 s.
    let before: Vec<Vec<u64>> = {
        let mut v = Vec::new();
        for n in &refs {
            v.push(
                status(n)
                    .await
                    .peers
                    .iter()
                    .map(|p| p.repair_rounds)
                    .collect(),
            );
        }
        v
    };
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    let per_writer = target / urls.len() as f64 / 2.0;
    for (w, url) in urls.iter().cycle().take(urls.len() * 2).enumerate() {
        let (mut kv, stop, acked) = (common::kv_at(url), stop.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_writer));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let r = kv
                    .write(proto::WriteRequest {
                        key: format!("steady-{}", (i * 7 + w as u64) % 20_000),
                        value: format!("{w}-{i}").into_bytes(),
                        ..Default::default()
                    })
                    .await;
                if r.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    let load_started = Instant::now();
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Checked while the load still runs: rounds complete under it.
    let mut rows = Vec::new();
    for (n, before) in refs.iter().zip(&before) {
        let s = status(n).await;
        for (p, b) in s.peers.iter().zip(before) {
            rows.push(format!(
                "{}->{}: {} rounds, last complete {:.1}s ago",
                n.id,
                p.id,
                p.repair_rounds - b,
                p.last_round_age_seconds
            ));
            assert!(
                p.repair_rounds - b >= 2,
                "{} -> {}: {} rounds in 60 s",
                n.id,
                p.id,
                p.repair_rounds - b
            );
            assert!(
                (0.0..=10.0).contains(&p.last_round_age_seconds),
                "{} -> {}: last complete round {} s ago (interval 5 s)",
                n.id,
                p.id,
                p.last_round_age_seconds
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let rate = acked.load(Ordering::Relaxed) as f64 / load_started.elapsed().as_secs_f64();

    // Saturated: the streams are never caught up, and rounds still run.
    let rounds = |s: &proto::ClusterStatusResponse| -> Vec<u64> {
        s.peers.iter().map(|p| p.repair_rounds).collect()
    };
    let mut before = Vec::new();
    for n in &refs {
        before.push(rounds(&status(n).await));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let full = {
        let (urls, stop) = (urls.clone(), stop.clone());
        tokio::spawn(async move {
            Load {
                keyspace: 20_000,
                ..Load::default()
            }
            .run(urls, stop)
            .await
        })
    };
    tokio::time::sleep(Duration::from_secs(20)).await;
    let mut saturated = Vec::new();
    for (n, b) in refs.iter().zip(&before) {
        let now = rounds(&status(n).await);
        for (i, (a, b)) in now.iter().zip(b).enumerate() {
            saturated.push(a - b);
            assert!(
                a - b >= 2,
                "{} peer {i}: {} rounds in 20 s of saturation",
                n.id,
                a - b
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    let full_rate = full.await.unwrap().acked.len() as f64 / 20.0;
    converge(&refs).await;
    println!(
        "steady load: max {max:.0} writes/s, ran {rate:.0}/s for 60 s; {}; saturated at {full_rate:.0}/s for 20 s: rounds per peer {saturated:?}",
        rows.join("; ")
    );
}

/// A peer down for good holds back tombstone collection, visibly; removing it
/// from the config and restarting lets collection proceed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_peer_no_longer_holds_back_tombstone_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let short = |n: Node| short_horizon(n, 2);
    let mut nodes: Vec<Node> = cluster::nodes(tmp.path(), 3, &[])
        .into_iter()
        .map(short)
        .collect();
    cluster::start_all(&mut nodes).await;
    write(&nodes[0], "gone", b"v".to_vec()).await;
    converge(&[&nodes[0], &nodes[1], &nodes[2]]).await;
    nodes[2].kill9();
    nodes[0]
        .kv()
        .delete(proto::DeleteRequest {
            key: "gone".into(),
            expect: None,
            ..Default::default()
        })
        .await
        .unwrap();
    // node3 never acknowledged the delete: node1 keeps the tombstone, and
    // says which peer it waits for.
    wait_until(
        "node1 to report a tombstone waiting on node3",
        Duration::from_secs(30),
        || async {
            let s = status(&nodes[0]).await;
            s.peers
                .iter()
                .any(|p| p.id == "node3" && p.tombstones_waiting > 0)
        },
    )
    .await;
    assert!(
        dump(&nodes[0]).await.contains_key("gone"),
        "purged without node3"
    );

    // Decommission node3: node1 and node2 restart without it.
    let addrs: Vec<String> = nodes[..2].iter().map(|n| n.url()).collect();
    let mut kept = Vec::new();
    for (i, mut n) in nodes.drain(..2).enumerate() {
        n.terminate().await;
        let other = 1 - i;
        let fresh = short(
            Node::new(tmp.path(), &n.id)
                .at(n.addr.unwrap())
                .arg("--peer")
                .arg(format!("node{}={}", other + 1, addrs[other])),
        );
        drop(n);
        kept.push(fresh);
    }
    for n in kept.iter_mut() {
        n.spawn();
    }
    for n in kept.iter_mut() {
        n.wait_serving().await;
    }
    assert!(
        kept[0].log().contains("decommissioned"),
        "{}",
        kept[0].log()
    );
    wait_until(
        "the tombstone to be purged on both",
        Duration::from_secs(30),
        || async {
            !dump(&kept[0]).await.contains_key("gone") && !dump(&kept[1]).await.contains_key("gone")
        },
    )
    .await;
}

/// node3 is restored from a copy taken before a key was deleted and its
/// tombstone purged everywhere. It must not bring the key back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_old_copy_does_not_resurrect_deleted_keys() {
    let tmp = tempfile::tempdir().unwrap();
    // A 2 s in-flight window outlasts every commit after the deletes: the
    // tombstones are provably held only if an idle writer's visible time
    // moves on (it did not, and they were never collected).
    let short = |n: Node| short_horizon(n, 3).env("MESHKV_REPLICATION__RPC_TIMEOUT_MS", "2000");
    let mut nodes: Vec<Node> = cluster::nodes(tmp.path(), 3, &[])
        .into_iter()
        .map(short)
        .collect();
    cluster::start_all(&mut nodes).await;
    for i in 0..20 {
        write(&nodes[0], &format!("old-{i}"), b"v".to_vec()).await;
    }
    converge(&[&nodes[0], &nodes[1], &nodes[2]]).await;

    // The old copy, taken with node3 stopped.
    nodes[2].terminate().await;
    let copy = tmp.path().join("node3-copy");
    copy_dir(&nodes[2].data_dir(), &copy);
    nodes[2].start().await;

    for i in 0..10 {
        nodes[1]
            .kv()
            .delete(proto::DeleteRequest {
                key: format!("old-{i}"),
                expect: None,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let refs: Vec<&Node> = nodes.iter().collect();
    wait_until(
        "the tombstones to be purged on every node",
        Duration::from_secs(60),
        || async {
            for n in &refs {
                if dump(n).await.keys().any(|k| k == "old-0") {
                    return false;
                }
            }
            true
        },
    )
    .await;
    // The copy is now older than the tombstone TTL.
    nodes[2].terminate().await;
    std::fs::remove_dir_all(nodes[2].data_dir()).unwrap();
    copy_dir(&copy, &nodes[2].data_dir());
    nodes[2].start().await;
    // Its peers saw newer data from it than the copy holds: it knows it went
    // back in time, not merely that it was away.
    let log = nodes[2].log();
    assert!(log.contains("went back in time"), "{log}");

    let refs: Vec<&Node> = nodes.iter().collect();
    let (map, _) = converge(&refs).await;
    for i in 0..10 {
        assert!(!map.contains_key(&format!("old-{i}")), "old-{i} came back");
    }
    for i in 10..20 {
        assert!(map.contains_key(&format!("old-{i}")), "old-{i} was lost");
    }
}

/// A node with a tombstone TTL of `ttl_secs`, rounds every second and a
/// half-second in-flight window: the horizon rules play out in seconds.
fn short_horizon(n: Node, ttl_secs: u32) -> Node {
    n.env(
        "MESHKV_REPLICATION__TOMBSTONE_TTL_SECS",
        &ttl_secs.to_string(),
    )
    .env("MESHKV_REPLICATION__ANTI_ENTROPY_INTERVAL_SECS", "1")
    .env("MESHKV_REPLICATION__RPC_TIMEOUT_MS", "500")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// Clients that open dumps and never read them pin nothing: past the limit
/// they are refused, and the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_dumps_are_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    // 8 MiB: more than HTTP/2 flow control lets a dump push to a client that
    // never reads, so every held dump is still running, not finished.
    for b in 0..10 {
        let batch: Vec<proto::WriteRequest> = (0..200)
            .map(|i| proto::WriteRequest {
                key: format!("k{b}-{i}"),
                value: vec![0; 4096],
                ..Default::default()
            })
            .collect();
        node.kv()
            .write_batch(proto::WriteBatchRequest {
                writes: batch,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut held = Vec::new();
    for _ in 0..meshkv::api::admin::MAX_DUMPS {
        let s = AdminClient::new(node.channel())
            .dump(proto::DumpRequest {})
            .await
            .expect("a dump within the limit");
        held.push(s.into_inner());
    }
    let err = AdminClient::new(node.channel())
        .dump(proto::DumpRequest {})
        .await
        .expect_err("one dump too many");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err}");
    write(&node, "still-serving", b"yes".to_vec()).await;
    drop(held);
    wait_until(
        "a dump slot to free up",
        Duration::from_secs(10),
        || async {
            AdminClient::new(node.channel())
                .dump(proto::DumpRequest {})
                .await
                .is_ok()
        },
    )
    .await;
}
