//! [`RetryLayer`]: the policy and the channel-wide state that every call
//! through one layer shares.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::body::replay::cap::{ChannelBufferCap, DEFAULT_CHANNEL_BUFFER_LIMIT};
use crate::call::service::Retry;
use crate::metrics::LayerMetrics;
use crate::overload::budget::RetryBudget;
use crate::overload::throttle::RetryThrottle;
use crate::policy::config::{HedgingPolicy, ServiceConfig};
use crate::policy::retry::RetryPolicy;
use crate::state::{LayerState, Policies};

/// A tower [`Layer`] that retries gRPC calls.
///
/// Put it directly above the `Channel` and below tonic's generated client:
///
/// ```no_run
/// use tonic::transport::Endpoint;
/// use tonic_retry::{RetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// let channel = Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(channel);
/// // let mut client = GreeterClient::new(svc);
/// # let _ = svc;
/// ```
///
/// All services made by one layer (and all their clones) share its state:
/// the throttling bucket, the retry budget and the replay buffer cap are per
/// layer, which is per channel when the layer wraps one channel, as A6
/// specifies.
#[derive(Clone)]
pub struct RetryLayer {
    pub(crate) state: Arc<LayerState>,
}

impl RetryLayer {
    /// A layer applying `policy` to every call, with no throttling or budget
    /// and the default 16 MiB replay buffer cap.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::builder(policy).build()
    }

    /// A layer with per-method policies from a gRPC service config; its
    /// `retryThrottling`, if any, enables throttling. Methods the config does
    /// not match pass straight through.
    ///
    /// ```
    /// use tonic_retry::{RetryLayer, ServiceConfig};
    ///
    /// let config: ServiceConfig = r#"{"methodConfig": [{
    ///     "name": [{"service": "helloworld.Greeter"}],
    ///     "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "1s",
    ///                     "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}],
    ///   "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}"#.parse()?;
    /// let layer = RetryLayer::from_service_config(config);
    /// assert!(layer.throttle().is_some());
    /// # Ok::<(), tonic_retry::ConfigError>(())
    /// ```
    pub fn from_service_config(config: ServiceConfig) -> Self {
        RetryLayerBuilder::from_service_config(config).build()
    }

    /// A builder for a layer with throttling, a retry budget or a different
    /// buffer cap.
    pub fn builder(policy: RetryPolicy) -> RetryLayerBuilder {
        RetryLayerBuilder::new(Policies::Fixed(policy))
    }

    /// A layer that hedges every call (gRFC A6 `hedgingPolicy`): up to
    /// `max_attempts` copies, `hedging_delay` apart; the first OK or fatal
    /// answer wins and the others are cancelled.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tonic::Code;
    /// use tonic_retry::{HedgingPolicy, RetryLayer};
    ///
    /// let layer = RetryLayer::hedging(HedgingPolicy {
    ///     max_attempts: 2,
    ///     hedging_delay: Duration::from_millis(20), // about the p90 latency
    ///     non_fatal_codes: [Code::Unavailable].into_iter().collect(),
    ///     per_attempt_timeout: None,
    /// });
    /// # let _ = layer;
    /// ```
    pub fn hedging(policy: HedgingPolicy) -> Self {
        Self::hedging_builder(policy).build()
    }

    /// A builder for a hedging layer with throttling, a budget or a
    /// different buffer cap.
    pub fn hedging_builder(policy: HedgingPolicy) -> RetryLayerBuilder {
        RetryLayerBuilder::new(Policies::FixedHedging(policy))
    }

    /// The policy applied to every call, if the layer has a single retry
    /// policy.
    pub fn policy(&self) -> Option<&RetryPolicy> {
        match &self.state.policies {
            Policies::Fixed(policy) => Some(policy),
            Policies::FixedHedging(_) | Policies::Config(_) => None,
        }
    }

    /// The A6 throttling bucket, if throttling is on.
    pub fn throttle(&self) -> Option<&RetryThrottle> {
        self.state.throttle.as_ref()
    }

    /// The retry budget, if one is set.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.state.budget.as_ref()
    }

    /// Bytes held for replay right now by all calls through this layer.
    pub fn buffered_bytes(&self) -> usize {
        self.state.buffer_cap.used()
    }

    /// The channel-wide replay buffer cap, in bytes.
    pub fn buffer_limit(&self) -> usize {
        self.state.buffer_cap.limit()
    }
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("policy", &self.policy())
            .field("throttle", &self.state.throttle)
            .field("buffer_cap", &self.state.buffer_cap)
            .finish_non_exhaustive()
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.state.clone())
    }
}

