//! The metrics of a build without the `metrics` feature: types of no size
//! and functions that do nothing, so the call code is the same either way
//! and the compiler removes every trace of it.

use tonic::Code;

use super::attempt::{AttemptId, AttemptKind};

/// A layer's metric settings: none.
#[derive(Debug)]
pub(crate) struct LayerMetrics;

impl LayerMetrics {
    pub(crate) fn new() -> Self {
        LayerMetrics
    }
}

/// The handles a kit found last: none.
pub(crate) struct HandlesMemo;

impl HandlesMemo {
    pub(crate) const fn new() -> Self {
        HandlesMemo
    }

    #[inline(always)]
    pub(crate) fn forget(&mut self) {}
}

/// What one call did: nothing is kept.
pub(crate) struct CallMetrics;

impl CallMetrics {
    /// Whether anything is recorded (the `metrics` feature).
    pub(crate) const ENABLED: bool = false;

    pub(crate) const fn inactive() -> Self {
        CallMetrics
    }
    #[inline(always)]
    pub(crate) fn start(
        _layer: &LayerMetrics,
        _memo: &mut HandlesMemo,
        _grpc_method: Option<&tonic::GrpcMethod<'static>>,
        _path: &str,
    ) -> Self {
        CallMetrics
    }
    #[inline(always)]
    pub(crate) fn attempt_started(&mut self, _kind: AttemptKind) -> AttemptId {
        AttemptId::UNTRACKED
    }
    #[inline(always)]
    pub(crate) fn attempt_ended(&mut self, _id: AttemptId, _code: Code) {}
    #[inline(always)]
    pub(crate) fn end_other_attempts(&mut self, _keep: AttemptId, _code: Code) {}
    #[inline(always)]
    pub(crate) fn throttled(&mut self) {}
    #[inline(always)]
    pub(crate) fn budget_exhausted(&mut self) {}
    #[inline(always)]
    pub(crate) fn finish(&mut self, _code: Code) {}
}
