//! Config tests: defaults, the layering of file, environment and flags,
//! validation, and the shipped example.

use std::path::Path;

use super::{load::*, *};
use std::io::Write;

fn write_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_run_a_single_node() {
    let c = load(None, env(&[]), Overrides::default()).unwrap().config;
    assert_eq!(c.node_id, "node1");
    assert_eq!(c.listen.to_string(), "127.0.0.1:50051");
    assert_eq!(c.data_dir, PathBuf::from("./data"));
    assert_eq!(c.storage.fsync, FsyncMode::Always);
    assert!(c.peers.is_empty());
}

#[test]
fn layers_apply_in_order() {
    let f = write_file(
        "node_id = \"from-file\"\ncluster_id = \"c1\"\n[storage]\nfsync = \"never\"\ncache_mb = 8\n",
    );
    let c = load(
        Some(f.path()),
        env(&[
            ("MESHKV_NODE_ID", "from-env"),
            ("MESHKV_STORAGE__CACHE_MB", "16"),
            ("MESHKV_PEERS", "a=http://a:1,b=http://b:2"),
            ("HOME", "/root"),
        ]),
        Overrides {
            node_id: Some("from-flag".into()),
            ..Default::default()
        },
    )
    .unwrap()
    .config;
    assert_eq!(c.node_id, "from-flag");
    assert_eq!(c.cluster_id, "c1");
    assert_eq!(c.storage.fsync, FsyncMode::Never);
    assert_eq!(c.storage.cache_mb, 16);
    assert_eq!(c.peers.len(), 2);
    assert_eq!(c.peers[1].url, "http://b:2");
}

#[test]
fn unknown_file_key_names_file_and_key() {
    let f = write_file("node_id = \"n\"\nlisten_addr = \"x\"\n");
    let err = load(Some(f.path()), env(&[]), Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&f.path().display().to_string()), "{err}");
    assert!(err.contains("listen_addr"), "{err}");
}

