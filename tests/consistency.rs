//! Consistency levels, write tokens, receipts and read repair, on three
//! real nodes: a peer paused by SIGSTOP, and a stream cut by a proxy.

mod common;

use std::time::{Duration, Instant};

use common::{
    cluster::{self, ver},
    free_addrs,
    proxy::Proxy,
    run_cli, Node, PATIENCE,
};
use meshkv::proto::{self, admin_client::AdminClient, kv_client::KvClient};
use tonic::{transport::Channel, Code};

/// No periodic anti-entropy: only the streams (and read repair) move data,
/// so what a test sees is what they did.
const NO_ROUNDS: (&str, &str) = ("MESHKV_REPLICATION__ANTI_ENTROPY_INTERVAL_SECS", "3600");

fn timed<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

async fn write(
    kv: &mut KvClient<Channel>,
    key: &str,
    value: &str,
    level: proto::Consistency,
    timeout: Duration,
) -> Result<proto::WriteResponse, tonic::Status> {
    kv.write(timed(
        proto::WriteRequest {
            key: key.into(),
            text: value.into(),
            consistency: level.into(),
            ..Default::default()
        },
        timeout,
    ))
    .await
    .map(|r| r.into_inner())
}

async fn read(
    kv: &mut KvClient<Channel>,
    key: &str,
    level: proto::Consistency,
    after: &[&str],
    timeout: Duration,
) -> Result<Option<String>, tonic::Status> {
    let r = kv
        .read(timed(
            proto::ReadRequest {
                key: key.into(),
                as_text: true,
                consistency: level.into(),
                after: after.iter().map(|t| t.to_string()).collect(),
            },
            timeout,
        ))
        .await?
        .into_inner();
    Ok(r.found.then_some(r.text))
}

async fn write_status(node: &Node, token: &str) -> proto::WriteStatusResponse {
    AdminClient::new(node.channel())
        .write_status(proto::WriteStatusRequest {
            token: token.into(),
        })
        .await
        .expect("write status")
        .into_inner()
}

