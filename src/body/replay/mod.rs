//! Replayable request bodies: a lazy, capped tee of the caller's body.
//!
//! tonic's request body is a one-shot stream, so to send a request again the
//! layer must keep what it has sent. [`Replay`] wraps the caller's body once
//! per call; every attempt gets a [`ReplayBody`] from it.
//!
//! # What is guaranteed
//!
//! * **Every attempt sends the same request**: the same chunks, in the same
//!   order, then the same trailers. A retry resends exactly what the
//!   original stream produced.
//! * **The committed attempt sends its whole request exactly once, in
//!   order, whatever the timing.** Commit stops recording; it does not cut
//!   the winner's stream. What the winner has still to send stays kept
//!   until it has sent it, and nothing more (see [`Replay::commit`]).
//! * **No attempt waits on another.** Any attempt that has replayed
//!   everything recorded reads the next chunk from the caller's body
//!   itself, so an attempt stalled by HTTP/2 flow control never holds up a
//!   hedge or a retry.
//! * **Capped.** A call keeps at most its policy's replay limit, and all
//!   calls of a layer together at most the layer's cap. A request that
//!   passes either is still sent in full by the attempt that was reading
//!   it, but can no longer be replayed, which A6 treats as a commit.
//! * **The cap counts real memory.** A chunk much smaller than the buffer
//!   it pins is copied; a large one is kept by reference and charged its
//!   buffer. Kept bytes are charged until they are freed.
//! * **Sizes are not invented.** A replayed body claims an exact size only
//!   if the caller's body did (hyper turns one into `content-length`).
//!
//! # Two shapes
//!
//! * **Whole** (`whole.rs`): [`Replay::start`] polls the body once or twice
//!   without waiting. A unary request (tonic encodes it into one chunk that
//!   is ready at once) is then complete: it is kept as that one chunk and
//!   every attempt gets its own reference, so no lock or shared state is
//!   needed.
//! * **Streaming** (`streaming.rs`): anything else is recorded lazily as the
//!   attempts read it; a client stream is never collected up front.

pub mod cap;
mod error;
mod keep;
mod polled;
mod streaming;
mod tonic_body;
mod whole;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

pub use self::error::ReplayError;
use self::polled::Polled;
use self::streaming::{Shared, SharedState, StreamingBody, lock};
use self::whole::{Whole, WholeBody};
use crate::BoxError;
use crate::body::replay::cap::ChannelBufferCap;

/// The caller's request body, shared by the attempts of one call.
///
/// ```
/// # use tonic_retry::replay::Replay;
/// let replay = Replay::new(tonic::body::Body::empty(), 64 * 1024);
/// let first_attempt = replay.body();
/// assert!(replay.is_replayable());
/// replay.commit(first_attempt.id()); // the call committed to this attempt
/// assert!(!replay.is_replayable());
/// # drop(first_attempt);
/// ```
pub struct Replay<B> {
    mode: Mode<B>,
}

enum Mode<B> {
    /// The whole body was read when the call started.
    Whole {
        whole: Whole,
        /// Bodies handed out, for their ids.
        bodies: AtomicUsize,
        /// The first id handed out after the request was released (every
        /// later one is too): those bodies fail instead of sending.
        released_from: AtomicUsize,
    },
    /// The body is recorded as attempts read it.
    Streaming(SharedState<B>),
}

/// Which attempt's body this is, among the bodies of one [`Replay`]: the
/// first body is [`BodyId::FIRST`], and each later one counts up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyId(usize);

impl BodyId {
    /// The first attempt's body.
    pub const FIRST: BodyId = BodyId(0);
}

/// One attempt's view of the request body. It replays what earlier attempts
/// recorded, then continues with the original body where they left off.
pub struct ReplayBody<B> {
    id: BodyId,
    kind: BodyKind<B>,
}

enum BodyKind<B> {
    Whole(WholeBody),
    /// A later attempt of a whole body that can no longer be replayed.
    Released,
    Streaming(StreamingBody<B>),
}

impl<B> Replay<B> {
    /// A replay that holds nothing and cannot replay: what an empty
    /// [`CallKit`](crate::kit::CallKit) holds between calls.
    pub(crate) fn released() -> Self {
        Replay {
            mode: Mode::Whole {
                whole: Whole::released(),
                bodies: AtomicUsize::new(0),
                released_from: AtomicUsize::new(usize::MAX),
            },
        }
    }

    /// Releases what the call held but keeps the cap's handle, so that
    /// [`restart`](Self::restart) for the next call through the same layer
    /// need not clone it. A call that never committed cuts off its
    /// attempts' bodies (nothing will use them).
    #[inline]
    pub(crate) fn release_keeping_cap(&mut self) {
        match &mut self.mode {
            Mode::Whole { whole, .. } => whole.release_mut(),
            Mode::Streaming(_) => *self = Self::released(),
        }
    }

