//! The storage codec's decoding of stored records: a corrupt record is a
//! clear error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::storage::codec;

fuzz_target!(|data: &[u8]| {
    let entry = codec::decode_entry(data);
    let version = codec::decode_version(data);
    if let (Ok(e), Ok(v)) = (&entry, &version) {
        assert_eq!(&e.version, v);
    }
    let _ = codec::decode_stored(data);
    let _ = codec::user_key(data);
    let _ = codec::log_seq(data);
});
