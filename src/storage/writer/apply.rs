//! The rule the writer applies to one remote entry, as a pure function.
//!
//! Every path that brings a peer's entry into this node (the origin's log
//! stream, an anti-entropy push, a pull) ends in [`decide`]. It is kept free
//! of storage and clocks so that the property tests and the `replicate` fuzz
//! target check the rule the writer really applies, not a model of it.
//!
//! The checks, in order:
//! 1. **Too far ahead.** A version more than `max_lead_ms` ahead of this
//!    node's wall clock is refused: not stored, not observed by the clock.
//!    Observing it would drag every later local version with it (up to the
//!    HLC's ceiling, where no peer accepts them any more), and storing it
//!    would freeze its key against every write until the wall clock caught
//!    up. The origin keeps it, and anti-entropy delivers it once it is no
//!    longer from the future. See DESIGN "Clock skew".
//! 2. **Last-writer-wins.** An entry that does not beat the current state
//!    loses.
//! 3. **The tombstone horizon**, for a key this node lacks: a streamed value
//!    older than the tombstone TTL may be one whose delete every node has
//!    applied and purged, and an expired tombstone (or a value that expired
//!    longer than the TTL ago) has nothing to delete or show.

use std::fmt;

use crate::{clock::physical_ms, version::Entry};

/// What the receiver knows besides the two entries.
#[derive(Debug, Clone, Copy)]
pub struct Context {
    /// This node's wall clock, in milliseconds.
    pub now_ms: u64,
    /// The tombstone TTL, in milliseconds.
    pub ttl_ms: u64,
    /// The most a version may be ahead of `now_ms` (`max_clock_skew_ms`).
    pub max_lead_ms: u64,
    /// From the origin's log stream rather than a repair.
    pub streamed: bool,
}

/// Why a well-formed entry was refused: the receiver is fine, the sender
/// should hold on to the entry and try again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The version's physical time is this far ahead of the receiver's clock.
    AheadOfClock {
        /// How far ahead, in milliseconds.
        ahead_ms: u64,
        /// The receiver's limit, in milliseconds.
        max_ms: u64,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AheadOfClock { ahead_ms, max_ms } => write!(
                f,
                "version is {ahead_ms} ms ahead of this node's clock (replication.max_clock_skew_ms = {max_ms})"
            ),
        }
    }
}

/// What the writer does with one remote entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Store it, observing its version.
    Apply,
    /// Not stored and not observed: reported back to the sender.
    Refuse(Refusal),
    /// The current state is as new or newer; observed, not stored.
    Loses,
    /// A streamed value past the horizon for an absent key.
    PastHorizon,
    /// A tombstone past its TTL for an absent key: nothing to delete.
    ExpiredTombstone,
}

impl Decision {
    /// Whether the clock should advance past the entry's version.
    pub fn observes(self) -> bool {
        !matches!(self, Decision::Refuse(_))
    }
}

