//! [`CallEnd`]: what a retried call records once its outcome is known.
//!
//! A call that commits is not over: its final status comes in the trailers
//! (or as a reset). grpc core counts throttling on that final status,
//! committed or not (`retry-semantics.md` section 10): OK adds `tokenRatio`;
//! a code the policy would retry (or a "do not retry" pushback) takes a
//! token, although a committed call is never retried; any other code counts
//! for nothing. The span and the metrics record the same final code.

use std::sync::Arc;

use http::HeaderMap;
use tonic::Code;
use tracing::Span;

use super::spans::{self, AttemptSpan};
use crate::body::response::{OnEnd, sealed};
use crate::metrics::CallMetrics;
use crate::state::{LayerState, PolicyRef};

/// The accounting of one committed call, done when its response ends: the
/// [`OnEnd`] hook of the [`ResponseBody`](crate::ResponseBody) that
/// [`Retry`](crate::Retry) returns. Opaque.
pub struct CallEnd {
    /// The layer's state and the call's policy, when the layer throttles.
    throttle: Option<(Arc<LayerState>, PolicyRef)>,
    metrics: CallMetrics,
    span: Span,
    /// The committed attempt's span: the attempt ends with the response.
    attempt_span: AttemptSpan,
}

impl CallEnd {
    pub(crate) fn new(
        state: &Arc<LayerState>,
        policy: PolicyRef,
        metrics: CallMetrics,
        span: Span,
        attempt_span: AttemptSpan,
    ) -> Self {
        CallEnd {
            throttle: state.throttle.is_some().then(|| (state.clone(), policy)),
            metrics,
            span,
            attempt_span,
        }
    }

    /// `Some(self)` if there is anything to record: a throttle, an enabled
    /// span or metrics. The happy path of a layer without them carries no
    /// hook at all.
    pub(crate) fn if_needed(self) -> Option<Self> {
        let needed = self.throttle.is_some()
            || !self.span.is_none()
            || !self.attempt_span.is_none()
            || CallMetrics::ENABLED;
        needed.then_some(self)
    }

    /// The call, and its committed attempt, ended with `code`.
    fn record_outcome(&mut self, code: Code) {
        self.attempt_span.ended(code);
        spans::call_ended(&self.span, None, code);
        self.metrics.finish(code);
    }
}

impl sealed::Sealed for CallEnd {}

impl OnEnd for CallEnd {
    fn ended(mut self, code: Code, trailers: &HeaderMap) {
        if let Some((state, policy)) = &self.throttle
            && let Some(throttle) = &state.throttle
        {
            if code == Code::Ok {
                throttle.record_success();
            } else if state.policy(*policy).counts_as_failure(code, trailers) {
                throttle.record_failure();
            }
        }
        self.record_outcome(code);
    }

    fn dropped(mut self) {
        self.record_outcome(Code::Cancelled);
    }
}

impl std::fmt::Debug for CallEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEnd")
            .field("throttled", &self.throttle.is_some())
            .finish_non_exhaustive()
    }
}
