use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::task::Wake;

use http_body_util::BodyExt;

use super::*;
use http::HeaderMap;
use std::task::Waker;

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
async fn a_caught_up_attempt_reads_the_source_itself_without_waiting() {
    let replay = Replay::new(Scripted::data(&["a", "b", "c"]), 1024);
    let mut first = replay.body();
    assert_eq!(next_data(&mut first), Poll::Ready(Some(Bytes::from("a"))));
    let mut second = replay.body();
    assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("a"))));
    // Caught up while the first attempt is still alive (say, stalled by
    // flow control): it reads on from the source.
    assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("b"))));
    // The first attempt replays what the second recorded, then reads on.
    assert_eq!(next_data(&mut first), Poll::Ready(Some(Bytes::from("b"))));
    assert_eq!(next_data(&mut first), Poll::Ready(Some(Bytes::from("c"))));
    assert_eq!(drain(second).await.unwrap().0, vec!["c"]);
    assert_eq!(drain(first).await.unwrap().0, Vec::<Bytes>::new());
    assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a", "b", "c"]);
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
async fn a_commit_after_the_winner_sent_everything_releases_the_buffer() {
    let replay = Replay::new(Scripted::data(&["abc"]), 1024);
    let first = replay.body();
    let id = first.id();
    drain(first).await.unwrap();
    assert_eq!(replay.buffered_bytes(), 3);
    replay.commit(id);
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
    let a_first = a.body();
    let a_id = a_first.id();
    drain(a_first).await.unwrap();
    assert_eq!(cap.used(), 8);
    // A second call finds only 2 bytes left: it is sent, not replayable.
    let b = Replay::with_cap(Scripted::data(&["1", "234"]), 1024, cap.clone());
    let (sent, _) = drain(b.body()).await.unwrap();
    assert_eq!(sent, vec!["1", "234"]);
    assert!(!b.is_replayable());
    assert_eq!(cap.used(), 8, "b released what it had reserved");
    a.commit(a_id);
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
async fn a_replayed_stream_claims_an_exact_size_only_if_the_source_did() {
    // Scripted claims no exact size, like tonic's encoded streams: a replay
    // of it, even fully recorded, must not claim one (hyper would turn it
    // into a content-length the request never had).
    let replay = Replay::new(Scripted::data(&["ab", "cde"]), 1024);
    drain(replay.body()).await.unwrap();
    let again = replay.body();
    assert_eq!(again.size_hint().exact(), None);
    assert_eq!(again.size_hint().lower(), 5);
    // A source that claimed its exact size: its replay may too.
    let replay = Replay::new(full("abcde"), 1024);
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
    assert!(matches!(replay.mode, Mode::Whole { .. }));
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
    replay.commit(BodyId::FIRST);
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
    assert!(matches!(replay.mode, Mode::Whole { .. }));
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

use super::keep::COPY_OVERHEAD;
use super::keep::tests::carved;

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
async fn a_small_chunk_is_kept_as_a_copy_and_a_large_one_by_reference() {
    // (chunk, copied?, what keeping it holds)
    for (chunk, copied, held) in [
        // tonic's shape: a small message at the front of 8 KiB.
        (carved(69, 8 * 1024), true, 69 + COPY_OVERHEAD),
        (carved(1024, 8 * 1024), true, 1024 + COPY_OVERHEAD),
        // A buffer it (mostly) fills: kept by reference, charged the buffer.
        (Bytes::from(vec![1u8; 100]), false, 100),
        (carved(5000, 8 * 1024), false, 8 * 1024),
        (carved(40_000, 64 * 1024), false, 64 * 1024),
        // Static: nothing held beyond its length (nothing to ask).
        (Bytes::from_static(b"static"), false, 6),
    ] {
        let original = chunk.as_ptr();
        let len = chunk.len();
        let (first, later, charged) = first_and_later(chunk).await;
        assert_eq!(
            first.as_ptr(),
            original,
            "the first attempt sends the chunk"
        );
        assert_eq!(first, later);
        assert_eq!(later.as_ptr() != original, copied, "{len} bytes: copied?");
        assert_eq!(charged, held, "{len} bytes: charged");
    }
}

#[tokio::test]
async fn sixteen_mebibytes_keep_fifty_thousand_small_unary_requests() {
    // The goal, on the accounting alone: 100-byte requests, each
    // encoded at the front of tonic's 8 KiB buffer.
    let cap = Arc::new(ChannelBufferCap::new(crate::DEFAULT_CHANNEL_BUFFER_LIMIT));
    let mut kept = Vec::new();
    for _ in 0..50_000 {
        let (replay, _first) = Replay::start(
            http_body_util::Full::new(carved(100, 8 * 1024)),
            1 << 20,
            Some(cap.clone()),
        );
        assert!(
            replay.is_replayable(),
            "call {} lost its retries",
            kept.len()
        );
        kept.push(replay);
    }
    drop(kept);
    assert_eq!(cap.used(), 0);
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
        http_body_util::Full::new(carved(3000, 5 * 1024)),
        4000,
        Some(small_cap.clone()),
    );
    assert!(!replay.is_replayable());
    assert_eq!(small_cap.used(), 0);
}

/// Counts its wakes.
#[derive(Default)]
struct CountingWaker(std::sync::atomic::AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingWaker {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn poll_with<B: Body<Data = Bytes> + Unpin>(
    body: &mut B,
    waker: &Arc<CountingWaker>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
    let waker = Waker::from(waker.clone());
    Pin::new(body).poll_frame(&mut Context::from_waker(&waker))
}

fn is_released<T>(polled: Poll<Option<Result<T, BoxError>>>) -> bool {
    matches!(polled, Poll::Ready(Some(Err(e))) if e.downcast_ref::<ReplayError>() == Some(&ReplayError::Released))
}

#[tokio::test]
async fn committed_stream_is_sent_once_after_commit_even_from_behind() {
    // The first attempt read (and recorded) all six chunks; the second is
    // replaying them, two sent, when its server's headers commit the call.
    let cap = Arc::new(ChannelBufferCap::new(1024));
    let replay = Replay::with_cap(
        Scripted::data(&["a", "b", "c", "d", "e", "f"]),
        1024,
        cap.clone(),
    );
    let mut first = replay.body();
    let mut second = replay.body();
    for _ in 0..6 {
        assert!(matches!(poll_once(&mut first), Poll::Ready(Some(Ok(_)))));
    }
    assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("a"))));
    assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("b"))));
    assert_eq!(cap.used(), 6);
    replay.commit(second.id());
    assert!(!replay.is_replayable());
    assert_eq!(
        cap.used(),
        4,
        "what the winner sent is freed, the rest kept"
    );
    assert!(is_released(poll_once(&mut first)), "the loser is cut off");
    // The winner sends the rest once, in order; each chunk goes as it is sent.
    assert_eq!(next_data(&mut second), Poll::Ready(Some(Bytes::from("c"))));
    assert_eq!(cap.used(), 3);
    assert_eq!(drain(second).await.unwrap().0, vec!["d", "e", "f"]);
    assert_eq!(cap.used(), 0);
    assert_eq!(replay.buffered_bytes(), 0);
}

