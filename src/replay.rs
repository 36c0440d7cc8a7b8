//! Replayable request bodies: a lazy, zero-copy, capped tee.
//!
//! tonic's request body is a one-shot stream, so to send a request again the
//! layer must keep what it has sent. [`Replay`] wraps the caller's body once
//! per call; every attempt gets a [`ReplayBody`] from it.
//!
//! * **Whole bodies first.** [`Replay::start`] polls the body once or twice
//!   without waiting. A unary request (tonic encodes it into one chunk that
//!   is ready at once) is then complete: it is kept as that one `Bytes`,
//!   every attempt gets a clone, and no lock or shared state is needed. The
//!   attempt's body also reports its end right after the chunk, so hyper
//!   sends it as a single DATA frame carrying END_STREAM.
//! * **Lazy otherwise.** A body that is not complete at once (a client
//!   stream) is read only as the inner service polls an attempt's body.
//!   Chunks are recorded as they pass through, so a streaming request is
//!   never collected up front and a retry resends exactly what the original
//!   stream produced, in the same chunks.
//! * **Zero-copy.** Chunks are `Bytes`; recording one is a reference-count
//!   increment, never a copy of the data.
//! * **Capped.** Once the recorded bytes would pass the limit, recording
//!   stops and the buffer is released. The request is still sent in full, but
//!   it can no longer be replayed, so the call is never retried (A6 treats
//!   this as a commit). The layer-wide cap is charged what keeping really
//!   holds: a whole body's chunk that nothing else refers to is charged the
//!   size of its buffer (tonic encodes each message into the front of an
//!   8 KiB one), so the cap bounds real memory.
//! * **Hand-over.** Only one attempt at a time reads the original body (it
//!   holds the *source*). A later attempt first replays the recorded chunks;
//!   once it has caught up it takes the source over, which happens when the
//!   holder is dropped (hyper drops a request body when its stream ends).
//!   Until then it waits, so overlapping attempts never panic, lose or
//!   reorder data.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::BoxError;
use crate::buffer_cap::ChannelBufferCap;

/// The caller's request body, shared by the attempts of one call.
///
/// ```
/// # use tonic_retry::replay::Replay;
/// let replay = Replay::new(tonic::body::Body::empty(), 64 * 1024);
/// let first_attempt = replay.body();
/// assert!(replay.is_replayable());
/// replay.commit(); // the call committed: stop recording, free the buffer
/// assert!(!replay.is_replayable());
/// # drop(first_attempt);
/// ```
pub struct Replay<B> {
    mode: Mode<B>,
}

enum Mode<B> {
    /// The whole body was read when the call started.
    Whole(Whole),
    /// The body is recorded as attempts read it.
    Streaming(Arc<Mutex<Shared<B>>>),
}

/// A body that was complete when the call started: at most one data chunk
/// and trailers.
struct Whole {
    /// Kept only while the request is replayable.
    data: Option<Bytes>,
    trailers: Option<Box<HeaderMap>>,
    /// Cleared (once) by a commit, which also returns the reservation.
    replayable: AtomicBool,
    /// What the data holds of the layer-wide cap.
    reserved: usize,
    cap: Option<Arc<ChannelBufferCap>>,
    exact_size: bool,
}

impl Whole {
    fn release(&self) {
        // A plain load first: every call commits, then drops its replay,
        // so the second release is the common case and needs no atomic
        // read-modify-write.
        if self.replayable.load(Ordering::Acquire)
            && self.replayable.swap(false, Ordering::AcqRel)
            && let Some(cap) = &self.cap
        {
            cap.release(self.reserved);
        }
    }
}

/// One attempt's view of the request body. It replays what earlier attempts
/// recorded, then continues with the original body where they left off.
pub struct ReplayBody<B> {
    kind: BodyKind<B>,
}

enum BodyKind<B> {
    /// A whole body: the chunk, then the trailers, then the end.
    Whole {
        data: Option<Bytes>,
        trailers: Option<Box<HeaderMap>>,
        exact_size: bool,
    },
    /// A later attempt of a whole body that can no longer be replayed.
    Released,
    Streaming(StreamingBody<B>),
}

struct StreamingBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    /// The original body, while this attempt is the one reading it.
    source: Option<B>,
    /// How many of the source's chunks this attempt has yielded (or holds in
    /// `prefix`).
    position: usize,
    trailers_sent: bool,
    /// Frames read from the source before the first attempt was sent, not
    /// yet yielded (first attempt only).
    prefix: VecDeque<Result<Frame<Bytes>, BoxError>>,
}

/// Why a [`ReplayBody`] could not continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The recorded chunks this attempt still needed were released, because
    /// the call committed or the request passed the replay limit.
    Released,
    /// The original body failed while another attempt was reading it.
    SourceFailed,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayError::Released => "request replay buffer was released",
            ReplayError::SourceFailed => "the request body failed in an earlier attempt",
        })
    }
}

impl std::error::Error for ReplayError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recording {
    /// Every chunk read so far is in `chunks`.
    On,
    /// The request passed the limit; chunks were released.
    Overflowed,
    /// The call committed; chunks were released.
    Committed,
}

struct Shared<B> {
    /// The original body, parked while no attempt is reading it.
    source: Option<B>,
    /// The chunks read from the source, while recording is on.
    chunks: Chunks,
    /// How many chunks were read from the source, recorded or not.
    chunks_read: usize,
    buffered_bytes: usize,
    limit: usize,
    recording: Recording,
    /// The source reached its end; `trailers` holds its trailers, if any.
    source_done: bool,
    trailers: Option<HeaderMap>,
    source_failed: bool,
    /// Attempts waiting for the source to advance or be handed back.
    waiters: Vec<Waker>,
    /// The layer-wide cap that `buffered_bytes` is reserved from, if any.
    cap: Option<Arc<ChannelBufferCap>>,
}

impl<B> Shared<B> {
    fn new(source: Option<B>, limit: usize, cap: Option<Arc<ChannelBufferCap>>) -> Self {
        Shared {
            source,
            chunks: Chunks::default(),
            chunks_read: 0,
            buffered_bytes: 0,
            limit,
            recording: Recording::On,
            source_done: false,
            trailers: None,
            source_failed: false,
            waiters: Vec::new(),
            cap,
        }
    }

