//! A request body that was complete when the call started: at most one data
//! chunk and trailers. Every unary request tonic encodes is one.
//!
//! Each attempt gets its own reference to the kept chunk, so attempts never
//! share state and no lock is taken. The attempt's body reports its end
//! with its chunk, so hyper sends it as one DATA frame carrying END_STREAM.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};

use super::keep::keep;
use crate::body::replay::cap::ChannelBufferCap;

/// The kept request, shared by the call's attempts.
pub(super) struct Whole {
    /// Kept only while the request is replayable.
    data: Option<Bytes>,
    trailers: Option<Box<HeaderMap>>,
    /// Cleared (once) by a commit, which also returns the reservation.
    replayable: AtomicBool,
    /// What the data holds of the layer-wide cap.
    reserved: usize,
    /// Kept across calls by a pooled replay, so that the next call through
    /// the same layer need not clone it.
    pub(super) cap: Option<Arc<ChannelBufferCap>>,
    exact_size: bool,
}

/// One attempt's copy of a whole body.
pub(super) struct WholeBody {
    pub(super) data: Option<Bytes>,
    pub(super) trailers: Option<Box<HeaderMap>>,
    pub(super) exact_size: bool,
}

impl Whole {
    /// Holds nothing and cannot replay.
    pub(super) fn released() -> Self {
        Whole {
            data: None,
            trailers: None,
            replayable: AtomicBool::new(false),
            reserved: 0,
            cap: None,
            exact_size: true,
        }
    }

    /// Fills this released replay with a whole body (`cap` replaces the
    /// kept handle when given) and returns the first attempt's body.
    ///
    /// The call's `limit` is on the request's size; the layer-wide cap is
    /// charged what keeping it holds. A request over either is still sent
    /// by the first attempt, but not kept.
    pub(super) fn refill(
        &mut self,
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
        limit: usize,
        cap: Option<Arc<ChannelBufferCap>>,
        exact_size: bool,
    ) -> WholeBody {
        debug_assert!(self.data.is_none(), "refilled while full");
        if cap.is_some() {
            self.cap = cap;
        }
        let len = data.as_ref().map_or(0, Bytes::len);
        let (sent, kept, charged) = match data {
            Some(chunk) if len <= limit => {
                let kept = keep(chunk);
                (Some(kept.sent), Some(kept.kept), kept.charged)
            }
            // Too large to keep: the first attempt holds the only reference.
            other => (other, None, 0),
        };
        let replayable = len <= limit
            && self
                .cap
                .as_deref()
                .is_none_or(|cap| cap.try_reserve(charged));
        let trailers = trailers.map(Box::new);
        let first = WholeBody {
            data: sent,
            trailers: trailers.as_deref().map(boxed_copy),
            exact_size,
        };
        self.data = if replayable { kept } else { None };
        self.trailers = trailers;
        *self.replayable.get_mut() = replayable;
        self.reserved = if replayable { charged } else { 0 };
        self.exact_size = exact_size;
        first
    }

    /// A body for a later attempt, or `None` if the request is no longer
    /// kept.
    pub(super) fn body(&self) -> Option<WholeBody> {
        self.is_replayable().then(|| WholeBody {
            data: self.data.clone(),
            trailers: self.trailers.clone(),
            exact_size: self.exact_size,
        })
    }

    pub(super) fn is_replayable(&self) -> bool {
        self.replayable.load(Ordering::Acquire)
    }

    /// What the kept request holds of the cap.
    pub(super) fn buffered_bytes(&self) -> usize {
        if self.is_replayable() {
            self.reserved
        } else {
            0
        }
    }

    /// The call committed (or ended): no attempt will be added, so the
    /// reservation goes back. Each attempt's body holds its own reference to
    /// the chunk, so the attempt still sending is not cut short.
    pub(super) fn release(&self) {
        // A plain load first: every call commits, then drops its replay, so
        // the second release is the common case and needs no atomic
        // read-modify-write.
        if self.replayable.load(Ordering::Acquire)
            && self.replayable.swap(false, Ordering::AcqRel)
            && let Some(cap) = &self.cap
        {
            cap.release(self.reserved);
        }
    }

    /// Like [`release`](Self::release), also dropping the kept bytes, when
    /// nothing else can see this replay (no atomic read-modify-write). The
    /// cap's handle stays.
    pub(super) fn release_mut(&mut self) {
        if std::mem::take(self.replayable.get_mut())
            && let Some(cap) = &self.cap
        {
            cap.release(self.reserved);
        }
        self.data = None;
        self.trailers = None;
        self.reserved = 0;
    }
}

impl WholeBody {
    /// The next frame: the chunk, then the trailers.
    #[inline]
    pub(super) fn next_frame(&mut self) -> Option<Frame<Bytes>> {
        match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(|t| Frame::trailers(*t)),
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        let len = self.data.as_ref().map_or(0, |d| d.len() as u64);
        // Claim an exact size only if the caller's body did: hyper turns an
        // exact size into a content-length header, and the request should
        // go out as it would without the layer.
        if self.exact_size {
            SizeHint::with_exact(len)
        } else {
            let mut hint = SizeHint::new();
            hint.set_lower(len);
            hint
        }
    }
}

/// A copy of request trailers (rare in gRPC), out of line so a whole
/// body's common case keeps its code small.
#[cold]
#[inline(never)]
fn boxed_copy(trailers: &HeaderMap) -> Box<HeaderMap> {
    Box::new(trailers.clone())
}
