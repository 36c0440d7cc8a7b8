//! [`ResponseBody`]: the body of every response the layer (or the circuit
//! breaker) returns.
//!
//! A committed call is not over when its response headers arrive: its real
//! outcome is the `grpc-status` in its trailers (or the reset or error that
//! ends its body instead). This body passes the response through frame by
//! frame and, when it ends, tells its [`OnEnd`] hook the final code, so
//! that throttling, the circuit breaker, the metrics and the call's span
//! count what really happened, as grpc core does: a call that sent headers
//! and then UNAVAILABLE in its trailers is a failure, not a success.
//!
//! It also guards the caller: tonic 0.14's `Status::from_header_map` calls
//! `expect` on the base64 of `grpc-status-details-bin`, so a server sending
//! garbage there in the trailers would panic the caller's task. The
//! trailers pass through with such a value removed.
//!
//! On the happy path it adds no allocation and no box: it is the inner body
//! plus the hook, and a data frame passes through one extra `match`.
//!
//! # When the caller stops early
//!
//! If the caller drops the body before its end (it stopped reading a
//! stream, or dropped the response), the call's outcome is unknown: the
//! hook is told it was dropped. Throttling and the breaker then count
//! nothing (as for a call the caller cancels), and the metrics and span
//! record CANCELLED.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use crate::BoxError;
use crate::classify;

/// Told how a committed response ended. Implemented by this crate only:
/// the retry layer's call accounting and the circuit breaker's permit.
pub trait OnEnd: sealed::Sealed + Send + 'static {
    /// The response ended with `code`: its trailers' `grpc-status` (with
    /// the trailers, empty if there were none), or the code of the reset
    /// or error that ended it.
    fn ended(self, code: Code, trailers: &HeaderMap);

    /// The caller dropped the body before its end.
    fn dropped(self);
}

pub(crate) mod sealed {
    /// Keeps [`OnEnd`](super::OnEnd) to this crate.
    pub trait Sealed {}
}

pin_project! {
    /// The body of a response from [`Retry`](crate::Retry) (or
    /// [`CircuitBreaker`](crate::CircuitBreaker)): the inner service's body,
    /// passed through unchanged except that a malformed
    /// `grpc-status-details-bin` in the trailers is removed, and that its
    /// end (the trailers' status, a reset or an error) is recorded for
    /// throttling, the breaker and the metrics. See the [module
    /// documentation](self).
    ///
    /// A failure surfaced as a Trailers-Only response has no body: its
    /// status is in the headers, and anything a server (or a proxy's error
    /// page) sent after them is dropped, never handed to tonic's decoder.
    pub struct ResponseBody<B, E: OnEnd> {
        #[pin]
        inner: Option<B>,
        end: EndSlot<E>,
    }
}

/// The hook, told once; told "dropped" if the body goes before its end.
struct EndSlot<E: OnEnd>(Option<E>);

impl<E: OnEnd> Drop for EndSlot<E> {
    fn drop(&mut self) {
        if let Some(end) = self.0.take() {
            end.dropped();
        }
    }
}

impl<B, E: OnEnd> ResponseBody<B, E> {
    /// `inner`, whose end `end` (if any) is told.
    #[inline]
    pub(crate) fn new(inner: B, end: Option<E>) -> Self {
        ResponseBody {
            inner: Some(inner),
            end: EndSlot(end),
        }
    }

    /// No body: a Trailers-Only response's.
    pub(crate) fn empty() -> Self {
        ResponseBody {
            inner: None,
            end: EndSlot(None),
        }
    }

    /// Tells the hook, once.
    fn finish(end: &mut EndSlot<E>, code: Code, trailers: &HeaderMap) {
        if let Some(end) = end.0.take() {
            end.ended(code, trailers);
        }
    }
}

impl<B, E> Body for ResponseBody<B, E>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    E: OnEnd,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match ready!(inner.poll_frame(cx)) {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    classify::strip_malformed_status_details(trailers);
                    Self::finish(this.end, classify::trailers_code(trailers), trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                let error = error.into();
                Self::finish(
                    this.end,
                    classify::body_error_code(&*error),
                    classify::no_headers(),
                );
                Poll::Ready(Some(Err(error)))
            }
            None => {
                // Ended without trailers, so without a status: tonic's
                // client reports that as UNKNOWN.
                Self::finish(this.end, Code::Unknown, classify::no_headers());
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Not while the end is still to be told: one more poll shows it.
        self.end.0.is_none() && self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), B::size_hint)
    }
}

impl<B, E: OnEnd> fmt::Debug for ResponseBody<B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("empty", &self.inner.is_none())
            .field("end_pending", &self.end.0.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::BodyExt;

    use super::*;

    /// Records what it was told.
    #[derive(Clone, Default)]
    struct Told(Arc<Mutex<Vec<String>>>);

    impl sealed::Sealed for Told {}
    impl OnEnd for Told {
        fn ended(self, code: Code, trailers: &HeaderMap) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{code:?} {}", trailers.len()));
        }
        fn dropped(self) {
            self.0.lock().unwrap().push("dropped".into());
        }
    }

    impl Told {
        fn seen(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    /// A body of frames, then perhaps an error.
    fn frames(
        frames: Vec<Frame<Bytes>>,
        error: Option<tonic::Status>,
    ) -> impl Body<Data = Bytes, Error = tonic::Status> + Unpin {
        let mut items: Vec<Result<Frame<Bytes>, tonic::Status>> =
            frames.into_iter().map(Ok).collect();
        items.extend(error.map(Err));
        http_body_util::StreamBody::new(futures_util::stream::iter(items))
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    #[tokio::test]
    async fn the_trailers_status_is_the_outcome_and_malformed_details_are_removed() {
        let told = Told::default();
        let body = ResponseBody::new(
            frames(
                vec![
                    Frame::data(Bytes::from_static(b"msg")),
                    Frame::trailers(trailers(&[
                        ("grpc-status", "14"),
                        ("grpc-status-details-bin", "!!not base64!!"),
                    ])),
                ],
                None,
            ),
            Some(told.clone()),
        );
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().unwrap().clone();
        assert!(!trailers.contains_key("grpc-status-details-bin"));
        // What tonic's client does with them: no panic.
        assert_eq!(
            tonic::Status::from_header_map(&trailers).unwrap().code(),
            Code::Unavailable
        );
        assert_eq!(told.seen(), ["Unavailable 1"]);
    }

    #[tokio::test]
    async fn a_body_error_or_a_missing_status_is_the_outcome() {
        let told = Told::default();
        let body = ResponseBody::new(
            frames(vec![], Some(tonic::Status::cancelled("reset"))),
            Some(told.clone()),
        );
        assert!(body.collect().await.is_err());
        assert_eq!(told.seen(), ["Cancelled 0"]);

        let told = Told::default();
        let body = ResponseBody::new(
            frames(vec![Frame::data(Bytes::from_static(b"x"))], None),
            Some(told.clone()),
        );
        assert!(!body.is_end_stream());
        body.collect().await.unwrap();
        assert_eq!(told.seen(), ["Unknown 0"]);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_told_so_once() {
        let told = Told::default();
        let mut body = ResponseBody::new(
            frames(
                vec![
                    Frame::data(Bytes::from_static(b"a")),
                    Frame::trailers(trailers(&[("grpc-status", "0")])),
                ],
                None,
            ),
            Some(told.clone()),
        );
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(told.seen(), ["dropped"]);
    }

    #[tokio::test]
    async fn an_empty_body_ends_at_once() {
        let body = ResponseBody::<http_body_util::Empty<Bytes>, Told>::empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
