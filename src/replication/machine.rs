//! The replication state of one peer as a state machine: every decision the
//! peer's two tasks make about it is a pure function of [`PeerState`] and an
//! [`Event`] ([`step`]), or a pure question about the state
//! ([`stream_gate`], [`round_due`], [`check_batch`]). No sockets, disk or
//! clock here: the tasks around it feed it what happened and carry out the
//! [`Actions`] it returns, so every transition is unit-tested below.
//!
//! ```text
//!                 high water checked, no gap, not catching up
//!  Waiting ──────────────────────────────────────────────► Connecting
//!     ▲  ▲                                                  │ opened
//!     │  │ gap (log no longer holds the cursor)             ▼
//!     │  └───────────────────────────────── Streaming (window) ◄─► CatchingUp (disk)
//!     │                                                     │ failed
//!     │ repair / catch-up round finished                    ▼
//!  Repairing (runs beside the stream; the stream waits   BackingOff ─► Connecting
//!  for it only while a gap or catch-up blocks it)
//! ```

use super::anti_entropy::{Mode, RoundStats};

/// What the stream to a peer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPhase {
    /// Held until a round with the peer has finished (first start, a gap,
    /// catch-up, or data that went back in time).
    Waiting,
    /// Opening the stream.
    Connecting,
    /// Sending records from the in-memory window.
    Streaming,
    /// Sending records read from the log on disk: the peer fell behind the
    /// window.
    CatchingUp,
    /// The stream failed; retrying after a delay.
    BackingOff,
}

/// What status shows for a peer: a round the stream waits for, else the
/// stream's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// See [`StreamPhase::Waiting`].
    Waiting,
    /// See [`StreamPhase::Connecting`].
    Connecting,
    /// See [`StreamPhase::Streaming`].
    Streaming,
    /// See [`StreamPhase::CatchingUp`].
    CatchingUp,
    /// See [`StreamPhase::BackingOff`].
    BackingOff,
    /// An anti-entropy round is running, and the stream waits for it (the
    /// first round, a gap, catch-up).
    Repairing,
}

impl Phase {
    /// The name shown in status: one word, so that the status table splits
    /// on whitespace.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Waiting => "waiting",
            Phase::Connecting => "connecting",
            Phase::Streaming => "streaming",
            Phase::CatchingUp => "catching-up",
            Phase::BackingOff => "backing-off",
            Phase::Repairing => "repairing",
        }
    }
}

/// The replication state of one peer, shared with status and retention.
#[derive(Debug, Clone)]
pub struct PeerState {
    /// The last RPC succeeded.
    pub connected: bool,
    /// Highest local seq the peer acknowledged (persisted as its cursor).
    pub acked_seq: u64,
    /// The last error, cleared by the next success.
    pub last_error: Option<String>,
    /// What the stream is doing.
    pub stream: StreamPhase,
    /// The mode of the round in progress, if one is.
    pub round: Option<Mode>,
    /// Anti-entropy rounds finished with this peer.
    pub repair_rounds: u64,
    /// Keys those rounds pushed or pulled.
    pub keys_repaired: u64,
    /// The log no longer holds what the peer needs: repair, then resume at
    /// the seq captured when the repair started.
    pub needs_repair: bool,
    /// This node started fresh or stale: anti-entropy with the peer is
    /// pull-only until the first round with it finishes.
    pub catching_up: bool,
    /// The peer's answer about this node's high-water mark has been checked
    /// since start-up (once: later answers reflect this run's own reports).
    pub high_water_checked: bool,
    /// That check found this node's data went back in time: rounds with the
    /// peer catch up and drop old keys it lacks until one finishes.
    pub regressed: bool,
    /// Entries the peer refused, by stream or repair (they were skipped).
    pub refused: u64,
    /// The last refusal, as "key: reason".
    pub last_refused: Option<String>,
    /// The store's visible time when the last complete round with the peer
    /// that pushed (not a catch-up) started: the peer then held, or beat,
    /// every settled entry this node had applied before it.
    pub last_complete_round_ms: Option<u64>,
    /// Expired tombstones waiting on this peer, from the last collection.
    pub tombstones_waiting: u64,
    /// Since a repair round started, retention holds the log after this
    /// peer's cursor (up to twice `max_log_bytes`), so the stream can resume
    /// where the repair leaves it. Released once the stream reads from the
    /// in-memory window again (it has caught up), or a round fails.
    pub holds_log: bool,
}

