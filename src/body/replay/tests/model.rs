//! Property tests: the replay against a simple model of what every attempt
//! must send.
//!
//! The model: the source yields data chunks (with `Pending` between some of
//! them), then ends, ends with trailers, or fails. Up to five attempts are
//! started at random points and polled, committed, abandoned and dropped in
//! a random order. Then:
//!
//! * what any attempt has sent is always a prefix of the source's chunks;
//! * an attempt that ends has sent exactly the source's frames, in order;
//! * an attempt that fails with the source's error has sent every chunk;
//! * the attempt the call committed to is never cut off, and when driven to
//!   the end it sends everything;
//! * a `Pending` poll has always arranged for the attempt to be woken;
//! * the cap's count equals the replay's, and is 0 once the call is over;
//! * nothing panics.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use proptest::prelude::*;

use super::CountingWaker;
use crate::BoxError;
use crate::body::replay::cap::ChannelBufferCap;
use crate::body::replay::{BodyId, Replay, ReplayBody, ReplayError};

#[derive(Debug, Clone)]
enum SourceStep {
    Chunk(usize),
    /// Not ready once (it wakes its waker at once, like a producer that
    /// has just been scheduled).
    Pending,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum SourceEnd {
    End,
    Trailers,
    Fail,
}

#[derive(Debug, Clone)]
enum Op {
    Start,
    Poll(usize),
    Commit(usize),
    Abandon(usize),
    Drop(usize),
}

/// The source: scripted chunks of distinct bytes.
struct Source {
    steps: VecDeque<SourceStep>,
    next_byte: u8,
    end: Option<SourceEnd>,
}

impl Body for Source {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.steps.pop_front() {
            Some(SourceStep::Pending) => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(SourceStep::Chunk(len)) => {
                let byte = self.next_byte;
                self.next_byte = self.next_byte.wrapping_add(1);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![byte; len])))))
            }
            None => match self.end.take() {
                Some(SourceEnd::Trailers) => Poll::Ready(Some(Ok(Frame::trailers(trailers())))),
                Some(SourceEnd::Fail) => {
                    Poll::Ready(Some(Err(std::io::Error::other("source broke"))))
                }
                Some(SourceEnd::End) | None => Poll::Ready(None),
            },
        }
    }
}

fn trailers() -> HeaderMap {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "1".parse().unwrap());
    trailers
}

/// What one attempt has done so far.
#[derive(Debug, Default)]
struct Seen {
    chunks: Vec<Bytes>,
    trailers: bool,
    ended: bool,
    failed: Option<String>,
    released: bool,
}

struct Attempt {
    body: Option<ReplayBody<Source>>,
    id: BodyId,
    waker: Arc<CountingWaker>,
    seen: Seen,
    abandoned: bool,
}

impl Attempt {
    fn done(&self) -> bool {
        self.seen.ended || self.seen.failed.is_some() || self.seen.released
    }

    /// Polls once and checks the step against the model.
    fn poll(&mut self, expected: &[Bytes], end: SourceEnd) -> Result<(), TestCaseError> {
        if self.done() {
            return Ok(());
        }
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        let before = self.waker.count();
        let waker = Waker::from(self.waker.clone());
        let polled = std::pin::Pin::new(body).poll_frame(&mut Context::from_waker(&waker));
        match polled {
            Poll::Pending => prop_assert!(
                self.waker.count() > before,
                "a Pending poll must arrange a wake"
            ),
            Poll::Ready(None) => self.seen.ended = true,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(chunk) => {
                    prop_assert!(!self.seen.trailers, "data after trailers");
                    self.seen.chunks.push(chunk);
                }
                Err(frame) => {
                    prop_assert_eq!(frame.trailers_ref(), Some(&trailers()));
                    prop_assert!(!self.seen.trailers, "trailers twice");
                    self.seen.trailers = true;
                }
            },
            Poll::Ready(Some(Err(error))) => record_error(&mut self.seen, &error),
        }
        let n = self.seen.chunks.len();
        prop_assert!(n <= expected.len(), "more chunks than the source had");
        prop_assert_eq!(
            &self.seen.chunks[..],
            &expected[..n],
            "not a prefix of the source"
        );
        if self.seen.ended {
            prop_assert_eq!(n, expected.len(), "ended early");
            prop_assert_eq!(self.seen.trailers, end == SourceEnd::Trailers);
        }
        if self.seen.failed.is_some() {
            prop_assert_eq!(end, SourceEnd::Fail);
            prop_assert_eq!(n, expected.len(), "the source failed only at its end");
        }
        Ok(())
    }
}

