//! The streamer: ships this node's log to one peer, from its cursor, over
//! one long-lived `ReplicateStream` per connection.
//!
//! Up to [`PIPELINE`] batches are in flight; the peer answers them in order,
//! so each answer acknowledges everything up to its batch (a cumulative
//! ack) and the cursor moves with it. Records come from the store's
//! in-memory window while the peer keeps up and from disk once it has
//! fallen behind, and are sent as they are stored, never decoded here.
//! Entries the peer refuses are counted and skipped: the cursor moves past
//! them, so no entry can hold a stream up.
//!
//! The bookkeeping of what is in flight is the pure [`Pipeline`]; the task
//! around it only moves bytes and waits.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use prost::bytes::Bytes;
use tokio::{
    sync::{mpsc, watch},
    // Tokio's, not std's: the simulation's clock drives the deadlines.
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::http::uri::PathAndQuery;

use crate::{
    proto,
    replication::{
        machine::{check_batch, Batch, Event, Gate},
        peer::{sleep_or_shutdown, Backoff, Peer},
        Ctx, PeerChannel,
    },
    wire::{self, EncodedReplicateRequest},
};

/// Batches sent to one peer and not yet acknowledged, at most this many.
pub const PIPELINE: usize = 4;

/// The slowest transfer a stream tolerates, in bytes per second: a batch
/// gets `rpc_timeout_ms` plus its size at this rate, so that a record of
/// many MiB on a slow link is still delivered instead of timing out forever.
pub const MIN_TRANSFER_BYTES_PER_SEC: u64 = 1024 * 1024;

const METHOD: &str = "/meshkv.v1.Replication/ReplicateStream";

/// A batch on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The seq of its last record.
    pub upto: u64,
    /// Its records.
    pub count: u64,
    /// Its records' bytes.
    pub bytes: u64,
    /// When it was sent.
    pub at: Instant,
}

/// What is in flight on one stream. Pure: no sockets, no clock of its own.
///
/// A stream is judged by its progress, not by when everything completes:
/// the oldest batch is due `timeout` (plus its transfer time at
/// [`MIN_TRANSFER_BYTES_PER_SEC`]) after it was sent or after the previous
/// answer, whichever is later. Batches queued together are not all due at
/// once.
#[derive(Debug)]
pub struct Pipeline {
    sent: VecDeque<Sent>,
    /// The peer's cursor: every seq up to it is acknowledged.
    acked: u64,
    timeout: Duration,
    /// When the last answer arrived.
    progress_at: Option<Instant>,
}

impl Pipeline {
    /// A stream starting from the peer's cursor.
    pub fn new(acked: u64, timeout: Duration) -> Self {
        Self {
            sent: VecDeque::with_capacity(PIPELINE),
            acked,
            timeout,
            progress_at: None,
        }
    }

    /// The seq after which the next batch starts: after the last one sent.
    pub fn next_after(&self) -> u64 {
        self.sent.back().map_or(self.acked, |s| s.upto)
    }

    /// Whether another batch may be sent.
    pub fn has_room(&self) -> bool {
        self.sent.len() < PIPELINE
    }

    /// Nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.sent.is_empty()
    }

    /// Records a batch of `count` records and `bytes` sent at `at`, ending
    /// at seq `upto`.
    pub fn sent(&mut self, upto: u64, count: u64, bytes: u64, at: Instant) {
        debug_assert!(upto > self.next_after() && self.has_room());
        self.sent.push_back(Sent {
            upto,
            count,
            bytes,
            at,
        });
    }

    /// The peer answered the oldest batch at `at`: returns it, with the
    /// cursor moved to its end, or `None` for an answer to nothing (a broken
    /// peer).
    pub fn answered(&mut self, at: Instant) -> Option<Sent> {
        let s = self.sent.pop_front()?;
        self.acked = self.acked.max(s.upto);
        self.progress_at = Some(at);
        Some(s)
    }

    /// The moment by which the oldest batch must be answered, if any is out.
    pub fn deadline(&self) -> Option<Instant> {
        self.sent.front().map(|s| {
            let from = self.progress_at.map_or(s.at, |p| p.max(s.at));
            let transfer =
                Duration::from_millis(s.bytes.saturating_mul(1000) / MIN_TRANSFER_BYTES_PER_SEC);
            // Checked: an instant past tokio's range panics. Config bounds
            // the timeout; a far transfer estimate still must not crash.
            from.checked_add(self.timeout.saturating_add(transfer))
                .unwrap_or(from + Duration::from_secs(365 * 24 * 3600))
        })
    }
}

