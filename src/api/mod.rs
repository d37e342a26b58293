//! The gRPC services, one file each.
//!
//! Handlers only validate and translate: bad input is refused here with
//! INVALID_ARGUMENT naming the limit, before it reaches the writer, so that
//! nothing a client or peer sends can corrupt stored data. Reads go straight
//! to the store; every mutation goes through the single writer.

pub mod kv;
pub mod replication;
mod validate;

pub use kv::KvService;
pub use replication::ReplicationService;
