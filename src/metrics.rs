//! Metrics, recorded through the `metrics` facade and served in the
//! Prometheus text format at `GET /metrics` on `metrics_listen`. Without an
//! installed recorder (unit tests, or no `metrics_listen`) every call is a
//! no-op.

use std::{net::SocketAddr, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// Installs the process-wide Prometheus recorder.
pub fn install() -> Result<PrometheusHandle> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
        .map_err(|e| Error::Config(format!("metrics buckets: {e}")))?
        .install_recorder()
        .map_err(|e| Error::Config(format!("metrics recorder: {e}")))
}

/// Serves `GET /metrics` until `shutdown`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> Result<(SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("cannot listen for metrics on {addr}"), e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::io("metrics address", e))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    );
    let fut = async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    };
    Ok((bound, fut))
}

/// Starts every counter of the node, and of each of `peers`, at 0 (and the
/// tombstones-waiting gauge, measured later): a
/// series Prometheus has never seen makes `increase()` blind to its first
/// step, so alerts on refusals or skew would miss the first event.
pub fn register(peers: &[String]) {
    for name in [
        "meshkv_clock_skew_events_total",
        "meshkv_log_truncated_records_total",
        "meshkv_tombstones_purged_total",
    ] {
        metrics::counter!(name).increment(0);
    }
    for copy in ["local", "peer"] {
        metrics::counter!("meshkv_read_repairs_total", "copy" => copy).increment(0);
    }
    for peer in peers {
        for name in [
            "meshkv_peer_refused_entries_total",
            "meshkv_replicated_out_entries_total",
            "meshkv_anti_entropy_rounds_total",
            "meshkv_anti_entropy_keys_repaired_total",
        ] {
            metrics::counter!(name, "peer" => peer.clone()).increment(0);
        }
        for name in [
            "meshkv_replicated_in_entries_total",
            "meshkv_replicated_in_applied_total",
            "meshkv_replicated_in_refused_total",
        ] {
            metrics::counter!(name, "origin" => peer.clone()).increment(0);
        }
        // Measured by each collection pass (every tombstone TTL / 8, at
        // most 10 minutes); none is known to wait before the first.
        metrics::gauge!("meshkv_tombstones_waiting", "peer" => peer.clone()).set(0.0);
        for kind in ["lost", "replaced"] {
            metrics::counter!("meshkv_conflicts_total", "peer" => peer.clone(), "kind" => kind)
                .increment(0);
        }
    }
}

/// A client request that succeeded, with its latency.
pub fn request(method: &'static str, took: Duration) {
    metrics::counter!("meshkv_requests_total", "method" => method).increment(1);
    metrics::histogram!("meshkv_request_duration_seconds", "method" => method)
        .record(took.as_secs_f64());
}

/// How long one stage of the write or replication path took, so that a
/// replication lag can be taken apart (`meshkv_stage_duration_seconds`):
/// - `writer_prepare`: the writer building a group commit (point reads for
///   remote merges, encoding), before the storage engine sees it;
/// - `writer_commit`: the storage engine committing it, fsync included;
/// - `log_read_disk`: a streamer reading a batch from disk (it fell behind
///   the in-memory window);
/// - `replicate_round_trip`: a streamed batch, from sent to acknowledged;
/// - `replicate_apply`: a peer's batch, from received to durable here;
/// - `retention`: one pass of log retention.
pub fn stage(stage: &'static str, took: Duration) {
    metrics::histogram!("meshkv_stage_duration_seconds", "stage" => stage)
        .record(took.as_secs_f64());
}

/// How long after its origin stamped it the oldest entry of a streamed batch
/// became durable here: the replication lag as this node sees it, measured
/// across two clocks (so skew adds to it).
pub fn replication_delay(origin: &str, took: Duration) {
    metrics::histogram!("meshkv_replication_delay_seconds", "origin" => origin.to_string())
        .record(took.as_secs_f64());
}

/// A batch received from a peer: how many entries came, how many won, and
/// how many were refused (skipped, never stalling the sender).
pub fn replicated_in(origin: &str, received: u64, applied: u64, refused: u64) {
    metrics::counter!("meshkv_replicated_in_entries_total", "origin" => origin.to_string())
        .increment(received);
    metrics::counter!("meshkv_replicated_in_applied_total", "origin" => origin.to_string())
        .increment(applied);
    if refused > 0 {
        metrics::counter!("meshkv_replicated_in_refused_total", "origin" => origin.to_string())
            .increment(refused);
    }
}

