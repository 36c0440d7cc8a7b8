//! [`RetryLayer`]: applies a retry policy to a service.

use std::sync::Arc;

use tower_layer::Layer;

use crate::policy::RetryPolicy;
use crate::service::Retry;

/// A tower [`Layer`] that retries gRPC calls according to a [`RetryPolicy`].
///
/// Put it directly above the `Channel` and below tonic's generated client:
///
/// ```no_run
/// use tonic::transport::Endpoint;
/// use tonic_retry::{RetryLayer, RetryPolicy};
/// use tower::ServiceBuilder;
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = Endpoint::from_static("http://127.0.0.1:50051").connect_lazy();
/// let svc = ServiceBuilder::new()
///     .layer(RetryLayer::new(RetryPolicy::default()))
///     .service(channel);
/// // let mut client = GreeterClient::new(svc);
/// # let _ = svc;
/// # Ok(())
/// # }
/// ```
///
/// Clones share the policy, so one layer serves any number of services.
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
}

impl RetryLayer {
    /// A layer applying `policy` to every call.
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy: Arc::new(policy),
        }
    }

    /// The policy applied to every call.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry::new(inner, self.policy.clone())
    }
}
