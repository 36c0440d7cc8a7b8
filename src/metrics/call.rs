//! [`CallMetrics`]: what one call records, and when (feature `metrics`).
//!
//! The call tells it when each attempt starts and ends and when the call
//! ends; it keeps the counts and clocks A66 and A96 ask for and records
//! them into the method's cached handles. Every clock is tokio's, so tests
//! on a paused clock see exact durations.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use super::handles::{LayerMetrics, MethodHandles};
use super::{AttemptId, AttemptKind};

/// Attempts of one call that can be in flight at once: A6 caps a hedged
/// call at 5 attempts. An attempt past this (a raised cap) is counted as
/// started but its duration is not recorded.
const MAX_OPEN: usize = 5;

/// What one call did, recorded when it ends.
pub(crate) struct CallMetrics {
    /// `None` once the call is recorded (or for the empty metrics of a
    /// pooled kit).
    handles: Option<Arc<MethodHandles>>,
    started: Option<Instant>,
    /// When each attempt in flight started, by [`AttemptId`].
    open: [Option<Instant>; MAX_OPEN],
    /// Since when no attempt has been in flight, if none is.
    idle_since: Option<Instant>,
    delay: Duration,
    retries: u32,
    transparent_retries: u32,
    hedges: u32,
}

impl CallMetrics {
    /// Whether anything is recorded (the `metrics` feature).
    pub(crate) const ENABLED: bool = true;

    /// Metrics that record nothing: a pooled kit's, between calls.
    pub(crate) const fn inactive() -> Self {
        CallMetrics {
            handles: None,
            started: None,
            open: [None; MAX_OPEN],
            idle_since: None,
            delay: Duration::ZERO,
            retries: 0,
            transparent_retries: 0,
            hedges: 0,
        }
    }

    /// A call of `request`'s method starts now, and so does its first
    /// attempt ([`AttemptId::FIRST`]): one clock read for both.
    pub(crate) fn start<B>(layer: &LayerMetrics, request: &http::Request<B>) -> Self {
        let handles = layer.handles(request);
        handles.attempt_started.increment(1);
        let now = Instant::now();
        let mut open = [None; MAX_OPEN];
        open[0] = Some(now);
        CallMetrics {
            handles: Some(handles),
            started: Some(now),
            open,
            ..CallMetrics::inactive()
        }
    }

    /// Another attempt starts now.
    pub(crate) fn attempt_started(&mut self, kind: AttemptKind) -> AttemptId {
        let Some(handles) = &self.handles else {
            return AttemptId::UNTRACKED;
        };
        handles.attempt_started.increment(1);
        match kind {
            AttemptKind::Retry => self.retries += 1,
            AttemptKind::Hedge => self.hedges += 1,
            AttemptKind::Transparent => self.transparent_retries += 1,
        }
        let now = Instant::now();
        if let Some(since) = self.idle_since.take() {
            self.delay += now.saturating_duration_since(since);
        }
        match self.open.iter().position(Option::is_none) {
            Some(slot) => {
                self.open[slot] = Some(now);
                AttemptId(slot as u8)
            }
            None => AttemptId::UNTRACKED,
        }
    }

    /// Attempt `id` ended with `code`. When it was the last in flight, the
    /// call's delay with no attempt starts now.
    pub(crate) fn attempt_ended(&mut self, id: AttemptId, code: Code) {
        let now = Instant::now();
        self.end_attempt(id, code, now);
        if self.open.iter().all(Option::is_none) {
            self.idle_since = Some(now);
        }
    }

    /// Every attempt still in flight but `keep` ended with `code` (hedges
    /// that lost to `keep`, or to a fatal status).
    pub(crate) fn end_other_attempts(&mut self, keep: AttemptId, code: Code) {
        if self.handles.is_none() {
            return;
        }
        let now = Instant::now();
        for slot in 0..MAX_OPEN as u8 {
            if AttemptId(slot) != keep {
                self.end_attempt(AttemptId(slot), code, now);
            }
        }
    }

    fn end_attempt(&mut self, id: AttemptId, code: Code, now: Instant) {
        let (Some(handles), Some(slot)) = (&self.handles, self.open.get_mut(usize::from(id.0)))
        else {
            return;
        };
        if let Some(started) = slot.take() {
            handles
                .attempt_duration(code)
                .record(now.saturating_duration_since(started).as_secs_f64());
        }
    }

    /// A6 throttling refused a retry or hedge.
    pub(crate) fn throttled(&mut self) {
        if let Some(handles) = &self.handles {
            handles.throttled().increment(1);
        }
    }

    /// The retry budget refused a retry or hedge.
    pub(crate) fn budget_exhausted(&mut self) {
        if let Some(handles) = &self.handles {
            handles.budget_exhausted().increment(1);
        }
    }

    /// The call ended with `code` (its status reached the caller, or its
    /// response ended): records it, once. An attempt still in flight ended
    /// with the call, with the same code (a deadline, a cancellation, or
    /// the committed attempt's final status).
    pub(crate) fn finish(&mut self, code: Code) {
        if self.handles.is_none() {
            return;
        }
        let now = Instant::now();
        for slot in 0..MAX_OPEN {
            self.end_attempt(AttemptId(slot as u8), code, now);
        }
        let Some(handles) = self.handles.take() else {
            return;
        };
        if let Some(started) = self.started {
            handles
                .call_duration(code)
                .record(now.saturating_duration_since(started).as_secs_f64());
        }
        if let Some(since) = self.idle_since.take() {
            // Ended with no attempt in flight: dropped or cancelled during
            // a backoff, or surfaced after its last attempt.
            self.delay += now.saturating_duration_since(since);
        }
        // A96: "If there were no retries, 0 is not reported" (and likewise
        // for transparent retries and hedges). It makes no such exception
        // for the delay, which is recorded for every call.
        if self.retries > 0 {
            handles.retries().record(f64::from(self.retries));
        }
        if self.transparent_retries > 0 {
            handles
                .transparent_retries()
                .record(f64::from(self.transparent_retries));
        }
        if self.hedges > 0 {
            handles.hedges().record(f64::from(self.hedges));
        }
        handles.retry_delay.record(self.delay.as_secs_f64());
    }
}

impl Drop for CallMetrics {
    fn drop(&mut self) {
        // Dropped before it ended: the caller dropped the call (or its
        // response body).
        if self.handles.is_some() {
            self.finish(Code::Cancelled);
        }
    }
}
