//! The call kit: everything a retried call keeps beyond its first attempt,
//! in one heap block taken from a small per-thread pool.
//!
//! Every call must keep its policy decisions, a copy of its request head and
//! its replay buffer in case it is retried, although almost no call is.
//! Built on the stack as separate structs and moved into the response
//! future, that state (over 400 bytes) cost more than the work that filled
//! it: the profile showed the moves, and the stalls of reading back
//! freshly written fields, as the largest part of the layer's cost. A kit
//! is filled field by field where it lies, the response future holds only a
//! pointer to it, and when the call ends it goes back to the pool emptied.
//! Warm, a call allocates no kit, and its header copy goes into a list that
//! already has room.
//!
//! Measured against the plain form (a `Box` per call, dropped at its end),
//! the pool saves 40–80 ns of the layer's ~120–140 ns and three allocations
//! per call (BENCHMARKS.md, "Mechanisms"), so it stays.
//!
//! A pooled kit keeps its `Arc` of the last layer state it served (and its
//! replay keeps that layer's buffer-cap handle), so the next call through
//! the same layer needs no reference-count update (~16 ns, measured). That
//! holds the layer's policies and counters (a few hundred bytes, no
//! connection or task; but also whatever a custom classifier closure
//! captures) until the kit serves another layer or the thread ends.
//! Everything that belongs to one call (request bytes, the buffer
//! reservation, the span, the cancellation token, timers) is released when
//! the kit is returned.

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tracing::Span;

use super::Call;
use super::heads::RequestHeads;
use super::spans::AttemptSpan;
use super::wait::earliest_duration;
use crate::body::replay::Replay;
use crate::metrics::{CallMetrics, HandlesMemo};
use crate::policy::backoff::Backoff;
use crate::policy::options::CallOptions;
use crate::policy::retry::DEFAULT_MAX_ATTEMPTS_CAP;
use crate::state::{LayerState, PolicyRef};

pin_project! {
    /// One call's state beyond its first attempt's own future.
    pub(crate) struct CallKit {
        // The call's policy, limits and deadline.
        pub(crate) call: Call,
        // The request body, kept for later attempts.
        pub(crate) replay: Replay<Body>,
        // The request head, kept for later attempts.
        pub(crate) heads: RequestHeads,
        // The metric handles of the last call through this kit, kept like
        // the layer state (nothing without the `metrics` feature).
        metrics_memo: HandlesMemo,
        // When the first attempt must end.
        pub(crate) first_deadline: Option<Instant>,
        // The first attempt's deadline timer, created when it first waits.
        #[pin]
        pub(crate) timer: Option<Sleep>,
        // Resolves when the caller's `CancellationToken` fires.
        #[pin]
        pub(crate) cancelled: Option<WaitForCancellationFutureOwned>,
    }
}

/// A kit on the heap, pinned so its timers can live inside it.
pub(crate) type KitBox = Pin<Box<CallKit>>;

thread_local! {
    static KIT_POOL: RefCell<Vec<KitBox>> = const { RefCell::new(Vec::new()) };
}

/// Kits kept per thread: enough for the calls one thread finishes between
/// starting others, small enough to hold little memory.
const KIT_POOL_SIZE: usize = 32;

/// An empty kit for a call through the layer with `state`: from this
/// thread's pool if it has one.
#[inline]
pub(crate) fn take(state: &Arc<LayerState>) -> KitBox {
    let pooled = KIT_POOL
        .try_with(|pool| pool.try_borrow_mut().ok().and_then(|mut pool| pool.pop()))
        .ok()
        .flatten();
    match pooled {
        Some(mut kit) => {
            if !Arc::ptr_eq(&kit.call.state, state) {
                let kit = kit.as_mut().project();
                kit.call.state = state.clone();
                kit.metrics_memo.forget();
            }
            kit
        }
        None => fresh(state),
    }
}

/// A new kit, when this thread's pool is empty: out of line, so the code
/// that builds one stays off the hot path's cache lines.
#[cold]
#[inline(never)]
fn fresh(state: &Arc<LayerState>) -> KitBox {
    Box::pin(CallKit::new(state.clone()))
}

