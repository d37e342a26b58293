//! Running one seed: three meshkv nodes on turmoil, a client driving the
//! workload, faults applied and healed on schedule, then the checker.

use std::{
    cell::RefCell,
    collections::BTreeMap,
    net::SocketAddr,
    rc::Rc,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, UNIX_EPOCH},
};

use meshkv::{
    clock::PhysicalClock,
    config::{Config, FsyncMode, PeerConfig},
    node::{serve_with, Listener, Listeners, Seams},
    proto::{self, admin_client::AdminClient, kv_client::KvClient},
    storage::blocking::{Blocking, ScanCost},
};
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use xxhash_rust::xxh3::Xxh3;

use crate::{
    net,
    scenario::{Fault, OpKind, Scenario, HEALED_MS, NODES},
};

/// Convergence must come within this long after the last fault heals.
pub const CONVERGE_WITHIN: Duration = Duration::from_secs(30);
const PORT: u16 = 50051;
/// What scans cost in simulated time: about what this project's 2-core test
/// machine measured for a full digest rebuild over 2,000,000 keys of 1 KiB
/// (10.8 s, some 5 µs per entry), split between entries and value bytes.
const SCAN_COST: ScanCost = ScanCost {
    ns_per_entry: 1_000,
    ns_per_kib: 4_000,
};

/// A node's wall clock: simulated time, plus a skew and any jumps.
#[derive(Debug)]
struct SimClock {
    offset_ms: Arc<AtomicI64>,
}

impl PhysicalClock for SimClock {
    fn now_ms(&self) -> u64 {
        let now = turmoil::since_epoch().unwrap_or_default().as_millis() as i64;
        (now + self.offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }
}

/// What a seed's run produced.
#[derive(Debug)]
pub struct Outcome {
    /// A hash of every observable event, in order: the same seed must give
    /// the same trace.
    pub trace: u64,
    /// Simulated time from the last heal to convergence.
    pub converged_after: Duration,
    /// Client operations acknowledged, of those attempted.
    pub acked: usize,
    pub attempted: usize,
    /// The trace itself, for finding where two runs part.
    pub lines: Vec<String>,
}

/// One acknowledged write or delete, as the checker needs it.
#[derive(Debug, Clone)]
struct Acked {
    key: String,
    version: (u64, String),
    value: Option<Vec<u8>>,
}

#[derive(Default)]
struct Log {
    trace: Vec<String>,
    acked: Vec<Acked>,
    /// Keys a delete was attempted on, acknowledged or not.
    delete_tried: std::collections::BTreeSet<String>,
    attempted: usize,
    converged_after: Option<Duration>,
}

fn config(s: &Scenario, i: usize, dir: &std::path::Path) -> Config {
    let k = &s.knobs[i];
    let mut c = Config {
        node_id: NODES[i].into(),
        listen: SocketAddr::from(([0, 0, 0, 0], PORT)),
        data_dir: dir.to_path_buf(),
        peers: NODES
            .iter()
            .filter(|n| **n != NODES[i])
            .map(|n| PeerConfig {
                id: n.to_string(),
                url: format!("http://{n}:{PORT}"),
            })
            .collect(),
        ..Config::default()
    };
    c.storage.fsync = FsyncMode::Always;
    c.storage.memtable_mb = 1;
    c.storage.cache_mb = 1;
    c.limits.max_value_bytes = k.max_value_bytes;
    let r = &mut c.replication;
    r.max_log_bytes = k.max_log_bytes;
    r.anti_entropy_interval_secs = k.anti_entropy_interval_secs;
    r.tombstone_ttl_secs = k.tombstone_ttl_secs;
    r.rpc_timeout_ms = s.rpc_timeout_ms;
    r.backoff_min_ms = 50;
    r.backoff_max_ms = 1_000;
    c
}

fn version_of(v: &Option<proto::Version>) -> (u64, String) {
    v.as_ref()
        .map(|v| (v.hlc, v.node_id.clone()))
        .unwrap_or_default()
}

thread_local! {
    /// Panics on this thread so far. A simulation runs all its nodes on the
    /// thread that runs it, so a node's panic lands here even when a task
    /// catches it and the node limps on.
    static PANICS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

thread_local! {
    /// Which simulated host each tokio runtime belongs to: turmoil gives
    /// every host a runtime of its own (a new one at each restart), all on
    /// the thread that runs the simulation.
    static HOSTS: RefCell<Vec<(tokio::runtime::Id, &'static str)>> =
        const { RefCell::new(Vec::new()) };
}

/// The simulated host running the current task, for log lines.
pub fn current_host() -> &'static str {
    tokio::runtime::Handle::try_current()
        .ok()
        .and_then(|h| {
            let id = h.id();
            HOSTS.with(|m| {
                m.borrow()
                    .iter()
                    .rev()
                    .find(|(i, _)| *i == id)
                    .map(|(_, n)| *n)
            })
        })
        .unwrap_or("-")
}

/// Counts every panic on the thread it happens on, then reports it as usual.
fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.set(p.get() + 1));
            default(info);
        }));
    });
}

