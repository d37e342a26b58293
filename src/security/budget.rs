//! A node-wide bound on the request bytes being received.
//!
//! tonic buffers a whole gRPC message before decoding it, up to the
//! service's message limit (65 MiB for peers), and an HTTP/2 connection
//! carries up to 1024 requests at once. Without a bound shared by every
//! connection, a few callers sending large messages in parallel make the
//! node hold gigabytes before a handler has seen a byte.
//!
//! [`Metered`] wraps a request body and charges each data frame to a
//! [`Budget`] as it arrives. It follows the gRPC framing (a 5-byte header
//! with the message length, then the message), so once a message has been
//! handed to tonic and decoded, which happens before tonic polls the body
//! again, its bytes go back to the budget: a long-lived replication stream
//! holds only the message it is receiving. A frame that does not fit ends
//! the request with RESOURCE_EXHAUSTED; callers retry (peers back off).
//! Charging bytes as they arrive, rather than a message's declared length
//! when its header arrives, keeps a caller that declares 64 MiB and then
//! trickles from holding 64 MiB of budget.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use prost::bytes::{Buf, Bytes};
use tonic::Status;

/// Bytes of requests being received, shared by every connection of a kind.
#[derive(Debug)]
pub struct Budget {
    what: &'static str,
    limit: usize,
    used: AtomicUsize,
}

impl Budget {
    /// A budget of `limit` bytes; `what` names it in errors ("client", "peer").
    pub fn new(what: &'static str, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            what,
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Where the gRPC framing of a request body stands.
#[derive(Debug, Default)]
struct Framing {
    /// Header bytes of the next message seen so far (0..5).
    header: [u8; 5],
    header_seen: usize,
    /// Bytes of the current message still to come; `None` between messages.
    body_left: Option<usize>,
    /// Bytes of the current message (header included) seen so far.
    partial: usize,
}

impl Framing {
    /// Follows `chunk` through the framing; returns how many of its bytes
    /// belong to messages that it completes.
    fn advance(&mut self, mut chunk: &[u8]) -> usize {
        let mut completed = 0;
        while !chunk.is_empty() {
            match self.body_left {
                None => {
                    let n = (5 - self.header_seen).min(chunk.len());
                    self.header[self.header_seen..self.header_seen + n]
                        .copy_from_slice(&chunk[..n]);
                    self.header_seen += n;
                    self.partial += n;
                    chunk = &chunk[n..];
                    if self.header_seen == 5 {
                        let len = u32::from_be_bytes([
                            self.header[1],
                            self.header[2],
                            self.header[3],
                            self.header[4],
                        ]) as usize;
                        self.header_seen = 0;
                        self.body_left = Some(len);
                    }
                }
                Some(left) => {
                    let n = left.min(chunk.len());
                    self.partial += n;
                    chunk = &chunk[n..];
                    self.body_left = Some(left - n);
                }
            }
            if self.body_left == Some(0) {
                self.body_left = None;
                completed += self.partial;
                self.partial = 0;
            }
        }
        completed
    }
}

/// What one call holds of a [`Budget`]: its body's bytes and its
/// messages' decoded cost. Everything comes back when the last holder
/// (the body, the call's future) is dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    held: AtomicUsize,
}

impl Charge {
    /// A call's share of `budget`, empty.
    pub fn new(budget: Arc<Budget>) -> Arc<Self> {
        Arc::new(Self {
            budget,
            held: AtomicUsize::new(0),
        })
    }

    /// Takes `n` bytes more, if the budget has them.
    pub fn take(&self, n: usize) -> bool {
        if !self.budget.take(n) {
            return false;
        }
        self.held.fetch_add(n, Ordering::AcqRel);
        true
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
        self.budget.give(n);
    }

    fn exhausted(&self) -> Status {
        Status::resource_exhausted(format!(
            "this node is holding {} MiB of {} requests in flight already, its bound; \
             retry later",
            self.budget.limit >> 20,
            self.budget.what
        ))
    }
}

impl crate::grpc_codec::DecodeCharge for Charge {
    fn charge(&self, bytes: usize) -> bool {
        self.take(bytes)
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give(*self.held.get_mut());
    }
}

/// A request body whose bytes are charged to a call's [`Charge`] as they
/// arrive.
pub struct Metered<B> {
    inner: B,
    charge: Arc<Charge>,
    framing: Framing,
    /// A streaming request gives each message back once tonic has decoded
    /// it; a unary one keeps its message charged until the call ends, since
    /// the decoded values still point into the received bytes.
    release_each: bool,
    /// Bytes of complete messages to give back at the next poll.
    done: usize,
}

impl<B> Metered<B> {
    /// Meters `inner` into `charge`; `streaming` for a client-streaming call.
    pub fn new(inner: B, charge: Arc<Charge>, streaming: bool) -> Self {
        Self {
            inner,
            charge,
            framing: Framing::default(),
            release_each: streaming,
            done: 0,
        }
    }

