//! One group commit: stage every command of the batch (stamping local
//! writes, deciding remote ones through [`apply::decide`](super::apply::decide),
//! purges), choose its durability, commit, then publish what it changed
//! (digests, visible time, the log window, the seq).

use std::{collections::HashMap, sync::Arc};

use fjall::PersistMode;
use prost::Message;

use super::{apply, Applied, Command, Expect, LocalWrite, Outcome, Writer, Written};
use crate::{
    config::FsyncMode,
    error::{Error, Result},
    proto::ChangeKind,
    storage::{codec, feed},
    version::{to_mutation, Entry, Version},
};

/// Old changes dropped from the feed per batch at most, so that trimming
/// never makes one commit long.
const TRIM_CHUNK: u64 = 1024;

impl Writer {
    /// The newest state of `key`, counting writes earlier in this batch.
    /// `overlay` holds what this batch has done to a key so far: `Some(entry)`
    /// written, `None` removed.
    pub(super) fn current(
        &self,
        overlay: &HashMap<String, Option<Entry>>,
        key: &str,
    ) -> Result<Option<Entry>> {
        match overlay.get(key) {
            Some(e) => Ok(e.clone()),
            None => self.store.get(key),
        }
    }

    /// Commits `cmds` as one batch. Local values are moved out of the
    /// commands (only their reply senders are needed afterwards), so the
    /// write path does not copy them.
    pub(super) fn commit(&mut self, cmds: &mut [Command]) -> Result<Vec<Outcome>> {
        let started = std::time::Instant::now();
        let mut st = Staged {
            batch: self.store.db.batch(),
            overlay: HashMap::new(),
            changes: Vec::new(),
            records: Vec::new(),
            seq: self.last_seq,
            change_seq: self.change_seq,
            feed: Vec::new(),
            log_bytes: 0,
            // Never below what was published as visible: an entry applied at
            // or after it must not count as covered by a round that started then.
            now_ms: self.hlc.wall_ms().max(self.store.visible_ms()),
        };
        let mut outcomes = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            outcomes.push(match cmd {
                Command::Local { writes, .. } => Outcome::Local(self.stage_local(&mut st, writes)?),
                Command::Remote {
                    mutations,
                    streamed,
                    ..
                } => Outcome::Applied(self.stage_remote(&mut st, mutations, *streamed)?),
                Command::Forget {
                    entries,
                    only_tombstones,
                    ..
                } => Outcome::Count(self.stage_forget(&mut st, entries, *only_tombstones)?),
                Command::Expire { due, .. } => Outcome::Count(self.stage_expire(&mut st, due)?),
            });
        }
        let first_change = self.stage_trim(&mut st);
        self.stage_meta(&mut st);
        let durability = match self.opts.fsync {
            // A batch of cursors alone needs no sync: losing one re-sends records.
            FsyncMode::Always if st.changes.is_empty() && outcomes.is_empty() => {
                PersistMode::Buffer
            }
            FsyncMode::Always => PersistMode::SyncAll,
            // Hand the bytes to the OS so that a crash of the process alone loses nothing.
            FsyncMode::Periodic | FsyncMode::Never => PersistMode::Buffer,
        };
        let prepared = std::time::Instant::now();
        crate::metrics::stage("writer_prepare", prepared - started);
        if let Err(e) = st.batch.durability(Some(durability)).commit() {
            let why =
                format!("storage failed ({e}); this node refuses writes until it is restarted");
            tracing::error!(error = %e, "commit failed: failing stop for writes");
            self.failed = Some(why);
            self.fatal.cancel();
            return Err(Error::Storage(e));
        }
        crate::metrics::stage("writer_commit", prepared.elapsed());