    fn record(&mut self, chunk: &Bytes) {
        self.chunks_read += 1;
        if self.recording != Recording::On {
            return;
        }
        if reserve(
            chunk.len(),
            self.buffered_bytes,
            self.limit,
            self.cap.as_deref(),
        ) {
            self.buffered_bytes += chunk.len();
            self.chunks.push(chunk.clone());
        } else {
            self.stop_recording(Recording::Overflowed);
        }
    }

    fn stop_recording(&mut self, why: Recording) {
        if self.recording == Recording::On {
            self.recording = why;
            // Free the memory (and the layer-wide reservation) now: nothing
            // will replay it.
            self.chunks = Chunks::default();
            if let Some(cap) = &self.cap {
                cap.release(self.buffered_bytes);
            }
            self.buffered_bytes = 0;
        }
    }

    fn wake_waiters(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    fn wait(&mut self, cx: &Context<'_>) {
        if !self.waiters.iter().any(|w| w.will_wake(cx.waker())) {
            self.waiters.push(cx.waker().clone());
        }
    }
}

/// `chunk`, and the bytes that keeping it holds alive.
///
/// A chunk is kept, never copied: `Bytes` are reference counted. But a
/// chunk may be a slice of a larger buffer that it keeps alive whole: tonic
/// encodes each message into the front of a fresh 8 KiB buffer, so keeping
/// a typical small request holds many times its size until the call
/// commits. When nothing else refers to the chunk (the caller's body, read
/// to its end, has been dropped), its buffer's size can be asked, without
/// a copy or an allocation, and that is what the cap is charged, so that
/// the cap bounds the memory really held. A static or still-shared chunk
/// is charged its length.
#[inline]
fn with_footprint(chunk: Bytes) -> (Bytes, usize) {
    // Converted at once rather than asked `is_unique` first: a generated
    // client's chunk is unique here, and asking twice cost it ~10 ns. A
    // static or shared chunk pays instead: its failed conversion hands it
    // back through memory.
    match chunk.try_into_mut() {
        Ok(unique) => {
            let held = unique.capacity().max(unique.len());
            (unique.freeze(), held)
        }
        Err(shared) => {
            let len = shared.len();
            (shared, len)
        }
    }
}

/// Whether `len` more bytes may be kept: within the call's `limit` (with
/// `held` already kept) and reserved from the layer-wide `cap`.
fn reserve(len: usize, held: usize, limit: usize, cap: Option<&ChannelBufferCap>) -> bool {
    held.checked_add(len).is_some_and(|total| total <= limit)
        && cap.is_none_or(|cap| cap.try_reserve(len))
}

/// A copy of request trailers (rare in gRPC), out of line so a whole
/// body's common case keeps its code small.
#[cold]
#[inline(never)]
fn boxed_copy(trailers: &HeaderMap) -> Box<HeaderMap> {
    Box::new(trailers.clone())
}

/// Recorded chunks. The first is kept inline: recording one chunk
/// allocates nothing.
#[derive(Default)]
struct Chunks {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        if self.first.is_none() {
            self.first = Some(chunk);
        } else {
            self.rest.push(chunk);
        }
    }

    fn get(&self, index: usize) -> Option<&Bytes> {
        match index {
            0 => self.first.as_ref(),
            n => self.rest.get(n - 1),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.first.iter().chain(&self.rest)
    }
}

fn lock<B>(shared: &Mutex<Shared<B>>) -> MutexGuard<'_, Shared<B>> {
    // No code panics while holding the lock; if some future change does,
    // the state is still consistent enough to finish the call.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<B> Drop for Shared<B> {
    fn drop(&mut self) {
        // Return any reservation still held (e.g. a call dropped mid-flight).
        self.stop_recording(Recording::Committed);
    }
}

impl<B> Replay<B> {
    /// A replay that holds nothing and cannot replay: what an empty
    /// [`CallKit`](crate::kit::CallKit) holds between calls.
    pub(crate) fn released() -> Self {
        Replay {
            mode: Mode::Whole(Whole {
                data: None,
                trailers: None,
                replayable: AtomicBool::new(false),
                reserved: 0,
                cap: None,
                exact_size: true,
            }),
        }
    }

    /// Releases what the call held (its bytes and its reservation, with
    /// no atomic read-modify-write: nothing else can see this replay any
    /// more) but keeps the cap's handle, so that [`restart`](Self::restart)
    /// for the next call through the same layer need not clone it.
    #[inline]
    pub(crate) fn release_keeping_cap(&mut self) {
        match &mut self.mode {
            Mode::Whole(whole) => {
                if std::mem::take(whole.replayable.get_mut())
                    && let Some(cap) = &whole.cap
                {
                    cap.release(whole.reserved);
                }
                whole.data = None;
                whole.trailers = None;
                whole.reserved = 0;
            }
            Mode::Streaming(_) => *self = Self::released(),
        }
    }

    /// Wraps a request body, recording up to `limit` bytes for replay as
    /// attempts read it. Nothing is read until an attempt's body is polled.
    pub fn new(body: B, limit: usize) -> Self {
        Self::streaming(Shared::new(Some(body), limit, None))
    }

    /// Like [`new`](Self::new), also reserving every recorded byte from the
    /// layer-wide `cap`; when the cap is full, recording stops and the
    /// request is no longer replayable.
    pub fn with_cap(body: B, limit: usize, cap: Arc<ChannelBufferCap>) -> Self {
        Self::streaming(Shared::new(Some(body), limit, Some(cap)))
    }

    fn streaming(shared: Shared<B>) -> Self {
        Replay {
            mode: Mode::Streaming(Arc::new(Mutex::new(shared))),
        }
    }

    /// A body for the next attempt, which starts from the beginning.
    pub fn body(&self) -> ReplayBody<B> {
        let kind = match &self.mode {
            Mode::Whole(whole) if whole.replayable.load(Ordering::Acquire) => BodyKind::Whole {
                data: whole.data.clone(),
                trailers: whole.trailers.clone(),
                exact_size: whole.exact_size,
            },
            Mode::Whole(_) => BodyKind::Released,
            Mode::Streaming(shared) => BodyKind::Streaming(StreamingBody {
                shared: shared.clone(),
                source: None,
                position: 0,
                trailers_sent: false,
                prefix: VecDeque::new(),
            }),
        };
        ReplayBody { kind }
    }

