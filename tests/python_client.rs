//! The Python example client (clients/python) against real nodes: its own
//! unittest suite, run with this build's binary. It needs grpcio and
//! grpcio-tools (clients/python/requirements.txt); without them it says so
//! and passes without running, so the suite still runs on a machine with
//! only the Rust toolchain (`.ci/run` requires them).

mod common;

use std::process::Command;

#[test]
fn the_python_client_writes_reads_with_tokens_and_fails_over() {
    let importable = Command::new("python3")
        .args(["-c", "import grpc, grpc_tools"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        return common::skip_without(
            "python",
            "python3 with grpcio and grpcio-tools: pip install -r clients/python/requirements.txt",
        );
    }
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/clients/python/test_client.py"
        ))
        .env("MESHKV_BIN", env!("CARGO_BIN_EXE_meshkv"))
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("Ran 3 tests"), "{text}");
}
