//! The command line: `meshkv serve`, the client commands and their flags.

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use meshkv::config::{parse_peer, FsyncMode, LogFormat, Overrides, PeerConfig};
use meshkv_client::{Client, Expect, Version};

use crate::cli::{
    connect::{parse_duration, parse_endpoint, request_error, Credentials, CONNECT_TIMEOUT},
    error::{Error, Result},
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
        /// Expire the value after this long (500ms, 30s, 1h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        cas: CasArgs,
        #[command(flatten)]
        level: LevelArgs,
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
        /// Read only once the node has applied the write of this token (as
        /// `put` and `delete` print it), waiting up to --timeout; repeat for
        /// several. Read-your-writes on any node.
        #[arg(long, value_name = "TOKEN")]
        after: Vec<String>,
        #[command(flatten)]
        level: LevelArgs,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        #[command(flatten)]
        cas: CasArgs,
        #[command(flatten)]
        level: LevelArgs,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// List the live keys under a prefix, in key order, one per line as
    /// `key<TAB>value` (a value that is not UTF-8 shows as its size).
    Scan {
        /// The prefix; empty or absent: every key.
        #[arg(default_value = "")]
        prefix: String,
        /// Stop after this many keys and print the page token to go on
        /// with on stderr.
        #[arg(long)]
        limit: Option<u32>,
        /// Continue a scan limited by --limit from its page token.
        #[arg(long)]
        page_token: Option<String>,
        /// Print keys only.
        #[arg(long)]
        keys_only: bool,
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Print every change to keys under a prefix as this node applies it,
    /// until interrupted: `KIND<TAB>key<TAB>value<TAB>token` per line (KIND
    /// is PUT, DELETE, EXPIRE, or SNAPSHOT for a key's current value when
    /// the node could not resume from --from). Resume with --from and the
    /// last token printed.
    Watch {
        /// The prefix; empty or absent: every key.
        #[arg(default_value = "")]
        prefix: String,
        /// Resume after the event that carried this token.
        #[arg(long)]
        from: Option<String>,
        /// Also print a PROGRESS line (with its token) when nothing changed
        /// for this long.
        #[arg(long, value_parser = parse_duration)]
        progress: Option<Duration>,
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
    Bench(crate::cli::bench::BenchArgs),
    /// Make a development CA, a certificate per node and a tokens file, for
    /// a TLS cluster. Files that exist are kept, so it is safe to run again.
    Certs(CertsArgs),
    /// List the last conflicts last-writer-wins decided on a node, newest
    /// first: `KIND<TAB>key<TAB>kept<TAB>lost<TAB>peer` per line, KIND
    /// LOST (a peer's write lost to a newer one) or REPLACED (a value here
    /// was replaced by a concurrent write).
    Conflicts {
        #[command(flatten)]
        conn: ClientArgs,
    },
    /// Show a node and its replication to each peer as a table.
    Status {
        /// Print the raw status as JSON-like debug output instead of a table.
        #[arg(long)]
        raw: bool,
        /// Show which peers hold the write of this write token (as `put`
        /// prints it) instead; ask the node that took the write. (`--token`
        /// is the bearer token every client command takes.)
        #[arg(long, value_name = "TOKEN")]
        write_token: Option<String>,
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
            tls: meshkv::config::TlsConfig {
                cert: self.tls_cert.clone(),
                key: self.tls_key.clone(),
                ca: self.tls_ca.clone(),
            },
            tokens_file: self.tokens_file.clone(),
        }
    }
}

/// Compare-and-set: the write happens only if the key is in this state on
/// the node that takes it.
#[derive(Debug, Clone, Default, Args)]
pub struct CasArgs {
    /// Only if the key's live value has this version (HLC@NODE, as `put`
    /// prints it).
    #[arg(long, value_name = "HLC@NODE", value_parser = parse_version, conflicts_with = "if_absent")]
    pub if_version: Option<Version>,
    /// Only if the key has no live value.
    #[arg(long)]
    pub if_absent: bool,
}

impl CasArgs {
    /// The condition as the client takes it.
    pub fn expect(&self) -> Option<Expect> {
        match (&self.if_version, self.if_absent) {
            (Some(v), _) => Some(Expect::Version(v.clone())),
            (None, true) => Some(Expect::Absent),
            (None, false) => None,
        }
    }
}

/// How many nodes a request waits for (see the README's consistency levels).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    /// This node alone.
    #[default]
    One,
    /// A majority of the cluster, this node included.
    Quorum,
    /// Every node.
    All,
}

/// The consistency level of one request.
#[derive(Debug, Clone, Default, Args)]
pub struct LevelArgs {
    /// How many nodes must have the write (or answer the read) first.
    #[arg(long, value_enum, default_value_t)]
    pub consistency: Consistency,
}

impl LevelArgs {
    /// The level as the client takes it.
    pub fn level(&self) -> meshkv_client::Consistency {
        match self.consistency {
            Consistency::One => meshkv_client::Consistency::One,
            Consistency::Quorum => meshkv_client::Consistency::Quorum,
            Consistency::All => meshkv_client::Consistency::All,
        }
    }
}

/// `HLC@NODE`, as the client commands print versions.
pub fn parse_version(s: &str) -> std::result::Result<Version, String> {
    let (hlc, node) = s
        .split_once('@')
        .ok_or_else(|| format!("{s:?} is not a version; write HLC@NODE, as put prints it"))?;
    let hlc = hlc
        .parse()
        .map_err(|_| format!("{hlc:?} is not an HLC timestamp (a number)"))?;
    if !meshkv::config::valid_id(node) {
        return Err(format!("{node:?} is not a node id"));
    }
    Ok(Version {
        hlc,
        node: node.to_string(),
    })
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
    /// A client of this one node. It makes one attempt per command, so
    /// that an error is reported at once, and `--timeout` is the deadline
    /// the node waits within (a consistency level, a token).
    pub fn client(&self) -> Result<Client> {
        if self.timeout.is_zero() {
            return Err(Error::Usage("--timeout must be more than 0".into()));
        }
        self.credentials
            .builder(std::slice::from_ref(&self.endpoint))?
            .connect_timeout(self.timeout.min(CONNECT_TIMEOUT))
            .timeout(self.timeout)
            .max_attempts(1)
            .build()
            .map_err(|e| Error::Usage(e.to_string()))
    }

    /// For `map_err`: a failed call to this node as one sentence.
    pub fn failed(&self) -> impl Fn(meshkv_client::Error) -> Error + '_ {
        request_error(&self.endpoint, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap checks a command's definition only when it parses one: two
    /// flags of one name would pass every test that never runs that
    /// command.
    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