    /// Whether another attempt could send the whole request again: nothing
    /// was dropped for the limit, the call has not committed and the body has
    /// not failed.
    pub fn is_replayable(&self) -> bool {
        match &self.mode {
            Mode::Whole(whole) => whole.replayable.load(Ordering::Acquire),
            Mode::Streaming(shared) => {
                let shared = lock(shared);
                shared.recording == Recording::On && !shared.source_failed
            }
        }
    }

    /// The call committed: stop recording and release the buffer.
    pub fn commit(&self) {
        match &self.mode {
            Mode::Whole(whole) => whole.release(),
            Mode::Streaming(shared) => lock(shared).stop_recording(Recording::Committed),
        }
    }

    /// The bytes currently held for replay.
    pub fn buffered_bytes(&self) -> usize {
        match &self.mode {
            Mode::Whole(whole) if whole.replayable.load(Ordering::Acquire) => whole.reserved,
            Mode::Whole(_) => 0,
            Mode::Streaming(shared) => lock(shared).buffered_bytes,
        }
    }
}

impl<B> Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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
    #[inline]
    pub fn start(
        body: B,
        limit: usize,
        cap: Option<Arc<ChannelBufferCap>>,
    ) -> (Self, ReplayBody<B>) {
        match Polled::read(body) {
            Polled::Whole {
                data,
                trailers,
                exact_size,
            } => {
                let mut replay = Self::released();
                let first = replay.refill_whole(data, trailers, limit, cap, exact_size);
                (replay, first)
            }
            Polled::Streaming { body, prefetched } => {
                Self::start_streaming(body, limit, cap, prefetched)
            }
        }
    }

    /// Like [`start`](Self::start), in place of a replay released by
    /// [`release_keeping_cap`](Self::release_keeping_cap), reusing its
    /// handle of `cap` when it is the same cap. A whole body is written
    /// into the fields where they lie, not built and moved in.
    #[inline]
    pub(crate) fn restart(
        &mut self,
        body: B,
        limit: usize,
        cap: &Arc<ChannelBufferCap>,
    ) -> ReplayBody<B> {
        // Only a released replay can be refilled; anything else it still
        // holds (nothing, in the kit's use) is released first.
        self.release_keeping_cap();
        // `None`: the kept handle is of this cap.
        let cap = match &self.mode {
            Mode::Whole(whole)
                if whole
                    .cap
                    .as_ref()
                    .is_some_and(|kept| Arc::ptr_eq(kept, cap)) =>
            {
                None
            }
            _ => Some(cap.clone()),
        };
        match Polled::read(body) {
            Polled::Whole {
                data,
                trailers,
                exact_size,
            } => self.refill_whole(data, trailers, limit, cap, exact_size),
            Polled::Streaming { body, prefetched } => {
                let cap = cap.or_else(|| self.take_cap());
                let (replay, first) = Self::start_streaming(body, limit, cap, prefetched);
                *self = replay;
                first
            }
        }
    }

    /// The kept handle of the cap, taken out of a released replay.
    fn take_cap(&mut self) -> Option<Arc<ChannelBufferCap>> {
        match &mut self.mode {
            Mode::Whole(whole) => whole.cap.take(),
            Mode::Streaming(_) => None,
        }
    }

    /// Fills a released replay with a whole body (`cap` replaces the kept
    /// handle when given) and returns the first attempt's body.
    #[inline]
    fn refill_whole(
        &mut self,
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
        limit: usize,
        cap: Option<Arc<ChannelBufferCap>>,
        exact_size: bool,
    ) -> ReplayBody<B> {
        if !matches!(self.mode, Mode::Whole(_)) {
            *self = Self::released();
        }
        let Mode::Whole(whole) = &mut self.mode else {
            unreachable!("just made whole")
        };
        if cap.is_some() {
            whole.cap = cap;
        }
        let len = data.as_ref().map_or(0, Bytes::len);
        let (data, held) = match data {
            Some(chunk) => {
                let (chunk, held) = with_footprint(chunk);
                (Some(chunk), held)
            }
            None => (None, 0),
        };
        // Cloned before the reservation: its atomic operation lets the
        // clone's stores land first, so that moving the clone into place
        // does not wait on them (a store-forwarding stall otherwise).
        let kept = data.clone();
        // The call's limit is on the request's size; the layer-wide cap is
        // charged the memory keeping it holds.
        let replayable =
            len <= limit && whole.cap.as_deref().is_none_or(|cap| cap.try_reserve(held));
        let trailers = trailers.map(Box::new);
        debug_assert!(whole.data.is_none(), "refilled while full");
        // Too large to keep (or over the cap): the clone is dropped here,
        // the first attempt's body holds the only reference, and the
        // memory goes as soon as it is sent.
        whole.data = if replayable { kept } else { None };
        let first = ReplayBody {
            kind: BodyKind::Whole {
                data,
                trailers: trailers.as_deref().map(boxed_copy),
                exact_size,
            },
        };
        whole.trailers = trailers;
        *whole.replayable.get_mut() = replayable;
        whole.reserved = held;
        whole.exact_size = exact_size;
        first
    }

    /// A streaming replay whose first attempt starts with the frames
    /// `prefetched` from the source, recorded as if it had read them.
    fn start_streaming(
        body: B,
        limit: usize,
        cap: Option<Arc<ChannelBufferCap>>,
        prefetched: Vec<Result<Frame<Bytes>, B::Error>>,
    ) -> (Self, ReplayBody<B>) {
        let replay = Self::streaming(Shared::new(None, limit, cap));
        let Mode::Streaming(shared) = &replay.mode else {
            unreachable!("just built as streaming")
        };
        let mut first = StreamingBody {
            shared: shared.clone(),
            source: Some(body),
            position: 0,
            trailers_sent: false,
            prefix: VecDeque::with_capacity(prefetched.len()),
        };
        for polled in prefetched {
            if let Some(frame) = first.record_from_source(Some(polled)) {
                first.prefix.push_back(frame);
            }
        }
        let first = ReplayBody {
            kind: BodyKind::Streaming(first),
        };
        (replay, first)
    }
}

/// A request body after the polls [`Replay::start`] makes without waiting.
enum Polled<B: Body> {
    /// It ended: at most one chunk and trailers.
    Whole {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
        exact_size: bool,
    },
    /// It goes on (or failed, or sent an unknown frame): what was read
    /// comes first.
    Streaming {
        body: B,
        prefetched: Vec<Result<Frame<Bytes>, B::Error>>,
    },
}

