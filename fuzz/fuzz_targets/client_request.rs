//! Client request validation: any bytes a client sends as a Write (with its
//! TTL and condition) or a WriteBatch either decode and check cleanly or are refused; nothing panics,
//! and what passes respects the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::{api::kv, config::MAX_KEY_BYTES, proto};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let max = 4096;
    if let Ok(req) = proto::WriteRequest::decode(data) {
        if let Ok(w) = kv::check_write(req, max) {
            assert!(!w.key.is_empty() && w.key.len() <= MAX_KEY_BYTES);
            assert!(w.value.is_some_and(|v| v.len() <= max));
            assert!(w.ttl_ms.is_none_or(|t| t > 0 && t <= kv::MAX_TTL_MS));
        }
    }
    if let Ok(req) = proto::WriteBatchRequest::decode(data) {
        if let Ok(writes) = kv::check_batch(req, max) {
            assert!(!writes.is_empty() && writes.len() <= kv::MAX_WRITE_BATCH);
        }
    }
});
