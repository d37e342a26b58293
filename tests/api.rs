//! The client API beyond Write, Read and Delete, on real nodes: Scan,
//! compare-and-set and TTL (and Watch), through tonic, grpcurl and the CLI.

mod common;

use std::time::Duration;

use common::{
    cluster::{self, ver},
    grpcurl, run_cli, Node, PATIENCE,
};
use meshkv::proto::{self, expect::State};
use tonic::Code;

/// What `kv` holds for `key`.
async fn read(
    kv: &mut proto::kv_client::KvClient<tonic::transport::Channel>,
    key: &str,
) -> proto::ReadResponse {
    kv.read(proto::ReadRequest {
        key: key.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

fn write(key: &str, value: &str) -> proto::WriteRequest {
    proto::WriteRequest {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

#[tokio::test]
async fn grpcurl_and_the_cli_scan_a_prefix_in_key_order_and_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let mut kv = node.kv();
    let writes = (0..600)
        .map(|i| write(&format!("user/{i:04}"), &format!("v{i}")))
        .chain([write("other", "x"), write("user0", "not under user/")])
        .collect();
    kv.write_batch(proto::WriteBatchRequest {
        writes,
        ..Default::default()
    })
    .await
    .unwrap();
    kv.delete(proto::DeleteRequest {
        key: "user/0001".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // The whole prefix through tonic: pages, in order, each key once.
    let mut stream = kv
        .scan(proto::ScanRequest {
            prefix: "user/".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let (mut keys, mut pages) = (Vec::new(), 0);
    while let Some(page) = stream.message().await.unwrap() {
        pages += 1;
        keys.extend(page.entries.into_iter().map(|e| e.key));
    }
    let want: Vec<String> = (0..600)
        .filter(|i| *i != 1)
        .map(|i| format!("user/{i:04}"))
        .collect();
    assert_eq!(keys, want);
    assert!(pages >= 3, "{pages} pages");

    // grpcurl: a range with a limit, then the rest from its page token.
    let addr = node.addr.unwrap().to_string();
    let body = r#"{"start":"user/0100","end":"user/0200","limit":60,"asText":true}"#;
    let (ok, out) = grpcurl(&["-plaintext", "-d", body, &addr, "meshkv.v1.KV/Scan"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"key\": \"user/0100\""), "{out}");
    assert!(out.contains("\"text\": \"v159\""), "{out}");
    assert!(!out.contains("user/0160"), "{out}");
    let token = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"nextPageToken\": \""))
        .map(|t| t.trim_end_matches('"').to_string())
        .unwrap_or_else(|| panic!("no page token in {out}"));
    let body = format!(
        r#"{{"start":"user/0100","end":"user/0200","pageToken":"{token}","keysOnly":true}}"#
    );
    let (ok, out) = grpcurl(&["-plaintext", "-d", &body, &addr, "meshkv.v1.KV/Scan"]);
    assert!(ok, "{out}");
    assert!(out.contains("\"key\": \"user/0160\""), "{out}");
    assert!(out.contains("\"key\": \"user/0199\""), "{out}");
    assert!(
        !out.contains("user/0159") && !out.contains("user/0200"),
        "{out}"
    );
    let (ok, out) = grpcurl(&[
        "-plaintext",
        "-d",
        r#"{"prefix":"a","start":"b"}"#,
        &addr,
        "meshkv.v1.KV/Scan",
    ]);
    assert!(!ok && out.contains("InvalidArgument"), "{out}");

    // The CLI prints key and value per line.
    let url = node.url();
    let (status, stdout, stderr) = run_cli(&["scan", "user/000", "--endpoint", &url]);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "user/0000\tv0");
    assert_eq!(lines.len(), 9, "{stdout}");
    let (status, _, stderr) = run_cli(&["scan", "user/", "--limit", "5", "--endpoint", &url]);
    assert!(
        status.success() && stderr.contains("--page-token s1."),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_increments_from_two_clients_lose_no_update() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    const EACH: u64 = 100;
    let client = |mut kv: proto::kv_client::KvClient<_>| async move {
        let (mut done, mut conflicts) = (0, 0);
        while done < EACH {
            let cur = kv
                .read(proto::ReadRequest {
                    key: "counter".into(),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let (n, expect) = if cur.found {
                let n: u64 = String::from_utf8(cur.value).unwrap().parse().unwrap();
                (n, State::Version(cur.version.unwrap()))
            } else {
                (0, State::Absent(true))
            };
            let req = proto::WriteRequest {
                expect: Some(proto::Expect {
                    state: Some(expect),
                }),
                ..write("counter", &(n + 1).to_string())
            };
            match kv.write(req).await {
                Ok(_) => done += 1,
                Err(s) if s.code() == Code::FailedPrecondition => {
                    assert!(s.message().contains("counter"), "{}", s.message());
                    conflicts += 1;
                }
                Err(s) => panic!("{s}"),
            }
        }
        conflicts
    };
    let (a, b) = tokio::join!(
        tokio::spawn(client(node.kv())),
        tokio::spawn(client(node.kv()))
    );
    let conflicts = a.unwrap() + b.unwrap();
    let end = read(&mut node.kv(), "counter").await;
    assert_eq!(
        String::from_utf8(end.value).unwrap(),
        (2 * EACH).to_string()
    );
    println!(
        "cas: {} increments, {conflicts} retried after a conflict",
        2 * EACH
    );

    // The CLI: --if-absent on a key that exists fails and says why.
    let url = node.url();
    let (status, _, stderr) = run_cli(&["put", "counter", "0", "--if-absent", "--endpoint", &url]);
    assert!(!status.success(), "a conditional put over a live key");
    assert!(stderr.contains("expected the key to be absent"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_with_a_1s_ttl_reads_as_absent_on_all_three_nodes_once_it_expires() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;
    let mut events = watch(&nodes[2], "", "").await;
    let resp = nodes[0]
        .kv()
        .write(proto::WriteRequest {
            ttl_ms: 1_000,
            ..write("session", "alive")
        })
        .await
        .unwrap()
        .into_inner();
    let version = ver(&resp.version);
    let expires_ms = (version.0 >> 16) + 1_000;
    for n in &nodes {
        // Replicated with its expiry (if it arrived before it expired).
        let r = read(&mut n.kv(), "session").await;
        if r.version.is_some() {
            assert_eq!(r.expires_ms, expires_ms, "{}", n.id);
        }
    }
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    while now_ms() < expires_ms + 50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in &nodes {
        let mut kv = n.kv();
        cluster::wait_until("the key's version on every node", PATIENCE, || {
            let mut kv = kv.clone();
            async move { read(&mut kv, "session").await.version.is_some() }
        })
        .await;
        let r = read(&mut kv, "session").await;
        assert!(!r.found, "{} still shows an expired key", n.id);
        assert!(r.value.is_empty());
        assert_eq!(ver(&r.version), version, "{}", n.id);
        let scanned = kv
            .scan(proto::ScanRequest::default())
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap();
        assert!(scanned.is_none(), "{}: a scan shows an expired key", n.id);
    }
    // node3's watcher saw the value arrive, then expire.
    let expired = tokio::time::timeout(PATIENCE, async {
        loop {
            let ev = events.message().await.unwrap().expect("the watch ended");
            if ev.kind == proto::watch_event::Kind::Expire as i32 {
                return ev;
            }
        }
    })
    .await
    .expect("an expiry event");
    assert_eq!(expired.key, "session");
    assert_eq!(ver(&expired.version), version);
}

/// A KV client whose calls have no deadline: for watches, which last.
fn untimed_kv(node: &Node) -> proto::kv_client::KvClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy();
    proto::kv_client::KvClient::new(channel)
}

type Events = tonic::Streaming<proto::WatchEvent>;

async fn watch(node: &Node, prefix: &str, token: &str) -> Events {
    untimed_kv(node)
        .watch(proto::WatchRequest {
            prefix: prefix.into(),
            resume_token: token.into(),
            progress_interval_ms: 200,
            as_text: true,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Reads events until `done` holds of the (key, text) pairs of the PUTs
/// seen; returns every event read.
async fn until_puts(
    events: &mut Events,
    mut done: impl FnMut(&std::collections::BTreeMap<String, String>) -> bool,
) -> Vec<proto::WatchEvent> {
    use proto::watch_event::Kind;
    let mut puts = std::collections::BTreeMap::new();
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while !done(&puts) {
            let ev = events.message().await.unwrap().expect("the watch ended");
            if ev.kind == Kind::Put as i32 {
                puts.insert(ev.key.clone(), ev.text.clone());
            }
            all.push(ev);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out with {} puts seen: {:?}", puts.len(), all.last()));
    all
}

async fn write_keys(node: &Node, prefix: &str, range: std::ops::Range<u32>) {
    let mut kv = node.kv();
    for i in range {
        kv.write(write(
            &format!("{prefix}{i:04}"),
            &format!("{}-{i}", node.id),
        ))
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_node2_sees_writes_from_its_peers_and_resumes_across_its_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 3, &[]);
    cluster::start_all(&mut nodes).await;

    let mut events = watch(&nodes[1], "w/", "").await;
    write_keys(&nodes[0], "w/a", 0..50).await;
    write_keys(&nodes[2], "w/c", 0..50).await;
    write_keys(&nodes[0], "other/", 0..5).await;
    let seen = until_puts(&mut events, |p| p.len() >= 100).await;
    let token = seen.last().unwrap().token.clone();
    // Progress events (no key) may come between changes when the node is slow.
    let changes: Vec<_> = seen
        .iter()
        .filter(|e| e.kind != proto::watch_event::Kind::Progress as i32)
        .collect();
    assert!(
        changes.iter().all(|e| e.key.starts_with("w/")),
        "only the prefix: {changes:?}"
    );
    let origins: std::collections::BTreeSet<String> = seen
        .iter()
        .filter_map(|e| e.version.as_ref().map(|v| v.node_id.clone()))
        .collect();
    assert_eq!(origins, ["node1", "node3"].map(String::from).into());
    drop(events);

    // node2 restarts; its peers take writes while it is down and after.
    assert!(nodes[1].terminate().await.success());
    write_keys(&nodes[0], "w/a", 50..100).await;
    write_keys(&nodes[2], "w/c", 50..100).await;
    nodes[1].start().await;
    let mut events = watch(&nodes[1], "w/", &token).await;
    write_keys(&nodes[0], "w/a", 100..110).await;
    let resumed = until_puts(&mut events, |p| p.len() >= 110).await;
    // Every write made after the token, each with its value, none before.
    let mut want = std::collections::BTreeMap::new();
    for i in 50..110 {
        want.insert(format!("w/a{i:04}"), format!("node1-{i}"));
    }
    for i in 50..100 {
        want.insert(format!("w/c{i:04}"), format!("node3-{i}"));
    }
    let got: std::collections::BTreeMap<String, String> = resumed
        .iter()
        .filter(|e| e.kind == proto::watch_event::Kind::Put as i32)
        .map(|e| (e.key.clone(), e.text.clone()))
        .collect();
    assert_eq!(got, want);
    assert!(
        resumed.iter().all(|e| !e.snapshot),
        "the token was still good"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_token_gets_a_marked_snapshot_then_live_events_and_grpcurl_drives_watch() {
    use proto::watch_event::Kind;
    let tmp = tempfile::tempdir().unwrap();
    // The least the feed may keep.
    let mut node =
        Node::new(tmp.path(), "node1").env("MESHKV_STORAGE__WATCH_RETAIN_CHANGES", "4096");
    node.start().await;
    // A token from a quiet moment: the first progress event.
    let mut events = watch(&node, "s/", "").await;
    let progress = events.message().await.unwrap().unwrap();
    assert_eq!(progress.kind, Kind::Progress as i32);
    let old = progress.token.clone();
    drop(events);
    let writes: Vec<_> = (0..4200)
        .map(|i| write(&format!("s/{i:04}"), &format!("node1-{i}")))
        .collect();
    for chunk in writes.chunks(1000) {
        let writes = chunk.to_vec();
        node.kv()
            .write_batch(proto::WriteBatchRequest {
                writes,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    node.kv()
        .delete(proto::DeleteRequest {
            key: "s/0000".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // 4201 changes later, with 4096 kept: a snapshot of the 4199 live keys,
    // then live changes.
    let mut events = watch(&node, "s/", &old).await;
    let mut snap = Vec::new();
    loop {
        let ev = events.message().await.unwrap().unwrap();
        if ev.kind == Kind::SnapshotEnd as i32 {
            break;
        }
        assert!(ev.snapshot && ev.kind == Kind::Put as i32, "{ev:?}");
        snap.push(ev.key);
    }
    let want: Vec<String> = (1..4200).map(|i| format!("s/{i:04}")).collect();
    assert_eq!(snap, want);
    write_keys(&node, "s/", 4200..4201).await;
    let live = until_puts(&mut events, |p| p.contains_key("s/4200")).await;
    assert!(live.iter().all(|e| !e.snapshot));

    // grpcurl: resume from a token and see the changes after it.
    let token = live.last().unwrap().token.clone();
    write_keys(&node, "s/", 4201..4203).await;
    let addr = node.addr.unwrap().to_string();
    let body = format!(r#"{{"prefix":"s/","resumeToken":"{token}","asText":true}}"#);
    let (_, out) = grpcurl(&[
        "-plaintext",
        "-max-time",
        "3",
        "-d",
        &body,
        &addr,
        "meshkv.v1.KV/Watch",
    ]);
    assert!(
        out.contains("\"key\": \"s/4201\"") && out.contains("\"key\": \"s/4202\""),
        "{out}"
    );
    assert!(out.contains("\"text\": \"node1-4202\""), "{out}");
    assert!(!out.contains("s/4200"), "{out}");
}