impl<B> Polled<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    /// Polls `body` up to twice, with a no-op waker.
    #[inline]
    fn read(mut body: B) -> Self {
        let exact_size = body.size_hint().exact().is_some();
        let whole = |data, trailers| Polled::Whole {
            data,
            trailers,
            exact_size,
        };
        let mut cx = Context::from_waker(Waker::noop());
        let first = match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Pending => Vec::new(),
            Poll::Ready(None) => return whole(None, None),
            Poll::Ready(Some(Err(error))) => vec![Err(error)],
            Poll::Ready(Some(Ok(frame))) => {
                match Pin::new(&mut body).poll_frame(&mut cx) {
                    Poll::Ready(None) => match frame.into_data() {
                        Ok(data) => return whole(Some(data), None),
                        Err(frame) => match frame.into_trailers() {
                            Ok(trailers) => return whole(None, Some(trailers)),
                            // No other kind of frame exists today; keep it
                            // as is.
                            Err(frame) => vec![Ok(frame)],
                        },
                    },
                    Poll::Pending => vec![Ok(frame)],
                    Poll::Ready(Some(second)) => vec![Ok(frame), second],
                }
            }
        };
        Polled::Streaming {
            body,
            prefetched: first,
        }
    }
}

impl<B> Drop for Replay<B> {
    fn drop(&mut self) {
        // The call is over: no attempt will be added, so release the buffer
        // even if the last attempt's body is still held by the transport.
        self.commit();
    }
}

impl<B> fmt::Debug for Replay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mode {
            Mode::Whole(whole) => f
                .debug_struct("Replay")
                .field("whole_bytes", &whole.reserved)
                .field("replayable", &whole.replayable.load(Ordering::Acquire))
                .finish(),
            Mode::Streaming(shared) => {
                let shared = lock(shared);
                f.debug_struct("Replay")
                    .field("buffered_bytes", &shared.buffered_bytes)
                    .field("chunks_read", &shared.chunks_read)
                    .field("recording", &shared.recording)
                    .finish()
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BodyKind::Whole { data, .. } => f
                .debug_struct("ReplayBody")
                .field("whole_bytes_left", &data.as_ref().map_or(0, Bytes::len))
                .finish(),
            BodyKind::Released => f.debug_struct("ReplayBody").finish_non_exhaustive(),
            BodyKind::Streaming(body) => f
                .debug_struct("ReplayBody")
                .field("position", &body.position)
                .field("holds_source", &body.source.is_some())
                .finish(),
        }
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
            BodyKind::Whole { data, trailers, .. } => {
                Poll::Ready(next_whole_frame(data, trailers).map(Ok))
            }
            BodyKind::Released => {
                self.kind = BodyKind::Whole {
                    data: None,
                    trailers: None,
                    exact_size: false,
                };
                Poll::Ready(Some(Err(ReplayError::Released.into())))
            }
            BodyKind::Streaming(body) => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Whole { data, trailers, .. } => data.is_none() && trailers.is_none(),
            BodyKind::Released => false,
            BodyKind::Streaming(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Whole {
                data, exact_size, ..
            } => {
                let len = data.as_ref().map_or(0, |d| d.len() as u64);
                // Claim an exact size only if the caller's body did: hyper
                // turns an exact size into a content-length header, and the
                // request should go out as it would without the layer.
                if *exact_size {
                    SizeHint::with_exact(len)
                } else {
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                }
            }
            BodyKind::Released => SizeHint::default(),
            BodyKind::Streaming(body) => body.size_hint(),
        }
    }
}

/// The next frame of a whole body: its chunk, then its trailers.
#[inline]
fn next_whole_frame(
    data: &mut Option<Bytes>,
    trailers: &mut Option<Box<HeaderMap>>,
) -> Option<Frame<Bytes>> {
    match data.take() {
        Some(data) => Some(Frame::data(data)),
        None => trailers.take().map(|t| Frame::trailers(*t)),
    }
}

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
        if let BodyKind::Whole { data, trailers, .. } = &mut self.0.kind {
            return Poll::Ready(next_whole_frame(data, trailers).map(Ok));
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

impl<B> StreamingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(frame) = self.prefix.pop_front() {
            return Poll::Ready(Some(frame));
        }
        loop {
            if let Some(source) = self.source.as_mut() {
                let polled = std::task::ready!(Pin::new(source).poll_frame(cx));
                return Poll::Ready(self.record_from_source(polled));
            }
            let mut shared = lock(&self.shared);
            if self.position < shared.chunks_read {
                // Behind the source: replay a recorded chunk.
                if shared.recording != Recording::On {
                    return Poll::Ready(Some(Err(ReplayError::Released.into())));
                }
                let Some(chunk) = shared.chunks.get(self.position).cloned() else {
                    return Poll::Ready(Some(Err(ReplayError::Released.into())));
                };
                self.position += 1;
                return Poll::Ready(Some(Ok(Frame::data(chunk))));
            }
            if shared.source_done {
                if !self.trailers_sent {
                    self.trailers_sent = true;
                    if let Some(trailers) = shared.trailers.clone() {
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                }
                return Poll::Ready(None);
            }
            if shared.source_failed {
                return Poll::Ready(Some(Err(ReplayError::SourceFailed.into())));
            }
            match shared.source.take() {
                // Caught up and the source is free: read it from here on.
                Some(source) => self.source = Some(source),
                None => {
                    shared.wait(cx);
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if !self.prefix.is_empty() {
            return false;
        }
        if let Some(source) = &self.source {
            return source.is_end_stream();
        }
        let shared = lock(&self.shared);
        if self.position < shared.chunks_read {
            return false;
        }
        if shared.source_done {
            return self.trailers_sent || shared.trailers.is_none();
        }
        shared.source.as_ref().is_some_and(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if !self.prefix.is_empty() {
            // Frames in hand plus an unknown rest; nothing exact to claim.
            let mut hint = SizeHint::new();
            let held: usize = self
                .prefix
                .iter()
                .filter_map(|f| f.as_ref().ok()?.data_ref().map(Bytes::len))
                .sum();
            hint.set_lower(held as u64);
            return hint;
        }
        if let Some(source) = &self.source {
            return source.size_hint();
        }
        let shared = lock(&self.shared);
        if shared.recording != Recording::On {
            return SizeHint::default();
        }
        let recorded: u64 = shared
            .chunks
            .iter()
            .skip(self.position)
            .map(|c| c.remaining() as u64)
            .sum();
        if shared.source_done {
            return SizeHint::with_exact(recorded);
        }
        let mut hint = shared
            .source
            .as_ref()
            .map(|s| s.size_hint())
            .unwrap_or_default();
        hint.set_lower(hint.lower().saturating_add(recorded));
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper.saturating_add(recorded));
        }
        hint
    }
}

impl<B> StreamingBody<B>
where
    B::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
{
    /// Records what the original body (which this attempt holds) yielded,
    /// for later attempts, and wakes any attempt waiting for it.
    fn record_from_source(
        &mut self,
        polled: Option<Result<Frame<Bytes>, B::Error>>,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        let mut shared = lock(&self.shared);
        let result = match polled {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    shared.record(chunk);
                    self.position += 1;
                } else if let Some(trailers) = frame.trailers_ref() {
                    shared.trailers = Some(trailers.clone());
                    self.trailers_sent = true;
                }
                Some(Ok(frame))
            }
            Some(Err(error)) => {
                shared.source_failed = true;
                self.source = None;
                Some(Err(error.into()))
            }
            None => {
                shared.source_done = true;
                self.source = None;
                None
            }
        };
        shared.wake_waiters();
        result
    }
}

