//! The command line of the `meshkv` binary: `serve`'s flags, the client
//! commands and the benchmark. It is the binary's, not the server
//! library's: everything here reaches a node through `meshkv-client`, as
//! any other program would, and the server library holds no client code.
//!
//! - [`args`]: the flags of every subcommand (clap), `serve`'s included.
//! - [`connect`]: credentials, flag parsers, and errors as one sentence.
//! - [`commands`]: `put`, `get`, `status` and the rest.
//! - [`bench`]: `meshkv bench`, a load generator with latency histograms.
//! - [`error`]: what a command fails with.
//!
//! The imports point one way: `commands` → `args` → `bench` → `connect`
//! → `error`.

pub mod args;
pub mod bench;
pub mod commands;
pub mod connect;
pub mod error;

pub use args::{Cli, Command, ServeArgs};
pub use commands::{run_client, Outcome};