    /// A body for the next attempt, which starts from the beginning.
    pub fn body(&self) -> ReplayBody<B> {
        match &self.mode {
            Mode::Whole {
                whole,
                bodies,
                released_from,
            } => {
                let id = BodyId(bodies.fetch_add(1, Ordering::Relaxed));
                let kind = match whole.body() {
                    Some(body) => BodyKind::Whole(body),
                    None => {
                        released_from.fetch_min(id.0, Ordering::Relaxed);
                        BodyKind::Released
                    }
                };
                ReplayBody { id, kind }
            }
            Mode::Streaming(shared) => {
                let id = lock(shared).add_body();
                ReplayBody {
                    id: BodyId(id),
                    kind: BodyKind::Streaming(StreamingBody::new(shared.clone(), id)),
                }
            }
        }
    }

    /// Whether another attempt could send the whole request again: nothing
    /// was dropped for a limit, the call has not committed and the body has
    /// not failed.
    pub fn is_replayable(&self) -> bool {
        match &self.mode {
            Mode::Whole { whole, .. } => whole.is_replayable(),
            Mode::Streaming(shared) => lock(shared).is_replayable(),
        }
    }

    /// The call committed to attempt `winner`: stop recording and free
    /// what no live attempt still needs.
    ///
    /// The winner's body goes on sending its whole request, from the
    /// recorded chunks it has not sent yet, then from the caller's body;
    /// each kept chunk is freed once the winner has sent it. Every other
    /// attempt's body is cut off: its next poll fails with
    /// [`ReplayError::Released`]. Only the first commit counts (a request
    /// that passed a buffer limit has already committed to the attempt that
    /// was reading it).
    pub fn commit(&self, winner: BodyId) {
        match &self.mode {
            Mode::Whole { whole, .. } => whole.release(),
            Mode::Streaming(shared) => lock(shared).commit(winner.0),
        }
    }

    /// [`commit`](Self::commit) when nothing else can see this replay: a
    /// whole body is released without an atomic read-modify-write.
    #[inline]
    pub(crate) fn commit_mut(&mut self, winner: BodyId) {
        match &mut self.mode {
            Mode::Whole { whole, .. } => whole.release_mut(),
            Mode::Streaming(shared) => lock(shared).commit(winner.0),
        }
    }

    /// Attempt `attempt` is over (it failed or lost): its body stops
    /// sending at its next poll, so that a transport still pumping it lets
    /// go, and it no longer reads the caller's body.
    pub fn abandon(&self, attempt: BodyId) {
        if let Mode::Streaming(shared) = &self.mode {
            lock(shared).abandon(attempt.0);
        }
    }

    /// Whether the call may commit to `attempt`: it has not already
    /// committed to another one (a request that passed a buffer limit
    /// commits to the attempt that was reading it).
    pub fn can_commit(&self, attempt: BodyId) -> bool {
        match &self.mode {
            // A whole body sends the request on its own, unless it was
            // handed out after the request was released.
            Mode::Whole { released_from, .. } => attempt.0 < released_from.load(Ordering::Relaxed),
            Mode::Streaming(shared) => {
                let shared = lock(shared);
                shared.winner().is_none_or(|winner| winner == attempt.0)
                    && !shared.is_cut_off(attempt.0)
            }
        }
    }

    /// Whether `attempt`'s body was cut off because the call went on
    /// without it: whatever that attempt's server answered, it may not have
    /// seen the whole request, so the answer says nothing about it.
    pub fn is_cut_off(&self, attempt: BodyId) -> bool {
        match &self.mode {
            Mode::Whole { released_from, .. } => attempt.0 >= released_from.load(Ordering::Relaxed),
            Mode::Streaming(shared) => lock(shared).is_cut_off(attempt.0),
        }
    }

    /// The bytes currently held for replay, as charged to the cap.
    pub fn buffered_bytes(&self) -> usize {
        match &self.mode {
            Mode::Whole { whole, .. } => whole.buffered_bytes(),
            Mode::Streaming(shared) => lock(shared).buffered_bytes(),
        }
    }
}

