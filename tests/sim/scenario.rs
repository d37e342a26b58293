//! A scenario drawn from a seed: per-node settings, faults and a workload.
//! Everything random in a simulated run comes from here or from turmoil's
//! generator, which is seeded with the same seed.

use rand::{rngs::SmallRng, Rng, SeedableRng};

/// The simulated nodes.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

/// The workload runs, and faults start, within this many simulated ms.
pub const ACTIVE_MS: u64 = 8_000;
/// Every fault is healed by then.
pub const HEALED_MS: u64 = ACTIVE_MS + 1_000;

/// Settings that differ per node.
#[derive(Debug, Clone)]
pub struct Knobs {
    pub max_value_bytes: usize,
    pub max_log_bytes: u64,
    pub anti_entropy_interval_secs: u64,
    pub tombstone_ttl_secs: u64,
    /// How far this node's wall clock is off, in ms.
    pub skew_ms: i64,
}

/// One fault, from `at_ms` until `heal_ms` (simulated).
#[derive(Debug, Clone)]
pub enum Fault {
    /// No messages between two nodes, either way.
    Partition(usize, usize),
    /// No messages from the first node to the second.
    OneWay(usize, usize),
    /// The node's process dies, and restarts from its disk at heal time.
    Crash(usize),
    /// Everything to and from the node is held, then delivered at heal time.
    Pause(usize),
    /// The node's wall clock jumps by this many ms (and stays there).
    ClockJump(usize, i64),
    /// Links fail at random with this probability per message.
    Loss(f64),
}

#[derive(Debug, Clone)]
pub struct Timed {
    pub at_ms: u64,
    pub heal_ms: u64,
    pub fault: Fault,
}

/// One client operation, sent to `node` after waiting `gap_ms`.
#[derive(Debug, Clone)]
pub struct Op {
    pub gap_ms: u64,
    pub node: usize,
    pub kind: OpKind,
}

#[derive(Debug, Clone)]
pub enum OpKind {
    Write(String, Vec<u8>),
    Delete(String),
    Batch(Vec<(String, Vec<u8>)>),
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub max_latency_ms: u64,
    /// Every node's `replication.rpc_timeout_ms`.
    pub rpc_timeout_ms: u64,
    pub knobs: Vec<Knobs>,
    pub faults: Vec<Timed>,
    pub ops: Vec<Op>,
}

