//! The Replicate path: decode a batch, check each entry alone, merge the
//! survivors with last-writer-wins, and store them with the storage codec.
//! Nothing panics; a refusal names its entry; merging is order-independent;
//! every stored entry decodes back to itself.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use meshkv::{proto, storage::codec, version, wire};
use prost::Message;

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
            let merged = match maps.remove(key) {
                Some(old) => version::merge(old, entry.clone()),
                None => entry.clone(),
            };
            maps.insert(key.clone(), merged);
        }
    }
    assert_eq!(forward, backward, "merge depends on delivery order");
    for (key, entry) in &forward {
        let stored = codec::encode_entry(entry, 1);
        assert_eq!(&codec::decode_entry(&stored).unwrap(), entry);
        assert_eq!(codec::decode_version(&stored).unwrap(), entry.version);
        assert_eq!(codec::user_key(&codec::data_key(key)).unwrap(), *key);
    }
});