/// Entries a peer refused from this node's stream or repairs.
pub fn peer_refused(peer: &str, n: u64) {
    metrics::counter!("meshkv_peer_refused_entries_total", "peer" => peer.to_string()).increment(n);
}

/// Expired tombstones that cannot be purged until `peer` is known to hold them.
pub fn tombstones_waiting(peer: &str, n: u64) {
    metrics::gauge!("meshkv_tombstones_waiting", "peer" => peer.to_string()).set(n as f64);
}

/// A copy repaired by a read at QUORUM or ALL: `where` is `local` (this
/// node's) or `peer`.
pub fn read_repaired(place: &'static str) {
    metrics::counter!("meshkv_read_repairs_total", "copy" => place).increment(1);
}

/// A conflict that last-writer-wins decided (see `replication::conflicts`).
pub fn conflict(peer: &str, kind: &'static str) {
    metrics::counter!("meshkv_conflicts_total", "peer" => peer.to_string(), "kind" => kind)
        .increment(1);
}

/// 1 while the node reports SERVING, 0 otherwise (starting, catching up,
/// stopping, storage failed).
pub fn serving(serving: bool) {
    metrics::gauge!("meshkv_serving").set(if serving { 1.0 } else { 0.0 });
}

/// 1 once storage has failed: the node refuses writes until restarted.
pub fn storage_failed(failed: bool) {
    metrics::gauge!("meshkv_storage_failed").set(if failed { 1.0 } else { 0.0 });
}

/// A peer's estimated clock offset (its clock less ours).
pub fn peer_clock_offset(peer: &str, offset_ms: i64) {
    metrics::gauge!("meshkv_peer_clock_offset_seconds", "peer" => peer.to_string())
        .set(offset_ms as f64 / 1e3);
}

/// Entries a peer acknowledged.
pub fn replicated_out(peer: &str, entries: u64) {
    metrics::counter!("meshkv_replicated_out_entries_total", "peer" => peer.to_string())
        .increment(entries);
}

/// A finished anti-entropy round and the keys it repaired.
pub fn anti_entropy_round(peer: &str, keys_repaired: u64) {
    metrics::counter!("meshkv_anti_entropy_rounds_total", "peer" => peer.to_string()).increment(1);
    metrics::counter!("meshkv_anti_entropy_keys_repaired_total", "peer" => peer.to_string())
        .increment(keys_repaired);
}

/// Log records deleted by retention.
pub fn log_truncated(records: u64) {
    metrics::counter!("meshkv_log_truncated_records_total").increment(records);
}

/// Tombstones purged after their TTL.
pub fn tombstones_purged(n: u64) {
    metrics::counter!("meshkv_tombstones_purged_total").increment(n);
}

/// A remote version arrived further ahead of our clock than `max_clock_skew`
/// and was refused.
pub fn clock_skew_event() {
    metrics::counter!("meshkv_clock_skew_events_total").increment(1);
}

/// What the per-peer gauges show of one peer.
#[derive(Debug, Clone, Copy)]
pub struct PeerGauges<'a> {
    /// The peer's node id.
    pub peer: &'a str,
    /// Local writes it has not acknowledged.
    pub backlog_entries: u64,
    /// Their approximate bytes.
    pub backlog_bytes: u64,
    /// Age of the oldest of them, in seconds.
    pub lag_seconds: f64,
    /// The highest seq it acknowledged.
    pub acked_seq: u64,
    /// A stream to it is up.
    pub connected: bool,
}

/// Per-peer replication gauges.
pub fn peer_gauges(g: PeerGauges<'_>) {
    let peer = g.peer.to_string();
    metrics::gauge!("meshkv_peer_backlog_entries", "peer" => peer.clone())
        .set(g.backlog_entries as f64);
    metrics::gauge!("meshkv_peer_backlog_bytes", "peer" => peer.clone())
        .set(g.backlog_bytes as f64);
    metrics::gauge!("meshkv_peer_lag_seconds", "peer" => peer.clone()).set(g.lag_seconds);
    metrics::gauge!("meshkv_peer_acked_seq", "peer" => peer.clone()).set(g.acked_seq as f64);
    metrics::gauge!("meshkv_peer_connected", "peer" => peer).set(if g.connected {
        1.0
    } else {
        0.0
    });
}

/// Storage gauges.
pub fn store_gauges(log_bytes: u64, keys: u64) {
    metrics::gauge!("meshkv_log_bytes").set(log_bytes as f64);
    metrics::gauge!("meshkv_keys").set(keys as f64);
}