#[tokio::test]
async fn a_winner_ahead_of_the_recording_reads_on_from_the_source_unrecorded() {
    let cap = Arc::new(ChannelBufferCap::new(1024));
    let replay = Replay::with_cap(Scripted::data(&["a", "b", "c"]), 1024, cap.clone());
    let mut first = replay.body();
    assert_eq!(next_data(&mut first), Poll::Ready(Some(Bytes::from("a"))));
    replay.commit(first.id());
    assert_eq!(cap.used(), 0, "nothing left that the winner needs");
    assert_eq!(drain(first).await.unwrap().0, vec!["b", "c"]);
    assert_eq!(cap.used(), 0, "nothing recorded after the commit");
    assert_released(&replay).await;
}

#[tokio::test]
async fn a_stalled_attempt_never_holds_up_another() {
    // The first attempt reads one chunk, then its transport stops polling
    // it (a stalled stream): the second goes through to the end alone.
    let replay = Replay::new(Scripted::data(&["a", "b", "c"]).with_trailers(), 1024);
    let mut stalled = replay.body();
    assert_eq!(next_data(&mut stalled), Poll::Ready(Some(Bytes::from("a"))));
    let (chunks, trailers) = drain(replay.body()).await.unwrap();
    assert_eq!(chunks, vec!["a", "b", "c"]);
    assert!(trailers.is_some());
    drop(stalled);
}

/// A source that is pending until its gate opens.
struct Gated {
    frames: VecDeque<Frame<Bytes>>,
    gate: Arc<Gate>,
}

