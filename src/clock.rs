//! The hybrid logical clock that stamps every write.
//!
//! A timestamp packs 48 bits of physical milliseconds and 16 bits of logical
//! counter into one `u64`, so timestamps compare as plain integers. The clock
//! never issues a value at or below one it has issued or observed: when the
//! wall clock stalls or goes backwards the counter advances instead. The
//! high-water mark is persisted with every batch, so a restart with the wall
//! clock set back still issues higher versions.
//!
//! [`next`] and [`observe`] are pure; [`Hlc`] wires them to a
//! [`PhysicalClock`], which tests replace to freeze, skew and jump time.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

/// Bits of the logical counter below the physical milliseconds.
pub const LOGICAL_BITS: u32 = 16;

/// A source of wall-clock milliseconds since the Unix epoch.
pub trait PhysicalClock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

impl std::fmt::Debug for dyn PhysicalClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhysicalClock")
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl PhysicalClock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The physical milliseconds of a timestamp.
pub fn physical_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

/// The timestamp of physical time `ms` with a zero counter.
pub fn from_physical_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// The next timestamp after `last`, given the wall clock reads `wall_ms`.
/// Strictly greater than `last`; equal to the wall clock when it is ahead.
pub fn next(last: u64, wall_ms: u64) -> u64 {
    let wall = from_physical_ms(wall_ms);
    if wall > last {
        wall
    } else {
        // The counter overflowing into the milliseconds is harmless: the value
        // stays ordered, it only runs slightly ahead of the wall clock.
        last.saturating_add(1)
    }
}

/// The clock state after seeing a remote timestamp: never below either.
pub fn observe(last: u64, remote: u64) -> u64 {
    last.max(remote)
}

/// The clock of one node. Owned by the single writer, so it needs no lock.
pub struct Hlc {
    last: u64,
    clock: Arc<dyn PhysicalClock>,
}

impl Hlc {
    /// Starts from a persisted high-water mark.
    pub fn new(clock: Arc<dyn PhysicalClock>, high_water: u64) -> Self {
        Self {
            last: high_water,
            clock,
        }
    }

    /// Issues a timestamp greater than every one issued or observed so far.
    pub fn now(&mut self) -> u64 {
        self.last = next(self.last, self.clock.now_ms());
        self.last
    }

    /// Advances past a remote timestamp. Returns how many milliseconds the
    /// remote is ahead of the local wall clock (0 if it is not).
    pub fn observe(&mut self, remote: u64) -> u64 {
        self.last = observe(self.last, remote);
        physical_ms(remote).saturating_sub(self.clock.now_ms())
    }

    /// The wall clock, in milliseconds.
    pub fn wall_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The highest timestamp issued or observed: what must be persisted.
    pub fn high_water(&self) -> u64 {
        self.last
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A wall clock a test sets by hand.
    #[derive(Default)]
    pub struct ManualClock(pub AtomicU64);

    impl PhysicalClock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn follows_the_wall_clock_when_it_moves_forward() {
        assert_eq!(next(0, 5), from_physical_ms(5));
        assert_eq!(next(from_physical_ms(5), 6), from_physical_ms(6));
    }

    #[test]
    fn counts_logically_when_the_wall_clock_stalls_or_goes_back() {
        let t = from_physical_ms(100);
        assert_eq!(next(t, 100), t + 1);
        assert_eq!(next(t + 1, 40), t + 2);
        assert_eq!(physical_ms(next(t + 1, 40)), 100);
    }

    #[test]
    fn observe_never_lowers_the_clock() {
        assert_eq!(observe(10, 5), 10);
        assert_eq!(observe(10, 50), 50);
    }

    #[test]
    fn monotonic_across_clock_jump_and_restart() {
        let wall = Arc::new(ManualClock(AtomicU64::new(1_000_000)));
        let mut hlc = Hlc::new(wall.clone(), 0);
        let a = hlc.now();
        wall.0.store(10, Ordering::SeqCst); // the wall clock jumps back 16 minutes
        let b = hlc.now();
        assert!(b > a);

        // Restart from the persisted high-water mark with the clock still behind.
        let persisted = hlc.high_water();
        let mut restarted = Hlc::new(wall.clone(), persisted);
        let c = restarted.now();
        assert!(c > b);

        // Once the wall clock passes the old time again it takes over.
        wall.0.store(2_000_000, Ordering::SeqCst);
        assert_eq!(restarted.now(), from_physical_ms(2_000_000));
    }

    #[test]
    fn observing_a_remote_advances_and_reports_skew() {
        let wall = Arc::new(ManualClock(AtomicU64::new(1_000)));
        let mut hlc = Hlc::new(wall, 0);
        let remote = from_physical_ms(6_000) + 7;
        assert_eq!(hlc.observe(remote), 5_000);
        assert!(hlc.now() > remote);
        assert_eq!(hlc.observe(from_physical_ms(10)), 0);
    }

    proptest! {
        #[test]
        fn strictly_increasing_under_any_wall_clock(
            steps in prop::collection::vec((0u64..1_000, any::<bool>(), 0u64..u64::MAX >> 20), 1..200)
        ) {
            let wall = Arc::new(ManualClock(AtomicU64::new(0)));
            let mut hlc = Hlc::new(wall.clone(), 0);
            let mut prev = 0u64;
            for (ms, is_observe, remote) in steps {
                wall.0.store(ms, Ordering::SeqCst);
                if is_observe {
                    hlc.observe(remote);
                    prop_assert!(hlc.high_water() >= remote);
                    prop_assert!(hlc.high_water() >= prev);
                    prev = hlc.high_water();
                } else {
                    let t = hlc.now();
                    prop_assert!(t > prev);
                    prev = t;
                }
            }
        }
    }
}