/// The rule for a remote entry `new` arriving where `old` is stored.
pub fn decide(old: Option<&Entry>, new: &Entry, ctx: &Context) -> Decision {
    let ahead_ms = physical_ms(new.version.hlc).saturating_sub(ctx.now_ms);
    if ahead_ms > ctx.max_lead_ms {
        return Decision::Refuse(Refusal::AheadOfClock {
            ahead_ms,
            max_ms: ctx.max_lead_ms,
        });
    }
    if !new.wins_over(old) {
        return Decision::Loses;
    }
    if old.is_none() {
        // A tombstone, or a value that expired, longer ago than the TTL.
        let dead_long = new
            .dead_since(ctx.now_ms)
            .is_some_and(|dead| dead.saturating_add(ctx.ttl_ms) < ctx.now_ms);
        if dead_long {
            return Decision::ExpiredTombstone;
        }
        let past_horizon = physical_ms(new.version.hlc).saturating_add(ctx.ttl_ms) < ctx.now_ms;
        if past_horizon && ctx.streamed && !new.is_tombstone() {
            return Decision::PastHorizon;
        }
    }
    Decision::Apply
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock::from_physical_ms, version::Version};
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000;

    fn e(ms: u64, node: &str, value: Option<&str>) -> Entry {
        Entry {
            version: Version {
                hlc: from_physical_ms(ms),
                node: node.into(),
            },
            value: value.map(|v| v.as_bytes().to_vec()),
            expires_ms: None,
        }
    }

    fn ctx(streamed: bool) -> Context {
        Context {
            now_ms: NOW,
            ttl_ms: 10_000,
            max_lead_ms: 60_000,
            streamed,
        }
    }

    /// One row per case: what is stored, what arrives, how, and the outcome.
    #[test]
    fn transcript() {
        use Decision::*;
        let ahead = |ms| {
            Refuse(Refusal::AheadOfClock {
                ahead_ms: ms,
                max_ms: 60_000,
            })
        };
        let value = Some("v");
        #[rustfmt::skip]
        let rows: Vec<(&str, Option<Entry>, Entry, bool, Decision)> = vec![
            ("new key, fresh value",               None,                        e(NOW, "n2", value),            true,  Apply),
            ("newer than the stored value",        Some(e(NOW - 5, "n1", value)), e(NOW, "n2", value),          true,  Apply),
            ("same time, higher node id wins",     Some(e(NOW, "n1", value)),   e(NOW, "n2", value),            false, Apply),
            ("same time, lower node id loses",     Some(e(NOW, "n3", value)),   e(NOW, "n2", value),            false, Loses),
            ("a replay of the stored entry",       Some(e(NOW, "n2", value)),   e(NOW, "n2", value),            true,  Loses),
            ("older than the stored tombstone",    Some(e(NOW, "n1", None)),    e(NOW - 1, "n2", value),        false, Loses),
            ("at the lead limit",                  None,                        e(NOW + 60_000, "n2", value),   true,  Apply),
            ("just past the lead limit",           None,                        e(NOW + 60_001, "n2", value),   true,  ahead(60_001)),
            ("far future, even if it would lose",  Some(e(u64::MAX >> 17, "n9", value)), e(NOW + 90_000, "n2", value), false, ahead(90_000)),
            ("at the HLC's ceiling",               None,                        e((1 << 47) - 1, "n2", value),  true,  ahead((1 << 47) - 1 - NOW)),
            ("streamed value past the horizon",    None,                        e(NOW - 10_001, "n2", value),   true,  PastHorizon),
            ("repaired value past the horizon",    None,                        e(NOW - 10_001, "n2", value),   false, Apply),
            ("old value over an older one",        Some(e(1, "n1", value)),     e(NOW - 10_001, "n2", value),   true,  Apply),
            ("expired tombstone, absent key",      None,                        e(NOW - 10_001, "n2", None),    false, ExpiredTombstone),
            ("expired tombstone beats a value",    Some(e(1, "n1", value)),     e(NOW - 10_001, "n2", None),    true,  Apply),
            ("tombstone within the TTL",           None,                        e(NOW - 9_999, "n2", None),     true,  Apply),
        ];
        for (name, old, new, streamed, want) in rows {
            assert_eq!(decide(old.as_ref(), &new, &ctx(streamed)), want, "{name}");
        }
    }

    fn arb_entry(from_ms: u64) -> impl Strategy<Value = Entry> {
        (
            from_ms..(NOW + 80_000),
            prop::sample::select(vec!["n1", "n2", "n3"]),
            prop::option::of(Just("x")),
        )
            .prop_map(|(ms, node, v)| e(ms, node, v))
    }

    /// Applying entries in any order, each by `decide`, stores the same state:
    /// within the horizon the rule is a merge, whatever the lead limit refuses.
    /// (Past it, order matters by design: an expired tombstone is stored only
    /// where it finds a value to delete.)
    fn fold(entries: &[Entry], streamed: bool) -> Option<Entry> {
        let mut state: Option<Entry> = None;
        for new in entries {
            if decide(state.as_ref(), new, &ctx(streamed)) == Decision::Apply {
                state = Some(new.clone());
            }
        }
        state
    }

    proptest! {
        #[test]
        fn order_does_not_matter(
            mut entries in prop::collection::vec(arb_entry(NOW - 10_000), 0..6), streamed: bool,
        ) {
            let forward = fold(&entries, streamed);
            entries.reverse();
            prop_assert_eq!(forward, fold(&entries, streamed));
        }

        #[test]
        fn what_is_applied_wins_and_is_never_from_the_future(
            old in prop::option::of(arb_entry(NOW - 20_000)), new in arb_entry(NOW - 20_000), streamed: bool,
        ) {
            let d = decide(old.as_ref(), &new, &ctx(streamed));
            if d == Decision::Apply {
                prop_assert!(new.wins_over(old.as_ref()));
                prop_assert!(physical_ms(new.version.hlc) <= NOW + 60_000);
            }
            prop_assert_eq!(d.observes(), physical_ms(new.version.hlc) <= NOW + 60_000);
        }
    }
}
