//! The client crate (`client/`, meshkv-client) against real nodes:
//! failover past a dead endpoint, backoff on RESOURCE_EXHAUSTED, TLS with
//! a token, a session's read-your-writes across nodes, a watch that
//! resumes by itself, scans a page at a time, and the Admin calls.

mod common;

use std::{sync::Arc, time::Duration};

use common::{cluster, free_addrs, run_cli, Node};
use meshkv_client::{
    Client, Consistency, Error, EventKind, ReadOptions, ScanOptions, ServingStatus, WatchOptions,
    WriteOptions,
};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_endpoint_fails_over_to_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let dead = format!("http://{}", free_addrs(1)[0]);
    let client = Client::builder([dead.clone(), node.url()]).build().unwrap();
    let w = client
        .write("k", "v", WriteOptions::default())
        .await
        .expect("the second endpoint takes the write");
    assert_eq!(w.version.node, "node1");
    assert_eq!(client.current_endpoint(), node.url());
    assert!(client.retries() >= 1);
    let e = client
        .read("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((e.value.as_slice(), e.version), (&b"v"[..], w.version));

    // Without failover the dead endpoint's error comes back as it is.
    let alone = Client::builder([dead]).max_attempts(1).build().unwrap();
    let err = alone.read("k", ReadOptions::default()).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::Unavailable), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_write_queue_is_retried_with_backoff_until_every_write_lands() {
    let tmp = tempfile::tempdir().unwrap();
    // One queued write at a time, each synced: concurrent writers overflow it.
    let mut node = Node::new(tmp.path(), "node1")
        .env("MESHKV_LIMITS__WRITE_QUEUE_DEPTH", "1")
        .arg("--fsync")
        .arg("always");
    node.start().await;
    let strict = Client::builder([node.url()])
        .max_attempts(1)
        .build()
        .unwrap();
    let patient = Client::builder([node.url()])
        .max_attempts(50)
        .backoff(Duration::from_millis(5), Duration::from_millis(200))
        .build()
        .unwrap();
    let run = |client: Client| async move {
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let c = client.clone();
                tokio::spawn(
                    async move { c.write(format!("k{i}"), "v", WriteOptions::default()).await },
                )
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    };
    let refused = run(strict.clone())
        .await
        .into_iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some(Code::ResourceExhausted)))
        .count();
    assert!(refused > 0, "the queue of one overflows without retries");
    let results = run(patient.clone()).await;
    let failed: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(
        patient.retries() > 0,
        "some writes were backed off and retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_token_opens_what_its_role_allows() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let tokens = dir.join("tokens.toml");
    let (ok, out, err) = run_cli(&[
        "certs",
        "--dir",
        dir.to_str().unwrap(),
        "--node",
        "n1",
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    assert!(ok.success(), "{out}{err}");
    let ca = dir.join("ca.pem");
    let path = |f: &str| dir.join(f).to_str().unwrap().to_string();
    let mut node = Node::new(tmp.path(), "n1")
        .arg("--peer-listen")
        .arg(free_addrs(1)[0].to_string())
        .arg("--tls-cert")
        .arg(path("n1.pem"))
        .arg("--tls-key")
        .arg(path("n1.key"))
        .arg("--tls-ca")
        .arg(path("ca.pem"))
        .arg("--tokens-file")
        .arg(path("tokens.toml"))
        .tls(&ca);
    node.start().await;
    let url = node.url();
    assert!(url.starts_with("https://"), "{url}");
    let ca_pem = std::fs::read(&ca).unwrap();
    let client = |role: Option<&str>| {
        let mut b = Client::builder([url.clone()]).ca_pem(ca_pem.clone());
        if let Some(r) = role {
            b = b.token(common::token_of(&dir, r));
        }
        b.build().unwrap()
    };
    let writer = client(Some("write"));
    writer
        .write("k", "over tls", WriteOptions::default())
        .await
        .unwrap();
    let e = client(Some("read"))
        .read("k", ReadOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e.value, b"over tls");
    let err = client(Some("read"))
        .write("k", "no", WriteOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::PermissionDenied), "{err}");
    let err = client(None)
        .read("k", ReadOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::Unauthenticated), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reads_its_writes_on_another_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &[]);
    cluster::start_all(&mut nodes).await;
    let on = |i: usize| Client::builder([nodes[i].url()]).build().unwrap();
    let (n1, n2) = (on(0), on(1));
    let mine = n1.session();
    let w = mine
        .write("s", "first", WriteOptions::at(Consistency::One))
        .await
        .unwrap();
    // The same session's tokens, read on the other node.
    let there = Arc::new(n2.session());
    there.saw(&w.token);
    let e = there.read("s").await.unwrap().unwrap();
    assert_eq!(e.value, b"first");
    assert!(e.version >= w.version);
    let d = mine.delete("s", WriteOptions::default()).await.unwrap();
    there.saw(&d.token);
    assert_eq!(there.read("s").await.unwrap(), None);
    assert_eq!(there.tokens().len(), 1, "one token per origin node");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_picks_itself_up_across_a_restart_and_misses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    // Patient enough to outlast the restart: 40 attempts, up to 250 ms apart.
    let client = Client::builder([node.url()])
        .max_attempts(40)
        .backoff(Duration::from_millis(20), Duration::from_millis(250))
        .build()
        .unwrap();
    let mut watch = client.watch("w/", WatchOptions::default()).await.unwrap();
    let collect = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 20 {
            let e = watch
                .next()
                .await
                .expect("the watch resumes")
                .expect("open");
            assert!(!e.snapshot, "the node kept its changes: no snapshot");
            seen.push((e.kind, e.key));
        }
        (seen, watch.resumes())
    });
    let writer = Client::builder([node.url()]).build().unwrap();
    let put = |i: usize| {
        let writer = writer.clone();
        async move {
            writer
                .write(format!("w/{i:02}"), "v", WriteOptions::default())
                .await
                .unwrap()
        }
    };
    for i in 0..10 {
        put(i).await;
    }
    // Writes land before the watcher has seen them all, then the node stops
    // (its watches end with UNAVAILABLE) and comes back on the same port.
    assert!(node.terminate().await.success());
    node.start().await;
    for i in 10..20 {
        put(i).await;
    }
    let (seen, resumes) = tokio::time::timeout(Duration::from_secs(30), collect)
        .await
        .expect("every event within 30 s")
        .unwrap();
    let want: Vec<_> = (0..20)
        .map(|i| (EventKind::Put, format!("w/{i:02}")))
        .collect();
    assert_eq!(seen, want, "every write once, in order");
    assert!(resumes >= 1, "the stream was cut and reopened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_pages_stream_every_key_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let client = Client::builder([node.url()]).build().unwrap();
    for chunk in (0..1000).collect::<Vec<u32>>().chunks(250) {
        let items = chunk.iter().map(|i| (format!("p/{i:04}"), vec![b'x'; 8]));
        client.write_batch(items, Consistency::One).await.unwrap();
    }
    client
        .write("q/outside", "v", WriteOptions::default())
        .await
        .unwrap();
    let mut pages = client
        .scan_pages("p/", ScanOptions::default())
        .await
        .unwrap();
    let (mut keys, mut n_pages) = (Vec::new(), 0);
    while let Some(page) = pages.next_page().await.unwrap() {
        n_pages += 1;
        assert!(page.entries.iter().all(|e| e.value == b"xxxxxxxx"));
        keys.extend(page.entries.into_iter().map(|e| e.key));
    }
    let want: Vec<_> = (0..1000).map(|i| format!("p/{i:04}")).collect();
    assert_eq!(keys, want);
    assert!(n_pages > 1, "1000 keys come in more than one page");

    // A limit stops the scan with a token that goes on from there.
    let opts = ScanOptions {
        limit: 600,
        keys_only: true,
        ..ScanOptions::default()
    };
    let (first, token) = client.scan("p/", opts.limit, "").await.unwrap();
    assert_eq!((first.len(), token.is_empty()), (600, false));
    let (rest, end) = client.scan("p/", 0, token).await.unwrap();
    assert_eq!((rest.len(), end.as_str()), (400, ""));
    assert_eq!(rest[0].0, "p/0600");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_receipts_and_health_come_through_the_client() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &[]);
    cluster::start_all(&mut nodes).await;
    let client = Client::builder([nodes[0].url()]).build().unwrap();
    assert_eq!(client.health().await.unwrap(), ServingStatus::Serving);
    let w = client
        .write("r", "v", WriteOptions::at(Consistency::All))
        .await
        .unwrap();
    let receipt = client.write_status(&w.token).await.unwrap();
    assert!(receipt.applied_here);
    assert_eq!(receipt.peers.len(), 1);
    assert!(receipt.peers[0].applied, "ALL returned: the peer has it");
    let status = client.cluster_status().await.unwrap();
    assert_eq!(status.node_id, nodes[0].id);
    assert_eq!(status.peers.len(), 1);
    assert!(client.conflicts().await.unwrap().is_empty());
}
