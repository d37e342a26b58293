//! Bucketed XOR digests of the whole map, for anti-entropy.
//!
//! A keyed hash ([`BucketHash`]) places each key in one of [`BUCKETS`]
//! buckets. A bucket's
//! digest is the XOR of `hash(key, version)` over its entries, in any order.
//! Two replicas whose digests agree on a bucket hold the same versions there (up
//! to a 64-bit collision); the buckets that differ are all that a repair has
//! to look at. The entry hash's seed is fixed and the bucket key is the
//! cluster's: digests must match across builds and nodes.
//!
//! **Kept lazily.** The writer does not read a key's old version to XOR it
//! out: a local write always wins, so that read would only feed the digest,
//! and it was the largest cost of the write path after the commit itself.
//! The writer marks the key's bucket dirty instead ([`DigestBook::touch`]),
//! and whoever needs the digests (an anti-entropy round, a peer's Digest
//! request, `meshkv status`) first rescans dirty buckets, which are one
//! prefix each of the `versions` keyspace: versions only, never values. A
//! generation per bucket makes a rescan that raced a commit leave its bucket
//! dirty rather than record a stale digest as clean. This is Garage's
//! `merkle_todo` idea, at bucket granularity (deuxfleurs-org/garage
//! `src/table/data.rs`). At start-up every bucket is dirty, so a restart does
//! not scan the data before serving.
//!
//! **Bounded.** A refresh may stop after a budget of versions, and a bucket
//! it did not reach is *unsettled*: its digest vouches for nothing.
//! [`DigestView::to_compare`] therefore lists unsettled buckets beside the
//! ones that differ, so a bounded refresh can only make a round compare more
//! buckets, never miss one. Successive bounded refreshes start where the
//! last one stopped, so every dirty bucket is reached in turn.

use siphasher::sip128::{Hasher128, SipHasher13};
use xxhash_rust::xxh3::Xxh3;

use crate::{
    error::{Error, Result},
    version::Version,
};

/// Number of buckets. 4096 digests of 8 bytes make a 32 KiB exchange.
pub const BUCKETS: usize = 4096;
/// The most versions a peer's Digest request rescans before it is answered:
/// about 10 MB of `versions` entries, an eighth of a 2,000,000-key map. (A
/// restarted node rescans all of such a map, and exchanges digests with
/// both peers, within the 8 s `bench/scale.sh` measured from its start to
/// its streams being up.)
pub const ANSWER_SCAN_BUDGET: usize = 1 << 18;
const ENTRY_SEED: u64 = 0x6d65_7368_6b76_0002;
/// The fixed key that turns a cluster's name and secret into its bucket
/// key: public, like the derivation.
const DERIVE: (u64, u64) = (0x6d65_7368_6b76_0003, 0x6275_636b_6574_6b65);

/// Where keys fall into buckets: SipHash-1-3 under a 128-bit key derived
/// from the cluster's id and, when the cluster has one, its bucket secret
/// (`replication.bucket_key_file`).
///
/// A client with the write role chooses keys. Were the placement public,
/// it could aim tens of thousands at one bucket, and every comparison of
/// that bucket would have to page through them all (issue 24, item 3).
/// SipHash is a keyed function built for exactly this (Rust's `HashMap`
/// uses it against HashDoS); without the secret nobody can tell which keys
/// share a bucket. Without a secret the key is the cluster id's alone:
/// still per cluster, but anyone who knows the id can compute it.
///
/// Every node of a cluster must place keys alike, or their digests never
/// match: peers compare [`BucketHash::id`]s before they compare digests,
/// and `versions` is rebuilt at start-up when the key changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct BucketHash {
    k0: u64,
    k1: u64,
}

impl BucketHash {
    /// The placement of cluster `cluster_id`, keyed with `secret` if any.
    pub fn keyed(cluster_id: &str, secret: Option<&[u8]>) -> Self {
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(DERIVE.0, DERIVE.1);
        // Lengths first, so that no two (id, secret) pairs hash alike.
        h.write(&(cluster_id.len() as u64).to_le_bytes());
        h.write(cluster_id.as_bytes());
        if let Some(secret) = secret {
            h.write(&(secret.len() as u64).to_le_bytes());
            h.write(secret);
        }
        let k = h.finish128();
        Self { k0: k.h1, k1: k.h2 }
    }