/// Ends the call's hold on `kit` and returns it to this thread's pool
/// (or frees it when the pool is full).
#[inline]
pub(crate) fn recycle(mut kit: KitBox) {
    kit.as_mut().empty();
    let _ = KIT_POOL.try_with(move |pool| {
        if let Ok(mut pool) = pool.try_borrow_mut()
            && pool.len() < KIT_POOL_SIZE
        {
            pool.push(kit);
        }
    });
}

impl CallKit {
    fn new(state: Arc<LayerState>) -> Self {
        CallKit {
            call: Call {
                state,
                policy_ref: PolicyRef::Fixed,
                max_attempts: 1,
                non_idempotent: false,
                deadline: None,
                cancel: None,
                backoff: Backoff::default(),
                metrics: CallMetrics::inactive(),
                span: Span::none(),
                first_span: AttemptSpan::none(),
            },
            replay: Replay::released(),
            heads: RequestHeads::empty(),
            metrics_memo: HandlesMemo::new(),
            first_deadline: None,
            timer: None,
            cancelled: None,
        }
    }

    /// Starts a call in this (empty) kit: resolves its limits, options and
    /// deadline (once, from now), and takes from `request` what every
    /// attempt shares: the replay buffer (reserving from the layer's cap)
    /// and the head kept for retries. `request` becomes the first attempt:
    /// its body the replay's first body, its `grpc-timeout` the attempt's.
    /// It is changed in place rather than split and rebuilt, which would
    /// copy it twice more. The call counts once toward the retry budget.
    /// The caller has already put the call's span in the kit.
    #[inline]
    pub(crate) fn start(
        self: Pin<&mut Self>,
        policy_ref: PolicyRef,
        request: &mut http::Request<Body>,
    ) {
        let mut kit = self.project();
        let call = kit.call;
        // One pass over the headers keeps them for retries and finds the
        // caller's `grpc-timeout`.
        let request_timeout = kit.heads.fill(request);
        let state = &*call.state;
        let policy = state.policy(policy_ref);
        // A request that carries no extension but tonic's `GrpcMethod`
        // (every call a generated client makes, unless the caller added
        // one) has no options and no token: two hashed lookups spared.
        let other_extensions = kit.heads.has_other_extensions();
        let options = if other_extensions {
            request.extensions().get::<CallOptions>().copied()
        } else {
            None
        }
        .unwrap_or_default();
        let (policy_attempts, cap) = match policy.hedging {
            Some(hedging) => (
                hedging.max_attempts.clamp(1, DEFAULT_MAX_ATTEMPTS_CAP),
                DEFAULT_MAX_ATTEMPTS_CAP,
            ),
            None => (policy.retry.max_attempts, policy.retry.max_attempts_cap),
        };
        let limit = earliest_duration(
            request_timeout,
            earliest_duration(policy.retry.timeout, policy.config_timeout),
        );
        let body = std::mem::take(request.body_mut());
        let first_body = kit
            .replay
            .restart(body, policy.retry.replay_limit, &state.buffer_cap);
        if let Some(budget) = &state.budget {
            budget.deposit();
        }
        let cancel = if other_extensions {
            request.extensions().get::<CancellationToken>().cloned()
        } else {
            None
        };
        if let Some(token) = &cancel {
            kit.cancelled.set(Some(token.clone().cancelled_owned()));
        }
        call.max_attempts = options.max_attempts.map_or(policy_attempts, |n| n.min(cap));
        call.policy_ref = policy_ref;
        call.non_idempotent = options.non_idempotent;
        call.deadline = limit.and_then(|limit| Instant::now().checked_add(limit));
        call.cancel = cancel;
        call.backoff = Backoff::default();
        // The call and its first attempt start here, just before it is
        // sent.
        call.metrics = CallMetrics::start(
            &state.metrics,
            kit.metrics_memo,
            kit.heads.grpc_method(),
            request.uri().path(),
        );
        *request.body_mut() = first_body.into_tonic();
        *kit.first_deadline = call.attempt_deadline(request.headers_mut());
    }

