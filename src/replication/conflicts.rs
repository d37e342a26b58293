//! The conflict ledger: what last-writer-wins did, made visible.
//!
//! Every remote entry that meets a local copy of another origin is a
//! *contest* (`storage::writer::Contest`). Two kinds are conflicts:
//!
//! - **Lost**: the remote write lost the merge to a newer local version.
//!   Always counted: the remote origin's client was told its write
//!   succeeded, and here it never shows.
//! - **Replaced**: a remote write replaced a local value it was concurrent
//!   with: their versions are within `max_clock_skew_ms` of each other, and
//!   the remote origin had not seen the local value. For a local value that
//!   is this node's own write, "seen" is exact up to one round trip: the
//!   remote origin had acknowledged it in this node's log stream. For a
//!   value from a third node this node cannot tell, and the window alone
//!   decides, so such replacements may be over-counted.
//!
//! Each kind is counted per peer (the peer that delivered the remote
//! write) and the last [`LEDGER_ENTRIES`] conflicts are kept, in memory,
//! for `Admin/Conflicts`.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
};

use crate::{clock::physical_ms, version::Version};

/// Conflicts kept for `Admin/Conflicts`: keys are at most 1 KiB, so the
/// ledger holds at most about 300 KiB.
pub const LEDGER_ENTRIES: usize = 256;

/// What kind of conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A remote write lost to a newer local version.
    Lost,
    /// A remote write replaced a local value it was concurrent with.
    Replaced,
}

/// One conflict, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key.
    pub key: String,
    /// Which kind.
    pub kind: Kind,
    /// The version that won (and is stored here).
    pub kept: Version,
    /// The version that lost.
    pub lost: Version,
    /// The peer that delivered the remote write.
    pub peer: String,
    /// This node's wall clock when it was seen, in milliseconds.
    pub at_ms: u64,
}

/// Conflicts counted for one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Remote writes that lost to a newer local version.
    pub lost: u64,
    /// Local values replaced by a concurrent remote write.
    pub replaced: u64,
}

/// Whether a local copy (`local`) met by a remote write (`remote`) makes a
/// conflict, and of which kind. `remote_saw_local` is whether the remote
/// origin had seen the local value, when this node can tell.
pub fn classify(
    local: &Version,
    remote: &Version,
    remote_won: bool,
    remote_saw_local: Option<bool>,
    max_skew_ms: u64,
) -> Option<Kind> {
    if local.node == remote.node || local == remote {
        return None;
    }
    if !remote_won {
        return Some(Kind::Lost);
    }
    let apart = physical_ms(local.hlc).abs_diff(physical_ms(remote.hlc));
    (apart <= max_skew_ms && remote_saw_local != Some(true)).then_some(Kind::Replaced)
}

/// The counts and the last conflicts.
#[derive(Debug, Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    recent: VecDeque<Conflict>,
    counts: BTreeMap<String, Counts>,
}

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Plain data: usable after a panic elsewhere.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `c` and keeps it, dropping the oldest beyond the bound.
    pub fn record(&self, c: Conflict) {
        crate::metrics::conflict(
            &c.peer,
            match c.kind {
                Kind::Lost => "lost",
                Kind::Replaced => "replaced",
            },
        );
        let mut inner = self.lock();
        let counts = inner.counts.entry(c.peer.clone()).or_default();
        match c.kind {
            Kind::Lost => counts.lost += 1,
            Kind::Replaced => counts.replaced += 1,
        }
        if inner.recent.len() == LEDGER_ENTRIES {
            inner.recent.pop_front();
        }
        inner.recent.push_back(c);
    }

    /// The kept conflicts, newest first.
    pub fn recent(&self) -> Vec<Conflict> {
        self.lock().recent.iter().rev().cloned().collect()
    }

    /// What was counted for `peer`.
    pub fn counts(&self, peer: &str) -> Counts {
        self.lock().counts.get(peer).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_physical_ms;

    fn at(ms: u64, node: &str) -> Version {
        Version {
            hlc: from_physical_ms(ms),
            node: node.into(),
        }
    }

    #[test]
    fn only_writes_of_other_origins_that_lost_or_were_concurrent_are_conflicts() {
        use Kind::*;
        let skew = 1_000;
        for (local, remote, won, saw, want) in [
            // The same origin rewrote its own key: ordinary.
            (at(10_000, "n1"), at(10_100, "n1"), true, None, None),
            // A duplicate of what we hold.
            (at(10_000, "n2"), at(10_000, "n2"), false, None, None),
            // A remote write lost to a newer one here, however old.
            (at(90_000, "n1"), at(10_000, "n2"), false, None, Some(Lost)),
            // Replaced within the window by a write that had not seen ours.
            (
                at(10_000, "n1"),
                at(10_500, "n2"),
                true,
                Some(false),
                Some(Replaced),
            ),
            // The same, where we cannot tell who saw what.
            (
                at(10_000, "n3"),
                at(10_500, "n2"),
                true,
                None,
                Some(Replaced),
            ),
            // It had seen ours: an update, not a conflict.
            (at(10_000, "n1"), at(10_500, "n2"), true, Some(true), None),
            // Far apart in time: sequential.
            (at(10_000, "n1"), at(12_000, "n2"), true, Some(false), None),
        ] {
            assert_eq!(
                classify(&local, &remote, won, saw, skew),
                want,
                "{local} then {remote}, won {won}, saw {saw:?}"
            );
        }
    }

    #[test]
    fn the_ledger_counts_per_peer_and_keeps_only_the_newest() {
        let ledger = Ledger::default();
        for i in 0..LEDGER_ENTRIES + 10 {
            ledger.record(Conflict {
                key: format!("k{i}"),
                kind: if i % 2 == 0 {
                    Kind::Lost
                } else {
                    Kind::Replaced
                },
                kept: at(2, "n1"),
                lost: at(1, "n2"),
                peer: "n2".into(),
                at_ms: i as u64,
            });
        }
        let recent = ledger.recent();
        assert_eq!(recent.len(), LEDGER_ENTRIES);
        assert_eq!(recent[0].key, format!("k{}", LEDGER_ENTRIES + 9));
        let n = (LEDGER_ENTRIES + 10) as u64;
        assert_eq!(
            ledger.counts("n2"),
            Counts {
                lost: n / 2,
                replaced: n / 2
            }
        );
        assert_eq!(ledger.counts("n3"), Counts::default());
    }
}
