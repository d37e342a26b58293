//! Wires one node together and runs it until shutdown.
//!
//! Start-up opens storage, starts the writer thread and the peer manager,
//! then serves every gRPC service on one listener (and metrics on their own).
//! A node whose data dir is empty or stale reports NOT_SERVING until its
//! first anti-entropy round with a peer has finished. Shutdown runs in the
//! reverse order: health goes NOT_SERVING, the server stops accepting and
//! drains in-flight requests (for at most `drain_timeout_ms`; inbound
//! replication streams end at once), background tasks stop, and the writer
//! commits what it still holds, syncs and exits.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch};
use tokio_stream::Stream;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::Connected, Channel, Server},
};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    api::{AdminService, AntiEntropyService, KvService, Membership, ReplicationService},
    clock::{from_physical_ms, physical_ms, PhysicalClock, SystemClock},
    config::{Config, FsyncMode, PeerConfig},
    error::{Error, Result},
    proto::{
        admin_server::AdminServer, anti_entropy_server::AntiEntropyServer, kv_server::KvServer,
        replication_server::ReplicationServer,
    },
    replication::{Ctx, PeerManager},
    security::{tls, ClientAuth, Role, TlsMaterial, Tokens},
    storage::{admission::LaneLimits, blocking::Blocking, writer, Recovered, Store, WriterOptions},
    wire,
};

/// Concurrent gRPC calls one connection may have open. Peers need a handful
/// (two pipelined batches and a repair); load generators a few hundred.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Binds `config.listen` (and `config.peer_listen`), with TLS when it is
/// configured, and runs the node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<()> {
    let tls = TlsMaterial::load(&config.tls)?;
    let bind = |addr: SocketAddr| async move {
        let l = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::io(format!("cannot listen on {addr}"), e))?;
        let bound = l
            .local_addr()
            .map_err(|e| Error::io("cannot read the bound address", e))?;
        Ok::<_, Error>((l, bound))
    };
    // Without tokens, a client must prove itself with a certificate.
    let client_tls = tls
        .as_ref()
        .map(|m| m.server_config(config.auth.tokens_file.is_none()))
        .transpose()?;
    let peer_tls = tls.as_ref().map(|m| m.server_config(true)).transpose()?;
    let (client, client_addr) = bind(config.listen).await?;
    let peer = match config.peer_listen {
        Some(a) => {
            let (l, addr) = bind(a).await?;
            Some(Listener {
                incoming: tls::incoming(l, peer_tls, "peer"),
                addr,
            })
        }
        None => None,
    };
    let listeners = Listeners {
        client: Listener {
            incoming: tls::incoming(client, client_tls, "client"),
            addr: client_addr,
        },
        peer,
    };
    serve_with(config, listeners, shutdown, Seams::production()).await
}

/// One listener's connections and the address it is bound to.
pub struct Listener<I> {
    /// The accepted connections.
    pub incoming: I,
    /// The bound address, for the log.
    pub addr: SocketAddr,
}

/// Where a node serves: clients (and peers, without a peer listener), and
/// optionally peers apart.
pub struct Listeners<I> {
    /// `listen`.
    pub client: Listener<I>,
    /// `peer_listen`, if set.
    pub peer: Option<Listener<I>>,
}

/// The node's health, kept in the gRPC health service and in words for status.
#[derive(Clone)]
struct Health {
    reporter: HealthReporter,
    words: Arc<watch::Sender<String>>,
}

impl Health {
    async fn set(&self, serving: bool, why: &str) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter
            .set_service_status("meshkv.v1.KV", status)
            .await;
        self.words.send_replace(if serving {
            "SERVING".into()
        } else {
            format!("NOT_SERVING: {why}")
        });
    }
}

/// How the node is protected, in words, for the log and `meshkv status`.
fn security_words(config: &Config, tokens: bool) -> String {
    if config.tls.enabled() {
        format!(
            "TLS; peers on {} need certificates naming them; clients need {}",
            config.peer_listen.map_or("-".into(), |a| a.to_string()),
            if tokens {
                "a token or a client certificate"
            } else {
                "a client certificate"
            }
        )
    } else if config.runs_insecure() {
        format!(
            "INSECURE: no TLS on {}{}{}",
            config.listen,
            config
                .peer_listen
                .map_or(String::new(), |a| format!(" and {a}")),
            if tokens {
                "; tokens travel in clear text"
            } else {
                "; no authentication"
            }
        )
    } else if tokens {
        "loopback only, no TLS; clients need a token".into()
    } else {
        "loopback only, no TLS, no authentication".into()
    }
}

