//! Input checks shared by the client and peer services.

use std::collections::HashSet;

use crate::{
    error::{Error, Result},
    security::ConnInfo,
};

/// Who may send us peer traffic: the configured peers of our own cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    /// This node.
    pub node_id: String,
    /// This node's cluster.
    pub cluster_id: String,
    /// The configured peer ids.
    pub peers: HashSet<String>,
    /// TLS is on: a peer must present a client certificate from the
    /// cluster's CA that names the origin it claims.
    pub require_cert: bool,
}

impl Membership {
    /// Refuses senders from another cluster, outside the configured peers,
    /// or (with TLS) whose certificate does not name the origin they claim.
    /// `conn` is what the listener learnt of the connection.
    pub fn check(&self, cluster_id: &str, origin: &str, conn: Option<&ConnInfo>) -> Result<()> {
        let refuse = |err: Error| {
            tracing::warn!(
                origin, remote = ?conn.and_then(|c| c.remote), error = %err,
                "refused a peer request"
            );
            Err(err)
        };
        if cluster_id != self.cluster_id {
            return refuse(Error::PermissionDenied(format!(
                "cluster_id {cluster_id:?} is not this node's cluster {:?}",
                self.cluster_id
            )));
        }
        if !self.peers.contains(origin) {
            return refuse(Error::PermissionDenied(format!(
                "{origin:?} is not a configured peer of node {:?}",
                self.node_id
            )));
        }
        if self.require_cert {
            let Some(cert) = conn.and_then(|c| c.client_cert.as_deref()) else {
                return refuse(Error::Unauthenticated(
                    "peer calls need a client certificate from the cluster's CA".into(),
                ));
            };
            if !crate::security::tls::cert_names(cert, origin) {
                return refuse(Error::PermissionDenied(format!(
                    "the client certificate does not name {origin:?}, the origin this \
                     request claims; a node may only replicate as itself"
                )));
            }
        }
        Ok(())
    }
}

/// A key must be 1..=1024 bytes of UTF-8; the same rule holds for peers.
pub fn key(key: &str) -> Result<()> {
    crate::wire::check_key(key)
}

/// A node id a client names (in an expected version) must be one a node
/// could have: the config's rule.
pub fn node_id_field(id: &str) -> Result<()> {
    if !crate::config::valid_id(id) {
        return Err(Error::InvalidArgument(format!(
            "node id {:?} is not 1..=64 bytes of [A-Za-z0-9._-]",
            crate::wire::truncated(id)
        )));
    }
    Ok(())
}

/// A value must be at most `max` bytes (`limits.max_value_bytes`).
pub fn value(len: usize, max: usize) -> Result<()> {
    if len > max {
        return Err(Error::InvalidArgument(format!(
            "value is {len} bytes; the limit is {max} bytes (limits.max_value_bytes)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::MAX_KEY_BYTES;

    #[test]
    fn key_bounds_are_inclusive() {
        assert!(key("").is_err());
        assert!(key("k").is_ok());
        assert!(key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
        let err = key(&"k".repeat(MAX_KEY_BYTES + 1)).unwrap_err().to_string();
        assert!(
            err.contains("1025 bytes") && err.contains("1..=1024"),
            "{err}"
        );
        // The limit is in bytes, not characters.
        assert!(key(&"é".repeat(MAX_KEY_BYTES / 2 + 1)).is_err());
    }

    #[test]
    fn value_limit_is_named() {
        assert!(value(10, 10).is_ok());
        let err = value(11, 10).unwrap_err().to_string();
        assert!(
            err.contains("max_value_bytes") && err.contains("10 bytes"),
            "{err}"
        );
    }
}
