//! [`CallMetrics`]: what one call records, and when (feature `metrics`).
//!
//! The call tells it when each attempt starts and ends and when the call
//! ends; it keeps the counts and clocks A66 and A96 ask for and records
//! them into the method's cached handles. Every clock is tokio's, so tests
//! on a paused clock see exact durations.
//!
//! It travels with the call, into the committed response's body, and is
//! moved several times on the happy path, so it is kept small: times are
//! nanoseconds after the call's start (one clock value, not one per
//! attempt), and counts are bytes (A6 allows 5 attempts).

use std::sync::Arc;

use tokio::time::Instant;
use tonic::Code;

use super::attempt::{AttemptId, AttemptKind};
use super::handles::{HandlesMemo, LayerMetrics, MethodHandles};

/// Attempts of one call that can be in flight at once: A6 caps a hedged
/// call at 5 attempts. An attempt past this (a raised cap) is counted as
/// started but its duration is not recorded.
const MAX_OPEN: usize = 5;

/// No time: `idle_since` while an attempt is in flight.
const NONE: u64 = u64::MAX;

/// What one call did, recorded when it ends.
pub(crate) struct CallMetrics {
    /// `None` once the call is recorded (or for the empty metrics of a
    /// pooled kit).
    handles: Option<Arc<MethodHandles>>,
    started: Option<Instant>,
    /// When each attempt in flight started (ns after `started`), by
    /// [`AttemptId`]; meaningful where `open_mask` has the slot's bit.
    open: [u64; MAX_OPEN],
    /// Which slots of `open` hold an attempt in flight, so that ending
    /// them visits only those (usually one).
    open_mask: u8,
    /// Since when no attempt has been in flight (ns after `started`), or
    /// [`NONE`] while one is.
    idle_since: u64,
    /// Time with no attempt in flight so far, in ns.
    delay: u64,
    retries: u8,
    transparent_retries: u8,
    hedges: u8,
}

impl CallMetrics {
    /// Whether anything is recorded (the `metrics` feature).
    pub(crate) const ENABLED: bool = true;

    /// Metrics that record nothing: a pooled kit's, between calls.
    pub(crate) const fn inactive() -> Self {
        CallMetrics {
            handles: None,
            started: None,
            open: [0; MAX_OPEN],
            open_mask: 0,
            idle_since: NONE,
            delay: 0,
            retries: 0,
            transparent_retries: 0,
            hedges: 0,
        }
    }

    /// A call with `grpc_method` (its `tonic::GrpcMethod`, if any) to
    /// `path` starts now, and so does its first attempt
    /// ([`AttemptId::FIRST`]): one clock read for both. Its handles come
    /// from `memo` if it holds them.
    pub(crate) fn start(
        layer: &LayerMetrics,
        memo: &mut HandlesMemo,
        grpc_method: Option<&tonic::GrpcMethod<'static>>,
        path: &str,
    ) -> Self {
        let handles = layer.handles(memo, grpc_method, path);
        handles.attempt_started.increment(1);
        CallMetrics {
            handles: Some(handles),
            started: Some(Instant::now()),
            // The first attempt, in slot 0, started with the call.
            open_mask: 1,
            ..CallMetrics::inactive()
        }
    }

    /// Nanoseconds from the call's start to now.
    fn now(&self) -> u64 {
        let Some(started) = self.started else {
            return 0;
        };
        let elapsed = Instant::now().saturating_duration_since(started).as_nanos();
        // Over 584 years would be NONE: stop just short of it.
        u64::try_from(elapsed).unwrap_or(NONE - 1).min(NONE - 1)
    }

    /// Another attempt starts now.
    pub(crate) fn attempt_started(&mut self, kind: AttemptKind) -> AttemptId {
        let Some(handles) = &self.handles else {
            return AttemptId::UNTRACKED;
        };
        handles.attempt_started.increment(1);
        let count = match kind {
            AttemptKind::Retry => &mut self.retries,
            AttemptKind::Hedge => &mut self.hedges,
            AttemptKind::Transparent => &mut self.transparent_retries,
        };
        *count = count.saturating_add(1);
        let now = self.now();
        if self.idle_since != NONE {
            self.delay += now.saturating_sub(self.idle_since);
            self.idle_since = NONE;
        }
        let slot = (!self.open_mask).trailing_zeros() as usize;
        match self.open.get_mut(slot) {
            Some(started) => {
                *started = now;
                self.open_mask |= 1 << slot;
                AttemptId(slot as u8)
            }
            None => AttemptId::UNTRACKED,
        }
    }

    /// Attempt `id` ended with `code`. When it was the last in flight, the
    /// call's delay with no attempt starts now.
    pub(crate) fn attempt_ended(&mut self, id: AttemptId, code: Code) {
        if self.handles.is_none() {
            return;
        }
        let now = self.now();
        self.end_attempt(id, code, now);
        if self.open_mask == 0 {
            self.idle_since = now;
        }
    }

