//! A request body that goes on after the call started (a client stream):
//! recorded lazily as the attempts read it.
//!
//! The caller's body (the *source*) lives in the state the attempts share,
//! never in one attempt. Each attempt's body has a position: the index of
//! the next data chunk it sends. An attempt behind the source replays the
//! recorded chunk at its position; an attempt that has caught up reads the
//! next chunk from the source itself, records it, and wakes the others. So
//! no attempt ever waits on another: an attempt whose stream is stalled by
//! HTTP/2 flow control just stops reading, and the others go on.
//!
//! While the call is uncommitted every chunk is recorded (up to the call's
//! limit and the layer-wide cap). When it commits to one attempt (the
//! *winner*: the one whose response headers arrived, or the one that read
//! past a buffer limit, which A6 also treats as a commit), recording stops,
//! every other attempt is cut off, and only what the winner has still to
//! send is kept: each recorded chunk is freed as the winner sends it. The
//! winner thus sends its whole request exactly once, in order, whatever the
//! timing, and the cap counts only what is really still held.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use super::error::ReplayError;
use super::keep::keep;
use crate::BoxError;
use crate::body::replay::cap::ChannelBufferCap;

/// The state a streaming call's attempts share.
pub(super) type SharedState<B> = Arc<Mutex<Shared<B>>>;

pub(super) struct Shared<B> {
    /// The caller's body, until it ends or fails.
    source: Option<B>,
    end: SourceEnd,
    /// Recorded chunks still held, the first being chunk `first_kept`.
    kept: VecDeque<KeptChunk>,
    first_kept: usize,
    /// Data chunks read from the source so far, recorded or not.
    read: usize,
    /// Bytes recorded, against the call's `limit`.
    recorded_len: usize,
    limit: usize,
    /// What the kept chunks hold of `cap`.
    charged: usize,
    cap: Option<Arc<ChannelBufferCap>>,
    /// Whether new chunks are kept for later attempts.
    recording: bool,
    /// The attempt the call committed to, once it has.
    winner: Option<usize>,
    /// Every attempt's body, by id.
    bodies: Vec<BodyState>,
    /// Attempts waiting for the source; the source's waker wakes them all.
    waiters: Arc<Waiters>,
    source_waker: Waker,
    /// Whether the caller's body claimed an exact size (hyper turns one
    /// into `content-length`, so a replay claims one only if it did).
    exact_size: bool,
}

enum SourceEnd {
    Open,
    /// Ended, with its trailers if it had any.
    Done(Option<HeaderMap>),
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// Sending; the next data chunk it sends is chunk `position`.
    Live { position: usize },
    /// The call went on without it: its next poll fails.
    CutOff,
    /// Dropped.
    Gone,
}

struct KeptChunk {
    chunk: Bytes,
    charged: usize,
}

