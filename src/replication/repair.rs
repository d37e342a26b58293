//! The repairer: runs anti-entropy rounds with one peer.
//!
//! A round runs at start-up, then every `anti_entropy_interval_secs` (±25%),
//! whether or not the log stream is caught up: under a steady write load the
//! stream is never idle, and waiting for it would mean never repairing. The
//! round's [rules](super::anti_entropy::Rules) skip what is merely in flight
//! instead. A round also runs at once when the streamer finds a gap (mode
//! Repair) and, for a node that started stale, first of all (mode CatchUp).

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    proto::{anti_entropy_client::AntiEntropyClient, replication_client::ReplicationClient},
    replication::{
        anti_entropy::{self, Mode, Rules},
        machine::{round_due, Event, RoundEnd},
        peer::{sleep_or_shutdown, Backoff, Peer},
        Ctx, PeerChannel,
    },
    wire,
};

/// The rules of a round in `mode`, from the node's state at its start.
fn rules(ctx: &Ctx, peer: &Peer, mode: Mode, now_ms: u64) -> Rules {
    let cfg = &ctx.config;
    // Our own entries from the first unacknowledged log record on are
    // delivered by the stream (in a periodic round; a repair skips nothing).
    let state = peer.state();
    let acked = state.acked_seq;
    let own_streamed_from = match ctx.store.log_entry(acked + 1) {
        Ok(Some(m)) => m.version.map(|v| v.hlc),
        _ => None,
    };
    Rules {
        mode,
        self_id: ctx.node_id.clone(),
        own_streamed_from,
        recent_from_ms: now_ms.saturating_sub(cfg.rpc_timeout_ms),
        recent_to_ms: now_ms.saturating_add(cfg.max_clock_skew_ms),
        horizon_ms: now_ms.saturating_sub(cfg.tombstone_ttl_secs.saturating_mul(1000)),
        peer_catching_up: false,
        forget_old: state.regressed,
        recovered_high_water: (!state.high_water_checked).then_some(ctx.recovered_high_water),
    }
}

/// Runs until `shutdown`.
pub async fn run(
    ctx: Arc<Ctx>,
    peer: Arc<Peer>,
    channel: PeerChannel,
    mut backoff: Backoff,
    shutdown: CancellationToken,
) {
    let cfg = &ctx.config;
    let mut repl = ReplicationClient::new(channel.clone())
        .max_encoding_message_size(wire::PEER_MESSAGE_LIMIT)
        .max_decoding_message_size(wire::PEER_MESSAGE_LIMIT);
    let mut ae = AntiEntropyClient::new(channel)
        .max_encoding_message_size(wire::PEER_MESSAGE_LIMIT)
        .max_decoding_message_size(wire::PEER_MESSAGE_LIMIT);
    let interval = Duration::from_secs(cfg.anti_entropy_interval_secs);
    // A round at start-up finds what was missed while this node was down.
    let mut next_round = Instant::now();

    loop {
        let woken = peer.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let due = round_due(&peer.lock(), Instant::now() >= next_round);
        let Some(mode) = due else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep_until(next_round) => {}
            }
            continue;
        };
        let started_ms = ctx.clock.now_ms();
        // Everything committed before the round began is in the data it
        // compares: the log up to this seq, and every entry applied before
        // the visible time (what tombstone collection may trust).
        let resume_at = ctx.last_seq();
        let visible_ms = ctx.store.round_visible_ms(started_ms);
        let rules = rules(&ctx, &peer, mode, started_ms);
        peer.handle(&ctx, Event::RoundStarted(mode));
        tracing::info!(peer = %peer.id, ?mode, "anti-entropy round starting");
        let checked = |regressed| peer.handle(&ctx, Event::HighWaterChecked { regressed });
        let round = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = anti_entropy::round(&ctx, &peer.id, &mut ae, &mut repl, rules, &checked) => r,
        };
        match round {
            Ok(stats) => {
                if let Some((rtt, peer_ms)) = stats.clock {
                    peer.clock_sample(&ctx, rtt, peer_ms);
                }
                peer.refused(stats.refused, stats.last_refused.clone());
                let end = RoundEnd::new(mode, &stats, resume_at, visible_ms);
                let finished = end.finished;
                peer.handle(&ctx, Event::RoundEnded(end));
                tracing::info!(
                    peer = %peer.id,
                    ?mode,
                    buckets = stats.differing_buckets,
                    pushed = stats.pushed,
                    pulled = stats.pulled,
                    skipped = stats.skipped,
                    forgotten = stats.forgotten,
                    refused = stats.refused,
                    complete = stats.complete(),
                    "anti-entropy round done"
                );
                crate::metrics::anti_entropy_round(&peer.id, stats.pushed + stats.pulled);
                if finished {
                    backoff.reset();
                    next_round = Instant::now() + backoff.jittered(interval);
                } else {
                    let delay = backoff.next_delay();
                    next_round = Instant::now() + delay;
                    if sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(peer = %peer.id, error = %e, "anti-entropy round failed");
                peer.handle(&ctx, Event::RoundFailed(e.to_string()));
                let delay = backoff.next_delay();
                next_round = Instant::now() + delay;
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}
