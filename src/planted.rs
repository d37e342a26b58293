//! Bugs planted on purpose, to prove that the simulation finds them.
//!
//! Compiled only with the `planted-bugs` feature, which no release build
//! enables; without it [`active`] is a constant `false` and the planted code
//! paths vanish. With it, `MESHKV_PLANTED_BUG` names the one bug to switch on.

/// A bug the simulation must catch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// Tombstones are purged once past their TTL, without waiting until
    /// every peer is known to hold them.
    PurgeWithoutAcks,
    /// A remote entry replaces the local one whatever their versions.
    MergeIgnoresVersions,
    /// A node catching up after being away drops old keys its peers lack, as
    /// if its data had gone back in time (the bug seed 73 found).
    CatchUpForgetsWhenAway,
}

/// Whether `bug` is switched on.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    use std::sync::OnceLock;
    static CHOSEN: OnceLock<Option<String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| std::env::var("MESHKV_PLANTED_BUG").ok())
        .as_deref()
        == Some(name(bug))
}

/// Whether `bug` is switched on: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
pub const fn active(_bug: Bug) -> bool {
    false
}

/// The name `MESHKV_PLANTED_BUG` takes for `bug`.
pub fn name(bug: Bug) -> &'static str {
    match bug {
        Bug::PurgeWithoutAcks => "purge-without-acks",
        Bug::MergeIgnoresVersions => "merge-ignores-versions",
        Bug::CatchUpForgetsWhenAway => "catch-up-forgets-when-away",
    }
}
