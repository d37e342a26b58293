//! Test harness: real `meshkv` processes on loopback.
//!
//! A node starts on `127.0.0.1:0`; the harness reads the bound address from
//! the node's JSON log and then waits on the gRPC health check, never on a
//! fixed sleep. Restarts reuse the address the node got the first time.
#![allow(dead_code)]

pub mod cluster;
pub mod proxy;

use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use meshkv::proto::{kv_client::KvClient, replication_client::ReplicationClient};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};

pub const BIN: &str = env!("CARGO_BIN_EXE_meshkv");

/// How long any condition may take before a test gives up.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// One running (or stopped) node process.
pub struct Node {
    pub id: String,
    pub dir: PathBuf,
    pub addr: Option<SocketAddr>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    child: Option<Child>,
    starts: u32,
    /// The CA (PEM) to trust when the node serves clients over TLS.
    ca: Option<Vec<u8>>,
}

impl Node {
    /// A node named `id` whose files live under `root/id`.
    pub fn new(root: &Path, id: &str) -> Self {
        let dir = root.join(id);
        fs::create_dir_all(&dir).unwrap();
        Self {
            id: id.to_string(),
            dir,
            addr: None,
            args: Vec::new(),
            envs: Vec::new(),
            child: None,
            starts: 0,
            ca: None,
        }
    }

    /// The node serves clients over TLS: dial it with https, trusting `ca`.
    pub fn tls(mut self, ca: &Path) -> Self {
        self.ca = Some(fs::read(ca).expect("CA file"));
        self
    }