fn applied(s: &proto::WriteStatusResponse, peer: &str) -> bool {
    s.peers.iter().any(|p| p.peer == peer && p.applied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_waits_for_a_paused_peer_and_names_it_while_quorum_answers() {
    use proto::Consistency::*;
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;
    let mut kv = nodes[0].kv();
    write(&mut kv, "warm", "up", All, PATIENCE).await.unwrap();

    nodes[2].signal("STOP");
    let started = Instant::now();
    let err = write(&mut kv, "k", "all", All, Duration::from_millis(1500))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the node answers before the caller's deadline"
    );
    let msg = err.message();
    assert!(
        msg.contains("peers [node2]") && msg.contains("replicating to [node3]"),
        "{msg}"
    );
    let token = msg.rsplit("its token is ").next().unwrap().trim();
    let receipt = write_status(&nodes[0], token).await;
    assert!(receipt.applied_here && applied(&receipt, "node2") && !applied(&receipt, "node3"));

    // A majority (node1 and node2) is up: QUORUM answers.
    let started = Instant::now();
    let ok = write(&mut kv, "q", "quorum", Quorum, Duration::from_secs(10)).await;
    assert!(ok.is_ok(), "{ok:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // Nothing was rolled back: once node3 runs again it gets both.
    nodes[2].signal("CONT");
    let mut kv3 = nodes[2].kv();
    cluster::wait_until("node3 has both writes", PATIENCE, || {
        let mut kv3 = kv3.clone();
        async move {
            read(&mut kv3, "k", One, &[], PATIENCE).await.ok().flatten() == Some("all".into())
                && read(&mut kv3, "q", One, &[], PATIENCE).await.ok().flatten()
                    == Some("quorum".into())
        }
    })
    .await;
    let receipt = write_status(&nodes[0], token).await;
    assert!(
        applied(&receipt, "node2") && applied(&receipt, "node3"),
        "{receipt:?}"
    );
    assert_eq!(
        read(&mut kv3, "k", One, &[token], PATIENCE).await.unwrap(),
        Some("all".into())
    );
    let url = nodes[0].url();
    let (code, out, err) = run_cli(&["status", "--write-token", token, "--endpoint", &url]);
    assert!(code.success(), "{out}{err}");
    assert!(out.contains("node3") && out.contains("applied"), "{out}");
    // The CLI passes tokens with --after, and prints a write's token.
    let url3 = nodes[2].url();
    let (code, out, err) = run_cli(&["get", "k", "--after", token, "--endpoint", &url3]);
    assert!(code.success() && out == "all", "{out}{err}");
    let (code, out, err) = run_cli(&["put", "c", "v", "--consistency", "all", "--endpoint", &url]);
    assert!(code.success(), "{out}{err}");
    assert!(
        out.trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .starts_with("t1.node1."),
        "{out}"
    );
}

/// node1's stream to node2 runs through a proxy the test cuts; every other
/// link is direct.
async fn cut_cluster(root: &std::path::Path) -> (Vec<Node>, Proxy) {
    let addrs = free_addrs(3);
    let proxy = Proxy::to(addrs[1]).await;
    let url = |i: usize| format!("http://{}", addrs[i]);
    let peers = [
        vec![("node2", proxy.url()), ("node3", url(2))],
        vec![("node1", url(0)), ("node3", url(2))],
        vec![("node1", url(0)), ("node2", url(1))],
    ];
    let mut nodes: Vec<Node> = peers
        .iter()
        .enumerate()
        .map(|(i, ps)| {
            let mut n = Node::new(root, &format!("node{}", i + 1))
                .at(addrs[i])
                .env(NO_ROUNDS.0, NO_ROUNDS.1);
            for (id, u) in ps {
                n.add_peer(id, u);
            }
            n
        })
        .collect();
    cluster::start_all(&mut nodes).await;
    (nodes, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_read_waits_for_a_cut_stream_and_never_answers_the_old_value() {
    use proto::Consistency::*;
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, proxy) = cut_cluster(tmp.path()).await;
    let (mut kv1, mut kv2) = (nodes[0].kv(), nodes[1].kv());
    write(&mut kv1, "k", "old", All, PATIENCE).await.unwrap();

    proxy.cut();
    let new = write(&mut kv1, "k", "new", Quorum, PATIENCE).await.unwrap();
    assert_eq!(ver(&new.version).1, "node1");
    let token = new.token.as_str();
    // Without the token node2 answers what it has: the stream is cut.
    assert_eq!(
        read(&mut kv2, "k", One, &[], PATIENCE).await.unwrap(),
        Some("old".into())
    );
    // With it, it waits, then fails within the deadline; never the old value.
    let started = Instant::now();
    let err = read(&mut kv2, "k", One, &[token], Duration::from_millis(1000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains("node1's log up to"),
        "{}",
        err.message()
    );
    assert!(started.elapsed() < Duration::from_millis(1000));
    let receipt = write_status(&nodes[0], token).await;
    assert!(
        applied(&receipt, "node3") && !applied(&receipt, "node2"),
        "{receipt:?}"
    );
    // Another node may say only what it applied itself.
    let elsewhere = write_status(&nodes[2], token).await;
    assert!(
        elsewhere.applied_here && elsewhere.peers.is_empty(),
        "{elsewhere:?}"
    );

    // A read that is waiting when the stream comes back gets the write.
    let later = write(&mut kv1, "k", "newer", One, PATIENCE).await.unwrap();
    let waiting = {
        let (mut kv2, token) = (kv2.clone(), later.token.clone());
        tokio::spawn(async move {
            read(
                &mut kv2,
                "k",
                One,
                &[token.as_str()],
                Duration::from_secs(30),
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the read waits for the token");
    proxy.heal();
    assert_eq!(waiting.await.unwrap().unwrap(), Some("newer".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_read_answers_the_newest_copy_and_repairs_the_stale_node() {
    use proto::Consistency::*;
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, proxy) = cut_cluster(tmp.path()).await;
    let (mut kv1, mut kv2) = (nodes[0].kv(), nodes[1].kv());
    write(&mut kv1, "k", "old", All, PATIENCE).await.unwrap();

    // node2 is cut off from node1's stream, so it is the stale minority.
    proxy.cut();
    write(&mut kv1, "k", "new", Quorum, PATIENCE).await.unwrap();
    assert_eq!(
        read(&mut kv2, "k", One, &[], PATIENCE).await.unwrap(),
        Some("old".into())
    );
    assert_eq!(
        read(&mut kv2, "k", Quorum, &[], PATIENCE).await.unwrap(),
        Some("new".into())
    );
    // Repaired in place: with the stream still cut, ONE now sees it.
    assert_eq!(
        read(&mut kv2, "k", One, &[], PATIENCE).await.unwrap(),
        Some("new".into())
    );
    assert_eq!(
        read(&mut kv2, "k", All, &[], PATIENCE).await.unwrap(),
        Some("new".into())
    );
    // A key nobody holds reads as absent at every level.
    assert_eq!(
        read(&mut kv2, "none", All, &[], PATIENCE).await.unwrap(),
        None
    );
}

async fn conflicts(node: &Node) -> Vec<proto::Conflict> {
    AdminClient::new(node.channel())
        .conflicts(proto::ConflictsRequest {})
        .await
        .expect("conflicts")
        .into_inner()
        .conflicts
}

fn peer_status(s: &proto::ClusterStatusResponse, id: &str) -> proto::PeerStatus {
    s.peers.iter().find(|p| p.id == id).expect("peer").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_on_two_nodes_are_counted_and_listed_as_conflicts() {
    use proto::{conflict::Kind, Consistency::*};
    let tmp = tempfile::tempdir().unwrap();
    let (nodes, proxy) = cut_cluster(tmp.path()).await;
    let (mut kv1, mut kv2) = (nodes[0].kv(), nodes[1].kv());
    // node2 cannot see node1's write: the two are concurrent.
    proxy.cut();
    let a = write(&mut kv1, "k", "a", One, PATIENCE).await.unwrap();
    let b = write(&mut kv2, "k", "b", One, PATIENCE).await.unwrap();
    let (a, b) = (ver(&a.version), ver(&b.version));
    assert!(b > a, "node2 wrote later: {b:?} > {a:?}");
    // node2's write reaches node1 and replaces node1's own value, which
    // node2 had not seen.
    cluster::wait_until("node1 lists the replacement", PATIENCE, || async {
        conflicts(&nodes[0]).await.iter().any(|c| {
            c.kind() == Kind::Replaced
                && c.key == "k"
                && ver(&c.kept) == b
                && ver(&c.lost) == a
                && c.peer == "node2"
        })
    })
    .await;
    assert_eq!(
        peer_status(&cluster::status(&nodes[0]).await, "node2").conflicts_replaced,
        1
    );
    // Once node1's stream gets through, its write loses on node2.
    proxy.heal();
    cluster::wait_until("node2 lists the lost write", PATIENCE, || async {
        conflicts(&nodes[1]).await.iter().any(|c| {
            c.kind() == Kind::Lost
                && c.key == "k"
                && ver(&c.kept) == b
                && ver(&c.lost) == a
                && c.peer == "node1"
        })
    })
    .await;
    let s2 = cluster::status(&nodes[1]).await;
    assert_eq!(peer_status(&s2, "node1").conflicts_lost, 1);
    // An ordinary update is no conflict: node1 now rewrites what it has seen.
    write(&mut kv1, "k", "c", All, PATIENCE).await.unwrap();
    assert_eq!(
        peer_status(&cluster::status(&nodes[1]).await, "node1").conflicts_lost,
        1
    );
    assert_eq!(
        peer_status(&cluster::status(&nodes[1]).await, "node1").conflicts_replaced,
        0
    );
    let (code, out, err) = common::run_cli(&["conflicts", "--endpoint", &nodes[1].url()]);
    assert!(code.success() && out.starts_with("LOST\tk\t"), "{out}{err}");
}

/// libfaketime, when installed: it shifts a process's wall clock and
/// leaves its monotonic clock alone.
fn faketime_lib() -> Option<String> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_clock_runs_ahead_shows_its_offset_and_is_warned_about() {
    let Some(lib) = faketime_lib() else {
        return common::skip_without("faketime", "apt-get install faketime");
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &[]);
    // 40 s ahead: inside max_clock_skew_ms (60 s), past half of it.
    nodes[1] = std::mem::replace(&mut nodes[1], Node::new(tmp.path(), "unused"))
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME", "+40s")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    cluster::start_all(&mut nodes).await;
    let mut kv2 = nodes[1].kv();
    write(&mut kv2, "k", "v", proto::Consistency::All, PATIENCE)
        .await
        .unwrap();
    let mut kv1 = nodes[0].kv();
    write(&mut kv1, "k2", "v", proto::Consistency::All, PATIENCE)
        .await
        .unwrap();
    let offset = |s: &proto::ClusterStatusResponse, id: &str| {
        let p = peer_status(s, id);
        (p.clock_samples > 0).then_some(p.clock_offset_ms)
    };
    let ahead = offset(&cluster::status(&nodes[0]).await, "node2").expect("node1 has samples");
    assert!(
        (38_000..=42_000).contains(&ahead),
        "node1 sees node2 {ahead} ms ahead"
    );
    let behind = offset(&cluster::status(&nodes[1]).await, "node1").expect("node2 has samples");
    assert!(
        (-42_000..=-38_000).contains(&behind),
        "node2 sees node1 {behind} ms off"
    );
    let (code, out, err) = common::run_cli(&["status", "--endpoint", &nodes[0].url()]);
    assert!(
        code.success() && out.contains("CLOCK_OFFSET_MS"),
        "{out}{err}"
    );
    assert!(out.contains(&format!("{ahead:+}")), "{out}");
    assert!(
        nodes[0]
            .log()
            .contains("more than half of max_clock_skew_ms"),
        "node1 warns about node2's clock"
    );
}
