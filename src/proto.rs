//! Generated protobuf and gRPC code for `meshkv.v1`.

#![allow(missing_docs, clippy::all)]

tonic::include_proto!("meshkv.v1");

/// The encoded descriptor set of every meshkv proto file, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/meshkv_descriptor.bin"));
