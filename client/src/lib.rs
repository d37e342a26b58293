//! A client for [meshkv](https://github.com/), the replicated key-value
//! server: typed `write`, `read`, `delete`, `write_batch` and `scan` over
//! gRPC, against a list of endpoints.
//!
//! ```no_run
//! # async fn demo() -> Result<(), meshkv_client::Error> {
//! use meshkv_client::{Client, Consistency, WriteOptions};
//! let client = Client::builder(["http://127.0.0.1:50051", "http://127.0.0.1:50052"])
//!     .build()?;
//! let written = client
//!     .write("greeting", "hello", WriteOptions::at(Consistency::Quorum))
//!     .await?;
//! let session = client.session();
//! session.saw(&written.token);
//! // On any node: answers only once it has applied the write.
//! let entry = session.read("greeting").await?;
//! # Ok(()) }
//! ```
//!
//! **Failover.** A call goes to the current endpoint. On UNAVAILABLE (the
//! node is down, stopping, behind a token, or cannot reach enough peers) or
//! a connection failure it moves on to the next, round the list, up to
//! [`ClientBuilder::max_attempts`] attempts.
//!
//! **Backoff.** On RESOURCE_EXHAUSTED (the node's queue is full) it waits
//! with exponential backoff and full jitter, and tries the same node again.
//!
//! **What is safe to retry.** Reads, scans and deletes are: a delete
//! retried writes a second tombstone, which reads the same. A retried
//! `write` is a new write with a new version: if the first attempt was
//! committed before its answer was lost, the value is written twice (the
//! same bytes, a newer version) and a compare-and-set retry may fail
//! against the first attempt's version. Set
//! [`ClientBuilder::retry_writes`] to `false` to get every write error
//! back instead.
//!
//! **Deadlines.** Every call carries a gRPC deadline
//! ([`ClientBuilder::timeout`], or the call's own option), which the node
//! also uses to bound its waits for consistency levels and tokens.

#![deny(missing_docs)]

mod client;
mod error;
mod session;
mod types;

pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use session::Session;
pub use types::{Consistency, Entry, Expect, ReadOptions, Token, Version, WriteOptions, Written};

/// The generated messages and client stubs of `meshkv.v1`, for calls this
/// crate does not wrap (Watch, Admin).
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("meshkv.v1");
}