    fn account(&mut self, data: &Bytes) -> Result<(), Status> {
        if !self.charge.take(data.remaining()) {
            return Err(self.charge.exhausted());
        }
        let completed = self.framing.advance(data.chunk());
        if self.release_each {
            self.done += completed;
        }
        Ok(())
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = Status> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done > 0 {
            this.charge.give(this.done);
            this.done = 0;
        }
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                this.account(data)?;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(len: usize) -> Vec<u8> {
        let mut v = vec![0u8];
        v.extend_from_slice(&(len as u32).to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, len));
        v
    }

    #[test]
    fn framing_finds_message_ends_across_any_split() {
        let mut bytes = framed(3);
        bytes.extend(framed(0));
        bytes.extend(framed(10));
        let total = bytes.len();
        // Whole messages are 8, 5 and 15 bytes; every split point must
        // report the same completed total.
        for cut in 0..=total {
            let mut f = Framing::default();
            let a = f.advance(&bytes[..cut]);
            let b = f.advance(&bytes[cut..]);
            assert_eq!(a + b, total, "cut at {cut}");
            let expected_first = [8, 13, 28].iter().filter(|&&e| e <= cut).max().copied();
            assert_eq!(a, expected_first.unwrap_or(0), "cut at {cut}");
        }
        // One byte at a time.
        let mut f = Framing::default();
        let sum: usize = bytes
            .iter()
            .map(|b| f.advance(std::slice::from_ref(b)))
            .sum();
        assert_eq!(sum, total);
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_takes_back_what_is_given() {
        let b = Budget::new("test", 100);
        assert!(b.take(60));
        assert!(!b.take(41));
        assert!(b.take(40));
        b.give(100);
        assert_eq!(b.used(), 0);
        assert!(!b.take(101));
    }

    struct Chunks(Vec<Bytes>);
    impl Body for Chunks {
        type Data = Bytes;
        type Error = Status;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready((!self.0.is_empty()).then(|| Ok(Frame::data(self.0.remove(0)))))
        }
    }

    fn next(m: &mut Metered<Chunks>) -> Option<Result<Frame<Bytes>, Status>> {
        let waker = std::task::Waker::noop();
        match Pin::new(m).poll_frame(&mut Context::from_waker(waker)) {
            Poll::Ready(f) => f,
            Poll::Pending => unreachable!("the test body is always ready"),
        }
    }

    #[test]
    fn a_stream_holds_only_the_message_it_is_receiving() {
        let budget = Budget::new("test", 30);
        let msg = Bytes::from(framed(20)); // 25 bytes
        let half = msg.slice(..12);
        let rest = msg.slice(12..);
        let body = Chunks(vec![msg.clone(), half, rest, msg.clone()]);
        let mut m = Metered::new(body, Charge::new(Arc::clone(&budget)), true);
        next(&mut m).unwrap().unwrap();
        assert_eq!(budget.used(), 25, "held until tonic comes back for more");
        next(&mut m).unwrap().unwrap();
        assert_eq!(budget.used(), 12, "the first message went back");
        next(&mut m).unwrap().unwrap();
        next(&mut m).unwrap().unwrap();
        assert_eq!(budget.used(), 25);
        drop(m);
        assert_eq!(budget.used(), 0, "dropping the body gives everything back");

        // Unary: the message stays charged for as long as the call holds it.
        let charge = Charge::new(Arc::clone(&budget));
        let mut m = Metered::new(Chunks(vec![msg]), Arc::clone(&charge), false);
        next(&mut m).unwrap().unwrap();
        assert!(next(&mut m).is_none());
        drop(m);
        assert_eq!(budget.used(), 25);
        assert!(charge.take(5), "the decoded cost joins it");
        assert!(!charge.take(1), "and the budget is full");
        drop(charge);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_frame_past_the_budget_ends_the_request_with_resource_exhausted() {
        let budget = Budget::new("peer", 30);
        assert!(budget.take(20));
        let body = Chunks(vec![Bytes::from(framed(20))]);
        let mut m = Metered::new(body, Charge::new(Arc::clone(&budget)), true);
        let err = next(&mut m).unwrap().unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(
            err.message().contains("of peer requests"),
            "{}",
            err.message()
        );
        drop(m);
        assert_eq!(
            budget.used(),
            20,
            "nothing was charged for the refused frame"
        );
    }
}