    /// The bucket `key` lives in.
    pub fn of(&self, key: &[u8]) -> u16 {
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(key);
        (h.finish() % BUCKETS as u64) as u16
    }

    /// A fingerprint of the key that tells nothing about it, for peers to
    /// check they place keys alike, and for the data dir to notice a new
    /// key.
    pub fn id(&self) -> u64 {
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        h.write(b"meshkv bucket key id");
        // 0 is what a peer that sends no id says.
        h.finish().max(1)
    }

    /// Whether `peer`, whose bucket key has the fingerprint `theirs`,
    /// places keys as this node does; both ends of a Digest check.
    pub fn agrees(&self, peer: &str, theirs: u64) -> Result<()> {
        let ours = self.id();
        if theirs == ours {
            return Ok(());
        }
        Err(Error::OtherPlacement {
            peer: peer.to_string(),
            theirs,
            ours,
        })
    }
}

/// The placement of a cluster named `meshkv` without a secret: for tests.
impl Default for BucketHash {
    fn default() -> Self {
        Self::keyed("meshkv", None)
    }
}

/// Shows the fingerprint only: the key is a secret.
impl std::fmt::Debug for BucketHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BucketHash({:016x})", self.id())
    }
}

/// The hash of one key at one version.
/// Streamed, so the write path allocates nothing for it; the bytes hashed
/// are `len(key) ‖ key ‖ hlc ‖ node`, all little-endian.
pub fn entry_hash(key: &[u8], version: &Version) -> u64 {
    let mut h = Xxh3::with_seed(ENTRY_SEED);
    h.update(&(key.len() as u32).to_le_bytes());
    h.update(key);
    h.update(&version.hlc.to_le_bytes());
    h.update(version.node.as_bytes());
    h.digest()
}

/// The digests of every bucket.
#[derive(Clone, PartialEq, Eq)]
pub struct Digests(Box<[u64; BUCKETS]>);

impl Default for Digests {
    fn default() -> Self {
        Self(Box::new([0; BUCKETS]))
    }
}

impl std::fmt::Debug for Digests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nonzero = self.0.iter().filter(|d| **d != 0).count();
        write!(f, "Digests({nonzero} non-empty buckets)")
    }
}

impl Digests {
    /// Records that `key` changed from `old` (if any) to `new`: the
    /// incremental rule, which the lazy [`DigestBook`] is tested against.
    #[cfg(test)]
    pub fn replace(
        &mut self,
        placed: &BucketHash,
        key: &[u8],
        old: Option<&Version>,
        new: &Version,
    ) {
        let b = usize::from(placed.of(key));
        if let Some(old) = old {
            self.0[b] ^= entry_hash(key, old);
        }
        self.0[b] ^= entry_hash(key, new);
    }

    /// Records that `key` at `version` was removed.
    #[cfg(test)]
    pub fn remove(&mut self, placed: &BucketHash, key: &[u8], version: &Version) {
        self.0[usize::from(placed.of(key))] ^= entry_hash(key, version);
    }

    /// The digest of every bucket, in bucket order.
    pub fn as_slice(&self) -> &[u64] {
        &self.0[..]
    }

    /// Builds digests from a wire list; `None` unless it has exactly [`BUCKETS`] items.
    pub fn from_slice(s: &[u64]) -> Option<Self> {
        let arr: [u64; BUCKETS] = s.try_into().ok()?;
        Some(Self(Box::new(arr)))
    }

    /// The buckets whose digests differ.
    pub fn diff(&self, other: &Digests) -> Vec<u16> {
        (0..BUCKETS)
            .filter(|&b| self.0[b] != other.0[b])
            .map(|b| b as u16)
            .collect()
    }
}

/// The digests with the bookkeeping that keeps them lazily: which buckets
/// changed since they were last scanned, and how many keys each held then.
/// Pure: the scans happen in [`Store`](super::Store).
#[derive(Debug, Clone)]
pub struct DigestBook {
    digests: Digests,
    /// Bumped by every commit that touched the bucket.
    generation: Box<[u64; BUCKETS]>,
    /// The generation the digest and count were scanned at.
    scanned: Box<[u64; BUCKETS]>,
    counts: Box<[u32; BUCKETS]>,
    keys: u64,
    /// Where the next refresh starts looking for dirty buckets.
    next: u16,
}

