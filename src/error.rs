//! The one error type of meshkv and its mapping to gRPC status codes.

use std::path::PathBuf;

/// Everything that can go wrong inside a node or a client command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something we will not accept; the message names the limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// A bounded queue is full; the caller should back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The storage engine failed. Writes stop until the node is restarted.
    #[error("storage error: {0}")]
    Storage(#[from] fjall::Error),
    /// The node is stopping or its writer has stopped after a storage failure.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller proved who it is, but may not do this: a peer claiming
    /// another's name, a token without the role.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller did not prove who it is: no token, an unknown one, or no
    /// client certificate where one is required.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A peer could not be reached or failed an RPC.
    #[error("peer {peer}: {status}")]
    Peer {
        /// The peer's id.
        peer: String,
        /// What the peer (or the transport) answered.
        status: tonic::Status,
    },
    /// Another process holds the data dir.
    #[error("data dir {} is in use by another meshkv process{}; stop it or pick another --data-dir", dir.display(), pid.as_deref().map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked {
        /// The contested directory.
        dir: PathBuf,
        /// The pid recorded in the lock file, if readable.
        pid: Option<String>,
    },
    /// A bad configuration, with where it came from.
    #[error("config: {0}")]
    Config(String),
    /// Bytes on disk that do not decode: a broken invariant.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// An I/O error outside the storage engine (lock file, sockets).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A transport-level failure (binding, connecting).
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// A compare-and-set whose condition does not hold on this node.
    #[error("failed precondition: {message}")]
    Precondition {
        /// What was expected and what the key holds.
        message: String,
        /// The version of the key's live value here, if it has one.
        current: Option<crate::version::Version>,
    },
    /// A peer places keys in anti-entropy buckets by another bucket key,
    /// so no digest of it can be compared with ours.
    #[error(
        "{peer} places keys in anti-entropy buckets by another bucket key (id {theirs:016x}, \
         here {ours:016x}): give every node the same cluster_id and \
         replication.bucket_key_file"
    )]
    OtherPlacement {
        /// The peer's id.
        peer: String,
        /// The fingerprint of its bucket key (0: it sent none).
        theirs: u64,
        /// Ours.
        ours: u64,
    },
    /// A wait for other nodes (a consistency level, a write token) outlived
    /// the call's deadline; the message says who had answered.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
}

impl Error {
    /// For `map_err`: what `peer` (a node id or endpoint) answered.
    pub fn from_peer(peer: &str) -> impl Fn(tonic::Status) -> Self + '_ {
        move |status| Error::Peer {
            peer: peer.to_string(),
            status,
        }
    }

    /// Wraps an I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// An error and its causes on one line, each cause once: many messages
/// already end with their source's text, which a plain walk down the chain
/// would print twice.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

/// Result with the meshkv [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        use tonic::Code;
        let code = match &err {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::Storage(_) | Error::Unavailable(_) | Error::Transport(_) | Error::Io { .. } => {
                Code::Unavailable
            }
            Error::Peer { .. } => Code::Unavailable,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Precondition { .. } | Error::OtherPlacement { .. } => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::Locked { .. } | Error::Config(_) | Error::Corrupt(_) => Code::Internal,
        };
        tonic::Status::new(code, err.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn status_codes_follow_the_house_rules() {
        let cases = [
            (Error::InvalidArgument("x".into()), Code::InvalidArgument),
            (Error::Overloaded("x".into()), Code::ResourceExhausted),
            (Error::Storage(fjall::Error::Poisoned), Code::Unavailable),
            (Error::Unavailable("x".into()), Code::Unavailable),
            (Error::PermissionDenied("x".into()), Code::PermissionDenied),
            (Error::Unauthenticated("x".into()), Code::Unauthenticated),
            (Error::DeadlineExceeded("x".into()), Code::DeadlineExceeded),
            (
                Error::OtherPlacement {
                    peer: "n2".into(),
                    theirs: 1,
                    ours: 2,
                },
                Code::FailedPrecondition,
            ),
            (Error::Corrupt("x".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let msg = err.to_string();
            let status = tonic::Status::from(err);
            assert_eq!(status.code(), code, "{msg}");
            assert_eq!(status.message(), msg);
        }
    }

    #[test]
    fn one_line_names_each_cause_once() {
        let busy = || std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let err = Error::io("cannot listen on 127.0.0.1:1", busy());
        let line = one_line(&err);
        assert_eq!(line, format!("cannot listen on 127.0.0.1:1: {}", busy()));

        #[derive(Debug, thiserror::Error)]
        #[error("outer")]
        struct Outer(#[source] std::io::Error);
        let line = one_line(&Outer(busy()));
        assert_eq!(line, format!("outer: {}", busy()));
        assert!(!line.contains('\n'));
    }
}
