//! One anti-entropy round against one peer, and the pure rules that decide
//! what to push, what to pull, what to leave to the log stream and what a
//! node catching up must drop.

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    clock::physical_ms,
    error::{Error, Result},
    proto::{self, anti_entropy_client::AntiEntropyClient, replication_client::ReplicationClient},
    replication::paging::{fetched, progress, within},
    replication::{Ctx, PeerChannel},
    storage::{Reach, Refresh, Store, BUCKETS},
    version::{to_mutation, version_from_proto, Version},
    wire::{self, ANSWER_BUDGET},
};

/// Buckets asked for per BucketVersions call. The peer may answer fewer (its
/// answers are bounded in bytes); the round asks again for the rest.
pub const BUCKETS_PER_CALL: usize = 64;
/// Keys asked for per Fetch call; likewise the peer may cover fewer.
pub const KEYS_PER_FETCH: usize = 256;

/// Why a round runs, which decides what it may skip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The periodic round: repairs what neither stream delivered, and skips
    /// what is merely in flight.
    Periodic,
    /// The log no longer holds what the peer needs: every differing entry of
    /// ours goes, since the stream will resume after the round's start.
    Repair,
    /// This node started fresh or stale, or its data went back in time: it
    /// must not push. Pull what the peer has (and, if the data went back in
    /// time, drop old copies that an up-to-date peer no longer holds).
    CatchUp,
}

/// What a round may skip and what counts as old.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Why the round runs.
    pub mode: Mode,
    /// This node's id: its own entries travel by its log stream.
    pub self_id: String,
    /// Our own entries at or above this HLC are still in the log past the
    /// peer's cursor: the stream will deliver them. `None`: nothing is.
    pub own_streamed_from: Option<u64>,
    /// Other entries whose physical time is within `(recent_from_ms,
    /// recent_to_ms]` are in flight from their origins. A version further
    /// ahead than `recent_to_ms` is treated as settled, so that a clock far
    /// ahead never hides an entry from repair.
    pub recent_from_ms: u64,
    /// See `recent_from_ms`.
    pub recent_to_ms: u64,
    /// Entries older than this (physical ms) are past the tombstone horizon:
    /// their tombstones may have been purged.
    pub horizon_ms: u64,
    /// The peer is fresh or catching up itself: its lack of an old key
    /// proves nothing, and its old keys may be ones we deleted long ago.
    pub peer_catching_up: bool,
    /// While catching up, drop old local keys an up-to-date peer lacks: only
    /// when this node's data went back in time (restored from an old copy),
    /// since only then can the peer have purged deletes this node never saw.
    pub forget_old: bool,
    /// The first round since start-up: this node's recovered high-water mark,
    /// to compare with the highest the peer saw from it.
    pub recovered_high_water: Option<u64>,
}

impl Rules {
    /// Rules under which every difference moves: for tests.
    #[cfg(test)]
    pub(crate) fn eager(self_id: &str) -> Self {
        Self {
            mode: Mode::Periodic,
            self_id: self_id.into(),
            own_streamed_from: None,
            recent_from_ms: u64::MAX,
            recent_to_ms: 0,
            horizon_ms: 0,
            peer_catching_up: false,
            forget_old: false,
            recovered_high_water: None,
        }
    }

    fn in_flight(&self, v: &Version) -> bool {
        if *v.node == *self.self_id {
            if self.mode == Mode::Repair {
                return false;
            }
            if self.own_streamed_from.is_some_and(|h| v.hlc >= h) {
                return true;
            }
        }
        let ms = physical_ms(v.hlc);
        ms > self.recent_from_ms && ms <= self.recent_to_ms
    }

    fn old(&self, v: &Version) -> bool {
        physical_ms(v.hlc) < self.horizon_ms
    }
}

/// What one step of a round does, decided from both sides' versions.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Ours wins and the peer should have it.
    pub push: Vec<String>,
    /// Theirs wins and we should have it.
    pub pull: Vec<String>,
    /// Old copies of ours that an up-to-date peer no longer holds (catch-up only).
    pub forget: Vec<(String, Version)>,
    /// Differences left to the log streams (in flight) or to the horizon.
    pub skipped: u64,
}