/// The digests as a refresh left them, with the buckets they cannot vouch for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestView {
    /// Every bucket's digest as of its last scan.
    pub digests: Digests,
    /// Buckets changed since their last scan (or never scanned), in order.
    pub unsettled: Vec<u16>,
}

impl DigestView {
    /// The buckets to compare against a peer's `theirs`: those whose
    /// digests differ and those this side has not rescanned, in order.
    pub fn to_compare(&self, theirs: &Digests) -> Vec<u16> {
        self.with_unsettled(self.digests.diff(theirs))
    }

    /// `buckets` and the unsettled ones, in order, each once: what a round
    /// compares, given the buckets a peer answered.
    pub fn with_unsettled(&self, buckets: impl IntoIterator<Item = u16>) -> Vec<u16> {
        let mut out: Vec<u16> = buckets.into_iter().collect();
        out.extend_from_slice(&self.unsettled);
        out.sort_unstable();
        out.dedup();
        out
    }
}

impl DigestBook {
    /// Every bucket dirty: nothing is known until the buckets are scanned.
    pub fn all_dirty() -> Self {
        Self {
            digests: Digests::default(),
            generation: Box::new([1; BUCKETS]),
            scanned: Box::new([0; BUCKETS]),
            counts: Box::new([0; BUCKETS]),
            keys: 0,
            next: 0,
        }
    }

    /// Records that a commit changed `bucket`. Call it after the commit, so
    /// that a scan that starts later sees the change.
    pub fn touch(&mut self, bucket: u16) {
        self.generation[usize::from(bucket)] += 1;
    }

    /// The buckets to scan, each with the generation to pass to
    /// [`settle`](Self::settle), starting where the last refresh stopped
    /// (see [`resume_after`](Self::resume_after)) and wrapping around.
    pub fn dirty(&self) -> Vec<(u16, u64)> {
        let start = usize::from(self.next);
        (start..start + BUCKETS)
            .map(|b| b % BUCKETS)
            .filter(|&b| self.generation[b] != self.scanned[b])
            .map(|b| (b as u16, self.generation[b]))
            .collect()
    }

    /// Records that a bounded refresh stopped after `bucket`, so the next
    /// one starts past it: under steady writes the first buckets are dirty
    /// again at every call, and must not starve the rest.
    pub fn resume_after(&mut self, bucket: u16) {
        self.next = ((usize::from(bucket) + 1) % BUCKETS) as u16;
    }

    /// The digests with the buckets still dirty.
    pub fn view(&self) -> DigestView {
        DigestView {
            digests: self.digests.clone(),
            unsettled: (0..BUCKETS)
                .filter(|&b| self.generation[b] != self.scanned[b])
                .map(|b| b as u16)
                .collect(),
        }
    }

    /// Records a scan of `bucket` that started at `generation`. The bucket
    /// stays dirty if a commit touched it since; an older scan never
    /// overwrites a newer one.
    pub fn settle(&mut self, bucket: u16, generation: u64, digest: u64, count: u32) {
        let b = usize::from(bucket);
        if generation <= self.scanned[b] {
            return;
        }
        self.scanned[b] = generation;
        self.digests.0[b] = digest;
        self.keys = self.keys - u64::from(self.counts[b]) + u64::from(count);
        self.counts[b] = count;
    }

    /// The digests as of the last scans (exact once [`dirty`](Self::dirty) is empty).
    pub fn digests(&self) -> &Digests {
        &self.digests
    }

