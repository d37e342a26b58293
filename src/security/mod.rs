//! Security: TLS, peer identity, client authentication.
//!
//! **Two listeners.** Clients use `listen`; peers use `peer_listen` when it
//! is set (like etcd's 2379 and 2380). With TLS on, the peer listener
//! requires a client certificate from the cluster's CA during the handshake,
//! so a node without one never gets a request through. The peer services
//! then check that the certificate names the `origin` the request claims: a
//! node may only speak for itself ([`tls::cert_names`]). Outgoing peer
//! connections require the peer's certificate to name the peer's id.
//!
//! **Clients** authenticate with a bearer token whose role (read, write,
//! admin) bounds what they may call ([`auth`]), or, with TLS on, with a
//! client certificate from the cluster's CA. Health and reflection stay
//! open, for probes and for grpcurl.
//!
//! **Before a body is read.** [`accept`] bounds connections that never
//! speak; [`gate`] refuses callers without the role a method needs before
//! tonic reads its message, and meters what it lets through against a
//! node-wide receive [`budget`]. Without TLS but with tokens, peers present
//! a token with the `peer` role.
//!
//! **No accidental exposure.** A node that would listen on a non-loopback
//! address without TLS refuses to start unless `insecure = true`
//! ([`crate::config::Config::validate`]). `meshkv certs` ([`certs`]) makes
//! a development CA, node certificates and a tokens file.

pub mod accept;
pub mod auth;
pub mod budget;
pub mod certs;
pub mod gate;
pub mod private;
pub mod tls;

pub use accept::{Conn, ConnInfo};
pub use auth::{ClientAuth, Role, Tokens};
pub use tls::TlsMaterial;
