//! Consistency levels and write tokens at the client API: what a request
//! waits for after (or before) this node has done its part.
//!
//! - A write at `QUORUM` or `ALL` is committed here first, then waits for
//!   peers to acknowledge its log position ([`PeerManager::await_acked`]).
//! - A read at `QUORUM` or `ALL` asks that many peers for their copy of the
//!   key (the anti-entropy `Fetch`, as a peer), answers the newest, and
//!   repairs the copies behind it: this node's in line, the peers' in the
//!   background.
//! - A write token names the write's origin and its seq in the origin's
//!   log. A read that carries tokens answers once this node has applied
//!   each origin's log up to them (`storage::positions`), or UNAVAILABLE at
//!   the deadline: a retry may go to a node that has.
//!
//! Every wait ends at the call's deadline: the gRPC deadline less a margin,
//! so that the client gets this node's answer (who has the write, how far
//! behind it is) and not its own transport's timeout.

use std::{sync::Arc, time::Duration};

use tokio::{task::JoinSet, time::Instant};
use tonic::metadata::MetadataMap;

use crate::{
    error::{Error, Result},
    proto::{self, anti_entropy_client::AntiEntropyClient, replication_client::ReplicationClient},
    replication::{quorum::Level, PeerChannel, PeerManager},
    version::{to_mutation, Entry},
    wire,
};

/// Write tokens start with this, so that a token from elsewhere is refused.
const TOKEN_TAG: &str = "t1.";

/// The most tokens one read may carry.
pub const MAX_AFTER_TOKENS: usize = 64;

/// The token of the write at `seq` of `origin`'s log.
pub fn token(origin: &str, seq: u64) -> String {
    format!("{TOKEN_TAG}{origin}.{seq}")
}

/// A token's origin and seq.
pub fn parse_token(t: &str) -> Result<(String, u64)> {
    let bad = || Error::InvalidArgument(format!("{:?} is not a write token", wire::truncated(t)));
    let (origin, seq) = t
        .strip_prefix(TOKEN_TAG)
        .and_then(|r| r.rsplit_once('.'))
        .ok_or_else(bad)?;
    if !crate::config::valid_id(origin) {
        return Err(bad());
    }
    Ok((origin.to_string(), seq.parse().map_err(|_| bad())?))
}

/// The moment a call must answer by: a little before its gRPC deadline,
/// else `default` from now.
pub fn deadline(meta: &MetadataMap, default: Duration) -> Instant {
    let timeout = meta
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(grpc_timeout)
        .map(|t| t - (t / 10).min(Duration::from_millis(200)))
        .unwrap_or(default);
    Instant::now() + timeout.min(Duration::from_secs(3600))
}

/// A `grpc-timeout` header value: up to 8 digits and a unit.
fn grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// What a read or write needs beyond this node.
#[derive(Debug, Clone)]
pub struct Replicas {
    /// The peers and their channels (and, in its context, the writer that
    /// repairs this node's copy).
    pub manager: Arc<PeerManager>,
    /// The wait when a call carries no deadline.
    pub default_timeout: Duration,
}

impl Replicas {
    fn node_id(&self) -> &str {
        &self.manager.ctx().node_id
    }

    /// The token of a local write at `seq`.
    pub fn token(&self, seq: u64) -> String {
        token(self.node_id(), seq)
    }

    /// Waits for `level` on the write at `seq` of this node's log.
    pub async fn confirm_write(&self, seq: u64, level: Level, deadline: Instant) -> Result<()> {
        if level == Level::One {
            return Ok(());
        }
        match self.manager.await_acked(seq, level, deadline).await {
            Ok(_) => Ok(()),
            Err(Error::DeadlineExceeded(why)) => Err(Error::DeadlineExceeded(format!(
                "{why}; its token is {}",
                self.token(seq)
            ))),
            Err(e) => Err(e),
        }
    }

