//! The client's one error type.

/// What a call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node answered with this status (after any retries).
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect) could not
    /// reach this endpoint.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint's URL.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// An endpoint or TLS setting the client cannot use.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// The gRPC status code, for an answer from a node.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::Connect { .. } | Error::Config(_) => None,
        }
    }
}
