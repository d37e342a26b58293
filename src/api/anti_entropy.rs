//! `meshkv.v1.AntiEntropy`: the answering side of a repair round.

use std::sync::Arc;

use prost::Message;
use tonic::{Request, Response, Status};

use crate::{
    api::validate::{self, Membership},
    error::Error,
    proto::{self, anti_entropy_server::AntiEntropy},
    replication::Ctx,
    security::ConnInfo,
    storage::{digest::ANSWER_SCAN_BUDGET, Digests, Refresh, BUCKETS},
    version::{to_mutation, version_to_proto},
    wire::{self, ANSWER_BUDGET, MAX_FETCH_KEYS},
};

/// Answers digest, bucket and fetch requests from configured peers.
#[derive(Debug)]
pub struct AntiEntropyService {
    members: Arc<Membership>,
    ctx: Arc<Ctx>,
}

impl AntiEntropyService {
    /// A service over the node's replication context, trusting `members`.
    pub fn new(members: Arc<Membership>, ctx: Arc<Ctx>) -> Self {
        Self { members, ctx }
    }
}

#[tonic::async_trait]
impl AntiEntropy for AntiEntropyService {
    async fn digest(
        &self,
        request: Request<proto::DigestRequest>,
    ) -> Result<Response<proto::DigestResponse>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let req = request.into_inner();
        self.members
            .check(&req.cluster_id, &req.origin, conn.as_ref())?;
        let placed = self.ctx.store.buckets();
        placed.agrees(&req.origin, req.bucket_key_id)?;
        let theirs = Digests::from_slice(&req.digests).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{} digests; exactly {BUCKETS} are required",
                req.digests.len()
            ))
        })?;
        // Bounded: never waits for a refresh already running, and reads at
        // most ANSWER_SCAN_BUDGET versions; what it leaves unsettled is
        // answered as differing.
        let buckets = self
            .ctx
            .digests(ANSWER_SCAN_BUDGET, Refresh::IfIdle)
            .await?
            .to_compare(&theirs);
        let seen = self
            .ctx
            .peer_reports_high_water(&req.origin, req.incarnation, req.high_water);
        Ok(Response::new(proto::DigestResponse {
            buckets: buckets.into_iter().map(u32::from).collect(),
            catching_up: self.ctx.catching_up(),
            seen_high_water: seen,
            now_ms: self.ctx.clock.now_ms(),
            bucket_key_id: placed.id(),
        }))
    }

    async fn bucket_versions(
        &self,
        request: Request<proto::BucketVersionsRequest>,
    ) -> Result<Response<proto::BucketVersionsResponse>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let req = request.into_inner();
        self.members
            .check(&req.cluster_id, &req.origin, conn.as_ref())?;
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
        if !req.after_key.is_empty() {
            validate::key(&req.after_key)?;
            let placed = self.ctx.store.buckets();
            if buckets.first() != Some(&placed.of(req.after_key.as_bytes())) {
                return Err(Error::InvalidArgument(
                    "after_key must be a key of the first bucket asked for".into(),
                )
                .into());
            }
        }
        let store = Arc::clone(&self.ctx.store);
        let after = (!req.after_key.is_empty()).then_some(req.after_key);
        // Versions only: the values of a bucket are never loaded to compare it.
        let (pairs, reach) = self
            .ctx
            .blocking
            .run("bucket scan", move || {
                store.bucket_versions(&buckets, after.as_deref(), ANSWER_BUDGET)
            })
            .await??;
        let entries = pairs
            .into_iter()
            .map(|(key, version)| proto::KeyVersion {
                key,
                version: Some(version_to_proto(&version)),
            })
            .collect();
        Ok(Response::new(proto::BucketVersionsResponse {
            entries,
            processed: reach.full as u32,
            resume_after: reach.partial.unwrap_or_default(),
        }))
    }

    async fn fetch(
        &self,
        request: Request<proto::FetchRequest>,
    ) -> Result<Response<proto::FetchResponse>, Status> {
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let req = request.into_inner();
        self.members
            .check(&req.cluster_id, &req.origin, conn.as_ref())?;
        if req.keys.len() > MAX_FETCH_KEYS {
            return Err(
                Error::InvalidArgument(format!("at most {MAX_FETCH_KEYS} keys per fetch")).into(),
            );
        }
        for key in &req.keys {
            validate::key(key)?;
        }
        let store = Arc::clone(&self.ctx.store);
        let (mutations, processed) = self
            .ctx
            .blocking
            .run("fetch", move || {
                let (mut out, mut bytes, mut processed) = (Vec::new(), 0, 0u32);
                for key in req.keys {
                    if let Some(entry) = store.get(&key)? {
                        let m = to_mutation(&key, &entry);
                        let len = wire::framed_len(m.encoded_len());
                        if !wire::fits(out.len(), bytes, len, ANSWER_BUDGET) {
                            break;
                        }
                        bytes += len;
                        out.push(m);
                    }
                    processed += 1;
                }
                Ok::<_, Error>((out, processed))
            })
            .await??;
        Ok(Response::new(proto::FetchResponse {
            mutations,
            processed,
        }))
    }
}
