//! What crosses the wire between peers: the one place where a peer's
//! mutation becomes a domain entry, and the sizing rule every peer message
//! follows. It sits below both [`api`](crate::api), which receives batches,
//! and [`replication`](crate::replication), which pulls them, so neither
//! depends on the other.
//!
//! **Peers accept what a peer accepted.** An origin checked a client's value
//! against its own `max_value_bytes` before acknowledging it; a receiver
//! configured with a smaller limit must still take it, or that write would
//! never converge. So entries from peers are checked only against
//! cluster-wide constants: the key limit, the value ceiling every node shares,
//! a well-formed version, and a clock value the HLC can still advance past.
//! An entry that fails is refused alone; the rest of its batch is applied.
//!
//! **Every peer message fits.** All peer services decode up to
//! [`PEER_MESSAGE_LIMIT`] on every node, whatever its configuration, and every
//! batch or answer is filled by protobuf encoded length against a budget below
//! it, with one oversized item always allowed alone. One item is at most a
//! maximal value plus a maximal key, which is below the limit, so no message a
//! node sends can be too large for a peer to decode.

use prost::Message;

use crate::{
    clock::physical_ms,
    config::{valid_id, MAX_KEY_BYTES, MAX_VALUE_BYTES_CEILING},
    error::{Error, Result},
    proto,
    version::{version_from_proto, Entry},
};

/// The largest message any peer service decodes or encodes, on every node:
/// the value ceiling plus room for a key, a version and framing.
pub const PEER_MESSAGE_LIMIT: usize = MAX_VALUE_BYTES_CEILING + 1024 * 1024;

/// The most bytes of items one peer message is filled with (one item alone may
/// exceed it). Leaves room below [`PEER_MESSAGE_LIMIT`] for the envelope.
pub const MAX_FILL: usize = MAX_VALUE_BYTES_CEILING;

/// An anti-entropy answer (or one step of the local side of a round) stops
/// growing past this many encoded bytes; it always covers at least one bucket
/// or key.
pub const ANSWER_BUDGET: usize = 4 * 1024 * 1024;

/// The most keys one Fetch may ask for.
pub const MAX_FETCH_KEYS: usize = 1024;

/// Versions whose physical part reaches this (2^47 ms, about the year 6400)
/// are refused before they reach the writer, which also refuses anything
/// further ahead of its own clock than `max_clock_skew_ms`
/// (`storage::writer::apply`; see "Clock skew" in `docs/design/data-model.md`).
pub const MAX_PHYSICAL_MS: u64 = 1 << 47;

/// A [`proto::ReplicateRequest`] whose mutations are already encoded: a
/// sender ships its log records as they are stored, without decoding and
/// re-encoding them. A `repeated Mutation` field and a `repeated bytes` field
/// holding encoded Mutations are the same bytes on the wire, so receivers
/// decode this as an ordinary ReplicateRequest.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncodedReplicateRequest {
    /// As in [`proto::ReplicateRequest`].
    #[prost(string, tag = "1")]
    pub cluster_id: String,
    /// As in [`proto::ReplicateRequest`].
    #[prost(string, tag = "2")]
    pub origin: String,
    /// Encoded [`proto::Mutation`]s.
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub mutations: Vec<prost::bytes::Bytes>,
    /// As in [`proto::ReplicateRequest`].
    #[prost(bool, tag = "4")]
    pub repair: bool,
    /// As in [`proto::ReplicateRequest`].
    #[prost(uint64, tag = "5")]
    pub upto_seq: u64,
}

/// The bytes one item of `encoded_len` adds to a `repeated` field of a message:
/// its tag (field numbers below 16), its length prefix and itself.
pub fn framed_len(encoded_len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(encoded_len as u64) + encoded_len
}

/// Whether an item of `item` framed bytes still goes into a message already
/// holding `filled` bytes of `count` items, under `budget`. The first item
/// always goes, so that an oversized one travels alone instead of never.
pub fn fits(count: usize, filled: usize, item: usize, budget: usize) -> bool {
    count == 0 || filled + item <= budget
}

/// Splits `items` into runs whose framed encoded length stays within
/// `budget` (an item larger than the budget forms a run of its own).
pub fn chunk_by_size<T: Message>(items: Vec<T>, budget: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut filled = 0;
    for item in items {
        let len = framed_len(item.encoded_len());
        if !fits(run.len(), filled, len, budget) {
            out.push(std::mem::take(&mut run));
            filled = 0;
        }
        filled += len;
        run.push(item);
    }
    if !run.is_empty() {
        out.push(run);
    }
    out
}

/// A key as every node accepts it: 1..=1024 bytes of UTF-8 (protobuf already
/// guarantees UTF-8).
pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "key is {} bytes; keys must be 1..={MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    Ok(())
}

