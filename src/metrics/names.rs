//! The names, units, label keys and recommended buckets of every metric the
//! layer records, as gRFC A66 and A96 define them (re-exported by the
//! `metrics` module, whose documentation shows how to apply the buckets).

/// `grpc.client.attempt.started` (A66): counter of attempts started,
/// transparent retries included. Unit [`UNIT_ATTEMPT`]; labels
/// [`METHOD`], [`TARGET`].
pub const CLIENT_ATTEMPT_STARTED: &str = "grpc.client.attempt.started";
/// `grpc.client.attempt.duration` (A66): histogram of each attempt's
/// duration, from its start to its end (for the attempt that commits, the
/// end of the response). Unit [`UNIT_SECONDS`]; labels [`METHOD`],
/// [`TARGET`], [`STATUS`]; buckets [`LATENCY_BUCKETS`].
pub const CLIENT_ATTEMPT_DURATION: &str = "grpc.client.attempt.duration";
/// `grpc.client.call.duration` (A66): histogram of each call's duration,
/// from the layer receiving it until its status reaches the caller (for a
/// committed call, the end of the response). Unit [`UNIT_SECONDS`]; labels
/// [`METHOD`], [`TARGET`], [`STATUS`]; buckets [`LATENCY_BUCKETS`].
pub const CLIENT_CALL_DURATION: &str = "grpc.client.call.duration";
/// `grpc.client.call.retries` (A96): histogram of retries per call, not
/// reported for a call without any. Unit [`UNIT_RETRY`]; labels
/// [`METHOD`], [`TARGET`]; buckets [`RETRY_BUCKETS`].
pub const CLIENT_CALL_RETRIES: &str = "grpc.client.call.retries";
/// `grpc.client.call.transparent_retries` (A96): histogram of transparent
/// retries per call, not reported for a call without any. Unit
/// [`UNIT_TRANSPARENT_RETRY`]; labels [`METHOD`], [`TARGET`]; buckets
/// [`TRANSPARENT_RETRY_BUCKETS`].
pub const CLIENT_CALL_TRANSPARENT_RETRIES: &str = "grpc.client.call.transparent_retries";
/// `grpc.client.call.hedges` (A96): histogram of hedges per call (attempts
/// after the first of a hedged call), not reported for a call without any.
/// Unit [`UNIT_HEDGE`]; labels [`METHOD`], [`TARGET`]; buckets
/// [`HEDGE_BUCKETS`].
pub const CLIENT_CALL_HEDGES: &str = "grpc.client.call.hedges";
/// `grpc.client.call.retry_delay` (A96): histogram of the total time per
/// call with no attempt in flight, recorded for every call. Unit
/// [`UNIT_SECONDS`]; labels [`METHOD`], [`TARGET`]; buckets
/// [`LATENCY_BUCKETS`].
pub const CLIENT_CALL_RETRY_DELAY: &str = "grpc.client.call.retry_delay";
/// `tonic_retry.throttled` (this crate's own): counter of retries and
/// hedges that A6 throttling refused. Labels [`METHOD`], [`TARGET`].
pub const THROTTLED: &str = "tonic_retry.throttled";
/// `tonic_retry.budget_exhausted` (this crate's own): counter of retries
/// and hedges that the retry budget refused. Labels [`METHOD`], [`TARGET`].
pub const BUDGET_EXHAUSTED: &str = "tonic_retry.budget_exhausted";

/// Label `grpc.method`: `pkg.Service/Method`, from the `tonic::GrpcMethod`
/// extension a generated client sets; [`OTHER_METHOD`] for any other call
/// unless the layer is told to record raw names
/// ([`RetryLayerBuilder::generic_method_names`](crate::RetryLayerBuilder::generic_method_names)).
pub const METHOD: &str = "grpc.method";
/// Label `grpc.target`: the channel's canonical target URI, given to
/// [`RetryLayerBuilder::target`](crate::RetryLayerBuilder::target);
/// [`UNKNOWN_TARGET`] when not given.
pub const TARGET: &str = "grpc.target";
/// Label `grpc.status`: the status code's name, e.g. `UNAVAILABLE`.
pub const STATUS: &str = "grpc.status";

/// The `grpc.method` of a call whose method the generated code did not name
/// (A66: unregistered methods are recorded as `other`, so that arbitrary
/// paths cannot blow up the metrics' cardinality).
pub const OTHER_METHOD: &str = "other";
/// The `grpc.target` of a layer that was not given its target.
pub const UNKNOWN_TARGET: &str = "unknown";

/// The OpenTelemetry unit of [`CLIENT_ATTEMPT_STARTED`]. The `metrics`
/// facade has no annotated units, so counts are described with
/// `metrics::Unit::Count` and the exact unit starts their description.
pub const UNIT_ATTEMPT: &str = "{attempt}";
/// The OpenTelemetry unit of [`CLIENT_CALL_RETRIES`].
pub const UNIT_RETRY: &str = "{retry}";
/// The OpenTelemetry unit of [`CLIENT_CALL_TRANSPARENT_RETRIES`].
pub const UNIT_TRANSPARENT_RETRY: &str = "{transparent_retry}";
/// The OpenTelemetry unit of [`CLIENT_CALL_HEDGES`].
pub const UNIT_HEDGE: &str = "{hedge}";
/// The unit of every duration: seconds, as `f64` (`metrics::Unit::Seconds`).
pub const UNIT_SECONDS: &str = "s";

/// A96's recommended boundaries for [`CLIENT_CALL_RETRIES`].
pub const RETRY_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0];
/// A96's recommended boundaries for [`CLIENT_CALL_TRANSPARENT_RETRIES`].
pub const TRANSPARENT_RETRY_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0];
/// A96's recommended boundaries for [`CLIENT_CALL_HEDGES`].
pub const HEDGE_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0];
/// A66's latency boundaries, in seconds, for every duration histogram.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13, 0.16,
    0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0,
];

/// Every histogram the layer records, with its recommended bucket
/// boundaries: what an exporter's per-metric bucket setting takes (see the
/// [module documentation](crate::metrics#buckets)).
pub const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    (CLIENT_ATTEMPT_DURATION, LATENCY_BUCKETS),
    (CLIENT_CALL_DURATION, LATENCY_BUCKETS),
    (CLIENT_CALL_RETRIES, RETRY_BUCKETS),
    (CLIENT_CALL_TRANSPARENT_RETRIES, TRANSPARENT_RETRY_BUCKETS),
    (CLIENT_CALL_HEDGES, HEDGE_BUCKETS),
    (CLIENT_CALL_RETRY_DELAY, LATENCY_BUCKETS),
];
