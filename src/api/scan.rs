//! `KV/Scan`: a key range, streamed in pages.
//!
//! Each page is read on the blocking pool with nothing held open afterwards
//! ([`Store::scan_page`]), then sent from an async task into a channel of
//! [`PAGES_BUFFERED`] pages. So a scan holds at most a few pages of memory
//! whatever the size of the range, and a client that stops reading holds
//! one task until [`STALL`] passes, never a storage iterator or a thread.

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tonic::Status;

use crate::{
    clock::PhysicalClock,
    config::MAX_KEY_BYTES,
    error::Error,
    proto,
    storage::{
        blocking::Blocking,
        scan::{KeyRange, PageLimits},
        Store,
    },
};

/// Scans running at once on one node; more get RESOURCE_EXHAUSTED.
pub const MAX_SCANS: usize = 64;
/// Pages read ahead of the client.
pub const PAGES_BUFFERED: usize = 2;
/// The bounds of one page: live entries, value bytes, entries read.
const PAGE: PageLimits = PageLimits {
    entries: 256,
    bytes: 1 << 20,
    scanned: 4096,
};
/// A client that takes no page for this long loses its scan.
const STALL: Duration = Duration::from_secs(30);
/// Page tokens start with this, so that a token from elsewhere is refused.
const TOKEN_TAG: &str = "s1.";

/// A checked Scan request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    range: KeyRange,
    /// Resume after this key (from a page token).
    after: Option<Vec<u8>>,
    /// Keys still to return; `None`: no limit.
    limit: Option<u64>,
    as_text: bool,
    keys_only: bool,
}

/// Checks a Scan request: a prefix or a range (not both), each bound at
/// most a key long, and a page token from a scan of that range.
pub fn plan(req: proto::ScanRequest) -> Result<Plan, Error> {
    for (name, v) in [
        ("prefix", &req.prefix),
        ("start", &req.start),
        ("end", &req.end),
    ] {
        if v.len() > MAX_KEY_BYTES {
            return Err(Error::InvalidArgument(format!(
                "{name} is {} bytes; at most {MAX_KEY_BYTES}",
                v.len()
            )));
        }
    }
    let range = if req.prefix.is_empty() {
        KeyRange::between(req.start.as_bytes(), req.end.as_bytes()).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "end {:?} is not after start {:?}; the range is [start, end)",
                req.end, req.start
            ))
        })?
    } else if req.start.is_empty() && req.end.is_empty() {
        KeyRange::prefix(req.prefix.as_bytes())
    } else {
        return Err(Error::InvalidArgument(
            "set prefix or a start/end range, not both".into(),
        ));
    };
    let after = if req.page_token.is_empty() {
        None
    } else {
        let key = decode_token(&req.page_token)?;
        if !range.contains(&key) {
            return Err(Error::InvalidArgument(
                "page_token is from a scan of another prefix or range".into(),
            ));
        }
        Some(key)
    };
    Ok(Plan {
        range,
        after,
        limit: (req.limit > 0).then_some(u64::from(req.limit)),
        as_text: req.as_text,
        keys_only: req.keys_only,
    })
}

/// The page token that resumes a scan after `key`.
pub fn page_token(key: &[u8]) -> String {
    let mut t = String::with_capacity(TOKEN_TAG.len() + 2 * key.len());
    t.push_str(TOKEN_TAG);
    for b in key {
        t.push_str(&format!("{b:02x}"));
    }
    t
}

