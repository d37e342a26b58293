//! The command line's one error type: what went wrong, as one sentence
//! for the person who ran the command.

/// A client command's failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Flags that cannot work together, or a value out of range.
    #[error("{0}")]
    Usage(String),
    /// A call that failed, described with what to try.
    #[error("{0}")]
    Request(String),
    /// A local file or stream.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `meshkv certs`, which runs the server library's code.
    #[error(transparent)]
    Node(#[from] meshkv::Error),
}

impl Error {
    /// An I/O failure while doing `context`.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A client command's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
