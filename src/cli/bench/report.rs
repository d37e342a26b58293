//! The benchmark's report: merged latencies, rates and errors, as a table or JSON.

use std::{collections::BTreeMap, fmt::Write};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::bench::Target;

/// A latency histogram in microseconds, from 1 µs to 10 minutes at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    /// From a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }
}

/// Replication lag: time from a write's acknowledgement on the first endpoint
/// until another endpoint returns it, over every probe and every other endpoint.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LagReport {
    pub samples: u64,
    pub missed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub target: Target,
    pub endpoints: usize,
    pub connections_per_endpoint: usize,
    pub concurrency: usize,
    pub batch: usize,
    pub value_size: usize,
    pub seconds: f64,
    /// Requests that succeeded (a WriteBatch counts once).
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Keys written per second (batch × successful write requests).
    pub writes_per_sec: f64,
    pub reads_per_sec: f64,
    /// Failed requests by gRPC status code.
    pub errors: BTreeMap<String, u64>,
    pub latency_ms: Percentiles,
    pub lag: Option<LagReport>,
}

impl Report {
    /// A readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let target = match self.target {
            Target::Meshkv => "meshkv",
            Target::Health => "health check",
            Target::Etcd => "etcd",
        };
        let _ = writeln!(
            s,
            "target       {target}: {} endpoint(s) x {} connection(s), concurrency {}{}",
            self.endpoints,
            self.connections_per_endpoint,
            self.concurrency,
            if self.batch > 1 {
                format!(", {} keys per batch", self.batch)
            } else {
                String::new()
            }
        );
        let _ = writeln!(s, "duration     {:.1} s", self.seconds);
        let _ = writeln!(
            s,
            "requests     {} ok ({:.0}/s)",
            self.requests, self.requests_per_sec
        );
        if self.target != Target::Health {
            let _ = writeln!(
                s,
                "throughput   {:.0} writes/s (keys), {:.0} reads/s, {} B values",
                self.writes_per_sec, self.reads_per_sec, self.value_size
            );
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(s, "errors       {errors}");
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency      p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
            l.p50, l.p99, l.p999, l.max
        );
        if let Some(lag) = &self.lag {
            let _ = writeln!(
                s,
                "repl. lag    p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  ({} samples, {} missed)",
                lag.p50_ms, lag.p99_ms, lag.max_ms, lag.samples, lag.missed
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_in_ms() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            h.record(us).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!((p.p50 - 0.5).abs() < 0.01, "{p:?}");
        assert!((p.p99 - 0.99).abs() < 0.01, "{p:?}");
        assert!((p.max - 1.0).abs() < 0.01, "{p:?}");
    }

    #[test]
    fn the_table_names_errors_and_lag() {
        let r = Report {
            target: Target::Meshkv,
            endpoints: 3,
            connections_per_endpoint: 4,
            concurrency: 64,
            batch: 1,
            value_size: 100,
            seconds: 2.0,
            requests: 10,
            requests_per_sec: 5.0,
            writes_per_sec: 5.0,
            reads_per_sec: 0.0,
            errors: BTreeMap::from([("Unavailable".to_string(), 2)]),
            latency_ms: Percentiles::of(&histogram()),
            lag: Some(LagReport {
                samples: 4,
                missed: 0,
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
            }),
        };
        let t = r.table();
        assert!(t.contains("Unavailable 2"), "{t}");
        assert!(t.contains("repl. lag"), "{t}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["target"], "meshkv");
        assert_eq!(json["lag"]["samples"], 4);
    }
}
