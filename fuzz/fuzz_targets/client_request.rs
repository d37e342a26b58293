//! Client request validation: any bytes a client sends as a Write or a
//! WriteBatch either decode and check cleanly or are refused; nothing panics,
//! and what passes respects the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::{api::kv, config::MAX_KEY_BYTES, proto};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let max = 4096;
    if let Ok(req) = proto::WriteRequest::decode(data) {
        if let Ok((key, value)) = kv::check_write(req, max) {
            assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
            assert!(value.len() <= max);
        }
    }
    if let Ok(req) = proto::WriteBatchRequest::decode(data) {
        if let Ok(writes) = kv::check_batch(req, max) {
            assert!(!writes.is_empty() && writes.len() <= kv::MAX_WRITE_BATCH);
        }
    }
});