#[derive(Default)]
struct Gate {
    open: std::sync::atomic::AtomicBool,
    waker: std::sync::Mutex<Option<Waker>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Body for Gated {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.gate.open.load(Ordering::SeqCst) {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(self.frames.pop_front().map(Ok))
    }
}

#[test]
fn every_attempt_waiting_on_the_source_is_woken_when_it_is_ready() {
    let gate = Arc::new(Gate::default());
    let replay = Replay::new(
        Gated {
            frames: [Frame::data(Bytes::from("a"))].into(),
            gate: gate.clone(),
        },
        1024,
    );
    let (mut first, mut second) = (replay.body(), replay.body());
    let (first_waker, second_waker) = (Arc::default(), Arc::default());
    assert!(poll_with(&mut first, &first_waker).is_pending());
    // The source now holds a waker for the second poll only; the first
    // attempt (perhaps stalled, perhaps not) must not be forgotten.
    assert!(poll_with(&mut second, &second_waker).is_pending());
    gate.open();
    assert_eq!(first_waker.count(), 1);
    assert_eq!(second_waker.count(), 1);
    assert!(matches!(
        poll_with(&mut first, &first_waker),
        Poll::Ready(Some(Ok(_)))
    ));
    assert!(matches!(
        poll_with(&mut second, &second_waker),
        Poll::Ready(Some(Ok(_)))
    ));
}

#[tokio::test]
async fn passing_the_limit_commits_to_the_attempt_reading_and_cuts_off_the_rest() {
    let cap = Arc::new(ChannelBufferCap::new(1024));
    let replay = Replay::with_cap(Scripted::data(&["1234", "5678", "9"]), 6, cap.clone());
    let mut behind = replay.body();
    let mut reader = replay.body();
    assert_eq!(
        next_data(&mut reader),
        Poll::Ready(Some(Bytes::from("1234")))
    );
    assert_eq!(cap.used(), 4);
    // The second chunk passes the limit: the call commits to the reader.
    assert_eq!(
        next_data(&mut reader),
        Poll::Ready(Some(Bytes::from("5678")))
    );
    assert!(!replay.is_replayable());
    assert!(replay.can_commit(reader.id()));
    assert!(!replay.can_commit(behind.id()));
    assert!(replay.is_cut_off(behind.id()));
    assert_eq!(cap.used(), 0);
    assert!(is_released(poll_once(&mut behind)));
    let behind_id = behind.id();
    drop(behind);
    assert!(
        replay.is_cut_off(behind_id),
        "still the layer's doing once dropped"
    );
    assert_eq!(drain(reader).await.unwrap().0, vec!["9"]);
}

#[tokio::test]
async fn an_abandoned_attempt_stops_and_the_call_can_still_retry() {
    let replay = Replay::new(Scripted::data(&["a", "b"]), 1024);
    let mut dead = replay.body();
    assert_eq!(next_data(&mut dead), Poll::Ready(Some(Bytes::from("a"))));
    replay.abandon(dead.id());
    assert!(replay.is_cut_off(dead.id()));
    assert!(
        is_released(poll_once(&mut dead)),
        "it lets its transport go"
    );
    assert!(replay.is_replayable());
    assert_eq!(drain(replay.body()).await.unwrap().0, vec!["a", "b"]);
}

#[tokio::test]
async fn the_end_of_a_call_cuts_off_its_attempts_unless_it_committed() {
    let cap = Arc::new(ChannelBufferCap::new(1024));
    let replay = Replay::with_cap(Scripted::data(&["a", "b"]), 1024, cap.clone());
    let mut attempt = replay.body();
    assert_eq!(next_data(&mut attempt), Poll::Ready(Some(Bytes::from("a"))));
    drop(replay);
    assert_eq!(cap.used(), 0);
    assert!(is_released(poll_once(&mut attempt)));

    let replay = Replay::with_cap(Scripted::data(&["a", "b"]), 1024, cap.clone());
    let mut winner = replay.body();
    let mut behind = replay.body();
    assert_eq!(next_data(&mut winner), Poll::Ready(Some(Bytes::from("a"))));
    assert_eq!(next_data(&mut winner), Poll::Ready(Some(Bytes::from("b"))));
    assert_eq!(next_data(&mut behind), Poll::Ready(Some(Bytes::from("a"))));
    replay.commit(behind.id());
    drop(replay);
    assert_eq!(cap.used(), 1, "the winner still needs b");
    assert_eq!(drain(behind).await.unwrap().0, vec!["b"]);
    assert_eq!(cap.used(), 0);
    drop(winner);
}

#[tokio::test]
async fn a_body_asked_for_after_commit_fails_instead_of_sending_part() {
    let replay = Replay::new(Scripted::data(&["a"]), 1024);
    let first = replay.body();
    replay.commit(first.id());
    assert_released(&replay).await;
    assert_eq!(drain(first).await.unwrap().0, vec!["a"]);
}

mod model;
