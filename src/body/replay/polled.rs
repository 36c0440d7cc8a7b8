//! The first look at a request body: polled up to twice without waiting,
//! to tell a body that is already complete (a unary request) from a
//! stream.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

/// A request body after the polls [`Replay::start`] makes without waiting.
pub(super) enum Polled<B: Body> {
    /// It ended: at most one chunk and trailers.
    Whole {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
        exact_size: bool,
    },
    /// It goes on (or failed, or sent trailers it did not end after): what
    /// was read comes first.
    Streaming {
        body: B,
        prefetched: Vec<Result<Frame<Bytes>, B::Error>>,
        exact_size: bool,
    },
}

impl<B> Polled<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Polls `body` up to twice, with a no-op waker.
    #[inline]
    pub(super) fn read(mut body: B) -> Self {
        let exact_size = body.size_hint().exact().is_some();
        let whole = |data, trailers| Polled::Whole {
            data,
            trailers,
            exact_size,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let prefetched = match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Pending => Vec::new(),
            Poll::Ready(None) => return whole(None, None),
            Poll::Ready(Some(Err(error))) => vec![Err(error)],
            Poll::Ready(Some(Ok(frame))) => match Pin::new(&mut body).poll_frame(&mut cx) {
                Poll::Ready(None) => match frame.into_data() {
                    Ok(data) => return whole(Some(data), None),
                    Err(frame) => match frame.into_trailers() {
                        Ok(trailers) => return whole(None, Some(trailers)),
                        // No other kind of frame exists today; keep it as
                        // it is.
                        Err(frame) => vec![Ok(frame)],
                    },
                },
                Poll::Pending => vec![Ok(frame)],
                Poll::Ready(Some(second)) => vec![Ok(frame), second],
            },
        };
        Polled::Streaming {
            body,
            prefetched,
            exact_size,
        }
    }
}