pub(super) fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // The source is polled under the lock; should it panic, the state is
    // still consistent enough to finish (or fail) the call.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Shared<B> {
    pub(super) fn new(
        source: B,
        limit: usize,
        cap: Option<Arc<ChannelBufferCap>>,
        exact_size: bool,
    ) -> SharedState<B> {
        let waiters = Arc::new(Waiters::default());
        Arc::new(Mutex::new(Shared {
            source: Some(source),
            end: SourceEnd::Open,
            kept: VecDeque::new(),
            first_kept: 0,
            read: 0,
            recorded_len: 0,
            limit,
            charged: 0,
            cap,
            recording: true,
            winner: None,
            bodies: Vec::new(),
            source_waker: Waker::from(waiters.clone()),
            waiters,
            exact_size,
        }))
    }

    /// Registers a new attempt's body and returns its id. A body added
    /// once the request can no longer be replayed is cut off at once.
    pub(super) fn add_body(&mut self) -> usize {
        self.bodies.push(if self.recording {
            BodyState::Live { position: 0 }
        } else {
            BodyState::CutOff
        });
        self.bodies.len() - 1
    }

    /// Whether a new attempt could send the whole request.
    pub(super) fn is_replayable(&self) -> bool {
        self.recording && !matches!(self.end, SourceEnd::Failed)
    }

    pub(super) fn buffered_bytes(&self) -> usize {
        self.charged
    }

    pub(super) fn winner(&self) -> Option<usize> {
        self.winner
    }

    pub(super) fn is_cut_off(&self, id: usize) -> bool {
        matches!(self.bodies.get(id), Some(BodyState::CutOff))
    }

    /// The call commits to body `winner`: stop recording, cut off every
    /// other body, and free what the winner has already sent. Only the
    /// first commit counts.
    pub(super) fn commit(&mut self, winner: usize) {
        if self.winner.is_some() {
            return;
        }
        self.recording = false;
        self.winner = Some(winner);
        for (id, body) in self.bodies.iter_mut().enumerate() {
            if id != winner && matches!(body, BodyState::Live { .. }) {
                *body = BodyState::CutOff;
            }
        }
        let needed_from = match self.bodies.get(winner) {
            Some(BodyState::Live { position }) => *position,
            _ => self.read,
        };
        self.free_before(needed_from);
        // Cut-off bodies waiting on the source fail at their next poll.
        self.waiters.wake_all();
    }

    /// Attempt `id` is over (it failed, or lost): its body may stop
    /// sending, and no longer reads the source.
    pub(super) fn abandon(&mut self, id: usize) {
        if let Some(body @ BodyState::Live { .. }) = self.bodies.get_mut(id) {
            *body = BodyState::CutOff;
            if self.winner == Some(id) {
                self.free_before(self.read);
            }
            self.waiters.wake_all();
        }
    }

    /// The call ended without committing: nothing will be replayed, and
    /// no attempt's body needs to go on.
    pub(super) fn abandon_all(&mut self) {
        self.recording = false;
        for body in &mut self.bodies {
            if matches!(body, BodyState::Live { .. }) {
                *body = BodyState::CutOff;
            }
        }
        self.free_before(self.read);
        self.waiters.wake_all();
    }

    /// Frees the kept chunks before chunk `index`.
    fn free_before(&mut self, index: usize) {
        while self.first_kept < index {
            let Some(freed) = self.kept.pop_front() else {
                self.first_kept = index;
                break;
            };
            self.first_kept += 1;
            self.charged -= freed.charged;
            if let Some(cap) = &self.cap {
                cap.release(freed.charged);
            }
        }
    }

    /// Counts chunk `chunk`, read from the source by body `reader`, and
    /// keeps it if the call is recording and it fits; returns what the
    /// reader sends.
    fn record(&mut self, reader: usize, chunk: Bytes) -> Bytes {
        self.read += 1;
        if !self.recording {
            return chunk;
        }
        let fits_limit = self
            .recorded_len
            .checked_add(chunk.len())
            .is_some_and(|total| total <= self.limit);
        if fits_limit {
            let len = chunk.len();
            let kept = keep(chunk);
            if self
                .cap
                .as_deref()
                .is_none_or(|cap| cap.try_reserve(kept.charged))
            {
                self.recorded_len += len;
                self.charged += kept.charged;
                self.kept.push_back(KeptChunk {
                    chunk: kept.kept,
                    charged: kept.charged,
                });
                return kept.sent;
            }
            self.overflowed(reader);
            return kept.sent;
        }
        self.overflowed(reader);
        chunk
    }

    /// The request no longer fits: it can never be replayed, and A6 treats
    /// that as a commit, to the attempt that read past the limit.
    #[cold]
    fn overflowed(&mut self, reader: usize) {
        tracing::debug!("request passed a replay buffer limit: the call commits");
        self.commit(reader);
    }

    /// The recorded chunk `index`, if still kept.
    fn kept_chunk(&self, index: usize) -> Option<Bytes> {
        let offset = index.checked_sub(self.first_kept)?;
        self.kept.get(offset).map(|kept| kept.chunk.clone())
    }

    fn position(&self, id: usize) -> Option<usize> {
        match self.bodies.get(id) {
            Some(BodyState::Live { position }) => Some(*position),
            _ => None,
        }
    }

    fn advance(&mut self, id: usize) {
        if let Some(BodyState::Live { position }) = self.bodies.get_mut(id) {
            *position += 1;
        }
    }
}

impl<B> Shared<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    /// Takes what the source yielded to body `reader`: records a chunk,
    /// notes the end or the failure.
    pub(super) fn take_from_source(
        &mut self,
        reader: usize,
        polled: Option<Result<Frame<Bytes>, B::Error>>,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        match polled {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    let sent = self.record(reader, chunk);
                    self.advance(reader);
                    Some(Ok(Frame::data(sent)))
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        // Trailers are the body's last frame.
                        self.end = SourceEnd::Done(Some(trailers.clone()));
                        self.source = None;
                    }
                    Some(Ok(frame))
                }
            },
            Some(Err(error)) => {
                self.end = SourceEnd::Failed;
                self.source = None;
                Some(Err(error.into()))
            }
            None => {
                if matches!(self.end, SourceEnd::Open) {
                    self.end = SourceEnd::Done(None);
                }
                self.source = None;
                None
            }
        }
    }
}

/// The attempts waiting for the source to yield. The source is polled with
/// a waker that wakes them all, so that whichever attempt polled it last,
/// none is left waiting when it is ready.
#[derive(Default)]
struct Waiters(Mutex<Vec<Waker>>);

impl Waiters {
    fn register(&self, waker: &Waker) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !list.iter().any(|w| w.will_wake(waker)) {
            list.push(waker.clone());
        }
    }

    fn wake_all(&self) {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for waker in list {
            waker.wake();
        }
    }
}

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_all();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_all();
    }
}

/// One attempt's view of a streaming request.
pub(super) struct StreamingBody<B> {
    shared: SharedState<B>,
    id: usize,
    /// Frames the first attempt read before it was sent, not yet yielded.
    prefix: VecDeque<Result<Frame<Bytes>, BoxError>>,
    trailers_sent: bool,
    /// Yielded its end or an error: nothing more to poll.
    finished: bool,
}