impl<B> Drop for StreamingBody<B> {
    fn drop(&mut self) {
        if let Some(source) = self.source.take() {
            // Hand the rest of the original body to the next attempt.
            let mut shared = lock(&self.shared);
            shared.source = Some(source);
            shared.wake_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::task::Wake;

    use http_body_util::BodyExt;

    use super::*;

    /// A body that yields scripted frames, optionally returning Pending once
    /// before each frame, and optionally failing at the end.
    #[derive(Default)]
    struct Scripted {
        frames: VecDeque<Frame<Bytes>>,
        pending_first: bool,
        fail_at_end: bool,
    }

    impl Scripted {
        fn data(chunks: &[&'static str]) -> Self {
            Scripted {
                frames: chunks
                    .iter()
                    .map(|c| Frame::data(Bytes::from(*c)))
                    .collect(),
                ..Default::default()
            }
        }
        fn with_trailers(mut self) -> Self {
            let mut t = HeaderMap::new();
            t.insert("x-checksum", "abc".parse().unwrap());
            self.frames.push_back(Frame::trailers(t));
            self
        }
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.pending_first {
                self.pending_first = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.frames.pop_front() {
                Some(f) => Poll::Ready(Some(Ok(f))),
                None if self.fail_at_end => {
                    self.fail_at_end = false;
                    Poll::Ready(Some(Err(std::io::Error::other("source broke"))))
                }
                None => Poll::Ready(None),
            }
        }
        fn is_end_stream(&self) -> bool {
            self.frames.is_empty() && !self.fail_at_end
        }
    }

    /// After a commit: not replayable, and a new attempt's body fails with
    /// `Released` instead of sending a partial request.
    async fn assert_released<B>(replay: &Replay<B>)
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<BoxError>,
    {
        assert!(!replay.is_replayable());
        let err = drain(replay.body()).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::Released)
        );
    }

    /// Everything a body yields: data chunks and trailers.
    async fn drain<B: Body<Data = Bytes> + Unpin>(
        mut body: B,
    ) -> Result<(Vec<Bytes>, Option<HeaderMap>), B::Error> {
        let mut chunks = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            match frame.into_data() {
                Ok(d) => chunks.push(d),
                Err(f) => trailers = f.into_trailers().ok(),
            }
        }
        Ok((chunks, trailers))
    }

