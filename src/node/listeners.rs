//! The connections a node serves, apart from how they were accepted.

use std::net::SocketAddr;

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
