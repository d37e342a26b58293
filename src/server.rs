//! Wires one node together and runs it until shutdown.
//!
//! Start-up opens storage, starts the writer thread, then serves every gRPC
//! service on one listener. Shutdown runs in the reverse order: health goes
//! NOT_SERVING, the server stops accepting and drains in-flight requests,
//! the services (and with them every writer handle) are dropped, and the
//! writer commits what it still holds, syncs and exits.

use std::{collections::HashSet, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_stream::{wrappers::TcpListenerStream, Stream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{server::Connected, Server};
use tonic_health::ServingStatus;

/// How long shutdown waits for connections to finish their requests and
/// close. Past it the node stops waiting; writes already queued still commit.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

use crate::{
    api::{KvService, ReplicationService},
    clock::SystemClock,
    config::{Config, FsyncMode},
    error::{Error, Result},
    proto::{kv_server::KvServer, replication_server::ReplicationServer},
    storage::{writer, Store, WriterOptions},
};

/// Binds `config.listen` and runs the node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", config.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the bound address", e))?;
    serve(config, TcpListenerStream::new(listener), addr, shutdown).await
}

/// Runs the node on connections from `incoming` (a TCP listener in
/// production, a simulated network in tests). `addr` is only logged.
pub async fn serve<I, IO, IE>(
    config: Config,
    incoming: I,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<()>
where
    I: Stream<Item = std::result::Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health.set_not_serving::<KvServer<KvService>>().await;

    let (store, recovered) = {
        let (dir, node, cluster, cache) = (
            config.data_dir.clone(),
            config.node_id.clone(),
            config.cluster_id.clone(),
            config.storage.cache_mb,
        );
        tokio::task::spawn_blocking(move || Store::open(&dir, &node, &cluster, cache))
            .await
            .map_err(|e| Error::Unavailable(format!("storage open panicked: {e}")))??
    };
    tracing::info!(
        data_dir = %config.data_dir.display(),
        keys = recovered.keys,
        last_seq = recovered.last_seq,
        fresh = recovered.fresh,
        "storage open"
    );

    let fatal = CancellationToken::new();
    let (writer, _seq_rx, writer_thread) = writer::spawn(
        Arc::clone(&store),
        &recovered,
        Arc::new(SystemClock),
        WriterOptions {
            node_id: config.node_id.as_str().into(),
            fsync: config.storage.fsync,
            queue_depth: config.limits.write_queue_depth,
            max_batch: config.limits.max_batch,
            max_clock_skew: Duration::from_secs(60),
        },
        fatal.clone(),
    )?;

    let tracker = TaskTracker::new();
    if config.storage.fsync == FsyncMode::Periodic {
        tracker.spawn(writer::periodic_sync(
            Arc::clone(&store),
            Duration::from_millis(config.storage.fsync_interval_ms),
            fatal.clone(),
            shutdown.clone(),
        ));
    }
    {
        let (health, fatal, shutdown) = (health.clone(), fatal.clone(), shutdown.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = fatal.cancelled() => {
                    tracing::error!("storage failed: NOT_SERVING; writes are refused until restart");
                    health.set_service_status("", ServingStatus::NotServing).await;
                    health.set_not_serving::<KvServer<KvService>>().await;
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }

    let max_msg = config.max_message_bytes();
    let peers: Arc<HashSet<String>> = Arc::new(config.peers.iter().map(|p| p.id.clone()).collect());
    let kv = KvServer::new(KvService::new(
        Arc::clone(&store),
        writer.clone(),
        config.limits.max_value_bytes,
    ))
    .max_decoding_message_size(max_msg)
    .max_encoding_message_size(max_msg);
    let replication = ReplicationServer::new(ReplicationService::new(
        config.node_id.clone(),
        config.cluster_id.clone(),
        peers,
        writer.clone(),
        config.limits.max_value_bytes,
    ))
    // A replication batch may carry many values, and always at least one.
    .max_decoding_message_size(max_msg.saturating_mul(4))
    .max_encoding_message_size(max_msg.saturating_mul(4));

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Corrupt(format!("reflection descriptors: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Corrupt(format!("reflection descriptors: {e}")))?;

    health.set_serving::<KvServer<KvService>>().await;
    health.set_service_status("", ServingStatus::Serving).await;
    tracing::info!(
        grpc = %addr,
        node_id = %config.node_id,
        cluster_id = %config.cluster_id,
        peers = config.peers.len(),
        fsync = ?config.storage.fsync,
        "listening"
    );

    let drain = {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight requests");
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health.set_not_serving::<KvServer<KvService>>().await;
        }
    };
    let server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kv)
        .add_service(replication)
        .serve_with_incoming_shutdown(incoming, drain);
    tokio::pin!(server);
    let served = tokio::select! {
        r = &mut server => r,
        () = async { shutdown.cancelled().await; tokio::time::sleep(DRAIN_TIMEOUT).await } => {
            tracing::warn!(timeout = ?DRAIN_TIMEOUT, "connections did not drain in time; stopping anyway");
            Ok(())
        }
    };

    // Commit what is queued, sync, and stop the writer, even if a connection
    // that did not drain still holds a handle.
    shutdown.cancel();
    writer.close().await;
    drop(writer);
    tracker.close();
    tracker.wait().await;
    tokio::task::spawn_blocking(move || writer_thread.join())
        .await
        .map_err(|e| Error::Unavailable(format!("writer join: {e}")))?
        .map_err(|_| Error::Unavailable("the writer thread panicked".into()))?;
    served?;
    if fatal.is_cancelled() {
        return Err(Error::Unavailable("stopped after a storage failure".into()));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}
