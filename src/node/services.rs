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
    api::{AdminService, AntiEntropyService, KvService, Membership, ReplicationService},
    config::Config,
    error::{Error, Result},
    node::{core::Core, secure::Secured},
    proto::{
        admin_server::AdminServer, anti_entropy_server::AntiEntropyServer, kv_server::KvServer,
        replication_server::ReplicationServer,
    },
    security::Role,
    wire,
};

/// Concurrent gRPC calls one connection may have open. Peers need a handful
/// (two pipelined batches and a repair); load generators a few hundred.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1024;

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
    let members = Arc::new(Membership {
        node_id: config.node_id.clone(),
        cluster_id: config.cluster_id.clone(),
        peers: config.peers.iter().map(|p| p.id.clone()).collect(),
        require_cert: config.tls.enabled(),
    });
    let max_peer = wire::PEER_MESSAGE_LIMIT;
    let kv = KvServer::new(KvService::new(
        Arc::clone(&core.store),
        core.writer.clone(),
        Arc::clone(&core.ctx.clock),
        core.ctx.blocking,
        config.limits.max_value_bytes,
        shutdown.clone(),
    ))
    .max_decoding_message_size(config.max_message_bytes())
    // A stored value may exceed this node's own client limit (a peer with a
    // larger one accepted it), and must still be readable here.
    .max_encoding_message_size(max_peer);
    // Reads need the read role; KvService checks the write role per call.
    let kv = InterceptedService::new(kv, secured.client_auth.interceptor(Role::Read));
    let replication = ReplicationServer::new(ReplicationService::new(
        Arc::clone(&members),
        core.writer.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(max_peer)
    .max_encoding_message_size(max_peer);
    let anti_entropy = AntiEntropyServer::new(AntiEntropyService::new(
        Arc::clone(&members),
        Arc::clone(&core.ctx),
    ))
    .max_decoding_message_size(max_peer)
    .max_encoding_message_size(max_peer);
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
        .add_service(health.clone())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kv)
        .add_service(admin);
    Ok(if peer_apart {
        Routers {
            client,
            peer: Some(
                builder()
                    .add_service(health)
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

fn builder() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        // One client cannot open unbounded concurrent requests on a connection.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
}