impl<B> Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// Wraps a request body, recording up to `limit` bytes for replay as
    /// attempts read it. Nothing is read until an attempt's body is polled.
    pub fn new(body: B, limit: usize) -> Self {
        Self::lazy(body, limit, None)
    }

    /// Like [`new`](Self::new), also reserving every recorded byte from the
    /// layer-wide `cap`; when the cap is full, recording stops and the
    /// request is no longer replayable.
    pub fn with_cap(body: B, limit: usize, cap: Arc<ChannelBufferCap>) -> Self {
        Self::lazy(body, limit, Some(cap))
    }

    fn lazy(body: B, limit: usize, cap: Option<Arc<ChannelBufferCap>>) -> Self {
        let exact_size = body.size_hint().exact().is_some();
        Replay {
            mode: Mode::Streaming(Shared::new(body, limit, cap, exact_size)),
        }
    }

    /// Wraps a request body like [`with_cap`](Self::with_cap) (the cap is
    /// optional here) and returns the first attempt's body with it.
    ///
    /// The body is polled up to twice first, without waiting (a no-op
    /// waker). If it ends within those polls, as a unary request does, it is
    /// kept whole: later attempts share its one chunk and no lock is ever
    /// taken. Otherwise what was read goes first into the first attempt's
    /// body, and the rest is recorded lazily as with [`new`](Self::new).
    ///
    /// ```
    /// # use tonic_retry::replay::Replay;
    /// use http_body_util::{BodyExt, Full};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let body = Full::new(bytes::Bytes::from_static(b"request"));
    /// let (replay, first) = Replay::start(body, 1024, None);
    /// assert_eq!(first.collect().await.unwrap().to_bytes(), "request");
    /// assert!(replay.is_replayable());
    /// assert_eq!(replay.body().collect().await.unwrap().to_bytes(), "request");
    /// # });
    /// ```
    pub fn start(
        body: B,
        limit: usize,
        cap: Option<Arc<ChannelBufferCap>>,
    ) -> (Self, ReplayBody<B>) {
        let mut replay = Self::released();
        let first = replay.fill(body, limit, cap);
        (replay, first)
    }

    /// Like [`start`](Self::start), in place of a replay released by
    /// [`release_keeping_cap`](Self::release_keeping_cap), reusing its
    /// handle of `cap` when it is the same cap.
    #[inline]
    pub(crate) fn restart(
        &mut self,
        body: B,
        limit: usize,
        cap: &Arc<ChannelBufferCap>,
    ) -> ReplayBody<B> {
        // Only a released replay can be refilled; anything it still holds
        // (nothing, in the kit's use) is released first.
        self.release_keeping_cap();
        let kept = match &self.mode {
            Mode::Whole { whole, .. } => whole.cap.as_ref().is_some_and(|c| Arc::ptr_eq(c, cap)),
            Mode::Streaming(_) => false,
        };
        self.fill(body, limit, (!kept).then(|| cap.clone()))
    }

    /// Fills a released replay with `body`; `cap`, when given, replaces the
    /// kept handle.
    #[inline]
    fn fill(&mut self, body: B, limit: usize, cap: Option<Arc<ChannelBufferCap>>) -> ReplayBody<B> {
        let Mode::Whole {
            whole,
            bodies,
            released_from,
        } = &mut self.mode
        else {
            unreachable!("only a released replay is filled")
        };
        *bodies.get_mut() = 1;
        *released_from.get_mut() = usize::MAX;
        match Polled::read(body) {
            Polled::Whole {
                data,
                trailers,
                exact_size,
            } => ReplayBody {
                id: BodyId::FIRST,
                kind: BodyKind::Whole(whole.refill(data, trailers, limit, cap, exact_size)),
            },
            Polled::Streaming {
                body,
                prefetched,
                exact_size,
            } => {
                let cap = cap.or_else(|| whole.cap.take());
                let shared = Shared::new(body, limit, cap, exact_size);
                let first = {
                    let mut state = lock(&shared);
                    let id = state.add_body();
                    let mut first = StreamingBody::new(shared.clone(), id);
                    for polled in prefetched {
                        if let Some(frame) = state.take_from_source(id, Some(polled)) {
                            first.push_prefix(frame);
                        }
                    }
                    first
                };
                self.mode = Mode::Streaming(shared);
                ReplayBody {
                    id: BodyId::FIRST,
                    kind: BodyKind::Streaming(first),
                }
            }
        }
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        match &self.mode {
            // Each body holds its own reference: only the reservation goes.
            Mode::Whole { whole, .. } => whole.release(),
            // The call is over. A committed winner goes on sending; any
            // other attempt is useless now.
            Mode::Streaming(shared) => {
                let mut shared = lock(shared);
                if shared.winner().is_none() {
                    shared.abandon_all();
                }
            }
        }
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay")
            .field("buffered_bytes", &self.buffered_bytes())
            .field("replayable", &self.is_replayable())
            .finish()
    }
}

impl<B> ReplayBody<B> {
    /// Which attempt's body this is; pass it to [`Replay::commit`] and
    /// [`Replay::abandon`].
    pub fn id(&self) -> BodyId {
        self.id
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.kind {
            BodyKind::Whole(body) => Poll::Ready(body.next_frame().map(Ok)),
            BodyKind::Released => {
                self.kind = BodyKind::Whole(WholeBody {
                    data: None,
                    trailers: None,
                    exact_size: false,
                });
                Poll::Ready(Some(Err(ReplayError::Released.into())))
            }
            BodyKind::Streaming(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Whole(body) => body.is_end_stream(),
            BodyKind::Released => false,
            BodyKind::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Whole(body) => body.size_hint(),
            BodyKind::Released => SizeHint::default(),
            BodyKind::Streaming(body) => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests;
