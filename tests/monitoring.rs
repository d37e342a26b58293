//! The shipped dashboard and alert rules name only metrics a live node
//! exports: a renamed metric would otherwise leave a blank panel or an
//! alert that can never fire.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::{cluster, Node, PATIENCE};
use meshkv::proto;

/// The `meshkv_*` names in `text`, each as written (a histogram's
/// `_bucket` series included).
fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("meshkv_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The metric names in a scrape, one per series line.
fn exported(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with("meshkv_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

fn dashboard_exprs() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/meshkv.json");
    let dash: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .expect("the dashboard is JSON");
    let mut exprs = String::new();
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push_str(t["expr"].as_str().expect("an expr"));
            exprs.push('\n');
        }
    }
    exprs
}

fn alert_exprs() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus/alerts.yml");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_alerts_name_is_exported() {
    let dashboard = names_in(&dashboard_exprs());
    let alerts = names_in(&alert_exprs());
    assert!(dashboard.len() >= 15, "{dashboard:?}");
    assert!(alerts.len() >= 8, "{alerts:?}");

    let tmp = tempfile::tempdir().unwrap();
    let mut nodes = cluster::nodes(tmp.path(), 2, &["--metrics-listen", "127.0.0.1:0"]);
    cluster::start_all(&mut nodes).await;
    // Traffic for the request series, which appear with their first request.
    let mut kv = nodes[0].kv();
    kv.write(proto::WriteRequest {
        key: "k".into(),
        text: "v".into(),
        consistency: proto::Consistency::All.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    kv.read(proto::ReadRequest {
        key: "k".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let node: &Node = &nodes[0];
    let wanted: BTreeSet<String> = dashboard.union(&alerts).cloned().collect();
    let mut missing = wanted.clone();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !missing.is_empty() && std::time::Instant::now() < deadline {
        let have = exported(&cluster::scrape(node).await);
        missing = wanted.difference(&have).cloned().collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        missing.is_empty(),
        "named by the dashboard or the alerts, never exported: {missing:?}"
    );
}

#[test]
fn names_are_read_whole_from_expressions() {
    let got = names_in("sum(rate(meshkv_a_total[5m])) / meshkv_b{peer=\"x\"} > 0 or up");
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["meshkv_a_total", "meshkv_b"]
    );
}
