//! A replay body as the `tonic::body::Body` the inner service takes.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::{BodyKind, ReplayBody};

impl ReplayBody<tonic::body::Body> {
    /// This attempt's body as the `tonic::body::Body` an inner service
    /// takes. Its errors become `Status` here, so tonic's `Body::new` takes
    /// the box as it is instead of wrapping it in one more layer that every
    /// frame would pass through.
    #[inline]
    pub(crate) fn into_tonic(self) -> tonic::body::Body {
        tonic::body::Body::new(http_body_util::BodyExt::boxed_unsync(TonicReplayBody(self)))
    }
}

/// A [`ReplayBody`] whose errors are `Status`, tonic's body error.
struct TonicReplayBody(ReplayBody<tonic::body::Body>);

impl Body for TonicReplayBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        // A whole body, the common case, yields its frames here, sparing
        // the frame a move through the general result type.
        if let BodyKind::Whole(body) = &mut self.0.kind {
            return Poll::Ready(body.next_frame().map(Ok));
        }
        Pin::new(&mut self.0)
            .poll_frame(cx)
            .map_err(tonic::Status::from_error)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.0.size_hint()
    }
}