    /// The first attempt is over: its timer and cancellation future are
    /// done (the attempt loop waits on its own).
    pub(crate) fn first_attempt_over(self: Pin<&mut Self>) {
        let mut kit = self.project();
        kit.timer.set(None);
        kit.cancelled.set(None);
    }

    /// Releases everything of the call that ended: the buffer reservation
    /// and request bytes, the head's values, the span (which closes it),
    /// the token and the timers. Keeps the allocations and the layer state.
    #[inline]
    fn empty(self: Pin<&mut Self>) {
        let mut kit = self.project();
        kit.replay.release_keeping_cap();
        kit.heads.clear();
        kit.call.cancel = None;
        kit.call.metrics = CallMetrics::inactive();
        kit.call.span = Span::none();
        if !kit.call.first_span.is_none() {
            kit.call.first_span = AttemptSpan::none();
        }
        kit.timer.set(None);
        kit.cancelled.set(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RetryLayer, RetryPolicy};
    use bytes::Bytes;
    use http_body_util::Full;

    fn state() -> Arc<LayerState> {
        RetryLayer::new(RetryPolicy::default()).state.clone()
    }

    #[test]
    fn a_recycled_kit_keeps_nothing_of_its_call() {
        let state = state();
        let mut kit = take(&state);
        let mut request = http::Request::new(Body::new(Full::new(Bytes::from_static(b"abc"))));
        request
            .headers_mut()
            .insert("x-secret", http::HeaderValue::from_static("1"));
        request.extensions_mut().insert(CancellationToken::new());
        kit.as_mut().start(PolicyRef::Fixed, &mut request);
        assert_eq!(kit.replay.buffered_bytes(), 3);
        assert_eq!(state.buffer_cap.used(), 3);
        assert!(kit.call.cancel.is_some() && kit.cancelled.is_some());
        recycle(kit);
        assert_eq!(state.buffer_cap.used(), 0, "reservation returned");
        let kit = take(&state);
        assert!(Arc::ptr_eq(&kit.call.state, &state), "layer state kept");
        assert!(kit.heads.is_empty(), "no header survives its call");
        assert_eq!(kit.replay.buffered_bytes(), 0);
        assert!(kit.call.cancel.is_none() && kit.cancelled.is_none());
        assert!(kit.timer.is_none());
    }

    #[test]
    fn options_and_tokens_are_found_with_or_without_grpc_method() {
        let state = state();
        let default_attempts = RetryPolicy::default().max_attempts;
        // (GrpcMethod, CallOptions with 2 attempts, token) present?
        for (method, options, token) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (false, false, true),
            (true, true, true),
            (true, false, true),
        ] {
            let mut request = http::Request::new(Body::empty());
            let extensions = request.extensions_mut();
            if method {
                extensions.insert(tonic::GrpcMethod::new("pkg.Svc", "M"));
            }
            if options {
                extensions.insert(crate::CallOptions::new().max_attempts(2));
            }
            if token {
                extensions.insert(CancellationToken::new());
            }
            let mut kit = take(&state);
            kit.as_mut().start(PolicyRef::Fixed, &mut request);
            let case = format!("GrpcMethod {method}, options {options}, token {token}");
            let attempts = if options { 2 } else { default_attempts };
            assert_eq!(kit.call.max_attempts, attempts, "{case}");
            assert_eq!(kit.call.cancel.is_some(), token, "{case}");
            assert_eq!(kit.cancelled.is_some(), token, "{case}");
            recycle(kit);
        }
    }

    #[test]
    fn a_pooled_kit_takes_the_state_of_the_layer_it_serves() {
        let first = state();
        let second = state();
        recycle(take(&first));
        let kit = take(&second);
        assert!(Arc::ptr_eq(&kit.call.state, &second));
    }

    #[test]
    fn the_pool_holds_a_bounded_number_of_kits() {
        let state = state();
        let kits: Vec<_> = (0..KIT_POOL_SIZE * 2).map(|_| take(&state)).collect();
        for kit in kits {
            recycle(kit);
        }
        assert_eq!(KIT_POOL.with(|pool| pool.borrow().len()), KIT_POOL_SIZE);
    }
}
