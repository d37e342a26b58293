//! [`serve_with`]: a node's whole life, in start-up order.

use std::time::Duration;

use tokio_stream::Stream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;

use crate::{
    config::Config,
    error::{Error, Result},
    node::{core, health, listeners::Listeners, seams::Seams, secure, services, shutdown},
};

/// [`serve`](super::serve) with every seam supplied: how a simulation runs a node.
pub async fn serve_with<I, IO, IE>(
    config: Config,
    listeners: Listeners<I>,
    shutdown: CancellationToken,
    seams: Seams,
) -> Result<()>
where
    I: Stream<Item = std::result::Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Security material first: a bad file fails the start before storage opens.
    let secured = secure::Secured::load(&config, &seams)?;
    let (health, health_service, words) = health::Health::start().await;
    let storage = core::open_storage(&config, seams.blocking).await?;
    let tracker = TaskTracker::new();
    let metrics_on = start_metrics(&config, &shutdown, &tracker).await?;
    let core = core::Core::start(
        &config,
        &seams,
        storage,
        secured.connect.as_ref(),
        &shutdown,
        &tracker,
    )?;
    let peer_apart = listeners.peer.is_some();
    let routers = services::routers(
        &config,
        &core,
        &secured,
        health_service,
        words,
        peer_apart,
        &shutdown,
    )?;
    let start = &core.start;
    let wait_for_round = start.fresh || start.stale || start.past_log;
    health::watch_health(
        &health,
        wait_for_round,
        &core.manager,
        &core.fatal,
        &shutdown,
        &tracker,
    )
    .await;
    tracing::info!(
        grpc = %listeners.client.addr,
        peer_grpc = ?listeners.peer.as_ref().map(|p| p.addr),
        security = %secured.words,
        node_id = %config.node_id,
        cluster_id = %config.cluster_id,
        peers = config.peers.len(),
        fsync = ?config.storage.fsync,
        metrics = metrics_on,
        "listening"
    );
    let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
    let served =
        shutdown::serve_until_drained(routers, listeners, &health, &shutdown, drain_timeout).await;
    let storage_failed = shutdown::stop(core, &shutdown, &tracker).await?;
    served?;
    if storage_failed {
        return Err(Error::Unavailable("stopped after a storage failure".into()));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Serves metrics on `metrics_listen`, if set; whether it is.
async fn start_metrics(
    config: &Config,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<bool> {
    let Some(addr) = config.metrics_listen else {
        return Ok(false);
    };
    let handle = crate::metrics::install()?;
    let (bound, fut) = crate::metrics::serve(addr, handle, shutdown.clone()).await?;
    tracing::info!(metrics = %bound, "metrics listening on /metrics");
    tracker.spawn(fut);
    Ok(true)
}
