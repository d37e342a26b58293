//! The command line: `meshkv serve`, the client commands and their flags.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use tonic::service::interceptor::InterceptedService;

use crate::{
    client::connect::{parse_duration, parse_endpoint, AuthChannel, Credentials, CONNECT_TIMEOUT},
    config::{parse_peer, FsyncMode, LogFormat, Overrides, PeerConfig},
    error::{Error, Result},
    proto::kv_client::KvClient,
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
        /// The value, as text; `-` reads it from stdin as raw bytes, for
        /// binary or large values.
        value: String,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print a key's raw value; exit 1 if it is not found.
    ///
    /// The value's bytes go to stdout exactly as stored. Only on a terminal,
    /// a text value that does not end in a newline gets one, so that the
    /// prompt starts on its own line.
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
    /// Drive load at one node or a cluster (or etcd) and report throughput,
    /// latency percentiles, errors and replication lag.
    Bench(crate::client::bench::BenchArgs),
    /// Make a development CA, a certificate per node and a tokens file, for
    /// a TLS cluster. Files that exist are kept, so it is safe to run again.
    Certs(CertsArgs),
    /// Show a node and its replication to each peer as a table.
    Status {
        /// Print the raw status as JSON-like debug output instead of a table.
        #[arg(long)]
        raw: bool,
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
    /// Serve Prometheus metrics on this address (GET /metrics).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// A separate listen address for peers (required with TLS).
    #[arg(long)]
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Listen on a non-loopback address without TLS anyway.
    #[arg(long)]
    pub insecure: bool,
    /// This node's TLS certificate (PEM); with --tls-key and --tls-ca.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This node's TLS private key (PEM).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA certificate (PEM).
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// The file of client tokens and their roles.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
}

/// Flags of `meshkv certs`.
#[derive(Debug, Args)]
pub struct CertsArgs {
    /// Where the files go: ca.pem, ca.key, NODE.pem, NODE.key.
    #[arg(long, default_value = "certs")]
    pub dir: PathBuf,
    /// A node id to issue a certificate for; repeat for each node.
    #[arg(long = "node", required = true)]
    pub nodes: Vec<String>,
    /// An extra host name or IP every certificate names (beside the node id,
    /// localhost, 127.0.0.1 and ::1); repeatable.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Also write a tokens file with one random token per role (admin,
    /// write, read), unless it exists.
    #[arg(long)]
    pub tokens: Option<PathBuf>,
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
            metrics_listen: self.metrics_listen,
            peer_listen: self.peer_listen,
            insecure: self.insecure,
            tls: crate::config::TlsConfig {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                ca: self.tls_ca.clone(),
            },
            tokens_file: self.tokens_file.clone(),
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
        default_value = "http://127.0.0.1:50051",
        value_parser = parse_endpoint
    )]
    pub endpoint: String,
    /// Deadline for the request: 500ms, 5s, 2m; a bare number is seconds.
    #[arg(
        long,
        alias = "timeout-secs",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    pub timeout: Duration,
    #[command(flatten)]
    pub credentials: Credentials,
}

impl ClientArgs {
    /// A lazily-connecting channel to the node, carrying the token.
    pub fn channel(&self) -> Result<AuthChannel> {
        if self.timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "--timeout must be more than 0".into(),
            ));
        }
        let endpoint = self
            .credentials
            .endpoint(&self.endpoint)?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(self.timeout);
        Ok(InterceptedService::new(
            endpoint.connect_lazy(),
            self.credentials.auth()?,
        ))
    }

    /// A KV client over [`channel`](Self::channel), taking values up to the ceiling.
    pub fn kv(&self) -> Result<KvClient<AuthChannel>> {
        Ok(KvClient::new(self.channel()?)
            .max_decoding_message_size(crate::config::MAX_VALUE_BYTES_CEILING * 2))
    }
}
