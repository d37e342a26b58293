//! Command-line interface: `meshkv serve` and the client commands.

use std::{
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::{interceptor::InterceptedService, Interceptor},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

use crate::{
    config::{parse_peer, FsyncMode, LogFormat, Overrides, PeerConfig},
    error::{self, Error, Result},
    proto::{self, admin_client::AdminClient, kv_client::KvClient},
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
    Bench(crate::bench::BenchArgs),
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

/// How a client proves itself and checks the node: a token, TLS files.
/// `Debug` leaves the token out.
#[derive(Clone, Default, Args)]
pub struct Credentials {
    /// A bearer token, sent as `authorization: Bearer TOKEN`.
    #[arg(long, env = "MESHKV_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The CA that signed the node's certificate, for https:// endpoints.
    #[arg(long, env = "MESHKV_CACERT")]
    pub cacert: Option<PathBuf>,
    /// A client certificate (PEM) from the cluster's CA, with --key.
    #[arg(id = "tls_cert", long = "cert", env = "MESHKV_CERT")]
    pub cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(id = "tls_key", long = "key", env = "MESHKV_KEY")]
    pub key: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// Adds the bearer token, if any, to every request. `Debug` shows whether
/// there is one, not what it is.
#[derive(Clone, Default)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Auth(<token>)"
        } else {
            "Auth(none)"
        })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A channel that carries the caller's token.
pub type AuthChannel = InterceptedService<Channel, Auth>;

impl Credentials {
    /// An endpoint for `url`: TLS with --cacert (and --cert/--key) for
    /// `https://`. TLS files with an `http://` URL are a mistake, said so.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| Error::InvalidArgument(format!("--endpoint {url:?}: {e}")))?;
        if url.starts_with("https://") {
            let Some(ca) = &self.cacert else {
                return Err(Error::InvalidArgument(format!(
                    "{url} is https: give the CA that signed its certificate with --cacert \
                     (or MESHKV_CACERT)"
                )));
            };
            let tls = crate::security::tls::client_tls(
                Some(ca),
                self.cert.as_deref(),
                self.key.as_deref(),
            )?;
            return endpoint
                .tls_config(tls)
                .map_err(|e| Error::InvalidArgument(format!("TLS for {url}: {e}")));
        }
        if self.cert.is_some() || self.cacert.is_some() {
            return Err(Error::InvalidArgument(format!(
                "--cacert, --cert and --key need an https:// endpoint, not {url}"
            )));
        }
        Ok(endpoint)
    }

    /// The interceptor that sends the token.
    pub fn auth(&self) -> Result<Auth> {
        match &self.token {
            None => Ok(Auth(None)),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .map(|v| Auth(Some(v)))
                .map_err(|_| {
                    Error::InvalidArgument("--token holds characters a header cannot carry".into())
                }),
        }
    }
}

/// Parses a duration flag: a number with a unit of `ms`, `s`, `m` or `h`
/// (`500ms`, `5s`, `1.5m`, `1h`), or a bare number of seconds (`10`,
/// `0.5`), so that flags that took seconds before keep their meaning.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || {
        format!(
            "{s:?} is not a duration; write a number with a unit of ms, s, m or h \
             (500ms, 5s, 2m, 1h), or a number of seconds"
        )
    };
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_nanos: u64 = match unit.trim_start() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60 * 1_000_000_000,
        "h" => 3600 * 1_000_000_000,
        _ => return Err(bad()),
    };
    // Whole numbers stay in integers so that 1ms is exactly a millisecond.
    let nanos = if number.contains('.') {
        let n: f64 = number.parse().map_err(|_| bad())?;
        let nanos = (n * unit_nanos as f64).round();
        if !(0.0..u64::MAX as f64).contains(&nanos) {
            return Err(format!("{s:?} is too long a duration"));
        }
        nanos as u64
    } else {
        number
            .parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(unit_nanos)
            .ok_or_else(|| format!("{s:?} is too long a duration"))?
    };
    Ok(Duration::from_nanos(nanos))
}

/// Checks an `--endpoint` flag: an http:// or https:// URL with a host.
pub fn parse_endpoint(s: &str) -> std::result::Result<String, String> {
    let uri = s.parse::<tonic::transport::Uri>().ok();
    let usable = uri.is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty())
    });
    if usable {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a node URL; expected http://HOST:PORT, e.g. http://127.0.0.1:50051"
        ))
    }
}

