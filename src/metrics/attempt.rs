//! Which attempt of a call a metric is about, and why it was sent.

/// Which attempt of a call: an index into the call's attempts in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AttemptId(pub(crate) u8);

impl AttemptId {
    /// The first attempt, started with the call.
    pub(crate) const FIRST: AttemptId = AttemptId(0);
    /// An attempt whose duration is not recorded.
    pub(crate) const UNTRACKED: AttemptId = AttemptId(u8::MAX);
}

/// Why an attempt after the first was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptKind {
    /// A retry of the policy (A96 `retries`).
    Retry,
    /// A hedge (A96 `hedges`).
    Hedge,
    /// A transparent retry (A96 `transparent_retries`).
    Transparent,
}
