//! The replication-lag probe: how long until a write to one node is visible
//! on the others.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use meshkv_client::{Client, ReadOptions, WriteOptions};
use tokio_util::sync::CancellationToken;

/// Give up on a probe after this long and count it as missed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Time-to-visible samples, in microseconds, and probes never seen.
pub struct LagSamples {
    pub hist: Histogram<u64>,
    pub missed: u64,
}

/// Probes every `interval` until `stop`: write to `first`, then read each of
/// `others` back to back until the key appears there.
pub async fn probe(
    first: Client,
    others: Vec<Client>,
    interval: Duration,
    stop: CancellationToken,
) -> LagSamples {
    let mut hist = super::report::histogram();
    let mut missed = 0;
    let run = std::process::id();
    for n in 0u64.. {
        if stop.is_cancelled() {
            break;
        }
        let key = format!("bench-lag-{run}-{n}");
        let wrote = first
            .write(key.clone(), b"lag".to_vec(), WriteOptions::default())
            .await;
        if wrote.is_err() {
            missed += others.len() as u64;
        } else {
            let acked = Instant::now();
            let waits: Vec<_> = others
                .iter()
                .map(|c| tokio::spawn(visible(c.clone(), key.clone(), acked)))
                .collect();
            for w in waits {
                match w.await {
                    Ok(Some(d)) => {
                        let _ = hist.record((d.as_micros() as u64).max(1));
                    }
                    _ => missed += 1,
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
        }
    }
    LagSamples { hist, missed }
}

/// Reads `key` until found; the time since `since`, or None after the timeout.
async fn visible(client: Client, key: String, since: Instant) -> Option<Duration> {
    loop {
        let found = client
            .read(key.clone(), ReadOptions::default())
            .await
            .is_ok_and(|entry| entry.is_some());
        if found {
            return Some(since.elapsed());
        }
        if since.elapsed() > PROBE_TIMEOUT {
            return None;
        }
    }
}
