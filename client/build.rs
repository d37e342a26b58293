//! The client stubs of `proto/meshkv/v1`, compiled with protox (pure Rust,
//! no system protoc). The server crate compiles the same files for itself.

use std::{fs, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("../proto");
    let mut files: Vec<PathBuf> = fs::read_dir(root.join("meshkv/v1"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "proto"))
        .collect();
    files.sort();
    println!("cargo:rerun-if-changed=../proto/meshkv");
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
