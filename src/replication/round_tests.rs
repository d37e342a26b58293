//! One anti-entropy round against a scripted peer on loopback: what a round
//! sends, and what it does when the peer misbehaves.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{transport::Server, Request, Response, Status};

use crate::{
    clock::{from_physical_ms, SystemClock},
    config::ReplicationConfig,
    proto::{
        self,
        anti_entropy_client::AntiEntropyClient,
        anti_entropy_server::{AntiEntropy, AntiEntropyServer},
        replication_client::ReplicationClient,
        replication_server::{Replication, ReplicationServer},
    },
    replication::{
        anti_entropy::{round, Rules},
        Ctx, PeerChannel, PeerCredential,
    },
    storage::{blocking::Blocking, writer, BucketHash},
};

/// A peer that holds the given `(key, hlc)` entries (all issued by "n2"),
/// says every bucket differs, and either fails or records every Replicate.
#[derive(Clone, Default)]
struct ScriptedPeer {
    holds: Vec<(String, u64)>,
    fail_pushes: bool,
    /// Never answer a Replicate: the stream to this peer never drains.
    hang_pushes: bool,
    /// Encoded length and entry count of each Replicate it received.
    pushes: Arc<Mutex<Vec<(usize, usize)>>>,
    /// At most this many versions per BucketVersions answer, stopping
    /// inside a bucket if need be.
    page: Option<usize>,
}

/// Where the node under test (cluster "c", no secret) places keys.
fn placed() -> BucketHash {
    BucketHash::keyed("c", None)
}

fn version(hlc: u64) -> proto::Version {
    proto::Version {
        hlc,
        node_id: "n2".into(),
    }
}

#[tonic::async_trait]
impl AntiEntropy for ScriptedPeer {
    async fn digest(
        &self,
        r: Request<proto::DigestRequest>,
    ) -> Result<Response<proto::DigestResponse>, Status> {
        Ok(Response::new(proto::DigestResponse {
            buckets: (0..crate::storage::BUCKETS as u32).collect(),
            catching_up: false,
            seen_high_water: 0,
            // A peer that stamps nothing: no clock sample.
            now_ms: 0,
            // It places keys as the node under test does.
            bucket_key_id: r.into_inner().bucket_key_id,
        }))
    }

    async fn bucket_versions(
        &self,
        r: Request<proto::BucketVersionsRequest>,
    ) -> Result<Response<proto::BucketVersionsResponse>, Status> {
        let req = r.into_inner();
        let asked = req.buckets;
        let mut held: Vec<(usize, &String, u64)> = self
            .holds
            .iter()
            .filter_map(|(k, h)| {
                let b = u32::from(placed().of(k.as_bytes()));
                let i = asked.iter().position(|a| *a == b)?;
                (i > 0 || req.after_key.is_empty() || *k > req.after_key).then_some((i, k, *h))
            })
            .collect();
        held.sort();
        let (mut processed, mut resume_after) = (asked.len() as u32, String::new());
        if let Some(page) = self.page.filter(|p| held.len() > *p) {
            held.truncate(page);
            let (i, k, _) = held[page - 1];
            (processed, resume_after) = (i as u32, k.clone());
        }
        let entries = held
            .into_iter()
            .map(|(_, k, h)| proto::KeyVersion {
                key: k.clone(),
                version: Some(version(h)),
            })
            .collect();
        Ok(Response::new(proto::BucketVersionsResponse {
            entries,
            processed,
            resume_after,
        }))
    }

    async fn fetch(
        &self,
        r: Request<proto::FetchRequest>,
    ) -> Result<Response<proto::FetchResponse>, Status> {
        let keys = r.into_inner().keys;
        let mutations = self
            .holds
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, h)| proto::Mutation {
                key: k.clone(),
                version: Some(version(*h)),
                value: Some(b"theirs".to_vec()),
                expires_ms: 0,
            })
            .collect();
        Ok(Response::new(proto::FetchResponse {
            mutations,
            processed: keys.len() as u32,
        }))
    }
}