/// Compares the `(key, version)` lists of the same buckets on both sides.
pub fn plan(local: &[(String, Version)], remote: &[(String, Version)], rules: &Rules) -> Plan {
    let theirs: HashMap<&str, &Version> = remote.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ours: HashMap<&str, &Version> = local.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut p = Plan::default();
    for (key, v) in local {
        let missing = match theirs.get(key.as_str()) {
            Some(t) if *t >= v => continue,
            Some(_) => false,
            None => true,
        };
        if rules.mode == Mode::CatchUp {
            // Pull-only. An old key an up-to-date peer lacks was deleted there
            // and its tombstone purged: keeping it would bring it back.
            let forget = rules.forget_old
                || crate::planted::active(crate::planted::Bug::CatchUpForgetsWhenAway);
            if missing && rules.old(v) && forget && !rules.peer_catching_up {
                p.forget.push((key.clone(), v.clone()));
            } else {
                p.skipped += 1;
            }
        } else if rules.in_flight(v) {
            p.skipped += 1;
        } else {
            p.push.push(key.clone());
        }
    }
    for (key, v) in remote {
        let missing = match ours.get(key.as_str()) {
            Some(o) if *o >= v => continue,
            Some(_) => false,
            None => true,
        };
        // Catching up pulls everything that wins, in flight or not: the node
        // becomes SERVING on the strength of this round.
        let skip = match rules.mode {
            Mode::CatchUp => false,
            _ => (missing && rules.old(v) && rules.peer_catching_up) || rules.in_flight(v),
        };
        if skip {
            p.skipped += 1;
        } else {
            p.pull.push(key.clone());
        }
    }
    p.push.sort();
    p.pull.sort();
    p.forget.sort();
    p
}

/// What a round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundStats {
    /// Buckets whose digests differed.
    pub differing_buckets: usize,
    /// Keys sent to the peer because ours won.
    pub pushed: u64,
    /// Keys taken from the peer because theirs won.
    pub pulled: u64,
    /// Differences left to the streams or the horizon.
    pub skipped: u64,
    /// Old local copies dropped while catching up.
    pub forgotten: u64,
    /// Entries either side refused.
    pub refused: u64,
    /// The last refusal, as "key: reason".
    pub last_refused: Option<String>,
    /// The peer said it is fresh or catching up.
    pub peer_catching_up: bool,
    /// The peer saw a higher high-water mark from this node than it started
    /// from: its data went back in time, and the round ran as a catch-up.
    pub regressed: bool,
    /// Why pushing stopped, if it did; the pulls went on.
    pub push_error: Option<String>,
    /// The Digest's round trip and the peer's clock in its answer, for the
    /// peer's clock offset.
    pub clock: Option<(Duration, u64)>,
}

impl RoundStats {
    /// Every differing bucket was compared and every push was delivered.
    pub fn finished(&self) -> bool {
        self.push_error.is_none()
    }