/// Why a stream session ended without an error.
enum End {
    Shutdown,
    /// A repair or catch-up is due first.
    Blocked,
}

/// Waits until no repair or catch-up holds the stream; false on shutdown.
async fn wait_unblocked(peer: &Peer, shutdown: &CancellationToken) -> bool {
    loop {
        let notified = peer.unblocked.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if peer.gate() == Gate::Open {
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
    channel: PeerChannel,
    mut seq_rx: watch::Receiver<u64>,
    mut backoff: Backoff,
    shutdown: CancellationToken,
) {
    while !shutdown.is_cancelled() {
        if peer.gate() != Gate::Open {
            peer.handle(&ctx, Event::StreamHeld);
            if !wait_unblocked(&peer, &shutdown).await {
                return;
            }
            continue;
        }
        let ended = session(
            &ctx,
            &peer,
            channel.clone(),
            &mut seq_rx,
            &mut backoff,
            &shutdown,
        )
        .await;
        match ended {
            Ok(End::Shutdown) => return,
            Ok(End::Blocked) => {}
            Err(error) => {
                // Batches in flight may still land; the merge makes that
                // harmless, and they are sent again from the cursor.
                let delay = backoff.next_delay();
                tracing::debug!(peer = %peer.id, %error, ?delay, "replication stream failed");
                peer.handle(&ctx, Event::StreamFailed(error));
                if sleep_or_shutdown(delay, &shutdown).await {
                    return;
                }
            }
        }
    }
}

/// Reads the records after `after`: from the window, inline, or from disk on
/// the blocking pool. Says which, for the peer's phase.
async fn read(ctx: &Ctx, after: u64) -> crate::error::Result<(Vec<(u64, Bytes)>, bool)> {
    let (n, b) = (
        ctx.config.batch_max_entries,
        ctx.config.batch_max_bytes.min(wire::MAX_FILL),
    );
    if let Some(records) = ctx.store.window.after(after, n, b) {
        return Ok((records, false));
    }
    let store = Arc::clone(&ctx.store);
    let started = std::time::Instant::now();
    let records = ctx
        .blocking
        .run("log read", move || store.log_after(after, n, b))
        .await??;
    crate::metrics::stage("log_read_disk", started.elapsed());
    Ok((records, true))
}

/// One stream, from opening it to its first error, a gap, or shutdown.
async fn session(
    ctx: &Ctx,
    peer: &Peer,
    channel: PeerChannel,
    seq_rx: &mut watch::Receiver<u64>,
    backoff: &mut Backoff,
    shutdown: &CancellationToken,
) -> Result<End, String> {
    let timeout = Duration::from_millis(ctx.config.rpc_timeout_ms);
    peer.handle(ctx, Event::Connecting);
    let (tx, rx) = mpsc::channel::<EncodedReplicateRequest>(PIPELINE);
    let mut answers = tokio::select! {
        _ = shutdown.cancelled() => return Ok(End::Shutdown),
        opened = tokio::time::timeout(timeout, open(channel, rx)) => match opened {
            Ok(r) => r?,
            Err(_) => return Err(format!("opening the stream: deadline of {timeout:?} exceeded")),
        },
    };
    peer.handle(ctx, Event::Opened);
    let mut pipeline = Pipeline::new(peer.state().acked_seq, timeout);

    loop {
        if peer.gate() != Gate::Open {
            return Ok(End::Blocked);
        }
        if pipeline.has_room() {
            match send_next(ctx, peer, &mut pipeline, seq_rx, &tx).await? {
                Next::Sent => continue,
                Next::Nothing => {}
                Next::Gap => return Ok(End::Blocked),
            }
        }
        let deadline = pipeline.deadline();
        let overdue = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(End::Shutdown),
            answer = answers.message() => {
                let resp = match answer {
                    Ok(Some(resp)) => resp,
                    Ok(None) => return Err("the peer closed the stream".into()),
                    Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
                };
                let Some(batch) = pipeline.answered(Instant::now()) else {
                    return Err("the peer answered a batch that was never sent".into());
                };
                acknowledged(ctx, peer, batch, &resp);
                backoff.reset();
            }
            changed = seq_rx.changed(), if pipeline.has_room() => {
                if changed.is_err() {
                    return Ok(End::Shutdown);
                }
            }
            _ = peer.unblocked.notified(), if pipeline.is_idle() => {}
            _ = overdue => return Err(format!("no answer within the deadline of {timeout:?}")),
        }
    }
}

/// Opens the `ReplicateStream` call that sends what arrives on `rx`.
async fn open(
    channel: PeerChannel,
    rx: mpsc::Receiver<EncodedReplicateRequest>,
) -> Result<tonic::Streaming<proto::ReplicateResponse>, String> {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_encoding_message_size(wire::PEER_MESSAGE_LIMIT)
        .max_decoding_message_size(wire::PEER_MESSAGE_LIMIT);
    grpc.ready()
        .await
        .map_err(|e| format!("peer unreachable: {e}"))?;
    let codec =
        tonic_prost::ProstCodec::<EncodedReplicateRequest, proto::ReplicateResponse>::default();
    let answers = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            PathAndQuery::from_static(METHOD),
            codec,
        )
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
    Ok(answers.into_inner())
}

