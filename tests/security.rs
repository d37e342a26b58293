//! Security with real processes: TLS listeners, mutually authenticated
//! peers that may only speak for themselves, client tokens and their roles,
//! and the refusal to start exposed without TLS.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{cluster::wait_until, free_addrs, run_cli, run_cli_env, tls_channel_at, Node};
use meshkv::proto::{self, kv_client::KvClient, replication_client::ReplicationClient};
use tonic::Code;

/// `meshkv certs` for `nodes` under `dir`, with a tokens file.
fn certs(dir: &Path, nodes: &[&str]) {
    let mut args = vec!["certs", "--dir", dir.to_str().unwrap()];
    for n in nodes {
        args.extend(["--node", n]);
    }
    let tokens = dir.join("tokens.toml");
    args.extend(["--tokens", tokens.to_str().unwrap()]);
    let (status, out, err) = run_cli(&args);
    assert!(status.success(), "meshkv certs: {out}{err}");
}

fn token(dir: &Path, role: &str) -> String {
    common::token_of(dir, role)
}

/// A TLS node: `cert_dir` holds its certificate and key, `ca` is the CA it
/// trusts; peers on their own listener at `peer_addr`.
fn tls_node(
    root: &Path,
    id: &str,
    cert_dir: &Path,
    ca: &Path,
    peer_addr: std::net::SocketAddr,
    peers: &[(&str, std::net::SocketAddr)],
) -> Node {
    let path = |f: String| cert_dir.join(f).to_str().unwrap().to_string();
    let mut n = Node::new(root, id)
        .arg("--peer-listen")
        .arg(peer_addr.to_string())
        .arg("--tls-cert")
        .arg(path(format!("{id}.pem")))
        .arg("--tls-key")
        .arg(path(format!("{id}.key")))
        .arg("--tls-ca")
        .arg(ca.to_str().unwrap())
        .arg("--tokens-file")
        .arg(path("tokens.toml".into()))
        .tls(ca);
    for (p, a) in peers {
        n.add_peer(p, &format!("https://127.0.0.1:{}", a.port()));
    }
    n
}

fn pem(dir: &Path, file: &str) -> Vec<u8> {
    std::fs::read(dir.join(file)).unwrap()
}