    /// Finished, and nothing was refused: the peer now holds, or beats,
    /// every settled entry this node held when the round started.
    pub fn complete(&self) -> bool {
        self.finished() && self.refused == 0
    }
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// Runs one round with `peer`: digests, then, a bounded step at a time,
/// push and pull. `rules` is completed with what the peer says about itself.
/// Whether this node's data went back in time: a peer saw a higher mark
/// from it than its disk recovered. A mark at or past `ceiling` (what this
/// node's clock could ever have issued) proves nothing: believing it would
/// let any peer make this node forget its data.
pub fn went_back(recovered: Option<u64>, seen: u64, ceiling: u64) -> bool {
    recovered.is_some_and(|hw| seen > hw && seen < ceiling)
}

/// If `rules` carries the recovered high-water mark, `checked(regressed)`
/// is called once the Digest answer has said whether it regressed.
pub async fn round(
    ctx: &Ctx,
    peer: &str,
    ae: &mut AntiEntropyClient<PeerChannel>,
    repl: &mut ReplicationClient<PeerChannel>,
    mut rules: Rules,
    checked: &(dyn Fn(bool) + Sync),
) -> Result<RoundStats> {
    let timeout = Duration::from_millis(ctx.config.rpc_timeout_ms);
    let (differing, mut stats) =
        exchange_digests(ctx, peer, ae, &mut rules, timeout, checked).await?;
    let mut rest: &[u16] = &differing;
    // Where the first bucket of `rest` resumes: a bucket may take several
    // answers.
    let mut after: Option<String> = None;
    while !rest.is_empty() {
        let (reach, local, remote) =
            compare_versions(ctx, peer, ae, rest, after.as_deref(), timeout).await?;
        rest = &rest[reach.full..];
        after = reach.partial;
        let plan = plan(&local, &remote, &rules);
        stats.skipped += plan.skipped;

        if stats.push_error.is_none() && !plan.push.is_empty() {
            if let Err(e) = push(ctx, peer, repl, &plan.push, timeout, &mut stats).await {
                // A chunk that cannot be pushed never stops the pull.
                tracing::warn!(peer, error = %e, "anti-entropy push failed; pulling on");
                stats.push_error = Some(e.to_string());
            }
        }
        if !plan.forget.is_empty() {
            stats.forgotten += ctx.writer.forget(plan.forget).await?;
        }
        pull(ctx, peer, ae, &plan.pull, timeout, &mut stats).await?;
    }
    Ok(stats)
}

/// Sends our digests and learns which buckets to compare: those the peer
/// says differ or it could not vouch for, and those unsettled here. Also
/// learns whether the peer is catching up and whether this node's data went
/// back in time, which turns the round into a catch-up (see `rules`).
async fn exchange_digests(
    ctx: &Ctx,
    peer: &str,
    ae: &mut AntiEntropyClient<PeerChannel>,
    rules: &mut Rules,
    timeout: Duration,
    checked: &(dyn Fn(bool) + Sync),
) -> Result<(Vec<u16>, RoundStats)> {
    // Our own refresh has no deadline to meet, so it waits and scans all
    // that is dirty; a bucket a commit touched meanwhile stays unsettled and
    // is compared below whatever the peer says of it.
    let view = ctx.digests(usize::MAX, Refresh::Wait).await?;
    let digests = view.digests.as_slice().to_vec();
    let asked = tokio::time::Instant::now();
    let answer = ae
        .digest(request(
            proto::DigestRequest {
                cluster_id: ctx.cluster_id.clone(),
                origin: ctx.node_id.clone(),
                digests,
                high_water: ctx.store.high_water(),
                incarnation: ctx.incarnation,
                bucket_key_id: ctx.store.buckets().id(),
            },
            timeout,
        ))
        .await
        .map_err(Error::from_peer(peer))?
        .into_inner();
    // A peer that checks refuses first; this catches one that does not.
    ctx.store.buckets().agrees(peer, answer.bucket_key_id)?;
    let clock = Some((asked.elapsed(), answer.now_ms));
    rules.peer_catching_up = answer.catching_up;
    // No mark of ours can be past what our clock could have issued: the wall
    // clock plus the skew it may follow (the writer observes no further).
    let ceiling = crate::clock::from_physical_ms(rules.recent_to_ms.saturating_add(1));
    let regressed = went_back(rules.recovered_high_water, answer.seen_high_water, ceiling);
    if answer.seen_high_water >= ceiling {
        tracing::warn!(
            peer,
            seen = answer.seen_high_water,
            "the peer reports a high-water mark of ours that this node's clock could never \
             have issued; ignored"
        );
    }
    if rules.recovered_high_water.is_some() {
        // Checked on the first answer of each start, so that a regression is
        // acted on once.
        checked(regressed);
    }
    if regressed {
        tracing::warn!(
            peer,
            seen = answer.seen_high_water,
            recovered = ?rules.recovered_high_water,
            "the peer saw newer data from this node than its disk holds: the data went back \
             in time (an old copy?); catching up pull-only, dropping old keys the peer no \
             longer holds"
        );
        rules.mode = Mode::CatchUp;
        rules.forget_old = true;
    }
    let differing = view.with_unsettled(
        answer
            .buckets
            .into_iter()
            .filter(|b| (*b as usize) < BUCKETS)
            .map(|b| b as u16),
    );
    let stats = RoundStats {
        differing_buckets: differing.len(),
        peer_catching_up: answer.catching_up,
        regressed,
        clock,
        ..RoundStats::default()
    };
    Ok((differing, stats))
}

/// The versions on both sides of the first buckets of `rest` (the first
/// resumed after the key `after`), as far as one bounded answer from each
/// side reaches: how far that is, then the local and the remote
/// `(key, version)` pairs within it.
async fn compare_versions(
    ctx: &Ctx,
    peer: &str,
    ae: &mut AntiEntropyClient<PeerChannel>,
    rest: &[u16],
    after: Option<&str>,
    timeout: Duration,
) -> Result<(Reach, Vec<(String, Version)>, Vec<(String, Version)>)> {
    let ask = &rest[..rest.len().min(BUCKETS_PER_CALL)];
    let answer = ae
        .bucket_versions(request(
            proto::BucketVersionsRequest {
                cluster_id: ctx.cluster_id.clone(),
                origin: ctx.node_id.clone(),
                buckets: ask.iter().map(|b| u32::from(*b)).collect(),
                after_key: after.unwrap_or_default().to_string(),
            },
            timeout,
        ))
        .await
        .map_err(Error::from_peer(peer))?
        .into_inner();
    let placed = ctx.store.buckets();
    let remote_reach = progress(
        &placed,
        peer,
        ask,
        after,
        answer.processed,
        answer.resume_after,
    )?;
    // The local side of the same buckets, bounded the same way.
    let (local, local_reach) = {
        let store = Arc::clone(&ctx.store);
        let buckets = ask[..ask.len().min(remote_reach.full + 1)].to_vec();
        let after = after.map(str::to_string);
        ctx.blocking
            .run("bucket scan", move || {
                store.bucket_versions(&buckets, after.as_deref(), ANSWER_BUDGET)
            })
            .await??
    };
    let reach = remote_reach.min(local_reach);
    let remote: Vec<(String, Version)> = answer
        .entries
        .into_iter()
        .filter_map(|kv| Some((kv.key, version_from_proto(kv.version?))))
        .collect();
    Ok((
        reach.clone(),
        within(&placed, ask, after, &reach, local),
        within(&placed, ask, after, &reach, remote),
    ))
}

/// Sends our winning entries for `keys`, in batches sized by encoded length.
async fn push(
    ctx: &Ctx,
    peer: &str,
    repl: &mut ReplicationClient<PeerChannel>,
    keys: &[String],
    timeout: Duration,
    stats: &mut RoundStats,
) -> Result<()> {
    let budget = ctx.config.batch_max_bytes.min(wire::MAX_FILL);
    let mut rest = keys;
    while !rest.is_empty() {
        let (batch, taken) = {
            let store = Arc::clone(&ctx.store);
            let slice = rest[..rest.len().min(KEYS_PER_FETCH)].to_vec();
            ctx.blocking
                .run("push read", move || load_batch(&store, &slice, budget))
                .await??
        };
        rest = &rest[taken..];
        if batch.is_empty() {
            continue;
        }
        let resp = repl
            .replicate(request(
                proto::ReplicateRequest {
                    cluster_id: ctx.cluster_id.clone(),
                    origin: ctx.node_id.clone(),
                    mutations: batch,
                    repair: true,
                    upto_seq: 0,
                },
                timeout,
            ))
            .await
            .map_err(Error::from_peer(peer))?
            .into_inner();
        stats.pushed += resp.applied;
        for r in resp.refused {
            stats.refused += 1;
            stats.last_refused = Some(format!("{}: {}", r.key, r.reason));
        }
    }
    Ok(())
}

/// Reads the entries of `keys`, in order, until one more would take the
/// batch past `budget` encoded bytes (the first always goes), and returns
/// them with how many keys it covered (keys no longer stored count as
/// covered). So a push holds one batch of values at a time, whatever their
/// size. The entry that did not fit is read again for the next batch.
fn load_batch(
    store: &Store,
    keys: &[String],
    budget: usize,
) -> Result<(Vec<proto::Mutation>, usize)> {
    let mut out = Vec::new();
    let mut filled = 0;
    for (i, key) in keys.iter().enumerate() {
        let Some(e) = store.get(key)? else { continue };
        let m = to_mutation(key, &e);
        let len = wire::framed_len(prost::Message::encoded_len(&m));
        if !wire::fits(out.len(), filled, len, budget) {
            return Ok((out, i));
        }
        filled += len;
        out.push(m);
    }
    Ok((out, keys.len()))
}

/// Fetches the peer's winning entries for `keys` and applies them.
async fn pull(
    ctx: &Ctx,
    peer: &str,
    ae: &mut AntiEntropyClient<PeerChannel>,
    keys: &[String],
    timeout: Duration,
    stats: &mut RoundStats,
) -> Result<()> {
    let mut rest = keys;
    while !rest.is_empty() {
        let ask = &rest[..rest.len().min(KEYS_PER_FETCH)];
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
        rest = &rest[fetched(peer, answer.processed, ask.len())?..];
        let (entries, refused) = wire::split_batch(answer.mutations);
        for r in refused {
            stats.refused += 1;
            stats.last_refused = Some(format!("{}: {}", r.key, r.reason));
        }
        if !entries.is_empty() {
            let done = ctx.writer.apply(entries, false).await?;
            // Who saw what is the stream's knowledge; a round cannot tell.
            ctx.note_contests(peer, &done.contested, |_, _| None);
            stats.pulled += done.applied;
            for (_, key, why) in done.refused {
                stats.refused += 1;
                stats.last_refused = Some(format!("{key}: {why}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_mark_our_clock_could_have_issued_proves_our_data_went_back() {
        // Issue 24 item 4: an answer with seen_high_water = u64::MAX put the
        // receiver into catch-up with forgetting.
        let ceiling = 1_000;
        assert!(went_back(Some(10), 11, ceiling));
        assert!(!went_back(Some(10), 10, ceiling));
        assert!(!went_back(None, 11, ceiling), "checked only once per start");
        assert!(!went_back(Some(10), ceiling, ceiling));
        assert!(!went_back(Some(10), u64::MAX, ceiling));
    }
    use crate::clock::from_physical_ms;

    /// Issue 22, item 5: a push read 256 full values (256 MiB at the default
    /// value limit) before it split them into batches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_push_reads_one_batch_of_values_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _seq, join) = crate::storage::writer::for_tests(dir.path());
        let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        for k in &keys {
            writer
                .write(k.clone(), Some(vec![7; 1 << 20]))
                .await
                .unwrap();
        }
        let budget = 4 << 20;
        let (mut rest, mut batches) = (&keys[..], 0);
        while !rest.is_empty() {
            let (batch, taken) = load_batch(&store, rest, budget).unwrap();
            let bytes: usize = batch.iter().map(prost::Message::encoded_len).sum();
            assert!(bytes <= budget, "a batch of {bytes} bytes");
            assert!(
                taken >= 1 && taken == batch.len(),
                "{taken} keys, {} entries",
                batch.len()
            );
            rest = &rest[taken..];
            batches += 1;
        }
        assert_eq!(batches, 4, "1 MiB values, 3 to a 4 MiB batch");
        // Keys no longer stored are covered, not read.
        let gone = vec!["nope".to_string(), "k0".to_string()];
        let (batch, taken) = load_batch(&store, &gone, budget).unwrap();
        assert_eq!((batch.len(), taken), (1, 2));
        drop(writer);
        join.join().await.unwrap();
    }

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

    fn eager() -> Rules {
        Rules::eager("n1")
    }

    fn at_ms(ms: u64, node: &str) -> Version {
        v(from_physical_ms(ms), node)
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
        let p = plan(&local, &remote, &eager());
        // a: only ours. c: same hlc, node n1 > n0, ours wins.
        assert_eq!(p.push, vec!["a".to_string(), "c".to_string()]);
        // b: theirs is newer. d: only theirs.
        assert_eq!(p.pull, vec!["b".to_string(), "d".to_string()]);
    }

    #[test]
    fn periodic_rounds_skip_what_is_in_flight_and_repair_what_is_settled() {
        let now = 1_000_000;
        let rules = Rules {
            own_streamed_from: Some(from_physical_ms(now - 50_000)),
            recent_from_ms: now - 5_000,
            recent_to_ms: now + 60_000,
            ..eager()
        };
        let local = vec![
            // Ours, still in the log past the peer's cursor: the stream has it.
            ("own-streamed".to_string(), at_ms(now - 40_000, "n1")),
            // Ours, acknowledged long ago yet missing there: repair it.
            ("own-settled".to_string(), at_ms(now - 90_000, "n1")),
            // A third node's write that reached us a moment ago.
            ("n3-recent".to_string(), at_ms(now - 1_000, "n3")),
            // A third node's old write the peer never got.
            ("n3-settled".to_string(), at_ms(now - 20_000, "n3")),
            // A version from a clock far ahead is never "in flight" for long.
            ("n3-far-future".to_string(), at_ms(now + 3_600_000, "n3")),
        ];
        let remote = vec![
            ("n2-recent".to_string(), at_ms(now - 10, "n2")),
            ("n2-settled".to_string(), at_ms(now - 10_000, "n2")),
        ];
        let p = plan(&local, &remote, &rules);
        assert_eq!(p.push, ["n3-far-future", "n3-settled", "own-settled"]);
        assert_eq!(p.pull, ["n2-settled"]);
        assert_eq!(p.skipped, 3);
    }

    #[test]
    fn a_repair_round_pushes_our_own_entries_even_if_recent() {
        let now = 1_000_000;
        let rules = Rules {
            mode: Mode::Repair,
            own_streamed_from: Some(0),
            recent_from_ms: now - 5_000,
            recent_to_ms: now + 60_000,
            ..eager()
        };
        let local = vec![("own".to_string(), at_ms(now, "n1"))];
        assert_eq!(plan(&local, &[], &rules).push, ["own"]);
    }

    #[test]
    fn catching_up_pulls_only_and_drops_old_copies_an_up_to_date_peer_lacks() {
        let now = 10_000_000;
        let rules = Rules {
            mode: Mode::CatchUp,
            horizon_ms: now - 1_000_000,
            forget_old: true,
            ..eager()
        };
        let local = vec![
            // Deleted everywhere long ago; the tombstones are gone.
            ("deleted".to_string(), at_ms(now - 5_000_000, "n1")),
            // A recent write of ours: not pushed now, kept for later rounds.
            ("recent".to_string(), at_ms(now - 10, "n1")),
            ("older-here".to_string(), at_ms(now - 4_000_000, "n1")),
        ];
        let remote = vec![
            ("older-here".to_string(), at_ms(now - 100, "n2")),
            ("theirs".to_string(), at_ms(now - 3_000_000, "n2")),
            // Written a moment ago: pulled too, since the node will serve
            // reads on the strength of this round.
            ("in-flight".to_string(), at_ms(now, "n2")),
        ];
        let rules = Rules {
            recent_from_ms: now - 5_000,
            recent_to_ms: now + 60_000,
            ..rules
        };
        let p = plan(&local, &remote, &rules);
        assert!(p.push.is_empty(), "never pushes while catching up");
        assert_eq!(p.pull, ["in-flight", "older-here", "theirs"]);
        assert_eq!(
            p.forget,
            [("deleted".to_string(), at_ms(now - 5_000_000, "n1"))]
        );

        // A peer that is catching up too proves nothing by lacking a key.
        let both = Rules {
            peer_catching_up: true,
            ..rules.clone()
        };
        assert!(plan(&local, &remote, &both).forget.is_empty());

        // A node merely away (its data did not go back in time) drops
        // nothing: no delete it never saw can have been purged, and the old
        // key may be an acknowledged write that never left it.
        let away = Rules {
            forget_old: false,
            ..rules
        };
        let p = plan(&local, &remote, &away);
        assert!(p.forget.is_empty() && p.push.is_empty());
        assert_eq!(p.pull, ["in-flight", "older-here", "theirs"]);
    }

    #[test]
    fn an_up_to_date_node_never_pulls_old_keys_it_lacks_from_a_peer_catching_up() {
        let now = 10_000_000;
        let rules = Rules {
            horizon_ms: now - 1_000_000,
            peer_catching_up: true,
            ..eager()
        };
        let remote = vec![
            ("resurrected".to_string(), at_ms(now - 5_000_000, "n3")),
            ("fresh".to_string(), at_ms(now - 10, "n3")),
        ];
        let p = plan(&[], &remote, &rules);
        assert_eq!(p.pull, ["fresh"]);
        assert_eq!(p.skipped, 1);
    }

    #[test]
    fn identical_sides_need_nothing() {
        let both = kv(&[("a", 1, "n1"), ("b", 2, "n2")]);
        assert_eq!(plan(&both, &both, &eager()), Plan::default());
        assert_eq!(plan(&[], &[], &eager()), Plan::default());
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
            let p = plan(&l, &r, &eager());
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
