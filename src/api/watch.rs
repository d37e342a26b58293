//! `KV/Watch`: the change feed of one node, filtered by prefix, resumable.
//!
//! A watcher subscribes to the feed's live channel before it reads
//! anything, then catches up from the `changes` keyspace from its position,
//! then follows the channel. Changes seen twice (on disk and live) are told
//! apart by their change seq. A watcher that lags behind the channel goes
//! back to the keyspace; one whose position the node no longer keeps gets
//! a snapshot of its prefix. So a watcher never silently misses a change.
//!
//! Memory is bounded per watcher: events wait for the client in a channel
//! of [`BUFFER_EVENTS`] and at most [`BUFFER_BYTES`] of values. A client
//! that leaves it full for [`STALL`] is cut off with RESOURCE_EXHAUSTED and
//! resumes from the last token it received.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    sync::{broadcast, mpsc, oneshot, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    clock::PhysicalClock,
    config::MAX_KEY_BYTES,
    error::Error,
    proto::{self, watch_event::Kind, ChangeKind},
    storage::{
        blocking::Blocking,
        feed::{decode_change, Live},
        scan::{KeyRange, PageLimits},
        Store,
    },
    version::{version_from_proto, Entry},
};

/// Watches open at once on one node; more get RESOURCE_EXHAUSTED.
pub const MAX_WATCHERS: usize = 1024;
/// Events waiting for one client.
const BUFFER_EVENTS: usize = 256;
/// Bytes of values waiting for one client (an event larger than this
/// waits for the buffer to empty).
const BUFFER_BYTES: u32 = 8 << 20;
/// A client that leaves its buffer full this long is cut off.
pub const STALL: Duration = Duration::from_secs(10);
/// Changes read from disk per step of a catch-up.
const READ_CHUNK: usize = 512;
/// Entries of a snapshot read per page.
const SNAPSHOT_PAGE: PageLimits = PageLimits {
    entries: 256,
    bytes: 1 << 20,
    scanned: 4096,
};
/// Tokens start with this, so that a token from elsewhere is refused.
const TOKEN_TAG: &str = "w1.";

/// The token of change seq `seq` of feed `feed_id`.
pub fn token(feed_id: u64, seq: u64) -> String {
    format!("{TOKEN_TAG}{feed_id:x}.{seq}")
}

/// A token's feed id and change seq.
fn parse_token(t: &str) -> Result<(u64, u64), Error> {
    let bad = || Error::InvalidArgument("resume_token is not one a watch returned".into());
    let (id, seq) = t
        .strip_prefix(TOKEN_TAG)
        .and_then(|r| r.split_once('.'))
        .ok_or_else(bad)?;
    Ok((
        u64::from_str_radix(id, 16).map_err(|_| bad())?,
        seq.parse().map_err(|_| bad())?,
    ))
}

/// A checked Watch request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    prefix: String,
    resume: Option<(u64, u64)>,
    progress: Duration,
    as_text: bool,
}

/// Checks a Watch request.
pub fn plan(req: proto::WatchRequest) -> Result<Plan, Error> {
    if req.prefix.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "prefix is {} bytes; at most {MAX_KEY_BYTES}",
            req.prefix.len()
        )));
    }
    let progress = match req.progress_interval_ms {
        0 => Duration::from_secs(5),
        ms @ 100..=60_000 => Duration::from_millis(u64::from(ms)),
        ms => {
            return Err(Error::InvalidArgument(format!(
                "progress_interval_ms is {ms}; it must be 100..=60000, or 0 for 5000"
            )))
        }
    };
    let resume = if req.resume_token.is_empty() {
        None
    } else {
        Some(parse_token(&req.resume_token)?)
    };
    Ok(Plan {
        prefix: req.prefix,
        resume,
        progress,
        as_text: req.as_text,
    })
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// After this change seq.
    After(u64),
    /// With a snapshot of the prefix.
    Snapshot,
}

/// Where a watch resuming from `resume` starts, on a feed `feed_id` that
/// keeps changes `first..=last`: after its position if the feed still has
/// everything since, else with a snapshot. No token: from now on.
pub fn start(resume: Option<(u64, u64)>, feed_id: u64, first: u64, last: u64) -> Start {
    match resume {
        None => Start::After(last),
        Some((id, seq)) if id == feed_id && seq <= last && seq.saturating_add(1) >= first => {
            Start::After(seq)
        }
        Some(_) => Start::Snapshot,
    }
}

