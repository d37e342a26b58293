//! One real node: the client API through grpcurl and the CLI, bad input,
//! overload, the data-dir lock, bad config and graceful shutdown.

mod common;

use common::{grpcurl, run_cli, run_cli_bytes, run_cli_env, Node};
use meshkv::proto;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn grpcurl_lists_services_and_drives_write_read_delete_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let addr = node.addr.unwrap().to_string();

    let (ok, list) = grpcurl(&["-plaintext", &addr, "list"]);
    assert!(ok, "{list}");
    for svc in [
        "meshkv.v1.KV",
        "meshkv.v1.Replication",
        "grpc.health.v1.Health",
    ] {
        assert!(
            list.lines().any(|l| l == svc),
            "{svc} missing from:\n{list}"
        );
    }

    let call = |method: &str, body: &str| grpcurl(&["-plaintext", "-d", body, &addr, method]);

    // "hello" in base64, as grpcurl's JSON encodes protobuf bytes.
    let (ok, out) = call(
        "meshkv.v1.KV/Write",
        r#"{"key":"greeting","value":"aGVsbG8="}"#,
    );
    assert!(ok && out.contains("\"nodeId\": \"node1\""), "{out}");

    let (ok, out) = call("meshkv.v1.KV/Read", r#"{"key":"greeting"}"#);
    assert!(ok, "{out}");
    assert!(out.contains("\"found\": true"), "{out}");
    assert!(out.contains("\"value\": \"aGVsbG8=\""), "{out}");

    let (ok, out) = call("meshkv.v1.KV/Delete", r#"{"key":"greeting"}"#);
    assert!(ok && out.contains("\"hlc\""), "{out}");

    let (ok, out) = call("meshkv.v1.KV/Read", r#"{"key":"greeting"}"#);
    assert!(ok, "{out}");
    assert!(
        !out.contains("\"found\": true"),
        "deleted key still found: {out}"
    );
    assert!(
        !out.contains("aGVsbG8="),
        "deleted value still returned: {out}"
    );

    let (ok, out) = grpcurl(&["-plaintext", &addr, "grpc.health.v1.Health/Check"]);
    assert!(ok && out.contains("SERVING"), "{out}");
}

#[tokio::test]
async fn grpcurl_writes_and_reads_values_as_text() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let addr = node.addr.unwrap().to_string();
    let call = |method: &str, body: &str| grpcurl(&["-plaintext", "-d", body, &addr, method]);

    let (ok, out) = call(
        "meshkv.v1.KV/Write",
        r#"{"key":"greeting","text":"hello, wörld"}"#,
    );
    assert!(ok && out.contains("\"nodeId\": \"node1\""), "{out}");
    let (ok, out) = call("meshkv.v1.KV/Read", r#"{"key":"greeting","asText":true}"#);
    assert!(ok && out.contains("\"found\": true"), "{out}");
    assert!(out.contains("\"text\": \"hello, wörld\""), "{out}");
    assert!(
        !out.contains("\"value\"") && !out.contains("binary"),
        "{out}"
    );
    // Stored as its UTF-8 bytes: the base64 form reads the same value.
    let (ok, out) = call("meshkv.v1.KV/Read", r#"{"key":"greeting"}"#);
    assert!(ok, "{out}");
    assert!(out.contains("\"value\": \"aGVsbG8sIHfDtnJsZA==\""), "{out}");
    assert!(!out.contains("\"text\""), "{out}");

    // Both forms in one write is refused.
    let (ok, out) = call(
        "meshkv.v1.KV/Write",
        r#"{"key":"both","value":"aGk=","text":"hi"}"#,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("InvalidArgument") && out.contains("value and text"),
        "{out}"
    );

    // A value that is not UTF-8 stays in value, flagged binary.
    let (ok, out) = call("meshkv.v1.KV/Write", r#"{"key":"bin","value":"//4A"}"#);
    assert!(ok, "{out}");
    let (ok, out) = call("meshkv.v1.KV/Read", r#"{"key":"bin","asText":true}"#);
    assert!(ok, "{out}");
    assert!(
        out.contains("\"binary\": true") && out.contains("\"value\": \"//4A\""),
        "{out}"
    );
    assert!(!out.contains("\"text\""), "{out}");

    // WriteBatch items take text too.
    let (ok, out) = call(
        "meshkv.v1.KV/WriteBatch",
        r#"{"writes":[{"key":"b1","text":"one"},{"key":"b2","value":"dHdv"}]}"#,
    );
    assert!(ok, "{out}");
    for (key, want) in [("b1", "one"), ("b2", "two")] {
        let (ok, out) = call(
            "meshkv.v1.KV/Read",
            &format!(r#"{{"key":"{key}","asText":true}}"#),
        );
        assert!(
            ok && out.contains(&format!("\"text\": \"{want}\"")),
            "{out}"
        );
    }
}

#[tokio::test]
async fn the_cli_puts_gets_deletes_and_checks_health() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let url = node.url();
    let e = ["--endpoint", url.as_str()];

    let (s, out, err) = run_cli(&[&["put", "k", "v1"][..], &e].concat());
    assert!(s.success() && out.starts_with("OK "), "{out}{err}");
    let (s, out, _) = run_cli(&[&["get", "k"][..], &e].concat());
    assert!(s.success());
    assert_eq!(out, "v1", "redirected output is the value, byte for byte");
    let (s, _, _) = run_cli(&[&["delete", "k"][..], &e].concat());
    assert!(s.success());
    let (s, out, err) = run_cli(&[&["get", "k"][..], &e].concat());
    assert_eq!(s.code(), Some(1), "{out}{err}");
    assert!(err.contains("not found"), "{err}");
    let (s, out, _) = run_cli(&[&["health"][..], &e].concat());
    assert!(s.success());
    assert_eq!(out.trim(), "SERVING");

    // A node that is not there is an error (exit 2), not "not found".
    node.kill9();
    let (s, _, err) = run_cli(&[&["get", "k"][..], &e].concat());
    assert_eq!(s.code(), Some(2), "{err}");
    let (s, _, _) = run_cli(&[&["health"][..], &e].concat());
    assert_ne!(s.code(), Some(0));
}

#[tokio::test]
async fn a_binary_value_put_from_stdin_reads_back_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let url = node.url();
    let e = ["--endpoint", url.as_str()];

    // Every byte value, in 64 KiB, with no newline at the end.
    let value: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i * 7 + i / 256) as u8)
        .chain([0xff, 0x00])
        .collect();
    assert!((0..=255u8).all(|b| value.contains(&b)));
    let (s, out, err) = run_cli_bytes(&[&["put", "blob", "-"][..], &e].concat(), &value);
    assert!(s.success(), "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("OK "), "{err}");
    let (s, out, err) = run_cli_bytes(&[&["get", "blob"][..], &e].concat(), b"");
    assert!(s.success(), "{err}");
    assert_eq!(out.len(), value.len(), "{err}");
    assert!(out == value, "the value came back changed");

    // An empty stdin stores an empty value, which is still found.
    let (s, _, err) = run_cli_bytes(&[&["put", "empty", "-"][..], &e].concat(), b"");
    assert!(s.success(), "{err}");
    let (s, out, err) = run_cli_bytes(&[&["get", "empty"][..], &e].concat(), b"");
    assert!(s.success() && out.is_empty(), "{err}");
}

#[test]
fn every_client_command_says_in_one_line_that_nothing_listens() {
    // Bound and released: nothing listens there now.
    let addr = common::free_addrs(1)[0];
    let url = format!("http://{addr}");
    let commands: [&[&str]; 6] = [
        &["get", "k"],
        &["put", "k", "v"],
        &["delete", "k"],
        &["status"],
        &["health"],
        &["bench", "--duration", "1s", "--quiet"],
    ];
    for command in commands {
        let (status, out, err) = run_cli(&[command, &["--endpoint", &url]].concat());
        assert_eq!(status.code(), Some(2), "{command:?}: {out}{err}");
        assert_eq!(
            err,
            format!(
                "meshkv: cannot connect to {url}: connection refused \
                 (is a node running there? set --endpoint)\n"
            ),
            "{command:?}"
        );
    }
}

#[tokio::test]
async fn serve_on_a_busy_port_says_so_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let addr = node.addr.unwrap().to_string();
    let other = tmp.path().join("other");
    let (status, _, err) = run_cli(&[
        "serve",
        "--listen",
        &addr,
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("meshkv: cannot listen on {addr}: ")),
        "{err}"
    );
    assert_eq!(err.matches("in use").count(), 1, "{err}");
}

async fn still_serves(node: &Node) {
    let mut kv = node.kv();
    kv.write(proto::WriteRequest {
        key: "alive".into(),
        value: b"yes".to_vec(),
        ..Default::default()
    })
    .await
    .expect("node still takes writes");
    let r = kv
        .read(proto::ReadRequest {
            key: "alive".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.found && r.value == b"yes");
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    // A peer that never answers: an empty node waits for its first repair
    // (NOT_SERVING) but still answers requests.
    let mut node = Node::new(tmp.path(), "node1")
        .arg("--peer")
        .arg("node2=http://127.0.0.1:1");
    node.spawn();
    assert_eq!(node.wait_answering().await, ServingStatus::NotServing);
    let mut kv = node.kv();

    // Empty key, for each method.
    let w = kv
        .write(proto::WriteRequest {
            key: String::new(),
            value: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(w.code(), Code::InvalidArgument);
    assert!(w.message().contains("1..=1024"), "{}", w.message());
    let r = kv
        .read(proto::ReadRequest {
            key: String::new(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(r.code(), Code::InvalidArgument);
    let d = kv
        .delete(proto::DeleteRequest {
            key: String::new(),
            expect: None,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(d.code(), Code::InvalidArgument);

    // A key one byte over the limit; a key exactly at it is fine.
    let long = "k".repeat(1025);
    let e = kv
        .write(proto::WriteRequest {
            key: long.clone(),
            value: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("1025 bytes"), "{}", e.message());
    let e = kv
        .read(proto::ReadRequest {
            key: long,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    kv.write(proto::WriteRequest {
        key: "k".repeat(1024),
        value: vec![],
        ..Default::default()
    })
    .await
    .unwrap();

    // A value one byte over max_value_bytes (1 MiB by default) decodes and is refused by name.
    let e = kv
        .write(proto::WriteRequest {
            key: "big".into(),
            value: vec![7; (1 << 20) + 1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("max_value_bytes"), "{}", e.message());
    kv.write(proto::WriteRequest {
        key: "big".into(),
        value: vec![7; 1 << 20],
        ..Default::default()
    })
    .await
    .unwrap();

    // Far past the decode limit: a status, not a broken connection.
    let e = kv
        .write(proto::WriteRequest {
            key: "huge".into(),
            value: vec![7; 8 << 20],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(
            e.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{e:?}"
    );
    assert!(
        e.message().contains("message length too large") || e.message().contains("limit"),
        "{e:?}"
    );

    // Replication from strangers is refused; malformed batches are refused.
    let mut repl = node.replication();
    let m = proto::Mutation {
        key: "x".into(),
        version: Some(proto::Version {
            hlc: 1,
            node_id: "node2".into(),
        }),
        value: Some(b"v".to_vec()),
        expires_ms: 0,
    };
    let req = |cluster: &str, origin: &str, ms: Vec<proto::Mutation>| proto::ReplicateRequest {
        upto_seq: 0,
        // As a repair: hlc 1 is far older than the tombstone horizon.
        repair: true,
        cluster_id: cluster.into(),
        origin: origin.into(),
        mutations: ms,
    };
    let e = repl
        .replicate(req("meshkv", "intruder", vec![m.clone()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = repl
        .replicate(req("other", "node2", vec![m.clone()]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    // A malformed entry is refused alone: the batch is not an error, the
    // refusal names the entry, and the rest of the batch applies.
    let no_version = proto::Mutation {
        key: "no-version".into(),
        version: None,
        ..m.clone()
    };
    let bad_key = proto::Mutation {
        key: String::new(),
        ..m.clone()
    };
    let resp = repl
        .replicate(req("meshkv", "node2", vec![no_version, m.clone(), bad_key]))
        .await
        .expect("refusals are reported, not an error")
        .into_inner();
    assert_eq!(resp.applied, 1);
    let refused: Vec<(u32, &str)> = resp
        .refused
        .iter()
        .map(|r| (r.index, r.key.as_str()))
        .collect();
    assert_eq!(refused, [(0, "no-version"), (2, "")], "{resp:?}");
    assert!(resp.refused[0].reason.contains("no version"), "{resp:?}");
    assert!(resp.refused[1].reason.contains("1..=1024"), "{resp:?}");
    let r = kv
        .read(proto::ReadRequest {
            key: "x".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.found, "the valid entry of the batch applied");
    // Replaying it changes nothing.
    let again = repl
        .replicate(req("meshkv", "node2", vec![m]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.applied, 0);

    still_serves(&node).await;
}

#[tokio::test]
async fn a_full_write_queue_answers_resource_exhausted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1")
        .env("MESHKV_LIMITS__WRITE_QUEUE_DEPTH", "1")
        .env("MESHKV_LIMITS__MAX_BATCH", "1");
    node.start().await;

    let mut tasks = Vec::new();
    for i in 0..256 {
        let mut kv = node.kv();
        tasks.push(tokio::spawn(async move {
            kv.write(proto::WriteRequest {
                key: format!("k{i}"),
                value: vec![0; 64],
                ..Default::default()
            })
            .await
        }));
    }
    let (mut ok, mut exhausted) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("write_queue_depth"), "{}", s.message());
                exhausted += 1
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    assert!(ok > 0, "no write got through");
    assert!(
        exhausted > 0,
        "256 concurrent writes into a queue of 1 never overflowed"
    );
    still_serves(&node).await;
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let data = node.data_dir();
    let (status, _, err) = run_cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert!(!status.success());
    assert!(err.contains("in use by another meshkv process"), "{err}");
    assert!(err.contains(&format!("pid {}", node.pid())), "{err}");
    still_serves(&node).await;
}

#[test]
fn a_bad_config_fails_at_start_up_naming_file_key_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.toml");
    std::fs::write(&path, "node_id = \"n1\"\n[storage]\nfsinc = \"always\"\n").unwrap();
    let (status, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("bad.toml") && err.contains("fsinc"), "{err}");

    std::fs::write(&path, "[storage]\nfsync = \"sometimes\"\n").unwrap();
    let (status, _, err) = run_cli(&["serve", "--config", path.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("sometimes") && err.contains("always"), "{err}");

    let (status, _, err) = run_cli(&["serve", "--node-id", "n1", "--peer", "n1=http://x:1"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("itself"), "{err}");
}

#[tokio::test]
async fn stray_meshkv_variables_are_logged_warnings_not_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    // What a shell profile or a Kubernetes service named meshkv leaves behind.
    let mut node = Node::new(tmp.path(), "node1")
        .env("MESHKV_BIN", "/usr/local/bin/meshkv")
        .env("MESHKV_PORT", "tcp://10.96.0.12:50051")
        .env("MESHKV_SERVICE_HOST", "10.96.0.12")
        .env("MESHKV_STORAGE__FSNYC", "never");
    node.start().await;
    still_serves(&node).await;
    let log = node.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\""))
        .collect();
    for name in ["MESHKV_BIN", "MESHKV_PORT", "MESHKV_SERVICE_HOST"] {
        assert!(
            warnings.iter().any(|l| l.contains(name)),
            "no warning names {name}:\n{log}"
        );
    }
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("MESHKV_STORAGE__FSNYC") && l.contains("MESHKV_STORAGE__FSYNC")),
        "the typo's warning does not name the known key:\n{log}"
    );

    // A known variable with a bad value still stops start-up, by name.
    let (status, _, err) = run_cli_env(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("MESHKV_STORAGE__FSYNC", "sometimes")],
    );
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("MESHKV_STORAGE__FSYNC"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_data_survives() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::new(tmp.path(), "node1");
    node.start().await;
    let mut kv = node.kv();
    for i in 0..100 {
        kv.write(proto::WriteRequest {
            key: format!("k{i}"),
            value: vec![i as u8],
            ..Default::default()
        })
        .await
        .unwrap();
    }
    // The client's connection stays open: a responsive client must not hold up shutdown.
    let started = std::time::Instant::now();
    let status = node.terminate().await;
    assert!(status.success(), "exit {status}:\n{}", node.log());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "shutdown took {:?} with an idle client connected",
        started.elapsed()
    );
    assert!(node.log().contains("stopped cleanly"), "{}", node.log());

    node.start().await;
    let mut kv = node.kv();
    for i in 0..100 {
        let r = kv
            .read(proto::ReadRequest {
                key: format!("k{i}"),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.found && r.value == vec![i as u8], "k{i} lost");
    }
}

#[test]
fn the_cli_warns_before_sending_a_token_in_clear_to_another_machine() {
    // Issue 24 item 7: bearer tokens went over http:// to any host silently.
    let (status, _, stderr) = run_cli(&[
        "get",
        "k",
        "--token",
        "secret",
        "--endpoint",
        "http://192.0.2.1:1",
        "--timeout",
        "200ms",
    ]);
    assert!(!status.success());
    assert!(stderr.contains("token in clear text"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the token itself is never printed: {stderr}"
    );
    let (_, _, stderr) = run_cli(&[
        "get",
        "k",
        "--token",
        "secret",
        "--endpoint",
        "http://127.0.0.1:1",
        "--timeout",
        "200ms",
    ]);
    assert!(!stderr.contains("clear text"), "loopback is fine: {stderr}");
}
