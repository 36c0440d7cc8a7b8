//! [`CircuitBreakerLayer`]: stop calling a backend that keeps failing.
//!
//! Retries help with a failure that is brief; when a backend is down, they
//! only add load and make every caller wait through its backoffs. A circuit
//! breaker watches the calls' outcomes and, once too many fail, fails new
//! calls at once, without sending them, for a while:
//!
//! * **Closed** (normal): calls go through. Outcomes are counted in a sliding
//!   time window. Once the window holds at least `minimum_calls` outcomes and
//!   the share of failures reaches `failure_ratio`, the breaker opens.
//! * **Open**: calls fail at once with UNAVAILABLE, never reaching the inner
//!   service. After `break_duration` the breaker is half-open.
//! * **Half-open**: up to `half_open_probes` calls go through as trials; any
//!   others fail at once. If all the trials succeed the breaker closes, with
//!   an empty window; the first trial that fails opens it again for another
//!   `break_duration`.
//!
//! Only codes in `failure_codes` (system errors: UNAVAILABLE,
//! DEADLINE_EXCEEDED, ABORTED by default) count as failures. Anything else,
//! including logic errors such as INVALID_ARGUMENT, shows that the backend is
//! up and answering, so it counts as a success. A call that is dropped before
//! it ends counts as neither; a dropped trial call frees its place for
//! another.
//!
//! A call's outcome only counts toward the state in which the call started:
//! a slow call that was sent before the breaker opened does not count against
//! (or for) the trials that follow.
//!
//! # Cost
//!
//! Admitting a call while closed is one atomic load. Recording an outcome
//! takes a short `Mutex` (a few counter updates); so do every state change
//! and admission while half-open.

mod config;
mod layer;
mod state;

pub use self::config::{BreakerConfig, BreakerConfigBuilder, BreakerError, DEFAULT_FAILURE_CODES};
pub use self::layer::{BreakerEnd, BreakerFuture, CircuitBreaker, CircuitBreakerLayer};
pub use self::state::BreakerState;
