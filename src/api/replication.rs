//! `meshkv.v1.Replication`: what peers send us.

use std::{collections::VecDeque, sync::Arc};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    api::validate::Membership,
    clock::physical_ms,
    error::{Error, Result},
    proto::{self, replication_server::Replication},
    replication::PeerManager,
    security::ConnInfo,
    storage::WriterHandle,
    wire,
};

/// Batches of one stream being applied at once. Applying them together lets
/// the writer commit them in one group; the answers still go out in order.
pub const STREAM_APPLYING: usize = 4;

/// Accepts batches from the configured peers of this cluster only.
#[derive(Debug)]
pub struct ReplicationService {
    members: Arc<Membership>,
    writer: WriterHandle,
    /// Notes conflicts; its clock stamps answers.
    manager: Arc<PeerManager>,
    /// Cancelled when the node starts to shut down: inbound streams end.
    shutdown: CancellationToken,
}

impl ReplicationService {
    /// A receiver trusting `members`, applying through `writer`, whose
    /// streams end once `shutdown` is cancelled.
    pub fn new(
        members: Arc<Membership>,
        writer: WriterHandle,
        manager: Arc<PeerManager>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            members,
            writer,
            manager,
            shutdown,
        }
    }
}

/// Applies one batch; the answer says what was applied and what refused.
async fn apply(
    writer: &WriterHandle,
    manager: &PeerManager,
    req: proto::ReplicateRequest,
) -> Result<proto::ReplicateResponse> {
    let started = std::time::Instant::now();
    let received = req.mutations.len() as u64;
    // The oldest entry of a streamed batch is its first: records go in seq order.
    let stamped_ms = match req.mutations.first().and_then(|m| m.version.as_ref()) {
        Some(v) if !req.repair => Some(physical_ms(v.hlc)),
        _ => None,
    };
    // Each entry is checked alone: one that must be refused is skipped
    // and reported, and the rest of the batch is applied, so the sender's
    // stream moves on instead of retrying the same batch forever.
    let (mutations, mut refused) = if req.repair {
        wire::split_batch(req.mutations)
    } else {
        wire::split_streamed(req.mutations, &req.origin)
    };
    let applied = if mutations.is_empty() {
        0
    } else {
        let done = writer.apply(mutations, !req.repair).await?;
        manager.note_contests(&req.origin, &done.contested);
        let malformed: Vec<u32> = refused.iter().map(|r| r.index).collect();
        refused.extend(
            done.refused
                .into_iter()
                .map(|(at, key, why)| proto::Refusal {
                    index: wire::request_index(&malformed, at),
                    key,
                    reason: why.to_string(),
                }),
        );
        refused.sort_by_key(|r| r.index);
        done.applied
    };
    for r in &refused {
        tracing::debug!(origin = %req.origin, key = ?r.key, reason = %r.reason, "refused a replicated entry");
    }
    crate::metrics::replicated_in(&req.origin, received, applied, refused.len() as u64);
    crate::metrics::stage("replicate_apply", started.elapsed());
    let now_ms = manager.ctx().clock.now_ms();
    if let Some(ms) = stamped_ms {
        crate::metrics::replication_delay(
            &req.origin,
            std::time::Duration::from_millis(now_ms.saturating_sub(ms)),
        );
    }
    Ok(proto::ReplicateResponse {
        applied,
        refused,
        now_ms,
    })
}

/// Records that `origin`'s log is applied here through `upto` (0: the batch
/// named no position). Called as batches are answered, in order: batches
/// of one stream are applied concurrently and may commit out of order, so
/// only once the oldest is done is every record up to its end readable here.
/// Published at once, persisted with the writer's next commit; after a
/// crash the stored position may lag, which only makes tokens wait.
fn applied_through(manager: &PeerManager, writer: &WriterHandle, origin: &str, upto: u64) {
    if upto == 0 {
        return;
    }
    manager.ctx().store.positions.set(origin, upto);
    writer.save_position(origin, upto);
}

/// The oldest batch still being applied; never resolves if there is none.
async fn oldest(
    applying: &mut VecDeque<JoinHandle<Result<proto::ReplicateResponse>>>,
) -> Result<proto::ReplicateResponse> {
    match applying.front_mut() {
        Some(task) => task
            .await
            .map_err(|e| Error::Unavailable(format!("applying a batch failed: {e}")))?,
        None => std::future::pending().await,
    }
}

