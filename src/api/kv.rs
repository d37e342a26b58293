//! `meshkv.v1.KV`: the client API.

use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::{
    api::{
        consistency::{self, Replicas},
        scan, validate, watch,
    },
    clock::PhysicalClock,
    error::Error,
    proto::{self, kv_server::Kv},
    replication::quorum::Level,
    security::{auth, Role},
    storage::{
        blocking::Blocking,
        writer::{Expect, LocalWrite},
        Store, WriterHandle,
    },
    version::{version_from_proto, version_to_proto},
};

/// The most writes one WriteBatch may carry.
pub const MAX_WRITE_BATCH: usize = 10_000;

/// The longest TTL a write may carry: 100 years, far inside the clock's
/// range, so that no expiry can overflow it.
pub const MAX_TTL_MS: u64 = 100 * 366 * 24 * 3600 * 1000;

/// Serves the client API on one node.
#[derive(Debug)]
pub struct KvService {
    store: Arc<Store>,
    writer: WriterHandle,
    clock: Arc<dyn PhysicalClock>,
    blocking: Blocking,
    max_value_bytes: usize,
    /// Scans running at once; more get RESOURCE_EXHAUSTED.
    scans: Arc<Semaphore>,
    /// Watches open at once; likewise.
    watches: Arc<Semaphore>,
    /// Ends open watches when the node stops.
    shutdown: tokio_util::sync::CancellationToken,
    /// The peers, for consistency levels and write tokens.
    replicas: Replicas,
}

impl KvService {
    /// A service over `store`, writing through `writer`; `clock` decides
    /// what has expired, `blocking` where scans read.
    pub fn new(
        store: Arc<Store>,
        writer: WriterHandle,
        clock: Arc<dyn PhysicalClock>,
        blocking: Blocking,
        max_value_bytes: usize,
        shutdown: tokio_util::sync::CancellationToken,
        replicas: Replicas,
    ) -> Self {
        Self {
            store,
            writer,
            clock,
            blocking,
            max_value_bytes,
            scans: Arc::new(Semaphore::new(scan::MAX_SCANS)),
            watches: watch::slots(),
            shutdown,
            replicas,
        }
    }
}

impl KvService {
    /// When a call must answer by (see [`consistency::deadline`]).
    fn deadline<T>(&self, request: &Request<T>) -> tokio::time::Instant {
        consistency::deadline(request.metadata(), self.replicas.default_timeout)
    }

    /// Commits local writes, then waits for `level`: their versions and
    /// the token of the last one.
    async fn commit(
        &self,
        writes: Vec<LocalWrite>,
        level: Level,
        deadline: tokio::time::Instant,
    ) -> Result<(Vec<crate::version::Version>, String), Error> {
        let written = self.writer.write_logged(writes).await?;
        self.replicas
            .confirm_write(written.seq, level, deadline)
            .await?;
        Ok((written.versions, self.replicas.token(written.seq)))
    }
}

/// A client's write, checked: key, bytes, TTL and condition.
pub fn check_write(req: proto::WriteRequest, max_value_bytes: usize) -> Result<LocalWrite, Error> {
    validate::key(&req.key)?;
    let value = payload(req.value, req.text)?;
    validate::value(value.len(), max_value_bytes)?;
    if req.ttl_ms > MAX_TTL_MS {
        return Err(Error::InvalidArgument(format!(
            "ttl_ms is {}; it must be at most {MAX_TTL_MS} (100 years)",
            req.ttl_ms
        )));
    }
    Ok(LocalWrite {
        key: req.key,
        value: Some(value),
        ttl_ms: (req.ttl_ms > 0).then_some(req.ttl_ms),
        expect: check_expect(req.expect)?,
    })
}

/// A compare-and-set condition, checked.
fn check_expect(expect: Option<proto::Expect>) -> Result<Option<Expect>, Error> {
    use proto::expect::State;
    match expect.and_then(|e| e.state) {
        None | Some(State::Absent(false)) => Ok(None),
        Some(State::Absent(true)) => Ok(Some(Expect::Absent)),
        Some(State::Version(v)) => {
            validate::node_id_field(&v.node_id)?;
            Ok(Some(Expect::Version(version_from_proto(v))))
        }
    }
}

/// A client's batch, checked as a whole: 1..=10000 writes, each valid; an
/// error names the first bad write.
pub fn check_batch(
    req: proto::WriteBatchRequest,
    max_value_bytes: usize,
) -> Result<Vec<LocalWrite>, Error> {
    if req.writes.is_empty() || req.writes.len() > MAX_WRITE_BATCH {
        return Err(Error::InvalidArgument(format!(
            "a batch holds {} writes; it must hold 1..={MAX_WRITE_BATCH}",
            req.writes.len()
        )));
    }
    req.writes
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            check_write(w, max_value_bytes)
                .map_err(|e| Error::InvalidArgument(format!("write {i}: {e}")))
        })
        .collect()
}

