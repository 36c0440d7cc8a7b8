//! gRFC A6 client retries for [tonic]: a tower [`Layer`](tower_layer::Layer)
//! that sits under tonic's generated gRPC clients.
//!
//! ```no_run
//! use std::time::Duration;
//! use tonic::transport::Endpoint;
//! use tonic_retry::{RetryLayer, RetryPolicy};
//! use tower::ServiceBuilder;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let channel = Endpoint::from_static("http://127.0.0.1:50051").connect().await?;
//! let policy = RetryPolicy::builder()
//!     .max_attempts(4)
//!     .initial_backoff(Duration::from_millis(100))
//!     .max_backoff(Duration::from_secs(1))
//!     .backoff_multiplier(2.0)
//!     .build()?;
//! let svc = ServiceBuilder::new().layer(RetryLayer::new(policy)).service(channel);
//! // let mut client = GreeterClient::new(svc);   // any generated client
//! # let _ = svc;
//! # Ok(())
//! # }
//! ```
//!
//! A request flows through the crate in one direction:
//! [`layer`] → [`service`] → attempt loop → [`replay`] body → inner channel →
//! [`classify`](crate::code_name) → backoff or surface.
//!
//! What the layer guarantees:
//!
//! * **Classification.** Only uncommitted failures whose code the policy
//!   calls retryable are retried (default: UNAVAILABLE, DEADLINE_EXCEEDED,
//!   ABORTED). Response headers commit the call.
//! * **Backoff.** gRPC's own schedule: `min(initial × multiplier^(n-1), max)`
//!   with ±20 % jitter. Waits run on tokio's timer (millisecond granularity),
//!   so `tokio::time::pause()` and simulated clocks drive them; the layer
//!   starts no thread.
//! * **Bounded server delays.** A server's pushback or `RetryInfo` delay
//!   above [`RetryPolicyBuilder::max_server_delay`] (default 30 s) surfaces
//!   the status at once; nothing a server or a setting supplies can
//!   overflow the clock or panic.
//! * **One deadline** across all attempts, propagated to the server through
//!   `grpc-timeout`, surfaced as DEADLINE_EXCEEDED.
//! * **Cancellation.** Dropping the call stops it; a
//!   [`CancellationToken`](tokio_util::sync::CancellationToken) in the request
//!   extensions ends it with CANCELLED.
//! * **Unchanged final errors**: code, message, details and metadata.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

// The crate, one concern per folder (see the README's design map); a
// request flows down this list, and no module uses one above it.
mod body;
mod call;
mod classify;
pub mod deadline;
pub mod layer;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod overload;
mod policy;
mod state;

// The public module paths, where users find them.
pub use body::replay;
pub use body::replay::cap as buffer_cap;
pub use body::response as response_body;
pub use call::service;
pub use overload::{breaker, budget};
pub use policy::{config, pushback};

pub use body::replay::cap::{ChannelBufferCap, DEFAULT_CHANNEL_BUFFER_LIMIT};
pub use body::response::{OnEnd, ResponseBody};
pub use call::GRPC_PREVIOUS_RPC_ATTEMPTS;
pub use call::end::CallEnd;
pub use call::future::ResponseFuture;
pub use call::service::Retry;
pub use classify::code_name;
pub use layer::{RetryLayer, RetryLayerBuilder};
pub use overload::breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerEnd, BreakerError, BreakerFuture, BreakerState,
    CircuitBreaker, CircuitBreakerLayer,
};
pub use overload::budget::{BudgetError, RetryBudget};
pub use overload::throttle::{RetryThrottle, ThrottleError};
pub use policy::codes::CodeSet;
pub use policy::config::{
    ConfigError, HedgingPolicy, MethodConfig, RetryThrottling, ServiceConfig,
};
pub use policy::options::CallOptions;
pub use policy::retry::{
    Classifier, DEFAULT_MAX_ATTEMPTS_CAP, DEFAULT_MAX_SERVER_DELAY, DEFAULT_REPLAY_LIMIT,
    DEFAULT_RETRYABLE_CODES, Jitter, PolicyError, RetryPolicy, RetryPolicyBuilder,
};

/// The error type of [`Retry`]: whatever the inner service returned, or a
/// boxed [`tonic::Status`] that the layer produced.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[cfg(feature = "testing")]
pub mod testing;
