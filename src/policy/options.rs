//! Per-call options, set in the `tonic::Request` extensions.
//!
//! The policy decides for every call of a method; [`CallOptions`] lets one
//! call opt out or narrow it, without building another client.
//!
//! ```
//! use tonic_retry::CallOptions;
//!
//! let mut request = tonic::Request::new(());
//! request.extensions_mut().insert(CallOptions::new().max_attempts(2));
//!
//! // A payment: retry only when the server certainly never saw it.
//! let mut request = tonic::Request::new(());
//! request.extensions_mut().insert(CallOptions::new().non_idempotent());
//!
//! // No retries at all for this call.
//! let mut request = tonic::Request::new(());
//! request.extensions_mut().insert(CallOptions::new().no_retries());
//! ```
//!
//! To cancel a call, put a `tokio_util::sync::CancellationToken` in the
//! extensions the same way; cancelling it ends the call with CANCELLED.

/// Options for one call; put them in the request's extensions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallOptions {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) non_idempotent: bool,
}

impl CallOptions {
    /// No overrides: the policy applies as configured.
    pub fn new() -> Self {
        CallOptions::default()
    }

    /// Never retry this call (the same as `max_attempts(1)`). Transparent
    /// retries of requests the server never saw still happen.
    pub fn no_retries(self) -> Self {
        self.max_attempts(1)
    }

    /// Overrides the policy's maximum number of attempts for this call.
    /// The policy's cap (5 by default) still applies; 0 counts as 1.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts.max(1));
        self
    }

    /// The call is not idempotent: retry it only when the server certainly
    /// never processed it (connection failures, and streams the server
    /// refused before its application saw them).
    pub fn non_idempotent(mut self) -> Self {
        self.non_idempotent = true;
        self
    }
}
