//! `meshkv.v1.Admin`: cluster status and full dumps for operators and tests.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use xxhash_rust::xxh3::xxh3_64;

use crate::{
    error::Error,
    proto::{self, admin_server::Admin},
    replication::PeerManager,
    storage::Refresh,
    version::{to_mutation, version_to_proto},
};

/// Entries read from storage per step of a Dump, and buffered for its client.
const DUMP_CHUNK: usize = 256;
/// Dumps running at once on one node; more get RESOURCE_EXHAUSTED.
pub const MAX_DUMPS: usize = 4;
/// A client that takes nothing of its dump for this long loses it, and
/// its slot: otherwise four clients that never read hold every slot.
const DUMP_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves ClusterStatus and Dump.
#[derive(Debug)]
pub struct AdminService {
    manager: Arc<PeerManager>,
    health: watch::Receiver<String>,
    dumps: Arc<Semaphore>,
    /// How the node is protected, in words, for status.
    security: String,
}

impl AdminService {
    /// `health` carries the node's health in words (SERVING, or why not);
    /// `security` says how the node is protected.
    pub fn new(
        manager: Arc<PeerManager>,
        health: watch::Receiver<String>,
        security: String,
    ) -> Self {
        Self {
            manager,
            health,
            dumps: Arc::new(Semaphore::new(MAX_DUMPS)),
            security,
        }
    }
}

