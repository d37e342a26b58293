//! The Replicate path: decode a batch, check each entry alone, merge the
//! survivors by the writer's own rule (`apply::decide`), and store them with
//! the storage codec. Nothing panics; a refusal names its entry; within the
//! tombstone horizon the outcome does not depend on delivery order; nothing
//! from further ahead than the lead limit is applied; every stored entry
//! decodes back to itself.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use meshkv::{
    clock, proto,
    storage::{codec, writer::apply, BucketHash},
    version, wire,
};
use prost::Message;

/// A receiver whose horizon never passes (order matters past it by design).
const CTX: apply::Context = apply::Context {
    now_ms: 1 << 40,
    ttl_ms: u64::MAX,
    max_lead_ms: 60_000,
    streamed: true,
};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = proto::ReplicateRequest::decode(data) else {
        return;
    };
    let n = req.mutations.len();
    let (ok, refused) = wire::split_batch(req.mutations);
    assert_eq!(ok.len() + refused.len(), n);
    assert!(refused.iter().all(|r| (r.index as usize) < n && !r.reason.is_empty()));

    let mut forward: BTreeMap<String, version::Entry> = BTreeMap::new();
    let mut backward: BTreeMap<String, version::Entry> = BTreeMap::new();
    for (maps, entries) in [
        (&mut forward, ok.iter().collect::<Vec<_>>()),
        (&mut backward, ok.iter().rev().collect()),
    ] {
        for (key, entry) in entries {
            if apply::decide(maps.get(key), entry, &CTX) == apply::Decision::Apply {
                assert!(clock::physical_ms(entry.version.hlc) <= CTX.now_ms + CTX.max_lead_ms);
                maps.insert(key.clone(), entry.clone());
            }
        }
    }
    assert_eq!(forward, backward, "merge depends on delivery order");
    for (key, entry) in &forward {
        let stored = codec::encode_entry(entry, 1);
        assert_eq!(&codec::decode_entry(&stored).unwrap(), entry);
        let indexed = codec::decode_version(&codec::encode_version(entry, 1)).unwrap();
        assert_eq!(indexed.version, entry.version);
        let vk = codec::version_key(&BucketHash::default(), key);
        assert_eq!(codec::user_key(&vk).unwrap(), *key);
    }
});
