//! Runs the workers, the progress bar and the lag probe; merges the results.

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use meshkv_client::{Client, Consistency, ReadOptions, WriteOptions};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use crate::cli::{
    bench::{
        etcd::{kv_client::KvClient as EtcdClient, PutRequest, RangeRequest},
        lag,
        report::{histogram, LagReport, Percentiles, Report},
        BenchArgs, KeyPattern, Target,
    },
    connect::{connect_error, request_error, CONNECT_TIMEOUT},
    error::{Error, Result},
};

/// What one worker measured.
struct WorkerStats {
    hist: Histogram<u64>,
    writes: u64,
    reads: u64,
    errors: BTreeMap<String, u64>,
}

/// One connection to one endpoint: meshkv's client (for the `meshkv` and
/// `health` targets), or etcd's generated stub.
#[derive(Clone)]
enum Conn {
    Meshkv(Client),
    Etcd(EtcdClient<Channel>),
}

/// What a worker drives over its connection.
struct Driver {
    target: Target,
    conn: Conn,
}

fn key(n: u64) -> String {
    format!("bench-{n:010}")
}

/// A failed request's label in the report: its status code.
fn code(err: meshkv_client::Error) -> String {
    match err.code() {
        Some(code) => format!("{code:?}"),
        None => "Connect".into(),
    }
}

