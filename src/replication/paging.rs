//! Checking how far a peer's paged answer reached. A BucketVersions or
//! Fetch answer says how much of the request it covered; a round moves on by
//! exactly that much, so each answer must cover something (or the round
//! would spin) and never more than was asked (or the round would skip what
//! it never compared).

use std::collections::HashMap;

use crate::{
    error::{Error, Result},
    storage::{BucketHash, Reach},
    version::Version,
};

/// The pairs of `pairs` that lie between the start (the first bucket of
/// `ask` after `after`) and `reach`, keys placed by `placed`.
pub(super) fn within(
    placed: &BucketHash,
    ask: &[u16],
    after: Option<&str>,
    reach: &Reach,
    pairs: Vec<(String, Version)>,
) -> Vec<(String, Version)> {
    let index: HashMap<u16, usize> = ask.iter().enumerate().map(|(i, b)| (*b, i)).collect();
    pairs
        .into_iter()
        .filter(|(k, _)| {
            let Some(&i) = index.get(&placed.of(k.as_bytes())) else {
                return false;
            };
            let started = i > 0 || after.is_none_or(|a| k.as_str() > a);
            let reached = i < reach.full
                || (i == reach.full && reach.partial.as_deref().is_some_and(|p| k.as_str() <= p));
            started && reached
        })
        .collect()
}

/// How many of `asked` keys a Fetch answer covered: at least one.
pub(super) fn fetched(peer: &str, processed: u32, asked: usize) -> Result<usize> {
    match processed as usize {
        0 => Err(Error::Peer {
            peer: peer.to_string(),
            status: tonic::Status::internal("the peer's answer covered nothing"),
        }),
        n => Ok(n.min(asked)),
    }
}

/// How far a BucketVersions answer reached; it must pass where it started
/// (the first bucket of `ask`, after `after`), and a bucket it stopped
/// inside must hold the key it stopped at (placed by `placed`).
pub(super) fn progress(
    placed: &BucketHash,
    peer: &str,
    ask: &[u16],
    after: Option<&str>,
    processed: u32,
    resume_after: String,
) -> Result<Reach> {
    let bad = |why: &str| Error::Peer {
        peer: peer.to_string(),
        status: tonic::Status::internal(format!("the peer's bucket answer {why}")),
    };
    let full = (processed as usize).min(ask.len());
    let partial = (!resume_after.is_empty() && full < ask.len()).then_some(resume_after);
    if let Some(p) = &partial {
        if placed.of(p.as_bytes()) != ask[full] {
            return Err(bad("resumes at a key outside the bucket it stopped in"));
        }
    }
    let reach = Reach { full, partial };
    let start = Reach {
        full: 0,
        partial: after.map(str::to_string),
    };
    if reach <= start {
        return Err(bad("covered nothing"));
    }
    Ok(reach)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_must_cover_something_and_not_more_than_asked() {
        assert!(fetched("p", 0, 5).is_err());
        assert_eq!(fetched("p", 3, 5).unwrap(), 3);
        assert_eq!(fetched("p", 9, 5).unwrap(), 5);
    }

    /// A key of bucket `b`, found by trying names.
    fn key_in(b: u16) -> String {
        (0..)
            .map(|i| format!("k{i}"))
            .find(|k| BucketHash::default().of(k.as_bytes()) == b)
            .unwrap()
    }

    #[test]
    fn a_bucket_answer_must_pass_its_start_and_stop_inside_its_bucket() {
        let ask = [7u16, 9, 11];
        let (k7, k9) = (key_in(7), key_in(9));
        let reach = |full, partial: Option<&String>| Reach {
            full,
            partial: partial.cloned(),
        };
        for (after, processed, resume, want) in [
            (None, 0, String::new(), None),
            (None, 0, k7.clone(), Some(reach(0, Some(&k7)))),
            (None, 1, k9.clone(), Some(reach(1, Some(&k9)))),
            (None, 9, k9.clone(), Some(reach(3, None))),
            // Resuming: the same key again is no progress.
            (Some(k7.as_str()), 0, k7.clone(), None),
            (Some(k7.as_str()), 1, String::new(), Some(reach(1, None))),
            // A key from another bucket than the one it stopped in.
            (None, 0, k9.clone(), None),
        ] {
            let got = progress(
                &BucketHash::default(),
                "p",
                &ask,
                after,
                processed,
                resume.clone(),
            )
            .ok();
            assert_eq!(
                got, want,
                "after {after:?}, processed {processed}, resume {resume:?}"
            );
        }
    }

    #[test]
    fn only_pairs_between_the_start_and_the_reach_are_compared() {
        let ask = [7u16, 9, 11];
        let mut k7: Vec<String> = (0..)
            .map(|i| format!("k{i}"))
            .filter(|k| BucketHash::default().of(k.as_bytes()) == 7)
            .take(3)
            .collect();
        k7.sort();
        let (k9, k11, k5) = (key_in(9), key_in(11), key_in(5));
        let v = Version {
            hlc: 1,
            node: "n1".into(),
        };
        let pairs: Vec<(String, Version)> = [&k7[0], &k7[1], &k7[2], &k9, &k11, &k5]
            .into_iter()
            .map(|k| (k.clone(), v.clone()))
            .collect();
        let keys = |r: &Reach, after: Option<&str>| -> Vec<String> {
            within(&BucketHash::default(), &ask, after, r, pairs.clone())
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        let r = Reach {
            full: 1,
            partial: Some(k9.clone()),
        };
        assert_eq!(
            keys(&r, Some(&k7[0])),
            [k7[1].clone(), k7[2].clone(), k9.clone()]
        );
        let r = Reach {
            full: 0,
            partial: Some(k7[1].clone()),
        };
        assert_eq!(keys(&r, None), [k7[0].clone(), k7[1].clone()]);
        let r = Reach {
            full: 3,
            partial: None,
        };
        assert_eq!(
            keys(&r, None).len(),
            5,
            "a bucket not asked for is never compared"
        );
    }
}
