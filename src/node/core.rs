//! The node's core, started in order: storage, the writer (and its periodic
//! sync), the replication context and the peer manager.

use std::{sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    clock::{from_physical_ms, physical_ms, PhysicalClock},
    config::{Config, FsyncMode},
    error::Result,
    node::{seams::Seams, secure::PeerConnector},
    replication::{Ctx, PeerManager},
    storage::{
        admission::LaneLimits,
        blocking::Blocking,
        writer::{self, WriterJoin},
        Recovered, Store, WriterHandle, WriterOptions,
    },
};

/// Opens the data dir on the blocking pool.
pub(super) async fn open_storage(
    config: &Config,
    blocking: Blocking,
) -> Result<(Arc<Store>, Recovered)> {
    let (dir, node, cluster, cache, memtable) = (
        config.data_dir.clone(),
        config.node_id.clone(),
        config.cluster_id.clone(),
        config.storage.cache_mb,
        config.storage.memtable_mb,
    );
    let secret = match &config.replication.bucket_key_file {
        Some(path) => Some(crate::security::private::read_secret(
            "replication.bucket_key_file",
            path,
            16,
        )?),
        None => None,
    };
    let (store, recovered) = blocking
        .run("storage open", move || {
            Store::open(&dir, &node, &cluster, secret.as_deref(), cache, memtable)
        })
        .await??;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        last_seq = recovered.last_seq,
        fresh = recovered.fresh,
        "storage open"
    );
    Ok((store, recovered))
}

/// The running core, for the services and for an ordered stop.
pub(super) struct Core {
    pub store: Arc<Store>,
    pub writer: WriterHandle,
    pub writer_join: WriterJoin,
    /// Cancelled once the writer has exited: stops the periodic sync.
    pub writer_done: CancellationToken,
    pub periodic: Option<JoinHandle<()>>,
    pub ctx: Arc<Ctx>,
    pub manager: Arc<PeerManager>,
    /// Cancelled by a storage failure.
    pub fatal: CancellationToken,
    pub start: StartKind,
}

impl Core {
    /// Starts the writer, the periodic sync, and the peer manager on `store`.
    pub(super) fn start(
        config: &Config,
        seams: &Seams,
        (store, recovered): (Arc<Store>, Recovered),
        connect: &PeerConnector,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self> {
        let clock = Arc::clone(&seams.clock);
        let blocking = seams.blocking;
        let fatal = CancellationToken::new();
        let (writer, seq_rx, writer_join) = writer::spawn(
            Arc::clone(&store),
            &recovered,
            Arc::clone(&clock),
            writer_options(config),
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
            acked: watch::Sender::new(0),
            conflicts: Default::default(),
        });
        let start = StartKind::of(config, &recovered, clock.as_ref());
        if start.stale {
            tracing::warn!(
                tombstone_ttl_secs = config.replication.tombstone_ttl_secs,
                "this node's data is older than the tombstone TTL (away too long, or an old \
                 copy): catching up pull-only with each peer before pushing anything"
            );
        }
        tracker.spawn(crate::storage::expiry::sweep(
            Arc::clone(&store),
            writer.clone(),
            Arc::clone(&clock),
            blocking,
            shutdown.clone(),
        ));
        let manager = PeerManager::start(
            Arc::clone(&ctx),
            &config.peers,
            start.fresh || start.stale,
            connect,
            shutdown,
            tracker,
        )?;
        Ok(Self {
            store,
            writer,
            writer_join,
            writer_done,
            periodic,
            ctx,
            manager,
            fatal,
            start,
        })
    }
}

fn writer_options(config: &Config) -> WriterOptions {
    let limits = &config.limits;
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
        retain_changes: config.storage.watch_retain_changes,
    }
}

/// What the data dir says about how this node should start.
pub(super) struct StartKind {
    /// Empty: a new or wiped node. It pulls everything.
    pub fresh: bool,
    /// Its newest version is older than the tombstone TTL: away too long or an
    /// old copy. It catches up pull-only before it pushes anything.
    pub stale: bool,
    /// Last written before the peers' logs would have dropped what it missed:
    /// it is not SERVING until its first repair.
    pub past_log: bool,
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
        let older_than =
            |secs: u64| secs > 0 && newest_ms.saturating_add(secs.saturating_mul(1000)) < now;
        Self {
            fresh: recovered.fresh,
            stale: !recovered.fresh && older_than(r.tombstone_ttl_secs),
            past_log: !recovered.fresh && older_than(r.max_log_age_secs),
        }
    }
}