impl PeerState {
    /// A peer starting from a persisted cursor; `catching_up` if this node
    /// started fresh or stale.
    pub fn new(acked_seq: u64, catching_up: bool) -> Self {
        Self {
            connected: false,
            acked_seq,
            last_error: None,
            stream: StreamPhase::Waiting,
            round: None,
            repair_rounds: 0,
            keys_repaired: 0,
            needs_repair: false,
            catching_up,
            high_water_checked: false,
            regressed: false,
            refused: 0,
            last_refused: None,
            last_complete_round_ms: None,
            tombstones_waiting: 0,
            holds_log: false,
        }
    }

    /// What status shows.
    pub fn phase(&self) -> Phase {
        // A round the stream waits for; a periodic round beside a live
        // stream leaves it streaming, and shows in the round counters.
        if self.round.is_some() && self.stream == StreamPhase::Waiting {
            return Phase::Repairing;
        }
        match self.stream {
            StreamPhase::Waiting => Phase::Waiting,
            StreamPhase::Connecting => Phase::Connecting,
            StreamPhase::Streaming => Phase::Streaming,
            StreamPhase::CatchingUp => Phase::CatchingUp,
            StreamPhase::BackingOff => Phase::BackingOff,
        }
    }
}

/// Something that happened to one of the peer's tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The streamer is opening a stream.
    Connecting,
    /// The stream is open.
    Opened,
    /// The streamer read its next batch, from disk or from the window.
    Read {
        /// The window no longer held it.
        from_disk: bool,
    },
    /// The peer acknowledged every record up to `upto`.
    Acked {
        /// The seq of the batch's last record.
        upto: u64,
    },
    /// The log no longer holds the record after the cursor.
    Gap,
    /// The stream ended with an error; it is retried after a delay.
    StreamFailed(String),
    /// The stream ended to let a round run first.
    StreamHeld,
    /// The peer answered this run's first Digest: whether it saw a higher
    /// high-water mark from this node than the node started from.
    HighWaterChecked {
        /// This node's data went back in time.
        regressed: bool,
    },
    /// A round in `mode` started; `resume_at` is the last seq committed
    /// before it, so everything up to it is in the data it compares.
    RoundStarted(Mode),
    /// A round got an answer for every differing bucket (it may still have
    /// failed to deliver pushes: see [`RoundEnd::finished`]).
    RoundEnded(RoundEnd),
    /// A round failed before it had compared everything.
    RoundFailed(String),
}

/// How a round that ran to its end went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundEnd {
    /// The round's mode.
    pub mode: Mode,
    /// Every differing bucket was compared and every push delivered.
    pub finished: bool,
    /// Finished, and nothing was refused.
    pub complete: bool,
    /// Keys pushed, pulled or forgotten.
    pub keys: u64,
    /// Why pushes failed, if they did.
    pub push_error: Option<String>,
    /// The last seq committed before the round started.
    pub resume_at: u64,
    /// [`Store::visible_ms`](crate::storage::Store::visible_ms) when the
    /// round started: every entry applied before it was in what the round
    /// compared.
    pub visible_ms: u64,
}

impl RoundEnd {
    /// The summary of `stats` for a round in `mode`.
    pub fn new(mode: Mode, stats: &RoundStats, resume_at: u64, visible_ms: u64) -> Self {
        Self {
            mode,
            finished: stats.finished(),
            complete: stats.complete(),
            keys: stats.pushed + stats.pulled + stats.forgotten,
            push_error: stats.push_error.clone(),
            resume_at,
            visible_ms,
        }
    }
}

