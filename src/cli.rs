//! Command-line interface: `meshkv serve` and the client commands.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    config::{parse_peer, FsyncMode, LogFormat, Overrides, PeerConfig},
    error::{Error, Result},
    proto::{self, kv_client::KvClient},
};

/// meshkv: a replicated, multi-master key-value server.
#[derive(Debug, Parser)]
#[command(name = "meshkv", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do; with none, `serve` with the defaults.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Write a value.
    Put {
        /// The key (1..=1024 bytes).
        key: String,
        /// The value, taken as UTF-8 text.
        value: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print a key's raw value; exit 1 if it is not found.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Check a node's health; exit 0 only when it is SERVING.
    Health {
        #[command(flatten)]
        conn: ClientArgs,
    },
}

/// Flags of `meshkv serve`. Each overrides the config file and environment.
#[derive(Debug, Default, Args)]
pub struct ServeArgs {
    /// A TOML config file (see config/meshkv.example.toml).
    #[arg(long, env = "MESHKV_CONFIG")]
    pub config: Option<PathBuf>,
    /// This node's id (default node1).
    #[arg(long)]
    pub node_id: Option<String>,
    /// The cluster's name; peers must share it (default meshkv).
    #[arg(long)]
    pub cluster_id: Option<String>,
    /// gRPC listen address (default 127.0.0.1:50051).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Data directory (default ./data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// A peer as ID=URL, e.g. node2=http://127.0.0.1:50052; repeat for each.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<PeerConfig>,
    /// Log format.
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// When writes are synced to disk.
    #[arg(long, value_enum)]
    pub fsync: Option<FsyncMode>,
}

impl ServeArgs {
    /// The flags as the top configuration layer.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            node_id: self.node_id.clone(),
            cluster_id: self.cluster_id.clone(),
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            peers: self.peers.clone(),
            log_format: self.log_format,
            fsync: self.fsync,
        }
    }
}

/// How a client command reaches a node.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The node's gRPC URL.
    #[arg(
        long,
        env = "MESHKV_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    pub endpoint: String,
    /// Deadline for the request, in seconds.
    #[arg(long, default_value_t = 10)]
    pub timeout_secs: u64,
}

impl ClientArgs {
    /// A lazily-connecting channel to the node.
    pub fn channel(&self) -> Result<Channel> {
        let endpoint = Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| Error::InvalidArgument(format!("--endpoint {:?}: {e}", self.endpoint)))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(self.timeout_secs));
        Ok(endpoint.connect_lazy())
    }

    fn kv(&self) -> Result<KvClient<Channel>> {
        Ok(KvClient::new(self.channel()?)
            .max_decoding_message_size(crate::config::MAX_VALUE_BYTES_CEILING * 2))
    }
}

fn rpc(endpoint: &str) -> impl Fn(tonic::Status) -> Error + '_ {
    move |status| Error::Peer {
        peer: endpoint.to_string(),
        status,
    }
}

/// The outcome of a client command, for the exit code.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done; exit 0.
    Ok,
    /// Key not found or node not serving; exit 1.
    Negative,
}

/// Runs a client command, printing its result.
pub async fn run_client(command: Command) -> Result<Outcome> {
    match command {
        Command::Serve(_) => unreachable!("serve is not a client command"),
        Command::Put { key, value, conn } => {
            let resp = conn
                .kv()?
                .write(proto::WriteRequest {
                    key,
                    value: value.into_bytes(),
                })
                .await
                .map_err(rpc(&conn.endpoint))?
                .into_inner();
            println!("OK {}", show_version(resp.version.as_ref()));
            Ok(Outcome::Ok)
        }
        Command::Get { key, conn } => {
            let resp = conn
                .kv()?
                .read(proto::ReadRequest { key: key.clone() })
                .await
                .map_err(rpc(&conn.endpoint))?
                .into_inner();
            if resp.found {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&resp.value)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(|e| Error::io("stdout", e))?;
                Ok(Outcome::Ok)
            } else {
                eprintln!("key {key:?} not found");
                Ok(Outcome::Negative)
            }
        }
        Command::Delete { key, conn } => {
            let resp = conn
                .kv()?
                .delete(proto::DeleteRequest { key })
                .await
                .map_err(rpc(&conn.endpoint))?
                .into_inner();
            println!("OK {}", show_version(resp.version.as_ref()));
            Ok(Outcome::Ok)
        }
        Command::Health { conn } => {
            let status = HealthClient::new(conn.channel()?)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(rpc(&conn.endpoint))?
                .into_inner()
                .status();
            println!("{}", status.as_str_name());
            Ok(if status == ServingStatus::Serving {
                Outcome::Ok
            } else {
                Outcome::Negative
            })
        }
    }
}

fn show_version(v: Option<&proto::Version>) -> String {
    v.map(|v| format!("{}@{}", v.hlc, v.node_id))
        .unwrap_or_else(|| "(no version)".into())
}