/// What the data dir says about how this node should start.
struct StartKind {
    /// Empty: a new or wiped node. It pulls everything.
    fresh: bool,
    /// Its newest version is older than the tombstone TTL: away too long or an
    /// old copy. It catches up pull-only before it pushes anything.
    stale: bool,
    /// Last written before the peers' logs would have dropped what it missed:
    /// it is not SERVING until its first repair.
    past_log: bool,
}

impl StartKind {
    fn of(config: &Config, recovered: &Recovered, clock: &dyn PhysicalClock) -> Self {
        if config.peers.is_empty() {
            return Self {
                fresh: false,
                stale: false,
                past_log: false,
            };
        }
        let newest_ms = physical_ms(recovered.high_water);
        let now = clock.now_ms();
        let r = &config.replication;
        let older_than = |secs: u64| secs > 0 && newest_ms.saturating_add(secs * 1000) < now;
        Self {
            fresh: recovered.fresh,
            stale: !recovered.fresh && older_than(r.tombstone_ttl_secs),
            past_log: !recovered.fresh && older_than(r.max_log_age_secs),
        }
    }
}

/// Builds the channel to a peer from its URL.
pub type Connector = dyn Fn(&PeerConfig) -> Result<Channel> + Send + Sync;

/// What a node takes from its environment, so that a simulation can supply
/// all of it: wall-clock time, connections to peers, randomness, and where
/// blocking storage work runs.
#[derive(Clone)]
pub struct Seams {
    /// Wall-clock time (versions, TTLs, lag).
    pub clock: Arc<dyn PhysicalClock>,
    /// Builds the channel to a peer URL.
    pub connect: Arc<Connector>,
    /// Seeds the peer tasks' randomness; `None` draws from the OS.
    pub seed: Option<u64>,
    /// Where blocking storage work runs.
    pub blocking: Blocking,
}

impl Seams {
    /// The real world: the system clock, TCP, OS randomness, threads.
    pub fn production() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            connect: Arc::new(|p: &PeerConfig| tls::peer_channel(None, &p.id, &p.url)),
            seed: None,
            blocking: Blocking::Pool,
        }
    }
}

impl std::fmt::Debug for Seams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seams")
            .field("seed", &self.seed)
            .field("blocking", &self.blocking)
            .finish_non_exhaustive()
    }
}

/// Runs the node on connections from `incoming` (a TCP listener in
/// production). `addr` is only logged.
pub async fn serve<I, IO, IE>(
    config: Config,
    incoming: I,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<()>
where
    I: Stream<Item = std::result::Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listeners = Listeners {
        client: Listener { incoming, addr },
        peer: None,
    };
    serve_with(config, listeners, shutdown, Seams::production()).await
}