/// An event on its way to the client, with the room it holds.
type Item = (proto::WatchEvent, OwnedSemaphorePermit);

/// The client's side: events in order, then the reason the watch was cut
/// off, if it was.
pub struct WatchStream {
    rx: mpsc::Receiver<Item>,
    cut: Option<oneshot::Receiver<Status>>,
}

impl tokio_stream::Stream for WatchStream {
    type Item = Result<proto::WatchEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // A cut comes first: it is sent when the buffer is full.
        if let Some(cut) = self.cut.as_mut() {
            if let Poll::Ready(r) = Pin::new(cut).poll(cx) {
                self.cut = None;
                if let Ok(status) = r {
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        match self.rx.poll_recv(cx) {
            // The event's room is freed as it leaves for the transport.
            Poll::Ready(Some((event, _room))) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Why a watcher stops.
enum Stop {
    /// The client went away.
    Gone,
    /// Cut off, with this status for the client.
    Cut(Status),
}

/// A running watch.
pub struct Watcher {
    store: Arc<Store>,
    clock: Arc<dyn PhysicalClock>,
    blocking: Blocking,
    plan: Plan,
    tx: mpsc::Sender<Item>,
    room: Arc<Semaphore>,
    /// When the last event went out, for progress events.
    last_sent: Instant,
    /// How long a full buffer is tolerated ([`STALL`]).
    stall: Duration,
}

/// Opens a watch: the stream for the client and the task that fills it.
/// Subscribes to the feed at once, so nothing committed from now on is
/// missed, whatever the task does first.
/// `shutdown` ends it with UNAVAILABLE, so that open watches never hold up
/// a node's drain; a buffer left full for `stall` ([`STALL`]) cuts it off.
pub fn open(
    store: Arc<Store>,
    clock: Arc<dyn PhysicalClock>,
    blocking: Blocking,
    plan: Plan,
    permit: OwnedSemaphorePermit,
    shutdown: CancellationToken,
    stall: Duration,
) -> WatchStream {
    let live = store.feed.subscribe();
    let feed = &store.feed;
    let start = start(plan.resume, feed.id(), feed.first(), feed.last());
    let (tx, rx) = mpsc::channel(BUFFER_EVENTS);
    let (cut_tx, cut_rx) = oneshot::channel();
    let watcher = Watcher {
        store,
        clock,
        blocking,
        plan,
        tx,
        room: Arc::new(Semaphore::new(BUFFER_BYTES as usize)),
        last_sent: Instant::now(),
        stall,
    };
    tokio::spawn(async move {
        let _permit = permit;
        let stop = tokio::select! {
            stop = watcher.run(start, live) => stop,
            _ = shutdown.cancelled() => Stop::Cut(Status::unavailable(
                "the node is shutting down; resume the watch elsewhere or later with the \
                 token of the last event received",
            )),
        };
        if let Stop::Cut(status) = stop {
            let _ = cut_tx.send(status);
        }
    });
    WatchStream {
        rx,
        cut: Some(cut_rx),
    }
}

impl Watcher {
    fn token(&self, seq: u64) -> String {
        token(self.store.feed.id(), seq)
    }

    async fn run(mut self, start: Start, mut live: broadcast::Receiver<Live>) -> Stop {
        let mut pos = match start {
            Start::After(seq) => seq,
            Start::Snapshot => match self.snapshot().await {
                Ok(at) => at,
                Err(stop) => return stop,
            },
        };
        loop {
            pos = match self.catch_up(pos).await {
                Ok(p) => p,
                Err(stop) => return stop,
            };
            match self.follow(pos, &mut live).await {
                Ok(p) => pos = p,
                Err(stop) => return stop,
            }
        }
    }

    /// Sends the prefix's live entries as snapshot events, then
    /// SNAPSHOT_END; the change seq they are current as of.
    async fn snapshot(&mut self) -> Result<u64, Stop> {
        // Changes after this seq follow the snapshot; some may already be in
        // it, which their versions show.
        let at = self.store.feed.last();
        let range = Arc::new(KeyRange::prefix(self.plan.prefix.as_bytes()));
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (store, r, from) = (Arc::clone(&self.store), Arc::clone(&range), after.take());
            let now_ms = self.clock.now_ms();
            let page = self
                .blocking
                .run("watch snapshot", move || {
                    store.scan_page(&r, from.as_deref(), SNAPSHOT_PAGE, now_ms, false)
                })
                .await
                .and_then(|r| r)
                .map_err(|e| Stop::Cut(e.into()))?;
            for (key, entry) in page.entries {
                let mut ev = self.event(Kind::Put, key, entry, at);
                ev.snapshot = true;
                self.send(ev).await?;
            }
            match page.resume_after {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        let end = proto::WatchEvent {
            kind: Kind::SnapshotEnd as i32,
            token: self.token(at),
            ..Default::default()
        };
        self.send(end).await?;
        Ok(at)
    }

    /// Delivers the kept changes after `pos`, until none is left; the new
    /// position. Starts over with a snapshot if the feed no longer keeps
    /// the change after `pos`.
    async fn catch_up(&mut self, mut pos: u64) -> Result<u64, Stop> {
        loop {
            let feed = &self.store.feed;
            if pos < feed.last() && pos.saturating_add(1) < feed.first() {
                tracing::debug!(
                    pos,
                    first = feed.first(),
                    "a watcher fell behind the kept changes"
                );
                pos = self.snapshot().await?;
                continue;
            }
            let store = Arc::clone(&self.store);
            let chunk = self
                .blocking
                .run("watch catch-up", move || {
                    store.feed.read_after(pos, READ_CHUNK)
                })
                .await
                .and_then(|r| r)
                .map_err(|e| Stop::Cut(e.into()))?;
            match chunk.first() {
                None => return Ok(pos),
                // Trimmed between the check and the read.
                Some((seq, _)) if *seq > pos + 1 => continue,
                Some(_) => {}
            }
            for (seq, bytes) in chunk {
                self.deliver(seq, &bytes).await?;
                pos = seq;
            }
        }
    }

    /// Follows the live channel from `pos`; returns the position when it
    /// must go back to the keyspace (lagged, or a gap).
    async fn follow(
        &mut self,
        mut pos: u64,
        live: &mut broadcast::Receiver<Live>,
    ) -> Result<u64, Stop> {
        loop {
            let progress_at = self.last_sent + self.plan.progress;
            tokio::select! {
                r = live.recv() => match r {
                    Ok((seq, _)) if seq <= pos => {}
                    Ok((seq, Some(bytes))) if seq == pos + 1 => {
                        self.deliver(seq, &bytes).await?;
                        pos = seq;
                    }
                    // Too large to ride along, or a gap: read it from disk.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return Ok(pos),
                    Err(broadcast::error::RecvError::Closed) => return Err(Stop::Gone),
                },
                _ = tokio::time::sleep_until(progress_at) => {
                    self.progress(pos).await?;
                }
                _ = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// Sends change `seq` if its key is under the prefix; a progress event
    /// if nothing went out for the interval.
    async fn deliver(&mut self, seq: u64, bytes: &[u8]) -> Result<(), Stop> {
        let (m, kind) = decode_change(bytes).map_err(|e| Stop::Cut(e.into()))?;
        if m.key.starts_with(&self.plan.prefix) {
            let kind = match kind {
                ChangeKind::Put => Kind::Put,
                ChangeKind::Delete => Kind::Delete,
                ChangeKind::Expire => Kind::Expire,
                ChangeKind::Unspecified => return Ok(()),
            };
            let entry = Entry {
                version: version_from_proto(m.version.unwrap_or_default()),
                value: m.value.filter(|_| kind == Kind::Put),
                expires_ms: (m.expires_ms != 0).then_some(m.expires_ms),
            };
            let ev = self.event(kind, m.key, entry, seq);
            self.send(ev).await
        } else if self.last_sent.elapsed() >= self.plan.progress {
            self.progress(seq).await
        } else {
            Ok(())
        }
    }

    async fn progress(&mut self, pos: u64) -> Result<(), Stop> {
        let ev = proto::WatchEvent {
            kind: Kind::Progress as i32,
            token: self.token(pos),
            ..Default::default()
        };
        self.send(ev).await
    }

    fn event(&self, kind: Kind, key: String, e: Entry, seq: u64) -> proto::WatchEvent {
        let shown = super::show::shown_value(e.value, self.plan.as_text);
        proto::WatchEvent {
            kind: kind as i32,
            key,
            value: shown.value,
            text: shown.text,
            binary: shown.binary,
            version: Some(crate::version::version_to_proto(&e.version)),
            expires_ms: e.expires_ms.unwrap_or(0),
            token: self.token(seq),
            snapshot: false,
        }
    }

    /// Queues an event for the client, waiting at most [`STALL`] for room.
    async fn send(&mut self, ev: proto::WatchEvent) -> Result<(), Stop> {
        let bytes = (ev.value.len() + ev.text.len() + ev.key.len() + 64).min(BUFFER_BYTES as usize);
        let stall = self.stall;
        let behind = || {
            Stop::Cut(
                Error::Overloaded(format!(
                    "this watcher fell behind: its buffer ({BUFFER_EVENTS} events or \
                     {} MiB) stayed full for {}s; resume with the token of the last event \
                     received",
                    BUFFER_BYTES >> 20,
                    stall.as_secs_f64()
                ))
                .into(),
            )
        };
        let room = tokio::select! {
            r = tokio::time::timeout(stall, Arc::clone(&self.room).acquire_many_owned(bytes as u32)) => match r {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => return Err(Stop::Gone),
                Err(_) => return Err(behind()),
            },
            _ = self.tx.closed() => return Err(Stop::Gone),
        };
        match self.tx.send_timeout((ev, room), stall).await {
            Ok(()) => {
                self.last_sent = Instant::now();
                Ok(())
            }
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(behind()),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(Stop::Gone),
        }
    }
}

/// A semaphore of watch slots.
pub fn slots() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(MAX_WATCHERS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_strangers_are_refused() {
        assert_eq!(parse_token(&token(0xabc, 42)).unwrap(), (0xabc, 42));
        for bad in ["", "w1.", "w1.zz.1", "w1.1.x", "s1.00", "w1.1"] {
            assert!(parse_token(bad).is_err(), "{bad}");
        }
        let req = |t: &str, ms| proto::WatchRequest {
            resume_token: t.into(),
            progress_interval_ms: ms,
            ..Default::default()
        };
        assert_eq!(plan(req("", 0)).unwrap().progress, Duration::from_secs(5));
        assert!(plan(req("", 99)).is_err());
        assert!(plan(req("", 60_001)).is_err());
        assert!(plan(req("nope", 0)).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watcher_that_does_not_read_is_cut_off_with_a_clear_status_and_can_resume() {
        use tokio_stream::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _seq, _join) = crate::storage::writer::for_tests(dir.path());
        let open = |token: &str| {
            let req = proto::WatchRequest {
                resume_token: token.into(),
                ..Default::default()
            };
            let permit = slots().try_acquire_owned().unwrap();
            open(
                Arc::clone(&store),
                Arc::new(crate::clock::SystemClock),
                Blocking::Pool,
                plan(req).unwrap(),
                permit,
                CancellationToken::new(),
                Duration::from_millis(200),
            )
        };
        let mut stream = open("");
        // More changes than the buffer holds, and nobody reading.
        let writes = (0..BUFFER_EVENTS + 50)
            .map(|i| crate::storage::writer::LocalWrite::new(format!("k{i}"), Some(vec![1])))
            .collect();
        writer.write_batch(writes).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let first = stream.next().await.unwrap();
        let status = first.expect_err("the cut comes first");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("fell behind"),
            "{}",
            status.message()
        );
        // What was buffered still arrives, then the stream ends.
        let mut last = String::new();
        while let Some(ev) = stream.next().await {
            last = ev.unwrap().token;
        }
        assert!(!last.is_empty());
        // Resumed from the last token received, it gets the rest.
        let mut stream = open(&last);
        let mut keys = 0;
        while keys < 50 {
            let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev.kind == Kind::Put as i32 {
                keys += 1;
            }
        }
    }

    #[test]
    fn a_watch_resumes_where_the_feed_still_has_everything_since_and_else_snapshots() {
        const ID: u64 = 7;
        // The feed keeps 10..=20.
        let at = |resume| start(resume, ID, 10, 20);
        assert_eq!(at(None), Start::After(20));
        assert_eq!(at(Some((ID, 20))), Start::After(20));
        assert_eq!(at(Some((ID, 9))), Start::After(9), "10 onwards is kept");
        assert_eq!(at(Some((ID, 8))), Start::Snapshot, "9 is gone");
        assert_eq!(
            at(Some((ID, 21))),
            Start::Snapshot,
            "a position from the future"
        );
        assert_eq!(at(Some((ID + 1, 15))), Start::Snapshot, "another feed");
        // A feed that keeps nothing (retain 0): only its last position is good.
        assert_eq!(start(Some((ID, 20)), ID, 21, 20), Start::After(20));
        assert_eq!(start(Some((ID, 19)), ID, 21, 20), Start::Snapshot);
    }
}