/// Checks one mutation from a peer and converts it. The error is the reason
/// for refusing this entry alone.
pub fn mutation_from_proto(m: proto::Mutation) -> Result<(String, Entry)> {
    check_key(&m.key)?;
    if let Some(v) = &m.value {
        if v.len() > MAX_VALUE_BYTES_CEILING {
            return Err(Error::InvalidArgument(format!(
                "value is {} bytes; no node accepts more than {MAX_VALUE_BYTES_CEILING}",
                v.len()
            )));
        }
    }
    let version = m
        .version
        .ok_or_else(|| Error::InvalidArgument("no version".into()))?;
    if !valid_id(&version.node_id) {
        return Err(Error::InvalidArgument(format!(
            "version node_id {:?} must be 1..=64 characters of [A-Za-z0-9._-]",
            truncated(&version.node_id)
        )));
    }
    if physical_ms(version.hlc) >= MAX_PHYSICAL_MS {
        return Err(Error::InvalidArgument(format!(
            "version {} is beyond the clock's range (physical time 2^47 ms)",
            version.hlc
        )));
    }
    Ok((
        m.key,
        Entry {
            version: version_from_proto(version),
            expires_ms: (m.expires_ms != 0 && m.value.is_some()).then_some(m.expires_ms),
            value: m.value,
        },
    ))
}

/// The checked entries of a batch, and the refusals (by position) of the rest.
pub fn split_batch(mutations: Vec<proto::Mutation>) -> (Vec<(String, Entry)>, Vec<proto::Refusal>) {
    split_checked(mutations, |_| Ok(()))
}

/// Like [`split_batch`], for a batch from `origin`'s log stream: it carries
/// only `origin`'s own writes, so an entry with another node's version is
/// refused. (Repairs relay every node's entries; they go by the merge rule
/// and the horizon alone.)
pub fn split_streamed(
    mutations: Vec<proto::Mutation>,
    origin: &str,
) -> (Vec<(String, Entry)>, Vec<proto::Refusal>) {
    split_checked(mutations, |e| {
        if *e.version.node == *origin {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "a streamed entry must be its origin's own write, but its version is \
                 {}'s, not {origin}'s",
                truncated(&e.version.node)
            )))
        }
    })
}

fn split_checked(
    mutations: Vec<proto::Mutation>,
    check: impl Fn(&Entry) -> Result<()>,
) -> (Vec<(String, Entry)>, Vec<proto::Refusal>) {
    let mut ok = Vec::with_capacity(mutations.len());
    let mut refused = Vec::new();
    for (i, m) in mutations.into_iter().enumerate() {
        let key = truncated(&m.key).to_string();
        match mutation_from_proto(m).and_then(|(k, e)| check(&e).map(|()| (k, e))) {
            Ok(e) => ok.push(e),
            Err(e) => refused.push(proto::Refusal {
                index: i as u32,
                key,
                reason: e.to_string(),
            }),
        }
    }
    (ok, refused)
}

/// Where the `at`-th entry that [`split_batch`] let through sat in the
/// request, given the request indices it refused (in order): the index a
/// refusal of that entry must name.
pub fn request_index(malformed: &[u32], at: usize) -> u32 {
    let mut index = at as u32;
    for &m in malformed {
        if m <= index {
            index += 1;
        }
    }
    index
}

