//! `meshkv.v1.Replication`: what peers send us.

use std::{collections::HashSet, sync::Arc};

use tonic::{Request, Response, Status};

use crate::{
    api::validate,
    error::Error,
    proto::{self, replication_server::Replication},
    storage::{codec::version_from_proto, WriterHandle},
    version::Entry,
};

/// Accepts batches from the configured peers of this cluster only.
#[derive(Debug)]
pub struct ReplicationService {
    node_id: String,
    cluster_id: String,
    peers: Arc<HashSet<String>>,
    writer: WriterHandle,
    max_value_bytes: usize,
}

impl ReplicationService {
    /// A receiver for `node_id` in `cluster_id` that trusts `peers`.
    pub fn new(
        node_id: String,
        cluster_id: String,
        peers: Arc<HashSet<String>>,
        writer: WriterHandle,
        max_value_bytes: usize,
    ) -> Self {
        Self {
            node_id,
            cluster_id,
            peers,
            writer,
            max_value_bytes,
        }
    }

    /// Refuses senders from another cluster or outside the configured peers.
    pub fn check_sender(&self, cluster_id: &str, origin: &str) -> Result<(), Error> {
        if cluster_id != self.cluster_id {
            return Err(Error::PermissionDenied(format!(
                "cluster_id {cluster_id:?} is not this node's cluster {:?}",
                self.cluster_id
            )));
        }
        if !self.peers.contains(origin) {
            return Err(Error::PermissionDenied(format!(
                "{origin:?} is not a configured peer of node {:?}",
                self.node_id
            )));
        }
        Ok(())
    }
}

/// Checks and converts one wire mutation.
pub fn mutation_from_proto(
    i: usize,
    m: proto::Mutation,
    max_value_bytes: usize,
) -> Result<(String, Entry), Error> {
    let at = |e: Error| Error::InvalidArgument(format!("mutation {i}: {e}"));
    validate::key(&m.key).map_err(at)?;
    if let Some(v) = &m.value {
        validate::value(v.len(), max_value_bytes).map_err(at)?;
    }
    let version = m
        .version
        .ok_or_else(|| Error::InvalidArgument(format!("mutation {i}: no version")))?;
    if version.node_id.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "mutation {i}: version has no node_id"
        )));
    }
    Ok((
        m.key,
        Entry {
            version: version_from_proto(version),
            value: m.value,
        },
    ))
}

#[tonic::async_trait]
impl Replication for ReplicationService {
    async fn replicate(
        &self,
        request: Request<proto::ReplicateRequest>,
    ) -> Result<Response<proto::ReplicateResponse>, Status> {
        let req = request.into_inner();
        self.check_sender(&req.cluster_id, &req.origin)?;
        let mutations = req
            .mutations
            .into_iter()
            .enumerate()
            .map(|(i, m)| mutation_from_proto(i, m, self.max_value_bytes))
            .collect::<Result<Vec<_>, _>>()?;
        let received = mutations.len();
        let applied = if mutations.is_empty() {
            0
        } else {
            self.writer.apply(mutations).await?
        };
        crate::metrics::replicated_in(&req.origin, received as u64, applied);
        Ok(Response::new(proto::ReplicateResponse { applied }))
    }
}
