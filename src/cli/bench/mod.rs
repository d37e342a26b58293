//! `meshkv bench`: the project's own load generator.
//!
//! A fixed number of worker tasks (the concurrency) each keep one request in
//! flight, spread round-robin over a few HTTP/2 connections per endpoint.
//! Each worker records latencies in its own HdrHistogram and counts errors by
//! status code; the histograms are merged at the end, so workers share
//! nothing on the hot path but two atomic counters. With `--rate`, each worker
//! paces itself to its share of the target rate.
//!
//! Targets: `meshkv` (Write, Read or WriteBatch), `health` (the gRPC health
//! check, the transport ceiling of the same node), and `etcd` (Put and Range
//! through etcd's own gRPC API), so that one tool drives every system with
//! the same load shape.
//!
//! Replication lag is measured beside the load: a probe writes a fresh key
//! to the first endpoint and times how long until each other endpoint
//! returns it.

mod args;
mod driver;
mod etcd;
mod lag;
mod report;

pub use args::{BenchArgs, KeyPattern, Target};
pub use driver::run;
