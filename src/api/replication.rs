//! `meshkv.v1.Replication`: what peers send us.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    api::validate::{self, Membership},
    clock::{physical_ms, PhysicalClock},
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
    clock: Arc<dyn PhysicalClock>,
}

impl ReplicationService {
    /// A receiver trusting `members`, applying through `writer`; `clock` bounds
    /// how far in the future an accepted version may be.
    pub fn new(
        members: Arc<Membership>,
        writer: WriterHandle,
        max_value_bytes: usize,
        clock: Arc<dyn PhysicalClock>,
    ) -> Self {
        Self {
            members,
            writer,
            max_value_bytes,
            clock,
        }
    }
}

/// A remote version this far ahead of our wall clock is refused. Applying it
/// would drag this node's clock to the far future (up to the `u64` ceiling,
/// where it could no longer advance); `max_clock_skew_ms` only warns below this.
pub const MAX_FUTURE_MS: u64 = 365 * 24 * 3600 * 1000;

/// Checks and converts one wire mutation; `now_ms` is the local wall clock.
pub fn mutation_from_proto(
    i: usize,
    m: proto::Mutation,
    max_value_bytes: usize,
    now_ms: u64,
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
    if physical_ms(version.hlc) > now_ms.saturating_add(MAX_FUTURE_MS) {
        return Err(Error::InvalidArgument(format!(
            "mutation {i}: version {} is more than a year ahead of this node's clock",
            version.hlc
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
        let now_ms = self.clock.now_ms();
        let mutations = req
            .mutations
            .into_iter()
            .enumerate()
            .map(|(i, m)| mutation_from_proto(i, m, self.max_value_bytes, now_ms))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_physical_ms;

    fn m(hlc: u64) -> proto::Mutation {
        proto::Mutation {
            key: "k".into(),
            version: Some(proto::Version {
                hlc,
                node_id: "n2".into(),
            }),
            value: Some(b"v".to_vec()),
        }
    }

    #[test]
    fn versions_from_the_far_future_are_refused() {
        let now = 1_700_000_000_000;
        assert!(mutation_from_proto(0, m(from_physical_ms(now + 3_600_000)), 10, now).is_ok());
        let err = mutation_from_proto(3, m(u64::MAX), 10, now).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("mutation 3"), "{err}");
    }

    #[test]
    fn oversized_values_and_missing_versions_are_refused() {
        assert!(mutation_from_proto(0, m(1), 0, 0).is_err());
        let mut no_version = m(1);
        no_version.version = None;
        assert!(mutation_from_proto(0, no_version, 10, 0).is_err());
    }
}