fn decode_token(token: &str) -> Result<Vec<u8>, Error> {
    let bad = || Error::InvalidArgument("page_token is not one a scan returned".into());
    let hex = token.strip_prefix(TOKEN_TAG).ok_or_else(bad)?;
    if hex.len() % 2 != 0 || hex.len() > 2 * MAX_KEY_BYTES {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

/// What a running scan reads from.
pub struct Run {
    /// The data.
    pub store: Arc<Store>,
    /// Decides what has expired.
    pub clock: Arc<dyn PhysicalClock>,
    /// Where pages are read.
    pub blocking: Blocking,
}

impl Run {
    /// Reads `plan` page by page into `tx` until the range or the limit
    /// ends, the client goes away or stalls, or storage fails.
    pub async fn stream(
        self,
        plan: Plan,
        tx: mpsc::Sender<Result<proto::ScanResponse, Status>>,
        _permit: OwnedSemaphorePermit,
    ) {
        let range = Arc::new(plan.range);
        let mut after = plan.after;
        let mut left = plan.limit;
        loop {
            let limits = PageLimits {
                entries: left.map_or(PAGE.entries, |l| PAGE.entries.min(l as usize)),
                ..PAGE
            };
            let (store, r, from) = (Arc::clone(&self.store), Arc::clone(&range), after.clone());
            let now_ms = self.clock.now_ms();
            let keys_only = plan.keys_only;
            let page = self
                .blocking
                .run("scan read", move || {
                    store.scan_page(&r, from.as_deref(), limits, now_ms, keys_only)
                })
                .await
                .and_then(|r| r);
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
            };
            if let Some(l) = left.as_mut() {
                *l -= page.entries.len() as u64;
            }
            let limited = left == Some(0) && page.resume_after.is_some();
            let resp = proto::ScanResponse {
                next_page_token: match (&page.resume_after, limited) {
                    (Some(k), true) => page_token(k),
                    _ => String::new(),
                },
                entries: page
                    .entries
                    .into_iter()
                    .map(|(k, e)| super::show::key_value(k, e, plan.as_text))
                    .collect(),
            };
            if (!resp.entries.is_empty() || limited)
                && tx.send_timeout(Ok(resp), STALL).await.is_err()
            {
                return; // gone, or not reading
            }
            match page.resume_after {
                Some(k) if !limited => after = Some(k),
                _ => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(prefix: &str, start: &str, end: &str) -> proto::ScanRequest {
        proto::ScanRequest {
            prefix: prefix.into(),
            start: start.into(),
            end: end.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_scan_names_a_prefix_or_a_range_and_a_token_of_it() {
        assert!(plan(req("", "", "")).unwrap().range.contains(b"any"));
        assert!(plan(req("a/", "", "")).unwrap().range.contains(b"a/b"));
        for bad in [req("a", "b", ""), req("a", "", "c"), req("", "c", "b")] {
            let err = plan(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(plan(req(&long, "", "")).is_err());

        let mut r = req("a/", "", "");
        r.page_token = page_token(b"a/\xffz");
        assert_eq!(plan(r.clone()).unwrap().after.unwrap(), b"a/\xffz");
        r.prefix = "b/".into();
        let err = plan(r).unwrap_err().to_string();
        assert!(err.contains("another prefix"), "{err}");
        for token in ["a/", "s1.zz", "s1.abc", "x1.00"] {
            let mut r = req("", "", "");
            r.page_token = token.into();
            let err = plan(r).unwrap_err().to_string();
            assert!(err.contains("page_token"), "{token}: {err}");
        }
    }

    async fn run_scan(store: &Arc<Store>, r: proto::ScanRequest) -> Vec<proto::ScanResponse> {
        let (tx, mut rx) = mpsc::channel(PAGES_BUFFERED);
        let permit = Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap();
        let run = Run {
            store: Arc::clone(store),
            clock: Arc::new(crate::clock::SystemClock),
            blocking: Blocking::Pool,
        };
        tokio::spawn(run.stream(plan(r).unwrap(), tx, permit));
        let mut out = Vec::new();
        while let Some(m) = rx.recv().await {
            out.push(m.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn pages_and_limits_return_every_key_once_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer, _seq, _join) = crate::storage::writer::for_tests(dir.path());
        let keys: Vec<String> = (0..700).map(|i| format!("p/{i:04}")).collect();
        for chunk in keys.chunks(100) {
            let writes = chunk
                .iter()
                .map(|k| crate::storage::writer::LocalWrite::new(k.clone(), Some(b"v".to_vec())))
                .collect();
            writer.write_batch(writes).await.unwrap();
        }
        writer
            .write("q".into(), Some(b"other".to_vec()))
            .await
            .unwrap();
        writer.write("p/0003".into(), None).await.unwrap();
        let live: Vec<&String> = keys.iter().filter(|k| *k != "p/0003").collect();

        let pages = run_scan(&store, req("p/", "", "")).await;
        assert!(pages.len() >= 3, "{} pages", pages.len());
        let got: Vec<String> = pages
            .iter()
            .flat_map(|p| p.entries.iter().map(|e| e.key.clone()))
            .collect();
        assert_eq!(got.iter().collect::<Vec<_>>(), live);
        assert!(pages.iter().all(|p| p.next_page_token.is_empty()));

        // With a limit, page tokens walk the same keys.
        let mut walked = Vec::new();
        let mut token = String::new();
        loop {
            let mut r = req("p/", "", "");
            r.limit = 300;
            r.page_token = token;
            let pages = run_scan(&store, r).await;
            let n: usize = pages.iter().map(|p| p.entries.len()).sum();
            assert!(n <= 300);
            walked.extend(
                pages
                    .iter()
                    .flat_map(|p| p.entries.iter().map(|e| e.key.clone())),
            );
            token = pages
                .last()
                .map(|p| p.next_page_token.clone())
                .unwrap_or_default();
            if token.is_empty() {
                break;
            }
        }
        assert_eq!(walked, got);
    }
}
