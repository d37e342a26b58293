//! `meshkv.v1.Replication`: what peers send us.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    api::validate::Membership,
    proto::{self, replication_server::Replication},
    security::ConnInfo,
    storage::WriterHandle,
    wire,
};

/// Accepts batches from the configured peers of this cluster only.
#[derive(Debug)]
pub struct ReplicationService {
    members: Arc<Membership>,
    writer: WriterHandle,
}

impl ReplicationService {
    /// A receiver trusting `members`, applying through `writer`.
    pub fn new(members: Arc<Membership>, writer: WriterHandle) -> Self {
        Self { members, writer }
    }
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn replicate(
        &self,
        request: Request<proto::ReplicateRequest>,
    ) -> Result<Response<proto::ReplicateResponse>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let req = request.into_inner();
        self.members
            .check(&req.cluster_id, &req.origin, conn.as_ref())?;
        let received = req.mutations.len() as u64;
        // Each entry is checked alone: one that must be refused is skipped
        // and reported, and the rest of the batch is applied, so the sender's
        // stream moves on instead of retrying the same batch forever.
        let (mutations, refused) = wire::split_batch(req.mutations);
        for r in &refused {
            tracing::debug!(origin = %req.origin, key = %r.key, reason = %r.reason, "refused a replicated entry");
        }
        let applied = if mutations.is_empty() {
            0
        } else {
            self.writer.apply(mutations, !req.repair).await?
        };
        crate::metrics::replicated_in(&req.origin, received, applied, refused.len() as u64);
        Ok(Response::new(proto::ReplicateResponse { applied, refused }))
    }
}
