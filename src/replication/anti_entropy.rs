//! One anti-entropy round against one peer, and the pure rule that decides
//! what to push and what to pull.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tonic::transport::Channel;

use crate::{
    api::replication::mutation_from_proto,
    error::{Error, Result},
    proto::{self, anti_entropy_client::AntiEntropyClient, replication_client::ReplicationClient},
    replication::Ctx,
    storage::{
        codec::{to_mutation, version_from_proto},
        BUCKETS,
    },
    version::{Entry, Version},
};

/// Buckets asked for per BucketVersions call. The peer may answer fewer (its
/// answers are bounded in bytes); the round asks again for the rest.
pub const BUCKETS_PER_CALL: usize = 64;
/// Keys asked for per Fetch call; likewise the peer may cover fewer.
pub const KEYS_PER_FETCH: usize = 256;

/// What a round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundStats {
    /// Buckets whose digests differed.
    pub differing_buckets: usize,
    /// Keys sent to the peer because ours won.
    pub pushed: u64,
    /// Keys taken from the peer because theirs won.
    pub pulled: u64,
}

/// Which keys of a set of buckets each side must receive.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ours is newer or theirs is missing.
    pub push: Vec<String>,
    /// Theirs is newer or ours is missing.
    pub pull: Vec<String>,
}