/// What [`send_next`] did.
enum Next {
    /// A batch went out.
    Sent,
    /// Nothing new to send.
    Nothing,
    /// The log no longer holds what the peer needs: a repair is due.
    Gap,
}

/// Reads the batch after the pipeline's last one and sends it.
async fn send_next(
    ctx: &Ctx,
    peer: &Peer,
    pipeline: &mut Pipeline,
    seq_rx: &mut watch::Receiver<u64>,
    tx: &mpsc::Sender<EncodedReplicateRequest>,
) -> Result<Next, String> {
    let after = pipeline.next_after();
    // Mark the seq seen before reading, so a commit after the read wakes us.
    let last_seq = *seq_rx.borrow_and_update();
    let (batch, from_disk) = match read(ctx, after).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(peer = %peer.id, error = %e, "cannot read the log");
            return Err(format!("cannot read the log: {e}"));
        }
    };
    // Retention may delete from the head of the log while this batch
    // is being read from disk.
    match check_batch(after, last_seq, batch.iter().map(|(seq, _)| *seq)) {
        Batch::Gap => {
            tracing::warn!(
                peer = %peer.id,
                cursor = after,
                "peer fell behind the start of the log; repairing it with anti-entropy"
            );
            peer.handle(ctx, Event::Gap);
            return Ok(Next::Gap);
        }
        Batch::Empty => {}
        Batch::Send => {
            peer.handle(ctx, Event::Read { from_disk });
        }
    }
    let Some(&(upto, _)) = batch.last() else {
        return Ok(Next::Nothing);
    };
    let count = batch.len() as u64;
    let bytes = batch.iter().map(|(_, r)| r.len() as u64).sum();
    let request = EncodedReplicateRequest {
        cluster_id: ctx.cluster_id.clone(),
        origin: ctx.node_id.clone(),
        mutations: batch.into_iter().map(|(_, r)| r).collect(),
        repair: false,
        upto_seq: upto,
    };
    // Room for PIPELINE requests, and at most that many are out.
    if tx.try_send(request).is_err() {
        return Err("the peer closed the stream".into());
    }
    pipeline.sent(upto, count, bytes, Instant::now());
    Ok(Next::Sent)
}

