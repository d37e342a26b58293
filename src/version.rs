//! Versions, entries and the merge rule: the pure core of convergence.
//!
//! Every key holds a last-writer-wins register. A write carries a [`Version`]
//! (HLC timestamp, then origin node id) and the highest version wins. Because
//! [`merge`] is commutative, associative and idempotent, replicas that see the
//! same set of writes in any order, with any duplicates, hold the same map.

use std::{cmp::Ordering, fmt, sync::Arc};

use crate::proto;

/// The id of a node, shared cheaply between the many entries that carry it.
pub type NodeId = Arc<str>;

/// Orders writes: `hlc` first, then `node` breaks ties, so two distinct writes
/// never compare equal.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Hybrid logical clock timestamp (see [`crate::clock`]).
    pub hlc: u64,
    /// The node that issued the write.
    pub node: NodeId,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.hlc, self.node)
    }
}

/// One register value: a value or, when `value` is `None`, a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The version of the write that produced this state.
    pub version: Version,
    /// `None` is a tombstone left by a delete.
    pub value: Option<Vec<u8>>,
    /// When the value expires (wall-clock ms since the Unix epoch), for a
    /// write with a TTL. Part of the entry, so it replicates with it and
    /// every node agrees on the moment; `None` for tombstones.
    pub expires_ms: Option<u64>,
}

impl Entry {
    /// A value or a tombstone without an expiry.
    pub fn new(version: Version, value: Option<Vec<u8>>) -> Self {
        Self {
            version,
            value,
            expires_ms: None,
        }
    }

    /// True if this entry is a delete marker.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True if a read at `now_ms` sees a value: not a tombstone, not expired.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// Since when the key has read as absent, in wall-clock ms, if it does
    /// at `now_ms`: a tombstone since its write, an expired value since its
    /// expiry. Tombstone collection treats both alike from that moment.
    pub fn dead_since(&self, now_ms: u64) -> Option<u64> {
        match (&self.value, self.expires_ms) {
            (None, _) => Some(crate::clock::physical_ms(self.version.hlc)),
            (Some(_), Some(e)) if e <= now_ms => Some(e),
            (Some(_), _) => None,
        }
    }

    /// The total order merge uses. Versions decide; the value (then the
    /// expiry) only breaks a tie that the protocol never produces (two
    /// writes with one version), so that merge stays commutative even if
    /// that invariant were broken.
    pub fn cmp_lww(&self, other: &Entry) -> Ordering {
        self.version
            .cmp(&other.version)
            .then_with(|| self.value.cmp(&other.value))
            .then_with(|| self.expires_ms.cmp(&other.expires_ms))
    }

    /// True if `self` would replace `current` under last-writer-wins.
    pub fn wins_over(&self, current: Option<&Entry>) -> bool {
        current.is_none_or(|c| self.cmp_lww(c) == Ordering::Greater)
    }
}

/// Last-writer-wins merge of two states of one key.
pub fn merge(a: Entry, b: Entry) -> Entry {
    if b.cmp_lww(&a) == Ordering::Greater {
        b
    } else {
        a
    }
}

// The protobuf forms, for the wire and the log. Here, below every layer
// that speaks protobuf, so that none of them needs another for them.

/// A domain version as its protobuf form.
pub fn version_to_proto(v: &Version) -> proto::Version {
    proto::Version {
        hlc: v.hlc,
        node_id: v.node.to_string(),
    }
}

/// A protobuf version as a domain version.
pub fn version_from_proto(v: proto::Version) -> Version {
    Version {
        hlc: v.hlc,
        node: v.node_id.into(),
    }
}