/// What the tasks must do after a step. All false/`None` is nothing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    /// Persist the peer's cursor at this seq.
    pub save_cursor: Option<u64>,
    /// Wake the repairer: a round is due now.
    pub wake_repairer: bool,
    /// Wake the streamer: what held it may be over.
    pub wake_streamer: bool,
    /// This node finished catching up with one more peer.
    pub caught_up_with_one: bool,
    /// A round with the peer finished: a node waiting for its first repair
    /// may report SERVING.
    pub synced: bool,
}

/// Applies `event` to `s` and returns what must be done about it.
pub fn step(s: &mut PeerState, event: Event) -> Actions {
    let mut act = Actions::default();
    match event {
        Event::Connecting => s.stream = StreamPhase::Connecting,
        Event::Opened => {
            s.connected = true;
            s.stream = StreamPhase::Streaming;
        }
        Event::Read { from_disk } => {
            s.holds_log &= from_disk;
            s.stream = if from_disk {
                StreamPhase::CatchingUp
            } else {
                StreamPhase::Streaming
            };
        }
        Event::Acked { upto } => {
            s.connected = true;
            s.last_error = None;
            if upto > s.acked_seq {
                s.acked_seq = upto;
                act.save_cursor = Some(upto);
            }
        }
        Event::Gap => {
            s.needs_repair = true;
            s.stream = StreamPhase::Waiting;
            act.wake_repairer = true;
        }
        Event::StreamFailed(error) => {
            s.connected = false;
            s.last_error = Some(error);
            s.stream = StreamPhase::BackingOff;
        }
        Event::StreamHeld => s.stream = StreamPhase::Waiting,
        Event::HighWaterChecked { regressed } => {
            s.high_water_checked = true;
            s.regressed |= regressed;
            // Not gone back: the stream may start while the round goes on.
            act.wake_streamer = !s.regressed;
        }
        Event::RoundStarted(mode) => {
            s.round = Some(mode);
            s.holds_log |= mode == Mode::Repair;
        }
        Event::RoundFailed(error) => {
            s.round = None;
            s.holds_log = false;
            s.connected = false;
            s.last_error = Some(error);
        }
        Event::RoundEnded(end) => {
            s.round = None;
            s.repair_rounds += 1;
            s.keys_repaired += end.keys;
            if end.finished {
                s.connected = true;
                s.last_error = None;
            } else {
                s.last_error = end.push_error;
            }
            // A catch-up round pushes nothing: it proves nothing about what
            // the peer holds.
            if end.complete && end.mode != Mode::CatchUp {
                s.last_complete_round_ms = Some(end.visible_ms);
            }
            if !end.finished {
                return act;
            }
            // After a repair the stream resumes where the round began. After
            // finding that this node's data went back in time it does too:
            // the older records of the log may be keys deleted since, and
            // must not be sent again.
            let jump = (end.mode == Mode::Repair && s.needs_repair) || s.regressed;
            if jump {
                s.needs_repair = false;
                s.regressed = false;
                if end.resume_at > s.acked_seq {
                    s.acked_seq = end.resume_at;
                    act.save_cursor = Some(end.resume_at);
                }
            }
            if end.mode == Mode::CatchUp && s.catching_up {
                s.catching_up = false;
                act.caught_up_with_one = true;
            }
            act.wake_streamer = true;
            act.synced = true;
        }
    }
    act
}

/// Whether the stream may run, and if not, why not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// It may.
    Open,
    /// No Digest answer since start-up has said whether this node's data
    /// went back in time.
    FirstRound,
    /// This node is catching up with the peer, or its data went back in time.
    CatchUp,
    /// The log no longer holds what the peer needs.
    Repair,
}

/// Whether the stream may run.
pub fn stream_gate(s: &PeerState) -> Gate {
    if s.catching_up || s.regressed {
        Gate::CatchUp
    } else if s.needs_repair {
        Gate::Repair
    } else if !s.high_water_checked {
        Gate::FirstRound
    } else {
        Gate::Open
    }
}