/// Runs `seed` to completion; an error says which check failed.
pub fn run(seed: u64) -> Result<Outcome, String> {
    run_scenario(seed, Scenario::from_seed(seed))
}

/// Runs one simulation of `s`, with turmoil seeded by `seed`.
pub fn run_scenario(seed: u64, s: Scenario) -> Result<Outcome, String> {
    count_panics();
    let panics_before = PANICS.with(|p| p.get());
    let outcome = run_checked(seed, s)?;
    let panics = PANICS.with(|p| p.get()) - panics_before;
    if panics > 0 {
        return Err(format!("{panics} panic(s) in the simulated nodes"));
    }
    Ok(outcome)
}

fn run_checked(seed: u64, s: Scenario) -> Result<Outcome, String> {
    let root = tempfile::Builder::new()
        .prefix("meshkv-sim-")
        .tempdir_in(if std::path::Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .map_err(|e| format!("tempdir: {e}"))?;

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(1_780_000_000))
        .tick_duration(Duration::from_millis(2))
        .simulation_duration(Duration::from_millis(HEALED_MS) + CONVERGE_WITHIN * 2)
        .min_message_latency(Duration::ZERO)
        .max_message_latency(Duration::from_millis(s.max_latency_ms))
        .repair_rate(0.5)
        .build();

    let offsets: Vec<Arc<AtomicI64>> = s
        .knobs
        .iter()
        .map(|k| Arc::new(AtomicI64::new(k.skew_ms)))
        .collect();
    for (i, name) in NODES.iter().enumerate() {
        let cfg = config(&s, i, &root.path().join(name));
        let seams = Seams {
            clock: Arc::new(SimClock {
                offset_ms: Arc::clone(&offsets[i]),
            }),
            connect: Arc::new(|p: &PeerConfig| net::channel(&p.url)),
            seed: Some(seed ^ (i as u64 + 1)),
            blocking: Blocking::Inline(SCAN_COST),
        };
        sim.host(*name, move || {
            let (cfg, seams) = (cfg.clone(), seams.clone());
            async move {
                let id = tokio::runtime::Handle::current().id();
                HOSTS.with(|m| m.borrow_mut().push((id, name)));
                let listener = turmoil::net::TcpListener::bind(cfg.listen).await?;
                let addr = cfg.listen;
                let listeners = Listeners {
                    client: Listener {
                        incoming: net::incoming(listener),
                        addr,
                    },
                    peer: None,
                };
                serve_with(cfg, listeners, CancellationToken::new(), seams).await?;
                Ok(())
            }
        });
    }

    let log = Rc::new(RefCell::new(Log::default()));
    sim.client("driver", drive(s.clone(), Rc::clone(&log)));

    // Apply and heal faults on schedule while the simulation runs.
    let mut events: Vec<(u64, bool, usize)> = Vec::new(); // (ms, heal?, fault index)
    for (i, t) in s.faults.iter().enumerate() {
        events.push((t.at_ms, false, i));
        events.push((t.heal_ms, true, i));
    }
    events.sort();
    let mut next = 0;
    loop {
        let now = sim.elapsed().as_millis() as u64;
        while next < events.len() && events[next].0 <= now {
            let (_, heal, i) = events[next];
            apply(&mut sim, &s.faults[i].fault, heal, &offsets);
            next += 1;
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("the simulation failed: {e}")),
        }
    }

    let log = log.borrow();
    let mut h = Xxh3::with_seed(seed);
    for line in &log.trace {
        h.update(line.as_bytes());
        h.update(b"\n");
    }
    Ok(Outcome {
        trace: h.digest(),
        converged_after: log.converged_after.unwrap_or_default(),
        acked: log.acked.len(),
        attempted: log.attempted,
        lines: log.trace.clone(),
    })
}

