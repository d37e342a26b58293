//! The generated client of etcd's KV service (see `proto/etcd/rpc.proto`).

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("etcdserverpb");