impl Scenario {
    pub fn from_seed(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        // Mostly fast links, sometimes slow ones.
        let max_latency_ms = match rng.random_range(0..10) {
            0..=5 => rng.random_range(0..20),
            6..=8 => rng.random_range(20..150),
            _ => rng.random_range(150..=500),
        };
        let knobs: Vec<Knobs> = (0..NODES.len())
            .map(|_| Knobs {
                max_value_bytes: if rng.random_bool(0.3) { 4096 } else { 65_536 },
                // Small logs force repair by anti-entropy.
                max_log_bytes: if rng.random_bool(0.3) {
                    rng.random_range(512..8192)
                } else {
                    64 << 20
                },
                anti_entropy_interval_secs: rng.random_range(1..=3),
                tombstone_ttl_secs: rng.random_range(2..=20),
                skew_ms: if rng.random_bool(0.3) {
                    rng.random_range(-3_000..=3_000)
                } else {
                    0
                },
            })
            .collect();

        let n = NODES.len();
        let mut faults = Vec::new();
        for _ in 0..rng.random_range(0..=4) {
            let at_ms = rng.random_range(500..ACTIVE_MS);
            let heal_ms = rng.random_range(at_ms + 100..=HEALED_MS);
            let a = rng.random_range(0..n);
            let b = (a + rng.random_range(1..n)) % n;
            let fault = match rng.random_range(0..6) {
                0 => Fault::Partition(a, b),
                1 => Fault::OneWay(a, b),
                2 => Fault::Crash(a),
                3 => Fault::Pause(a),
                4 => Fault::ClockJump(a, rng.random_range(-5_000..=30_000)),
                _ => Fault::Loss(rng.random_range(0.0..0.1)),
            };
            faults.push(Timed {
                at_ms,
                heal_ms,
                fault,
            });
        }

        let hot: Vec<String> = (0..rng.random_range(1..=5))
            .map(|i| format!("hot-{i}"))
            .collect();
        let cold = rng.random_range(10..200);
        let smallest_limit = knobs
            .iter()
            .map(|k| k.max_value_bytes)
            .min()
            .unwrap_or(4096);
        let mut ops = Vec::new();
        let count = rng.random_range(40..160);
        let per_op = ACTIVE_MS / count;
        let key = |rng: &mut SmallRng| -> String {
            if rng.random_bool(0.5) {
                hot[rng.random_range(0..hot.len())].clone()
            } else if rng.random_bool(0.05) {
                // Keys near the size limit.
                format!("long-{}-{}", rng.random_range(0..3), "k".repeat(1000))
            } else {
                format!("cold-{}", rng.random_range(0..cold))
            }
        };
        for i in 0..count {
            let value = |rng: &mut SmallRng, j: usize| -> Vec<u8> {
                // Unique, so that the checker can tell writes apart.
                let mut v = format!("s{seed}-op{i}-{j}-").into_bytes();
                let size = match rng.random_range(0..20) {
                    0 => smallest_limit.saturating_sub(64),
                    1..=3 => rng.random_range(100..2000),
                    _ => rng.random_range(0..32),
                };
                v.resize(v.len().max(size), b'.');
                v.truncate(smallest_limit);
                v
            };
            let kind = match rng.random_range(0..10) {
                0..=5 => OpKind::Write(key(&mut rng), value(&mut rng, 0)),
                6..=7 => OpKind::Delete(key(&mut rng)),
                _ => OpKind::Batch(
                    (0..rng.random_range(1..8))
                        .map(|j| (key(&mut rng), value(&mut rng, j)))
                        .collect(),
                ),
            };
            ops.push(Op {
                gap_ms: rng.random_range(0..=per_op * 2),
                node: rng.random_range(0..n),
                kind,
            });
        }
        // Drawn last, so that the draws above, and the seeds that do not get
        // it, stay as they were: a stress on the tombstone horizon. One node
        // is cut off from both peers while it takes writes, then crashes for
        // longer than every node's (now short) tombstone TTL, while the
        // others delete keys and may purge them.
        let mut knobs = knobs;
        if rng.random_bool(0.4) {
            for k in knobs.iter_mut() {
                k.tombstone_ttl_secs = rng.random_range(1..=3);
            }
            let victim = rng.random_range(0..n);
            let t0 = rng.random_range(500..2_500);
            let heal = rng.random_range(t0 + 5_000..=HEALED_MS);
            for other in (0..n).filter(|o| *o != victim) {
                faults.push(Timed {
                    at_ms: t0,
                    heal_ms: heal,
                    fault: Fault::Partition(victim, other),
                });
            }
            let crash_at = t0 + rng.random_range(500..1_500);
            faults.push(Timed {
                at_ms: crash_at,
                heal_ms: (crash_at + rng.random_range(3_500..=5_000)).min(HEALED_MS),
                fault: Fault::Crash(victim),
            });
            // Writes to the victim before it is cut off, so that it holds
            // values the others then delete.
            for op in ops.iter_mut().take(12) {
                if let OpKind::Delete(key) = &op.kind {
                    op.kind = OpKind::Write(key.clone(), format!("s{seed}-pre").into_bytes());
                }
                op.node = victim;
            }
        }
        Self {
            max_latency_ms,
            rpc_timeout_ms: 1_000,
            knobs,
            faults,
            ops,
        }
    }

    /// Issue 22, item 3: a map big enough that a Digest answer which
    /// rescanned every key with its value (about 5 µs each at the
    /// simulation's scan cost) would outlive the 100 ms deadline. Node n3 is
    /// cut off while n1 takes `keys` keys of 1 KiB; the logs are too small to
    /// hold them, so only anti-entropy rounds can bring n3 up to date.
    pub fn big_map(keys: usize) -> Self {
        let knobs = (0..NODES.len())
            .map(|_| Knobs {
                max_value_bytes: 4096,
                max_log_bytes: 256 * 1024,
                anti_entropy_interval_secs: 1,
                tombstone_ttl_secs: 60,
                skew_ms: 0,
            })
            .collect();
        // Batches well under the client message limit (64 KiB past the
        // value limit).
        const PER_BATCH: usize = 48;
        let batches = keys.div_ceil(PER_BATCH);
        let gap_ms = (ACTIVE_MS - 2_000) / batches as u64;
        let ops = (0..batches)
            .map(|b| Op {
                gap_ms,
                node: 0,
                kind: OpKind::Batch(
                    (b * PER_BATCH..((b + 1) * PER_BATCH).min(keys))
                        .map(|i| {
                            let mut v = format!("big-{i}-").into_bytes();
                            v.resize(1024, b'.');
                            (format!("big-{i:06}"), v)
                        })
                        .collect(),
                ),
            })
            .collect();
        let faults = [0, 1]
            .map(|other| Timed {
                at_ms: 0,
                heal_ms: ACTIVE_MS,
                fault: Fault::Partition(2, other),
            })
            .to_vec();
        Self {
            max_latency_ms: 2,
            rpc_timeout_ms: 100,
            knobs,
            faults,
            ops,
        }
    }

    /// The faults in words, for the report.
    pub fn fault_names(&self) -> Vec<&'static str> {
        self.faults
            .iter()
            .map(|t| match t.fault {
                Fault::Partition(..) => "partition",
                Fault::OneWay(..) => "one-way partition",
                Fault::Crash(_) => "crash",
                Fault::Pause(_) => "pause",
                Fault::ClockJump(..) => "clock jump",
                Fault::Loss(_) => "message loss",
            })
            .collect()
    }
}
