//! meshkv: a replicated, multi-master key-value server.
//!
//! Every node stores keys durably on local disk ([`storage`]), serves clients
//! and peers over gRPC ([`api`]), and acknowledges a write once it is durable
//! locally. Each key is a last-writer-wins register ordered by [`version`]s
//! stamped from a hybrid logical [`clock`]; merging is commutative,
//! associative and idempotent, so every replica converges on the highest
//! version however writes are delivered. [`node::run`] wires it together.
//! Clients, the `meshkv` command line among them, use the `meshkv-client`
//! crate.

pub mod api;
pub mod clock;
pub mod config;
pub mod error;
pub mod grpc_codec;
pub mod high_water;
pub mod metrics;
pub mod node;
pub mod planted;
pub mod proto;
pub mod replication;
pub mod security;
pub mod storage;
pub mod version;
pub mod wire;

pub use config::Config;
pub use error::{Error, Result};
