//! The node's health: the gRPC health service, the words `meshkv status`
//! shows, and the tasks that move it (SERVING after the first round for an
//! empty or stale node; NOT_SERVING for good after a storage failure).

use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic_health::{
    pb::health_server::{Health as HealthApi, HealthServer},
    server::HealthReporter,
    ServingStatus,
};

use crate::replication::PeerManager;

/// The node's health, kept in the gRPC health service and in words for status.
#[derive(Clone)]
pub(super) struct Health {
    reporter: HealthReporter,
    words: Arc<watch::Sender<String>>,
}

impl Health {
    /// A reporter NOT_SERVING ("starting"), its service, and the words' receiver.
    pub(super) async fn start() -> (Self, HealthServer<impl HealthApi>, watch::Receiver<String>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let (words, words_rx) = watch::channel(String::new());
        let health = Self {
            reporter,
            words: Arc::new(words),
        };
        health.set(false, "starting").await;
        (health, service, words_rx)
    }

    /// Sets both services' status and the words.
    pub(super) async fn set(&self, serving: bool, why: &str) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        crate::metrics::serving(serving);
        self.reporter.set_service_status("", status).await;
        self.reporter
            .set_service_status("meshkv.v1.KV", status)
            .await;
        self.words.send_replace(if serving {
            "SERVING".into()
        } else {
            format!("NOT_SERVING: {why}")
        });
    }
}

/// SERVING now, or (`wait_for_round`: an empty, stale or long-stopped node)
/// once the first anti-entropy round with a peer finished. Either way
/// NOT_SERVING for good once `fatal` (a storage failure) is cancelled.
pub(super) async fn watch_health(
    health: &Health,
    wait_for_round: bool,
    manager: &PeerManager,
    fatal: &CancellationToken,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) {
    crate::metrics::storage_failed(false);
    if wait_for_round {
        let why = "waiting for the first anti-entropy round with a peer";
        tracing::info!("{why}; NOT_SERVING until then");
        health.set(false, why).await;
        let (health, fatal, shutdown) = (health.clone(), fatal.clone(), shutdown.clone());
        let mut synced = manager.synced();
        tracker.spawn(async move {
            let done = tokio::select! {
                r = synced.wait_for(|s| *s) => r.is_ok(),
                _ = shutdown.cancelled() => false,
            };
            if done && !fatal.is_cancelled() {
                tracing::info!("first anti-entropy round done: SERVING");
                health.set(true, "").await;
            }
        });
    } else {
        health.set(true, "").await;
    }
    let (health, fatal, shutdown) = (health.clone(), fatal.clone(), shutdown.clone());
    tracker.spawn(async move {
        tokio::select! {
            _ = fatal.cancelled() => {
                tracing::error!("storage failed: NOT_SERVING; writes are refused until restart");
                crate::metrics::storage_failed(true);
                health.set(false, "storage failed; restart the node").await;
            }
            _ = shutdown.cancelled() => {}
        }
    });
}
