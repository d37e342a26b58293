//! `meshkv.v1.Replication`: what peers send us.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    api::validate::{self, Membership},
    error::Error,
    proto::{self, replication_server::Replication},
    storage::{codec::version_from_proto, WriterHandle},
    version::Entry,
};

/// Accepts batches from the configured peers of this cluster only.
#[derive(Debug)]
pub struct ReplicationService {
    members: Arc<Membership>,
    writer: WriterHandle,
    max_value_bytes: usize,
}

impl ReplicationService {
    /// A receiver trusting `members`, applying through `writer`.
    pub fn new(members: Arc<Membership>, writer: WriterHandle, max_value_bytes: usize) -> Self {
        Self {
            members,
            writer,
            max_value_bytes,
        }
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
        self.members.check(&req.cluster_id, &req.origin)?;
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