    /// Every attempt still in flight but `keep` ended with `code` (hedges
    /// that lost to `keep`, or to a fatal status).
    pub(crate) fn end_other_attempts(&mut self, keep: AttemptId, code: Code) {
        if self.handles.is_none() {
            return;
        }
        let now = self.now();
        self.end_attempts(code, now, keep);
    }

    /// Ends every attempt in flight but `keep` with `code`, `now`.
    fn end_attempts(&mut self, code: Code, now: u64, keep: AttemptId) {
        let mut open = self.open_mask;
        while open != 0 {
            let slot = open.trailing_zeros() as u8;
            open &= open - 1;
            if AttemptId(slot) != keep {
                self.end_attempt(AttemptId(slot), code, now);
            }
        }
    }

    fn end_attempt(&mut self, id: AttemptId, code: Code, now: u64) {
        let bit = 1u8.checked_shl(u32::from(id.0)).unwrap_or(0);
        if self.open_mask & bit == 0 {
            return;
        }
        self.open_mask &= !bit;
        let (Some(handles), Some(&started)) = (&self.handles, self.open.get(usize::from(id.0)))
        else {
            return;
        };
        handles
            .attempt_duration(code)
            .record(seconds(now.saturating_sub(started)));
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
        let now = self.now();
        self.end_attempts(code, now, AttemptId::UNTRACKED);
        let Some(handles) = self.handles.take() else {
            return;
        };
        handles.call_duration(code).record(seconds(now));
        if self.idle_since != NONE {
            // Ended with no attempt in flight: dropped or cancelled during
            // a backoff, or surfaced after its last attempt.
            self.delay += now.saturating_sub(self.idle_since);
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
        handles.retry_delay.record(seconds(self.delay));
    }
}

/// Nanoseconds as the seconds every duration is recorded in.
fn seconds(nanos: u64) -> f64 {
    nanos as f64 / 1e9
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    /// Runs `calls` on a paused clock with an in-memory recorder; returns
    /// each histogram's values by name and `grpc.status`.
    fn recorded(calls: impl AsyncFnOnce(&LayerMetrics)) -> Vec<(String, String, Vec<f64>)> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        ::metrics::with_local_recorder(&recorder, || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
                .block_on(calls(&LayerMetrics::new(None, false)));
        });
        let mut seen: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let DebugValue::Histogram(values) = value else {
                    return None;
                };
                let status = key
                    .key()
                    .labels()
                    .find(|l| l.key() == "grpc.status")
                    .map_or(String::new(), |l| l.value().to_owned());
                let values = values.into_iter().map(|v| v.into_inner()).collect();
                Some((key.key().name().to_owned(), status, values))
            })
            .collect();
        seen.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        seen
    }

    fn start(layer: &LayerMetrics) -> CallMetrics {
        let method = tonic::GrpcMethod::new("pkg.Svc", "M");
        CallMetrics::start(layer, &mut HandlesMemo::default(), Some(&method), "")
    }

    async fn wait(ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    #[test]
    fn the_delay_is_only_the_time_with_no_attempt_in_flight() {
        let seen = recorded(async |layer| {
            let mut call = start(layer); // t = 0: attempt 1
            wait(10).await;
            let second = call.attempt_started(AttemptKind::Hedge); // t = 10
            wait(10).await;
            call.attempt_ended(AttemptId::FIRST, Code::Unavailable); // t = 20
            wait(10).await;
            call.attempt_ended(second, Code::Unavailable); // t = 30: idle
            wait(20).await;
            call.attempt_started(AttemptKind::Hedge); // t = 50
            wait(10).await;
            call.finish(Code::Ok); // t = 60, the third attempt with it
        });
        let expected = [
            ("grpc.client.attempt.duration", "OK", vec![0.01]),
            (
                "grpc.client.attempt.duration",
                "UNAVAILABLE",
                vec![0.02, 0.02],
            ),
            ("grpc.client.call.duration", "OK", vec![0.06]),
            ("grpc.client.call.hedges", "", vec![2.0]),
            ("grpc.client.call.retry_delay", "", vec![0.02]),
        ];
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(n, s, v)| (n.to_owned(), s.to_owned(), v))
            .collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_call_dropped_unfinished_ends_cancelled_and_records_once() {
        let seen = recorded(async |layer| {
            let mut finished = start(layer);
            finished.finish(Code::Ok);
            finished.finish(Code::Internal); // no second record
            drop(finished); // nor a third
            let dropped = start(layer);
            wait(5).await;
            drop(dropped);
        });
        let calls: Vec<_> = seen
            .iter()
            .filter(|(name, ..)| name == "grpc.client.call.duration")
            .map(|(_, status, values)| (status.as_str(), values.clone()))
            .collect();
        assert_eq!(calls, [("CANCELLED", vec![0.005]), ("OK", vec![0.0])]);
    }
}
