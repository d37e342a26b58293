//! The client: endpoints, their channels, and the retry loop every call
//! goes through.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use rand::{rngs::SmallRng, Rng, SeedableRng};
use tonic::{
    metadata::MetadataValue,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
    Code,
};

use crate::{
    proto::{self, kv_client::KvClient},
    stream::{ScanPages, Watch},
    types::{
        expiry, Consistency, Entry, ReadOptions, ScanOptions, Token, Version, WatchOptions,
        WriteOptions, Written,
    },
    Error, Session,
};

/// The most bytes of one answer: the server's ceiling for a value, plus
/// room for the rest of the message.
const MAX_ANSWER_BYTES: usize = 65 << 20;

/// Settings of a [`Client`], with defaults for a local cluster.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    timeout: Duration,
    connect_timeout: Duration,
    max_attempts: u32,
    backoff: (Duration, Duration),
    retry_writes: bool,
}

impl ClientBuilder {
    /// A bearer token (`meshkv certs --tokens`), sent with every call.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Trust this CA (PEM) for `https://` endpoints.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Present this client certificate and key (PEM) over TLS.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// The deadline of each call, unless the call sets its own (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long to wait for a connection to one endpoint (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Attempts per call, failovers and backoffs included (default 8).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The first and the longest wait after RESOURCE_EXHAUSTED (default
    /// 20 ms and 2 s); each wait is drawn at random up to the current step.
    pub fn backoff(mut self, first: Duration, longest: Duration) -> Self {
        self.backoff = (first, longest.max(first));
        self
    }

    /// Whether writes are retried too (default true; see the crate docs on
    /// what a retried write does).
    pub fn retry_writes(mut self, retry: bool) -> Self {
        self.retry_writes = retry;
        self
    }

    /// The client. Connections open lazily, at the first call to each
    /// endpoint.
    pub fn build(self) -> Result<Client, Error> {
        let channels = self
            .endpoints()?
            .iter()
            .map(Endpoint::connect_lazy)
            .collect();
        self.finish(channels)
    }

    /// The client, with a connection to every endpoint open already: a
    /// load generator wants its connections made before it starts the
    /// clock, and to hear at once which endpoint cannot be reached.
    pub async fn connect(self) -> Result<Client, Error> {
        let mut channels = Vec::with_capacity(self.endpoints.len());
        for (url, endpoint) in self.endpoints.iter().zip(self.endpoints()?) {
            let channel = endpoint.connect().await.map_err(|source| Error::Connect {
                endpoint: url.clone(),
                source,
            })?;
            channels.push(channel);
        }
        self.finish(channels)
    }

    fn endpoints(&self) -> Result<Vec<Endpoint>, Error> {
        if self.endpoints.is_empty() {
            return Err(Error::Config("at least one endpoint".into()));
        }
        let tls = self.tls();
        self.endpoints
            .iter()
            .map(|url| {
                let mut e = Endpoint::from_shared(url.clone())
                    .map_err(|e| Error::Config(format!("endpoint {url:?}: {e}")))?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true);
                if url.starts_with("https://") {
                    let tls = tls.clone().unwrap_or_default();
                    e = e
                        .tls_config(tls)
                        .map_err(|e| Error::Config(format!("TLS for {url}: {e}")))?;
                } else if tls.is_some() {
                    return Err(Error::Config(format!(
                        "a CA or client certificate needs https:// endpoints, not {url}"
                    )));
                }
                Ok(e)
            })
            .collect()
    }

    fn finish(self, channels: Vec<Channel>) -> Result<Client, Error> {
        let token = match &self.token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {}", t.trim()))
                    .map_err(|_| Error::Config("the token is not a valid header value".into()))?,
            ),
            None => None,
        };
        Ok(Client {
            inner: Arc::new(Inner {
                endpoints: self.endpoints.clone(),
                channels,
                token,
                current: AtomicUsize::new(0),
                retries: AtomicU64::new(0),
                rng: Mutex::new(SmallRng::from_os_rng()),
                settings: self,
            }),
        })
    }

    fn tls(&self) -> Option<ClientTlsConfig> {
        if self.ca_pem.is_none() && self.identity.is_none() {
            return None;
        }
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Some(tls)
    }
}

/// A handle on a cluster. Cheap to clone: clones share connections.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<String>,
    channels: Vec<Channel>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// The endpoint calls go to, until it fails.
    current: AtomicUsize,
    retries: AtomicU64,
    rng: Mutex<SmallRng>,
    settings: ClientBuilder,
}

