//! Three (and four) real nodes on loopback: mixed writes, a paused node, a
//! killed node, a long outage past the log, a new node, bounded memory, and
//! what status and metrics show along the way.

mod common;

use std::{
    sync::{atomic::AtomicBool, atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use common::{
    cluster::{self, check_acked, converge, dump, rss_kib, scrape, status, Load},
    free_addrs, run_cli, Node, PATIENCE,
};

fn urls(nodes: &[&Node]) -> Vec<String> {
    nodes.iter().map(|n| n.url()).collect()
}

/// Polls `cond` until it holds, for at most twice the usual patience.
async fn wait_until<F, Fut>(what: &str, cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    cluster::wait_until(what, PATIENCE * 2, cond).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_writes_on_all_nodes_converge_to_the_highest_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;
    let refs: Vec<&Node> = nodes.iter().collect();

    let load = Load {
        clients_per_node: 4,
        ops: 834,
        keyspace: 400,
        ..Load::default()
    };
    let out = load
        .run(urls(&refs), Arc::new(AtomicBool::new(false)))
        .await;
    assert_eq!(out.failed, 0);
    assert!(out.acked.len() >= 10_000, "{} writes", out.acked.len());

    let (dump, took) = converge(&refs).await;
    let keys = check_acked(&dump, &out.acked, true);
    let tombstones = dump.values().filter(|(_, v)| v.is_none()).count();
    println!(
        "mixed: {} writes acknowledged over 3 nodes, {keys} keys ({tombstones} deleted), identical on all 3 after {took:?}",
        out.acked.len()
    );
    assert!(tombstones > 0, "the load deletes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_paused_for_20s_converges_after_sigcont_and_status_shows_its_backlog() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &["--metrics-listen", "127.0.0.1:0"]);
    cluster::start_all(&mut nodes).await;
    let refs: Vec<&Node> = nodes.iter().collect();

    refs[2].signal("STOP");
    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        clients_per_node: 2,
        ..Load::default()
    };
    let live = urls(&refs[..2]);
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { load.run(live, stop).await })
    };

    // `meshkv status` on node1 shows node3's backlog and lag growing.
    let endpoint = refs[0].url();
    let node3_row = |out: &str| -> (u64, f64) {
        let row = out
            .lines()
            .find(|l| l.starts_with("node3 "))
            .expect("node3 row")
            .to_string();
        let cols: Vec<&str> = row.split_whitespace().collect();
        (cols[5].parse().unwrap(), cols[7].parse().unwrap())
    };
    let paused_at = Instant::now();
    let status_table = || {
        let (s, out, err) = run_cli(&["status", "--endpoint", &endpoint]);
        assert!(s.success(), "meshkv status failed: {err}");
        out
    };
    let mut b1 = 0;
    wait_until("a backlog for node3 in meshkv status", || {
        b1 = node3_row(&status_table()).0;
        async move { b1 > 0 }
    })
    .await;
    let (mut b2, mut lag2, mut out2) = (0, 0.0, String::new());
    wait_until("node3's backlog and lag to grow", || {
        out2 = status_table();
        (b2, lag2) = node3_row(&out2);
        let grown = b2 > b1 && lag2 >= 3.0;
        async move { grown }
    })
    .await;
    println!("status during the pause:\n{out2}");
    assert!(b2 > b1, "backlog should grow: {b1} then {b2}");
    assert!(lag2 >= 3.0, "lag should grow with the pause: {lag2}");

    // Metrics on node1 say the same.
    let metrics = scrape(refs[0]).await;
    assert!(
        metrics.contains("meshkv_peer_backlog_entries{peer=\"node3\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshkv_requests_total{method=\"write\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("meshkv_request_duration_seconds_bucket"),
        "{metrics}"
    );
    for stage in ["writer_commit", "replicate_round_trip"] {
        assert!(
            metrics.contains(&format!(
                "meshkv_stage_duration_seconds_bucket{{stage=\"{stage}\""
            )),
            "{stage}: {metrics}"
        );
    }
    assert!(
        metrics.contains("meshkv_replication_delay_seconds_bucket{origin=\"node2\""),
        "{metrics}"
    );

    // The scenario is a 20 s pause: that is its length, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(paused_at.elapsed())).await;
    stop.store(true, Ordering::SeqCst);
    let out = running.await.unwrap();
    assert_eq!(out.failed, 0);
    refs[2].signal("CONT");

    let (dump, took) = converge(&refs).await;
    let keys = check_acked(&dump, &out.acked, true);
    let (_, out3, _) = run_cli(&["status", "--endpoint", &endpoint]);
    assert_eq!(node3_row(&out3).0, 0, "backlog drained:\n{out3}");
    println!(
        "pause: {} writes while node3 was stopped 20 s; {keys} keys identical on all 3 {took:?} after SIGCONT",
        out.acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_load_loses_nothing_acknowledged() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = Load {
        clients_per_node: 3,
        ..Load::default()
    };
    let all = urls(&nodes.iter().collect::<Vec<_>>());
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move { load.run(all, stop).await })
    };
    wait_until("node2 to take 300 writes", || async {
        status(&nodes[1]).await.last_seq >= 300
    })
    .await;
    nodes[1].kill9();
    let before = status(&nodes[0]).await.last_seq;
    wait_until("more writes on node1", || async {
        status(&nodes[0]).await.last_seq >= before + 300
    })
    .await;
    nodes[1].start().await;
    let after = status(&nodes[1]).await.last_seq;
    wait_until("node2 to take writes again", || async {
        status(&nodes[1]).await.last_seq >= after + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    let out = running.await.unwrap();
    assert!(out.failed > 0, "the kill should have failed some requests");

    let refs: Vec<&Node> = nodes.iter().collect();
    let (dump, took) = converge(&refs).await;
    let keys = check_acked(&dump, &out.acked, false);
    println!(
        "kill: {} acknowledged, {} failed at the kill; {keys} keys all present and identical after {took:?}",
        out.acked.len(),
        out.failed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_past_the_log_is_repaired_by_anti_entropy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = cluster::nodes(tmp.path(), 3, &[])
        .into_iter()
        .map(|n| n.env("MESHKV_REPLICATION__MAX_LOG_BYTES", "65536"))
        .collect();
    cluster::start_all(&mut nodes).await;
    nodes[2].kill9();

    let load = Load {
        clients_per_node: 3,
        ops: 500,
        value_bytes: 200,
        keyspace: 2000,
        ..Load::default()
    };
    let out = load
        .run(
            urls(&[&nodes[0], &nodes[1]]),
            Arc::new(AtomicBool::new(false)),
        )
        .await;
    assert_eq!(out.failed, 0);
    // Retention runs every second: wait until node1's log has dropped records
    // node3 still needs, so that only anti-entropy can bring it level.
    wait_until("node1's log to drop what node3 needs", || async {
        let s1 = status(&nodes[0]).await;
        let n3 = s1.peers.iter().find(|p| p.id == "node3").unwrap();
        s1.log_first_seq > n3.acked_seq + 1
    })
    .await;

    nodes[2].start().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let (dump, took) = converge(&refs).await;
    let keys = check_acked(&dump, &out.acked, true);
    // Whichever side ran the round (node3 at start-up, or node1/node2 when they
    // saw the gap), anti-entropy moved the keys the log no longer held.
    let mut repaired = 0;
    for n in &nodes {
        let s = status(n).await;
        repaired += s
            .peers
            .iter()
            .filter(|p| n.id == "node3" || p.id == "node3")
            .map(|p| p.keys_repaired)
            .sum::<u64>();
    }
    assert!(repaired > 0, "no anti-entropy round repaired node3");
    println!(
        "outage: {} writes (~{} KiB) past a 64 KiB log; anti-entropy repaired {repaired} keys into node3, {keys} keys identical after {took:?}",
        out.acked.len(),
        out.acked.len() * 250 / 1024,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_with_an_empty_disk_becomes_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;
    let load = Load {
        clients_per_node: 2,
        ops: 300,
        ..Load::default()
    };
    let out = load
        .run(
            urls(&nodes.iter().collect::<Vec<_>>()),
            Arc::new(AtomicBool::new(false)),
        )
        .await;
    assert_eq!(out.failed, 0);
    // Level first: node4 promises to be as complete as the peer it repairs
    // from, so the three must agree before that peer is a fair reference.
    converge(&nodes.iter().collect::<Vec<_>>()).await;

    // Add node4 to every config and restart the three, one by one.
    let addr4 = free_addrs(1)[0];
    let url4 = format!("http://{addr4}");
    for n in nodes.iter_mut() {
        assert!(n.terminate().await.success());
        n.add_peer("node4", &url4);
        n.start().await;
    }
    let mut node4 = Node::new(tmp.path(), "node4").at(addr4);
    for n in &nodes {
        node4.add_peer(&n.id, &n.url());
    }
    node4.spawn();
    let started = Instant::now();
    node4.wait_serving().await; // SERVING only after its first repair
    let serving_after = started.elapsed();
    let complete = dump(&node4).await;
    let reference = dump(&nodes[0]).await;
    let differing: Vec<&String> = reference
        .iter()
        .filter(|(k, v)| complete.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(complete.keys().filter(|k| !reference.contains_key(*k)))
        .collect();
    assert!(
        differing.is_empty(),
        "node4 was SERVING before it was complete: {} of {} keys differ, first {:?}",
        differing.len(),
        reference.len(),
        &differing[..differing.len().min(5)]
    );
    assert!(
        node4.log().contains("first anti-entropy round done"),
        "{}",
        node4.log()
    );

    let refs: Vec<&Node> = nodes.iter().chain([&node4]).collect();
    let (dump, _) = converge(&refs).await;
    let keys = check_acked(&dump, &out.acked, true);
    println!("new node: complete ({keys} keys) and SERVING {serving_after:?} after start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_while_a_peer_is_down_for_200k_writes() {
    const WRITES: usize = 200_000;
    /// The bound this test asserts on the writing node's resident memory.
    const RSS_BOUND_MIB: u64 = 256;

    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &["--fsync", "never"]);
    cluster::start_all(&mut nodes).await;
    nodes[1].kill9();

    let pid = nodes[0].pid();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut max = 0;
            while !stop.load(Ordering::SeqCst) {
                max = max.max(rss_kib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            max
        })
    };
    let rss_start = rss_kib(pid);
    let load = Load {
        clients_per_node: 32,
        ops: WRITES / 32,
        delete_every: 0,
        keyspace: WRITES,
        value_bytes: 100,
        ..Load::default()
    };
    let t = Instant::now();
    let out = load
        .run(urls(&[&nodes[0]]), Arc::new(AtomicBool::new(false)))
        .await;
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let max_rss = sampler.await.unwrap();
    assert_eq!(out.failed, 0);
    assert_eq!(out.acked.len(), WRITES);
    let s = status(&nodes[0]).await;
    let backlog = s.peers[0].backlog_entries;
    assert!(
        backlog >= WRITES as u64,
        "node2's backlog should hold every write: {backlog}"
    );
    println!(
        "memory: {WRITES} writes in {took:?} with node2 down; backlog {backlog} entries on disk; \
         RSS {} MiB at start, at most {} MiB (bound {RSS_BOUND_MIB} MiB)",
        rss_start / 1024,
        max_rss / 1024
    );
    assert!(
        max_rss / 1024 < RSS_BOUND_MIB,
        "RSS reached {} MiB",
        max_rss / 1024
    );

    // And node2 catches up from the log when it returns.
    let t = Instant::now();
    nodes[1].start().await;
    let refs: Vec<&Node> = nodes.iter().collect();
    let (dump, _) = converge(&refs).await;
    let caught_up = t.elapsed();
    assert_eq!(
        dump.len(),
        out.acked
            .iter()
            .map(|a| &a.key)
            .collect::<std::collections::HashSet<_>>()
            .len()
    );
    println!(
        "catch-up: {backlog} entries in {caught_up:?} ({:.0} entries/s, debug build, includes restart)",
        backlog as f64 / caught_up.as_secs_f64()
    );
}