    /// Keys held, tombstones included, as of the last scans.
    pub fn keys(&self) -> u64 {
        self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xxhash_rust::xxh3::xxh3_64_with_seed;

    fn v(hlc: u64, node: &str) -> Version {
        Version {
            hlc,
            node: node.into(),
        }
    }

    #[test]
    fn buckets_are_stable_across_builds() {
        // Pinned values: if these change, digests stop matching across versions.
        let pinned: Vec<u16> = ["a", "b", "key-1"]
            .iter()
            .map(|k| BucketHash::default().of(k.as_bytes()))
            .collect();
        assert_eq!(pinned, PINNED_BUCKETS.to_vec());
    }

    const PINNED_BUCKETS: [u16; 3] = [196, 770, 80];

    #[test]
    fn keys_aimed_at_one_bucket_scatter_under_another_clusters_key() {
        // Issue 24 item 3: with a public placement a client could fill one
        // bucket. Keys that share a bucket under one key (all the attacker
        // can compute without the secret) spread out under the secret one.
        let public = BucketHash::keyed("prod", None);
        let target = public.of(b"seed");
        let aimed: Vec<String> = (0u32..)
            .map(|i| format!("k{i}"))
            .filter(|k| public.of(k.as_bytes()) == target)
            .take(64)
            .collect();
        let secret = BucketHash::keyed("prod", Some(b"not in any config file"));
        let hit: std::collections::BTreeSet<u16> =
            aimed.iter().map(|k| secret.of(k.as_bytes())).collect();
        assert!(
            hit.len() >= 60,
            "64 aimed keys land in {} buckets",
            hit.len()
        );
    }

    #[test]
    fn the_key_depends_on_cluster_and_secret_and_its_id_hides_it() {
        let ids: std::collections::BTreeSet<u64> = [
            BucketHash::keyed("a", None),
            BucketHash::keyed("b", None),
            BucketHash::keyed("a", Some(b"s")),
            BucketHash::keyed("a", Some(b"t")),
            // Lengths are hashed too: ("a", "bc") is not ("ab", "c").
            BucketHash::keyed("ab", Some(b"c")),
            BucketHash::keyed("a", Some(b"bc")),
        ]
        .iter()
        .map(BucketHash::id)
        .collect();
        assert_eq!(ids.len(), 6);
        assert_eq!(
            BucketHash::keyed("a", Some(b"s")),
            BucketHash::keyed("a", Some(b"s"))
        );
        let shown = format!("{:?}", BucketHash::keyed("a", Some(b"s")));
        assert!(
            shown.starts_with("BucketHash(") && shown.len() == 28,
            "{shown}"
        );
    }

    #[test]
    fn entry_hash_is_the_hash_of_its_documented_bytes() {
        let version = v(0x0102_0304_0506_0708, "node7");
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"key");
        bytes.extend_from_slice(&version.hlc.to_le_bytes());
        bytes.extend_from_slice(b"node7");
        assert_eq!(
            entry_hash(b"key", &version),
            xxh3_64_with_seed(&bytes, ENTRY_SEED)
        );
    }

    #[test]
    fn order_of_application_does_not_matter() {
        let mut a = Digests::default();
        let mut b = Digests::default();
        a.replace(&BucketHash::default(), b"k1", None, &v(1, "n"));
        a.replace(&BucketHash::default(), b"k2", None, &v(2, "n"));
        a.replace(&BucketHash::default(), b"k1", Some(&v(1, "n")), &v(3, "m"));
        b.replace(&BucketHash::default(), b"k2", None, &v(2, "n"));
        b.replace(&BucketHash::default(), b"k1", None, &v(3, "m"));
        assert_eq!(a, b);
        assert!(a.diff(&b).is_empty());
    }

    #[test]
    fn diff_names_the_changed_bucket_only() {
        let mut a = Digests::default();
        let b = a.clone();
        a.replace(&BucketHash::default(), b"x", None, &v(1, "n"));
        assert_eq!(a.diff(&b), vec![BucketHash::default().of(b"x")]);
        a.remove(&BucketHash::default(), b"x", &v(1, "n"));
        assert!(a.diff(&b).is_empty());
    }

    /// Scans `map` into `book` the way the store does, bucket by bucket.
    fn scan(book: &mut DigestBook, map: &std::collections::BTreeMap<Vec<u8>, Version>) {
        for (b, generation) in book.dirty() {
            let entries: Vec<_> = map
                .iter()
                .filter(|(k, _)| BucketHash::default().of(k) == b)
                .map(|(k, v)| (k.as_slice(), v))
                .collect();
            book.settle(
                b,
                generation,
                entries.iter().fold(0, |d, (k, v)| d ^ entry_hash(k, v)),
                entries.len() as u32,
            );
        }
    }

