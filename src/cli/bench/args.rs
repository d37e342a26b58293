//! The options of `meshkv bench`.

use std::time::Duration;

use clap::{Args, ValueEnum};

use meshkv::api::kv::MAX_WRITE_BATCH;

use crate::cli::{
    connect::{parse_duration, parse_endpoint},
    error::{Error, Result},
};

/// What the benchmark drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// meshkv's KV service: Write, Read, or WriteBatch with `--batch`.
    Meshkv,
    /// `grpc.health.v1.Health/Check`: the transport ceiling of a node.
    Health,
    /// etcd v3's KV service: Put, and Range (serializable) for reads.
    Etcd,
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyPattern {
    /// Uniformly at random from the keyspace.
    Random,
    /// 0, 1, 2, ... over all workers (wrapping at the keyspace): every key once.
    Sequential,
}

/// Options of `meshkv bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// A node's gRPC URL; repeat for a cluster. Workers spread over all of them.
    #[arg(
        long = "endpoint",
        default_value = "http://127.0.0.1:50051",
        value_parser = parse_endpoint
    )]
    pub endpoints: Vec<String>,
    /// What to drive.
    #[arg(long, value_enum, default_value_t = Target::Meshkv)]
    pub target: Target,
    /// Requests in flight at once (one worker each).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections per endpoint; workers share them round-robin.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to run (unless --requests is given): 30s, 2m; a bare number is seconds.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Distinct keys, named bench-0000000000 upwards.
    #[arg(long, default_value_t = 100_000)]
    pub keyspace: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = KeyPattern::Random)]
    pub keys: KeyPattern,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Fraction of requests that are reads: 0 writes only, 1 reads only.
    #[arg(long, default_value_t = 0.0)]
    pub read_ratio: f64,
    /// Keys per WriteBatch request (1: unary Write). meshkv only.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Target requests per second over all workers (default: as fast as possible).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Replication-lag probe interval, e.g. 5ms (0: off). Needs 2+ meshkv endpoints.
    #[arg(long, value_parser = parse_duration, default_value = "20ms")]
    pub lag_interval: Duration,
    /// The probe interval as a number of milliseconds: the older spelling of
    /// --lag-interval, kept for scripts that use it.
    #[arg(long, hide = true, conflicts_with = "lag_interval")]
    pub lag_interval_ms: Option<u64>,
    /// Deadline of each request: 500ms, 5s; a bare number is seconds.
    #[arg(
        long,
        alias = "timeout-secs",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    pub timeout: Duration,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub credentials: crate::cli::connect::Credentials,
}

impl BenchArgs {
    /// Refuses options that cannot run, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Usage(m));
        if self.endpoints.is_empty() {
            return bad("give at least one --endpoint".into());
        }
        if self.concurrency == 0 || self.connections == 0 {
            return bad("--concurrency and --connections must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return bad(format!("--read-ratio {} is outside 0..=1", self.read_ratio));
        }
        if self.batch == 0 || self.batch > MAX_WRITE_BATCH {
            return bad(format!(
                "--batch {} is outside 1..={MAX_WRITE_BATCH}",
                self.batch
            ));
        }
        if self.batch > 1 && self.target != Target::Meshkv {
            return bad("--batch is for --target meshkv only".into());
        }
        if self.keyspace == 0 {
            return bad("--keyspace must be at least 1".into());
        }
        if self.requests.is_none() && self.duration.is_zero() {
            return bad("--duration must be more than 0".into());
        }
        if self.timeout.is_zero() {
            return bad("--timeout must be more than 0".into());
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return bad("--rate must be positive".into());
        }
        Ok(())
    }

    /// The lag probe's interval, from whichever flag gave it.
    pub fn probe_interval(&self) -> Duration {
        self.lag_interval_ms
            .map_or(self.lag_interval, Duration::from_millis)
    }

    /// True if the lag probe runs.
    pub fn measures_lag(&self) -> bool {
        self.target == Target::Meshkv
            && self.endpoints.len() > 1
            && !self.probe_interval().is_zero()
            && self.read_ratio < 1.0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use crate::cli::{Cli, Command};

    fn bench(args: &[&str]) -> Result<super::BenchArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["meshkv", "bench"][..], args].concat())?;
        match cli.command {
            Some(Command::Bench(b)) => Ok(b),
            other => panic!("not bench: {other:?}"),
        }
    }

    #[test]
    fn duration_flags_take_units() {
        let b = bench(&[
            "--duration",
            "5s",
            "--lag-interval",
            "5ms",
            "--timeout",
            "2m",
        ])
        .unwrap();
        assert_eq!(b.duration, Duration::from_secs(5));
        assert_eq!(b.probe_interval(), Duration::from_millis(5));
        assert_eq!(b.timeout, Duration::from_secs(120));
        b.validate().unwrap();

        // The defaults, and bare numbers as before: seconds, and the old
        // millisecond flag.
        let b = bench(&[]).unwrap();
        assert_eq!(b.duration, Duration::from_secs(10));
        assert_eq!(b.probe_interval(), Duration::from_millis(20));
        let b = bench(&[
            "--duration",
            "8",
            "--lag-interval-ms",
            "5",
            "--timeout-secs",
            "3",
        ])
        .unwrap();
        assert_eq!(b.duration, Duration::from_secs(8));
        assert_eq!(b.probe_interval(), Duration::from_millis(5));
        assert_eq!(b.timeout, Duration::from_secs(3));

        let err = bench(&["--duration", "5 seconds"]).unwrap_err().to_string();
        assert!(
            err.contains("--duration") && err.contains("not a duration"),
            "{err}"
        );
        assert!(bench(&["--lag-interval", "5ms", "--lag-interval-ms", "5"]).is_err());
        let zero = bench(&["--duration", "0s"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(zero.to_string().contains("--duration"), "{zero}");
    }
}