/// The mode of the round due now, or `None` if the next one is not due
/// until the periodic timer (`timer_due` says whether it has fired).
pub fn round_due(s: &PeerState, timer_due: bool) -> Option<Mode> {
    if s.catching_up || s.regressed {
        Some(Mode::CatchUp)
    } else if s.needs_repair {
        Some(Mode::Repair)
    } else if timer_due {
        Some(Mode::Periodic)
    } else {
        None
    }
}

/// What a batch read after `after` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Records that follow the cursor without a hole: send them.
    Send,
    /// Nothing after the cursor: wait for a commit.
    Empty,
    /// The log no longer holds the record after the cursor (retention
    /// deleted it, possibly while the batch was read): the peer needs a
    /// repair.
    Gap,
}

/// Checks a batch read after `after`, given its records' seqs in order and
/// the last seq committed before the read began.
pub fn check_batch(after: u64, last_seq: u64, seqs: impl IntoIterator<Item = u64>) -> Batch {
    let mut any = false;
    for (expected, seq) in (after + 1..).zip(seqs) {
        if seq != expected {
            return Batch::Gap;
        }
        any = true;
    }
    match (any, last_seq > after) {
        (true, _) => Batch::Send,
        (false, false) => Batch::Empty,
        (false, true) => Batch::Gap,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(mode: Mode, finished: bool, resume_at: u64) -> Event {
        Event::RoundEnded(RoundEnd {
            mode,
            finished,
            complete: finished,
            keys: 3,
            push_error: (!finished).then(|| "push failed".into()),
            resume_at,
            visible_ms: 1000,
        })
    }

    /// A peer after its first periodic round, streaming.
    fn streaming(acked: u64) -> PeerState {
        let mut s = PeerState::new(acked, false);
        step(&mut s, Event::HighWaterChecked { regressed: false });
        step(&mut s, end(Mode::Periodic, true, acked));
        step(&mut s, Event::Connecting);
        step(&mut s, Event::Opened);
        s
    }

    /// Issue 22 (scale run): a restarted node's streams waited for a whole
    /// first round with each peer, 33 s at 2,000,000 keys under writes,
    /// though only the round's Digest answer (did this node's data go back
    /// in time?) matters to them.
    #[test]
    fn the_stream_waits_for_the_first_high_water_check_not_the_whole_round() {
        let mut s = PeerState::new(5, false);
        assert_eq!(stream_gate(&s), Gate::FirstRound);
        assert_eq!(s.phase(), Phase::Waiting);
        assert_eq!(round_due(&s, true), Some(Mode::Periodic));
        step(&mut s, Event::RoundStarted(Mode::Periodic));
        assert_eq!(s.phase(), Phase::Repairing);
        // The Digest answer says the data did not go back: the stream may
        // start while the round goes on.
        let a = step(&mut s, Event::HighWaterChecked { regressed: false });
        assert!(a.wake_streamer);
        assert_eq!(stream_gate(&s), Gate::Open);
        let a = step(&mut s, end(Mode::Periodic, false, 9));
        assert_eq!(stream_gate(&s), Gate::Open, "an unfinished round");
        assert_eq!(a, Actions::default());
        assert_eq!(s.last_error.as_deref(), Some("push failed"));
        let a = step(&mut s, end(Mode::Periodic, true, 9));
        assert_eq!(stream_gate(&s), Gate::Open);
        assert!(a.wake_streamer && a.synced && !a.caught_up_with_one);
        assert_eq!(
            a.save_cursor, None,
            "a periodic round does not move the cursor"
        );
        assert_eq!(s.acked_seq, 5);
        assert_eq!((s.repair_rounds, s.keys_repaired), (2, 6));
        assert_eq!(s.last_complete_round_ms, Some(1000));
    }

    #[test]
    fn a_round_that_fails_before_its_digest_answer_keeps_the_stream_waiting() {
        let mut s = PeerState::new(5, false);
        step(&mut s, Event::RoundStarted(Mode::Periodic));
        step(&mut s, Event::RoundFailed("unreachable".into()));
        assert_eq!(stream_gate(&s), Gate::FirstRound);
        // A regression found later holds it until the catch-up finishes.
        let a = step(&mut s, Event::HighWaterChecked { regressed: true });
        assert!(!a.wake_streamer);
        assert_eq!(stream_gate(&s), Gate::CatchUp);
    }

    #[test]
    fn acks_move_the_cursor_forward_only() {
        let mut s = streaming(10);
        assert_eq!(s.phase(), Phase::Streaming);
        assert_eq!(
            step(&mut s, Event::Acked { upto: 20 }).save_cursor,
            Some(20)
        );
        assert_eq!(step(&mut s, Event::Acked { upto: 15 }).save_cursor, None);
        assert_eq!(s.acked_seq, 20);
        step(&mut s, Event::StreamFailed("reset".into()));
        assert_eq!((s.connected, s.phase()), (false, Phase::BackingOff));
        step(&mut s, Event::Acked { upto: 21 });
        assert_eq!((s.connected, s.last_error.clone()), (true, None));
    }

    /// Issue 22, item 7: a pull-only catch-up round set the proof time that
    /// tombstone collection trusts, though it delivered nothing to the peer.
    #[test]
    fn only_a_round_that_pushes_is_proof_for_tombstone_collection() {
        let mut s = PeerState::new(0, true);
        step(&mut s, Event::RoundStarted(Mode::CatchUp));
        step(&mut s, end(Mode::CatchUp, true, 0));
        assert_eq!(s.last_complete_round_ms, None);
        step(&mut s, Event::RoundStarted(Mode::Periodic));
        step(&mut s, end(Mode::Periodic, true, 0));
        assert_eq!(s.last_complete_round_ms, Some(1000));
    }

    /// Issue 22, item 6: see `log::tests::a_repairing_peers_backlog_is_held_up_to_twice_the_cap`.
    #[test]
    fn a_repair_holds_the_log_until_the_stream_reads_from_the_window_again() {
        let mut s = streaming(10);
        step(&mut s, Event::Gap);
        step(&mut s, Event::RoundStarted(Mode::Periodic));
        assert!(!s.holds_log, "only a repair holds the log");
        step(&mut s, Event::RoundStarted(Mode::Repair));
        assert!(s.holds_log);
        step(&mut s, end(Mode::Repair, true, 50));
        assert!(s.holds_log, "until the resumed stream has caught up");
        step(&mut s, Event::Read { from_disk: true });
        assert!(s.holds_log);
        step(&mut s, Event::Read { from_disk: false });
        assert!(!s.holds_log);
        // A peer that cannot finish a round does not hold the log.
        step(&mut s, Event::RoundStarted(Mode::Repair));
        step(&mut s, Event::RoundFailed("unreachable".into()));
        assert!(!s.holds_log);
    }

    #[test]
    fn reads_from_disk_show_as_catching_up() {
        let mut s = streaming(0);
        step(&mut s, Event::Read { from_disk: true });
        assert_eq!(s.phase().as_str(), "catching-up");
        step(&mut s, Event::Read { from_disk: false });
        assert_eq!(s.phase(), Phase::Streaming);
        step(&mut s, Event::RoundStarted(Mode::Periodic));
        assert_eq!(
            s.phase(),
            Phase::Streaming,
            "a periodic round runs beside the stream, which stays live"
        );
        step(&mut s, Event::RoundFailed("unreachable".into()));
        assert_eq!(s.phase(), Phase::Streaming);
        assert!(!s.connected);
    }

    #[test]
    fn a_gap_holds_the_stream_until_a_repair_resumes_it_where_the_round_began() {
        let mut s = streaming(10);
        let a = step(&mut s, Event::Gap);
        assert!(a.wake_repairer);
        assert_eq!(stream_gate(&s), Gate::Repair);
        assert_eq!(round_due(&s, false), Some(Mode::Repair));
        // A periodic round that was already running does not clear the gap.
        step(&mut s, end(Mode::Periodic, true, 50));
        assert_eq!(stream_gate(&s), Gate::Repair);
        assert_eq!(s.acked_seq, 10);
        // Nor does an unfinished repair.
        step(&mut s, end(Mode::Repair, false, 60));
        assert_eq!(stream_gate(&s), Gate::Repair);
        let a = step(&mut s, end(Mode::Repair, true, 70));
        assert_eq!(stream_gate(&s), Gate::Open);
        assert_eq!((a.save_cursor, s.acked_seq), (Some(70), 70));
        assert!(a.wake_streamer);
    }

    #[test]
    fn a_repair_never_moves_the_cursor_back() {
        let mut s = streaming(100);
        step(&mut s, Event::Gap);
        let a = step(&mut s, end(Mode::Repair, true, 40));
        assert_eq!((a.save_cursor, s.acked_seq), (None, 100));
        assert_eq!(stream_gate(&s), Gate::Open);
    }

    #[test]
    fn catching_up_ends_with_the_first_finished_catch_up_round() {
        let mut s = PeerState::new(0, true);
        assert_eq!(stream_gate(&s), Gate::CatchUp);
        assert_eq!(round_due(&s, false), Some(Mode::CatchUp));
        let a = step(&mut s, Event::HighWaterChecked { regressed: false });
        assert_eq!(stream_gate(&s), Gate::CatchUp, "catch-up holds it still");
        assert!(a.wake_streamer, "harmless: the gate is asked again");
        step(&mut s, end(Mode::CatchUp, false, 5));
        assert_eq!(stream_gate(&s), Gate::CatchUp);
        let a = step(&mut s, end(Mode::CatchUp, true, 5));
        assert!(a.caught_up_with_one && a.synced && a.wake_streamer);
        assert_eq!(
            a.save_cursor, None,
            "catch-up streams its own log from the cursor"
        );
        assert_eq!(stream_gate(&s), Gate::Open);
        // Only once per peer.
        assert!(!step(&mut s, end(Mode::CatchUp, true, 5)).caught_up_with_one);
    }

    #[test]
    fn data_that_went_back_in_time_catches_up_then_skips_the_old_log() {
        let mut s = PeerState::new(3, false);
        step(&mut s, Event::HighWaterChecked { regressed: true });
        assert!(s.high_water_checked);
        assert_eq!(stream_gate(&s), Gate::CatchUp);
        assert_eq!(round_due(&s, false), Some(Mode::CatchUp));
        // A later answer never clears it.
        step(&mut s, Event::HighWaterChecked { regressed: false });
        assert!(s.regressed);
        let a = step(&mut s, end(Mode::CatchUp, true, 30));
        assert_eq!((a.save_cursor, s.regressed), (Some(30), false));
        assert!(
            !a.caught_up_with_one,
            "it was not catching up from a fresh start"
        );
        assert_eq!(stream_gate(&s), Gate::Open);
    }

    #[test]
    fn every_phase_name_is_one_word_for_the_status_table() {
        use Phase::*;
        for p in [
            Waiting, Connecting, Streaming, CatchingUp, BackingOff, Repairing,
        ] {
            let name = p.as_str();
            assert!(
                !name.is_empty() && !name.contains(char::is_whitespace),
                "{name:?}"
            );
        }
    }

    #[test]
    fn batches_must_follow_the_cursor_without_a_hole() {
        assert_eq!(check_batch(4, 9, [5, 6, 7]), Batch::Send);
        assert_eq!(check_batch(4, 4, []), Batch::Empty);
        assert_eq!(check_batch(4, 9, []), Batch::Gap, "committed but gone");
        assert_eq!(check_batch(4, 9, [6, 7]), Batch::Gap, "head deleted");
        assert_eq!(check_batch(4, 9, [5, 7]), Batch::Gap, "hole in the middle");
        assert_eq!(check_batch(0, 0, [1]), Batch::Send);
    }

    #[test]
    fn round_due_prefers_catch_up_then_repair_then_the_timer() {
        let mut s = streaming(0);
        assert_eq!(round_due(&s, false), None);
        assert_eq!(round_due(&s, true), Some(Mode::Periodic));
        s.needs_repair = true;
        assert_eq!(round_due(&s, false), Some(Mode::Repair));
        s.catching_up = true;
        assert_eq!(round_due(&s, false), Some(Mode::CatchUp));
    }
}
