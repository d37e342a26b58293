//! Reads of the `versions` keyspace: `(key, version)` pairs, bucket by
//! bucket, without a value. Anti-entropy compares these lists and tombstone
//! collection walks them, so none of them may cost a value's bytes or an
//! answer without a bound.

use std::ops::Bound;

use super::{codec, Store};
use crate::{error::Result, version::Version};

/// Where a bounded scan of buckets stopped: the first `full` buckets asked
/// for are complete, and the next one is complete through the key
/// `partial` when set. Reaches order by how far they got.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reach {
    /// Buckets read to their end.
    pub full: usize,
    /// The last key read of the bucket after them, if it was begun.
    pub partial: Option<String>,
}

impl Store {
    /// `(key, version)` of the entries in `buckets`, in order, bucket by
    /// bucket, starting after the key `after` in the first bucket (from its
    /// start if `None`). Stops once the pairs' encoded size passes `budget`,
    /// between buckets or inside one, but never before it has returned a
    /// pair or covered a bucket, so a bucket crafted to hold more than one
    /// answer is read in several. The [`Reach`] says where it stopped.
    /// Values are never decoded.
    pub fn bucket_versions(
        &self,
        buckets: &[u16],
        after: Option<&str>,
        budget: usize,
    ) -> Result<(Vec<(String, Version)>, Reach)> {
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        for (i, b) in buckets.iter().enumerate() {
            let upper = match b.checked_add(1) {
                Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
                None => Bound::Unbounded,
            };
            let lower = match after.filter(|_| i == 0) {
                Some(k) => Bound::Excluded(codec::version_key(&self.buckets(), k)),
                None => Bound::Included(b.to_be_bytes().to_vec()),
            };
            let mut n = 0;
            let mut last: Option<String> = None;
            for kv in self.versions.range::<Vec<u8>, _>((lower, upper)) {
                if bytes > budget && !out.is_empty() {
                    super::blocking::charge(n, 0);
                    return Ok((
                        out,
                        Reach {
                            full: i,
                            partial: last,
                        },
                    ));
                }
                let (k, v) = kv.into_inner()?;
                let key = codec::user_key(&k)?;
                let version = codec::decode_version(&v)?.version;
                // Key, hlc, node id and framing, as a KeyVersion on the wire.
                bytes += key.len() + version.node.len() + 24;
                last = Some(key.clone());
                out.push((key, version));
                n += 1;
            }
            super::blocking::charge(n, 0);
        }
        Ok((
            out,
            Reach {
                full: buckets.len(),
                partial: None,
            },
        ))
    }

    /// The highest HLC of any stored entry, reading versions only; `None` if
    /// `stop` said so first (it is asked every 65536 entries).
    pub fn max_stored_hlc(&self, stop: impl Fn() -> bool) -> Result<Option<u64>> {
        let mut max = 0;
        for (i, kv) in self.versions.iter().enumerate() {
            if i % 65_536 == 65_535 && stop() {
                return Ok(None);
            }
            max = max.max(codec::decode_version(&kv.value()?)?.version.hlc);
        }
        Ok(Some(max))
    }

    /// The version of every entry, in bucket order, until `f` returns
    /// `Ok(false)`. Values are never read.
    pub fn for_each_version(
        &self,
        mut f: impl FnMut(String, codec::Indexed) -> Result<bool>,
    ) -> Result<()> {
        for kv in self.versions.iter() {
            let (k, v) = kv.into_inner()?;
            if !f(codec::user_key(&k)?, codec::decode_version(&v)?)? {
                break;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{storage::BUCKETS, version::Entry};

    #[test]
    fn a_bucket_scan_returns_versions_and_stops_after_its_budget() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        // Large values in many buckets; the scan decodes versions only.
        let mut batch = store.db.batch();
        let mut buckets = std::collections::BTreeSet::new();
        for i in 0..400 {
            let key = format!("key-{i}");
            buckets.insert(store.buckets().of(key.as_bytes()));
            let entry = Entry {
                version: Version {
                    hlc: i,
                    node: "n1".into(),
                },
                value: Some(vec![7; 64 * 1024]),
                expires_ms: None,
            };
            store.batch_put(&mut batch, &key, &entry, 0);
        }
        batch.commit().unwrap();
        let buckets: Vec<u16> = buckets.into_iter().collect();
        let (all, reach) = store.bucket_versions(&buckets, None, usize::MAX).unwrap();
        assert_eq!(all.len(), 400);
        assert_eq!(
            reach,
            Reach {
                full: buckets.len(),
                partial: None
            }
        );
        // A budget of one pair's size returns one pair, never none.
        let (some, reach) = store.bucket_versions(&buckets, None, 1).unwrap();
        assert_eq!(some.len(), 1);
        assert!(
            reach.full == 0 || reach.full == 1 && reach.partial.is_none(),
            "{reach:?}"
        );
        // The versions come back right although the values are skipped.
        let all: std::collections::BTreeMap<String, Version> = all.into_iter().collect();
        for i in [0u64, 123, 399] {
            assert_eq!(all[&format!("key-{i}")].hlc, i);
        }
    }

    /// Issue 24, item 3: a bucket crafted to hold more than one answer was
    /// returned whole, past the message limit, and stalled every round.
    #[test]
    fn a_crowded_bucket_is_read_in_pages_that_miss_and_repeat_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path(), "n1", "c", None, 8, 4).unwrap();
        // Keys of one bucket, and a few of the next bucket asked for.
        let first = store.buckets().of(b"key-0");
        let second = (first + 1) % BUCKETS as u16;
        let (mut crowded, mut other) = (Vec::new(), Vec::new());
        for i in 0..20_000u64 {
            let key = format!("key-{i}");
            match store.buckets().of(key.as_bytes()) {
                b if b == first => crowded.push(key),
                b if b == second => other.push(key),
                _ => {}
            }
        }
        assert!(crowded.len() > 3 && !other.is_empty());
        let mut batch = store.db.batch();
        for (i, key) in crowded.iter().chain(&other).enumerate() {
            let entry = Entry {
                version: Version {
                    hlc: i as u64,
                    node: "n1".into(),
                },
                value: Some(vec![1]),
                expires_ms: None,
            };
            store.batch_put(&mut batch, key, &entry, 0);
        }
        batch.commit().unwrap();
        let mut ask: &[u16] = &[first, second];
        let mut after: Option<String> = None;
        let mut seen = Vec::new();
        let mut pages = 0;
        while !ask.is_empty() {
            // About two pairs per answer.
            let (pairs, reach) = store.bucket_versions(ask, after.as_deref(), 40).unwrap();
            assert!(
                !pairs.is_empty() || reach.full > 0,
                "every answer makes progress"
            );
            seen.extend(pairs.into_iter().map(|(k, _)| k));
            ask = &ask[reach.full..];
            after = reach.partial;
            pages += 1;
        }
        crowded.sort();
        other.sort();
        let want: Vec<String> = crowded.iter().chain(&other).cloned().collect();
        assert_eq!(seen, want, "every key once, in order");
        assert!(pages > crowded.len() / 3, "{pages} pages");
    }
}
