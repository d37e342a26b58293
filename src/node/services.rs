//! The gRPC services of a node, with their message limits and interceptors,
//! on one router, or two when peers have a listener of their own.

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::Router, Server},
};
use tonic_health::pb::health_server::{Health as HealthApi, HealthServer};

use crate::{
    api::{
        consistency::Replicas, AdminService, AntiEntropyService, KvService, Membership,
        ReplicationService,
    },
    config::Config,
    error::{Error, Result},
    node::{core::Core, secure::Secured},
    proto::{
        admin_server::AdminServer, anti_entropy_server::AntiEntropyServer, kv_server::KvServer,
        replication_server::ReplicationServer,
    },
    security::{
        budget::Budget,
        gate::{Gate, Rule},
        Role,
    },
    wire,
};

/// Concurrent gRPC calls one connection may have open. Peers need a handful
/// (two pipelined batches and a repair); load generators a few hundred.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

/// Request bytes being received from clients at once, across every
/// connection, when one message is smaller (`security::budget`).
pub const CLIENT_RECEIVE_BYTES: usize = 64 * 1024 * 1024;

/// Request bytes being received from peers at once: two of the largest
/// messages a peer may send.
pub const PEER_RECEIVE_BYTES: usize = 2 * wire::PEER_MESSAGE_LIMIT;

/// The routers to serve.
pub(super) struct Routers {
    /// Clients: health, reflection, KV, Admin (and the peer services when
    /// peers have no listener of their own).
    pub client: Router,
    /// Peers apart, as etcd's 2380: with TLS, only they get through.
    pub peer: Option<Router>,
}

/// Builds every service over `core`; `peer_apart` puts the peer services
/// on a router of their own.
pub(super) fn routers<H: HealthApi>(
    config: &Config,
    core: &Core,
    secured: &Secured,
    health: HealthServer<H>,
    words: watch::Receiver<String>,
    peer_apart: bool,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<Routers> {
    let max_peer = wire::PEER_MESSAGE_LIMIT;
    // Never below what the write and apply queues may hold, or the budget
    // would refuse what the queues were sized to take.
    let client_budget = Budget::new(
        "client",
        CLIENT_RECEIVE_BYTES
            .max(2 * config.max_message_bytes())
            .max(config.limits.write_queue_bytes),
    );
    let peer_budget = Budget::new(
        "peer",
        PEER_RECEIVE_BYTES.max(config.limits.peer_queue_bytes),
    );
    let kv = KvServer::new(KvService::new(
        Arc::clone(&core.store),
        core.writer.clone(),
        Arc::clone(&core.ctx.clock),
        core.ctx.blocking,
        config.limits.max_value_bytes,
        shutdown.clone(),
        Replicas {
            manager: Arc::clone(&core.manager),
            default_timeout: Duration::from_millis(config.replication.consistency_timeout_ms),
        },
    ))
    .max_decoding_message_size(config.max_message_bytes())
    // A stored value may exceed this node's own client limit (a peer with a
    // larger one accepted it), and must still be readable here.
    .max_encoding_message_size(max_peer);
    // Reads need the read role (the interceptor); mutations need write,
    // checked by the gate before their body is read, and by KvService.
    let kv = Gate::new(
        InterceptedService::new(kv, secured.client_auth.interceptor(Role::Read)),
        Rule::Kv(secured.client_auth.clone()),
        Arc::clone(&client_budget),
    );
    let (replication, anti_entropy) = peer_services(config, core, secured, &peer_budget, shutdown);
    let admin = InterceptedService::new(
        AdminServer::new(AdminService::new(
            Arc::clone(&core.manager),
            words,
            secured.words.clone(),
        )),
        secured.client_auth.interceptor(Role::Admin),
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

    let client = builder()
        .add_service(Gate::new(
            health.clone(),
            Rule::Open,
            Arc::clone(&client_budget),
        ))
        .add_service(
            Gate::new(reflection_v1, Rule::Open, Arc::clone(&client_budget))
                .streaming(&["ServerReflectionInfo"]),
        )
        .add_service(
            Gate::new(reflection_v1alpha, Rule::Open, Arc::clone(&client_budget))
                .streaming(&["ServerReflectionInfo"]),
        )
        .add_service(kv)
        .add_service(Gate::new(admin, Rule::Open, Arc::clone(&client_budget)));
    Ok(if peer_apart {
        Routers {
            client,
            peer: Some(
                builder()
                    .add_service(Gate::new(health, Rule::Open, Arc::clone(&peer_budget)))
                    .add_service(replication)
                    .add_service(anti_entropy),
            ),
        }
    } else {
        Routers {
            client: client.add_service(replication).add_service(anti_entropy),
            peer: None,
        }
    })
}

/// Replication and AntiEntropy, behind the peer rule and `budget`.
fn peer_services(
    config: &Config,
    core: &Core,
    secured: &Secured,
    budget: &Arc<Budget>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> (
    Gate<ReplicationServer<ReplicationService>>,
    Gate<AntiEntropyServer<AntiEntropyService>>,
) {
    let members = Arc::new(Membership {
        node_id: config.node_id.clone(),
        cluster_id: config.cluster_id.clone(),
        peers: config.peers.iter().map(|p| p.id.clone()).collect(),
        require_cert: config.tls.enabled(),
    });
    let max_peer = wire::PEER_MESSAGE_LIMIT;
    let replication = ReplicationServer::new(ReplicationService::new(
        Arc::clone(&members),
        core.writer.clone(),
        Arc::clone(&core.manager),
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_peer)
    .max_encoding_message_size(max_peer);
    let anti_entropy =
        AntiEntropyServer::new(AntiEntropyService::new(members, Arc::clone(&core.ctx)))
            .max_decoding_message_size(max_peer)
            .max_encoding_message_size(max_peer);
    let rule = || Rule::Peers(secured.peer_auth.clone());
    (
        Gate::new(replication, rule(), Arc::clone(budget)).streaming(&["ReplicateStream"]),
        Gate::new(anti_entropy, rule(), Arc::clone(budget)),
    )
}

fn builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        // One client cannot open unbounded concurrent requests on a connection.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}
