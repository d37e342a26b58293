//! The two calls that stream: Scan, a page at a time, and Watch, which
//! picks itself up after a cut.

use tonic::{Code, Status, Streaming};

use crate::{
    proto,
    types::{expiry, Version},
    Client, Error,
};

/// A live key of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// Its value (empty with [`ScanOptions::keys_only`]).
    ///
    /// [`ScanOptions::keys_only`]: crate::ScanOptions::keys_only
    pub value: Vec<u8>,
    /// The version that wrote it.
    pub version: Option<Version>,
    /// When it expires, in Unix milliseconds, if it has a TTL.
    pub expires_ms: Option<u64>,
}

/// One page of a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanPage {
    /// Keys in key order, continuing the previous page.
    pub entries: Vec<KeyValue>,
    /// On the last page, when the limit stopped the scan before the end of
    /// the range: where to go on from.
    pub next_page_token: String,
}

/// A scan's pages as the node streams them; see [`Client::scan_pages`].
#[derive(Debug)]
pub struct ScanPages {
    stream: Streaming<proto::ScanResponse>,
}

impl ScanPages {
    pub(crate) fn new(stream: Streaming<proto::ScanResponse>) -> Self {
        Self { stream }
    }

    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> Result<Option<ScanPage>, Error> {
        let Some(page) = self.stream.message().await? else {
            return Ok(None);
        };
        Ok(Some(ScanPage {
            entries: page
                .entries
                .into_iter()
                .map(|e| KeyValue {
                    key: e.key,
                    value: e.value,
                    version: Version::from_proto(e.version),
                    expires_ms: expiry(e.expires_ms),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}

/// What a watch event says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The key now holds this value.
    Put,
    /// The key was deleted.
    Delete,
    /// The key's value expired.
    Expire,
    /// Nothing under the prefix changed up to the event's token.
    Progress,
    /// The snapshot events before this one were the prefix's contents as
    /// of its token; changes follow.
    SnapshotEnd,
}

/// One change, or a progress mark, from a [`Watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: EventKind,
    /// The key (empty for progress and snapshot ends).
    pub key: String,
    /// The value, for a put.
    pub value: Vec<u8>,
    /// The change's version; its node is the write's origin.
    pub version: Option<Version>,
    /// When a put's value expires, in Unix milliseconds.
    pub expires_ms: Option<u64>,
    /// Resume after this event with it.
    pub token: String,
    /// Part of a snapshot: the key's current value, sent because the node
    /// could not resume from the token it was given.
    pub snapshot: bool,
}

impl WatchEvent {
    fn from_proto(e: proto::WatchEvent) -> Option<Self> {
        use proto::watch_event::Kind;
        let kind = match Kind::try_from(e.kind).ok()? {
            Kind::Put => EventKind::Put,
            Kind::Delete => EventKind::Delete,
            Kind::Expire => EventKind::Expire,
            Kind::Progress => EventKind::Progress,
            Kind::SnapshotEnd => EventKind::SnapshotEnd,
            Kind::Unspecified => return None,
        };
        Some(Self {
            kind,
            key: e.key,
            value: e.value,
            version: Version::from_proto(e.version),
            expires_ms: expiry(e.expires_ms),
            token: e.token,
            snapshot: e.snapshot,
        })
    }
}

/// A watch that resumes by itself, as etcd's `clientv3` watchers do.
///
/// When its stream is cut (the node stops, restarts or goes away, or cuts
/// a watcher that fell behind) it reopens it from the last event's token,
/// on the same node or, after UNAVAILABLE, the next endpoint, with the
/// client's backoff and at most its attempts in a row. Tokens belong to
/// the node that gave them: another node, or one that no longer keeps
/// the changes since, answers with a marked snapshot of the prefix and
/// then live changes ([`WatchEvent::snapshot`], [`EventKind::SnapshotEnd`]),
/// never with a silent gap.
#[derive(Debug)]
pub struct Watch {
    client: Client,
    req: proto::WatchRequest,
    stream: Option<Streaming<proto::WatchEvent>>,
    resumes: u64,
}

impl Watch {
    pub(crate) async fn open(client: Client, req: proto::WatchRequest) -> Result<Self, Error> {
        let stream = client.open_watch(req.clone()).await?;
        Ok(Self {
            client,
            req,
            stream: Some(stream),
            resumes: 0,
        })
    }

    /// The next event; `None` only if the node ended the stream cleanly.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, Error> {
        let (mut step, attempts) = self.client.retry_policy();
        let mut failed = 0;
        loop {
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => self
                    .stream
                    .insert(self.client.open_watch(self.req.clone()).await?),
            };
            let status = match stream.message().await {
                Ok(Some(e)) => {
                    self.req.resume_token.clone_from(&e.token);
                    match WatchEvent::from_proto(e) {
                        Some(e) => return Ok(Some(e)),
                        None => continue,
                    }
                }
                Ok(None) => return Ok(None),
                Err(status) => status,
            };
            failed += 1;
            if !resumable(&status) || failed >= attempts {
                return Err(status.into());
            }
            self.stream = None;
            self.resumes += 1;
            self.client.step_back(&status, &mut step).await;
        }
    }

    /// The token of the last event received: where the watch goes on from.
    pub fn token(&self) -> &str {
        &self.req.resume_token
    }

    /// How many times the stream was reopened after a cut.
    pub fn resumes(&self) -> u64 {
        self.resumes
    }
}

/// Whether a cut stream is worth reopening: the node went away or
/// stopped (UNAVAILABLE, or a broken connection, which tonic reports as
/// UNKNOWN), or cut a watcher that fell behind (RESOURCE_EXHAUSTED).
fn resumable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::ResourceExhausted
    )
}
