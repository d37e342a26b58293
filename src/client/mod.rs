//! The client side of meshkv: the command line, the client commands and the
//! benchmark driver. Nothing in the node imports from here; everything here
//! reaches a node only through its gRPC API, as any other client would.
//!
//! - [`args`]: the flags of every subcommand (clap), `serve`'s included.
//! - [`connect`]: credentials, endpoints, and errors as one sentence.
//! - [`commands`]: `put`, `get`, `status` and the rest.
//! - [`bench`]: `meshkv bench`, a load generator with latency histograms.
//!
//! The imports point one way: `commands` → `args` → `bench` → `connect`.

pub mod args;
pub mod bench;
pub mod commands;
pub mod connect;

pub use args::{Cli, Command, ServeArgs};
pub use commands::{run_client, Outcome};