/// Compares the `(key, version)` lists of the same buckets on both sides.
pub fn plan(local: &[(String, Version)], remote: &[(String, Version)]) -> Plan {
    let theirs: HashMap<&str, &Version> = remote.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ours: HashMap<&str, &Version> = local.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut p = Plan::default();
    for (key, v) in local {
        match theirs.get(key.as_str()) {
            Some(t) if *t >= v => {}
            _ => p.push.push(key.clone()),
        }
    }
    for (key, v) in remote {
        match ours.get(key.as_str()) {
            Some(o) if *o >= v => {}
            _ => p.pull.push(key.clone()),
        }
    }
    p.push.sort();
    p.pull.sort();
    p
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Runs one round: digests, then per differing bucket push and pull.
pub async fn round(
    ctx: &Ctx,
    peer: &str,
    ae: &mut AntiEntropyClient<Channel>,
    repl: &mut ReplicationClient<Channel>,
) -> Result<RoundStats> {
    let timeout = Duration::from_millis(ctx.config.rpc_timeout_ms);
    let digests = ctx.store.digests().as_slice().to_vec();
    let differing = ae
        .digest(request(
            proto::DigestRequest {
                cluster_id: ctx.cluster_id.clone(),
                origin: ctx.node_id.clone(),
                digests,
            },
            timeout,
        ))
        .await
        .map_err(Error::from_peer(peer))?
        .into_inner()
        .buckets;
    let mut stats = RoundStats {
        differing_buckets: differing.len(),
        ..RoundStats::default()
    };
    let differing: Vec<u16> = differing
        .into_iter()
        .filter(|b| (*b as usize) < BUCKETS)
        .map(|b| b as u16)
        .collect();

    let mut rest: &[u16] = &differing;
    while !rest.is_empty() {
        let ask = &rest[..rest.len().min(BUCKETS_PER_CALL)];
        let answer = ae
            .bucket_versions(request(
                proto::BucketVersionsRequest {
                    cluster_id: ctx.cluster_id.clone(),
                    origin: ctx.node_id.clone(),
                    buckets: ask.iter().map(|b| u32::from(*b)).collect(),
                },
                timeout,
            ))
            .await
            .map_err(Error::from_peer(peer))?
            .into_inner();
        let covered = progress(peer, answer.processed, ask.len())?;
        let chunk = &rest[..covered];
        rest = &rest[covered..];
        let remote: Vec<(String, Version)> = answer
            .entries
            .into_iter()
            .filter_map(|kv| Some((kv.key, version_from_proto(kv.version?))))
            .collect();
        let local: HashMap<String, Entry> = {
            let store = Arc::clone(&ctx.store);
            let buckets = chunk.to_vec();
            tokio::task::spawn_blocking(move || -> Result<HashMap<String, Entry>> {
                let mut all = HashMap::new();
                for b in buckets {
                    all.extend(store.bucket(b)?);
                }
                Ok(all)
            })
            .await
            .map_err(|e| Error::Unavailable(format!("bucket scan panicked: {e}")))??
        };
        let versions: Vec<(String, Version)> = local
            .iter()
            .map(|(k, e)| (k.clone(), e.version.clone()))
            .collect();
        let plan = plan(&versions, &remote);

        let mut batch = Vec::new();
        let mut bytes = 0;
        for key in &plan.push {
            let entry = &local[key];
            let size = key.len() + entry.value.as_ref().map_or(0, Vec::len);
            if !batch.is_empty() && bytes + size > ctx.config.batch_max_bytes {
                stats.pushed += push(ctx, peer, repl, std::mem::take(&mut batch), timeout).await?;
                bytes = 0;
            }
            bytes += size;
            batch.push(to_mutation(key, entry));
        }
        if !batch.is_empty() {
            stats.pushed += push(ctx, peer, repl, batch, timeout).await?;
        }

        let mut pull: &[String] = &plan.pull;
        while !pull.is_empty() {
            let ask = &pull[..pull.len().min(KEYS_PER_FETCH)];
            let answer = ae
                .fetch(request(
                    proto::FetchRequest {
                        cluster_id: ctx.cluster_id.clone(),
                        origin: ctx.node_id.clone(),
                        keys: ask.to_vec(),
                    },
                    timeout,
                ))
                .await
                .map_err(Error::from_peer(peer))?
                .into_inner();
            pull = &pull[progress(peer, answer.processed, ask.len())?..];
            let now_ms = ctx.clock.now_ms();
            let entries = answer
                .mutations
                .into_iter()
                .enumerate()
                .map(|(i, m)| mutation_from_proto(i, m, ctx.max_value_bytes, now_ms))
                .collect::<Result<Vec<_>>>()?;
            if !entries.is_empty() {
                stats.pulled += ctx.writer.apply_queued(entries).await?;
            }
        }
    }
    Ok(stats)
}

/// How many requested items an answer covered: at least one, at most all.
fn progress(peer: &str, processed: u32, asked: usize) -> Result<usize> {
    match processed as usize {
        0 => Err(Error::Peer {
            peer: peer.to_string(),
            status: tonic::Status::internal("the peer's answer covered nothing"),
        }),
        n => Ok(n.min(asked)),
    }
}

async fn push(
    ctx: &Ctx,
    peer: &str,
    repl: &mut ReplicationClient<Channel>,
    mutations: Vec<proto::Mutation>,
    timeout: Duration,
) -> Result<u64> {
    let resp = repl
        .replicate(request(
            proto::ReplicateRequest {
                cluster_id: ctx.cluster_id.clone(),
                origin: ctx.node_id.clone(),
                mutations,
            },
            timeout,
        ))
        .await
        .map_err(Error::from_peer(peer))?;
    Ok(resp.into_inner().applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(hlc: u64, node: &str) -> Version {
        Version {
            hlc,
            node: node.into(),
        }
    }

    fn kv(items: &[(&str, u64, &str)]) -> Vec<(String, Version)> {
        items
            .iter()
            .map(|(k, h, n)| (k.to_string(), v(*h, n)))
            .collect()
    }

    #[test]
    fn newer_or_missing_on_either_side_moves_toward_the_other() {
        let local = kv(&[
            ("a", 5, "n1"),
            ("b", 1, "n1"),
            ("c", 3, "n1"),
            ("same", 2, "n2"),
        ]);
        let remote = kv(&[
            ("b", 2, "n2"),
            ("c", 3, "n0"),
            ("d", 1, "n3"),
            ("same", 2, "n2"),
        ]);
        let p = plan(&local, &remote);
        // a: only ours. c: same hlc, node n1 > n0, ours wins.
        assert_eq!(p.push, vec!["a".to_string(), "c".to_string()]);
        // b: theirs is newer. d: only theirs.
        assert_eq!(p.pull, vec!["b".to_string(), "d".to_string()]);
    }

    #[test]
    fn an_answer_must_cover_something_and_not_more_than_asked() {
        assert!(progress("p", 0, 5).is_err());
        assert_eq!(progress("p", 3, 5).unwrap(), 3);
        assert_eq!(progress("p", 9, 5).unwrap(), 5);
    }

    #[test]
    fn identical_sides_need_nothing() {
        let both = kv(&[("a", 1, "n1"), ("b", 2, "n2")]);
        assert_eq!(plan(&both, &both), Plan::default());
        assert_eq!(plan(&[], &[]), Plan::default());
    }

    #[test]
    fn applying_a_plan_makes_both_sides_equal() {
        use proptest::prelude::*;
        proptest!(|(
            local in prop::collection::btree_map("[a-e]", (0u64..4, 0usize..3), 0..6),
            remote in prop::collection::btree_map("[a-e]", (0u64..4, 0usize..3), 0..6),
        )| {
            let nodes = ["n1", "n2", "n3"];
            let to_vec = |m: &std::collections::BTreeMap<String, (u64, usize)>| -> Vec<(String, Version)> {
                m.iter().map(|(k, (h, n))| (k.clone(), v(*h, nodes[*n]))).collect()
            };
            let (l, r) = (to_vec(&local), to_vec(&remote));
            let p = plan(&l, &r);
            let mut lm: HashMap<String, Version> = l.iter().cloned().collect();
            let mut rm: HashMap<String, Version> = r.iter().cloned().collect();
            for k in &p.push {
                let win = lm[k].clone();
                let cur = rm.entry(k.clone()).or_insert_with(|| win.clone());
                if win > *cur { *cur = win; }
            }
            for k in &p.pull {
                let win = rm[k].clone();
                let cur = lm.entry(k.clone()).or_insert_with(|| win.clone());
                if win > *cur { *cur = win; }
            }
            prop_assert_eq!(lm, rm);
        });
    }
}
