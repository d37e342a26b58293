//! `meshkv.v1.AntiEntropy`: the answering side of a repair round.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::{
    api::validate::{self, Membership},
    error::Error,
    proto::{self, anti_entropy_server::AntiEntropy},
    storage::{
        codec::{to_mutation, version_to_proto},
        Digests, Store, BUCKETS,
    },
};

/// The most keys one Fetch may ask for.
pub const MAX_FETCH_KEYS: usize = 1024;
/// An answer stops growing past this many bytes (it always covers at least
/// one bucket or key), so that it fits the peer's message limit whatever the
/// size of the keyspace or the values.
pub const ANSWER_BUDGET: usize = 4 * 1024 * 1024;

/// Answers digest, bucket and fetch requests from configured peers.
#[derive(Debug)]
pub struct AntiEntropyService {
    members: Arc<Membership>,
    store: Arc<Store>,
}

impl AntiEntropyService {
    /// A service over `store`, trusting `members`.
    pub fn new(members: Arc<Membership>, store: Arc<Store>) -> Self {
        Self { members, store }
    }
}

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::from(Error::Unavailable(format!("storage task failed: {e}")))
}

#[tonic::async_trait]
impl AntiEntropy for AntiEntropyService {
    async fn digest(
        &self,
        request: Request<proto::DigestRequest>,
    ) -> Result<Response<proto::DigestResponse>, Status> {
        let req = request.into_inner();
        self.members.check(&req.cluster_id, &req.origin)?;
        let theirs = Digests::from_slice(&req.digests).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} digests; exactly {BUCKETS} are required",
                req.digests.len()
            ))
        })?;
        let buckets = self.store.digests().diff(&theirs);
        Ok(Response::new(proto::DigestResponse {
            buckets: buckets.into_iter().map(u32::from).collect(),
        }))
    }

    async fn bucket_versions(
        &self,
        request: Request<proto::BucketVersionsRequest>,
    ) -> Result<Response<proto::BucketVersionsResponse>, Status> {
        let req = request.into_inner();
        self.members.check(&req.cluster_id, &req.origin)?;
        if req.buckets.len() > BUCKETS {
            return Err(
                Error::InvalidArgument(format!("at most {BUCKETS} buckets per call")).into(),
            );
        }
        let buckets = req
            .buckets
            .iter()
            .map(|b| {
                u16::try_from(*b)
                    .ok()
                    .filter(|b| usize::from(*b) < BUCKETS)
                    .ok_or_else(|| {
                        Error::InvalidArgument(format!("bucket {b} is not below {BUCKETS}"))
                    })
            })
            .collect::<Result<Vec<u16>, Error>>()?;
        let store = Arc::clone(&self.store);
        let (entries, processed) = tokio::task::spawn_blocking(move || {
            let (mut out, mut bytes, mut processed) = (Vec::new(), 0, 0u32);
            for b in buckets {
                if processed > 0 && bytes > ANSWER_BUDGET {
                    break;
                }
                for (key, entry) in store.bucket(b)? {
                    bytes += key.len() + entry.version.node.len() + 16;
                    out.push(proto::KeyVersion {
                        key,
                        version: Some(version_to_proto(&entry.version)),
                    });
                }
                processed += 1;
            }
            Ok::<_, Error>((out, processed))
        })
        .await
        .map_err(blocking_err)??;
        Ok(Response::new(proto::BucketVersionsResponse {
            entries,
            processed,
        }))
    }

    async fn fetch(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<proto::FetchResponse>, Status> {
        let req = request.into_inner();
        self.members.check(&req.cluster_id, &req.origin)?;
        if req.keys.len() > MAX_FETCH_KEYS {
            return Err(
                Error::InvalidArgument(format!("at most {MAX_FETCH_KEYS} keys per fetch")).into(),
            );
        }
        for key in &req.keys {
            validate::key(key)?;
        }
        let store = Arc::clone(&self.store);
        let (mutations, processed) = tokio::task::spawn_blocking(move || {
            let (mut out, mut bytes, mut processed) = (Vec::new(), 0, 0u32);
            for key in req.keys {
                if processed > 0 && bytes > ANSWER_BUDGET {
                    break;
                }
                if let Some(entry) = store.get(&key)? {
                    bytes += key.len() + entry.value.as_ref().map_or(0, Vec::len) + 32;
                    out.push(to_mutation(&key, &entry));
                }
                processed += 1;
            }
            Ok::<_, Error>((out, processed))
        })
        .await
        .map_err(blocking_err)??;
        Ok(Response::new(proto::FetchResponse {
            mutations,
            processed,
        }))
    }
}
