//! Node configuration: serde structs and the layering
//! defaults → TOML file → `MESHKV_*` environment → command-line flags.
//!
//! Environment variables name a key by its path, upper-cased, with `__`
//! between a table and its key: `MESHKV_NODE_ID`, `MESHKV_STORAGE__FSYNC`.
//! `MESHKV_PEERS` takes `id=url,id=url`. Every error names its source (the
//! file, the variable or the flag), the key and the reason. Unknown keys in
//! the file are errors; unknown `MESHKV_*` variables are only warnings (see
//! [`load`]).

mod load;

use std::{collections::HashSet, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

pub use load::{load, parse_peer, Loaded};

use crate::error::{Error, Result};

/// The largest value a node may be configured to accept.
pub const MAX_VALUE_BYTES_CEILING: usize = 64 * 1024 * 1024;
/// The largest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;

/// Everything one node needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// This node's id: unique in the cluster, stamped into every version it issues.
    pub node_id: String,
    /// The cluster's name. Peers reject replication from another cluster.
    pub cluster_id: String,
    /// The gRPC address for clients (and for peers too when `peer_listen` is
    /// unset): KV, Admin, health, reflection.
    pub listen: SocketAddr,
    /// A separate gRPC address for peers (Replication, AntiEntropy, health),
    /// like etcd's 2380. Required with TLS, where it demands a client
    /// certificate from the cluster's CA. Peers' `url`s point here.
    pub peer_listen: Option<SocketAddr>,
    /// Run on a non-loopback address without TLS anyway. Anyone who can reach
    /// the node can then read, write and forge replication: for trusted
    /// networks and demos only. The node warns at start and in `meshkv status`.
    pub insecure: bool,
    /// TLS for both listeners and for connections to peers; off unless all
    /// three files are set.
    pub tls: TlsConfig,
    /// Client authentication.
    pub auth: AuthConfig,
    /// Where the storage engine keeps its files. One node per directory.
    pub data_dir: PathBuf,
    /// Log output format.
    pub log_format: LogFormat,
    /// The other nodes of the cluster. Every write is shipped to each of them.
    pub peers: Vec<PeerConfig>,
    /// Durability and storage engine settings.
    pub storage: StorageConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Where Prometheus metrics are served (`GET /metrics`); off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// How writes reach the peers and how replicas are repaired.
    pub replication: ReplicationConfig,
    /// After SIGTERM, how long in-flight requests may take to finish before
    /// the node stops anyway, in milliseconds. Keep it below the supervisor's
    /// grace period (Docker's is 10 s) so that a stop is never a SIGKILL.
    pub drain_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: "node1".into(),
            cluster_id: "meshkv".into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            peer_listen: None,
            insecure: false,
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            data_dir: PathBuf::from("./data"),
            log_format: LogFormat::Pretty,
            peers: Vec::new(),
            storage: StorageConfig::default(),
            limits: LimitsConfig::default(),
            metrics_listen: None,
            replication: ReplicationConfig::default(),
            drain_timeout_ms: 5_000,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// TLS files, PEM. Set all three or none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// This node's certificate (chain). Its subject alternative names must
    /// include the node id, which peers check, and the names clients dial.
    pub cert: Option<PathBuf>,
    /// The certificate's private key.
    pub key: Option<PathBuf>,
    /// The cluster's CA: peers' and clients' certificates must chain to it.
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether TLS is on.
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A TOML file of bearer tokens, each with a name and a role (read,
    /// write, admin). Unset: no tokens; with TLS on, clients must then present
    /// a certificate from the CA instead.
    pub tokens_file: Option<PathBuf>,
}

/// One peer node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's node id, as it appears in its own config.
    pub id: String,
    /// Its gRPC URL, e.g. `http://node2:50051`; `https://` with TLS, at the
    /// peer's `peer_listen` address.
    pub url: String,
}

/// When the write-ahead journal is synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FsyncMode {
    /// Before every acknowledgement (one sync per group commit). Survives power loss.
    Always,
    /// Every `fsync_interval_ms`. A crash of the machine loses at most that window;
    /// a crash of the process alone loses nothing.
    Periodic,
    /// Never explicitly; the OS decides. A crash of the process alone loses nothing.
    Never,
}

/// Storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// When writes are synced to disk.
    pub fsync: FsyncMode,
    /// The sync interval for `fsync = "periodic"`, in milliseconds.
    pub fsync_interval_ms: u64,
    /// The storage engine's block cache, in MiB.
    pub cache_mb: u64,
    /// The largest in-memory write buffer (memtable) of each of the kv,
    /// versions and log keyspaces, in MiB. Together with the cache this bounds most of the
    /// engine's memory.
    pub memtable_mb: u64,
    /// Changes kept on disk for Watch to resume from (each holds the new
    /// value), 4096..=100000000. A watcher that resumes from further back
    /// gets a snapshot of its prefix instead.
    pub watch_retain_changes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            fsync: FsyncMode::Always,
            fsync_interval_ms: 100,
            cache_mb: 32,
            memtable_mb: 16,
            watch_retain_changes: 100_000,
        }
    }
}

/// Limits that keep one client from hurting the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// The largest value a client write may carry, in bytes. It guards the
    /// client API only: entries from peers are accepted up to the cluster-wide
    /// ceiling (64 MiB), since their origin already acknowledged them.
    pub max_value_bytes: usize,
    /// Client write requests waiting for the writer. When full, client writes
    /// get RESOURCE_EXHAUSTED; peer traffic has its own queue.
    pub write_queue_depth: usize,
    /// Bytes (keys and values) of the client write requests waiting for the
    /// writer. When full, client writes get RESOURCE_EXHAUSTED.
    pub write_queue_bytes: usize,
    /// Peer requests (replicated batches, repairs) waiting for the writer.
    /// When full, a peer's request waits for room instead of failing.
    pub peer_queue_depth: usize,
    /// Bytes of the peer requests waiting for the writer.
    pub peer_queue_bytes: usize,
    /// The most requests one group commit takes from the queue.
    pub max_batch: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_value_bytes: 1024 * 1024,
            write_queue_depth: 4096,
            write_queue_bytes: 64 * 1024 * 1024,
            peer_queue_depth: 64,
            peer_queue_bytes: 128 * 1024 * 1024,
            max_batch: 1024,
        }
    }
}

/// Replication, log retention, anti-entropy and tombstone settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplicationConfig {
    /// The most log entries in one Replicate batch.
    pub batch_max_entries: usize,
    /// The most bytes in one Replicate batch (one entry is always sent).
    pub batch_max_bytes: usize,
    /// Deadline of every RPC to a peer, in milliseconds. Also the window in
    /// which an entry counts as in flight: periodic anti-entropy leaves
    /// entries younger than this to the log streams.
    pub rpc_timeout_ms: u64,
    /// First retry delay after a failed RPC, in milliseconds; it doubles per failure.
    pub backoff_min_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// The log keeps at most this many bytes of unacknowledged writes. Past it the
    /// oldest are dropped and the peers that still needed them are repaired by
    /// anti-entropy instead.
    pub max_log_bytes: u64,
    /// The log keeps writes at most this long, in seconds (0: no age limit).
    pub max_log_age_secs: u64,
    /// Seconds between anti-entropy rounds with each peer.
    pub anti_entropy_interval_secs: u64,
    /// Tombstones older than this (seconds) are purged once every peer is
    /// known to hold them. A node whose data is older than this starts in
    /// catch-up: it pulls from each peer before it pushes anything.
    pub tombstone_ttl_secs: u64,
    /// Remote versions further ahead of the local clock than this are
    /// refused, logged and counted, in milliseconds (see DESIGN "Clock
    /// skew"). Versions up to this far ahead still count as in flight for
    /// anti-entropy.
    pub max_clock_skew_ms: u64,
    /// How long a request at consistency QUORUM or ALL, or a read with
    /// write tokens, waits for other nodes when the call carries no gRPC
    /// deadline, in milliseconds. Then DEADLINE_EXCEEDED (UNAVAILABLE for
    /// tokens); a write is never rolled back.
    pub consistency_timeout_ms: u64,
    /// A file holding a secret (at least 16 bytes; surrounding whitespace
    /// is ignored) that keys, with the cluster id, where keys fall into
    /// anti-entropy buckets, so that no client can aim its keys at one
    /// bucket. Every node needs the same one; peers with another are
    /// refused anti-entropy. Unset: the cluster id alone keys it. Changing
    /// it rebuilds the anti-entropy index at the next start.
    pub bucket_key_file: Option<PathBuf>,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            batch_max_entries: 4096,
            batch_max_bytes: 4 * 1024 * 1024,
            rpc_timeout_ms: 5_000,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
            max_log_bytes: 256 * 1024 * 1024,
            max_log_age_secs: 24 * 3600,
            anti_entropy_interval_secs: 30,
            tombstone_ttl_secs: 24 * 3600,
            max_clock_skew_ms: 60_000,
            consistency_timeout_ms: 5_000,
            bucket_key_file: None,
        }
    }
}

