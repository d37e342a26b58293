//! The newest log records in memory, already encoded: what every peer's
//! stream reads while it keeps up.
//!
//! Without it each of a node's streams reads every record back from the
//! `log` keyspace and decodes it, and encodes it again to send it: per
//! write, twice the work per peer. The writer appends each committed batch
//! here; a stream that has fallen behind the window's start reads the disk
//! instead, so an outage still costs disk, not memory. This is Redis's shared
//! replication backlog, with the log on disk behind it.

use std::{collections::VecDeque, sync::Mutex};

use prost::bytes::Bytes;

use crate::wire::framed_len;

/// Bytes of records the window holds, at most (values included).
pub const WINDOW_BYTES: usize = 8 * 1024 * 1024;

/// Recent records, contiguous by seq.
#[derive(Debug)]
pub struct LogWindow {
    inner: Mutex<Inner>,
    cap: usize,
}

#[derive(Debug)]
struct Inner {
    records: VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// The seq the next record appended will have.
    next: u64,
}

impl LogWindow {
    /// An empty window after `last_seq`, holding at most `cap` bytes.
    pub fn new(last_seq: u64, cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                records: VecDeque::new(),
                bytes: 0,
                next: last_seq + 1,
            }),
            cap,
        }
    }

    /// Appends committed records, in seq order, and drops the oldest beyond
    /// the cap. A record that does not follow the last one empties the
    /// window first, so that what it holds is always contiguous.
    pub fn append(&self, records: impl IntoIterator<Item = (u64, Bytes)>) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (seq, record) in records {
            if seq != w.next {
                w.records.clear();
                w.bytes = 0;
            }
            w.next = seq + 1;
            w.bytes += record.len();
            w.records.push_back((seq, record));
        }
        while w.bytes > self.cap {
            match w.records.pop_front() {
                Some((_, r)) => w.bytes -= r.len(),
                None => break,
            }
        }
    }

    /// Drops the records below `seq`: retention deleted them from the log,
    /// and the window serves nothing the log no longer holds.
    pub fn forget_before(&self, seq: u64) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while w.records.front().is_some_and(|(s, _)| *s < seq) {
            if let Some((_, r)) = w.records.pop_front() {
                w.bytes -= r.len();
            }
        }
    }

    /// Records after seq `after`, at most `max_entries` and about
    /// `max_bytes` framed (always one, if any), or `None` if the window no
    /// longer starts early enough: then the caller reads the disk.
    pub fn after(
        &self,
        after: u64,
        max_entries: usize,
        max_bytes: usize,
    ) -> Option<Vec<(u64, Bytes)>> {
        let w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let start = w.next - w.records.len() as u64;
        if after.saturating_add(1) < start {
            return None;
        }
        let skip = usize::try_from(after + 1 - start).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0;
        for (seq, record) in w.records.iter().skip(skip) {
            let framed = framed_len(record.len());
            if !out.is_empty() && (out.len() >= max_entries || bytes + framed > max_bytes) {
                break;
            }
            bytes += framed;
            out.push((*seq, record.clone()));
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn seqs(v: &[(u64, Bytes)]) -> Vec<u64> {
        v.iter().map(|(s, _)| *s).collect()
    }

    #[test]
    fn serves_what_follows_a_cursor_and_sends_the_rest_to_disk() {
        let w = LogWindow::new(10, 1000);
        // Nothing appended yet: a caught-up cursor gets nothing, an older one the disk.
        assert_eq!(w.after(10, 10, 1000).map(|v| v.len()), Some(0));
        assert!(w.after(9, 10, 1000).is_none());
        w.append((11..=20).map(|s| (s, rec(10))));
        assert_eq!(
            seqs(&w.after(10, 100, 1000).unwrap()),
            (11..=20).collect::<Vec<_>>()
        );
        assert_eq!(seqs(&w.after(15, 2, 1000).unwrap()), vec![16, 17]);
        assert_eq!(w.after(20, 10, 1000).unwrap().len(), 0);
        // Beyond the last record: nothing yet, not the disk.
        assert_eq!(w.after(25, 10, 1000).unwrap().len(), 0);
    }

    #[test]
    fn the_byte_budget_always_lets_one_record_through() {
        let w = LogWindow::new(0, 10_000);
        w.append((1..=5).map(|s| (s, rec(100))));
        let framed = framed_len(100);
        assert_eq!(w.after(0, 100, framed * 2).unwrap().len(), 2);
        assert_eq!(w.after(0, 100, 1).unwrap().len(), 1);
    }

    #[test]
    fn the_oldest_records_leave_at_the_cap_and_a_hole_empties_the_window() {
        let w = LogWindow::new(0, 250);
        w.append((1..=5).map(|s| (s, rec(100))));
        // Only the last two fit in 250 bytes.
        assert!(w.after(2, 10, 10_000).is_none());
        assert_eq!(seqs(&w.after(3, 10, 10_000).unwrap()), vec![4, 5]);
        // A record that does not follow seq 5 starts the window afresh.
        w.append([(9, rec(10))]);
        assert!(w.after(5, 10, 10_000).is_none());
        assert_eq!(seqs(&w.after(8, 10, 10_000).unwrap()), vec![9]);
    }

    #[test]
    fn records_retention_deleted_are_read_from_disk_not_from_the_window() {
        let w = LogWindow::new(0, 10_000);
        w.append((1..=5).map(|s| (s, rec(10))));
        w.forget_before(4);
        assert!(w.after(2, 10, 10_000).is_none());
        assert_eq!(seqs(&w.after(3, 10, 10_000).unwrap()), vec![4, 5]);
        // Past the end: the window is empty, and its next seq stays.
        w.forget_before(9);
        assert_eq!(w.after(5, 10, 10_000).unwrap().len(), 0);
        assert!(w.after(4, 10, 10_000).is_none());
        w.append([(6, rec(10))]);
        assert_eq!(seqs(&w.after(5, 10, 10_000).unwrap()), vec![6]);
    }
}