/// Streams every entry in chunks: each chunk is read on the blocking pool and
/// then sent from this async task, so a slow client holds a task and at most
/// two chunks, never a blocking thread or an open storage iterator.
async fn dump_chunks(
    store: Arc<crate::storage::Store>,
    blocking: crate::storage::blocking::Blocking,
    tx: mpsc::Sender<Result<proto::Mutation, Status>>,
    _permit: OwnedSemaphorePermit,
    stall: std::time::Duration,
) {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let s = Arc::clone(&store);
        let from = after.clone();
        let chunk = blocking
            .run("dump read", move || {
                s.scan_after(from.as_deref(), DUMP_CHUNK)
            })
            .await
            .and_then(|r| r);
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(Status::from(e))).await;
                return;
            }
        };
        let last = chunk.len() < DUMP_CHUNK;
        for (data_key, key, entry) in chunk {
            if tx
                .send_timeout(Ok(to_mutation(&key, &entry)), stall)
                .await
                .is_err()
            {
                return; // the client went away, or stopped reading
            }
            after = Some(data_key);
        }
        if last {
            return;
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn conflicts(
        &self,
        _request: Request<proto::ConflictsRequest>,
    ) -> Result<Response<proto::ConflictsResponse>, Status> {
        use crate::replication::conflicts::Kind;
        let conflicts = self
            .manager
            .ctx()
            .conflicts
            .recent()
            .into_iter()
            .map(|c| proto::Conflict {
                key: c.key,
                kind: match c.kind {
                    Kind::Lost => proto::conflict::Kind::Lost,
                    Kind::Replaced => proto::conflict::Kind::Replaced,
                }
                .into(),
                kept: Some(version_to_proto(&c.kept)),
                lost: Some(version_to_proto(&c.lost)),
                peer: c.peer,
                at_ms: c.at_ms,
            })
            .collect();
        Ok(Response::new(proto::ConflictsResponse { conflicts }))
    }

    async fn write_status(
        &self,
        request: Request<proto::WriteStatusRequest>,
    ) -> Result<Response<proto::WriteStatusResponse>, Status> {
        let (origin, seq) = crate::api::consistency::parse_token(&request.into_inner().token)?;
        let ctx = self.manager.ctx();
        if origin != ctx.node_id {
            return Ok(Response::new(proto::WriteStatusResponse {
                applied_here: ctx.store.positions.of(&origin) >= seq,
                origin,
                seq,
                peers: Vec::new(),
            }));
        }
        if seq > self.manager.last_seq() {
            return Err(Error::InvalidArgument(format!(
                "this node's log ends at {}; the token names {seq}, which it never wrote",
                self.manager.last_seq()
            ))
            .into());
        }
        let peers = self
            .manager
            .peers()
            .iter()
            .map(|p| {
                let s = p.state();
                proto::WriteProgress {
                    peer: p.id.clone(),
                    applied: s.acked_seq >= seq,
                    acked_seq: s.acked_seq,
                    behind: seq.saturating_sub(s.acked_seq),
                    connected: s.connected,
                }
            })
            .collect();
        Ok(Response::new(proto::WriteStatusResponse {
            origin,
            seq,
            applied_here: true,
            peers,
        }))
    }

    async fn cluster_status(
        &self,
        _request: Request<proto::ClusterStatusRequest>,
    ) -> Result<Response<proto::ClusterStatusResponse>, Status> {
        let ctx = self.manager.ctx();
        let store = &ctx.store;
        let fingerprint = {
            // Exact, so operators can compare nodes: a full rescan, versions only.
            let view = ctx
                .digests(usize::MAX, Refresh::Wait)
                .await
                .map_err(Status::from)?;
            let bytes: Vec<u8> = view
                .digests
                .as_slice()
                .iter()
                .flat_map(|d| d.to_le_bytes())
                .collect();
            xxh3_64(&bytes)
        };
        let now_ms = ctx.clock.now_ms();
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
                phase: v.state.phase().as_str().to_string(),
                last_error: v.state.last_error.unwrap_or_default(),
                repair_rounds: v.state.repair_rounds,
                keys_repaired: v.state.keys_repaired,
                refused: v.state.refused,
                last_refused: v.state.last_refused.unwrap_or_default(),
                tombstones_waiting: v.state.tombstones_waiting,
                catching_up: v.state.catching_up,
                last_round_age_seconds: v
                    .state
                    .last_complete_round_ms
                    .map_or(-1.0, |ms| now_ms.saturating_sub(ms) as f64 / 1e3),
                conflicts_lost: v.conflicts.lost,
                conflicts_replaced: v.conflicts.replaced,
                clock_offset_ms: v.clock.offset_ms,
                clock_samples: v.clock.samples,
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
            security: self.security.clone(),
        }))
    }

    type DumpStream = ReceiverStream<Result<proto::Mutation, Status>>;

    async fn dump(
        &self,
        _request: Request<proto::DumpRequest>,
    ) -> Result<Response<Self::DumpStream>, Status> {
        let permit = Arc::clone(&self.dumps).try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{MAX_DUMPS} dumps are already running on this node; retry later"
            ))
        })?;
        let (tx, rx) = mpsc::channel(DUMP_CHUNK);
        let ctx = self.manager.ctx();
        tokio::spawn(dump_chunks(
            Arc::clone(&ctx.store),
            ctx.blocking,
            tx,
            permit,
            DUMP_STALL,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dump_client_that_never_reads_loses_its_slot() {
        // Issue 24 item 10: the slot was held for as long as the client
        // kept the stream open without reading.
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _seq, _join) = crate::storage::writer::for_tests(dir.path());
        let writes = (0..3 * DUMP_CHUNK)
            .map(|i| crate::storage::writer::LocalWrite::new(format!("k{i}"), Some(vec![1])))
            .collect();
        writer.write_batch(writes).await.unwrap();
        let slots = Arc::new(Semaphore::new(1));
        let permit = Arc::clone(&slots).try_acquire_owned().unwrap();
        let (tx, rx) = mpsc::channel(DUMP_CHUNK);
        let stall = std::time::Duration::from_millis(100);
        let task = tokio::spawn(dump_chunks(
            Arc::clone(&store),
            crate::storage::blocking::Blocking::Pool,
            tx,
            permit,
            stall,
        ));
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the dump gave up on a client that does not read")
            .unwrap();
        assert_eq!(slots.available_permits(), 1, "the slot is free again");
        drop(rx);
    }
}