fn apply(sim: &mut turmoil::Sim, fault: &Fault, heal: bool, offsets: &[Arc<AtomicI64>]) {
    let others = |n: usize| {
        NODES
            .iter()
            .enumerate()
            .filter(move |(j, _)| *j != n)
            .map(|(_, name)| *name)
            .chain(["driver"])
    };
    match (fault, heal) {
        (Fault::Partition(a, b), false) => sim.partition(NODES[*a], NODES[*b]),
        (Fault::Partition(a, b), true) => sim.repair(NODES[*a], NODES[*b]),
        (Fault::OneWay(a, b), false) => sim.partition_oneway(NODES[*a], NODES[*b]),
        (Fault::OneWay(a, b), true) => sim.repair_oneway(NODES[*a], NODES[*b]),
        (Fault::Crash(n), false) => sim.crash(NODES[*n]),
        (Fault::Crash(n), true) => {
            if !sim.is_host_running(NODES[*n]) {
                sim.bounce(NODES[*n]);
            }
        }
        (Fault::Pause(n), false) => others(*n).for_each(|o| sim.hold(NODES[*n], o)),
        (Fault::Pause(n), true) => others(*n).for_each(|o| sim.release(NODES[*n], o)),
        (Fault::ClockJump(n, ms), false) => {
            offsets[*n].fetch_add(*ms, Ordering::Relaxed);
        }
        (Fault::ClockJump(..), true) => {}
        (Fault::Loss(rate), false) => sim.set_fail_rate(*rate),
        (Fault::Loss(_), true) => {
            sim.set_fail_rate(0.0);
            // Links a random failure left down come back now.
            for (i, a) in NODES.iter().enumerate() {
                for b in &NODES[i + 1..] {
                    sim.repair(*a, *b);
                }
                sim.repair(*a, "driver");
            }
        }
    }
}

fn kv(node: usize) -> KvClient<tonic::transport::Channel> {
    let ch = net::channel(&format!("http://{}:{PORT}", NODES[node])).expect("channel");
    KvClient::new(ch).max_decoding_message_size(64 << 20)
}

fn admin(node: usize) -> AdminClient<tonic::transport::Channel> {
    let ch = net::channel(&format!("http://{}:{PORT}", NODES[node])).expect("channel");
    AdminClient::new(ch).max_decoding_message_size(64 << 20)
}

fn timed<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
    r.set_timeout(Duration::from_secs(2));
    r
}

