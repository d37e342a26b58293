//! The values calls take and return.

use std::time::Duration;

use crate::proto;

/// How many nodes a call waits for; see the server's README.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Consistency {
    /// The node that takes the call.
    #[default]
    One,
    /// A majority of the cluster, that node included.
    Quorum,
    /// Every node.
    All,
}

impl Consistency {
    pub(crate) fn proto(self) -> i32 {
        match self {
            Consistency::One => proto::Consistency::One,
            Consistency::Quorum => proto::Consistency::Quorum,
            Consistency::All => proto::Consistency::All,
        }
        .into()
    }
}

/// A write's version: its hybrid-logical-clock time and its origin node.
/// The highest version of a key wins on every node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The HLC timestamp.
    pub hlc: u64,
    /// The node that took the write.
    pub node: String,
}

impl Version {
    pub(crate) fn from_proto(v: Option<proto::Version>) -> Option<Self> {
        v.map(|v| Version {
            hlc: v.hlc,
            node: v.node_id,
        })
    }

    pub(crate) fn to_proto(&self) -> proto::Version {
        proto::Version {
            hlc: self.hlc,
            node_id: self.node.clone(),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.hlc, self.node)
    }
}

/// Names a write's place in its origin's log. Pass it to a read (on any
/// node) to read that write or a newer one, or keep it in a [`Session`].
///
/// [`Session`]: crate::Session
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Token(pub String);

impl Token {
    /// The origin node and log position, if the token has the shape the
    /// server gives it (`t1.<node>.<seq>`): a session keeps the newest per
    /// node.
    pub(crate) fn position(&self) -> Option<(&str, u64)> {
        let (origin, seq) = self.0.strip_prefix("t1.")?.rsplit_once('.')?;
        Some((origin, seq.parse().ok()?))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a write or delete got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// Its version.
    pub version: Version,
    /// Its token.
    pub token: Token,
}

/// The expiry the node sends (0: none), as the client shows it.
pub(crate) fn expiry(ms: u64) -> Option<u64> {
    (ms > 0).then_some(ms)
}

/// A live value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// The version that wrote them.
    pub version: Version,
    /// When it expires, in Unix milliseconds, if it has a TTL.
    pub expires_ms: Option<u64>,
}

/// The state a compare-and-set expects on the node that takes the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A live value at exactly this version.
    Version(Version),
    /// No live value.
    Absent,
}

impl Expect {
    pub(crate) fn proto(&self) -> proto::Expect {
        use proto::expect::State;
        proto::Expect {
            state: Some(match self {
                Expect::Version(v) => State::Version(v.to_proto()),
                Expect::Absent => State::Absent(true),
            }),
        }
    }
}

/// Options of one write or delete.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// How many nodes must hold it before the answer.
    pub consistency: Consistency,
    /// Expire the value this long after the write (writes only).
    pub ttl: Option<Duration>,
    /// Compare-and-set.
    pub expect: Option<Expect>,
    /// This call's deadline instead of the client's.
    pub timeout: Option<Duration>,
}

impl WriteOptions {
    /// The defaults at `consistency`.
    pub fn at(consistency: Consistency) -> Self {
        Self {
            consistency,
            ..Self::default()
        }
    }
}

/// Options of one read.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// How many nodes' copies to compare.
    pub consistency: Consistency,
    /// Answer only once the node has applied these writes.
    pub after: Vec<Token>,
    /// This call's deadline instead of the client's.
    pub timeout: Option<Duration>,
}

/// Options of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// With an empty prefix: the first key of the range (inclusive).
    pub start: String,
    /// With an empty prefix: the key after the range (empty: no end).
    pub end: String,
    /// The most keys to return, then a page token if more remain (0: no
    /// limit; the keys still arrive in pages).
    pub limit: u32,
    /// Go on from where an earlier scan with a limit stopped.
    pub page_token: String,
    /// Leave the values out.
    pub keys_only: bool,
}

/// Options of a watch.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Resume after the event that carried this token.
    pub resume_token: Option<String>,
    /// Ask for a [`Progress`](crate::EventKind::Progress) event when
    /// nothing changed for this long, so that a quiet stream still says
    /// it is caught up.
    pub progress: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_origin_and_position() {
        assert_eq!(
            Token("t1.node.1.42".into()).position(),
            Some(("node.1", 42))
        );
        assert_eq!(Token("w1.x.2".into()).position(), None);
        assert_eq!(Token("t1.n1.x".into()).position(), None);
    }
}
