//! Consistency levels: how many peers a request waits for.
//!
//! A write is durable here before anything waits; a level only decides
//! when the client hears back. `ONE` answers at once. `QUORUM` waits until
//! enough peers have acknowledged the write's log position that, with this
//! node, a majority of the cluster holds it; `ALL` waits for every peer.
//! A wait that outlives its deadline answers DEADLINE_EXCEEDED, naming the
//! peers that hold the write and those still replicating it, and the write
//! keeps replicating: nothing is rolled back (Cassandra's WriteTimeout).
//!
//! Reads take the same levels: `QUORUM` and `ALL` ask that many peers for
//! their copy of the key and answer with the newest.

use crate::{error::Error, proto};

/// How many nodes a request waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// This node alone.
    One,
    /// A majority of the cluster, this node included.
    Quorum,
    /// Every node.
    All,
}

impl Level {
    /// The level a request asked for; unset is `One`.
    pub fn from_proto(value: i32) -> Result<Self, Error> {
        use proto::Consistency as C;
        match C::try_from(value) {
            Ok(C::Unspecified | C::One) => Ok(Level::One),
            Ok(C::Quorum) => Ok(Level::Quorum),
            Ok(C::All) => Ok(Level::All),
            Err(_) => Err(Error::InvalidArgument(format!(
                "consistency {value} is not one of ONE, QUORUM, ALL"
            ))),
        }
    }

    /// Peers, besides this node, that must take part for the level to hold
    /// in a cluster of this node and `peers` others.
    pub fn peers_needed(self, peers: usize) -> usize {
        match self {
            Level::One => 0,
            // A majority of the peers + 1 nodes is (peers + 1) / 2 + 1;
            // less this one.
            Level::Quorum => peers.div_ceil(2),
            Level::All => peers,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::One => "ONE",
            Level::Quorum => "QUORUM",
            Level::All => "ALL",
        })
    }
}

/// Which peers hold a write at a log position.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tally {
    /// Peers that acknowledged the position.
    pub have: Vec<String>,
    /// Peers still replicating up to it.
    pub missing: Vec<String>,
}

impl Tally {
    /// Splits `acked` (each peer and the log seq it acknowledged) at `seq`.
    pub fn at(acked: &[(String, u64)], seq: u64) -> Self {
        let mut t = Tally::default();
        for (peer, upto) in acked {
            if *upto >= seq {
                t.have.push(peer.clone());
            } else {
                t.missing.push(peer.clone());
            }
        }
        t
    }

    /// Whether `level` holds, in a cluster of this node and these peers.
    pub fn meets(&self, level: Level) -> bool {
        self.have.len() >= level.peers_needed(self.have.len() + self.missing.len())
    }

    /// The answer to a wait for `level` that ran out of time.
    pub fn timed_out(&self, level: Level) -> Error {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        Error::DeadlineExceeded(format!(
            "{level} needs {} of {} peers, and the deadline passed: the write is durable on \
             this node and on peers [{}]; still replicating to [{}]. It is not rolled back \
             and keeps replicating",
            level.peers_needed(self.have.len() + self.missing.len()),
            self.have.len() + self.missing.len(),
            list(&self.have),
            list(&self.missing),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quorum_is_a_majority_of_the_cluster_counting_this_node() {
        for (peers, one, quorum, all) in [
            (0, 0, 0, 0),
            (1, 0, 1, 1),
            (2, 0, 1, 2),
            (3, 0, 2, 3),
            (4, 0, 2, 4),
        ] {
            assert_eq!(Level::One.peers_needed(peers), one);
            assert_eq!(Level::Quorum.peers_needed(peers), quorum, "{peers} peers");
            assert_eq!(Level::All.peers_needed(peers), all);
        }
    }

    #[test]
    fn a_tally_splits_peers_at_the_position_and_names_them_on_timeout() {
        let acked = [("n2".to_string(), 10), ("n3".to_string(), 9)];
        let t = Tally::at(&acked, 10);
        assert_eq!(
            (t.have.as_slice(), t.missing.as_slice()),
            (&["n2".to_string()][..], &["n3".to_string()][..])
        );
        assert!(t.meets(Level::One) && t.meets(Level::Quorum) && !t.meets(Level::All));
        let msg = t.timed_out(Level::All).to_string();
        assert!(
            msg.contains("[n2]") && msg.contains("replicating to [n3]"),
            "{msg}"
        );
        assert!(Tally::at(&acked, 9).meets(Level::All));
        assert!(!Tally::at(&acked, 11).meets(Level::Quorum));
    }

    #[test]
    fn unknown_levels_are_refused() {
        assert_eq!(Level::from_proto(0).unwrap(), Level::One);
        assert_eq!(Level::from_proto(3).unwrap(), Level::All);
        assert!(matches!(
            Level::from_proto(9),
            Err(Error::InvalidArgument(_))
        ));
    }
}