/// The client: the workload, then waiting for convergence, then the checks.
async fn drive(s: Scenario, log: Rc<RefCell<Log>>) -> turmoil::Result {
    let mut clients: Vec<_> = (0..NODES.len()).map(kv).collect();
    for (i, op) in s.ops.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(op.gap_ms)).await;
        let c = &mut clients[op.node];
        log.borrow_mut().attempted += 1;
        let line = match &op.kind {
            OpKind::Write(key, value) => {
                let r = c
                    .write(timed(tonic::Request::new(proto::WriteRequest {
                        key: key.clone(),
                        value: value.clone(),
                        ..Default::default()
                    })))
                    .await;
                match r {
                    Ok(r) => {
                        let version = version_of(&r.into_inner().version);
                        let line = format!("{i} write {key} {version:?}");
                        log.borrow_mut().acked.push(Acked {
                            key: key.clone(),
                            version,
                            value: Some(value.clone()),
                        });
                        line
                    }
                    Err(e) => format!("{i} write {key} failed {:?}", e.code()),
                }
            }
            OpKind::Delete(key) => {
                log.borrow_mut().delete_tried.insert(key.clone());
                let r = c
                    .delete(timed(tonic::Request::new(proto::DeleteRequest {
                        key: key.clone(),
                        expect: None,
                        ..Default::default()
                    })))
                    .await;
                match r {
                    Ok(r) => {
                        let version = version_of(&r.into_inner().version);
                        let line = format!("{i} delete {key} {version:?}");
                        log.borrow_mut().acked.push(Acked {
                            key: key.clone(),
                            version,
                            value: None,
                        });
                        line
                    }
                    Err(e) => format!("{i} delete {key} failed {:?}", e.code()),
                }
            }
            OpKind::Batch(writes) => {
                let req = proto::WriteBatchRequest {
                    writes: writes
                        .iter()
                        .map(|(k, v)| proto::WriteRequest {
                            key: k.clone(),
                            value: v.clone(),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                };
                match c.write_batch(timed(tonic::Request::new(req))).await {
                    Ok(r) => {
                        let versions = r.into_inner().versions;
                        let mut l = log.borrow_mut();
                        for ((k, v), ver) in writes.iter().zip(&versions) {
                            l.acked.push(Acked {
                                key: k.clone(),
                                version: version_of(&Some(ver.clone())),
                                value: Some(v.clone()),
                            });
                        }
                        format!("{i} batch {} ok", writes.len())
                    }
                    Err(e) => format!("{i} batch failed {:?}", e.code()),
                }
            }
        };
        if std::env::var_os("MESHKV_SIM_TRACE").is_some() {
            eprintln!(
                "[{:?}] n{} {line}",
                turmoil::sim_elapsed().unwrap_or_default(),
                op.node + 1
            );
        }
        log.borrow_mut().trace.push(line);
    }

    // Wait for the last heal, then for convergence.
    let healed = Duration::from_millis(HEALED_MS);
    let now = turmoil::sim_elapsed().unwrap_or_default();
    if now < healed {
        tokio::time::sleep(healed - now).await;
    }
    let started = turmoil::sim_elapsed().unwrap_or_default();
    let deadline = started + CONVERGE_WITHIN;
    let mut admins: Vec<_> = (0..NODES.len()).map(admin).collect();
    let dumps = loop {
        let last = match no_backlog(&mut admins).await {
            Ok(()) => {
                let mut dumps = Vec::new();
                for a in admins.iter_mut() {
                    dumps.push(dump(a).await.unwrap_or_default());
                }
                let diff = differences(&dumps);
                if diff.is_empty() {
                    break dumps;
                }
                diff
            }
            Err(why) => why,
        };
        if turmoil::sim_elapsed().unwrap_or_default() >= deadline {
            return Err(
                format!("no convergence within {CONVERGE_WITHIN:?} of the heal: {last}").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let took = turmoil::sim_elapsed().unwrap_or_default() - started;
    log.borrow_mut().converged_after = Some(took);

    let l = log.borrow();
    check(&l.acked, &l.delete_tried, &dumps[0])?;
    let mut h = Xxh3::new();
    for (k, (v, val)) in &dumps[0] {
        h.update(k.as_bytes());
        h.update(format!("{v:?}{}", val.is_some()).as_bytes());
    }
    drop(l);
    log.borrow_mut()
        .trace
        .push(format!("converged {took:?} contents {:x}", h.digest()));
    Ok(())
}

/// No node has a backlog toward any peer.
async fn no_backlog(admins: &mut [AdminClient<tonic::transport::Channel>]) -> Result<(), String> {
    for (i, a) in admins.iter_mut().enumerate() {
        let s = a
            .cluster_status(timed(tonic::Request::new(proto::ClusterStatusRequest {})))
            .await
            .map_err(|e| format!("{}: {}", NODES[i], e.message()))?
            .into_inner();
        if let Some(p) = s.peers.iter().find(|p| p.backlog_entries > 0) {
            return Err(format!(
                "{} has a backlog of {} toward {}",
                NODES[i], p.backlog_entries, p.id
            ));
        }
    }
    Ok(())
}

type Contents = BTreeMap<String, ((u64, String), Option<Vec<u8>>)>;

/// The first keys on which the nodes' contents differ, with each node's
/// version (and whether it holds a value or a tombstone); empty if none.
///
/// Converged means every node holds the same values at the same versions,
/// and the same tombstone wherever two nodes both hold one. A tombstone on
/// one node and nothing on another is allowed: tombstones are purged at
/// different moments on different nodes (each by its own TTL and clock), and
/// both read as absent.
fn differences(dumps: &[Contents]) -> String {
    let keys: std::collections::BTreeSet<&String> = dumps.iter().flat_map(|d| d.keys()).collect();
    let mut out = Vec::new();
    for k in keys {
        let per: Vec<Option<(&(u64, String), bool)>> = dumps
            .iter()
            .map(|d| d.get(k).map(|(v, val)| (v, val.is_some())))
            .collect();
        let live: Vec<_> = per.iter().map(|p| p.filter(|(_, value)| *value)).collect();
        let tombs: Vec<_> = per.iter().flatten().filter(|(_, value)| !value).collect();
        if live.windows(2).any(|w| w[0] != w[1]) || tombs.windows(2).any(|w| w[0] != w[1]) {
            out.push(format!("{}: {per:?}", &k[..k.len().min(24)]));
        }
        if out.len() == 4 {
            break;
        }
    }
    out.join("; ")
}

async fn dump(a: &mut AdminClient<tonic::transport::Channel>) -> Result<Contents, String> {
    let mut stream = a
        .dump(timed(tonic::Request::new(proto::DumpRequest {})))
        .await
        .map_err(|e| format!("dump: {e}"))?
        .into_inner();
    let mut out = BTreeMap::new();
    while let Some(m) = stream.next().await {
        let m = m.map_err(|e| format!("dump: {e}"))?;
        out.insert(m.key.clone(), (version_of(&m.version), m.value));
    }
    Ok(out)
}

/// Every acknowledged operation's effect is on the converged contents: the
/// key holds its highest acknowledged version or a higher one, with that
/// write's value; a key whose highest acknowledged operation was a delete
/// is absent (or a tombstone) unless something newer replaced it.
fn check(
    acked: &[Acked],
    delete_tried: &std::collections::BTreeSet<String>,
    contents: &Contents,
) -> Result<(), String> {
    let mut newest: BTreeMap<&str, &Acked> = BTreeMap::new();
    for a in acked {
        let e = newest.entry(&a.key).or_insert(a);
        if a.version > e.version {
            *e = a;
        }
    }
    for (key, want) in newest {
        match contents.get(key) {
            None => {
                // Only a purged delete explains a missing key.
                if want.value.is_some() && !delete_tried.contains(key) {
                    return Err(format!("{key}: acknowledged write {:?} lost", want.version));
                }
            }
            Some((have, value)) => {
                if *have < want.version {
                    return Err(format!(
                        "{key}: holds {have:?}, older than acknowledged {:?}",
                        want.version
                    ));
                }
                if *have == want.version && *value != want.value {
                    return Err(format!("{key}: value differs from the winning write"));
                }
                if want.value.is_none() && *have == want.version && value.is_some() {
                    return Err(format!("{key}: deleted at {have:?} yet holds a value"));
                }
            }
        }
    }
    Ok(())
}
