//! The state every call through one layer shares, and the policy each call
//! resolves to: the leaf the call code reads, so that nothing below the
//! layer needs the public [`RetryLayer`](crate::RetryLayer) itself.

use std::time::Duration;

use crate::body::replay::cap::ChannelBufferCap;
use crate::metrics::LayerMetrics;
use crate::overload::budget::RetryBudget;
use crate::overload::throttle::RetryThrottle;
use crate::policy::config::{HedgingPolicy, ServiceConfig};
use crate::policy::retry::RetryPolicy;
use std::sync::Arc;

/// Where a call's policy comes from.
pub(crate) enum Policies {
    /// One retry policy for every call.
    Fixed(RetryPolicy),
    /// One hedging policy for every call.
    FixedHedging(HedgingPolicy),
    /// Per-method policies from a gRPC service config.
    Config(ServiceConfig),
}

/// The policy and the channel-wide state shared by every call of a layer.
pub(crate) struct LayerState {
    pub(crate) policies: Policies,
    /// Used for methods whose config sets only a timeout.
    pub(crate) no_retries: RetryPolicy,
    pub(crate) throttle: Option<RetryThrottle>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) buffer_cap: Arc<ChannelBufferCap>,
    /// The metrics' labels and cached handles (nothing without the
    /// `metrics` feature).
    pub(crate) metrics: LayerMetrics,
}

/// What applies to one call, resolved once when it starts.
pub(crate) struct CallPolicy<'a> {
    /// The retry policy; for a hedged call, the defaults its shared settings
    /// (replay limit, RetryInfo) come from.
    pub(crate) retry: &'a RetryPolicy,
    /// Set when the call is hedged instead of retried.
    pub(crate) hedging: Option<&'a HedgingPolicy>,
    /// The method config's `timeout`; joins the call's deadline.
    pub(crate) config_timeout: Option<Duration>,
}

impl CallPolicy<'_> {
    /// Whether A6 throttling counts a final `code` (with the `headers` it
    /// came with) as a failure: a code the policy would retry, or a "do not
    /// retry" pushback (for a hedged call: a non-fatal code). Counted so
    /// whether or not the call is committed, as grpc core does.
    pub(crate) fn counts_as_failure(&self, code: tonic::Code, headers: &http::HeaderMap) -> bool {
        match self.hedging {
            Some(hedging) => hedging.non_fatal_codes.contains(code),
            None => {
                self.retry.is_retryable(code, headers)
                    || crate::policy::pushback::server_pushback(headers)
                        == crate::policy::pushback::Pushback::Stop
            }
        }
    }

    /// How long each attempt (retry or hedge) may take.
    pub(crate) fn per_attempt_timeout(&self) -> Option<Duration> {
        match self.hedging {
            Some(hedging) => hedging.per_attempt_timeout,
            None => self.retry.per_attempt_timeout,
        }
    }
}

/// Which of a layer's policies a call uses: cheap to copy into the call's
/// future, which owns the layer state it points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyRef {
    Fixed,
    FixedHedging,
    /// An index into the service config's method configs.
    Config(usize),
}

impl LayerState {
    /// Which policy applies to a call to `/service/method`, or `None` when a
    /// service config has no entry for it (the call then passes straight
    /// through). Allocates nothing.
    pub(crate) fn resolve<B>(&self, request: &http::Request<B>) -> Option<PolicyRef> {
        match &self.policies {
            Policies::Fixed(_) => Some(PolicyRef::Fixed),
            Policies::FixedHedging(_) => Some(PolicyRef::FixedHedging),
            Policies::Config(config) => {
                let (service, method) = service_and_method(request.uri(), request.extensions());
                config
                    .method_config_index(service, method)
                    .map(PolicyRef::Config)
            }
        }
    }

    /// The policy `resolve` pointed to.
    #[inline]
    pub(crate) fn policy(&self, policy: PolicyRef) -> CallPolicy<'_> {
        match (policy, &self.policies) {
            (PolicyRef::Fixed, Policies::Fixed(retry)) => CallPolicy {
                retry,
                hedging: None,
                config_timeout: None,
            },
            (PolicyRef::FixedHedging, Policies::FixedHedging(hedging)) => CallPolicy {
                retry: &self.no_retries,
                hedging: Some(hedging),
                config_timeout: None,
            },
            (PolicyRef::Config(index), Policies::Config(config))
                if index < config.method_configs().len() =>
            {
                let found = &config.method_configs()[index];
                CallPolicy {
                    retry: found.retry.as_ref().unwrap_or(&self.no_retries),
                    hedging: found.hedging.as_ref(),
                    config_timeout: found.timeout,
                }
            }
            // A PolicyRef only ever comes from this layer's own `resolve`;
            // should that ever break, fail safe: no retries.
            _ => CallPolicy {
                retry: &self.no_retries,
                hedging: None,
                config_timeout: None,
            },
        }
    }
}

/// The gRPC service and method of a request: tonic's `GrpcMethod`
/// extension when present, else the `/service/method` URI path. Borrowed,
/// never allocated.
pub(crate) fn service_and_method<'a>(
    uri: &'a http::Uri,
    extensions: &'a http::Extensions,
) -> (&'a str, &'a str) {
    if let Some(m) = extensions.get::<tonic::GrpcMethod<'static>>() {
        return (m.service(), m.method());
    }
    let path = uri.path().trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

#[cfg(test)]
mod tests {
    use http::{Extensions, Uri};

    use super::*;
    use crate::RetryLayer;

    fn request(path: &str) -> http::Request<()> {
        http::Request::builder().uri(path).body(()).unwrap()
    }

    #[test]
    fn service_and_method_come_from_the_extension_first() {
        let mut r = request("/a.B/C");
        assert_eq!(service_and_method(r.uri(), r.extensions()), ("a.B", "C"));
        r.extensions_mut()
            .insert(tonic::GrpcMethod::new("x.Y", "Z"));
        assert_eq!(service_and_method(r.uri(), r.extensions()), ("x.Y", "Z"));
        assert_eq!(
            service_and_method(&Uri::from_static("/"), &Extensions::new()),
            ("", "")
        );
        assert_eq!(
            service_and_method(&Uri::from_static("/only"), &Extensions::new()),
            ("only", "")
        );
    }

    #[test]
    fn config_resolution_passes_unmatched_methods_through() {
        let config: ServiceConfig = r#"{"methodConfig": [
            {"name": [{"service": "a.B", "method": "Retry"}],
             "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.1s", "maxBackoff": "1s",
                             "backoffMultiplier": 2, "retryableStatusCodes": [14]}},
            {"name": [{"service": "a.B", "method": "TimeoutOnly"}], "timeout": "2s"}]}"#
            .parse()
            .unwrap();
        let layer = RetryLayer::from_service_config(config);
        let state = &layer.state;
        let p = state.policy(state.resolve(&request("/a.B/Retry")).unwrap());
        assert_eq!(p.retry.max_attempts(), 3);
        assert_eq!(p.config_timeout, None);
        let p = state.policy(state.resolve(&request("/a.B/TimeoutOnly")).unwrap());
        assert_eq!(p.retry.max_attempts(), 1);
        assert_eq!(p.config_timeout, Some(Duration::from_secs(2)));
        assert!(state.resolve(&request("/a.B/Other")).is_none());
        assert!(layer.throttle().is_none());
    }
}
