//! Cluster helpers: start N nodes that know each other, drive load, and wait
//! for convergence by comparing fingerprints, then full dumps.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use meshkv::proto::{self, admin_client::AdminClient};
use tokio_stream::StreamExt;

use super::{free_addrs, Node, PATIENCE};

/// (hlc, node) as the cluster orders versions.
pub type Ver = (u64, String);

pub fn ver(v: &Option<proto::Version>) -> Ver {
    let v = v.as_ref().expect("a version");
    (v.hlc, v.node_id.clone())
}

/// Builds nodes `node1..=nodeN` on fixed loopback ports, each peered with all others.
pub fn nodes(root: &std::path::Path, n: usize, extra: &[&str]) -> Vec<Node> {
    let addrs = free_addrs(n);
    (0..n)
        .map(|i| {
            let mut node = Node::new(root, &format!("node{}", i + 1)).at(addrs[i]);
            for (j, a) in addrs.iter().enumerate() {
                if j != i {
                    node = node.arg("--peer").arg(format!("node{}=http://{a}", j + 1));
                }
            }
            for e in extra {
                node = node.arg(*e);
            }
            node
        })
        .collect()
}

/// Starts every node, then waits until all are SERVING.
pub async fn start_all(nodes: &mut [Node]) {
    for n in nodes.iter_mut() {
        n.spawn();
    }
    for n in nodes.iter_mut() {
        n.wait_serving().await;
    }
}

pub async fn status(node: &Node) -> proto::ClusterStatusResponse {
    AdminClient::new(node.channel())
        .cluster_status(proto::ClusterStatusRequest {})
        .await
        .expect("cluster status")
        .into_inner()
}

/// Every entry a node holds: key → (version, value or None for a tombstone).
pub async fn dump(node: &Node) -> BTreeMap<String, (Ver, Option<Vec<u8>>)> {
    let mut stream = AdminClient::new(node.channel())
        .dump(proto::DumpRequest {})
        .await
        .expect("dump")
        .into_inner();
    let mut out = BTreeMap::new();
    while let Some(m) = stream.next().await {
        let m = m.expect("dump item");
        out.insert(m.key.clone(), (ver(&m.version), m.value));
    }
    out
}

/// Waits until every node reports the same fingerprint and no backlog, then
/// checks that the full dumps are identical. Returns the dump and the wait.
pub async fn converge(nodes: &[&Node]) -> (BTreeMap<String, (Ver, Option<Vec<u8>>)>, Duration) {
    let started = Instant::now();
    let deadline = started + PATIENCE * 3;
    loop {
        let mut prints = Vec::new();
        let mut backlog = 0;
        for n in nodes {
            let s = status(n).await;
            prints.push(s.fingerprint);
            backlog += s.peers.iter().map(|p| p.backlog_entries).sum::<u64>();
        }
        if backlog == 0 && prints.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no convergence after {:?}: fingerprints {prints:x?}, backlog {backlog}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    let first = dump(nodes[0]).await;
    for n in &nodes[1..] {
        let other = dump(n).await;
        assert_eq!(
            first.len(),
            other.len(),
            "{} and {} differ in size",
            nodes[0].id,
            n.id
        );
        assert!(
            first == other,
            "{} and {} hold different maps",
            nodes[0].id,
            n.id
        );
    }
    (first, took)
}

/// One acknowledged operation: key, version, and the value (None: delete).
#[derive(Debug, Clone)]
pub struct Acked {
    pub key: String,
    pub version: Ver,
    pub value: Option<Vec<u8>>,
}

/// Load against a set of nodes until `stop`, or `ops` operations per client.
pub struct Load {
    pub clients_per_node: usize,
    pub keyspace: usize,
    pub delete_every: usize,
    pub ops: usize,
    pub value_bytes: usize,
    pub prefix: String,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            clients_per_node: 4,
            keyspace: 500,
            delete_every: 7,
            ops: usize::MAX,
            value_bytes: 32,
            prefix: "k".into(),
        }
    }
}

/// Results of a load: the acknowledged operations and the failures.
#[derive(Default)]
pub struct Outcome {
    pub acked: Vec<Acked>,
    pub failed: usize,
}

impl Load {
    /// Runs against the node URLs in `targets` (each client keeps to one node) until every
    /// client did `ops` operations or `stop` is set. Failed requests are
    /// counted and the client moves on.
    pub async fn run(&self, targets: Vec<String>, stop: Arc<AtomicBool>) -> Outcome {
        let out = Arc::new(Mutex::new(Outcome::default()));
        let mut tasks = Vec::new();
        for (t, url) in targets.iter().enumerate() {
            for c in 0..self.clients_per_node {
                let mut kv = super::kv_at(url);
                let (out, stop) = (out.clone(), stop.clone());
                let (keyspace, every, ops, vb, prefix) = (
                    self.keyspace,
                    self.delete_every,
                    self.ops,
                    self.value_bytes,
                    self.prefix.clone(),
                );
                let seed = (t * 1000 + c) as u64;
                tasks.push(tokio::spawn(async move {
                    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    for i in 0..ops {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let key = format!("{prefix}{}", x % keyspace as u64);
                        let r = if every > 0 && i % every == every - 1 {
                            kv.delete(proto::DeleteRequest {
                                key: key.clone(),
                                expect: None,
                                ..Default::default()
                            })
                            .await
                            .map(|r| (ver(&r.into_inner().version), None))
                        } else {
                            let mut value = format!("{seed}-{i}-").into_bytes();
                            value.resize(vb.max(value.len()), b'.');
                            kv.write(proto::WriteRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            })
                            .await
                            .map(|r| (ver(&r.into_inner().version), Some(value)))
                        };
                        let mut o = out.lock().unwrap();
                        match r {
                            Ok((version, value)) => o.acked.push(Acked {
                                key,
                                version,
                                value,
                            }),
                            Err(_) => o.failed += 1,
                        }
                    }
                }));
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(out).ok().unwrap().into_inner().unwrap()
    }
}

/// Checks a converged dump against acknowledged operations. With `exact`,
/// every key holds exactly its highest acknowledged version (no unacknowledged
/// writes happened); otherwise it holds that version or a newer one.
pub fn check_acked(
    dump: &BTreeMap<String, (Ver, Option<Vec<u8>>)>,
    acked: &[Acked],
    exact: bool,
) -> usize {
    let mut newest: BTreeMap<&str, &Acked> = BTreeMap::new();
    for a in acked {
        let e = newest.entry(&a.key).or_insert(a);
        if a.version > e.version {
            *e = a;
        }
    }
    for (key, want) in &newest {
        let (have_ver, have_val) = dump
            .get(*key)
            .unwrap_or_else(|| panic!("acknowledged key {key} missing everywhere"));
        if exact {
            assert_eq!(
                have_ver, &want.version,
                "{key}: not the highest version written"
            );
        } else {
            assert!(
                have_ver >= &want.version,
                "{key}: acknowledged version {:?} lost",
                want.version
            );
        }
        if have_ver == &want.version {
            assert_eq!(
                have_val, &want.value,
                "{key}: value differs from the winning write"
            );
        }
    }
    newest.len()
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The node's Prometheus text, from the metrics address it logged.
pub async fn scrape(node: &Node) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = node.metrics_addr().expect("metrics address in the log");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    body
}

/// Polls `cond` every 50 ms until it holds, for at most `within`.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
