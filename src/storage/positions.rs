//! How far this node has applied each origin's log: the position a write
//! token names is checked against it.
//!
//! An origin streams its log in seq order, and every streamed batch says
//! the seq of its last record. The stream's receiver applies up to four
//! batches at once, and they may commit out of order, so it publishes a
//! batch's end only as it answers it, in order: every batch before it is
//! committed by then, so a position never runs ahead of what a read here
//! can see. It is persisted in `meta` with the writer's next commit and
//! survives a restart; after a crash it may lag, which only makes tokens
//! wait. It is set, not raised: an origin whose log began again (a wiped
//! data dir) streams from its start, and a position left high would pass
//! its new tokens unseen.

use std::collections::BTreeMap;

use fjall::Keyspace;
use tokio::sync::watch;

use crate::error::{Error, Result};

/// `meta` key prefix of the applied positions, one per origin.
const PREFIX: &str = "applied/";

/// The `meta` key of `origin`'s applied position.
pub fn key(origin: &str) -> String {
    format!("{PREFIX}{origin}")
}

/// The applied position of every origin that has streamed here.
#[derive(Debug)]
pub struct Positions {
    tx: watch::Sender<BTreeMap<String, u64>>,
}

impl Positions {
    /// The positions stored in `meta`.
    pub fn load(meta: &Keyspace) -> Result<Self> {
        let mut map = BTreeMap::new();
        for kv in meta.prefix(PREFIX) {
            let (k, v) = kv.into_inner()?;
            let origin = String::from_utf8_lossy(&k[PREFIX.len()..]).into_owned();
            let seq: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                Error::Corrupt(format!(
                    "meta {:?} is not a u64",
                    String::from_utf8_lossy(&k)
                ))
            })?;
            map.insert(origin, u64::from_be_bytes(seq));
        }
        Ok(Self {
            tx: watch::Sender::new(map),
        })
    }

    /// How far `origin`'s log is applied here (0: nothing known).
    pub fn of(&self, origin: &str) -> u64 {
        self.tx.borrow().get(origin).copied().unwrap_or(0)
    }

    /// Every change of a position wakes the receiver.
    pub fn subscribe(&self) -> watch::Receiver<BTreeMap<String, u64>> {
        self.tx.subscribe()
    }

    /// Announces that every record of `origin`'s log up to `seq` is
    /// committed here. Waiters wake only if it moved.
    pub fn set(&self, origin: &str, seq: u64) {
        self.tx.send_if_modified(|map| match map.get_mut(origin) {
            Some(have) if *have == seq => false,
            Some(have) => {
                *have = seq;
                true
            }
            None => {
                map.insert(origin.to_string(), seq);
                true
            }
        });
    }
}
