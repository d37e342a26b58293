//! Writes on one node and reads the write back on another, in a session.
//!
//!     cargo run -p meshkv-client --example quickstart -- \
//!         http://127.0.0.1:50051 http://127.0.0.1:50052

use meshkv_client::{Client, Consistency, WriteOptions};

#[tokio::main]
async fn main() -> Result<(), meshkv_client::Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (first, second) = match args.as_slice() {
        [a, b] => (a.clone(), b.clone()),
        _ => (
            "http://127.0.0.1:50051".to_string(),
            "http://127.0.0.1:50052".to_string(),
        ),
    };
    let writer = Client::builder([first.clone(), second.clone()]).build()?;
    let written = writer
        .write("greeting", "hello", WriteOptions::at(Consistency::Quorum))
        .await?;
    println!("wrote {} (token {})", written.version, written.token);

    // A session on the other node, told of the write: its read waits for it.
    let reader = Client::builder([second, first]).build()?.session();
    reader.saw(&written.token);
    match reader.read("greeting").await? {
        Some(e) => println!(
            "read {:?} at {}",
            String::from_utf8_lossy(&e.value),
            e.version
        ),
        None => println!("not found"),
    }
    Ok(())
}