fn record_error(seen: &mut Seen, error: &BoxError) {
    match error.downcast_ref::<ReplayError>() {
        Some(ReplayError::Released) => seen.released = true,
        Some(ReplayError::SourceFailed) | None => seen.failed = Some(error.to_string()),
    }
}

fn source_steps() -> impl Strategy<Value = Vec<SourceStep>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0usize..40).prop_map(SourceStep::Chunk),
            1 => Just(SourceStep::Pending),
        ],
        0..24,
    )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            2 => Just(Op::Start),
            8 => (0usize..5).prop_map(Op::Poll),
            1 => (0usize..5).prop_map(Op::Commit),
            1 => (0usize..5).prop_map(Op::Abandon),
            1 => (0usize..5).prop_map(Op::Drop),
        ],
        1..80,
    )
}

fn end() -> impl Strategy<Value = SourceEnd> {
    prop_oneof![
        Just(SourceEnd::End),
        Just(SourceEnd::Trailers),
        Just(SourceEnd::Fail)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_attempt_sends_the_source_or_a_prefix_and_the_cap_returns_to_zero(
        steps in source_steps(),
        end in end(),
        ops in ops(),
        limit in prop_oneof![Just(usize::MAX), 0usize..400],
        cap_limit in prop_oneof![Just(usize::MAX), 0usize..400],
        start_whole in any::<bool>(),
    ) {
        let cap = Arc::new(ChannelBufferCap::new(cap_limit));
        // The bytes each chunk will carry (distinct per chunk).
        let expected: Vec<Bytes> = steps
            .iter()
            .filter_map(|s| match s { SourceStep::Chunk(len) => Some(*len), SourceStep::Pending => None })
            .enumerate()
            .map(|(i, len)| Bytes::from(vec![i as u8; len]))
            .collect();
        let source = Source { steps: steps.into(), next_byte: 0, end: Some(end) };
        let mut attempts: Vec<Attempt> = Vec::new();
        // Either the layer's way (read ahead, perhaps whole) or lazily.
        let replay = if start_whole {
            let (replay, first) = Replay::start(source, limit, Some(cap.clone()));
            attempts.push(new_attempt(first));
            replay
        } else {
            Replay::with_cap(source, limit, cap.clone())
        };
        let mut winner: Option<usize> = None;

        for op in ops {
            match op {
                Op::Start if attempts.len() < 5 => attempts.push(new_attempt(replay.body())),
                Op::Start => {}
                Op::Poll(i) => if let Some(a) = attempts.get_mut(i) { a.poll(&expected, end)?; },
                Op::Commit(i) => if let Some(a) = attempts.get(i)
                    && winner.is_none()
                    && !a.abandoned
                    && replay.can_commit(a.id)
                {
                    replay.commit(a.id);
                    winner = Some(i);
                },
                Op::Abandon(i) => if let Some(a) = attempts.get_mut(i) {
                    replay.abandon(a.id);
                    a.abandoned = true;
                },
                Op::Drop(i) => if let Some(a) = attempts.get_mut(i) { a.body = None; },
            }
            prop_assert_eq!(cap.used(), replay.buffered_bytes(), "the cap counts what the replay holds");
            if let Some(w) = winner {
                let a = &attempts[w];
                prop_assert!(a.abandoned || !a.seen.released, "the winner was cut off");
            }
        }

        // Drive every attempt still going to its end (bounded).
        for _ in 0..10_000 {
            if attempts.iter().all(|a| a.body.is_none() || a.done()) {
                break;
            }
            for a in &mut attempts {
                a.poll(&expected, end)?;
            }
        }
        for (i, a) in attempts.iter().enumerate() {
            prop_assert!(a.body.is_none() || a.done(), "attempt {} never finished: {:?}", i, a.seen);
        }
        if let Some(w) = winner {
            let a = &attempts[w];
            if a.body.is_some() && !a.abandoned {
                prop_assert!(a.seen.ended || a.seen.failed.is_some(), "the winner did not finish: {:?}", a.seen);
            }
        }
        drop(replay);
        drop(attempts);
        prop_assert_eq!(cap.used(), 0, "the cap's count returns to 0 when the call ends");
    }
}

fn new_attempt(body: ReplayBody<Source>) -> Attempt {
    Attempt {
        id: body.id(),
        body: Some(body),
        waker: Arc::default(),
        seen: Seen::default(),
        abandoned: false,
    }
}
