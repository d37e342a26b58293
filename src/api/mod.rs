//! The gRPC services, one file each.
//!
//! Handlers only validate and translate: a client's bad input is refused
//! here with INVALID_ARGUMENT naming the limit, and a peer's bad entry is
//! refused alone (reported in the response, the rest applied), before either
//! reaches the writer, so that nothing a client or peer sends can corrupt
//! stored data or stall replication. Reads go straight to the store; every
//! mutation goes through the single writer.

pub mod admin;
pub mod anti_entropy;
pub mod consistency;
pub mod kv;
pub mod replication;
pub mod scan;
pub mod show;
pub mod validate;
pub mod watch;

pub use admin::AdminService;
pub use anti_entropy::AntiEntropyService;
pub use kv::KvService;
pub use replication::ReplicationService;
pub use validate::Membership;
