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
    types::{Consistency, Entry, ReadOptions, Token, Version, WriteOptions, Written},
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
        if self.endpoints.is_empty() {
            return Err(Error::Config("at least one endpoint".into()));
        }
        let tls = self.tls()?;
        let channels = self
            .endpoints
            .iter()
            .map(|url| {
                let mut e = Endpoint::from_shared(url.clone())
                    .map_err(|e| Error::Config(format!("endpoint {url:?}: {e}")))?
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true);
                if url.starts_with("https://") {
                    let tls = tls.clone().unwrap_or_else(ClientTlsConfig::new);
                    e = e
                        .tls_config(tls)
                        .map_err(|e| Error::Config(format!("TLS for {url}: {e}")))?;
                }
                Ok(e.connect_lazy())
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let token = match &self.token {
            Some(t) => Some(
                MetadataValue::try_from(format!("Bearer {t}"))
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

    fn tls(&self) -> Result<Option<ClientTlsConfig>, Error> {
        if self.ca_pem.is_none() && self.identity.is_none() {
            return Ok(None);
        }
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(Some(tls))
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
                opts.timeout,
                |mut kv, r| async move { kv.write(r).await },
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
                opts.timeout,
                |mut kv, r| async move { kv.delete(r).await },
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
                None,
                |mut kv, r| async move { kv.write_batch(r).await },
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
                opts.timeout,
                |mut kv, r| async move { kv.read(r).await },
                req,
            )
            .await?;
        Ok(resp.found.then(|| Entry {
            value: resp.value,
            version: Version::from_proto(resp.version).unwrap_or(Version {
                hlc: 0,
                node: String::new(),
            }),
            expires_ms: (resp.expires_ms > 0).then_some(resp.expires_ms),
        }))
    }

    /// Up to `limit` live keys under `prefix` with their values, in key
    /// order, and the page token to go on from (empty when done).
    pub async fn scan(
        &self,
        prefix: impl Into<String>,
        limit: u32,
        page_token: impl Into<String>,
    ) -> Result<(Vec<(String, Vec<u8>)>, String), Error> {
        let req = proto::ScanRequest {
            prefix: prefix.into(),
            limit,
            page_token: page_token.into(),
            ..Default::default()
        };
        let call = |mut kv: KvClient<Channel>, r| async move {
            let mut stream = kv.scan(r).await?.into_inner();
            let (mut out, mut next) = (Vec::new(), String::new());
            while let Some(page) = stream.message().await? {
                out.extend(page.entries.into_iter().map(|e| (e.key, e.value)));
                next = page.next_page_token;
            }
            Ok(tonic::Response::new((out, next)))
        };
        self.call(true, None, call, req).await
    }

    /// Sends `msg` through `f`, failing over on UNAVAILABLE and backing
    /// off on RESOURCE_EXHAUSTED, when `retry`.
    async fn call<M, T, F, Fut>(
        &self,
        retry: bool,
        timeout: Option<Duration>,
        mut f: F,
        msg: M,
    ) -> Result<T, Error>
    where
        M: Clone,
        F: FnMut(KvClient<Channel>, tonic::Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let inner = &self.inner;
        let s = &inner.settings;
        let (first, longest) = s.backoff;
        let mut step = first;
        let n = inner.channels.len();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let i = inner.current.load(Ordering::Relaxed) % n;
            let kv = KvClient::new(inner.channels[i].clone())
                .max_decoding_message_size(MAX_ANSWER_BYTES)
                .max_encoding_message_size(MAX_ANSWER_BYTES);
            let mut req = tonic::Request::new(msg.clone());
            req.set_timeout(timeout.unwrap_or(s.timeout));
            if let Some(t) = &inner.token {
                req.metadata_mut().insert("authorization", t.clone());
            }
            let status = match f(kv, req).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => status,
            };
            if !retry || attempt >= s.max_attempts {
                return Err(status.into());
            }
            match status.code() {
                Code::Unavailable => {
                    // Another caller may have moved on already.
                    let _ = inner.current.compare_exchange(
                        i,
                        (i + 1) % n,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                }
                Code::ResourceExhausted => {
                    let wait = {
                        let mut rng = inner.rng.lock().unwrap_or_else(|p| p.into_inner());
                        rng.random_range(Duration::ZERO..=step)
                    };
                    tokio::time::sleep(wait).await;
                    step = (step * 2).min(longest);
                }
                _ => return Err(status.into()),
            }
            inner.retries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn written(version: Option<proto::Version>, token: String) -> Result<Written, Error> {
    let version = Version::from_proto(version)
        .ok_or_else(|| Error::Status(tonic::Status::internal("the node answered no version")))?;
    Ok(Written {
        version,
        token: Token(token),
    })
}