    /// Checks a read's tokens: each must name this node or a peer.
    pub fn check_tokens(&self, after: &[String]) -> Result<Vec<(String, u64)>> {
        if after.len() > MAX_AFTER_TOKENS {
            return Err(Error::InvalidArgument(format!(
                "a read carries {} tokens; at most {MAX_AFTER_TOKENS}",
                after.len()
            )));
        }
        after
            .iter()
            .map(|t| {
                let (origin, seq) = parse_token(t)?;
                let known =
                    origin == self.node_id() || self.manager.peers().iter().any(|p| p.id == origin);
                if !known {
                    return Err(Error::InvalidArgument(format!(
                        "token names node {origin:?}, which is not in this node's cluster"
                    )));
                }
                let last = self.manager.last_seq();
                if origin == self.node_id() && seq > last {
                    // Waiting would not help: this node's log never held it
                    // (a token from before its data dir was replaced?).
                    return Err(Error::InvalidArgument(format!(
                        "token names write {seq} of this node's log, which ends at {last}"
                    )));
                }
                Ok((origin, seq))
            })
            .collect()
    }

    /// How far this node has applied `origin`'s log.
    fn applied(&self, origin: &str) -> u64 {
        if origin == self.node_id() {
            self.manager.last_seq()
        } else {
            self.manager.ctx().store.positions.of(origin)
        }
    }

    /// Waits until every position in `after` is applied here.
    pub async fn wait_applied(&self, after: &[(String, u64)], deadline: Instant) -> Result<()> {
        let ctx = self.manager.ctx();
        let mut positions = ctx.store.positions.subscribe();
        let mut seq = ctx.seq.clone();
        loop {
            positions.borrow_and_update();
            seq.borrow_and_update();
            let behind: Vec<String> = after
                .iter()
                .filter_map(|(origin, want)| {
                    let have = self.applied(origin);
                    (have < *want)
                        .then(|| format!("{origin}'s log up to {have}, the token needs {want}"))
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = positions.changed() => {}
                _ = seq.changed() => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Unavailable(format!(
                        "this node is behind the tokens: it has applied {}; retry, here later \
                         or on another node",
                        behind.join("; ")
                    )));
                }
            }
        }
    }

    /// The newest copy of `key` among this node's (`local`) and enough
    /// peers' for `level`; repairs the copies behind it.
    pub async fn read(
        &self,
        key: &str,
        local: Option<Entry>,
        level: Level,
        deadline: Instant,
    ) -> Result<Option<Entry>> {
        let peers = self.manager.peers().len();
        let needed = level.peers_needed(peers);
        if needed == 0 {
            return Ok(local);
        }
        let answers = self.ask_peers(key, needed, level, deadline).await?;
        let newest = answers
            .iter()
            .filter_map(|(_, e, _)| e.as_ref())
            .chain(local.as_ref())
            .max_by(|a, b| a.version.cmp(&b.version))
            .cloned();
        let Some(newest) = newest else {
            return Ok(None);
        };
        if local.as_ref().is_none_or(|l| l.version < newest.version) {
            let done = self
                .manager
                .ctx()
                .writer
                .apply(vec![(key.to_string(), newest.clone())], false)
                .await?;
            if done.applied > 0 {
                crate::metrics::read_repaired("local");
            }
        }
        for (peer, copy, channel) in answers {
            if copy.as_ref().is_none_or(|c| c.version < newest.version) {
                tokio::spawn(repair_peer(
                    Arc::clone(self.manager.ctx()),
                    peer,
                    channel,
                    to_mutation(key, &newest),
                ));
            }
        }
        Ok(Some(newest))
    }

    /// The copies of `key` of the first `needed` peers to answer.
    async fn ask_peers(
        &self,
        key: &str,
        needed: usize,
        level: Level,
        deadline: Instant,
    ) -> Result<Vec<(String, Option<Entry>, PeerChannel)>> {
        let ctx = self.manager.ctx();
        let mut asking = JoinSet::new();
        for (peer, channel) in self.manager.channels() {
            let request = proto::FetchRequest {
                cluster_id: ctx.cluster_id.clone(),
                origin: ctx.node_id.clone(),
                keys: vec![key.to_string()],
            };
            let (id, channel) = (peer.id.clone(), channel.clone());
            asking.spawn(async move {
                let mut client = AntiEntropyClient::new(channel.clone())
                    .max_decoding_message_size(wire::PEER_MESSAGE_LIMIT);
                let answer = client.fetch(request).await;
                let copy = answer
                    .map_err(|s| format!("{}: {}", s.code(), s.message()))
                    .and_then(|a| {
                        let (mut entries, refused) = wire::split_batch(a.into_inner().mutations);
                        match refused.first() {
                            Some(r) => Err(format!("its copy was refused: {}", r.reason)),
                            None => Ok(entries.pop().map(|(_, e)| e)),
                        }
                    });
                (id, copy, channel)
            });
        }
        let total = asking.len();
        let (mut answers, mut failed) = (Vec::new(), Vec::new());
        while answers.len() < needed {
            if total - failed.len() < needed {
                return Err(Error::Unavailable(format!(
                    "a {level} read needs {needed} of {total} peers, and {} failed: {}",
                    failed.len(),
                    failed.join("; ")
                )));
            }
            tokio::select! {
                next = asking.join_next() => match next {
                    Some(Ok((id, Ok(copy), channel))) => answers.push((id, copy, channel)),
                    Some(Ok((id, Err(why), _))) => failed.push(format!("{id}: {why}")),
                    Some(Err(e)) => failed.push(format!("a fetch failed: {e}")),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => {
                    let have: Vec<&str> = answers.iter().map(|(id, _, _)| id.as_str()).collect();
                    return Err(Error::DeadlineExceeded(format!(
                        "a {level} read needs {needed} of {total} peers; by the deadline [{}] \
                         answered{}",
                        have.join(", "),
                        if failed.is_empty() { String::new() } else { format!(", and {}", failed.join("; ")) },
                    )));
                }
            }
        }
        Ok(answers)
    }
}

