//! `meshkv.v1.Admin`: cluster status and full dumps for operators and tests.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    error::Error,
    proto::{self, admin_server::Admin},
    replication::PeerManager,
    storage::codec::to_mutation,
};

/// Entries buffered between the storage scan and a slow Dump client.
const DUMP_BUFFER: usize = 256;

/// Serves ClusterStatus and Dump.
#[derive(Debug)]
pub struct AdminService {
    manager: Arc<PeerManager>,
    health: watch::Receiver<String>,
}

impl AdminService {
    /// `health` carries the node's health in words (SERVING, or why not).
    pub fn new(manager: Arc<PeerManager>, health: watch::Receiver<String>) -> Self {
        Self { manager, health }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn cluster_status(
        &self,
        _request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let ctx = self.manager.ctx();
        let store = &ctx.store;
        let fingerprint = {
            let digests = store.digests();
            let bytes: Vec<u8> = digests
                .as_slice()
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            xxh3_64(&bytes)
        };
        let peers = self
            .manager
            .views()
            .into_iter()
            .map(|v| proto::PeerStatus {
                id: v.id,
                url: v.url,
                connected: v.state.connected,
                acked_seq: v.state.acked_seq,
                backlog_entries: v.backlog_entries,
                backlog_bytes: v.backlog_bytes,
                lag_seconds: v.lag_seconds,
                last_error: v.state.last_error.unwrap_or_default(),
                phase: v.state.phase.as_str().to_string(),
                repair_rounds: v.state.repair_rounds,
                keys_repaired: v.state.keys_repaired,
            })
            .collect();
        Ok(Response::new(proto::ClusterStatusResponse {
            node_id: ctx.node_id.clone(),
            cluster_id: ctx.cluster_id.clone(),
            last_seq: self.manager.last_seq(),
            log_first_seq: store.log_first_seq().map_err(Status::from)?.unwrap_or(0),
            keys: store.key_count(),
            fingerprint,
            health: self.health.borrow().clone(),
            peers,
        }))
    }

    type DumpStream = ReceiverStream<Result<proto::Mutation, Status>>;

    async fn dump(
        &self,
        _request: Request<proto::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let (tx, rx) = mpsc::channel(DUMP_BUFFER);
        let store = Arc::clone(&self.manager.ctx().store);
        tokio::task::spawn_blocking(move || {
            let scanned = store.for_each(|key, entry| {
                tx.blocking_send(Ok(to_mutation(&key, &entry)))
                    .map_err(|_| Error::Unavailable("dump client went away".into()))
            });
            if let Err(e) = scanned {
                let _ = tx.blocking_send(Err(Status::from(e)));
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