impl<B> StreamingBody<B> {
    pub(super) fn new(shared: SharedState<B>, id: usize) -> Self {
        StreamingBody {
            shared,
            id,
            prefix: VecDeque::new(),
            trailers_sent: false,
            finished: false,
        }
    }

    /// Queues a frame read before the attempt was sent.
    pub(super) fn push_prefix(&mut self, frame: Result<Frame<Bytes>, BoxError>) {
        if frame.as_ref().is_ok_and(Frame::is_trailers) {
            self.trailers_sent = true;
        }
        self.prefix.push_back(frame);
    }
}

impl<B> StreamingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if self.finished {
            return Poll::Ready(None);
        }
        let StreamingBody {
            shared,
            id,
            trailers_sent,
            finished,
            ..
        } = self;
        let id = *id;
        let fail = |finished: &mut bool, error: ReplayError| {
            *finished = true;
            Poll::Ready(Some(Err(error.into())))
        };
        let mut guard = lock(shared);
        let state = &mut *guard;
        let Some(position) = state.position(id) else {
            return fail(finished, ReplayError::Released);
        };
        if position < state.read {
            // Behind the source: replay a recorded chunk.
            let Some(chunk) = state.kept_chunk(position) else {
                state.abandon(id);
                return fail(finished, ReplayError::Released);
            };
            state.advance(id);
            if state.winner == Some(id) {
                // Committed: nobody needs it again.
                state.free_before(position + 1);
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match &state.end {
            SourceEnd::Done(trailers) => {
                if !*trailers_sent {
                    *trailers_sent = true;
                    if let Some(trailers) = trailers {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                    }
                }
                *finished = true;
                return Poll::Ready(None);
            }
            SourceEnd::Failed => return fail(finished, ReplayError::SourceFailed),
            SourceEnd::Open => {}
        }
        // Caught up: read on from the source. The waker is registered
        // first, so a wake between the source's `Pending` and here is not
        // lost.
        state.waiters.register(cx.waker());
        let Shared {
            source,
            source_waker,
            ..
        } = state;
        let Some(source) = source.as_mut() else {
            return fail(finished, ReplayError::SourceFailed);
        };
        let polled =
            std::task::ready!(Pin::new(source).poll_frame(&mut Context::from_waker(source_waker)));
        let result = state.take_from_source(id, polled);
        match &result {
            Some(Ok(frame)) if frame.is_trailers() => *trailers_sent = true,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => *finished = true,
        }
        // The others may go on: replay this chunk, or see the end.
        state.waiters.wake_all();
        Poll::Ready(result)
    }

    pub(super) fn is_end_stream(&self) -> bool {
        if !self.prefix.is_empty() {
            return false;
        }
        if self.finished {
            return true;
        }
        let state = lock(&self.shared);
        let Some(position) = state.position(self.id) else {
            return false;
        };
        if position < state.read {
            return false;
        }
        match &state.end {
            SourceEnd::Done(trailers) => self.trailers_sent || trailers.is_none(),
            SourceEnd::Failed => false,
            SourceEnd::Open => state.source.as_ref().is_some_and(B::is_end_stream),
        }
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        let state = lock(&self.shared);
        let prefixed: u64 = self
            .prefix
            .iter()
            .filter_map(|f| f.as_ref().ok()?.data_ref().map(|d| d.len() as u64))
            .sum();
        let position = state.position(self.id).unwrap_or(state.read);
        let recorded: u64 = state
            .kept
            .iter()
            .skip(position.saturating_sub(state.first_kept))
            .map(|kept| kept.chunk.len() as u64)
            .sum::<u64>()
            .saturating_add(prefixed);
        let rest = match &state.end {
            SourceEnd::Open => state.source.as_ref().map(B::size_hint).unwrap_or_default(),
            _ => SizeHint::with_exact(0),
        };
        // Exact only if the caller's body was: otherwise hyper would add a
        // `content-length` that the request never had.
        match rest.exact() {
            Some(rest) if state.exact_size => SizeHint::with_exact(recorded.saturating_add(rest)),
            _ => {
                let mut hint = SizeHint::new();
                hint.set_lower(recorded.saturating_add(rest.lower()));
                hint
            }
        }
    }
}

impl<B> Drop for StreamingBody<B> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        // A cut-off body stays marked so: its attempt's failure is still
        // the layer's doing once the transport has let the body go.
        if let Some(body @ BodyState::Live { .. }) = state.bodies.get_mut(self.id) {
            *body = BodyState::Gone;
        }
        if state.winner == Some(self.id) {
            // The winner is done with the request, sent or not.
            let read = state.read;
            state.free_before(read);
        }
    }
}

impl<B> Drop for Shared<B> {
    fn drop(&mut self) {
        // Return any reservation still held.
        let read = self.read;
        self.free_before(read);
    }
}