#[tonic::async_trait]
impl Replication for ScriptedPeer {
    type ReplicateStreamStream = tokio_stream::Empty<Result<proto::ReplicateResponse, Status>>;

    async fn replicate_stream(
        &self,
        _r: Request<tonic::Streaming<proto::ReplicateRequest>>,
    ) -> Result<Response<Self::ReplicateStreamStream>, Status> {
        if self.hang_pushes {
            std::future::pending::<()>().await;
        }
        Err(Status::unimplemented("scripted: rounds only"))
    }

    async fn replicate(
        &self,
        r: Request<proto::ReplicateRequest>,
    ) -> Result<Response<proto::ReplicateResponse>, Status> {
        if self.fail_pushes {
            return Err(Status::unavailable("scripted: pushes fail"));
        }
        if self.hang_pushes {
            std::future::pending::<()>().await;
        }
        let req = r.into_inner();
        let n = req.mutations.len();
        self.pushes.lock().unwrap().push((req.encoded_len(), n));
        Ok(Response::new(proto::ReplicateResponse {
            applied: n as u64,
            refused: Vec::new(),
            now_ms: 0,
        }))
    }
}

async fn serve(peer: ScriptedPeer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .add_service(AntiEntropyServer::new(peer.clone()))
            .add_service(ReplicationServer::new(peer))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

/// A node "n1" with its own store and writer, configured by `config`.
fn node(dir: &std::path::Path, config: ReplicationConfig) -> Arc<Ctx> {
    let (store, writer, seq, _join) = writer::for_tests(dir);
    Arc::new(Ctx {
        node_id: "n1".into(),
        cluster_id: "c".into(),
        store,
        writer,
        config,
        synced: tokio::sync::watch::channel(false).0,
        clock: Arc::new(SystemClock),
        seq,
        catching_up: Default::default(),
        blocking: Blocking::Pool,
        seed: Some(7),
        recovered_high_water: 0,
        incarnation: 1,
        seen_high_water: Default::default(),
        acked: tokio::sync::watch::Sender::new(0),
        conflicts: Default::default(),
    })
}

/// The peer state of the scripted peer, as a repairer would hold it.
async fn clients(
    addr: SocketAddr,
) -> (
    AntiEntropyClient<PeerChannel>,
    ReplicationClient<PeerChannel>,
) {
    let ch = PeerCredential::default().wrap(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy(),
    );
    (
        AntiEntropyClient::new(ch.clone()),
        ReplicationClient::new(ch),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_that_fails_does_not_stop_the_pull() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = node(dir.path(), ReplicationConfig::default());
    ctx.writer
        .write("push-me".into(), Some(b"ours".to_vec()))
        .await
        .unwrap();
    let addr = serve(ScriptedPeer {
        holds: vec![("pull-me".into(), from_physical_ms(1_000))],
        fail_pushes: true,
        ..ScriptedPeer::default()
    })
    .await;
    let (mut ae, mut repl) = clients(addr).await;
    let stats = round(&ctx, "n2", &mut ae, &mut repl, Rules::eager("n1"), &|_| {})
        .await
        .expect("the round goes on past a failed push");
    assert!(stats.push_error.is_some(), "{stats:?}");
    assert!(!stats.finished() && !stats.complete());
    assert_eq!(stats.pulled, 1, "{stats:?}");
    let pulled = ctx.store.get("pull-me").unwrap().expect("pulled");
    assert_eq!(pulled.value.as_deref(), Some(&b"theirs"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_too_big_for_one_answer_is_compared_in_pages() {
    // Issue 24 item 3: a bucket crafted to hold more than one answer's worth
    // of keys was answered whole and stalled every round at that bucket.
    let dir = tempfile::tempdir().unwrap();
    let ctx = node(dir.path(), ReplicationConfig::default());
    let crowded = placed().of(b"k0");
    let mut holds: Vec<(String, u64)> = (0..)
        .map(|i| format!("k{i}"))
        .filter(|k| placed().of(k.as_bytes()) == crowded)
        .take(30)
        .map(|k| (k, from_physical_ms(1_000)))
        .collect();
    holds.extend((0..5).map(|i| (format!("elsewhere-{i}"), from_physical_ms(1_000))));
    // One key of the crowded bucket is ours already, and newer.
    ctx.writer
        .write(holds[7].0.clone(), Some(b"ours".to_vec()))
        .await
        .unwrap();
    let addr = serve(ScriptedPeer {
        holds: holds.clone(),
        page: Some(4),
        ..ScriptedPeer::default()
    })
    .await;
    let (mut ae, mut repl) = clients(addr).await;
    let stats = round(&ctx, "n2", &mut ae, &mut repl, Rules::eager("n1"), &|_| {})
        .await
        .expect("the round pages through the crowded bucket");
    assert!(stats.complete(), "{stats:?}");
    assert_eq!(stats.pulled, 34, "{stats:?}");
    assert_eq!(stats.pushed, 1, "{stats:?}");
    for (k, _) in &holds {
        assert!(ctx.store.get(k).unwrap().is_some(), "{k} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_of_many_tiny_keys_fit_a_small_batch_limit_by_encoded_length() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 512;
    let ctx = node(
        dir.path(),
        ReplicationConfig {
            batch_max_bytes: budget,
            ..ReplicationConfig::default()
        },
    );
    let writes = (0..2_000)
        .map(|i| crate::storage::writer::LocalWrite::new(format!("{i}"), Some(Vec::new())))
        .collect();
    ctx.writer.write_batch(writes).await.unwrap();
    let peer = ScriptedPeer::default();
    let pushes = Arc::clone(&peer.pushes);
    let addr = serve(peer).await;
    let (mut ae, mut repl) = clients(addr).await;
    let stats = round(&ctx, "n2", &mut ae, &mut repl, Rules::eager("n1"), &|_| {})
        .await
        .unwrap();
    assert!(stats.complete(), "{stats:?}");
    assert_eq!(stats.pushed, 2_000);
    let pushes = pushes.lock().unwrap();
    assert!(pushes.len() > 10, "{} pushes", pushes.len());
    for (len, n) in pushes.iter() {
        // The envelope (cluster id, origin) comes on top of the budget.
        assert!(*len <= budget + 16, "a push of {n} entries is {len} bytes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_rounds_run_while_the_stream_never_catches_up() {
    use crate::replication::{
        peer::{Backoff, Peer},
        repair, stream,
    };
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let ctx = node(
        dir.path(),
        ReplicationConfig {
            anti_entropy_interval_secs: 1,
            rpc_timeout_ms: 600_000,
            ..ReplicationConfig::default()
        },
    );
    for i in 0..10 {
        ctx.writer
            .write(format!("k{i}"), Some(b"v".to_vec()))
            .await
            .unwrap();
    }
    let addr = serve(ScriptedPeer {
        hang_pushes: true,
        ..ScriptedPeer::default()
    })
    .await;
    let url = format!("http://{addr}");
    let channel = PeerCredential::default().wrap(
        tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect_lazy(),
    );
    let peer = Arc::new(Peer::new("n2".into(), url, 0, false));
    let shutdown = CancellationToken::new();
    let backoff = || Backoff::new(Duration::from_millis(10), Duration::from_millis(100), 1);
    let tasks = [
        tokio::spawn(stream::run(
            Arc::clone(&ctx),
            Arc::clone(&peer),
            channel.clone(),
            ctx.seq.clone(),
            backoff(),
            shutdown.clone(),
        )),
        tokio::spawn(repair::run(
            Arc::clone(&ctx),
            Arc::clone(&peer),
            channel,
            backoff(),
            shutdown.clone(),
        )),
    ];
    // Two rounds within 4 s (the interval is 1 s), waited for, not slept.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while peer.state().repair_rounds < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = peer.state();
    shutdown.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    // The stream is stuck with all ten writes in flight, and the rounds
    // (which leave those writes to it) go on regardless.
    assert_eq!(s.acked_seq, 0);
    assert!(s.repair_rounds >= 2, "{} rounds in 4 s", s.repair_rounds);
    assert!(s.last_complete_round_ms.is_some());
}
