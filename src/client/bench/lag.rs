//! The replication-lag probe: how long until a write to one node is visible
//! on the others.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

use crate::{
    client::connect::AuthChannel,
    proto::{self, kv_client::KvClient},
};

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
    first: AuthChannel,
    others: Vec<AuthChannel>,
    interval: Duration,
    stop: CancellationToken,
) -> LagSamples {
    let mut hist = super::report::histogram();
    let mut missed = 0;
    let mut writer = KvClient::new(first);
    let run = std::process::id();
    for n in 0u64.. {
        if stop.is_cancelled() {
            break;
        }
        let key = format!("bench-lag-{run}-{n}");
        let wrote = writer
            .write(proto::WriteRequest {
                key: key.clone(),
                value: b"lag".to_vec(),
                ..Default::default()
            })
            .await;
        if wrote.is_err() {
            missed += others.len() as u64;
        } else {
            let acked = Instant::now();
            let waits: Vec<_> = others
                .iter()
                .map(|ch| tokio::spawn(visible(KvClient::new(ch.clone()), key.clone(), acked)))
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
async fn visible(
    mut client: KvClient<AuthChannel>,
    key: String,
    since: Instant,
) -> Option<Duration> {
    loop {
        let found = client
            .read(proto::ReadRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner().found)
            .unwrap_or(false);
        if found {
            return Some(since.elapsed());
        }
        if since.elapsed() > PROBE_TIMEOUT {
            return None;
        }
    }
}
