//! How responses show values: as bytes, or as text when asked and valid.

use crate::{
    proto,
    version::{version_to_proto, Entry},
};

/// A value as a response shows it: as bytes, or with `as_text` as text
/// when it is UTF-8.
#[derive(Debug, Default)]
pub struct Shown {
    /// The bytes, unless they went into `text`.
    pub value: Vec<u8>,
    /// The value as text.
    pub text: String,
    /// `as_text` was asked, but the value is not UTF-8.
    pub binary: bool,
}

/// How a response shows `value` (`None`: nothing to show).
pub fn shown_value(value: Option<Vec<u8>>, as_text: bool) -> Shown {
    let Some(value) = value else {
        return Shown::default();
    };
    if !as_text {
        return Shown {
            value,
            ..Shown::default()
        };
    }
    match String::from_utf8(value) {
        Ok(text) => Shown {
            text,
            ..Shown::default()
        },
        Err(e) => Shown {
            value: e.into_bytes(),
            binary: true,
            ..Shown::default()
        },
    }
}

/// A live entry as a scan shows it.
pub fn key_value(key: String, e: Entry, as_text: bool) -> proto::KeyValue {
    let shown = shown_value(e.value, as_text);
    proto::KeyValue {
        key,
        version: Some(version_to_proto(&e.version)),
        expires_ms: e.expires_ms.unwrap_or(0),
        value: shown.value,
        text: shown.text,
        binary: shown.binary,
    }
}
