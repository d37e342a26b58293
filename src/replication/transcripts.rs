//! Transcript tests of the peer state machine ([`machine::step`]), in the
//! style of toydb's goldenscripts: each file under `testscripts/` is a
//! scenario told as the events the peer's tasks report, and after each
//! event the state that status and the tasks would see, as a `>` line.
//! The runner replays the events and requires the same lines. To accept a
//! deliberate change, run with `UPDATE_TRANSCRIPTS=1` and review the diff.
//!
//! Events: `new acked=N [catching-up]`, `connecting`, `opened`,
//! `read window|disk`, `acked N`, `gap`, `stream-failed`, `stream-held`,
//! `high-water ok|regressed`, `round-start MODE`, `round-end MODE
//! finished|unfinished|refused resume=N`, `round-failed`; MODE is
//! `periodic`, `repair` or `catch-up`. A state line gives the phase, the
//! stream gate, the cursor, the round due without the timer, and the
//! actions the event asked for.

use std::path::{Path, PathBuf};

use super::{
    anti_entropy::Mode,
    machine::{round_due, step, stream_gate, Actions, Event, Gate, PeerState, RoundEnd},
};

fn mode(word: &str) -> Mode {
    match word {
        "periodic" => Mode::Periodic,
        "repair" => Mode::Repair,
        "catch-up" => Mode::CatchUp,
        other => panic!("unknown mode {other:?}"),
    }
}

fn mode_word(m: Mode) -> &'static str {
    match m {
        Mode::Periodic => "periodic",
        Mode::Repair => "repair",
        Mode::CatchUp => "catch-up",
    }
}

fn number(word: &str, key: &str) -> u64 {
    word.strip_prefix(key)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("expected {key}N, got {word:?}"))
}

/// The event a line names.
fn event(words: &[&str]) -> Event {
    match words {
        ["connecting"] => Event::Connecting,
        ["opened"] => Event::Opened,
        ["read", "window"] => Event::Read { from_disk: false },
        ["read", "disk"] => Event::Read { from_disk: true },
        ["acked", n] => Event::Acked {
            upto: n.parse().expect("acked N"),
        },
        ["gap"] => Event::Gap,
        ["stream-failed"] => Event::StreamFailed("stream failed".into()),
        ["stream-held"] => Event::StreamHeld,
        ["high-water", "ok"] => Event::HighWaterChecked { regressed: false },
        ["high-water", "regressed"] => Event::HighWaterChecked { regressed: true },
        ["round-start", m] => Event::RoundStarted(mode(m)),
        ["round-failed"] => Event::RoundFailed("round failed".into()),
        ["round-end", m, how, resume] => {
            let (finished, complete) = match *how {
                "finished" => (true, true),
                "refused" => (true, false),
                "unfinished" => (false, false),
                other => panic!("unknown round outcome {other:?}"),
            };
            Event::RoundEnded(RoundEnd {
                mode: mode(m),
                finished,
                complete,
                keys: 1,
                push_error: (!finished).then(|| "push failed".into()),
                resume_at: number(resume, "resume="),
                visible_ms: 1_000,
            })
        }
        other => panic!("unknown event {other:?}"),
    }
}

/// The state line after an event.
fn state_line(s: &PeerState, a: Actions) -> String {
    let gate = match stream_gate(s) {
        Gate::Open => "open",
        Gate::FirstRound => "first-round",
        Gate::CatchUp => "catch-up",
        Gate::Repair => "repair",
    };
    let due = round_due(s, false).map_or("-", mode_word);
    let mut line = format!(
        "> {} gate={gate} acked={} due={due}",
        s.phase().as_str(),
        s.acked_seq
    );
    for (on, word) in [
        (a.wake_repairer, "wake-repairer"),
        (a.wake_streamer, "wake-streamer"),
        (a.caught_up_with_one, "caught-up"),
        (a.synced, "synced"),
    ] {
        if on {
            line.push(' ');
            line.push_str(word);
        }
    }
    if let Some(c) = a.save_cursor {
        line.push_str(&format!(" save-cursor={c}"));
    }
    line
}

/// Replays `script`: its comments, blank lines and events as they are, each
/// event followed by the state it leads to.
fn replay(script: &str) -> String {
    let mut out = String::new();
    let mut state: Option<PeerState> = None;
    for line in script.lines() {
        if line.starts_with('>') {
            continue;
        }
        out.push_str(line);
        out.push('\n');
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() || words[0].starts_with('#') {
            continue;
        }
        let (s, actions) = match words.as_slice() {
            ["new", acked, rest @ ..] => {
                let s = PeerState::new(number(acked, "acked="), rest == ["catching-up"]);
                (state.insert(s), Actions::default())
            }
            _ => {
                let s = state.as_mut().expect("a script starts with `new`");
                let a = step(s, event(&words));
                (s, a)
            }
        };
        out.push_str(&state_line(s, actions));
        out.push('\n');
    }
    out
}

fn scripts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/replication/testscripts");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the testscripts dir")
        .map(|e| e.expect("a dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    files
}

#[test]
fn peer_state_machine_transcripts() {
    let update = std::env::var_os("UPDATE_TRANSCRIPTS").is_some();
    let files = scripts();
    assert!(files.len() >= 4, "the scripts went missing");
    for path in files {
        let have = std::fs::read_to_string(&path).expect("a readable script");
        let want = replay(&have);
        if have == want {
            continue;
        }
        if update {
            std::fs::write(&path, &want).expect("a writable script");
            continue;
        }
        let (n, (h, w)) = have
            .lines()
            .zip(want.lines())
            .enumerate()
            .find(|(_, (h, w))| h != w)
            .unwrap_or((
                have.lines().count().min(want.lines().count()),
                ("<end>", "<end>"),
            ));
        panic!(
            "{}:{}: the transcript says\n  {h}\nbut the machine now gives\n  {w}\n(UPDATE_TRANSCRIPTS=1 rewrites the file)",
            path.display(),
            n + 1
        );
    }
}