    /// Extra `serve` flags.
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    /// Extra environment (e.g. `MESHKV_LIMITS__MAX_VALUE_BYTES`).
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.set_env(k, v);
        self
    }

    /// Sets `k` for the next start (the last value set wins).
    pub fn set_env(&mut self, k: &str, v: &str) {
        self.envs.push((k.into(), v.into()));
    }

    /// Pins the listen address before the first start (cluster tests need it).
    pub fn at(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!("node-{}.log", self.starts))
    }

    /// Starts the process and waits until it reports SERVING.
    pub async fn start(&mut self) {
        self.spawn();
        self.wait_serving().await;
    }

    /// Starts the process and learns its address, without waiting for health.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.id);
        self.starts += 1;
        let log = fs::File::create(self.log_path()).unwrap();
        let listen = self
            .addr
            .map(|a| a.to_string())
            .unwrap_or_else(|| "127.0.0.1:0".into());
        let mut cmd = isolated(Command::new(BIN));
        cmd.arg("serve")
            .args(["--node-id", &self.id])
            .args(["--listen", &listen])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--log-format", "json"])
            .args(&self.args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn meshkv"));
        if self.addr.is_none() {
            self.addr = Some(self.wait_for_listen_line());
        }
    }

    fn wait_for_listen_line(&mut self) -> SocketAddr {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = fs::read_to_string(self.log_path()).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("\"listening\"")) {
                if let Some(rest) = line.split("\"grpc\":\"").nth(1) {
                    if let Some(addr) = rest.split('"').next() {
                        return addr.parse().expect("listen address");
                    }
                }
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status} before listening:\n{text}", self.id);
            }
            assert!(
                Instant::now() < deadline,
                "{} never logged its address:\n{text}",
                self.id
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr.expect("node has an address"))
    }

    pub fn channel(&self) -> Channel {
        match &self.ca {
            Some(ca) => tls_channel_at(&self.url(), ca, None),
            None => channel_at(&self.url()),
        }
    }

    pub fn kv(&self) -> KvClient<Channel> {
        kv_at(&self.url())
    }

    /// Adds a peer to the flags used from the next start on.
    pub fn add_peer(&mut self, id: &str, url: &str) {
        self.args.push("--peer".into());
        self.args.push(format!("{id}={url}"));
    }

    /// The metrics address the node logged, if it serves metrics.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.log()
            .lines()
            .filter_map(|l| l.split("\"metrics\":\"").nth(1))
            .filter_map(|rest| rest.split('"').next())
            .find_map(|a| a.parse().ok())
    }

    pub fn replication(&self) -> ReplicationClient<Channel> {
        ReplicationClient::new(self.channel()).max_encoding_message_size(64 << 20)
    }

    /// The overall health status, or None if the node does not answer.
    pub async fn health(&self) -> Option<ServingStatus> {
        let mut client = HealthClient::new(self.channel());
        let req = tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        };
        client
            .check(req)
            .await
            .ok()
            .map(|r| r.into_inner().status())
    }

    /// Polls until the node answers the health check at all (SERVING or not).
    pub async fn wait_answering(&mut self) -> ServingStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = self.health().await {
                return s;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.id, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the health check until SERVING; fails fast if the process dies.
    pub async fn wait_serving(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.health().await == Some(ServingStatus::Serving) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited with {status}:\n{}", self.id, self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{} never became SERVING:\n{}",
                self.id,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Sends a signal by name (TERM, STOP, CONT) with the kill command.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// SIGTERM and wait for the exit status. Async, so that the test's own
    /// clients keep running and can answer the server's GOAWAY.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.id);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A lazily-connecting channel to a node URL.
pub fn channel_at(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

/// A channel over TLS that trusts `ca` and presents `identity` (cert and
/// key, PEM) if given.
pub fn tls_channel_at(url: &str, ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Channel {
    let mut tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

/// A KV client for a node URL.
pub fn kv_at(url: &str) -> KvClient<Channel> {
    KvClient::new(channel_at(url)).max_decoding_message_size(64 << 20)
}

/// Runs grpcurl to completion: (success, stdout and stderr).
pub fn grpcurl(args: &[&str]) -> (bool, String) {
    let out = Command::new("grpcurl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "grpcurl is required ({e}): run the suite with scripts/test.sh, which installs it"
            )
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs `meshkv` with arguments to completion, returning (status, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    run_cli_env(args, &[])
}

/// Like [`run_cli`], with extra environment variables.
pub fn run_cli_env(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let out = isolated(Command::new(BIN))
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `meshkv` with `stdin` as its standard input, returning (status,
/// raw stdout, stderr): for values that are not text.
pub fn run_cli_bytes(args: &[&str], stdin: &[u8]) -> (ExitStatus, Vec<u8>, String) {
    use std::io::Write;
    let mut child = isolated(Command::new(BIN))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    // Write from a thread: a large input would fill the pipe while the
    // child's own output fills the other one.
    let feeder = std::thread::spawn(move || input.write_all(&stdin));
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap().unwrap();
    (
        out.status,
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A command that inherits no `MESHKV_*` variable from the test's own
/// environment (CI sets some for the simulation), so that each test says
/// exactly what its process sees.
fn isolated(mut cmd: Command) -> Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MESHKV_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

/// The token of `role` from the tokens file (`tokens.toml`) that
/// `meshkv certs --tokens` wrote into `dir`.
pub fn token_of(dir: &Path, role: &str) -> String {
    let text = fs::read_to_string(dir.join("tokens.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    table["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["role"].as_str() == Some(role))
        .and_then(|t| t["token"].as_str())
        .unwrap()
        .to_string()
}

/// Skips a test that needs `tool` (a system package or a Python module)
/// when it is missing, saying so, unless `MESHKV_TEST_REQUIRE` (a
/// comma-separated list, as `.ci/run` sets it) names the tool: there a
/// missing tool fails the test instead of letting it pass unrun.
pub fn skip_without(tool: &str, hint: &str) {
    let required =
        std::env::var("MESHKV_TEST_REQUIRE").is_ok_and(|v| v.split(',').any(|t| t.trim() == tool));
    assert!(
        !required,
        "{tool} is missing and MESHKV_TEST_REQUIRE needs it ({hint})"
    );
    eprintln!("skipped: {tool} is missing ({hint})");
}

/// Free loopback ports for nodes that must know each other's addresses
/// before they start.
pub fn free_addrs(n: usize) -> Vec<SocketAddr> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners.iter().map(|l| l.local_addr().unwrap()).collect()
}