fn bearer<T>(mut req: tonic::Request<T>, token: &str) -> tonic::Request<T> {
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

async fn read(node: &Node, key: &str, token: &str) -> bool {
    let mut kv = KvClient::new(node.channel());
    let req = bearer(
        tonic::Request::new(proto::ReadRequest {
            key: key.into(),
            ..Default::default()
        }),
        token,
    );
    kv.read(req).await.expect("read").into_inner().found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_from_another_ca_or_without_a_certificate_gets_nothing_through() {
    let tmp = tempfile::tempdir().unwrap();
    let (real, other) = (tmp.path().join("certs"), tmp.path().join("other"));
    certs(&real, &["n1", "n2"]);
    // An impostor n2 with a certificate from another CA. It knows the
    // cluster's CA certificate (that is public), so it trusts n1.
    certs(&other, &["n2"]);
    let ca = real.join("ca.pem");
    let ports = free_addrs(2);
    // Fresh nodes whose peers never answer stay NOT_SERVING, but answer.
    let mut n1 = tls_node(tmp.path(), "n1", &real, &ca, ports[0], &[("n2", ports[1])]);
    n1.spawn();
    n1.wait_answering().await;
    let mut impostor = tls_node(tmp.path(), "n2", &other, &ca, ports[1], &[("n1", ports[0])])
        .tls(&other.join("ca.pem"));
    impostor.spawn();
    impostor.wait_answering().await;
    let write_token = token(&other, "write");
    let mut kv = KvClient::new(impostor.channel());
    kv.write(bearer(
        tonic::Request::new(proto::WriteRequest {
            key: "forged".into(),
            value: b"x".to_vec(),
            ..Default::default()
        }),
        &write_token,
    ))
    .await
    .expect("the impostor takes its own client's write");

    // Both sides log why: n1 refuses the certificate, the impostor fails
    // to reach n1.
    wait_until(
        "n1 to refuse the impostor's handshake",
        Duration::from_secs(30),
        || async { n1.log().contains("TLS handshake refused") },
    )
    .await;
    wait_until(
        "the impostor to log its failure",
        Duration::from_secs(30),
        || async { impostor.log().contains("anti-entropy round failed") },
    )
    .await;
    let n1_log = n1.log();
    let refusal = n1_log
        .lines()
        .find(|l| l.contains("TLS handshake refused"))
        .unwrap();
    assert!(refusal.contains("\"listener\":\"peer\""), "{refusal}");
    assert!(refusal.contains("invalid peer certificate"), "{refusal}");

    // No certificate at all: the handshake fails before any request.
    let no_cert = tls_channel_at(
        &format!("https://127.0.0.1:{}", ports[0].port()),
        &pem(&real, "ca.pem"),
        None,
    );
    let err = ReplicationClient::new(no_cert)
        .replicate(proto::ReplicateRequest {
            upto_seq: 0,
            cluster_id: "meshkv".into(),
            origin: "n2".into(),
            mutations: vec![mutation("forged2", "n2")],
            repair: false,
        })
        .await
        .expect_err("no certificate, no replication");
    assert_ne!(err.code(), Code::Ok);
    wait_until(
        "n1 to log the missing certificate",
        Duration::from_secs(10),
        || async { n1.log().contains("peer sent no certificates") },
    )
    .await;

    let admin = token(&real, "admin");
    assert!(
        !read(&n1, "forged", &admin).await,
        "the impostor's write reached n1"
    );
    assert!(!read(&n1, "forged2", &admin).await);
    no_token_in_logs(&[&n1, &impostor], &[&real, &other]);
}

/// Every token of every tokens file is absent from every node's log.
fn no_token_in_logs(nodes: &[&Node], dirs: &[&Path]) {
    for dir in dirs {
        for role in ["read", "write", "admin"] {
            let t = token(dir, role);
            for n in nodes {
                assert!(!n.log().contains(&t), "a {role} token is in {}'s log", n.id);
            }
        }
    }
}

fn mutation(key: &str, node: &str) -> proto::Mutation {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    proto::Mutation {
        key: key.into(),
        version: Some(proto::Version {
            hlc: now_ms << 16,
            node_id: node.into(),
        }),
        value: Some(b"v".to_vec()),
        expires_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_a_valid_certificate_cannot_claim_another_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    certs(&dir, &["n1", "n2", "n3"]);
    let ca = dir.join("ca.pem");
    let ports = free_addrs(3);
    let mut n1 = tls_node(
        tmp.path(),
        "n1",
        &dir,
        &ca,
        ports[0],
        &[("n2", ports[1]), ("n3", ports[2])],
    );
    n1.spawn();
    n1.wait_answering().await;

    // Holding n2's certificate and key, as n2 itself would.
    let as_n2 = tls_channel_at(
        &format!("https://127.0.0.1:{}", ports[0].port()),
        &pem(&dir, "ca.pem"),
        Some((&pem(&dir, "n2.pem"), &pem(&dir, "n2.key"))),
    );
    let mut repl = ReplicationClient::new(as_n2);
    let send = |origin: &str, key: &str| proto::ReplicateRequest {
        upto_seq: 0,
        cluster_id: "meshkv".into(),
        origin: origin.into(),
        mutations: vec![mutation(key, origin)],
        repair: false,
    };
    let err = repl
        .replicate(send("n3", "claimed-by-n3"))
        .await
        .expect_err("n2 may not speak for n3");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("does not name \"n3\""), "{err}");
    // The same connection speaking for itself gets through: the refusal was
    // about the claim, not the certificate.
    let ok = repl
        .replicate(send("n2", "sent-by-n2"))
        .await
        .expect("n2 may speak for itself")
        .into_inner();
    assert_eq!(ok.applied, 1);

    let admin = token(&dir, "admin");
    assert!(
        !read(&n1, "claimed-by-n3", &admin).await,
        "nothing is written"
    );
    assert!(read(&n1, "sent-by-n2", &admin).await);
    assert!(n1.log().contains("refused a peer request"));
    no_token_in_logs(&[&n1], &[&dir]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_gate_clients_by_role_and_never_reach_the_logs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    certs(&dir, &["n1"]);
    let tokens_file = dir.join("tokens.toml");
    let mut node = Node::new(tmp.path(), "n1")
        .arg("--tokens-file")
        .arg(tokens_file.to_str().unwrap());
    node.start().await;
    let ep = node.url();
    let (read_t, write_t, admin_t) = (
        token(&dir, "read"),
        token(&dir, "write"),
        token(&dir, "admin"),
    );
    let cli = |args: &[&str], tok: Option<&str>| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--endpoint", &ep]);
        let envs: Vec<(&str, &str)> = tok.map(|t| vec![("MESHKV_TOKEN", t)]).unwrap_or_default();
        run_cli_env(&all, &envs)
    };

    let (st, _, err) = cli(&["get", "k"], None);
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("unauthenticated: no token"), "{err}");
    let (st, _, err) = cli(&["get", "k"], Some("0123456789abcdef-not-a-token"));
    assert_eq!(st.code(), Some(2));
    assert!(err.contains("unauthenticated: unknown token"), "{err}");

    let (st, _, err) = cli(&["put", "k", "v"], Some(&read_t));
    assert_eq!(st.code(), Some(2), "a read token cannot write");
    assert!(
        err.contains("permission denied: read has the read role; this call needs write"),
        "{err}"
    );
    let (st, out, err) = cli(&["put", "k", "v"], Some(&write_t));
    assert!(st.success(), "{out}{err}");
    let (st, out, _) = cli(&["get", "k"], Some(&read_t));
    assert!(st.success());
    assert_eq!(out.trim(), "v");

    let (st, _, err) = cli(&["status"], Some(&write_t));
    assert_eq!(st.code(), Some(2), "a write token cannot call Admin");
    assert!(err.contains("needs admin"), "{err}");
    let (st, out, err) = cli(&["status"], Some(&admin_t));
    assert!(st.success(), "{out}{err}");
    assert!(
        out.contains("security: loopback only, no TLS; clients need a token"),
        "{out}"
    );
    // --token works as well as the variable; health needs no token.
    let (st, _, _) = run_cli(&["delete", "k", "--endpoint", &ep, "--token", &write_t]);
    assert!(st.success());
    let (st, _, err) = run_cli(&["health", "--endpoint", &ep]);
    assert!(st.success(), "{err}");

    node.terminate().await;
    let log = node.log();
    assert!(log.contains("stopped cleanly"), "{log}");
    for t in [&read_t, &write_t, &admin_t] {
        assert!(!log.contains(t.as_str()), "a token reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_writes_and_reads_over_tls_with_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    certs(&dir, &["n1"]);
    let ca = dir.join("ca.pem");
    let mut node = tls_node(tmp.path(), "n1", &dir, &ca, free_addrs(1)[0], &[]);
    node.start().await;
    let addr = node.addr.unwrap().to_string();
    let header = format!("authorization: Bearer {}", token(&dir, "write"));
    let grpcurl = |extra: &[&str]| {
        let out = std::process::Command::new("grpcurl")
            .args(["-cacert", ca.to_str().unwrap(), "-H", &header])
            .args(extra)
            .output()
            .expect("grpcurl is required: run the suite with scripts/test.sh");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (ok, out) = grpcurl(&[
        "-d",
        r#"{"key":"tls-key","text":"over tls"}"#,
        &addr,
        "meshkv.v1.KV/Write",
    ]);
    assert!(ok, "{out}");
    let (ok, out) = grpcurl(&[
        "-d",
        r#"{"key":"tls-key","as_text":true}"#,
        &addr,
        "meshkv.v1.KV/Read",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("\"text\": \"over tls\""), "{out}");
    // A client certificate from the CA is the other way in, with no token.
    let out = std::process::Command::new("grpcurl")
        .args(["-cacert", ca.to_str().unwrap()])
        .args(["-cert", dir.join("n1.pem").to_str().unwrap()])
        .args(["-key", dir.join("n1.key").to_str().unwrap()])
        .args([
            "-d",
            r#"{"key":"tls-key","as_text":true}"#,
            &addr,
            "meshkv.v1.KV/Read",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("over tls"), "{text}");
    // Neither a token nor a certificate: refused.
    let out = std::process::Command::new("grpcurl")
        .args(["-cacert", ca.to_str().unwrap()])
        .args(["-d", r#"{"key":"tls-key"}"#, &addr, "meshkv.v1.KV/Read"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unauthenticated"));
    // Without the CA, grpcurl cannot verify the node: TLS is really on.
    let out = std::process::Command::new("grpcurl")
        .args(["-plaintext", &addr, "list"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "plain text must not work against a TLS node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reachable_from_other_machines_without_tls_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let (st, out, err) = run_cli(&["serve", "--listen", "0.0.0.0:0", "--data-dir", data]);
    assert!(!st.success(), "{out}{err}");
    assert!(
        err.contains("0.0.0.0:0 is reachable from other machines, but TLS is off"),
        "{err}"
    );
    assert!(err.contains("insecure = true (--insecure)"), "{err}");
    // A peer listener counts too.
    let (st, _, err) = run_cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--peer-listen",
        "0.0.0.0:0",
        "--data-dir",
        data,
    ]);
    assert!(!st.success());
    assert!(err.contains("reachable from other machines"), "{err}");

    // Said out loud, it starts, and warns in the log and in status. (It
    // listens on every interface; the test only dials loopback.)
    let port = free_addrs(1)[0].port();
    let mut node = Node::new(tmp.path(), "n1")
        .arg("--insecure")
        .at(std::net::SocketAddr::from(([0, 0, 0, 0], port)));
    node.start().await;
    assert!(node.log().contains("INSECURE"), "{}", node.log());
    let url = format!("http://127.0.0.1:{port}");
    let (st, out, _) = run_cli(&["status", "--endpoint", &url]);
    assert!(st.success());
    assert!(
        out.contains(&format!(
            "security: INSECURE: no TLS on 0.0.0.0:{port}; no authentication"
        )),
        "{out}"
    );
    node.terminate().await;
}

#[test]
fn certs_are_made_once_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("certs");
    certs(&dir, &["n1"]);
    let ca = std::fs::read(dir.join("ca.pem")).unwrap();
    let (st, out, _) = run_cli(&[
        "certs",
        "--dir",
        dir.to_str().unwrap(),
        "--node",
        "n1",
        "--node",
        "n2",
    ]);
    assert!(st.success());
    assert!(out.contains("kept") && out.contains("created"), "{out}");
    assert_eq!(
        std::fs::read(dir.join("ca.pem")).unwrap(),
        ca,
        "the CA is kept"
    );
}

/// A health check over a new connection to `channel` answers within 1 s.
async fn answers_within_a_second(what: &str, channel: tonic::transport::Channel) {
    let started = std::time::Instant::now();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let answer = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        health.check(tonic_health::pb::HealthCheckRequest::default()),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: no answer within 1 s"))
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(answer.into_inner().status >= 1, "{what} answered");
    println!("{what}: answered in {:?}", started.elapsed());
}

/// 500 sockets that connect and never speak, on `addr`.
async fn silent(addr: std::net::SocketAddr) -> Vec<tokio::net::TcpStream> {
    let mut v = Vec::new();
    for _ in 0..500 {
        v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_both_listeners_keep_no_client_or_peer_out_over_tls() {
    // Issue 24 item 2: 256 sockets that never speak held every handshake
    // slot for 10 s each, and reopened, stalled both listeners for good.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    certs(&dir, &["n1", "n2"]);
    let ca = dir.join("ca.pem");
    let peer_addr = free_addrs(1)[0];
    let mut node = tls_node(tmp.path(), "n1", &dir, &ca, peer_addr, &[]);
    node.start().await;
    let client = silent(node.addr.unwrap()).await;
    let peers = silent(peer_addr).await;
    answers_within_a_second("a client over TLS", node.channel()).await;
    let peer = tls_channel_at(
        &format!("https://127.0.0.1:{}", peer_addr.port()),
        &pem(&dir, "ca.pem"),
        Some((&pem(&dir, "n2.pem"), &pem(&dir, "n2.key"))),
    );
    answers_within_a_second("a peer over TLS", peer).await;
    drop((client, peers));
    node.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_both_listeners_keep_no_client_or_peer_out_in_plaintext() {
    // Without TLS nothing bounded connections that never sent the HTTP/2
    // preface: they stayed open for as long as the caller liked.
    let tmp = tempfile::tempdir().unwrap();
    let peer_addr = free_addrs(1)[0];
    let mut node = Node::new(tmp.path(), "n1")
        .arg("--peer-listen")
        .arg(peer_addr.to_string());
    node.start().await;
    let client = silent(node.addr.unwrap()).await;
    let peers = silent(peer_addr).await;
    answers_within_a_second("a client in plaintext", node.channel()).await;
    answers_within_a_second(
        "a peer in plaintext",
        common::channel_at(&format!("http://{peer_addr}")),
    )
    .await;
    drop((client, peers));
    // A socket that never sends the preface is closed after 10 s.
    let mut one = tokio::net::TcpStream::connect(node.addr.unwrap())
        .await
        .unwrap();
    let opened = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        tokio::io::AsyncReadExt::read(&mut one, &mut buf),
    )
    .await
    .expect("the node closes a silent connection within 15 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed, not answered: {read:?}"
    );
    assert!(
        opened.elapsed() >= std::time::Duration::from_secs(9),
        "closed for its silence, after {:?}",
        opened.elapsed()
    );
    node.terminate().await;
}