    #[test]
    fn a_book_scanned_after_any_writes_equals_the_incremental_digests() {
        let mut map = std::collections::BTreeMap::new();
        let mut incremental = Digests::default();
        let mut book = DigestBook::all_dirty();
        assert_eq!(book.dirty().len(), BUCKETS);
        for i in 0..2000u64 {
            let key = format!("k{}", i % 700).into_bytes();
            let new = v(i, if i % 3 == 0 { "a" } else { "b" });
            if i % 11 == 0 {
                if let Some(old) = map.remove(&key) {
                    incremental.remove(&BucketHash::default(), &key, &old);
                    book.touch(BucketHash::default().of(&key));
                }
                continue;
            }
            let old = map.insert(key.clone(), new.clone());
            incremental.replace(&BucketHash::default(), &key, old.as_ref(), &new);
            book.touch(BucketHash::default().of(&key));
            if i % 500 == 0 {
                scan(&mut book, &map);
                assert_eq!(book.digests(), &incremental);
            }
        }
        scan(&mut book, &map);
        assert!(book.dirty().is_empty());
        assert_eq!(book.digests(), &incremental);
        assert_eq!(book.keys(), map.len() as u64);
    }

    #[test]
    fn a_scan_that_raced_a_commit_leaves_its_bucket_dirty() {
        let mut book = DigestBook::all_dirty();
        let [(b, generation)] = book.dirty()[..1] else {
            unreachable!()
        };
        // A commit lands while the scan of `b` runs.
        book.touch(b);
        book.settle(b, generation, 42, 1);
        assert_eq!(book.digests().as_slice()[usize::from(b)], 42);
        assert_eq!(book.dirty()[0], (b, generation + 1));
        // The rescan settles it; a late, older scan cannot undo that.
        book.settle(b, generation + 1, 7, 2);
        book.settle(b, generation, 42, 1);
        assert_eq!(book.digests().as_slice()[usize::from(b)], 7);
        assert_eq!(book.keys(), 2);
        assert!(!book.dirty().iter().any(|(d, _)| *d == b));
    }

    #[test]
    fn unsettled_buckets_are_compared_as_if_they_differed() {
        let mut book = DigestBook::all_dirty();
        let map: std::collections::BTreeMap<_, _> =
            [(b"a".to_vec(), v(1, "n")), (b"b".to_vec(), v(2, "n"))].into();
        scan(&mut book, &map);
        let settled = book.view();
        assert!(settled.unsettled.is_empty());
        assert!(settled.to_compare(&settled.digests).is_empty());
        // A commit to `a` leaves its old digest in place but unsettled: the
        // peer's equal digest must not hide the change.
        book.touch(BucketHash::default().of(b"a"));
        let view = book.view();
        assert_eq!(view.digests, settled.digests);
        assert_eq!(
            view.to_compare(&settled.digests),
            vec![BucketHash::default().of(b"a")]
        );
        // A differing bucket and an unsettled one are each listed once.
        let mut theirs = settled.digests.clone();
        theirs.replace(&BucketHash::default(), b"a", None, &v(9, "m"));
        theirs.replace(&BucketHash::default(), b"b", None, &v(9, "m"));
        let mut both = vec![
            BucketHash::default().of(b"a"),
            BucketHash::default().of(b"b"),
        ];
        both.sort_unstable();
        assert_eq!(view.to_compare(&theirs), both);
    }

    #[test]
    fn a_bounded_refresh_resumes_where_the_last_one_stopped() {
        let mut book = DigestBook::all_dirty();
        // Scan two buckets, as a refresh whose budget ran out would.
        for (b, generation) in book.dirty().into_iter().take(2) {
            book.settle(b, generation, 0, 0);
            book.resume_after(b);
        }
        // Bucket 0 is written again: it waits its turn behind the rest.
        book.touch(0);
        let order: Vec<u16> = book.dirty().into_iter().map(|(b, _)| b).collect();
        assert_eq!(order.len(), BUCKETS - 1);
        assert_eq!(order[0], 2);
        assert_eq!(*order.last().unwrap(), 0);
        assert_eq!(book.view().unsettled[0], 0);
    }

    #[test]
    fn wire_form_must_have_every_bucket() {
        let d = Digests::default();
        assert_eq!(Digests::from_slice(d.as_slice()), Some(d));
        assert_eq!(Digests::from_slice(&[0; 10]), None);
    }
}
