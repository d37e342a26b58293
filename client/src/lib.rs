//! A client for [meshkv](https://github.com/), the replicated key-value
//! server: typed `write`, `read`, `delete`, `write_batch`, `scan` and
//! `watch` over gRPC, plus the operator's status calls, against a list of
//! endpoints.
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
//! [`ClientBuilder::max_attempts`] attempts; each time the whole list has
//! failed in a row, it waits a backoff step before going round again.
//!
//! **Backoff.** On RESOURCE_EXHAUSTED (the node's queue is full) it waits
//! with exponential backoff and full jitter, and tries the same node again.
//!
//! **Watches resume.** A [`Watch`] reopens its stream after a cut from
//! the last token it received; see its docs for what another node
//! answers to that token.
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

mod admin;
mod client;
mod error;
mod session;
mod stream;
mod types;

pub use client::{Client, ClientBuilder};
pub use error::Error;
pub use session::Session;
pub use stream::{EventKind, KeyValue, ScanPage, ScanPages, Watch, WatchEvent};
pub use tonic_health::pb::health_check_response::ServingStatus;
pub use types::{
    Consistency, Entry, Expect, ReadOptions, ScanOptions, Token, Version, WatchOptions,
    WriteOptions, Written,
};

/// The generated messages and client stubs of `meshkv.v1`: the answers of
/// the Admin calls, and stubs for anything this crate does not wrap.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("meshkv.v1");
}