/// How long a client waits for the TCP connection to a node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// For `map_err` in the client commands: a failed request as one sentence
/// that says what went wrong at `endpoint` and what to try. The status
/// itself, with its causes, goes to the debug log (`RUST_LOG=debug`).
pub fn request_error(endpoint: &str, timeout: Duration) -> impl Fn(tonic::Status) -> Error + '_ {
    move |status| {
        tracing::debug!(endpoint, ?status, "request failed");
        Error::Client(describe_status(endpoint, timeout, &status))
    }
}

/// For `map_err` when connecting eagerly (`meshkv bench`): like
/// [`request_error`], for a transport error.
pub fn connect_error(endpoint: &str) -> impl Fn(tonic::transport::Error) -> Error + '_ {
    move |err| {
        tracing::debug!(endpoint, error = ?err, "connect failed");
        let reason = connect_failure(&err).unwrap_or_else(|| error::one_line(&err));
        Error::Client(format!("cannot connect to {endpoint}: {reason}"))
    }
}

/// The sentence for a failed request, by what failed: the connection, the
/// deadline, or the node's answer.
fn describe_status(endpoint: &str, timeout: Duration, status: &tonic::Status) -> String {
    use tonic::Code;
    if let Some(reason) = connect_failure(status) {
        return format!("cannot connect to {endpoint}: {reason}");
    }
    let msg = status.message();
    // Neither meshkv nor gRPC answered: something else listens there.
    if msg.contains("grpc-status header missing") || msg.contains("h2 protocol error") {
        return format!(
            "{endpoint} does not answer like a meshkv node; is the address right? ({msg})"
        );
    }
    match status.code() {
        Code::OutOfRange if msg.contains("message length too large") => format!(
            "{endpoint} refused the request as too large; a value must fit the node's \
             limits.max_value_bytes ({msg})"
        ),
        // tonic reports its own client deadline as Cancelled.
        Code::DeadlineExceeded | Code::Cancelled
            if msg.to_ascii_lowercase().contains("timeout") =>
        {
            format!(
                "{endpoint} did not answer within {timeout:?} (is the node overloaded? raise --timeout)"
            )
        }
        Code::InvalidArgument
        | Code::OutOfRange
        | Code::FailedPrecondition
        | Code::PermissionDenied
        | Code::NotFound
        | Code::AlreadyExists => format!("{endpoint} refused the request: {msg}"),
        Code::Unauthenticated => {
            format!("{endpoint} refused the request: {msg} (pass --token or set MESHKV_TOKEN)")
        }
        Code::ResourceExhausted => {
            format!("{endpoint} is overloaded and refused the request: {msg} (retry later)")
        }
        Code::Unavailable => format!("{endpoint} cannot serve the request now: {msg}"),
        Code::Unimplemented => {
            format!("{endpoint} does not serve this call; is it a meshkv node? ({msg})")
        }
        code => format!("{endpoint} failed the request ({code:?}): {msg}"),
    }
}

/// Why the connection to a node failed, when that is what `err` (a status
/// or a transport error) comes down to, with a hint for what to do.
fn connect_failure(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    use std::io::ErrorKind;
    let mut transport = false;
    let mut cause = Some(err);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(match io.kind() {
                ErrorKind::ConnectionRefused => {
                    "connection refused (is a node running there? set --endpoint)".into()
                }
                ErrorKind::TimedOut => format!(
                    "no answer within {CONNECT_TIMEOUT:?} (is the address right? set --endpoint)"
                ),
                _ => format!("{} (set --endpoint)", plain_io(io)),
            });
        }
        transport |= e.is::<tonic::transport::Error>();
        // tonic's connect timeout is an error of its own, not an io::Error.
        if transport && e.to_string().contains("timed out") {
            return Some(format!(
                "no answer within {CONNECT_TIMEOUT:?} (is the address right? set --endpoint)"
            ));
        }
        cause = e.source();
    }
    None
}

