//! The storage codec's decoding of stored records (`kv`, `versions`, `log`
//! keys): a corrupt record is a clear error, never a panic, and a `kv`
//! record's `versions` record agrees with it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshkv::storage::codec;

fuzz_target!(|data: &[u8]| {
    // A `kv` record, and the `versions` record written beside it.
    if let Ok((e, applied_ms)) = codec::decode_stored(data) {
        assert_eq!(codec::decode_entry(data).ok().as_ref(), Some(&e));
        let indexed = codec::decode_version(&codec::encode_version(&e, applied_ms))
            .expect("an encoded versions record decodes");
        assert_eq!(indexed.version, e.version);
        assert_eq!(indexed.tombstone, e.is_tombstone());
        assert_eq!(indexed.expires_ms, e.expires_ms);
    }
    let _ = codec::decode_version(data);
    let _ = codec::user_key(data);
    let _ = codec::kv_user_key(data);
    let _ = codec::log_seq(data);
});
