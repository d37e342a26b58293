//! The streamer: ships this node's log to one peer, from its cursor.
//!
//! Up to [`PIPELINE`] batches are in flight, acknowledged in order, so that
//! reading and encoding the next batch overlaps the peer applying this one.
//! The cursor only passes a batch once every batch before it was
//! acknowledged. Entries the peer refuses are counted and skipped: the
//! cursor moves past them, so no entry can hold a stream up.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::{
    proto::{self, replication_client::ReplicationClient},
    replication::{
        peer::{sleep_or_shutdown, Backoff, Peer},
        Ctx,
    },
    wire,
};

/// Batches sent to one peer and not yet acknowledged, at most this many.
pub const PIPELINE: usize = 2;

/// A Replicate request on its way.
struct InFlight {
    /// The seq of its last record (records skipped by the horizon included).
    upto: u64,
    /// Its records.
    count: u64,
    send: tokio::task::JoinHandle<Result<proto::ReplicateResponse, String>>,
}

fn abort_all(pending: &mut VecDeque<InFlight>) {
    for p in pending.drain(..) {
        p.send.abort();
    }
}

/// Waits until no repair or catch-up holds the stream; false on shutdown.
async fn wait_unblocked(peer: &Peer, shutdown: &CancellationToken) -> bool {
    loop {
        let notified = peer.unblocked.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !peer.stream_blocked() {
            return true;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = notified => {}
        }
    }
}

/// Runs until `shutdown`. It starts only after the first anti-entropy round
/// with the peer: that round tells whether this node's data went back in
/// time, in which case the old records in its log must not be sent.
pub async fn run(
    ctx: Arc<Ctx>,
    peer: Arc<Peer>,
    channel: Channel,
    mut seq_rx: watch::Receiver<u64>,
    mut backoff: Backoff,
    shutdown: CancellationToken,
) {
    let cfg = &ctx.config;
    let timeout = Duration::from_millis(cfg.rpc_timeout_ms);
    let repl = ReplicationClient::new(channel)
        .max_encoding_message_size(wire::PEER_MESSAGE_LIMIT)
        .max_decoding_message_size(wire::PEER_MESSAGE_LIMIT);
    let mut pending: VecDeque<InFlight> = VecDeque::with_capacity(PIPELINE);

    while !shutdown.is_cancelled() {
        if peer.stream_blocked() {
            // Whatever is in flight was sent before the gap: drop it, and
            // resume from the cursor the repair leaves behind.
            abort_all(&mut pending);
            if !wait_unblocked(&peer, &shutdown).await {
                return;
            }
            continue;
        }
        let cursor = peer.state().acked_seq;
        // Read after the last batch sent, which may still be in flight.
        let read_from = pending.back().map_or(cursor, |p| p.upto);
        if pending.len() < PIPELINE {
            // Mark the seq seen before reading, so a commit after the read wakes us.
            let last_seq = *seq_rx.borrow_and_update();
            let batch = {
                let store = Arc::clone(&ctx.store);
                let (n, b) = (
                    cfg.batch_max_entries,
                    cfg.batch_max_bytes.min(wire::MAX_FILL),
                );
                ctx.blocking
                    .run("log read", move || store.log_after(read_from, n, b))
                    .await
                    .and_then(|r| r)
            };
            let batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(peer = %peer.id, error = %e, "cannot read the log");
                    abort_all(&mut pending);
                    if sleep_or_shutdown(backoff.next_delay(), &shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            // Records must follow without a hole: retention may delete from
            // the head of the log while this batch is being read.
            let gap = match batch.first() {
                Some((first, _)) => {
                    *first != read_from + 1 || batch.windows(2).any(|w| w[1].0 != w[0].0 + 1)
                }
                None => last_seq > read_from,
            };
            if gap {
                tracing::warn!(
                    peer = %peer.id,
                    cursor,
                    "peer fell behind the start of the log; repairing it with anti-entropy"
                );
                abort_all(&mut pending);
                peer.mark_for_repair();
                continue;
            }
            if let Some(&(upto, _)) = batch.last() {
                let mutations: Vec<proto::Mutation> = batch.into_iter().map(|(_, m)| m).collect();
                let count = mutations.len() as u64;
                let mut request = tonic::Request::new(proto::ReplicateRequest {
                    cluster_id: ctx.cluster_id.clone(),
                    origin: ctx.node_id.clone(),
                    mutations,
                    repair: false,
                });
                request.set_timeout(timeout);
                let mut client = repl.clone();
                let send = tokio::spawn(async move {
                    match tokio::time::timeout(timeout, client.replicate(request)).await {
                        Ok(Ok(r)) => Ok(r.into_inner()),
                        Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
                        Err(_) => Err(format!("deadline of {timeout:?} exceeded")),
                    }
                });
                pending.push_back(InFlight { upto, count, send });
                continue;
            }
            if pending.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    changed = seq_rx.changed() => if changed.is_err() { return },
                    _ = peer.unblocked.notified() => {}
                }
                continue;
            }
        }

        let Some(mut front) = pending.pop_front() else {
            continue;
        };
        let sent = tokio::select! {
            _ = shutdown.cancelled() => {
                front.send.abort();
                abort_all(&mut pending);
                return;
            }
            r = &mut front.send => r.unwrap_or_else(|e| Err(format!("send task failed: {e}"))),
        };
        match sent {
            Ok(resp) => {
                {
                    let mut s = peer.lock();
                    s.acked_seq = s.acked_seq.max(front.upto);
                    s.connected = true;
                    s.last_error = None;
                }
                let last = resp
                    .refused
                    .last()
                    .map(|r| format!("{}: {}", r.key, r.reason));
                peer.refused(resp.refused.len() as u64, last);
                ctx.writer.save_cursor(&peer.id, front.upto);
                crate::metrics::replicated_out(&peer.id, front.count);
                backoff.reset();
            }
            Err(error) => {
                // Later batches may still land; the merge makes that harmless,
                // and they are sent again from the cursor.
                abort_all(&mut pending);
                let delay = backoff.next_delay();
                tracing::debug!(peer = %peer.id, %error, ?delay, "replicate failed");
                peer.failed(error);
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
    abort_all(&mut pending);
}