/// Builds a [`RetryLayer`] with overload protection.
///
/// ```
/// use std::time::Duration;
/// use tonic_retry::{RetryBudget, RetryLayer, RetryPolicy, RetryThrottle};
///
/// let layer = RetryLayer::builder(RetryPolicy::default())
///     .throttle(RetryThrottle::new(10_000, 100)?)      // A6: maxTokens 10, tokenRatio 0.1
///     .budget(RetryBudget::default())                   // at most 20 % retries
///     .buffer_limit(8 << 20)                            // 8 MiB of replay buffers in all
///     .build();
/// # let _ = layer;
/// # Ok::<(), tonic_retry::ThrottleError>(())
/// ```
pub struct RetryLayerBuilder {
    policies: Policies,
    throttle: Option<RetryThrottle>,
    budget: Option<RetryBudget>,
    buffer_limit: usize,
    #[cfg(feature = "metrics")]
    target: Option<String>,
    #[cfg(feature = "metrics")]
    generic_method_names: bool,
}

impl RetryLayerBuilder {
    fn new(policies: Policies) -> Self {
        RetryLayerBuilder {
            policies,
            throttle: None,
            budget: None,
            buffer_limit: DEFAULT_CHANNEL_BUFFER_LIMIT,
            #[cfg(feature = "metrics")]
            target: None,
            #[cfg(feature = "metrics")]
            generic_method_names: false,
        }
    }

    /// Per-method policies from a gRPC service config, with throttling from
    /// its `retryThrottling` if present.
    pub fn from_service_config(config: ServiceConfig) -> Self {
        let throttle = config.retry_throttling().map(|t| {
            RetryThrottle::new(t.max_milli_tokens, t.token_ratio_milli)
                .expect("the service config validated maxTokens and tokenRatio")
        });
        let mut builder = RetryLayerBuilder::new(Policies::Config(config));
        builder.throttle = throttle;
        builder
    }

    /// Enables A6 retry throttling with this bucket (replacing any from the
    /// service config).
    pub fn throttle(mut self, throttle: RetryThrottle) -> Self {
        self.throttle = Some(throttle);
        self
    }

    /// Limits retries (and hedges) to a share of recent requests.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The most bytes all in-flight calls may hold for replay together
    /// (default 16 MiB). A call that finds the cap full is sent unbuffered
    /// and is not retried.
    pub fn buffer_limit(mut self, bytes: usize) -> Self {
        self.buffer_limit = bytes;
        self
    }

    /// The `grpc.target` label of this layer's metrics (feature
    /// `metrics`): the target of the channel it wraps, in gRFC A66's
    /// canonical form, the URI with its scheme, `scheme://[authority]/path`:
    /// `dns:///api.example.com:443` for a name resolved through DNS,
    /// `unix:///run/api.sock`, `xds:///helloworld:8000`. Without it the
    /// label is `unknown`. A layer cannot read it from the channel beneath
    /// it, which does not expose it.
    ///
    /// ```
    /// # use tonic_retry::{RetryLayer, RetryPolicy};
    /// let layer = RetryLayer::builder(RetryPolicy::default())
    ///     .target("dns:///api.example.com:443")
    ///     .build();
    /// # let _ = layer;
    /// ```
    #[cfg(feature = "metrics")]
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }

    /// Records the `grpc.method` of calls the generated code did not name
    /// (no `tonic::GrpcMethod` extension: raw paths, as a proxy or probe
    /// sends them) by their path, `pkg.Service/Method`, instead of `other`
    /// (feature `metrics`). Off by default, as gRFC A66 asks: whoever
    /// chooses the paths then chooses how many series there are.
    #[cfg(feature = "metrics")]
    pub fn generic_method_names(mut self, record: bool) -> Self {
        self.generic_method_names = record;
        self
    }

    /// The layer.
    pub fn build(self) -> RetryLayer {
        RetryLayer {
            state: Arc::new(LayerState {
                policies: self.policies,
                no_retries: RetryPolicy::builder()
                    .max_attempts(1)
                    .build()
                    .expect("one attempt is a valid policy"),
                throttle: self.throttle,
                budget: self.budget,
                buffer_cap: Arc::new(ChannelBufferCap::new(self.buffer_limit)),
                #[cfg(feature = "metrics")]
                metrics: LayerMetrics::new(self.target, self.generic_method_names),
                #[cfg(not(feature = "metrics"))]
                metrics: LayerMetrics::new(),
            }),
        }
    }
}

impl fmt::Debug for RetryLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayerBuilder")
            .field("throttle", &self.throttle)
            .field("buffer_limit", &self.buffer_limit)
            .finish_non_exhaustive()
    }
}
