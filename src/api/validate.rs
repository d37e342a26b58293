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
    ///
    /// What the caller sent is logged and answered at most 128 bytes of it,
    /// escaped: a caller that is not yet known must not be able to fill the
    /// log or forge lines in it.
    pub fn check(&self, cluster_id: &str, origin: &str, conn: Option<&ConnInfo>) -> Result<()> {
        use crate::wire::truncated;
        let refuse = |err: Error| {
            tracing::warn!(
                origin = ?truncated(origin), remote = ?conn.and_then(|c| c.remote), error = %err,
                "refused a peer request"
            );
            Err(err)
        };
        let (cluster_id_shown, origin_shown) = (truncated(cluster_id), truncated(origin));
        if cluster_id != self.cluster_id {
            return refuse(Error::PermissionDenied(format!(
                "cluster_id {cluster_id_shown:?} is not this node's cluster {:?}",
                self.cluster_id
            )));
        }
        if !self.peers.contains(origin) {
            return refuse(Error::PermissionDenied(format!(
                "{origin_shown:?} is not a configured peer of node {:?}",
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
                    "the client certificate does not name {origin_shown:?}, the origin this \
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

    /// A writer that keeps what the log says, for the test below.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_strangers_claims_reach_the_log_and_the_answer_bounded_and_escaped() {
        // Issue 24 item 6: origin and cluster_id were logged in full and
        // unescaped before any check: one request could write 100 MB of
        // log, or forge a line with a newline.
        let members = Membership {
            node_id: "n1".into(),
            cluster_id: "c".into(),
            peers: ["n2".to_string()].into(),
            require_cert: false,
        };
        let log = Captured::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let huge = format!("x\nFORGED line{}", "y".repeat(10 << 20));
        let (e1, e2) = tracing::subscriber::with_default(subscriber, || {
            (
                members.check("c", &huge, None).unwrap_err(),
                members.check(&huge, "n2", None).unwrap_err(),
            )
        });
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        assert!(text.len() < 4096, "{} bytes of log", text.len());
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(!text.lines().any(|l| l.starts_with("FORGED")), "{text}");
        for e in [e1, e2] {
            let msg = e.to_string();
            assert!(msg.len() < 512 && !msg.contains('\n'), "{msg}");
        }
    }

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