/// A key and entry as the protobuf mutation shipped to peers and logged.
pub fn to_mutation(key: &str, e: &Entry) -> proto::Mutation {
    proto::Mutation {
        key: key.to_string(),
        version: Some(version_to_proto(&e.version)),
        value: e.value.clone(),
        expires_ms: e.expires_ms.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(hlc: u64, node: &str, value: Option<&[u8]>) -> Entry {
        Entry::new(
            Version {
                hlc,
                node: node.into(),
            },
            value.map(<[u8]>::to_vec),
        )
    }

    #[test]
    fn an_entry_reads_as_absent_from_its_expiry_on() {
        let mut e = entry(crate::clock::from_physical_ms(100), "n", Some(b"v"));
        assert!(e.is_live(u64::MAX));
        assert_eq!(e.dead_since(u64::MAX), None);
        e.expires_ms = Some(500);
        assert!(e.is_live(499));
        assert!(!e.is_live(500));
        assert_eq!(e.dead_since(499), None);
        assert_eq!(e.dead_since(500), Some(500));
        let t = entry(crate::clock::from_physical_ms(100), "n", None);
        assert!(!t.is_live(0));
        assert_eq!(t.dead_since(0), Some(100));
    }

    #[test]
    fn higher_hlc_wins_regardless_of_node() {
        let a = entry(10, "zzz", Some(b"a"));
        let b = entry(11, "aaa", Some(b"b"));
        assert_eq!(merge(a.clone(), b.clone()), b);
        assert_eq!(merge(b.clone(), a), b);
    }

    #[test]
    fn node_id_breaks_hlc_ties() {
        let a = entry(10, "node1", Some(b"a"));
        let b = entry(10, "node2", Some(b"b"));
        assert!(b.version > a.version);
        assert_eq!(merge(a.clone(), b.clone()), b);
        assert_eq!(merge(b.clone(), a), b);
    }

    #[test]
    fn tombstone_with_higher_version_wins_and_loses_like_a_value() {
        let put = entry(5, "n1", Some(b"v"));
        let del = entry(6, "n2", None);
        assert!(merge(put.clone(), del.clone()).is_tombstone());
        let later_put = entry(7, "n1", Some(b"w"));
        assert_eq!(merge(del, later_put.clone()), later_put);
    }

    #[test]
    fn wins_over_absent_and_not_over_itself() {
        let e = entry(1, "n", Some(b""));
        assert!(e.wins_over(None));
        assert!(!e.wins_over(Some(&e)));
        assert!(!entry(0, "n", None).wins_over(Some(&e)));
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            0u64..8,
            prop::sample::select(vec!["n1", "n2", "n3"]),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..3)),
            prop::option::of(0u64..3),
        )
            .prop_map(|(hlc, node, value, expires)| {
                let mut e = entry(hlc, node, value.as_deref());
                e.expires_ms = expires.filter(|_| !e.is_tombstone());
                e
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_entry(), b in arb_entry()) {
            prop_assert_eq!(merge(a.clone(), b.clone()), merge(b, a));
        }

        #[test]
        fn merge_is_associative(a in arb_entry(), b in arb_entry(), c in arb_entry()) {
            prop_assert_eq!(
                merge(merge(a.clone(), b.clone()), c.clone()),
                merge(a, merge(b, c))
            );
        }

        #[test]
        fn merge_is_idempotent(a in arb_entry(), b in arb_entry()) {
            prop_assert_eq!(merge(a.clone(), a.clone()), a.clone());
            let ab = merge(a.clone(), b.clone());
            prop_assert_eq!(merge(ab.clone(), b), ab);
        }

        /// Three replicas receive the same writes (to a few keys) in different
        /// orders, with duplicates and replays: all end with the same map, and
        /// each key holds its highest-version write.
        #[test]
        fn replicas_converge_under_any_delivery(
            writes in prop::collection::vec(("[a-c]", arb_entry()), 1..30),
            orders in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..90), 3),
        ) {
            use std::collections::HashMap;
            let apply = |map: &mut HashMap<String, Entry>, (k, e): &(String, Entry)| {
                let merged = match map.remove(k) {
                    Some(cur) => merge(cur, e.clone()),
                    None => e.clone(),
                };
                map.insert(k.clone(), merged);
            };
            let replicas: Vec<HashMap<String, Entry>> = orders
                .iter()
                .map(|picks| {
                    let mut map = HashMap::new();
                    // Random deliveries, duplicates and replays included...
                    for i in picks {
                        apply(&mut map, &writes[i.index(writes.len())]);
                    }
                    // ...and eventually every write at least once, in reverse.
                    for w in writes.iter().rev() {
                        apply(&mut map, w);
                    }
                    map
                })
                .collect();
            prop_assert_eq!(&replicas[0], &replicas[1]);
            prop_assert_eq!(&replicas[1], &replicas[2]);
            for (k, got) in &replicas[0] {
                let best = writes
                    .iter()
                    .filter(|(wk, _)| wk == k)
                    .map(|(_, e)| e)
                    .max_by(|a, b| a.cmp_lww(b))
                    .unwrap();
                prop_assert_eq!(got, best);
            }
        }

        #[test]
        fn merge_returns_the_maximum(a in arb_entry(), b in arb_entry()) {
            let m = merge(a.clone(), b.clone());
            prop_assert!(m.cmp_lww(&a) != Ordering::Less);
            prop_assert!(m.cmp_lww(&b) != Ordering::Less);
            prop_assert!(m == a || m == b);
        }
    }
}
