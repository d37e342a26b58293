//! Compiles `proto/meshkv/v1/*.proto` with protox (pure Rust, no system
//! protoc) and generates the tonic services. The encoded descriptor set is
//! kept for server reflection. `proto/etcd/rpc.proto` becomes a client only,
//! for the benchmark's etcd target.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from("proto/meshkv/v1");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=proto");

    let fds = protox::compile(&files, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("meshkv_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Smaller first buffers than tonic's 8 KiB: see src/grpc_codec.rs.
        .codec_path("crate::grpc_codec::SmallBufferCodec")
        // A change record wraps the log's encoded mutation: shared, not copied twice.
        .bytes(".meshkv.v1.StoredChange.mutation")
        .compile_fds(fds)?;

    let etcd = protox::compile(["proto/etcd/rpc.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}