        let store = &self.store;
        store.touch_digests(st.changes.iter().map(String::as_str));
        store.publish_visible(st.now_ms);
        // Before the seq is announced: a stream woken by it finds the records.
        store.window.append(st.records);
        store.add_log_bytes(st.log_bytes);
        store.set_high_water(self.hlc.high_water());
        self.change_seq = st.change_seq;
        self.first_change = first_change;
        store
            .feed
            .publish(st.change_seq, first_change, std::mem::take(&mut st.feed));
        if st.seq != self.last_seq {
            self.last_seq = st.seq;
            self.seq_tx.send_replace(st.seq);
        }
        Ok(outcomes)
    }

    /// Checks every condition of a command before any of it is staged, so a
    /// command commits whole or not at all. Err is the command's answer.
    fn check_conditions(&mut self, st: &Staged, writes: &[LocalWrite]) -> Result<Result<()>> {
        for w in writes {
            let Some(expect) = &w.expect else { continue };
            let current = self.current(&st.overlay, &w.key)?;
            if let Some(c) = &current {
                self.hlc.observe(c.version.hlc);
            }
            if !expect.holds(current.as_ref(), st.now_ms) {
                let live = current.filter(|e| e.is_live(st.now_ms));
                return Ok(Err(precondition_failed(&w.key, expect, live.as_ref())));
            }
        }
        Ok(Ok(()))
    }

    /// Stamps local writes with the clock and stages them with their log
    /// records; their versions, in order. The outer error is a storage
    /// failure (the batch fails); the inner one, a condition that does not
    /// hold (only this command fails).
    fn stage_local(
        &mut self,
        st: &mut Staged,
        writes: &mut [LocalWrite],
    ) -> Result<Result<Written>> {
        if let Err(e) = self.check_conditions(st, writes)? {
            return Ok(Err(e));
        }
        let store = Arc::clone(&self.store);
        let mut versions = Vec::with_capacity(writes.len());
        for w in writes.iter_mut() {
            let key = &w.key;
            // No read of the old version once the clock has seen every stored
            // version: a local write then always wins, and the digests are
            // rescanned lazily (see `storage::digest`).
            if !self.clock_checked {
                if let Some(old) = self.current(&st.overlay, key)? {
                    self.hlc.observe(old.version.hlc);
                }
            }
            let version = Version {
                hlc: self.hlc.now(),
                node: self.opts.node_id.clone(),
            };
            let value = w.value.take();
            let expires_ms = match (&value, w.ttl_ms) {
                (Some(_), Some(ttl)) => {
                    Some(crate::clock::physical_ms(version.hlc).saturating_add(ttl))
                }
                _ => None,
            };
            let entry = Entry {
                version,
                value,
                expires_ms,
            };
            st.seq += 1;
            let seq = st.seq;
            store.batch_put(&mut st.batch, key, &entry, st.now_ms);
            let record =
                prost::bytes::Bytes::from(crate::version::to_mutation(key, &entry).encode_to_vec());
            st.log_bytes += record.len() as u64;
            st.batch
                .insert(&store.log, codec::log_key(seq).to_vec(), &record[..]);
            let kind = if entry.is_tombstone() {
                ChangeKind::Delete
            } else {
                ChangeKind::Put
            };
            self.stage_change(st, record.clone(), kind);
            st.records.push((seq, record));
            st.changes.push(key.clone());
            tracing::trace!(key = ?key, version = %entry.version, seq, tombstone = entry.is_tombstone(), "local write");
            versions.push(entry.version.clone());
            st.overlay.insert(key.clone(), Some(entry));
        }
        Ok(Ok(Written {
            versions,
            seq: st.seq,
        }))
    }

    /// Stages the remote entries that [`apply::decide`] lets in.
    fn stage_remote(
        &mut self,
        st: &mut Staged,
        mutations: &[(String, Entry)],
        streamed: bool,
    ) -> Result<Applied> {
        let ctx = apply::Context {
            now_ms: st.now_ms,
            ttl_ms: self.opts.tombstone_ttl.as_millis() as u64,
            max_lead_ms: self.opts.max_clock_skew.as_millis() as u64,
            streamed,
        };
        let mut done = Applied::default();
        for (i, (key, entry)) in mutations.iter().enumerate() {
            let old = self.current(&st.overlay, key)?;
            let mut decision = apply::decide(old.as_ref(), entry, &ctx);
            if decision == apply::Decision::Loses
                && old.is_some()
                && crate::planted::active(crate::planted::Bug::MergeIgnoresVersions)
            {
                decision = apply::Decision::Apply;
            }
            if decision.observes() {
                self.hlc.observe(entry.version.hlc);
            }
            tracing::trace!(key = ?key, version = %entry.version, streamed, tombstone = entry.is_tombstone(), ?decision, "remote entry");
            if let Some(o) = old
                .as_ref()
                .filter(|o| o.version.node != entry.version.node)
            {
                let remote_won = match decision {
                    apply::Decision::Apply => Some(true),
                    apply::Decision::Loses if o.version != entry.version => Some(false),
                    _ => None,
                };
                if let Some(remote_won) = remote_won {
                    done.contested.push(super::Contest {
                        key: key.clone(),
                        local: o.version.clone(),
                        remote: entry.version.clone(),
                        remote_won,
                    });
                }
            }
            match decision {
                apply::Decision::Apply => {}
                apply::Decision::Refuse(why) => {
                    if done.refused.is_empty() {
                        tracing::warn!(key = ?key, version = %entry.version, "remote entry refused: {why}");
                    }
                    crate::metrics::clock_skew_event();
                    done.refused.push((i, key.clone(), why));
                    continue;
                }
                apply::Decision::Loses
                | apply::Decision::PastHorizon
                | apply::Decision::ExpiredTombstone => continue,
            }
            self.store.batch_put(&mut st.batch, key, entry, st.now_ms);
            let kind = match entry {
                e if e.is_tombstone() => ChangeKind::Delete,
                e if !e.is_live(st.now_ms) => ChangeKind::Expire,
                _ => ChangeKind::Put,
            };
            self.stage_change(st, Self::mutation(key, entry), kind);
            st.changes.push(key.clone());
            st.overlay.insert(key.clone(), Some(entry.clone()));
            done.applied += 1;
        }
        Ok(done)
    }

    /// Stages the removal of entries still at the given versions; how many.
    fn stage_forget(
        &self,
        st: &mut Staged,
        entries: &[(String, Version)],
        only_tombstones: bool,
    ) -> Result<u64> {
        let mut purged = 0;
        for (key, version) in entries {
            let current = self.current(&st.overlay, key)?;
            let was_live = current.as_ref().is_some_and(|c| c.is_live(st.now_ms));
            let matches = current.is_some_and(|c| {
                &c.version == version && (!c.is_live(st.now_ms) || !only_tombstones)
            });
            if matches {
                // A live value forgotten in catch-up disappears: to a watcher, a delete.
                if was_live {
                    let gone = Entry::new(version.clone(), None);
                    self.stage_change(st, Self::mutation(key, &gone), ChangeKind::Delete);
                }
                tracing::trace!(key = ?key, version = %version, only_tombstones, "forgotten");
                self.store.batch_remove(&mut st.batch, key);
                st.changes.push(key.clone());
                st.overlay.insert(key.clone(), None);
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Gives a change (an encoded mutation) the next change seq, writes it
    /// to the feed, and queues it for live watchers.
    fn stage_change(&self, st: &mut Staged, mutation: prost::bytes::Bytes, kind: ChangeKind) {
        st.change_seq += 1;
        let record = feed::encode_change(mutation, kind);
        st.batch.insert(
            &self.store.feed.changes,
            feed::change_key(st.change_seq),
            &record[..],
        );
        st.feed.push((st.change_seq, record));
    }

    /// The encoded mutation of `entry` under `key`, for [`Self::stage_change`].
    fn mutation(key: &str, entry: &Entry) -> prost::bytes::Bytes {
        to_mutation(key, entry).encode_to_vec().into()
    }

    /// Records due expiries as changes, for the keys that still hold them,
    /// and drops their index entries; how many were recorded.
    fn stage_expire(&self, st: &mut Staged, due: &[(Vec<u8>, String, u64)]) -> Result<u64> {
        let mut n = 0;
        for (index_key, key, at) in due {
            st.batch.remove(&self.store.feed.expiry, index_key.clone());
            let Some(e) = self.current(&st.overlay, key)? else {
                continue;
            };
            if e.expires_ms == Some(*at) && e.value.is_some() && !e.is_live(st.now_ms) {
                self.stage_change(st, Self::mutation(key, &e), ChangeKind::Expire);
                n += 1;
            }
        }
        Ok(n)
    }

    /// Drops the oldest changes past `retain_changes` (a chunk at most); the
    /// oldest change kept afterwards.
    fn stage_trim(&self, st: &mut Staged) -> u64 {
        let mut first = self.first_change;
        let keep_from = st
            .change_seq
            .saturating_sub(self.opts.retain_changes)
            .saturating_add(1);
        let until = keep_from.min(first.saturating_add(TRIM_CHUNK));
        while first < until {
            st.batch
                .remove(&self.store.feed.changes, feed::change_key(first).to_vec());
            first += 1;
        }
        first
    }

    /// Stages the clock mark, the last seqs and the pending `meta` records.
    fn stage_meta(&self, st: &mut Staged) {
        let store = &self.store;
        store.batch_meta(&mut st.batch, self.hlc.high_water(), st.seq, st.change_seq);
        let pending = self.pending.take();
        for (key, v) in &pending.cursors {
            store.batch_meta_u64(&mut st.batch, key, *v);
        }
        for (peer, m) in &pending.seen {
            let [current, incarnation, prior] = crate::storage::seen_keys(peer);
            for (key, v) in [
                (current, m.current),
                (incarnation, m.incarnation),
                (prior, m.prior),
            ] {
                store.batch_meta_u64(&mut st.batch, &key, v);
            }
        }
    }
}

/// What one group commit has staged so far.
struct Staged {
    batch: fjall::OwnedWriteBatch,
    /// What this batch has done to a key so far: `Some(entry)` written,
    /// `None` removed.
    overlay: HashMap<String, Option<Entry>>,
    /// The keys this batch changes: their buckets' digests go dirty.
    changes: Vec<String>,
    /// This batch's log records, for the window once committed.
    records: Vec<(u64, prost::bytes::Bytes)>,
    /// The last log seq, counting this batch's local writes.
    seq: u64,
    /// The last change seq, counting this batch's changes.
    change_seq: u64,
    /// This batch's changes, for live watchers once committed.
    feed: Vec<feed::Change>,
    /// Bytes of this batch's log records.
    log_bytes: u64,
    /// This batch's time: `applied_ms` of its tombstones, and the horizon.
    now_ms: u64,
}

/// The answer to a write whose condition does not hold: what it expected
/// and what the key holds.
fn precondition_failed(key: &str, expect: &Expect, live: Option<&Entry>) -> Error {
    let wanted = match expect {
        Expect::Absent => "the key to be absent".to_string(),
        Expect::Version(v) => format!("version {v}"),
    };
    let found = match live {
        Some(e) => format!("it is at version {}", e.version),
        None => "it is absent".to_string(),
    };
    Error::Precondition {
        message: format!("key {key:?}: expected {wanted}, but {found}"),
        current: live.map(|e| e.version.clone()),
    }
}