/// Values given on the command line; they override every other layer.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--node-id`
    pub node_id: Option<String>,
    /// `--cluster-id`
    pub cluster_id: Option<String>,
    /// `--listen`
    pub listen: Option<SocketAddr>,
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--peer ID=URL`, repeatable; replaces the configured peers when given.
    pub peers: Vec<PeerConfig>,
    /// `--log-format`
    pub log_format: Option<LogFormat>,
    /// `--fsync`
    pub fsync: Option<FsyncMode>,
    /// `--metrics-listen`
    pub metrics_listen: Option<SocketAddr>,
    /// `--peer-listen`
    pub peer_listen: Option<SocketAddr>,
    /// `--insecure`
    pub insecure: bool,
    /// `--tls-cert`, `--tls-key`, `--tls-ca`
    pub tls: TlsConfig,
    /// `--tokens-file`
    pub tokens_file: Option<PathBuf>,
}

/// The fewest changes the feed may keep: as many as a live watcher may lag
/// behind the writer, so a change announced without its record is still on
/// disk to read (see `storage::feed`).
pub const MIN_WATCH_RETAIN_CHANGES: u64 = 4096;

/// Node and cluster ids: 1..=64 characters of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Why `id` may not name a node: with TLS, a node's identity is a name its
/// certificate carries, and every development certificate also names
/// localhost and the loopback addresses, so such an id would let any node
/// pass as it.
fn host_like(id: &str) -> Option<String> {
    let loopback = id.eq_ignore_ascii_case("localhost");
    let ip = id.parse::<std::net::IpAddr>().is_ok();
    (loopback || ip).then(|| {
        format!(
            "{id:?} is a host name every development certificate carries; a node id must \
             name one node (e.g. node1)"
        )
    })
}

impl Config {
    /// Checks what serde cannot: ranges, uniqueness, cross-field rules.
    pub fn validate(&self) -> Result<()> {
        self.validate_ids()?;
        self.validate_limits()?;
        self.validate_replication()?;
        self.validate_security()?;
        if self.storage.fsync == FsyncMode::Periodic && self.storage.fsync_interval_ms == 0 {
            return bad(
                "storage.fsync_interval_ms",
                "must be at least 1 with fsync = \"periodic\"".into(),
            );
        }
        Ok(())
    }

    /// The node's, the cluster's and every peer's id and URL.
    fn validate_ids(&self) -> Result<()> {
        if !valid_id(&self.node_id) {
            return bad(
                "node_id",
                format!(
                    "{:?} must be 1..=64 characters of [A-Za-z0-9._-]",
                    self.node_id
                ),
            );
        }
        if !valid_id(&self.cluster_id) {
            return bad(
                "cluster_id",
                format!(
                    "{:?} must be 1..=64 characters of [A-Za-z0-9._-]",
                    self.cluster_id
                ),
            );
        }
        if let Some(why) = host_like(&self.node_id) {
            return bad("node_id", why);
        }
        let mut seen = HashSet::new();
        for peer in &self.peers {
            if !valid_id(&peer.id) {
                return bad(
                    "peers",
                    format!(
                        "peer id {:?} must be 1..=64 characters of [A-Za-z0-9._-]",
                        peer.id
                    ),
                );
            }
            if let Some(why) = host_like(&peer.id) {
                return bad("peers", why);
            }
            if peer.id == self.node_id {
                return bad(
                    "peers",
                    format!("lists this node itself ({:?}) as a peer", peer.id),
                );
            }
            if !seen.insert(peer.id.as_str()) {
                return bad("peers", format!("peer id {:?} appears twice", peer.id));
            }
            if !(peer.url.starts_with("http://") || peer.url.starts_with("https://"))
                || peer.url.parse::<tonic::transport::Uri>().is_err()
            {
                return bad(
                    "peers",
                    format!(
                        "peer {:?} has url {:?}; expected http://HOST:PORT",
                        peer.id, peer.url
                    ),
                );
            }
        }
        Ok(())
    }

    /// `[limits]`.
    fn validate_limits(&self) -> Result<()> {
        let l = &self.limits;
        if l.max_value_bytes == 0 || l.max_value_bytes > MAX_VALUE_BYTES_CEILING {
            return bad(
                "limits.max_value_bytes",
                format!(
                    "{} is outside 1..={MAX_VALUE_BYTES_CEILING}",
                    l.max_value_bytes
                ),
            );
        }
        for (key, v) in [
            ("limits.write_queue_depth", l.write_queue_depth),
            ("limits.peer_queue_depth", l.peer_queue_depth),
        ] {
            if v == 0 || v > 1 << 20 {
                return bad(key, format!("{v} is outside 1..=1048576"));
            }
        }
        for (key, v) in [
            ("limits.write_queue_bytes", l.write_queue_bytes),
            ("limits.peer_queue_bytes", l.peer_queue_bytes),
        ] {
            if !(1024 * 1024..=1 << 31).contains(&v) {
                return bad(key, format!("{v} is outside 1 MiB..=2 GiB"));
            }
        }
        if l.max_batch == 0 || l.max_batch > 65_536 {
            return bad(
                "limits.max_batch",
                format!("{} is outside 1..=65536", l.max_batch),
            );
        }
        Ok(())
    }

    /// `[replication]`, the drain timeout and the memtable size.
    fn validate_replication(&self) -> Result<()> {
        let r = &self.replication;
        for (key, v) in [
            ("replication.batch_max_entries", r.batch_max_entries as u64),
            ("replication.batch_max_bytes", r.batch_max_bytes as u64),
            ("replication.rpc_timeout_ms", r.rpc_timeout_ms),
            (
                "replication.consistency_timeout_ms",
                r.consistency_timeout_ms,
            ),
            ("replication.backoff_min_ms", r.backoff_min_ms),
            (
                "replication.anti_entropy_interval_secs",
                r.anti_entropy_interval_secs,
            ),
            ("replication.tombstone_ttl_secs", r.tombstone_ttl_secs),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        // Upper bounds keep every derived time (ms from secs, deadlines)
        // far inside u64 and tokio's Instant: a value near u64::MAX would
        // wrap in release builds or panic when added to a clock.
        const DAY_MS: u64 = 24 * 3600 * 1000;
        const TEN_YEARS_SECS: u64 = 10 * 366 * 24 * 3600;
        for (key, v, max) in [
            ("replication.rpc_timeout_ms", r.rpc_timeout_ms, 3_600_000),
            (
                "replication.consistency_timeout_ms",
                r.consistency_timeout_ms,
                3_600_000,
            ),
            ("replication.backoff_min_ms", r.backoff_min_ms, 3_600_000),
            ("replication.backoff_max_ms", r.backoff_max_ms, 3_600_000),
            ("replication.max_clock_skew_ms", r.max_clock_skew_ms, DAY_MS),
            (
                "replication.max_log_age_secs",
                r.max_log_age_secs,
                TEN_YEARS_SECS,
            ),
            (
                "replication.anti_entropy_interval_secs",
                r.anti_entropy_interval_secs,
                7 * 24 * 3600,
            ),
            (
                "replication.tombstone_ttl_secs",
                r.tombstone_ttl_secs,
                TEN_YEARS_SECS,
            ),
            (
                "storage.fsync_interval_ms",
                self.storage.fsync_interval_ms,
                60_000,
            ),
        ] {
            if v > max {
                return bad(key, format!("{v} is above the most it may be, {max}"));
            }
        }
        if r.backoff_max_ms < r.backoff_min_ms {
            return bad(
                "replication.backoff_max_ms",
                format!(
                    "{} is below backoff_min_ms {}",
                    r.backoff_max_ms, r.backoff_min_ms
                ),
            );
        }
        if r.batch_max_bytes > 64 * 1024 * 1024 {
            return bad(
                "replication.batch_max_bytes",
                "must be at most 64 MiB".into(),
            );
        }
        if self.drain_timeout_ms > 600_000 {
            return bad(
                "drain_timeout_ms",
                format!("{} is above 600000 (10 minutes)", self.drain_timeout_ms),
            );
        }
        let live = MIN_WATCH_RETAIN_CHANGES;
        if !(live..=100_000_000).contains(&self.storage.watch_retain_changes) {
            return bad(
                "storage.watch_retain_changes",
                format!(
                    "{} is outside {live}..=100000000: the feed keeps at least what a \
                     live watcher may lag behind",
                    self.storage.watch_retain_changes
                ),
            );
        }
        if !(1..=1024).contains(&self.storage.memtable_mb) {
            return bad(
                "storage.memtable_mb",
                format!("{} is outside 1..=1024", self.storage.memtable_mb),
            );
        }
        Ok(())
    }

    /// TLS files come as a set; TLS needs a peer listener and `https://`
    /// peers; and, like Redis's protected mode, a node reachable from other
    /// machines without TLS refuses to start unless told `insecure`.
    fn validate_security(&self) -> Result<()> {
        let t = &self.tls;
        let set = [&t.cert, &t.key, &t.ca]
            .iter()
            .filter(|p| p.is_some())
            .count();
        if set != 0 && set != 3 {
            return bad(
                "tls",
                "set cert, key and ca together (all three, or none for no TLS)".into(),
            );
        }
        if t.enabled() {
            let Some(peer_listen) = self.peer_listen else {
                return bad(
                    "peer_listen",
                    "TLS needs a peer listener, where peers must present a certificate \
                     from the cluster's CA; set peer_listen (e.g. 0.0.0.0:50061) and point \
                     the peers' urls at it"
                        .into(),
                );
            };
            if peer_listen == self.listen {
                return bad("peer_listen", "must differ from listen".into());
            }
            if let Some(p) = self.peers.iter().find(|p| !p.url.starts_with("https://")) {
                return bad(
                    "peers",
                    format!(
                        "peer {:?} has url {:?}; with TLS on, peers are https://",
                        p.id, p.url
                    ),
                );
            }
        }
        if let Some(addr) = self.exposed_listener() {
            if !t.enabled() && !self.insecure {
                return bad(
                    "listen",
                    format!(
                        "{addr} is reachable from other machines, but TLS is off: anyone \
                         who reaches it could read and write every key and forge \
                         replication. Set [tls] cert, key and ca (`meshkv certs` makes a \
                         development CA) and [auth] tokens_file, listen on 127.0.0.1, or \
                         set insecure = true (--insecure) on a network you trust"
                    ),
                );
            }
        }
        Ok(())
    }

    /// The first listener other machines can reach (not loopback), if any.
    /// The metrics listener counts: its pages name peers, keys counts and
    /// errors, and it speaks plain HTTP.
    fn exposed_listener(&self) -> Option<SocketAddr> {
        [Some(self.listen), self.peer_listen, self.metrics_listen]
            .into_iter()
            .flatten()
            .find(|a| !a.ip().is_loopback())
    }

    /// Whether the node runs exposed without TLS because `insecure` says so.
    pub fn runs_insecure(&self) -> bool {
        !self.tls.enabled() && self.exposed_listener().is_some()
    }

    /// The largest gRPC message a node accepts: sized so that a value just over
    /// `max_value_bytes` still decodes and gets a clear InvalidArgument.
    pub fn max_message_bytes(&self) -> usize {
        self.limits.max_value_bytes + MAX_KEY_BYTES + 64 * 1024
    }
}

/// A config error naming the key at fault.
fn bad(key: &str, why: String) -> Result<()> {
    Err(Error::Config(format!("{key}: {why}")))
}

#[cfg(test)]
mod tests;
