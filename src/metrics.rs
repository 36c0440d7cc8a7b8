//! gRFC A96 retry metrics, through the `metrics` facade (feature `metrics`).
//!
//! Per call, once it ends, as A96 specifies: `grpc.client.call.retries`,
//! `grpc.client.call.transparent_retries` and `grpc.client.call.hedges`
//! (histograms of counts, not reported when zero) and `grpc.client.call.retry_delay` (seconds spent
//! waiting with no attempt in flight). Per decision: counters
//! `tonic_retry.throttled` and `tonic_retry.budget_exhausted`. Labels:
//! `grpc.method` and `grpc.status`. Without the feature every function here
//! compiles to nothing, so the happy path pays nothing.

use std::time::Duration;

/// What one call did, recorded when it ends.
pub(crate) struct CallMetrics {
    #[cfg(feature = "metrics")]
    method: String,
    #[cfg(feature = "metrics")]
    retries: u32,
    #[cfg(feature = "metrics")]
    transparent_retries: u32,
    #[cfg(feature = "metrics")]
    hedges: u32,
    #[cfg(feature = "metrics")]
    delay: Duration,
}

#[cfg(not(feature = "metrics"))]
impl CallMetrics {
    pub(crate) fn new(_method: &str) -> Self {
        CallMetrics {}
    }
    pub(crate) fn retry(&mut self, _delay: Duration) {}
    pub(crate) fn transparent_retry(&mut self) {}
    pub(crate) fn hedges(&mut self, _hedges: u32) {}
    pub(crate) fn throttled(&mut self) {}
    pub(crate) fn budget_exhausted(&mut self) {}
    pub(crate) fn finish(&self, _outcome: &'static str) {}
}

#[cfg(feature = "metrics")]
impl CallMetrics {
    pub(crate) fn new(method: &str) -> Self {
        CallMetrics {
            // Owned because labels outlive the request; only with the
            // feature on.
            method: method.to_owned(),
            retries: 0,
            transparent_retries: 0,
            hedges: 0,
            delay: Duration::ZERO,
        }
    }

    fn method(&self) -> String {
        self.method.clone()
    }

    pub(crate) fn retry(&mut self, delay: Duration) {
        self.retries += 1;
        self.delay += delay;
    }

    pub(crate) fn transparent_retry(&mut self) {
        self.transparent_retries += 1;
    }

    /// Hedges sent beyond the first attempt, recorded when the call ends.
    pub(crate) fn hedges(&mut self, hedges: u32) {
        self.hedges = hedges;
    }

    pub(crate) fn throttled(&mut self) {
        metrics::counter!("tonic_retry.throttled", "grpc.method" => self.method()).increment(1);
    }

    pub(crate) fn budget_exhausted(&mut self) {
        metrics::counter!("tonic_retry.budget_exhausted", "grpc.method" => self.method())
            .increment(1);
    }

    pub(crate) fn finish(&self, outcome: &'static str) {
        if self.retries == 0 && self.transparent_retries == 0 && self.hedges == 0 {
            return;
        }
        let labels = [
            ("grpc.method", self.method()),
            ("grpc.status", outcome.to_owned()),
        ];
        if self.retries > 0 {
            metrics::histogram!("grpc.client.call.retries", &labels).record(self.retries as f64);
            metrics::histogram!("grpc.client.call.retry_delay", &labels)
                .record(self.delay.as_secs_f64());
        }
        if self.hedges > 0 {
            metrics::histogram!("grpc.client.call.hedges", &labels).record(self.hedges as f64);
        }
        if self.transparent_retries > 0 {
            metrics::histogram!("grpc.client.call.transparent_retries", &labels)
                .record(self.transparent_retries as f64);
        }
    }
}