/// The bytes a write stores: its `value`, or its `text` as UTF-8.
fn payload(value: Vec<u8>, text: String) -> Result<Vec<u8>, Error> {
    match (value.is_empty(), text.is_empty()) {
        (_, true) => Ok(value),
        (true, false) => Ok(text.into_bytes()),
        (false, false) => Err(Error::InvalidArgument(
            "both value and text are set; a write carries one of them".into(),
        )),
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn write(
        &self,
        request: Request<proto::WriteRequest>,
    ) -> Result<Response<proto::WriteResponse>, Status> {
        let started = Instant::now();
        auth::require(&request, Role::Write)?;
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let level = Level::from_proto(req.consistency)?;
        let write = check_write(req, self.max_value_bytes)?;
        let (version, token) = self.commit(vec![write], level, deadline).await?;
        crate::metrics::request("write", started.elapsed());
        Ok(Response::new(proto::WriteResponse {
            version: version.first().map(version_to_proto),
            token,
        }))
    }

    async fn read(
        &self,
        request: Request<proto::ReadRequest>,
    ) -> Result<Response<proto::ReadResponse>, Status> {
        let started = Instant::now();
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        validate::key(&req.key)?;
        let level = Level::from_proto(req.consistency)?;
        let after = self.replicas.check_tokens(&req.after)?;
        if !after.is_empty() {
            self.replicas.wait_applied(&after, deadline).await?;
        }
        let mut entry = self.store.get(&req.key)?;
        if level != Level::One {
            entry = self.replicas.read(&req.key, entry, level, deadline).await?;
        }
        let now_ms = self.clock.now_ms();
        crate::metrics::request("read", started.elapsed());
        Ok(Response::new(match entry {
            None => proto::ReadResponse::default(),
            Some(e) => {
                let found = e.is_live(now_ms);
                let shown = super::show::shown_value(e.value.filter(|_| found), req.as_text);
                proto::ReadResponse {
                    found,
                    version: Some(version_to_proto(&e.version)),
                    expires_ms: e.expires_ms.unwrap_or(0),
                    value: shown.value,
                    text: shown.text,
                    binary: shown.binary,
                }
            }
        }))
    }

    type ScanStream = ReceiverStream<Result<proto::ScanResponse, Status>>;

    async fn scan(
        &self,
        request: Request<proto::ScanRequest>,
    ) -> Result<Response<Self::ScanStream>, Status> {
        let plan = scan::plan(request.into_inner())?;
        let permit = Arc::clone(&self.scans).try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} scans are already running on this node; retry later",
                scan::MAX_SCANS
            ))
        })?;
        let (tx, rx) = mpsc::channel(scan::PAGES_BUFFERED);
        let run = scan::Run {
            store: Arc::clone(&self.store),
            clock: Arc::clone(&self.clock),
            blocking: self.blocking,
        };
        tokio::spawn(run.stream(plan, tx, permit));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type WatchStream = watch::WatchStream;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let plan = watch::plan(request.into_inner())?;
        let permit = Arc::clone(&self.watches).try_acquire_owned().map_err(|_| {
            Error::Overloaded(format!(
                "{} watches are already open on this node; retry later",
                watch::MAX_WATCHERS
            ))
        })?;
        Ok(Response::new(watch::open(
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            self.blocking,
            plan,
            permit,
            self.shutdown.clone(),
            watch::STALL,
        )))
    }

    async fn write_batch(
        &self,
        request: Request<proto::WriteBatchRequest>,
    ) -> Result<Response<proto::WriteBatchResponse>, Status> {
        let started = Instant::now();
        auth::require(&request, Role::Write)?;
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let level = Level::from_proto(req.consistency)?;
        let writes = check_batch(req, self.max_value_bytes)?;
        let (versions, token) = self.commit(writes, level, deadline).await?;
        crate::metrics::request("write_batch", started.elapsed());
        Ok(Response::new(proto::WriteBatchResponse {
            versions: versions.iter().map(version_to_proto).collect(),
            token,
        }))
    }

    async fn delete(
        &self,
        request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        let started = Instant::now();
        auth::require(&request, Role::Write)?;
        let deadline = self.deadline(&request);
        let req = request.into_inner();
        let level = Level::from_proto(req.consistency)?;
        validate::key(&req.key)?;
        let write = LocalWrite {
            expect: check_expect(req.expect)?,
            ..LocalWrite::new(req.key, None)
        };
        let (version, token) = self.commit(vec![write], level, deadline).await?;
        crate::metrics::request("delete", started.elapsed());
        Ok(Response::new(proto::DeleteResponse {
            version: version.first().map(version_to_proto),
            token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_carries_value_or_text() {
        assert_eq!(payload(b"v".to_vec(), String::new()).unwrap(), b"v");
        assert_eq!(payload(vec![], "héllo".into()).unwrap(), "héllo".as_bytes());
        assert!(payload(vec![], String::new()).unwrap().is_empty());
        let err = payload(b"v".to_vec(), "t".into()).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("value and text"), "{err}");
    }
}