impl Client {
    /// Settings for a client of these endpoints (`http://host:port`, or
    /// `https://` with [`ClientBuilder::ca_pem`]), tried in order.
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ClientBuilder {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            token: None,
            ca_pem: None,
            identity: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            max_attempts: 8,
            backoff: (Duration::from_millis(20), Duration::from_secs(2)),
            retry_writes: true,
        }
    }

    /// The endpoint calls go to now.
    pub fn current_endpoint(&self) -> &str {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.endpoints.len();
        &self.inner.endpoints[i]
    }

    /// Attempts retried so far, by failover or backoff.
    pub fn retries(&self) -> u64 {
        self.inner.retries.load(Ordering::Relaxed)
    }

    /// A session: reads through it see every write made through it.
    pub fn session(&self) -> Session {
        Session::new(self.clone())
    }

    /// Writes `value` to `key`.
    pub async fn write(
        &self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
        opts: WriteOptions,
    ) -> Result<Written, Error> {
        let req = proto::WriteRequest {
            key: key.into(),
            value: value.into(),
            ttl_ms: opts.ttl.map_or(0, |t| t.as_millis().max(1) as u64),
            expect: opts.expect.as_ref().map(|e| e.proto()),
            consistency: opts.consistency.proto(),
            ..Default::default()
        };
        let retry = self.inner.settings.retry_writes;
        let resp = self
            .call(
                retry,
                Some(self.deadline(opts.timeout)),
                |ch, r| async move { kv(ch).write(r).await },
                req,
            )
            .await?;
        written(resp.version, resp.token)
    }

    /// Deletes `key` (a tombstone that replicates like any write).
    pub async fn delete(
        &self,
        key: impl Into<String>,
        opts: WriteOptions,
    ) -> Result<Written, Error> {
        let req = proto::DeleteRequest {
            key: key.into(),
            expect: opts.expect.as_ref().map(|e| e.proto()),
            consistency: opts.consistency.proto(),
        };
        let resp = self
            .call(
                true,
                Some(self.deadline(opts.timeout)),
                |ch, r| async move { kv(ch).delete(r).await },
                req,
            )
            .await?;
        written(resp.version, resp.token)
    }

    /// Writes many keys in one request and one commit on the node; one
    /// version per write, in order, and a token covering them all.
    pub async fn write_batch(
        &self,
        items: impl IntoIterator<Item = (String, Vec<u8>)>,
        consistency: Consistency,
    ) -> Result<(Vec<Version>, Token), Error> {
        let req = proto::WriteBatchRequest {
            writes: items
                .into_iter()
                .map(|(key, value)| proto::WriteRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .collect(),
            consistency: consistency.proto(),
        };
        let retry = self.inner.settings.retry_writes;
        let resp = self
            .call(
                retry,
                Some(self.deadline(None)),
                |ch, r| async move { kv(ch).write_batch(r).await },
                req,
            )
            .await?;
        let versions = resp
            .versions
            .into_iter()
            .map(|v| Version {
                hlc: v.hlc,
                node: v.node_id,
            })
            .collect();
        Ok((versions, Token(resp.token)))
    }

    /// The live value of `key`, or `None` if it is absent, deleted or
    /// expired.
    pub async fn read(
        &self,
        key: impl Into<String>,
        opts: ReadOptions,
    ) -> Result<Option<Entry>, Error> {
        let req = proto::ReadRequest {
            key: key.into(),
            consistency: opts.consistency.proto(),
            after: opts.after.iter().map(|t| t.0.clone()).collect(),
            ..Default::default()
        };
        let resp = self
            .call(
                true,
                Some(self.deadline(opts.timeout)),
                |ch, r| async move { kv(ch).read(r).await },
                req,
            )
            .await?;
        Ok(resp.found.then(|| Entry {
            value: resp.value,
            version: Version::from_proto(resp.version).unwrap_or(Version {
                hlc: 0,
                node: String::new(),
            }),
            expires_ms: expiry(resp.expires_ms),
        }))
    }

    /// Up to `limit` live keys under `prefix` with their values, in key
    /// order, and the page token to go on from (empty when done). Holds
    /// them all in memory: for large ranges, use [`Client::scan_pages`].
    pub async fn scan(
        &self,
        prefix: impl Into<String>,
        limit: u32,
        page_token: impl Into<String>,
    ) -> Result<(Vec<(String, Vec<u8>)>, String), Error> {
        let opts = ScanOptions {
            limit,
            page_token: page_token.into(),
            ..ScanOptions::default()
        };
        let mut pages = self.scan_pages(prefix, opts).await?;
        let (mut out, mut next) = (Vec::new(), String::new());
        while let Some(page) = pages.next_page().await? {
            out.extend(page.entries.into_iter().map(|e| (e.key, e.value)));
            next = page.next_page_token;
        }
        Ok((out, next))
    }

    /// The live keys under `prefix` (or in `opts`' range), in key order, a
    /// page at a time as the node streams them: memory stays bounded by a
    /// page whatever the range holds.
    pub async fn scan_pages(
        &self,
        prefix: impl Into<String>,
        opts: ScanOptions,
    ) -> Result<ScanPages, Error> {
        let req = proto::ScanRequest {
            prefix: prefix.into(),
            start: opts.start,
            end: opts.end,
            limit: opts.limit,
            page_token: opts.page_token,
            keys_only: opts.keys_only,
            as_text: false,
        };
        let open = |ch, r| async move { kv(ch).scan(r).await };
        let stream = self.call(true, None, open, req).await?;
        Ok(ScanPages::new(stream))
    }

    /// Every change the node applies under `prefix`, local or replicated,
    /// from now on or after `opts.resume_token`. The stream resumes by
    /// itself when its node goes away; see [`Watch`].
    pub async fn watch(
        &self,
        prefix: impl Into<String>,
        opts: WatchOptions,
    ) -> Result<Watch, Error> {
        let req = proto::WatchRequest {
            prefix: prefix.into(),
            resume_token: opts.resume_token.unwrap_or_default(),
            progress_interval_ms: opts.progress.map_or(0, |p| {
                u32::try_from(p.as_millis().max(1)).unwrap_or(u32::MAX)
            }),
            as_text: false,
        };
        Watch::open(self.clone(), req).await
    }

    /// Opens the stream of `req` (for [`Watch`], again after a cut).
    pub(crate) async fn open_watch(
        &self,
        req: proto::WatchRequest,
    ) -> Result<tonic::Streaming<proto::WatchEvent>, Error> {
        let open = |ch, r| async move { kv(ch).watch(r).await };
        self.call(true, None, open, req).await
    }

    /// Moves calls on from the current endpoint, as a call does on
    /// UNAVAILABLE, and waits out a backoff step: for streams cut after
    /// they opened.
    pub(crate) async fn step_back(&self, status: &tonic::Status, step: &mut Duration) {
        if status.code() != Code::ResourceExhausted {
            let n = self.inner.channels.len();
            self.move_on(self.inner.current.load(Ordering::Relaxed) % n);
        }
        self.pause(step).await;
        self.inner.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// Calls go to the endpoint after `failed` from now on, unless another
    /// caller has moved them on already.
    fn move_on(&self, failed: usize) {
        let n = self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(
            failed,
            (failed + 1) % n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Sleeps a random time up to `step` (full jitter), then doubles
    /// `step` up to the longest backoff.
    async fn pause(&self, step: &mut Duration) {
        let inner = &self.inner;
        let wait = {
            let mut rng = inner.rng.lock().unwrap_or_else(|p| p.into_inner());
            rng.random_range(Duration::ZERO..=*step)
        };
        tokio::time::sleep(wait).await;
        *step = (*step * 2).min(inner.settings.backoff.1);
    }

    /// The backoff's first step and the attempts a call may make.
    pub(crate) fn retry_policy(&self) -> (Duration, u32) {
        let s = &self.inner.settings;
        (s.backoff.0, s.max_attempts)
    }

    /// A call's deadline: its own, else the client's.
    pub(crate) fn deadline(&self, own: Option<Duration>) -> Duration {
        own.unwrap_or(self.inner.settings.timeout)
    }

    /// Sends `msg` through `f`, failing over on UNAVAILABLE and backing
    /// off on RESOURCE_EXHAUSTED, when `retry`. `deadline` is each
    /// attempt's; streams that last as long as they have data take none.
    pub(crate) async fn call<M, T, F, Fut>(
        &self,
        retry: bool,
        deadline: Option<Duration>,
        mut f: F,
        msg: M,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: FnMut(Channel, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &self.inner;
        let s = &inner.settings;
        let mut step = s.backoff.0;
        let n = inner.channels.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let i = inner.current.load(Ordering::Relaxed) % n;
            let mut req = tonic::Request::new(msg.clone());
            if let Some(t) = deadline {
                req.set_timeout(t);
            }
            if let Some(t) = &inner.token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            let status = match f(inner.channels[i].clone(), req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => status,
            };
            if !retry || attempt >= s.max_attempts {
                return Err(status.into());
            }
            match status.code() {
                Code::Unavailable => {
                    self.move_on(i);
                    // Every endpoint failed in a row: wait before going
                    // round again, not spend every attempt at once.
                    if attempt % n as u32 == 0 {
                        self.pause(&mut step).await;
                    }
                }
                Code::ResourceExhausted => self.pause(&mut step).await,
                _ => return Err(status.into()),
            }
            inner.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A KV stub on `ch` that takes answers up to the server's value ceiling.
fn kv(ch: Channel) -> KvClient<Channel> {
    KvClient::new(ch)
        .max_decoding_message_size(MAX_ANSWER_BYTES)
        .max_encoding_message_size(MAX_ANSWER_BYTES)
}

fn written(version: Option<proto::Version>, token: String) -> Result<Written, Error> {
    let version = Version::from_proto(version)
        .ok_or_else(|| Error::Status(tonic::Status::internal("the node answered no version")))?;
    Ok(Written {
        version,
        token: Token(token),
    })
}
