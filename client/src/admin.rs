//! The operator's calls: a node's status, a write's receipt, the conflict
//! ledger and the health check. They answer with the node's messages as
//! they are (`proto`), which carry more than a typed wrapper would keep.

use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::{
    proto::{self, admin_client::AdminClient},
    Client, Error, Token,
};

impl Client {
    /// The node's state and its replication to each peer.
    pub async fn cluster_status(&self) -> Result<proto::ClusterStatusResponse, Error> {
        let call = |ch, r| async move { AdminClient::new(ch).cluster_status(r).await };
        let req = proto::ClusterStatusRequest {};
        self.call(true, Some(self.deadline(None)), call, req).await
    }

    /// Which peers have applied the write of `token`; ask the node that
    /// took the write, the only one that tracks its peers' progress.
    pub async fn write_status(&self, token: &Token) -> Result<proto::WriteStatusResponse, Error> {
        let call = |ch, r| async move { AdminClient::new(ch).write_status(r).await };
        let req = proto::WriteStatusRequest {
            token: token.0.clone(),
        };
        self.call(true, Some(self.deadline(None)), call, req).await
    }

    /// The last conflicts last-writer-wins decided on the node, newest
    /// first.
    pub async fn conflicts(&self) -> Result<Vec<proto::Conflict>, Error> {
        let call = |ch, r| async move { AdminClient::new(ch).conflicts(r).await };
        let req = proto::ConflictsRequest {};
        let answer = self
            .call(true, Some(self.deadline(None)), call, req)
            .await?;
        Ok(answer.conflicts)
    }

    /// The node's health: SERVING once it has caught up with its peers.
    /// Asks the current endpoint only, without failing over: the answer
    /// is about one node.
    pub async fn health(&self) -> Result<ServingStatus, Error> {
        let call = |ch, r| async move { HealthClient::new(ch).check(r).await };
        let req = HealthCheckRequest {
            service: String::new(),
        };
        let answer = self
            .call(false, Some(self.deadline(None)), call, req)
            .await?;
        Ok(answer.status())
    }
}