/// [`serve`] with every seam supplied: how a simulation runs a node.
pub async fn serve_with<I, IO, IE>(
    config: Config,
    listeners: Listeners<I>,
    shutdown: CancellationToken,
    seams: Seams,
) -> Result<()>
where
    I: Stream<Item = std::result::Result<IO, IE>>,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Security material first: a bad file fails the start before storage opens.
    let tls = TlsMaterial::load(&config.tls)?;
    let tokens = config
        .auth
        .tokens_file
        .as_deref()
        .map(Tokens::load)
        .transpose()?;
    let security = security_words(&config, tokens.is_some());
    if config.runs_insecure() {
        tracing::warn!(
            "INSECURE: {security}. Anyone who can reach this node can read and write \
             every key and forge replication. Configure [tls] and [auth] (see `meshkv certs`)"
        );
    }
    let client_auth = ClientAuth {
        tokens: tokens.map(Arc::new),
        certificates: config.tls.enabled(),
    };
    // With TLS, peers are dialled over TLS and must prove their ids.
    let connect: Arc<Connector> = match tls {
        Some(m) => Arc::new(move |p: &PeerConfig| tls::peer_channel(Some(&m), &p.id, &p.url)),
        None => Arc::clone(&seams.connect),
    };
    let addr = listeners.client.addr;
    let clock = Arc::clone(&seams.clock);
    let blocking = seams.blocking;
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let (words, words_rx) = watch::channel(String::new());
    let health = Health {
        reporter,
        words: Arc::new(words),
    };
    health.set(false, "starting").await;

    let (store, recovered) = {
        let (dir, node, cluster, cache, memtable) = (
            config.data_dir.clone(),
            config.node_id.clone(),
            config.cluster_id.clone(),
            config.storage.cache_mb,
            config.storage.memtable_mb,
        );
        blocking
            .run("storage open", move || {
                Store::open(&dir, &node, &cluster, cache, memtable)
            })
            .await??
    };
    tracing::info!(
        data_dir = %config.data_dir.display(),
        last_seq = recovered.last_seq,
        fresh = recovered.fresh,
        "storage open"
    );

    let tracker = TaskTracker::new();
    let metrics_on = match config.metrics_listen {
        Some(maddr) => {
            let handle = crate::metrics::install()?;
            let (bound, fut) = crate::metrics::serve(maddr, handle, shutdown.clone()).await?;
            tracing::info!(metrics = %bound, "metrics listening on /metrics");
            tracker.spawn(fut);
            true
        }
        None => false,
    };

    let fatal = CancellationToken::new();
    let limits = &config.limits;
    let (writer, seq_rx, writer_join) = writer::spawn(
        Arc::clone(&store),
        &recovered,
        Arc::clone(&clock),
        WriterOptions {
            node_id: config.node_id.as_str().into(),
            fsync: config.storage.fsync,
            clients: LaneLimits {
                requests: limits.write_queue_depth,
                bytes: limits.write_queue_bytes,
            },
            peers: LaneLimits {
                requests: limits.peer_queue_depth,
                bytes: limits.peer_queue_bytes,
            },
            max_batch: limits.max_batch,
            max_clock_skew: Duration::from_millis(config.replication.max_clock_skew_ms),
            tombstone_ttl: Duration::from_secs(config.replication.tombstone_ttl_secs),
        },
        fatal.clone(),
        blocking,
    )?;

    // The periodic sync outlives the drain: it stops only once the writer
    // has exited (the writer syncs a last time as it does).
    let writer_done = CancellationToken::new();
    let periodic = (config.storage.fsync == FsyncMode::Periodic).then(|| {
        let s = Arc::clone(&store);
        tokio::spawn(writer::periodic_sync(
            move || s.sync(),
            Duration::from_millis(config.storage.fsync_interval_ms),
            fatal.clone(),
            writer_done.clone(),
            blocking,
        ))
    });

    let (synced, _) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        node_id: config.node_id.clone(),
        cluster_id: config.cluster_id.clone(),
        store: Arc::clone(&store),
        writer: writer.clone(),
        config: config.replication.clone(),
        synced,
        clock: Arc::clone(&clock),
        seq: seq_rx,
        catching_up: Default::default(),
        blocking,
        seed: seams.seed,
        recovered_high_water: recovered.high_water,
        // Above every mark a previous run reported, unless the data went back.
        incarnation: from_physical_ms(clock.now_ms()).max(recovered.high_water + 1),
        seen_high_water: Default::default(),
    });
    let start = StartKind::of(&config, &recovered, clock.as_ref());
    if start.stale {
        tracing::warn!(
            tombstone_ttl_secs = config.replication.tombstone_ttl_secs,
            "this node's data is older than the tombstone TTL (away too long, or an old \
             copy): catching up pull-only with each peer before pushing anything"
        );
    }
    let manager = PeerManager::start(
        Arc::clone(&ctx),
        &config.peers,
        start.fresh || start.stale,
        connect.as_ref(),
        &shutdown,
        &tracker,
    )?;

    let members = Arc::new(Membership {
        node_id: config.node_id.clone(),
        cluster_id: config.cluster_id.clone(),
        peers: config.peers.iter().map(|p| p.id.clone()).collect(),
        require_cert: config.tls.enabled(),
    });
    let max_msg = config.max_message_bytes();
    let max_peer = wire::PEER_MESSAGE_LIMIT;
    let kv = KvServer::new(KvService::new(
        Arc::clone(&store),
        writer.clone(),
        config.limits.max_value_bytes,
    ))
    .max_decoding_message_size(max_msg)
    // A stored value may exceed this node's own client limit (a peer with a
    // larger one accepted it), and must still be readable here.
    .max_encoding_message_size(max_peer);
    // Reads need the read role; KvService checks the write role per call.
    let kv = InterceptedService::new(kv, client_auth.interceptor(Role::Read));
    let replication = ReplicationServer::new(ReplicationService::new(
        Arc::clone(&members),
        writer.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_peer)
    .max_encoding_message_size(max_peer);
    let anti_entropy = AntiEntropyServer::new(AntiEntropyService::new(
        Arc::clone(&members),
        Arc::clone(&ctx),
    ))
    .max_decoding_message_size(max_peer)
    .max_encoding_message_size(max_peer);
    let admin = InterceptedService::new(
        AdminServer::new(AdminService::new(
            Arc::clone(&manager),
            words_rx,
            security.clone(),
        )),
        client_auth.interceptor(Role::Admin),
    );

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Corrupt(format!("reflection descriptors: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Corrupt(format!("reflection descriptors: {e}")))?;

    // Health: SERVING now, or after the first repair for an empty or stale node.
    if start.fresh || start.stale || start.past_log {
        let why = "waiting for the first anti-entropy round with a peer";
        tracing::info!(fresh = recovered.fresh, "{why}; NOT_SERVING until then");
        health.set(false, why).await;
        let (health, fatal, shutdown) = (health.clone(), fatal.clone(), shutdown.clone());
        let mut synced = manager.synced();
        tracker.spawn(async move {
            let done = tokio::select! {
                r = synced.wait_for(|s| *s) => r.is_ok(),
                _ = shutdown.cancelled() => false,
            };
            if done && !fatal.is_cancelled() {
                tracing::info!("first anti-entropy round done: SERVING");
                health.set(true, "").await;
            }
        });
    } else {
        health.set(true, "").await;
    }
    {
        let (health, fatal, shutdown) = (health.clone(), fatal.clone(), shutdown.clone());
        tracker.spawn(async move {
            tokio::select! {
                _ = fatal.cancelled() => {
                    tracing::error!("storage failed: NOT_SERVING; writes are refused until restart");
                    health.set(false, "storage failed; restart the node").await;
                }
                _ = shutdown.cancelled() => {}
            }
        });
    }

    tracing::info!(
        grpc = %addr,
        peer_grpc = ?listeners.peer.as_ref().map(|p| p.addr),
        security = %security,
        node_id = %config.node_id,
        cluster_id = %config.cluster_id,
        peers = config.peers.len(),
        fsync = ?config.storage.fsync,
        metrics = metrics_on,
        "listening"
    );

    let drain = {
        let (health, shutdown) = (health.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            tracing::info!("shutting down: NOT_SERVING, draining in-flight requests");
            health.set(false, "shutting down").await;
        }
    };
    let builder = || {
        Server::builder()
            .tcp_nodelay(true)
            // One client cannot open unbounded concurrent requests on a connection.
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
    };
    let client_router = builder()
        .add_service(health_service.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kv)
        .add_service(admin);
    let (client_router, peer) = match listeners.peer {
        // Peers apart, as etcd's 2380: with TLS, only they get through.
        Some(peer) => (
            client_router,
            Some((
                builder()
                    .add_service(health_service)
                    .add_service(replication)
                    .add_service(anti_entropy),
                peer,
            )),
        ),
        None => (
            client_router
                .add_service(replication)
                .add_service(anti_entropy),
            None,
        ),
    };
    let client_server =
        client_router.serve_with_incoming_shutdown(listeners.client.incoming, drain);
    let peer_server = {
        let shutdown = shutdown.clone();
        async move {
            match peer {
                Some((router, l)) => {
                    router
                        .serve_with_incoming_shutdown(l.incoming, shutdown.cancelled_owned())
                        .await
                }
                None => Ok(()),
            }
        }
    };
    let server = async move {
        let (c, p) = tokio::join!(client_server, peer_server);
        c.and(p)
    };
    tokio::pin!(server);
    // Past it the node stops waiting; writes already queued still commit.
    let drain_timeout = Duration::from_millis(config.drain_timeout_ms);
    let served = tokio::select! {
        r = &mut server => r,
        () = async { shutdown.cancelled().await; tokio::time::sleep(drain_timeout).await } => {
            tracing::warn!(timeout = ?drain_timeout, "connections did not drain in time; stopping anyway");
            Ok(())
        }
    };

    // Stop the background tasks, then commit what is queued, sync, and stop
    // the writer, even if a connection that did not drain still holds a handle.
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    writer.close().await;
    drop(writer);
    drop(manager);
    let joined = writer_join.join().await;
    writer_done.cancel();
    if let Some(p) = periodic {
        let _ = p.await;
    }
    joined?;
    served?;
    if fatal.is_cancelled() {
        return Err(Error::Unavailable("stopped after a storage failure".into()));
    }
    tracing::info!("stopped cleanly");
    Ok(())
}