/// At most 128 bytes of a peer-supplied string, for logs and refusals.
pub fn truncated(s: &str) -> &str {
    if s.len() <= 128 {
        return s;
    }
    let mut end = 128;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::from_physical_ms;

    #[test]
    fn a_refusal_after_the_split_names_the_index_in_the_request() {
        // Request entries 0..6; 1 and 2 were malformed, so the writer saw
        // 0, 3, 4, 5 as its entries 0, 1, 2, 3.
        let malformed = [1, 2];
        let seen: Vec<u32> = (0..4).map(|at| request_index(&malformed, at)).collect();
        assert_eq!(seen, [0, 3, 4, 5]);
        assert_eq!(request_index(&[], 7), 7);
        assert_eq!(request_index(&[0, 1, 2], 0), 3);
    }

    #[test]
    fn an_encoded_request_is_an_ordinary_request_on_the_wire() {
        let mutations = vec![
            m("a", 1, "n1", Some(b"x".to_vec())),
            m("b", 2, "n1", None),
            m("c", 3, "n1", Some(Vec::new())),
        ];
        let plain = proto::ReplicateRequest {
            cluster_id: "c".into(),
            origin: "n1".into(),
            mutations: mutations.clone(),
            repair: false,
            upto_seq: 7,
        };
        let encoded = EncodedReplicateRequest {
            cluster_id: "c".into(),
            origin: "n1".into(),
            mutations: mutations.iter().map(|m| m.encode_to_vec().into()).collect(),
            repair: false,
            upto_seq: 7,
        };
        assert_eq!(encoded.encode_to_vec(), plain.encode_to_vec());
        let back = proto::ReplicateRequest::decode(&encoded.encode_to_vec()[..]).unwrap();
        assert_eq!(back, plain);
    }

    fn m(key: &str, hlc: u64, node: &str, value: Option<Vec<u8>>) -> proto::Mutation {
        proto::Mutation {
            key: key.into(),
            version: Some(proto::Version {
                hlc,
                node_id: node.into(),
            }),
            value,
            expires_ms: 0,
        }
    }

    #[test]
    fn a_value_over_the_receivers_client_limit_is_accepted_from_a_peer() {
        // 1.5 MiB: over the default client limit of 1 MiB, under the ceiling.
        let big = m("k", 1, "n1", Some(vec![7; 1536 * 1024]));
        assert!(mutation_from_proto(big).is_ok());
        let huge = m("k", 1, "n1", Some(vec![0; MAX_VALUE_BYTES_CEILING + 1]));
        assert!(mutation_from_proto(huge).is_err());
    }

    #[test]
    fn far_future_versions_are_accepted_up_to_the_clock_ceiling() {
        let in_ten_years = 1_800_000_000_000 + 10 * 365 * 24 * 3600 * 1000;
        assert!(mutation_from_proto(m("k", from_physical_ms(in_ten_years), "n1", None)).is_ok());
        let err = mutation_from_proto(m("k", u64::MAX, "n1", None)).unwrap_err();
        assert!(err.to_string().contains("beyond the clock"), "{err}");
        assert!(
            mutation_from_proto(m("k", from_physical_ms(MAX_PHYSICAL_MS), "n1", None)).is_err()
        );
    }

    #[test]
    fn node_ids_in_versions_are_checked_like_configured_ids() {
        assert!(mutation_from_proto(m("k", 1, "", None)).is_err());
        assert!(mutation_from_proto(m("k", 1, &"n".repeat(65), None)).is_err());
        assert!(mutation_from_proto(m("k", 1, "bad id", None)).is_err());
        assert!(mutation_from_proto(m("k", 1, &"n".repeat(64), None)).is_ok());
    }

    #[test]
    fn a_streamed_batch_carries_only_its_origins_writes() {
        // Issue 24 item 4: only the envelope's origin was checked, so a peer
        // could stream writes in another node's name.
        let batch = vec![
            m("a", 1, "n2", Some(b"1".to_vec())),
            m("b", 1, "n3", Some(b"forged".to_vec())),
        ];
        let (ok, refused) = split_streamed(batch.clone(), "n2");
        assert_eq!(ok.len(), 1);
        assert_eq!((refused[0].index, refused[0].key.as_str()), (1, "b"));
        assert!(
            refused[0].reason.contains("own write"),
            "{}",
            refused[0].reason
        );
        // A repair relays everyone's entries.
        assert_eq!(split_batch(batch).0.len(), 2);
    }

    #[test]
    fn one_bad_entry_is_refused_alone() {
        let batch = vec![
            m("a", 1, "n1", Some(b"1".to_vec())),
            m("", 1, "n1", None),
            proto::Mutation {
                key: "b".into(),
                version: None,
                value: None,
                expires_ms: 0,
            },
            m("c", 1, "n1", None),
        ];
        let (ok, refused) = split_batch(batch);
        let keys: Vec<&str> = ok.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "c"]);
        let at: Vec<u32> = refused.iter().map(|r| r.index).collect();
        assert_eq!(at, [1, 2]);
        assert_eq!(refused[1].key, "b");
        assert!(refused[1].reason.contains("no version"), "{:?}", refused[1]);
    }

    #[test]
    fn chunks_of_many_tiny_keys_fit_their_budget_by_encoded_length() {
        let budget = 1000;
        let items: Vec<proto::Mutation> = (0..10_000)
            .map(|i| {
                m(
                    &format!("{i}"),
                    u64::MAX >> 20,
                    "node-with-a-long-id",
                    Some(vec![]),
                )
            })
            .collect();
        let chunks = chunk_by_size(items, budget);
        assert!(chunks.len() > 1);
        for c in &chunks {
            // The items alone: the envelope's few bytes come out of the
            // headroom between MAX_FILL and PEER_MESSAGE_LIMIT.
            let req = proto::ReplicateRequest {
                mutations: c.clone(),
                ..Default::default()
            };
            assert!(
                req.encoded_len() <= budget,
                "{} > {budget}",
                req.encoded_len()
            );
        }
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), 10_000);
    }

    #[test]
    fn an_oversized_item_travels_alone() {
        let items = vec![
            m("a", 1, "n", Some(vec![0; 10])),
            m("b", 1, "n", Some(vec![0; 5000])),
            m("c", 1, "n", Some(vec![0; 10])),
        ];
        let sizes: Vec<usize> = chunk_by_size(items, 100).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1, 1]);
    }
}