/// Serves one origin's stream until it ends: up to [`STREAM_APPLYING`]
/// batches applied at once, answered in order. The first message is checked
/// against the membership; every later one must name the same origin.
///
/// The origin never ends its stream by itself, so at shutdown this side
/// does: it stops reading, answers the batches already being applied, and
/// closes with UNAVAILABLE. Otherwise the stream would hold the server's
/// graceful drain open until its timeout. The origin resumes from its cursor
/// with whichever run of this node comes back.
async fn serve_stream(
    members: Arc<Membership>,
    writer: WriterHandle,
    manager: Arc<PeerManager>,
    conn: Option<ConnInfo>,
    mut inbound: Streaming<proto::ReplicateRequest>,
    out: mpsc::Sender<std::result::Result<proto::ReplicateResponse, Status>>,
    shutdown: CancellationToken,
) {
    let mut sender: Option<(String, String)> = None;
    let mut applying = VecDeque::with_capacity(STREAM_APPLYING);
    // The origin's log seq each batch being applied ends at, in order.
    let mut ends: VecDeque<u64> = VecDeque::with_capacity(STREAM_APPLYING);
    let mut ended = false;
    let mut stopping = false;
    loop {
        if ended && applying.is_empty() {
            if stopping {
                let _ = out
                    .send(Err(Status::unavailable("the node is shutting down")))
                    .await;
            }
            return;
        }
        tokio::select! {
            () = shutdown.cancelled(), if !ended => {
                ended = true;
                stopping = true;
            }
            done = oldest(&mut applying) => {
                applying.pop_front();
                let upto = ends.pop_front().unwrap_or(0);
                let answer = done.map_err(Status::from);
                let failed = answer.is_err();
                if let (false, Some((_, origin))) = (failed, &sender) {
                    applied_through(&manager, &writer, origin, upto);
                }
                if out.send(answer).await.is_err() || failed {
                    return;
                }
            }
            next = inbound.message(), if !ended && applying.len() < STREAM_APPLYING => {
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => { ended = true; continue; }
                    Err(status) => {
                        tracing::debug!(origin = ?sender.as_ref().map(|s| &s.1), %status, "a replication stream broke");
                        return;
                    }
                };
                let checked = match &sender {
                    Some((cluster, origin)) if *cluster == req.cluster_id && *origin == req.origin => Ok(()),
                    Some((_, origin)) => Err(Error::InvalidArgument(format!(
                        "a replication stream from {origin:?} changed its cluster or origin"
                    ))),
                    None => members.check(&req.cluster_id, &req.origin, conn.as_ref()),
                };
                if let Err(e) = checked {
                    let _ = out.send(Err(Status::from(e))).await;
                    return;
                }
                sender.get_or_insert_with(|| (req.cluster_id.clone(), req.origin.clone()));
                ends.push_back(if req.repair { 0 } else { req.upto_seq });
                let (writer, manager) = (writer.clone(), Arc::clone(&manager));
                applying.push_back(tokio::spawn(async move { apply(&writer, &manager, req).await }));
            }
        }
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn replicate(
        &self,
        request: Request<proto::ReplicateRequest>,
    ) -> std::result::Result<Response<proto::ReplicateResponse>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let req = request.into_inner();
        self.members
            .check(&req.cluster_id, &req.origin, conn.as_ref())?;
        Ok(Response::new(
            apply(&self.writer, &self.manager, req).await?,
        ))
    }

    type ReplicateStreamStream =
        ReceiverStream<std::result::Result<proto::ReplicateResponse, Status>>;

    async fn replicate_stream(
        &self,
        request: Request<Streaming<proto::ReplicateRequest>>,
    ) -> std::result::Result<Response<Self::ReplicateStreamStream>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let (tx, rx) = mpsc::channel(STREAM_APPLYING);
        tokio::spawn(serve_stream(
            Arc::clone(&self.members),
            self.writer.clone(),
            Arc::clone(&self.manager),
            conn,
            request.into_inner(),
            tx,
            self.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
