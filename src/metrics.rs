//! gRFC A96 retry metrics, through the `metrics` facade (feature `metrics`).
//!
//! Per call, once it ends, as A96 specifies: `grpc.client.call.retries`,
//! `grpc.client.call.transparent_retries` and `grpc.client.call.hedges`
//! (histograms of counts, not reported when zero) and
//! `grpc.client.call.retry_delay` (seconds with no attempt in flight). Per
//! decision: counters `tonic_retry.throttled` and
//! `tonic_retry.budget_exhausted`. Labels: `grpc.method`
//! (`pkg.Service/Method`) and `grpc.status` (the final code: for a
//! committed call, the status its response ends with, recorded when it
//! ends). A call dropped by its caller, or whose response body is dropped
//! before its end, is recorded as `CANCELLED`. Without the feature every
//! function here compiles to nothing, so the happy path pays nothing.

use std::time::Duration;

/// What one call did, recorded when it ends.
pub(crate) struct CallMetrics {
    #[cfg(feature = "metrics")]
    inner: enabled::Recorded,
}

#[cfg(not(feature = "metrics"))]
impl CallMetrics {
    /// Whether anything is recorded (the `metrics` feature).
    pub(crate) const ENABLED: bool = false;

    pub(crate) fn new(_path: &str) -> Self {
        CallMetrics {}
    }

    pub(crate) fn retry_scheduled(&mut self, _delay: Duration) {}
    pub(crate) fn attempt_started(&mut self) {}
    pub(crate) fn transparent_retry(&mut self) {}
    pub(crate) fn hedges(&mut self, _hedges: u32) {}
    pub(crate) fn throttled(&mut self) {}
    pub(crate) fn budget_exhausted(&mut self) {}
    pub(crate) fn finish(&self, _outcome: &'static str) {}
}

#[cfg(feature = "metrics")]
impl CallMetrics {
    /// Whether anything is recorded (the `metrics` feature).
    pub(crate) const ENABLED: bool = true;

    pub(crate) fn new(path: &str) -> Self {
        CallMetrics {
            inner: enabled::Recorded::new(path),
        }
    }

    /// A retry was decided; the time until the next attempt starts is
    /// retry delay.
    pub(crate) fn retry_scheduled(&mut self, _delay: Duration) {
        self.inner.retries += 1;
        self.inner.idle_since = Some(tokio::time::Instant::now());
    }

    pub(crate) fn attempt_started(&mut self) {
        if let Some(since) = self.inner.idle_since.take() {
            self.inner.delay += since.elapsed();
        }
    }

    pub(crate) fn transparent_retry(&mut self) {
        self.inner.transparent_retries += 1;
    }

    /// Hedges sent beyond the first attempt.
    pub(crate) fn hedges(&mut self, hedges: u32) {
        self.inner.hedges = hedges;
    }

    pub(crate) fn throttled(&mut self) {
        metrics::counter!("tonic_retry.throttled", "grpc.method" => self.inner.method.clone())
            .increment(1);
    }

    pub(crate) fn budget_exhausted(&mut self) {
        metrics::counter!("tonic_retry.budget_exhausted", "grpc.method" => self.inner.method.clone())
            .increment(1);
    }

    pub(crate) fn finish(&self, outcome: &'static str) {
        self.inner.record(outcome);
    }
}

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    pub(super) struct Recorded {
        pub(super) method: String,
        pub(super) retries: u32,
        pub(super) transparent_retries: u32,
        pub(super) hedges: u32,
        pub(super) delay: Duration,
        pub(super) idle_since: Option<tokio::time::Instant>,
        /// Set once the call's outcome is recorded; `Drop` records the rest.
        recorded: AtomicBool,
    }

    impl Recorded {
        pub(super) fn new(path: &str) -> Self {
            Recorded {
                // A66 names methods `pkg.Service/Method`, without the slash.
                method: path.trim_start_matches('/').to_owned(),
                retries: 0,
                transparent_retries: 0,
                hedges: 0,
                delay: Duration::ZERO,
                idle_since: None,
                recorded: AtomicBool::new(false),
            }
        }

        pub(super) fn record(&self, outcome: &'static str) {
            if self.recorded.swap(true, Ordering::Relaxed) {
                return;
            }
            if self.retries == 0 && self.transparent_retries == 0 && self.hedges == 0 {
                return;
            }
            let mut delay = self.delay;
            if let Some(since) = self.idle_since {
                delay += since.elapsed();
            }
            let labels = [
                ("grpc.method", self.method.clone()),
                ("grpc.status", outcome.to_owned()),
            ];
            if self.retries > 0 {
                metrics::histogram!("grpc.client.call.retries", &labels)
                    .record(f64::from(self.retries));
                metrics::histogram!("grpc.client.call.retry_delay", &labels)
                    .record(delay.as_secs_f64());
            }
            if self.hedges > 0 {
                metrics::histogram!("grpc.client.call.hedges", &labels)
                    .record(f64::from(self.hedges));
            }
            if self.transparent_retries > 0 {
                metrics::histogram!("grpc.client.call.transparent_retries", &labels)
                    .record(f64::from(self.transparent_retries));
            }
        }
    }

    impl Drop for Recorded {
        fn drop(&mut self) {
            // The caller dropped the call before it finished.
            self.record("CANCELLED");
        }
    }
}
