//! The test server's response bodies: a fixed list of steps, and an echo
//! that reads the request as the response is polled.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http_body::Frame;
use prost::Message as _;
use tokio::time::Sleep;
use tonic::Status;
use tonic::body::Body;

use super::frame::{FrameDecoder, encode_frame};
use super::proto::{EchoRequest, EchoResponse};
use super::record::{AttemptGuard, ResetStream, lock};

pub(super) enum Step {
    Data(Bytes),
    Sleep(Duration),
    Trailers(HeaderMap),
    Reset(u32),
}

/// A response body that plays a fixed list of steps.
pub(super) struct ScriptedBody {
    steps: VecDeque<Step>,
    sleep: Option<Pin<Box<Sleep>>>,
    guard: Option<AttemptGuard>,
}

impl ScriptedBody {
    pub(super) fn new(steps: VecDeque<Step>, guard: AttemptGuard) -> Self {
        Self {
            steps,
            sleep: None,
            guard: Some(guard),
        }
    }

    fn finish(&mut self) {
        self.steps.clear();
        if let Some(guard) = self.guard.take() {
            guard.complete();
        }
    }
}

impl http_body::Body for ScriptedBody {
    type Data = Bytes;
    type Error = ResetStream;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResetStream>>> {
        let this = self.get_mut();
        loop {
            if let Some(sleep) = &mut this.sleep {
                ready!(sleep.as_mut().poll(cx));
                this.sleep = None;
            }
            match this.steps.pop_front() {
                None => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Some(Step::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Step::Sleep(d)) => {
                    if !d.is_zero() {
                        this.sleep = Some(Box::pin(tokio::time::sleep(d)));
                    }
                }
                Some(Step::Trailers(trailers)) => {
                    this.finish();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Some(Step::Reset(reason)) => {
                    this.finish();
                    return Poll::Ready(Some(Err(ResetStream::new(reason))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.is_none()
    }
}

pub(super) enum BidiState {
    Reading,
    Pausing,
    Trailers,
    Done,
}

/// An echo that reads the request while its response body is polled (the
/// response headers went out first): for `Bidi`, one response per request
/// message as it arrives; otherwise one response, at the request's end.
pub(super) struct BidiBody {
    pub(super) request: Body,
    pub(super) decoder: FrameDecoder,
    pub(super) attempt: usize,
    pub(super) state: BidiState,
    pub(super) trailers: Option<HeaderMap>,
    pub(super) body_delay: Duration,
    /// Waited before each request message is taken.
    pub(super) read_delay: Duration,
    pub(super) sleep: Option<Pin<Box<Sleep>>>,
    pub(super) read_sleep: Option<Pin<Box<Sleep>>>,
    /// The single response being put together (not `Bidi`).
    pub(super) collected: Option<EchoResponse>,
    pub(super) guard: Option<AttemptGuard>,
}

impl BidiBody {
    fn fail(&mut self, status: &Status) {
        let mut headers = HeaderMap::new();
        if status.add_header(&mut headers).is_err() {
            headers.insert("grpc-status", HeaderValue::from(status.code() as i32));
        }
        self.trailers = Some(headers);
        self.state = BidiState::Trailers;
    }

    /// The response to one request message, or `None` after `fail` (or
    /// when the response is collected for the end).
    fn answer(&mut self, msg: &Bytes) -> Option<Bytes> {
        self.guard.as_ref()?.add_message(msg.len());
        let request = match EchoRequest::decode(msg.clone()) {
            Ok(r) => r,
            Err(e) => {
                self.fail(&Status::internal(format!(
                    "test server could not decode EchoRequest: {e}"
                )));
                return None;
            }
        };
        let (request_bytes, request_messages) = {
            let record = lock(&self.guard.as_ref()?.record);
            (record.request_bytes, record.request_messages)
        };
        if let Some(collected) = &mut self.collected {
            collected.payload.extend_from_slice(&request.payload);
            collected.text.push_str(&request.text);
            collected.request_bytes = request_bytes;
            collected.request_messages = request_messages;
            return None;
        }
        Some(encode_frame(&EchoResponse {
            payload: request.payload,
            text: request.text,
            attempt: u32::try_from(self.attempt).unwrap_or(u32::MAX),
            request_bytes,
            request_messages,
        }))
    }
}

impl http_body::Body for BidiBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        loop {
            match this.state {
                BidiState::Reading => {
                    if let Some(sleep) = &mut this.read_sleep {
                        ready!(sleep.as_mut().poll(cx));
                        this.read_sleep = None;
                    }
                    match this.decoder.next_message() {
                        Ok(Some(msg)) => {
                            if !this.read_delay.is_zero() {
                                this.read_sleep =
                                    Some(Box::pin(tokio::time::sleep(this.read_delay)));
                            }
                            if let Some(frame) = this.answer(&msg) {
                                return Poll::Ready(Some(Ok(Frame::data(frame))));
                            }
                            continue;
                        }
                        Ok(None) => {}
                        Err(e) => {
                            this.fail(&e.into_status());
                            continue;
                        }
                    }
                    match ready!(Pin::new(&mut this.request).poll_frame(cx)) {
                        Some(Ok(frame)) => {
                            if let Ok(data) = frame.into_data() {
                                this.decoder.push(&data);
                            }
                        }
                        Some(Err(e)) => {
                            // The client went away; nobody will read trailers.
                            this.fail(&Status::cancelled(format!("request body failed: {e}")));
                        }
                        None if this.decoder.has_partial() => {
                            this.fail(&Status::internal("request ended inside a gRPC frame"));
                        }
                        None => {
                            this.state = BidiState::Pausing;
                            if let Some(collected) = this.collected.take() {
                                return Poll::Ready(Some(Ok(Frame::data(encode_frame(
                                    &collected,
                                )))));
                            }
                        }
                    }
                }
                BidiState::Pausing => {
                    if this.body_delay.is_zero() {
                        this.state = BidiState::Trailers;
                        continue;
                    }
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.body_delay)));
                    ready!(sleep.as_mut().poll(cx));
                    this.sleep = None;
                    this.state = BidiState::Trailers;
                }
                BidiState::Trailers => {
                    this.state = BidiState::Done;
                    if let Some(guard) = this.guard.take() {
                        guard.complete();
                    }
                    let trailers = this.trailers.take().unwrap_or_default();
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                BidiState::Done => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BidiState::Done)
    }
}
