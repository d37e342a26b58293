//! Byte layouts of keyspace keys and the protobuf values stored under them.

use prost::Message;

use crate::{
    error::{Error, Result},
    proto,
    storage::digest::BucketHash,
    version::{version_from_proto, version_to_proto, Entry, Version},
};

/// The `versions` key of a user key: its bucket, big-endian, then the key.
pub fn version_key(buckets: &BucketHash, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + key.len());
    k.extend_from_slice(&buckets.of(key.as_bytes()).to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The user key inside a `versions` key.
pub fn user_key(version_key: &[u8]) -> Result<String> {
    let raw = version_key
        .get(2..)
        .ok_or_else(|| Error::Corrupt("versions key shorter than its bucket prefix".into()))?;
    kv_user_key(raw)
}

/// The user key of a `kv` key, which is the key itself.
pub fn kv_user_key(raw: &[u8]) -> Result<String> {
    String::from_utf8(raw.to_vec()).map_err(|_| Error::Corrupt("stored key is not UTF-8".into()))
}

/// The `log` key of a sequence number; big-endian so keys sort by seq.
pub fn log_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number of a `log` key.
pub fn log_seq(key: &[u8]) -> Result<u64> {
    let b: [u8; 8] = key
        .try_into()
        .map_err(|_| Error::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// `applied_ms` as stored: kept for what tombstone collection may purge one
/// day (tombstones, values with an expiry), dropped for plain values.
fn kept_applied(e: &Entry, applied_ms: u64) -> u64 {
    if e.is_tombstone() || e.expires_ms.is_some() {
        applied_ms
    } else {
        0
    }
}

/// Encodes the value of a `kv` entry applied at `applied_ms`.
pub fn encode_entry(e: &Entry, applied_ms: u64) -> Vec<u8> {
    proto::StoredEntry {
        version: Some(version_to_proto(&e.version)),
        value: e.value.clone(),
        applied_ms: kept_applied(e, applied_ms),
        expires_ms: e.expires_ms.unwrap_or(0),
    }
    .encode_to_vec()
}

/// Decodes the value of a `kv` entry.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry> {
    decode_stored(bytes).map(|(e, _)| e)
}

/// Decodes a `kv` entry with the moment it was applied (0 for values).
pub fn decode_stored(bytes: &[u8]) -> Result<(Entry, u64)> {
    let stored = proto::StoredEntry::decode(bytes)
        .map_err(|e| Error::Corrupt(format!("data entry: {e}")))?;
    let version = stored
        .version
        .ok_or_else(|| Error::Corrupt("data entry without a version".into()))?;
    Ok((
        Entry {
            version: version_from_proto(version),
            expires_ms: (stored.expires_ms != 0 && stored.value.is_some())
                .then_some(stored.expires_ms),
            value: stored.value,
        },
        stored.applied_ms,
    ))
}

/// What the `versions` keyspace holds for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    /// The stored version.
    pub version: Version,
    /// The entry is a tombstone.
    pub tombstone: bool,
    /// For a tombstone or a value with an expiry, when this node applied
    /// it; 0 for plain values.
    pub applied_ms: u64,
    /// When the value expires; `None` for tombstones and plain values.
    pub expires_ms: Option<u64>,
}

impl Indexed {
    /// The entry this describes, without its value: enough for the rules
    /// that look only at versions and liveness.
    pub fn as_entry(&self) -> Entry {
        Entry {
            version: self.version.clone(),
            value: (!self.tombstone).then(Vec::new),
            expires_ms: self.expires_ms,
        }
    }
}

/// Encodes the `versions` entry of an entry stored with `applied_ms`.
pub fn encode_version(e: &Entry, applied_ms: u64) -> Vec<u8> {
    proto::StoredVersion {
        version: Some(version_to_proto(&e.version)),
        tombstone: e.is_tombstone(),
        applied_ms: kept_applied(e, applied_ms),
        expires_ms: e.expires_ms.unwrap_or(0),
    }
    .encode_to_vec()
}

/// Decodes a `versions` entry.
pub fn decode_version(bytes: &[u8]) -> Result<Indexed> {
    let stored = proto::StoredVersion::decode(bytes)
        .map_err(|e| Error::Corrupt(format!("versions entry: {e}")))?;
    let version = stored
        .version
        .map(version_from_proto)
        .ok_or_else(|| Error::Corrupt("versions entry without a version".into()))?;
    Ok(Indexed {
        version,
        tombstone: stored.tombstone,
        applied_ms: stored.applied_ms,
        expires_ms: (stored.expires_ms != 0 && !stored.tombstone).then_some(stored.expires_ms),
    })
}

/// A u64 (big-endian) stored under `key` in `ks`, if any.
pub fn read_u64(ks: &fjall::Keyspace, key: &[u8]) -> Result<Option<u64>> {
    match ks.get(key)? {
        None => Ok(None),
        Some(v) => {
            let b: [u8; 8] = v.as_ref().try_into().map_err(|_| {
                Error::Corrupt(format!(
                    "meta {:?} is not a u64",
                    String::from_utf8_lossy(key)
                ))
            })?;
            Ok(Some(u64::from_be_bytes(b)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_including_empty_values_and_tombstones() {
        let cases = [
            (Some(b"v".to_vec()), None),
            (Some(Vec::new()), None),
            (None, None),
            (Some(b"t".to_vec()), Some(1234)),
        ];
        for (value, expires_ms) in cases {
            let e = Entry {
                version: Version {
                    hlc: 42,
                    node: "n1".into(),
                },
                value,
                expires_ms,
            };
            let bytes = encode_entry(&e, 99);
            assert_eq!(decode_entry(&bytes).unwrap(), e);
            let applied = decode_stored(&bytes).unwrap().1;
            let collectable = e.is_tombstone() || e.expires_ms.is_some();
            assert_eq!(applied, if collectable { 99 } else { 0 });
            let indexed = decode_version(&encode_version(&e, 99)).unwrap();
            assert_eq!(indexed.version, e.version);
            assert_eq!(indexed.tombstone, e.is_tombstone());
            assert_eq!(indexed.applied_ms, applied);
            assert_eq!(indexed.expires_ms, e.expires_ms);
        }
    }

    #[test]
    fn version_keys_carry_their_bucket_and_round_trip() {
        let k = version_key(&BucketHash::default(), "hello");
        assert_eq!(
            u16::from_be_bytes([k[0], k[1]]),
            BucketHash::default().of(b"hello")
        );
        assert_eq!(user_key(&k).unwrap(), "hello");
        assert!(user_key(&[1]).is_err());
    }

    #[test]
    fn log_keys_sort_by_seq() {
        assert!(log_key(2) < log_key(256));
        assert_eq!(log_seq(&log_key(77)).unwrap(), 77);
        assert!(log_seq(b"short").is_err());
    }

    #[test]
    fn garbage_is_corrupt_not_a_panic() {
        assert!(decode_entry(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_entry(&[]).is_err()); // no version
        assert!(decode_version(&[0xff, 0xff]).is_err());
        assert!(decode_version(&[]).is_err());
    }
}
