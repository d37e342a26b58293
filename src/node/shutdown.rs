//! Serving until shutdown, then stopping in order: health NOT_SERVING, stop
//! accepting and drain (at most `drain_timeout_ms`), background tasks,
//! then the writer commits what is queued, syncs and exits.

use std::time::Duration;

use tokio_stream::Stream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::server::Connected;

use crate::{
    error::Result,
    node::{core::Core, health::Health, listeners::Listeners, services::Routers},
};

/// Serves `routers` on `listeners` until `shutdown`, and for at most
/// `drain_timeout` after it while in-flight requests finish.
pub(super) async fn serve_until_drained<I, IO, IE>(
    routers: Routers,
    listeners: Listeners<I>,
    health: &Health,
    shutdown: &CancellationToken,
    drain_timeout: Duration,
) -> Result<()>
where
    I: Stream<Item = std::result::Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight requests");
            health.set(false, "shutting down").await;
        }
    };
    let client_server = routers
        .client
        .serve_with_incoming_shutdown(listeners.client.incoming, drain);
    let peer_server = {
        let shutdown = shutdown.clone();
        async move {
            match (routers.peer, listeners.peer) {
                (Some(router), Some(l)) => {
                    router
                        .serve_with_incoming_shutdown(l.incoming, shutdown.cancelled_owned())
                        .await
                }
                _ => Ok(()),
            }
        }
    };
    let server = async move {
        let (c, p) = tokio::join!(client_server, peer_server);
        c.and(p)
    };
    tokio::pin!(server);
    // Past it the node stops waiting; writes already queued still commit.
    tokio::select! {
        r = &mut server => Ok(r?),
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain_timeout).await } => {
            tracing::warn!(timeout = ?drain_timeout, "connections did not drain in time; stopping anyway");
            Ok(())
        }
    }
}

/// Stops the background tasks, then commits what is queued, syncs, and
/// stops the writer, even if a connection that did not drain still holds a
/// handle. Returns whether storage had failed.
pub(super) async fn stop(
    core: Core,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<bool> {
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    let Core {
        writer,
        writer_join,
        writer_done,
        periodic,
        manager,
        fatal,
        ..
    } = core;
    writer.close().await;
    drop(writer);
    drop(manager);
    let joined = writer_join.join().await;
    writer_done.cancel();
    if let Some(p) = periodic {
        let _ = p.await;
    }
    joined?;
    Ok(fatal.is_cancelled())
}