impl Driver {
    async fn write(&mut self, keys: &[u64], value: &[u8]) -> Result<(), String> {
        match (&mut self.conn, self.target) {
            (Conn::Meshkv(c), Target::Health) => c.health().await.map(drop).map_err(code),
            (Conn::Meshkv(c), _) if keys.len() == 1 => c
                .write(key(keys[0]), value.to_vec(), WriteOptions::default())
                .await
                .map(drop)
                .map_err(code),
            (Conn::Meshkv(c), _) => {
                let items = keys.iter().map(|k| (key(*k), value.to_vec()));
                c.write_batch(items, Consistency::One)
                    .await
                    .map(drop)
                    .map_err(code)
            }
            (Conn::Etcd(c), _) => c
                .put(PutRequest {
                    key: key(keys[0]).into_bytes(),
                    value: value.to_vec(),
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|s| format!("{:?}", s.code())),
        }
    }

    async fn read(&mut self, k: u64) -> Result<(), String> {
        match (&mut self.conn, self.target) {
            (Conn::Meshkv(c), Target::Health) => c.health().await.map(drop).map_err(code),
            (Conn::Meshkv(c), _) => c
                .read(key(k), ReadOptions::default())
                .await
                .map(drop)
                .map_err(code),
            (Conn::Etcd(c), _) => c
                .range(RangeRequest {
                    key: key(k).into_bytes(),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .map(drop)
                .map_err(|s| format!("{:?}", s.code())),
        }
    }
}

/// Opens `connections` connections to each endpoint, failing fast with the
/// endpoint's name if one cannot be reached. Each meshkv client makes one
/// attempt per request, so that overload shows up in the report as
/// RESOURCE_EXHAUSTED instead of being retried away.
async fn connect(args: &BenchArgs) -> Result<Vec<Vec<Conn>>> {
    let mut all = Vec::new();
    for url in &args.endpoints {
        let mut conns = Vec::new();
        for _ in 0..args.connections {
            conns.push(match args.target {
                Target::Meshkv | Target::Health => Conn::Meshkv(
                    args.credentials
                        .builder(std::slice::from_ref(url))?
                        .connect_timeout(CONNECT_TIMEOUT)
                        .timeout(args.timeout)
                        .max_attempts(1)
                        .connect()
                        .await
                        .map_err(request_error(url, args.timeout))?,
                ),
                Target::Etcd => Conn::Etcd(EtcdClient::new(etcd_channel(url, args).await?)),
            });
        }
        all.push(conns);
    }
    Ok(all)
}

/// A plaintext channel to an etcd member, as `bench/compare.sh` runs them.
async fn etcd_channel(url: &str, args: &BenchArgs) -> Result<Channel> {
    if !url.starts_with("http://") {
        return Err(Error::Usage(format!(
            "--target etcd drives plaintext members (http://), not {url}"
        )));
    }
    let endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| Error::Usage(format!("--endpoint {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(args.timeout)
        .tcp_nodelay(true);
    endpoint.connect().await.map_err(connect_error(url))
}

/// Runs the benchmark and returns its report.
pub async fn run(args: BenchArgs) -> Result<Report> {
    args.validate()?;
    let channels = connect(&args).await?;
    // Worker w uses endpoint w % E, connection (w / E) % C: even spread over both.
    let n_endpoints = channels.len();
    let done = Arc::new(AtomicU64::new(0));
    let issued = Arc::new(AtomicU64::new(0));
    let next_key = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();

    let bar = progress_bar(&args);

    let lag_task = match &channels[0][0] {
        Conn::Meshkv(first) if args.measures_lag() => {
            let others = channels[1..]
                .iter()
                .filter_map(|c| match &c[0] {
                    Conn::Meshkv(c) => Some(c.clone()),
                    Conn::Etcd(_) => None,
                })
                .collect();
            Some(tokio::spawn(lag::probe(
                first.clone(),
                others,
                args.probe_interval(),
                stop.clone(),
            )))
        }
        _ => None,
    };

    let started = Instant::now();
    let deadline = args.requests.is_none().then(|| started + args.duration);
    let pace = args
        .rate
        .map(|r| Duration::from_secs_f64(args.concurrency as f64 / r));
    let mut workers = Vec::with_capacity(args.concurrency);
    for w in 0..args.concurrency {
        let conn = channels[w % n_endpoints][(w / n_endpoints) % args.connections].clone();
        let counters = Counters {
            issued: issued.clone(),
            done: done.clone(),
            next_key: next_key.clone(),
        };
        let args = args.clone();
        workers.push(tokio::spawn(async move {
            worker(
                w,
                Driver {
                    target: args.target,
                    conn,
                },
                args,
                deadline,
                pace,
                counters,
            )
            .await
        }));
    }

    let ticker = tokio::spawn(tick(
        bar.clone(),
        done.clone(),
        stop.clone(),
        args.requests,
        started,
    ));

    let (hist, writes, reads, errors) = gather(workers).await?;
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let _ = ticker.await;
    bar.finish_and_clear();
    let lag = match lag_task {
        Some(t) => Some(lag_report(t).await?),
        None => None,
    };
    let requests = writes + reads;
    Ok(Report {
        target: args.target,
        endpoints: n_endpoints,
        connections_per_endpoint: args.connections,
        concurrency: args.concurrency,
        batch: args.batch,
        value_size: args.value_size,
        seconds,
        requests,
        requests_per_sec: requests as f64 / seconds,
        writes_per_sec: (writes * args.batch as u64) as f64 / seconds,
        reads_per_sec: reads as f64 / seconds,
        errors,
        latency_ms: Percentiles::of(&hist),
        lag,
    })
}

/// A bar of requests done, or of tenths of the duration elapsed.
fn progress_bar(args: &BenchArgs) -> ProgressBar {
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        match args.requests {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new((args.duration.as_secs_f64() * 10.0).ceil() as u64),
        }
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {percent:>3}% {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar
}

/// Moves the bar every 200 ms, with the rate since the last move.
async fn tick(
    bar: ProgressBar,
    done: Arc<AtomicU64>,
    stop: CancellationToken,
    requests: Option<u64>,
    started: Instant,
) {
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let n = done.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, n);
        bar.set_position(match requests {
            Some(_) => n,
            None => (started.elapsed().as_secs_f64() * 10.0) as u64,
        });
        bar.set_message(format!("{n} requests, {rate:.0}/s"));
    }
}

/// The workers' merged latencies, writes, reads and errors by code.
async fn gather(
    workers: Vec<tokio::task::JoinHandle<WorkerStats>>,
) -> Result<(Histogram<u64>, u64, u64, BTreeMap<String, u64>)> {
    let mut hist = histogram();
    let (mut writes, mut reads) = (0u64, 0u64);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for w in workers {
        let s = w
            .await
            .map_err(|e| Error::Request(format!("a bench worker failed: {e}")))?;
        hist.add(&s.hist)
            .map_err(|e| Error::Request(format!("cannot merge the latencies: {e}")))?;
        writes += s.writes;
        reads += s.reads;
        for (code, n) in s.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    Ok((hist, writes, reads, errors))
}

/// The lag probe's samples as a report.
async fn lag_report(task: tokio::task::JoinHandle<lag::LagSamples>) -> Result<LagReport> {
    let s = task
        .await
        .map_err(|e| Error::Request(format!("the lag probe failed: {e}")))?;
    Ok(LagReport {
        samples: s.hist.len(),
        missed: s.missed,
        p50_ms: s.hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: s.hist.value_at_quantile(0.99) as f64 / 1000.0,
        max_ms: s.hist.max() as f64 / 1000.0,
    })
}

/// The counters workers share: requests started and finished, next sequential key.
struct Counters {
    issued: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    next_key: Arc<AtomicU64>,
}

async fn worker(
    id: usize,
    mut client: Driver,
    args: BenchArgs,
    deadline: Option<Instant>,
    pace: Option<Duration>,
    counters: Counters,
) -> WorkerStats {
    let Counters {
        issued,
        done,
        next_key,
    } = counters;
    let pick = |rng: &mut SmallRng| match args.keys {
        KeyPattern::Random => rng.random_range(0..args.keyspace),
        KeyPattern::Sequential => next_key.fetch_add(1, Ordering::Relaxed) % args.keyspace,
    };
    let mut rng = SmallRng::seed_from_u64(0x6d65_7368 ^ id as u64);
    let value = vec![b'v'; args.value_size];
    let mut keys = vec![0u64; args.batch];
    let mut stats = WorkerStats {
        hist: histogram(),
        writes: 0,
        reads: 0,
        errors: BTreeMap::new(),
    };
    let mut tick = pace.map(|d| {
        let mut i = tokio::time::interval(d);
        i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        i
    });
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if args
            .requests
            .is_some_and(|n| issued.fetch_add(1, Ordering::Relaxed) >= n)
        {
            break;
        }
        if let Some(t) = tick.as_mut() {
            t.tick().await;
        }
        let is_read = args.read_ratio > 0.0 && rng.random::<f64>() < args.read_ratio;
        let t0 = Instant::now();
        let result = if is_read {
            client.read(pick(&mut rng)).await
        } else {
            for k in keys.iter_mut() {
                *k = pick(&mut rng);
            }
            client.write(&keys, &value).await
        };
        match result {
            Ok(()) => {
                let _ = stats.hist.record((t0.elapsed().as_micros() as u64).max(1));
                if is_read {
                    stats.reads += 1;
                } else {
                    stats.writes += 1;
                }
            }
            Err(code) => *stats.errors.entry(code).or_default() += 1,
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    stats
}
