//! What a node remembers of the HLC high-water marks a peer reported, run by
//! run, so that it can tell the peer whether its data went back in time.
//!
//! A node's high-water mark never goes back while its data survives. A node
//! restored from an old copy (or whose last writes a machine crash took)
//! starts from a lower mark than its peers already saw from it. Each run
//! reports its marks with a tag, the *incarnation*: the HLC at start-up, which
//! is above every mark the previous run reported unless the data went back.
//! The peer answers with the highest mark it saw from *other* runs. Comparing
//! only against other runs matters: a run whose requests reached the peer but
//! whose answers were lost (simulation seed 1524) must not read its own later
//! reports as a sign of regression.

/// The marks one peer reported, by run. Persisted in `meta`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeenMarks {
    /// The tag of the newest run that reported (0: none, or a node too old to
    /// send one).
    pub incarnation: u64,
    /// The highest mark that run reported.
    pub current: u64,
    /// The highest mark every other run reported.
    pub prior: u64,
}

impl SeenMarks {
    /// Records a report of `mark` from the run tagged `incarnation`, and
    /// returns the highest mark seen from any other run.
    ///
    /// A higher tag is a new run: what the previous one reported becomes
    /// prior. A lower tag is a late report from an older run, or a run whose
    /// data and clock both went back; either way its mark counts as prior,
    /// and its answer includes the newest run's marks, so a regressed run is
    /// still recognised.
    pub fn report(&mut self, incarnation: u64, mark: u64) -> u64 {
        if incarnation > self.incarnation {
            self.prior = self.prior.max(self.current);
            self.incarnation = incarnation;
            self.current = mark;
        } else if incarnation == self.incarnation {
            self.current = self.current.max(mark);
        } else {
            self.prior = self.prior.max(mark);
            return self.prior.max(self.current);
        }
        self.prior
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_never_sees_its_own_reports_even_when_answers_were_lost() {
        let mut s = SeenMarks::default();
        // Run 1 (tag 10) reports up to 50.
        assert_eq!(s.report(10, 20), 0);
        assert_eq!(s.report(10, 50), 0);
        // Run 2 starts from 50 (tag 60). Its first answers are lost while its
        // mark rises to 90; the answer that finally arrives must still be 50.
        for mark in [60, 70, 90] {
            assert_eq!(s.report(60, mark), 50);
        }
    }

    #[test]
    fn a_run_restored_from_an_old_copy_is_recognised() {
        let mut s = SeenMarks::default();
        s.report(10, 500);
        // Restored from a copy whose mark is 200; its clock moved on, so its
        // tag is the highest yet.
        assert!(s.report(900, 200) > 200);
        // Restored and with the clock set back as well: a lower tag.
        let mut s = SeenMarks::default();
        s.report(10, 500);
        assert!(s.report(5, 200) > 200);
        assert!(s.report(5, 210) > 210);
    }

    #[test]
    fn a_late_report_from_an_older_run_does_not_disturb_the_newer_one() {
        let mut s = SeenMarks::default();
        s.report(10, 40);
        s.report(60, 70);
        // A packet of run 1 delayed past run 2's start.
        s.report(10, 45);
        assert_eq!(s.report(60, 80), 45);
        assert_eq!(s.incarnation, 60);
    }

    #[test]
    fn a_peer_that_sends_no_tag_gets_everything_seen() {
        let mut s = SeenMarks {
            incarnation: 0,
            current: 300,
            prior: 0,
        };
        // Persisted by a version that kept one mark per peer.
        assert_eq!(s.report(60, 310), 300);
        // A node too old to send a tag compares with everything seen.
        let mut s = SeenMarks::default();
        s.report(60, 310);
        assert_eq!(s.report(0, 100), 310);
    }

    #[test]
    fn answers_never_go_down_for_a_steady_run() {
        // Property over short histories: for a fixed run, the answer is
        // monotone and never includes that run's own marks.
        for own in 1..6u64 {
            let mut s = SeenMarks::default();
            let mut last = 0;
            for (tag, mark) in [(1, 10), (2, 20), (own, 25), (own, 30), (own, 35)] {
                let a = s.report(tag, mark);
                if tag == own {
                    assert!(a >= last);
                    last = a;
                }
            }
            assert!(last < 25 || own < 3, "run {own} saw its own marks: {last}");
        }
    }
}