#[test]
fn bad_enum_in_file_is_rejected() {
    let f = write_file("[storage]\nfsync = \"sometimes\"\n");
    let err = load(Some(f.path()), env(&[]), Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sometimes"), "{err}");
}

#[test]
fn bad_env_value_names_the_variable() {
    let err = load(
        None,
        env(&[("MESHKV_STORAGE__FSYNC", "sometimes")]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("MESHKV_STORAGE__FSYNC"), "{err}");
    assert!(err.contains("sometimes"), "{err}");

    let err = load(
        None,
        env(&[
            ("MESHKV_NODE_ID", "fine"),
            ("MESHKV_LIMITS__MAX_BATCH", "many"),
        ]),
        Overrides::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("MESHKV_LIMITS__MAX_BATCH"), "{err}");
    assert!(
        !err.contains("MESHKV_NODE_ID"),
        "blames the wrong one: {err}"
    );
}

#[test]
fn unknown_env_only_warns_and_suggests_the_nearest_key() {
    let loaded = load(
        None,
        env(&[
            ("MESHKV_NO_SUCH", "1"),
            ("MESHKV_BIN", "/usr/bin/meshkv"),
            ("MESHKV_PORT", "tcp://10.96.0.12:50051"),
            ("MESHKV_SERVICE_HOST", "10.96.0.12"),
            ("MESHKV_STORAGE__FSNYC", "never"),
            ("MESHKV_ENDPOINT", "http://x:1"),
            ("MESHKV_CONFIG", "/nowhere.toml"),
            ("MESHKV_SIM_SEEDS", "500"),
            ("MESHKV_PLANTED_BUG", "x"),
            ("MESHKV_NODE_ID", "n2"),
        ]),
        Overrides::default(),
    )
    .unwrap();
    assert_eq!(loaded.config.node_id, "n2");
    assert_eq!(loaded.config.storage.fsync, FsyncMode::Always);
    assert_eq!(loaded.config.listen.port(), 50051);
    let w = loaded.warnings.join("\n");
    assert_eq!(loaded.warnings.len(), 5, "{w}");
    for name in [
        "MESHKV_NO_SUCH",
        "MESHKV_BIN",
        "MESHKV_PORT",
        "MESHKV_SERVICE_HOST",
    ] {
        assert!(w.contains(name), "{name} not warned about: {w}");
    }
    assert!(
        w.contains("MESHKV_STORAGE__FSNYC; did you mean MESHKV_STORAGE__FSYNC?"),
        "{w}"
    );
    // Not a typo of anything: no misleading suggestion.
    let port = loaded.warnings.iter().find(|l| l.contains("MESHKV_PORT"));
    assert!(!port.unwrap().contains("did you mean"), "{w}");
    assert!(
        !w.contains("MESHKV_ENDPOINT") && !w.contains("MESHKV_CONFIG"),
        "{w}"
    );
}

#[test]
fn env_values_take_the_type_of_their_key() {
    let c = load(
        None,
        env(&[
            ("MESHKV_NODE_ID", "7"),
            ("MESHKV_METRICS_LISTEN", "127.0.0.1:9999"),
            ("MESHKV_REPLICATION__RPC_TIMEOUT_MS", "250"),
        ]),
        Overrides::default(),
    )
    .unwrap()
    .config;
    assert_eq!(c.node_id, "7");
    assert_eq!(c.metrics_listen.map(|a| a.port()), Some(9999));
    assert_eq!(c.replication.rpc_timeout_ms, 250);
}

#[test]
fn env_keys_cover_every_config_key() {
    let keys = env_keys();
    for name in [
        "MESHKV_NODE_ID",
        "MESHKV_LISTEN",
        "MESHKV_PEERS",
        "MESHKV_METRICS_LISTEN",
        "MESHKV_STORAGE__FSYNC",
        "MESHKV_LIMITS__MAX_VALUE_BYTES",
        "MESHKV_REPLICATION__MAX_CLOCK_SKEW_MS",
    ] {
        assert!(keys.contains_key(name), "{name} missing: {keys:?}");
    }
    assert!(!keys.contains_key("MESHKV_STORAGE"), "a table is no key");
    // Every key of the example file, which documents them all.
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/meshkv.example.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let example: toml::Table = toml::from_str(&text).unwrap();
    for (key, value) in &example {
        let name = format!("MESHKV_{}", key.to_ascii_uppercase());
        match value {
            toml::Value::Table(t) => {
                for sub in t.keys() {
                    let name = format!("{name}__{}", sub.to_ascii_uppercase());
                    assert!(keys.contains_key(&name), "{name} missing");
                }
            }
            _ => assert!(keys.contains_key(&name), "{name} missing"),
        }
    }
}

#[test]
fn edit_distance_counts_single_edits() {
    assert_eq!(edit_distance("", ""), 0);
    assert_eq!(edit_distance("FSYNC", "FSYNC"), 0);
    assert_eq!(edit_distance("FSNYC", "FSYNC"), 1, "a swap is one edit");
    assert_eq!(edit_distance("LISTN", "LISTEN"), 1);
    assert_eq!(edit_distance("LISTENN", "LISTEN"), 1);
    assert_eq!(edit_distance("LISTEM", "LISTEN"), 1);
    assert_eq!(edit_distance("", "ABC"), 3);
    assert_eq!(edit_distance("PORT", "PEERS"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}

#[test]
fn peers_listing_self_or_twice_are_refused() {
    let selfish = Overrides {
        peers: vec![parse_peer("node1=http://x:1").unwrap()],
        ..Default::default()
    };
    let err = load(None, env(&[]), selfish).unwrap_err().to_string();
    assert!(err.contains("itself"), "{err}");

    let twice = Overrides {
        peers: vec![
            parse_peer("b=http://x:1").unwrap(),
            parse_peer("b=http://y:1").unwrap(),
        ],
        ..Default::default()
    };
    let err = load(None, env(&[]), twice).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn limits_are_range_checked() {
    let f = write_file("[limits]\nmax_value_bytes = 0\n");
    let err = load(Some(f.path()), env(&[]), Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("limits.max_value_bytes"), "{err}");
}

#[test]
fn durations_are_bounded_so_nothing_derived_from_them_overflows() {
    // Issue 24 item 9: secs * 1000 wrapped in release builds, and a huge
    // rpc_timeout_ms panicked when added to an instant.
    for (section, key) in [
        ("replication", "rpc_timeout_ms"),
        ("replication", "tombstone_ttl_secs"),
        ("replication", "max_log_age_secs"),
        ("replication", "backoff_max_ms"),
        ("replication", "max_clock_skew_ms"),
        ("storage", "fsync_interval_ms"),
    ] {
        let f = write_file(&format!("[{section}]\n{key} = {}\n", u64::MAX / 2));
        let err = load(Some(f.path()), env(&[]), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{section}.{key}")), "{err}");
        assert!(err.contains("above the most"), "{err}");
    }
}

#[test]
fn an_exposed_metrics_listener_needs_tls_or_insecure_like_any_other() {
    // Issue 24 item 7: protected mode ignored metrics_listen.
    let f = write_file("metrics_listen = \"0.0.0.0:9090\"\n");
    let err = load(Some(f.path()), env(&[]), Overrides::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("0.0.0.0:9090") && err.contains("TLS is off"),
        "{err}"
    );
    let f = write_file("metrics_listen = \"0.0.0.0:9090\"\ninsecure = true\n");
    assert!(load(Some(f.path()), env(&[]), Overrides::default()).is_ok());
    let f = write_file("metrics_listen = \"127.0.0.1:9090\"\n");
    assert!(load(Some(f.path()), env(&[]), Overrides::default()).is_ok());
}

#[test]
fn node_ids_that_every_dev_certificate_names_are_refused() {
    // Issue 24 item 4: with TLS, a node id "localhost" or "127.0.0.1" could
    // be claimed by any node, since every development certificate names them.
    for id in ["localhost", "LOCALHOST", "127.0.0.1", "10.0.0.2"] {
        let err = load(None, env(&[("MESHKV_NODE_ID", id)]), Overrides::default())
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("node_id") && err.contains("development certificate"),
            "{id}: {err}"
        );
    }
    let f = write_file("[[peers]]\nid = \"localhost\"\nurl = \"http://127.0.0.1:1\"\n");
    let err = load(Some(f.path()), env(&[]), Overrides::default())
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("peers"), "{err}");
}

#[test]
fn parse_peer_needs_both_halves() {
    assert!(parse_peer("n2=http://h:1").is_ok());
    assert!(parse_peer("n2").is_err());
    assert!(parse_peer("=http://h").is_err());
}

#[test]
fn every_shipped_config_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for f in std::fs::read_dir(dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            load(Some(&path), env(&[]), Overrides::default())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 5, "example, image default and three compose nodes");
}