/// An io::Error's text without the `(os error N)` suffix, lower-cased like
/// the rest of the sentence.
fn plain_io(err: &std::io::Error) -> String {
    let text = err.to_string();
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut chars = text.chars();
    chars
        .next()
        .map(|c| c.to_lowercase().chain(chars).collect())
        .unwrap_or_default()
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

    fn kv(&self) -> Result<KvClient<AuthChannel>> {
        Ok(KvClient::new(self.channel()?)
            .max_decoding_message_size(crate::config::MAX_VALUE_BYTES_CEILING * 2))
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
        Command::Certs(args) => {
            let written = crate::security::certs::make(
                &args.dir,
                &args.nodes,
                &args.hosts,
                args.tokens.as_deref(),
            )?;
            for p in &written.created {
                println!("created {}", p.display());
            }
            for p in &written.kept {
                println!("kept    {}", p.display());
            }
            Ok(Outcome::Ok)
        }
        Command::Put { key, value, conn } => {
            let value = if value == "-" {
                let mut bytes = Vec::new();
                std::io::stdin()
                    .lock()
                    .read_to_end(&mut bytes)
                    .map_err(|e| Error::io("cannot read the value from stdin", e))?;
                bytes
            } else {
                value.into_bytes()
            };
            let resp = conn
                .kv()?
                .write(proto::WriteRequest {
                    key,
                    value,
                    ..Default::default()
                })
                .await
                .map_err(request_error(&conn.endpoint, conn.timeout))?
                .into_inner();
            println!("OK {}", show_version(resp.version.as_ref()));
            Ok(Outcome::Ok)
        }
        Command::Get { key, conn } => {
            let resp = conn
                .kv()?
                .read(proto::ReadRequest {
                    key: key.clone(),
                    ..Default::default()
                })
                .await
                .map_err(request_error(&conn.endpoint, conn.timeout))?
                .into_inner();
            if resp.found {
                let mut out = std::io::stdout().lock();
                let newline = needs_newline(&resp.value, out.is_terminal());
                out.write_all(&resp.value)
                    .and_then(|()| out.write_all(if newline { b"\n" } else { b"" }))
                    .and_then(|()| out.flush())
                    .map_err(|e| Error::io("cannot write to stdout", e))?;
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
                .map_err(request_error(&conn.endpoint, conn.timeout))?
                .into_inner();
            println!("OK {}", show_version(resp.version.as_ref()));
            Ok(Outcome::Ok)
        }
        Command::Bench(args) => {
            let json = args.json;
            let report = crate::bench::run(args).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).map_err(|e| Error::Client(format!(
                        "cannot render the report as JSON: {e}"
                    )))?
                );
            } else {
                print!("{}", report.table());
            }
            Ok(if report.requests > 0 {
                Outcome::Ok
            } else {
                Outcome::Negative
            })
        }
        Command::Status { raw, conn } => {
            let status = AdminClient::new(conn.channel()?)
                .cluster_status(proto::ClusterStatusRequest {})
                .await
                .map_err(request_error(&conn.endpoint, conn.timeout))?
                .into_inner();
            if raw {
                println!("{status:#?}");
            } else {
                print!("{}", format_status(&status));
            }
            Ok(Outcome::Ok)
        }
        Command::Health { conn } => {
            let status = HealthClient::new(conn.channel()?)
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(request_error(&conn.endpoint, conn.timeout))?
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

/// Renders ClusterStatus as a header line and a table of peers.
pub fn format_status(s: &proto::ClusterStatusResponse) -> String {
    let mut out = format!(
        "node {} (cluster {}): {}\nkeys {}  last_seq {}  log_first_seq {}  fingerprint {:016x}\n",
        s.node_id, s.cluster_id, s.health, s.keys, s.last_seq, s.log_first_seq, s.fingerprint
    );
    // Last, so that the header and the table keep their lines for scripts.
    let security = if s.security.is_empty() {
        String::new()
    } else {
        format!("security: {}\n", s.security)
    };
    if s.peers.is_empty() {
        out.push_str("no peers configured\n");
        out.push_str(&security);
        return out;
    }
    let header = [
        "PEER",
        "URL",
        "CONNECTED",
        "PHASE",
        "ACKED",
        "BACKLOG",
        "BACKLOG_BYTES",
        "LAG_S",
        "REPAIRS",
        "REPAIRED",
        "REFUSED",
        "TOMBS_WAITING",
        "LAST_ERROR",
    ];
    let rows: Vec<Vec<String>> = s
        .peers
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.url.clone(),
                if p.connected { "yes" } else { "no" }.into(),
                p.phase.clone(),
                p.acked_seq.to_string(),
                p.backlog_entries.to_string(),
                p.backlog_bytes.to_string(),
                format!("{:.1}", p.lag_seconds),
                p.repair_rounds.to_string(),
                p.keys_repaired.to_string(),
                p.refused.to_string(),
                p.tombstones_waiting.to_string(),
                if p.last_error.is_empty() {
                    "-".into()
                } else {
                    p.last_error.clone()
                },
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut l = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ");
        l.truncate(l.trim_end().len());
        l.push('\n');
        l
    };
    out.push_str(&line(header.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out.push_str(&security);
    out
}

/// Whether `meshkv get` ends its output with a newline of its own: only on a
/// terminal, and only after text that lacks one. Redirected output is the
/// value byte for byte; binary data never gets a byte added.
fn needs_newline(value: &[u8], terminal: bool) -> bool {
    terminal && !value.is_empty() && !value.ends_with(b"\n") && std::str::from_utf8(value).is_ok()
}

fn show_version(v: Option<&proto::Version>) -> String {
    v.map(|v| format!("{}@{}", v.hlc, v.node_id))
        .unwrap_or_else(|| "(no version)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_token() {
        let cli =
            Cli::try_parse_from(["meshkv", "get", "k", "--token", "sekrit-sekrit-sekrit"]).unwrap();
        let text = format!("{cli:?}");
        assert!(!text.contains("sekrit"), "{text}");
        assert!(text.contains("redacted"), "{text}");
        let auth = Credentials {
            token: Some("sekrit-sekrit-sekrit".into()),
            ..Default::default()
        }
        .auth()
        .unwrap();
        assert!(!format!("{auth:?}").contains("sekrit"));
    }

    #[test]
    fn failed_requests_read_as_one_sentence() {
        use tonic::{Code, Status};
        let ep = "http://n1:50051";
        let t = Duration::from_secs(10);
        let say = |s: Status| describe_status(ep, t, &s);
        let refused = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        assert_eq!(
            say(refused),
            "cannot connect to http://n1:50051: connection refused \
             (is a node running there? set --endpoint)"
        );
        let line = say(Status::cancelled("Timeout expired"));
        assert!(line.contains("did not answer within 10s"), "{line}");
        let line = say(Status::invalid_argument("key is empty"));
        assert_eq!(line, "http://n1:50051 refused the request: key is empty");
        let line = say(Status::resource_exhausted("overloaded: queue full"));
        assert!(line.contains("retry later"), "{line}");
        let line = say(Status::new(
            Code::Unimplemented,
            "grpc-status header missing, mapped from HTTP status code 404",
        ));
        assert!(
            line.contains("does not answer like a meshkv node"),
            "{line}"
        );
        for s in [
            Status::internal("x"),
            Status::unavailable("shutting down"),
            Status::out_of_range("decoded message length too large"),
        ] {
            let line = say(s);
            assert!(line.starts_with(ep) && !line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn endpoints_must_be_http_urls() {
        assert!(parse_endpoint("http://127.0.0.1:50051").is_ok());
        assert!(parse_endpoint("https://node2:443").is_ok());
        for bad in ["foo", "127.0.0.1:50051", "ftp://h:1", "http://", ""] {
            let err = parse_endpoint(bad).unwrap_err();
            assert!(err.contains("http://HOST:PORT"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn get_adds_a_newline_only_to_text_on_a_terminal() {
        assert!(needs_newline(b"hello", true));
        assert!(!needs_newline(b"hello", false), "redirected: exact bytes");
        assert!(!needs_newline(b"hello\n", true), "already ends in one");
        assert!(!needs_newline(b"", true));
        assert!(!needs_newline(&[0xff, 0xfe, 0x00], true), "binary");
    }

    #[test]
    fn durations_take_units_and_bare_numbers_are_seconds() {
        let ms = Duration::from_millis;
        let cases = [
            ("5s", ms(5_000)),
            ("500ms", ms(500)),
            ("1ms", ms(1)),
            ("2m", ms(120_000)),
            ("1h", ms(3_600_000)),
            ("10", ms(10_000)),
            ("0.5", ms(500)),
            ("1.5s", ms(1_500)),
            ("0.25m", ms(15_000)),
            ("0", Duration::ZERO),
            (" 3 s ", ms(3_000)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn bad_durations_are_refused_with_the_accepted_forms() {
        for text in [
            "", "s", "5x", "5sec", "-1s", "1e3", "1.2.3s", "5 m s", "1m30s", "ms5",
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(&format!("{text:?}")), "{err}");
            assert!(err.contains("500ms, 5s, 2m"), "{err}");
        }
        let err = parse_duration("99999999999999999h").unwrap_err();
        assert!(err.contains("too long"), "{err}");
    }

    #[test]
    fn duration_flags_use_the_parser() {
        let cli = Cli::try_parse_from(["meshkv", "get", "k", "--timeout", "250ms"]).unwrap();
        let Some(Command::Get { conn, .. }) = cli.command else {
            panic!("not get");
        };
        assert_eq!(conn.timeout, Duration::from_millis(250));
        // The old spelling and its bare seconds still work.
        let cli = Cli::try_parse_from(["meshkv", "health", "--timeout-secs", "2"]).unwrap();
        let Some(Command::Health { conn }) = cli.command else {
            panic!("not health");
        };
        assert_eq!(conn.timeout, Duration::from_secs(2));
        let err = Cli::try_parse_from(["meshkv", "get", "k", "--timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("not a duration"), "{err}");
    }
}
