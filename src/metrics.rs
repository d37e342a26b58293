//! Counters and histograms, recorded through the `metrics` facade. Without an
//! installed recorder (as in unit tests) every call is a no-op.

/// A client request that succeeded.
pub fn request(method: &'static str) {
    metrics::counter!("meshkv_requests_total", "method" => method).increment(1);
}

/// A batch received from a peer: how many entries came and how many won.
pub fn replicated_in(origin: &str, received: u64, applied: u64) {
    metrics::counter!("meshkv_replicated_in_entries_total", "origin" => origin.to_string())
        .increment(received);
    metrics::counter!("meshkv_replicated_in_applied_total", "origin" => origin.to_string())
        .increment(applied);
}

/// A remote version arrived further ahead of our clock than `max_clock_skew`.
pub fn clock_skew_event() {
    metrics::counter!("meshkv_clock_skew_events_total").increment(1);
}
