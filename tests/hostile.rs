//! Hostile input against real nodes: junk messages sent in parallel by
//! callers who are not allowed to send them, and sockets that connect and
//! never speak. Each test measures what the attack costs the node.

mod common;

use std::path::Path;

use common::{Node, PATIENCE};
use meshkv::{grpc_codec::Raw, proto};
use prost::bytes::Bytes;
use tonic::{codegen::http::uri::PathAndQuery, Code};

/// Sends `body` to `method` on `node`, with `token` if any; the answer's code.
async fn send_raw(node: &Node, method: &'static str, body: Bytes, token: Option<&str>) -> Code {
    let mut grpc = tonic::client::Grpc::new(node.channel())
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    if grpc.ready().await.is_err() {
        return Code::Unavailable;
    }
    let mut req = tonic::Request::new(body);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    match grpc
        .unary(req, PathAndQuery::from_static(method), Raw)
        .await
    {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

/// 48 MiB of empty repeated items (`1a 00` for Replicate's mutations,
/// `0a 00` for WriteBatch's writes): two bytes each on the wire, a struct
/// of a hundred bytes or more each once decoded.
fn junk(tag: u8) -> Bytes {
    let mut v = Vec::with_capacity(48 << 20);
    while v.len() < 48 << 20 {
        v.extend_from_slice(&[tag, 0]);
    }
    Bytes::from(v)
}

/// The node's peak resident memory so far, in KiB.
fn peak_kib(node: &Node) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{}/status", node.pid())).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

const REPLICATE: &str = "/meshkv.v1.Replication/Replicate";
const WRITE_BATCH: &str = "/meshkv.v1.KV/WriteBatch";

const READ_TOKEN: &str = "read-read-read-read-read";
const WRITE_TOKEN: &str = "write-write-write-write";
const PEER_TOKEN: &str = "peer-peer-peer-peer-peer";

fn tokens_file(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokens.toml");
    let text = format!(
        "[[tokens]]\nname = \"reader\"\nrole = \"read\"\ntoken = \"{READ_TOKEN}\"\n\
         [[tokens]]\nname = \"writer\"\nrole = \"write\"\ntoken = \"{WRITE_TOKEN}\"\n\
         [[tokens]]\nname = \"nodes\"\nrole = \"peer\"\ntoken = \"{PEER_TOKEN}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    #[cfg(unix)]
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    path
}

/// Sends `copies` junk messages at once to each `(method, tag, token)` and
/// returns the codes, with the node's peak RSS growth in MiB.
async fn attack(
    node: &Node,
    targets: &[(&'static str, u8, Option<&str>)],
    copies: usize,
) -> (Vec<Code>, u64) {
    let before = peak_kib(node);
    let mut calls = Vec::new();
    for &(method, tag, token) in targets {
        let body = junk(tag);
        for _ in 0..copies {
            calls.push(send_raw(node, method, body.clone(), token));
        }
    }
    let codes = futures_util::future::join_all(calls).await;
    (codes, peak_kib(node).saturating_sub(before) >> 10)
}

/// The bound the README states for requests in flight, with room for the
/// HTTP/2 buffers and the allocator: 256 MiB over the peak before.
const BOUND_MIB: u64 = 256;

async fn still_serves(node: &Node) {
    let mut kv = node.kv();
    let mut req = tonic::Request::new(proto::WriteRequest {
        key: "after".into(),
        value: b"junk".to_vec(),
        ..Default::default()
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {WRITE_TOKEN}").parse().unwrap(),
    );
    tokio::time::timeout(PATIENCE, kv.write(req))
        .await
        .expect("the node answers after the attack")
        .expect("and takes a write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_from_strangers_and_readers_is_refused_before_it_is_read() {
    // Issue 24 item 1: one 48 MiB Replicate of empty mutations from a
    // caller that was no peer raised the node's peak RSS by 2.6 GiB before
    // it answered PERMISSION_DENIED; a read token could do the same with
    // WriteBatch.
    let tmp = tempfile::tempdir().unwrap();
    let tokens = tokens_file(tmp.path());
    let mut node = Node::new(tmp.path(), "n1")
        .arg("--tokens-file")
        .arg(tokens.to_str().unwrap());
    // A configured peer makes the peer services matter; it never answers.
    node.add_peer("n2", &format!("http://{}", common::free_addrs(1)[0]));
    node.spawn();
    node.wait_answering().await;
    let (codes, grew) = attack(
        &node,
        &[
            (REPLICATE, 0x1a, None),
            (REPLICATE, 0x1a, Some(READ_TOKEN)),
            (REPLICATE, 0x1a, Some(WRITE_TOKEN)),
            (WRITE_BATCH, 0x0a, Some(READ_TOKEN)),
            (WRITE_BATCH, 0x0a, None),
        ],
        4,
    )
    .await;
    println!("20 junk requests of 48 MiB from callers without the role: peak RSS +{grew} MiB");
    let want = [
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::PermissionDenied,
        Code::PermissionDenied,
        Code::Unauthenticated,
    ];
    for (i, c) in codes.iter().enumerate() {
        assert_eq!(*c, want[i / 4], "request {i}");
    }
    assert!(grew < BOUND_MIB, "peak RSS grew by {grew} MiB");
    still_serves(&node).await;
    node.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_on_an_open_node_is_bounded_by_the_receive_budget() {
    // No tokens, no TLS (loopback only): nothing authenticates, so the
    // receive budget and the decoded-cost charge are what bound memory.
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "n1");
    node.add_peer("n2", &format!("http://{}", common::free_addrs(1)[0]));
    node.spawn();
    node.wait_answering().await;
    let (codes, grew) = attack(
        &node,
        &[(REPLICATE, 0x1a, None), (WRITE_BATCH, 0x0a, None)],
        6,
    )
    .await;
    println!("12 junk requests of 48 MiB to an open node: peak RSS +{grew} MiB, answers {codes:?}");
    for c in &codes {
        assert!(
            matches!(c, Code::ResourceExhausted | Code::OutOfRange),
            "junk must be refused as too big for the node, got {c:?}"
        );
    }
    assert!(grew < BOUND_MIB, "peak RSS grew by {grew} MiB");
    still_serves(&node).await;
    node.terminate().await;
}

/// Writes a bucket key file, private as a secret must be.
fn bucket_key(dir: &Path, name: &str, secret: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, secret).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.display().to_string()
}

/// Issue 24 item 3: bucket placement was a public constant. With a bucket
/// key it is the cluster's secret; nodes that place keys otherwise are
/// refused anti-entropy with a reason that names the fix, and a node given
/// the cluster's key rebuilds its index and converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_runs_only_between_nodes_with_the_same_bucket_key() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = bucket_key(
        tmp.path(),
        "ours.key",
        "a secret of the cluster, 32 bytes\n",
    );
    let other = bucket_key(
        tmp.path(),
        "other.key",
        "not the same secret at all......\n",
    );
    let var = "MESHKV_REPLICATION__BUCKET_KEY_FILE";
    let mut nodes: Vec<Node> = common::cluster::nodes(tmp.path(), 2, &[])
        .into_iter()
        .zip([&ours, &other])
        .map(|(n, key)| {
            n.env(var, key)
                .env("MESHKV_REPLICATION__ANTI_ENTROPY_INTERVAL_SECS", "1")
        })
        .collect();
    for n in nodes.iter_mut() {
        n.spawn();
        n.wait_answering().await;
    }
    for (node, key) in nodes.iter().zip(["on-1", "on-2"]) {
        let write = proto::WriteRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        };
        node.kv().write(write).await.unwrap();
    }
    common::cluster::wait_until("the refusal in node1's status", PATIENCE, || async {
        let s = common::cluster::status(&nodes[0]).await;
        s.peers[0].last_error.contains("bucket key")
    })
    .await;
    let s = common::cluster::status(&nodes[0]).await;
    assert!(
        s.peers[0]
            .last_error
            .contains("replication.bucket_key_file"),
        "names the fix: {}",
        s.peers[0].last_error
    );
    // node2 gets the cluster's key: it rebuilds its index at start-up,
    // rounds succeed, and both nodes hold the same map.
    assert!(nodes[1].terminate().await.success());
    nodes[1].set_env(var, &ours);
    nodes[1].start().await;
    assert!(
        nodes[1].log().contains("rebuilding the anti-entropy index"),
        "{}",
        nodes[1].log()
    );
    nodes[0].wait_serving().await;
    let (map, _) = common::cluster::converge(&[&nodes[0], &nodes[1]]).await;
    assert!(
        map.contains_key("on-1") && map.contains_key("on-2"),
        "{map:?}"
    );
    let (a, b) = (
        common::cluster::status(&nodes[0]).await,
        common::cluster::status(&nodes[1]).await,
    );
    assert_eq!(a.fingerprint, b.fingerprint);
}
