//! Smoke test of `meshkv bench` against a real 2-node cluster: it runs, and it
//! reports numbers. It asserts no speed.

mod common;

use common::{cluster, run_cli};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_runs_against_a_cluster_and_reports_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &[]);
    cluster::start_all(&mut nodes).await;
    let (e1, e2) = (nodes[0].url(), nodes[1].url());

    let json = |args: &[&str]| -> serde_json::Value {
        let (status, out, err) = run_cli(args);
        assert!(status.success(), "bench failed: {err}\n{out}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    };

    // Mixed load over both nodes, with the replication-lag probe.
    let r = json(&[
        "bench",
        "--endpoint",
        &e1,
        "--endpoint",
        &e2,
        "--duration",
        "2s",
        "--concurrency",
        "8",
        "--connections",
        "1",
        "--read-ratio",
        "0.5",
        "--lag-interval",
        "10ms",
        "--quiet",
        "--json",
    ]);
    assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
    assert!(r["writes_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["reads_per_sec"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{r}");
    assert_eq!(r["errors"].as_object().unwrap().len(), 0, "{r}");
    assert!(r["lag"]["samples"].as_u64().unwrap() > 0, "{r}");

    // Batched writes, by request count, with sequential keys: every key lands once.
    let r = json(&[
        "bench",
        "--endpoint",
        &e1,
        "--requests",
        "20",
        "--batch",
        "50",
        "--keys",
        "sequential",
        "--keyspace",
        "1000",
        "--concurrency",
        "4",
        "--quiet",
        "--json",
    ]);
    assert_eq!(r["requests"].as_u64().unwrap(), 20, "{r}");
    assert_eq!(r["batch"].as_u64().unwrap(), 50, "{r}");
    let status = cluster::status(&nodes[0]).await;
    assert!(
        status.keys >= 1000,
        "1000 sequential keys written: {}",
        status.keys
    );

    // The transport ceiling, and the human-readable table.
    let (status, out, _) = run_cli(&[
        "bench",
        "--target",
        "health",
        "--endpoint",
        &e1,
        "--duration",
        "1",
        "--quiet",
    ]);
    assert!(status.success());
    assert!(
        out.contains("target       health check") && out.contains("p99"),
        "{out}"
    );

    // A bad option is refused by name.
    let (status, _, err) = run_cli(&["bench", "--endpoint", &e1, "--read-ratio", "2", "--quiet"]);
    assert!(!status.success());
    assert!(err.contains("--read-ratio"), "{err}");
}