/// Moves the peer's cursor past an answered batch and records what it said.
fn acknowledged(ctx: &Ctx, peer: &Peer, batch: Sent, resp: &proto::ReplicateResponse) {
    let rtt = batch.at.elapsed();
    crate::metrics::stage("replicate_round_trip", rtt);
    peer.clock_sample(ctx, rtt, resp.now_ms);
    peer.handle(ctx, Event::Acked { upto: batch.upto });
    let last = resp
        .refused
        .last()
        .map(|r| format!("{}: {}", r.key, r.reason));
    peer.refused(resp.refused.len() as u64, last);
    crate::metrics::replicated_out(&peer.id, batch.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_timeout_gives_a_far_deadline_not_a_panic() {
        // Issue 24 item 9: `at + timeout` panicked past tokio's range.
        let mut p = Pipeline::new(0, Duration::from_secs(u64::MAX / 4));
        let now = Instant::now();
        p.sent(1, 1, u64::MAX / 2, now);
        assert!(p.deadline().unwrap() > now + Duration::from_secs(3600));
    }

    #[test]
    fn batches_follow_each_other_and_answers_move_the_cursor_in_order() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(10, Duration::from_secs(5));
        assert!(p.is_idle() && p.deadline().is_none());
        assert_eq!(p.next_after(), 10);
        p.sent(15, 5, 0, t0);
        p.sent(20, 5, 0, t0 + Duration::from_secs(1));
        // The next batch starts after the last one sent, not after the cursor.
        assert_eq!(p.next_after(), 20);
        assert_eq!(p.deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(p.answered(t0).map(|s| s.upto), Some(15));
        assert_eq!(p.deadline(), Some(t0 + Duration::from_secs(6)));
        assert_eq!(
            p.answered(t0 + Duration::from_secs(2))
                .map(|s| (s.upto, s.count)),
            Some((20, 5))
        );
        assert!(p.is_idle());
        assert_eq!(p.next_after(), 20);
        // An answer to nothing is refused, and the cursor stays.
        assert_eq!(p.answered(t0), None);
        assert_eq!(p.next_after(), 20);
    }

    #[test]
    fn at_most_pipeline_batches_are_in_flight() {
        let t0 = Instant::now();
        let mut p = Pipeline::new(0, Duration::from_secs(1));
        for i in 1..=PIPELINE as u64 {
            assert!(p.has_room());
            p.sent(i, 1, 0, t0);
        }
        assert!(!p.has_room());
        p.answered(t0);
        assert!(p.has_room());
    }

    /// Issue 22, item 4: four batches queued at once all had to be answered
    /// within one timeout of their sending, and a record that takes longer
    /// than the timeout to send and apply was never delivered.
    #[test]
    fn a_stream_is_judged_by_progress_and_big_batches_get_time_to_travel() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let mut p = Pipeline::new(0, secs(5));
        for i in 1..=PIPELINE as u64 {
            p.sent(i, 1, 4 << 20, t0);
        }
        // 4 MiB at the slowest rate tolerated: 4 s on top of the timeout.
        assert_eq!(p.deadline(), Some(t0 + secs(9)));
        // One answer every 8 s: each batch is within its own deadline.
        for i in 1..=PIPELINE as u64 {
            let now = t0 + secs(8 * i);
            assert!(now <= p.deadline().unwrap(), "batch {i} overdue at {now:?}");
            assert_eq!(p.answered(now).map(|s| s.upto), Some(i));
        }
        // A 64 MiB record alone gets 64 s to travel.
        let t1 = t0 + secs(100);
        p.sent(5, 1, 64 << 20, t1);
        assert_eq!(p.deadline(), Some(t1 + secs(5 + 64)));
        // A peer that stops answering is still caught.
        let mut q = Pipeline::new(0, secs(5));
        q.sent(1, 1, 100, t0);
        q.sent(2, 1, 100, t0);
        q.answered(t0 + secs(1));
        assert_eq!(q.deadline(), Some(t0 + secs(6)));
    }
}
