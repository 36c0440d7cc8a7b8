//! gRPC's own OpenTelemetry client metrics, through the
//! [`metrics`](https://docs.rs/metrics) facade (feature `metrics`).
//!
//! tonic records no client metrics. The retry layer sees every attempt of
//! every call it applies a policy to, so it records the metrics gRFC A66
//! (per attempt and per call) and gRFC A96 (retries) define, under their
//! names, units and labels, so that gRPC's dashboards work unchanged:
//!
//! | Metric | Type | Unit | Labels | Recorded |
//! |---|---|---|---|---|
//! | `grpc.client.attempt.started` | counter | `{attempt}` | method, target | when an attempt starts (transparent retries included) |
//! | `grpc.client.attempt.duration` | histogram | `s` | method, target, status | when an attempt ends |
//! | `grpc.client.call.duration` | histogram | `s` | method, target, status | when the call ends |
//! | `grpc.client.call.retries` | histogram | `{retry}` | method, target | when the call ends, if it retried |
//! | `grpc.client.call.transparent_retries` | histogram | `{transparent_retry}` | method, target | when the call ends, if it retried transparently |
//! | `grpc.client.call.hedges` | histogram | `{hedge}` | method, target | when the call ends, if it hedged |
//! | `grpc.client.call.retry_delay` | histogram | `s` | method, target | when the call ends |
//! | `tonic_retry.throttled` | counter | | method, target | when A6 throttling refuses a retry or hedge |
//! | `tonic_retry.budget_exhausted` | counter | | method, target | when the retry budget refuses a retry or hedge |
//!
//! Names, label keys, units and recommended buckets are constants in this
//! module.
//!
//! # Buckets
//!
//! The `metrics` facade carries no bucket hints: buckets are set where the
//! exporter is built. [`HISTOGRAM_BUCKETS`] pairs each histogram with the
//! boundaries the gRFCs recommend (A96's `[1, 2, 3, 4, 5]` for retries and
//! hedges, `[1, 2, 3, 4, 5, 10]` for transparent retries, A66's latency
//! buckets for every duration), ready for an exporter's per-metric setting;
//! with `metrics-exporter-prometheus`:
//!
//! ```
//! use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
//!
//! let mut builder = PrometheusBuilder::new();
//! for (name, buckets) in tonic_retry::metrics::HISTOGRAM_BUCKETS {
//!     builder = builder.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)?;
//! }
//! let prometheus = builder.install_recorder()?; // before the layer's first call
//! // ... calls through the layer ...
//! println!("{}", prometheus.render());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! (`examples/metrics.rs` runs exactly this.) The exporter is not a
//! dependency of this crate: a library's feature should not choose its
//! users' exporter. OpenTelemetry users set the same boundaries in a view.
//!
//! # Labels
//!
//! * `grpc.method`: `pkg.Service/Method`. A call the generated code did not
//!   name (no `tonic::GrpcMethod` extension: a raw path) is recorded as
//!   `other`, as A66 requires of unregistered methods, unless
//!   [`RetryLayerBuilder::generic_method_names`](crate::RetryLayerBuilder::generic_method_names)
//!   asks for raw names.
//! * `grpc.target`: the layer cannot see its channel's target, so it is
//!   given with [`RetryLayerBuilder::target`](crate::RetryLayerBuilder::target),
//!   in A66's canonical form (`dns:///api.example.com:443`); `unknown` when
//!   not given.
//! * `grpc.status`: the code's name (`UNAVAILABLE`), on the two durations
//!   only. A96 defines none on its four histograms, so they have none.
//!
//! # What is recorded when nothing happened
//!
//! A96, for `grpc.client.call.retries`: "Number of retries during the
//! client call. If there were no retries, 0 is not reported." It says the
//! same of `grpc.client.call.transparent_retries` ("If there were no
//! transparent retries, 0 is not reported") and of
//! `grpc.client.call.hedges` ("If there were no hedges, 0 is not
//! reported"). It makes no such exception for
//! `grpc.client.call.retry_delay` ("Total time of delay while there is no
//! active attempt during the client call"), so that is recorded for every
//! call, 0 s included, as grpc-java does (grpc core skips it for a call
//! without retries). A call that succeeds at once therefore records
//! `attempt.started`, `attempt.duration`, `call.duration` and
//! `retry_delay`, and none of the three counts.
//!
//! # When attempts and calls end
//!
//! * An attempt ends with the status it ended with: a Trailers-Only
//!   status, a transport error or reset (its code as tonic maps it), its
//!   per-attempt timeout (DEADLINE_EXCEEDED), the call's deadline
//!   (DEADLINE_EXCEEDED) or cancellation (CANCELLED), or losing a hedge
//!   race (CANCELLED). A stream refused before the server's application
//!   saw it is an attempt too, and its transparent retry another.
//! * The attempt that commits ends when its response ends, not at its
//!   headers: A66 ends an attempt when its trailing status arrives, so its
//!   `attempt.duration` covers the whole response, with the status the
//!   response ends with (CANCELLED if the caller drops the body first).
//!   This holds for the first attempt's fast path too, which never enters
//!   the retry loop.
//! * A call ends when its status reaches the caller: a surfaced failure
//!   at once, a committed call when its response ends.
//! * `retry_delay` is the time with no attempt in flight: backoffs (and the
//!   work around them), the gaps of a hedged call, and the wait of a call
//!   dropped or cancelled during a backoff.
//!
//! Calls the layer applies no policy to (a service config's unmatched
//! methods) pass straight through, untouched and unrecorded.
//!
//! # Cost
//!
//! Without the feature none of this is compiled. With it, each method's
//! handles are registered once per layer and kept; a call finds them in
//! its pooled state (the last method's) or in the layer's map, reads the
//! clock at its start and at its end, and allocates nothing, with or
//! without a recorder. Install the recorder before the layer's first call:
//! a handle registered while no recorder is installed records nothing,
//! ever.
//!
//! Not recorded: A66's `grpc.client.attempt.sent_total_compressed_message_size`
//! and `rcvd_total_compressed_message_size`. The layer sees the request and
//! response bodies as gRPC frames, but their compression is tonic's and
//! the per-message walk would cost every call for a figure tonic's own
//! encoder could give exactly.

mod attempt;
#[cfg(feature = "metrics")]
mod call;
#[cfg(feature = "metrics")]
mod handles;
#[cfg(feature = "metrics")]
mod labels;
#[cfg(feature = "metrics")]
mod names;
#[cfg(not(feature = "metrics"))]
mod off;

pub(crate) use attempt::{AttemptId, AttemptKind};
#[cfg(feature = "metrics")]
pub(crate) use call::CallMetrics;
#[cfg(feature = "metrics")]
pub(crate) use handles::{HandlesMemo, LayerMetrics};
#[cfg(feature = "metrics")]
pub use names::*;
#[cfg(not(feature = "metrics"))]
pub(crate) use off::{CallMetrics, HandlesMemo, LayerMetrics};
