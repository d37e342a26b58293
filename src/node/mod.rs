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

//!
//! [`serve_with`] reads top to bottom as the start-up order: security
//! ([`secure`]), storage and the core tasks ([`core`]), health
//! ([`health`]), the services ([`services`]), then serving, draining and
//! the ordered stop ([`shutdown`]). [`listen`] binds the sockets, and
//! [`seams`] is what a simulation replaces.

mod core;
mod health;
mod listen;
mod listeners;
mod seams;
mod secure;
mod serve;
mod services;
mod shutdown;

pub use listen::{run, serve};
pub use listeners::{Listener, Listeners};
pub use seams::{Connector, Seams};
pub use serve::serve_with;
pub use services::MAX_STREAMS_PER_CONNECTION;
