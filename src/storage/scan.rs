//! Key-ordered reads over `kv`: the range a client names, and pages of it.
//!
//! A page is read with nothing held open afterwards: it ends at a bound on
//! live entries, on value bytes or on entries passed over (tombstones and
//! expired keys count too, so a range of a million deletes still answers in
//! bounded steps), and says where to resume. The caller streams pages, so a
//! scan of any size costs a few pages of memory.

use std::ops::Bound;

use super::{codec, Store};
use crate::{error::Result, version::Entry};

/// A range of keys: `[start, end)`, `end` `None` for no upper bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key that starts with `prefix` (every key, for an empty one).
    pub fn prefix(prefix: &[u8]) -> Self {
        Self {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    /// `[start, end)`; an empty `end` is unbounded. `None` if `end` is not
    /// after `start`.
    pub fn between(start: &[u8], end: &[u8]) -> Option<Self> {
        if end.is_empty() {
            return Some(Self {
                start: start.to_vec(),
                end: None,
            });
        }
        (start < end).then(|| Self {
            start: start.to_vec(),
            end: Some(end.to_vec()),
        })
    }

    /// True if `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_deref().is_none_or(|e| key < e)
    }

    /// The storage bounds of what is left of the range after `after`.
    fn bounds(&self, after: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
        let lower = match after {
            Some(a) if a >= self.start.as_slice() => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(self.start.clone()),
        };
        let upper = match &self.end {
            Some(e) => Bound::Excluded(e.clone()),
            None => Bound::Unbounded,
        };
        (lower, upper)
    }
}

/// The first key after every key that starts with `prefix`: the prefix with
/// its last byte below 0xff incremented and what follows dropped. `None`
/// when there is no such key (empty, or all 0xff).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let cut = prefix.iter().rposition(|b| *b != 0xff)?;
    let mut end = prefix[..=cut].to_vec();
    end[cut] += 1;
    Some(end)
}

/// How much one page may read.
#[derive(Debug, Clone, Copy)]
pub struct PageLimits {
    /// Live entries returned.
    pub entries: usize,
    /// Bytes of the values returned (a page holds at least one entry).
    pub bytes: usize,
    /// Entries read, live or not.
    pub scanned: usize,
}

/// One page of a scan.
#[derive(Debug, Default)]
pub struct Page {
    /// Live entries in key order.
    pub entries: Vec<(String, Entry)>,
    /// The last key read, to resume after; `None` when the range is done.
    pub resume_after: Option<Vec<u8>>,
}

impl Store {
    /// The live entries of `range` after `after`, one page of them. Entries
    /// that are not live at `now_ms` (tombstones, expired values) are passed
    /// over; with `keys_only`, values are dropped as they are read.
    pub fn scan_page(
        &self,
        range: &KeyRange,
        after: Option<&[u8]>,
        limits: PageLimits,
        now_ms: u64,
        keys_only: bool,
    ) -> Result<Page> {
        let mut page = Page::default();
        let (mut scanned, mut bytes, mut read_bytes) = (0usize, 0usize, 0u64);
        let mut iter = self.kv.range::<Vec<u8>, _>(range.bounds(after));
        for kv in iter.by_ref() {
            let (k, v) = kv.into_inner()?;
            scanned += 1;
            read_bytes += v.len() as u64;
            let mut entry = codec::decode_entry(&v)?;
            if entry.is_live(now_ms) {
                if keys_only {
                    entry.value = Some(Vec::new());
                }
                bytes += entry.value.as_ref().map_or(0, Vec::len);
                page.entries.push((codec::kv_user_key(&k)?, entry));
            }
            if page.entries.len() >= limits.entries
                || bytes >= limits.bytes
                || scanned >= limits.scanned
            {
                page.resume_after = Some(k.to_vec());
                break;
            }
        }
        super::blocking::charge(scanned as u64, read_bytes);
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_after_its_last_possible_key() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
        let r = KeyRange::prefix(b"user/");
        assert!(r.contains(b"user/"));
        assert!(r.contains(b"user/zzz"));
        assert!(!r.contains(b"user0"));
        assert!(!r.contains(b"use"));
        assert!(KeyRange::prefix(b"").contains(b"anything"));
    }

    #[test]
    fn a_range_is_half_open_and_must_not_be_empty() {
        let r = KeyRange::between(b"b", b"d").unwrap();
        assert!(!r.contains(b"a"));
        assert!(r.contains(b"b"));
        assert!(r.contains(b"c\xff"));
        assert!(!r.contains(b"d"));
        assert!(KeyRange::between(b"d", b"b").is_none());
        assert!(KeyRange::between(b"b", b"b").is_none());
        assert!(KeyRange::between(b"b", b"").unwrap().contains(b"zzz"));
    }

    #[test]
    fn resuming_never_goes_back_before_the_start() {
        let r = KeyRange::between(b"m", b"").unwrap();
        assert_eq!(r.bounds(Some(b"a")).0, Bound::Included(b"m".to_vec()));
        assert_eq!(r.bounds(Some(b"n")).0, Bound::Excluded(b"n".to_vec()));
    }

    #[tokio::test]
    async fn pages_skip_tombstones_and_stop_at_each_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _seq, _join) = crate::storage::writer::for_tests(dir.path());
        for i in 0..10u8 {
            let value = (i % 3 != 0).then(|| vec![b'v'; 10]);
            writer.write(format!("k{i}"), value).await.unwrap();
        }
        let range = KeyRange::prefix(b"k");
        let all = |limits| {
            let mut keys = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            let mut pages = 0;
            loop {
                let page = store
                    .scan_page(&range, after.as_deref(), limits, 0, false)
                    .unwrap();
                pages += 1;
                keys.extend(page.entries.into_iter().map(|(k, _)| k));
                match page.resume_after {
                    Some(a) => after = Some(a),
                    None => return (keys, pages),
                }
            }
        };
        let live: Vec<String> = (0..10)
            .filter(|i| i % 3 != 0)
            .map(|i| format!("k{i}"))
            .collect();
        let roomy = PageLimits {
            entries: 100,
            bytes: 1 << 20,
            scanned: 100,
        };
        assert_eq!(all(roomy), (live.clone(), 1));
        let (keys, pages) = all(PageLimits {
            entries: 2,
            ..roomy
        });
        assert_eq!((keys, pages), (live.clone(), 4));
        let (keys, pages) = all(PageLimits { bytes: 15, ..roomy });
        assert_eq!((keys, pages), (live.clone(), 4));
        let (keys, pages) = all(PageLimits {
            scanned: 3,
            ..roomy
        });
        assert_eq!((keys, pages), (live, 4));
        let only = store
            .scan_page(&range, None, roomy, 0, true)
            .unwrap()
            .entries;
        assert!(only
            .iter()
            .all(|(_, e)| e.value.as_deref() == Some(&[][..])));
    }
}