/// Sends `peer` the newest copy of a key it answered an older one for.
async fn repair_peer(
    ctx: Arc<crate::replication::Ctx>,
    peer: String,
    channel: PeerChannel,
    newest: proto::Mutation,
) {
    let mut client =
        ReplicationClient::new(channel).max_encoding_message_size(wire::PEER_MESSAGE_LIMIT);
    let mut request = tonic::Request::new(proto::ReplicateRequest {
        cluster_id: ctx.cluster_id.clone(),
        origin: ctx.node_id.clone(),
        mutations: vec![newest],
        repair: true,
        upto_seq: 0,
    });
    request.set_timeout(Duration::from_millis(ctx.config.rpc_timeout_ms));
    match client.replicate(request).await {
        Ok(_) => crate::metrics::read_repaired("peer"),
        // Anti-entropy repairs it later if this fails.
        Err(s) => tracing::debug!(%peer, code = ?s.code(), "read repair of a peer failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_strangers_are_refused() {
        assert_eq!(
            parse_token(&token("node.1", 42)).unwrap(),
            ("node.1".into(), 42)
        );
        for bad in [
            "", "t1.", "t1.n1", "t1.n1.x", "w1.n1.3", "t1..3", "t1.a b.3",
        ] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_junk_is_ignored() {
        for (v, want) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("900u", Some(Duration::from_micros(900))),
            ("7n", Some(Duration::from_nanos(7))),
            ("S", None),
            ("5x", None),
            ("123456789S", None),
        ] {
            assert_eq!(grpc_timeout(v), want, "{v}");
        }
    }

    #[test]
    fn the_deadline_leaves_a_margin_before_the_callers() {
        let mut meta = MetadataMap::new();
        meta.insert("grpc-timeout", "1000m".parse().unwrap());
        let d = deadline(&meta, Duration::from_secs(60)) - Instant::now();
        assert!(
            d <= Duration::from_millis(900) && d > Duration::from_millis(800),
            "{d:?}"
        );
        let d = deadline(&MetadataMap::new(), Duration::from_secs(5)) - Instant::now();
        assert!(d > Duration::from_secs(4), "{d:?}");
    }
}