    fn poll_once<B: Body<Data = Bytes> + Unpin>(
        body: &mut B,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        struct Noop;
        impl Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        let waker = Arc::new(Noop).into();
        Pin::new(body).poll_frame(&mut Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn replay_keeps_chunk_boundaries_and_shares_the_bytes() {
        let replay = Replay::new(Scripted::data(&["ab", "", "cde", "f"]), 1024);
        let (first, _) = drain(replay.body()).await.unwrap();
        let (second, _) = drain(replay.body()).await.unwrap();
        assert_eq!(first, vec!["ab", "", "cde", "f"]);
        assert_eq!(second, first);
        for (a, b) in first.iter().zip(&second) {
            assert_eq!(a.as_ptr(), b.as_ptr(), "replay must not copy chunk data");
        }
        assert_eq!(replay.buffered_bytes(), 6);
        assert!(replay.is_replayable());
    }

    #[tokio::test]
    async fn replay_includes_trailers() {
        let replay = Replay::new(Scripted::data(&["x"]).with_trailers(), 1024);
        let (_, t1) = drain(replay.body()).await.unwrap();
        let (chunks, t2) = drain(replay.body()).await.unwrap();
        assert_eq!(chunks, vec!["x"]);
        assert_eq!(t1.unwrap().get("x-checksum").unwrap(), "abc");
        assert_eq!(t2.unwrap().get("x-checksum").unwrap(), "abc");
    }

    #[tokio::test]
    async fn empty_body_is_end_stream_and_replays_as_empty() {
        let replay = Replay::new(Scripted::default(), 1024);
        let first = replay.body();
        assert!(first.is_end_stream());
        assert!(drain(first).await.unwrap().0.is_empty());
        let second = replay.body();
        assert!(second.is_end_stream());
        assert!(drain(second).await.unwrap().0.is_empty());
        assert!(replay.is_replayable());
    }

    #[tokio::test]
    async fn over_the_limit_is_still_sent_but_not_replayable() {
        let replay = Replay::new(Scripted::data(&["1234", "5678", "9"]), 8);
        let (sent, _) = drain(replay.body()).await.unwrap();
        assert_eq!(sent, vec!["1234", "5678", "9"], "everything is still sent");
        assert!(!replay.is_replayable());
        assert_eq!(replay.buffered_bytes(), 0, "the buffer is released");
    }

    #[tokio::test]
    async fn exactly_at_the_limit_is_replayable() {
        let replay = Replay::new(Scripted::data(&["1234", "5678"]), 8);
        drain(replay.body()).await.unwrap();
        assert!(replay.is_replayable());
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["1234", "5678"]);
    }

    #[tokio::test]
    async fn zero_limit_replays_only_empty_requests() {
        let replay = Replay::new(Scripted::data(&["", ""]), 0);
        drain(replay.body()).await.unwrap();
        assert!(replay.is_replayable());
        let replay = Replay::new(Scripted::data(&["a"]), 0);
        drain(replay.body()).await.unwrap();
        assert!(!replay.is_replayable());
    }

    #[tokio::test]
    async fn a_dropped_partial_read_hands_the_rest_to_the_next_attempt() {
        // The response arrived after one chunk was sent: the retry must send
        // that chunk again, then the rest of the stream, once each.
        let replay = Replay::new(Scripted::data(&["a", "b", "c"]), 1024);
        let mut first = replay.body();
        assert!(matches!(poll_once(&mut first), Poll::Ready(Some(Ok(_)))));
        drop(first);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a", "b", "c"]);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a", "b", "c"]);
    }

    /// Polls once; the data chunk yielded, if any.
    fn next_data<B: Body<Data = Bytes> + Unpin>(body: &mut B) -> Poll<Option<Bytes>>
    where
        B::Error: fmt::Debug,
    {
        poll_once(body).map(|f| f.map(|f| f.unwrap().into_data().unwrap()))
    }

    #[tokio::test]
    async fn a_later_attempt_waits_for_the_holder_then_takes_over() {
        let replay = Replay::new(Scripted::data(&["a", "b", "c"]), 1024);
        let mut first = replay.body();
        assert_eq!(next_data(&mut first), Poll::Ready(Some(Bytes::from("a"))));
        let mut second = replay.body();
        assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("a"))));
        // Caught up, but the first attempt still holds the source: wait.
        assert_eq!(next_data(&mut second), Poll::Pending);
        // The holder reads on; the waiter replays what it recorded.
        assert_eq!(next_data(&mut first), Poll::Ready(Some(Bytes::from("b"))));
        assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("b"))));
        // The holder goes away; the waiter takes the source over.
        drop(first);
        assert_eq!(drain(second).await.unwrap().0, vec!["c"]);
    }

    #[tokio::test]
    async fn dropping_mid_replay_leaves_the_buffer_intact() {
        let replay = Replay::new(Scripted::data(&["a", "b"]), 1024);
        drain(replay.body()).await.unwrap();
        let mut second = replay.body();
        assert!(matches!(poll_once(&mut second), Poll::Ready(Some(Ok(_)))));
        drop(second);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn pending_sources_are_polled_again() {
        let mut body = Scripted::data(&["a"]);
        body.pending_first = true;
        let replay = Replay::new(body, 1024);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a"]);
    }

    #[tokio::test]
    async fn commit_releases_the_buffer() {
        let replay = Replay::new(Scripted::data(&["abc"]), 1024);
        drain(replay.body()).await.unwrap();
        assert_eq!(replay.buffered_bytes(), 3);
        replay.commit();
        assert_eq!(replay.buffered_bytes(), 0);
        assert_released(&replay).await;
    }

    #[tokio::test]
    async fn a_failed_source_is_not_replayable() {
        let mut body = Scripted::data(&["a"]);
        body.fail_at_end = true;
        let replay = Replay::new(body, 1024);
        assert!(drain(replay.body()).await.is_err());
        assert!(!replay.is_replayable());
        let err = drain(replay.body()).await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<ReplayError>(),
            Some(&ReplayError::SourceFailed)
        );
    }

    #[tokio::test]
    async fn the_channel_cap_stops_recording_and_is_released_on_every_path() {
        let cap = Arc::new(ChannelBufferCap::new(10));
        let a = Replay::with_cap(Scripted::data(&["12345", "678"]), 1024, cap.clone());
        drain(a.body()).await.unwrap();
        assert_eq!(cap.used(), 8);
        // A second call finds only 2 bytes left: it is sent, not replayable.
        let b = Replay::with_cap(Scripted::data(&["1", "234"]), 1024, cap.clone());
        let (sent, _) = drain(b.body()).await.unwrap();
        assert_eq!(sent, vec!["1", "234"]);
        assert!(!b.is_replayable());
        assert_eq!(cap.used(), 8, "b released what it had reserved");
        a.commit();
        assert_eq!(cap.used(), 0);
        // Dropping a call mid-read returns its reservation too.
        let c = Replay::with_cap(Scripted::data(&["abc", "def"]), 1024, cap.clone());
        let mut body = c.body();
        assert!(matches!(poll_once(&mut body), Poll::Ready(Some(Ok(_)))));
        assert_eq!(cap.used(), 3);
        drop(c);
        assert_eq!(cap.used(), 0, "the handle's drop releases");
        drop(body);
        assert_eq!(cap.used(), 0);
    }

    #[tokio::test]
    async fn size_hint_is_exact_once_fully_recorded() {
        let replay = Replay::new(Scripted::data(&["ab", "cde"]), 1024);
        drain(replay.body()).await.unwrap();
        assert_eq!(replay.body().size_hint().exact(), Some(5));
    }
    /// A body whose `size_hint` is unknown, like tonic's encoded bodies.
    struct Unsized(http_body_util::Full<Bytes>);

    impl Body for Unsized {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Pin::new(&mut self.0).poll_frame(cx)
        }
    }

    fn full(data: &'static str) -> http_body_util::Full<Bytes> {
        http_body_util::Full::new(Bytes::from_static(data.as_bytes()))
    }

    #[tokio::test]
    async fn a_body_complete_at_once_is_kept_whole_and_shared() {
        let cap = Arc::new(ChannelBufferCap::new(1024));
        let (replay, mut first) = Replay::start(full("unary"), 1024, Some(cap.clone()));
        assert!(matches!(replay.mode, Mode::Whole(_)));
        assert_eq!(cap.used(), 5);
        assert_eq!(replay.buffered_bytes(), 5);
        assert!(!first.is_end_stream());
        let Poll::Ready(Some(Ok(chunk))) = poll_once(&mut first) else {
            panic!("the chunk is ready at once")
        };
        let chunk = chunk.into_data().unwrap();
        // The end is known with the chunk: hyper sends DATA with END_STREAM.
        assert!(first.is_end_stream());
        assert!(matches!(poll_once(&mut first), Poll::Ready(None)));
        let (again, _) = drain(replay.body()).await.unwrap();
        assert_eq!(again, vec![Bytes::from_static(b"unary")]);
        assert_eq!(again[0].as_ptr(), chunk.as_ptr(), "no copy per attempt");
        replay.commit();
        assert_eq!(cap.used(), 0);
        assert_released(&replay).await;
    }

    #[tokio::test]
    async fn a_whole_body_over_the_limit_is_sent_but_not_kept() {
        let cap = Arc::new(ChannelBufferCap::new(1024));
        let (replay, first) = Replay::start(full("123456789"), 8, Some(cap.clone()));
        assert!(!replay.is_replayable());
        assert_eq!(cap.used(), 0);
        assert_eq!(replay.buffered_bytes(), 0);
        assert_eq!(drain(first).await.unwrap().0, vec!["123456789"]);
        assert!(drain(replay.body()).await.is_err());
        // The channel cap full: the same, though within the call's limit.
        let full_cap = Arc::new(ChannelBufferCap::new(4));
        let (replay, first) = Replay::start(full("12345"), 1024, Some(full_cap.clone()));
        assert!(!replay.is_replayable());
        assert_eq!(full_cap.used(), 0);
        assert_eq!(drain(first).await.unwrap().0, vec!["12345"]);
        drop(replay);
        assert_eq!(full_cap.used(), 0);
    }

    #[tokio::test]
    async fn whole_bodies_release_their_reservation_when_dropped() {
        let cap = Arc::new(ChannelBufferCap::new(1024));
        let (replay, first) = Replay::start(full("abc"), 1024, Some(cap.clone()));
        assert_eq!(cap.used(), 3);
        drop(replay);
        assert_eq!(cap.used(), 0);
        assert_eq!(drain(first).await.unwrap().0, vec!["abc"], "still sendable");
    }

    #[tokio::test]
    async fn an_empty_body_starts_whole_and_ended() {
        let (replay, first) = Replay::start(Scripted::default(), 1024, None);
        assert!(first.is_end_stream());
        assert_eq!(first.size_hint().lower(), 0);
        // tonic sends an ended body as an empty one, without boxing it.
        assert!(http_body::Body::is_end_stream(&tonic::body::Body::new(
            replay.body()
        )));
        assert!(replay.is_replayable());
    }

    #[tokio::test]
    async fn a_whole_body_claims_an_exact_size_only_if_the_caller_did() {
        let (_, first) = Replay::start(full("abcd"), 1024, None);
        assert_eq!(first.size_hint().exact(), Some(4));
        let (_, first) = Replay::start(Unsized(full("abcd")), 1024, None);
        assert_eq!(first.size_hint().exact(), None);
        assert_eq!(first.size_hint().lower(), 4);
    }

    #[tokio::test]
    async fn trailers_alone_are_kept_whole() {
        let (replay, first) = Replay::start(Scripted::default().with_trailers(), 1024, None);
        assert!(matches!(replay.mode, Mode::Whole(_)));
        let (chunks, trailers) = drain(first).await.unwrap();
        assert!(chunks.is_empty());
        assert_eq!(trailers.unwrap().get("x-checksum").unwrap(), "abc");
        let (_, again) = drain(replay.body()).await.unwrap();
        assert_eq!(again.unwrap().get("x-checksum").unwrap(), "abc");
    }

    #[tokio::test]
    async fn a_body_not_ready_at_once_is_streamed_from_the_start() {
        let mut body = Scripted::data(&["a", "b"]);
        body.pending_first = true;
        let (replay, first) = Replay::start(body, 1024, None);
        assert!(matches!(replay.mode, Mode::Streaming(_)));
        assert_eq!(drain(first).await.unwrap().0, vec!["a", "b"]);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a", "b"]);
    }

    #[tokio::test]
    async fn frames_read_ahead_go_first_then_the_stream_continues() {
        // Two frames are read at the start; the first attempt yields them,
        // then reads on; a retry replays all of it, trailers included.
        let (replay, first) =
            Replay::start(Scripted::data(&["a", "b", "c"]).with_trailers(), 1024, None);
        assert!(matches!(replay.mode, Mode::Streaming(_)));
        assert!(!first.is_end_stream());
        assert_eq!(first.size_hint().exact(), None);
        assert_eq!(first.size_hint().lower(), 2);
        let (sent, trailers) = drain(first).await.unwrap();
        assert_eq!(sent, vec!["a", "b", "c"]);
        assert!(trailers.is_some());
        let (again, trailers) = drain(replay.body()).await.unwrap();
        assert_eq!(again, vec!["a", "b", "c"]);
        assert!(trailers.is_some());
        // Dropped before yielding what it read ahead: the next attempt
        // still gets everything, once.
        let (replay, first) = Replay::start(Scripted::data(&["x", "y", "z"]), 1024, None);
        drop(first);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["x", "y", "z"]);
    }

    #[tokio::test]
    async fn a_body_failing_while_read_ahead_fails_the_first_attempt_only_once_read() {
        let mut body = Scripted::data(&["a"]);
        body.fail_at_end = true;
        let (replay, mut first) = Replay::start(body, 1024, None);
        assert!(!replay.is_replayable(), "a failed body is never replayed");
        assert!(matches!(poll_once(&mut first), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll_once(&mut first), Poll::Ready(Some(Err(_)))));
        let failing = Scripted {
            fail_at_end: true,
            ..Default::default()
        };
        let (replay, first) = Replay::start(failing, 1024, None);
        assert!(!replay.is_replayable());
        assert!(drain(first).await.is_err());
    }

    #[tokio::test]
    async fn read_ahead_over_the_limit_is_still_sent_in_full() {
        let (replay, first) = Replay::start(Scripted::data(&["1234", "5678", "9"]), 6, None);
        assert_eq!(drain(first).await.unwrap().0, vec!["1234", "5678", "9"]);
        assert!(!replay.is_replayable());
    }

    fn tonic_body(
        body: impl Body<Data = Bytes, Error = std::io::Error> + Send + 'static,
    ) -> tonic::body::Body {
        tonic::body::Body::new(body)
    }

    #[tokio::test]
    async fn tonic_bodies_carry_the_same_frames_and_fail_as_a_status() {
        // Whole: the chunk, for the first attempt and a later one.
        let (replay, first) = Replay::start(tonic::body::Body::new(full("abc")), 1024, None);
        assert_eq!(drain(first.into_tonic()).await.unwrap().0, vec!["abc"]);
        assert_eq!(
            drain(replay.body().into_tonic()).await.unwrap().0,
            vec!["abc"]
        );
        // Streaming (chunks and trailers), through the general path.
        let (replay, first) = Replay::start(
            tonic_body(Scripted::data(&["a", "b", "c"]).with_trailers()),
            1024,
            None,
        );
        let (chunks, trailers) = drain(first.into_tonic()).await.unwrap();
        assert_eq!(chunks, vec!["a", "b", "c"]);
        assert_eq!(trailers.unwrap()["x-checksum"], "abc");
        let (chunks, trailers) = drain(replay.body().into_tonic()).await.unwrap();
        assert_eq!(chunks, vec!["a", "b", "c"]);
        assert!(trailers.is_some());
        // Released: the error reaches tonic as a Status carrying it.
        let (replay, first) = Replay::start(tonic::body::Body::new(full("abc")), 0, None);
        drop(first);
        let status = drain(replay.body().into_tonic()).await.unwrap_err();
        assert_eq!(status.message(), ReplayError::Released.to_string());
    }

    #[tokio::test]
    async fn a_restarted_replay_reuses_its_cap_handle_and_reserves_anew() {
        let cap = Arc::new(ChannelBufferCap::new(1024));
        let mut replay = Replay::released();
        let first = replay.restart(full("abc"), 1024, &cap);
        assert_eq!((cap.used(), Arc::strong_count(&cap)), (3, 2));
        assert_eq!(drain(first).await.unwrap().0, vec!["abc"]);
        replay.release_keeping_cap();
        assert_eq!(cap.used(), 0, "the reservation is returned");
        assert!(!replay.is_replayable());
        assert_eq!(Arc::strong_count(&cap), 2, "the handle is kept");

        let first = replay.restart(full("de"), 1024, &cap);
        assert_eq!(
            (cap.used(), Arc::strong_count(&cap)),
            (2, 2),
            "no new handle"
        );
        drop(first);
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["de"]);

        // Another layer's cap: the old handle goes, the old reservation too.
        let other = Arc::new(ChannelBufferCap::new(1024));
        let first = replay.restart(full("fgh"), 1024, &other);
        drop(first);
        assert_eq!((cap.used(), Arc::strong_count(&cap)), (0, 1));
        assert_eq!((other.used(), Arc::strong_count(&other)), (3, 2));
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["fgh"]);
    }

    #[tokio::test]
    async fn a_restarted_replay_can_stream_and_be_released_again() {
        let cap = Arc::new(ChannelBufferCap::new(1024));
        let mut replay = Replay::released();
        let body = Scripted {
            pending_first: true,
            ..Scripted::data(&["ab", "c"])
        };
        let first = replay.restart(body, 1024, &cap);
        assert_eq!(drain(first).await.unwrap().0, vec!["ab", "c"]);
        assert_eq!(cap.used(), 3, "recorded as read");
        assert_eq!(drain(replay.body()).await.unwrap().0, vec!["ab", "c"]);
        replay.release_keeping_cap();
        assert_eq!(cap.used(), 0);
        assert!(!replay.is_replayable());
        let first = replay.restart(Scripted::data(&["z"]), 1024, &cap);
        assert_eq!(cap.used(), 1);
        assert_eq!(drain(first).await.unwrap().0, vec!["z"]);
    }

    /// A chunk carved from the front of a larger buffer, as tonic's encoder
    /// makes them, and now the buffer's only view.
    fn carved(len: usize, buffer: usize) -> Bytes {
        let mut buf = bytes::BytesMut::with_capacity(buffer);
        buf.extend(std::iter::repeat_n(7u8, len));
        buf.split().freeze()
    }

    /// The first attempt's chunk and a later attempt's from a replay of a
    /// body holding `chunk`, and what the cap was charged meanwhile.
    async fn first_and_later(chunk: Bytes) -> (Bytes, Bytes, usize) {
        let cap = Arc::new(ChannelBufferCap::new(1 << 20));
        let (replay, first) =
            Replay::start(http_body_util::Full::new(chunk), 1 << 20, Some(cap.clone()));
        let charged = cap.used();
        assert_eq!(replay.buffered_bytes(), charged);
        let first = drain(first).await.unwrap().0.remove(0);
        let later = drain(replay.body()).await.unwrap().0.remove(0);
        (first, later, charged)
    }

    #[tokio::test]
    async fn a_kept_chunk_is_never_copied_and_is_charged_the_buffer_it_holds() {
        // (chunk, what keeping it holds)
        let big = carved(5000, 64 * 1024);
        for (chunk, held) in [
            // tonic's shape: a small message at the front of 8 KiB.
            (carved(69, 8 * 1024), 8 * 1024),
            (carved(1024, 8 * 1024), 8 * 1024),
            // A buffer it fills.
            (Bytes::from(vec![1u8; 100]), 100),
            (big, 64 * 1024),
            // Static: nothing held beyond its length (nothing to ask).
            (Bytes::from_static(b"static"), 6),
        ] {
            let original = chunk.as_ptr();
            let (first, later, charged) = first_and_later(chunk).await;
            assert_eq!(
                first.as_ptr(),
                original,
                "the first attempt sends the chunk"
            );
            assert_eq!(
                later.as_ptr(),
                original,
                "a later attempt sends it again, uncopied"
            );
            assert_eq!(first, later);
            assert_eq!(charged, held);
        }
    }

    #[tokio::test]
    async fn a_chunk_shared_elsewhere_is_charged_its_length() {
        let chunk = carved(10, 8 * 1024);
        let other = chunk.clone();
        let (first, later, charged) = first_and_later(chunk).await;
        assert_eq!(
            (first.as_ptr(), later.as_ptr()),
            (other.as_ptr(), other.as_ptr())
        );
        assert_eq!(charged, 10, "its buffer's size cannot be asked");
    }

    #[tokio::test]
    async fn a_whole_body_over_the_call_limit_is_sent_but_not_kept() {
        let cap = Arc::new(ChannelBufferCap::new(1 << 20));
        let (replay, first) = Replay::start(
            http_body_util::Full::new(carved(100, 8 * 1024)),
            99,
            Some(cap.clone()),
        );
        assert!(!replay.is_replayable());
        assert_eq!(cap.used(), 0, "nothing reserved");
        assert_eq!(drain(first).await.unwrap().0[0].len(), 100);
        // Under the call's limit but over what the cap has left: the limit
        // is on the request's size, the cap on what keeping it holds.
        let small_cap = Arc::new(ChannelBufferCap::new(4 * 1024));
        let (replay, _) = Replay::start(
            http_body_util::Full::new(carved(100, 8 * 1024)),
            1024,
            Some(small_cap.clone()),
        );
        assert!(!replay.is_replayable());
        assert_eq!(small_cap.used(), 0);
    }
}
