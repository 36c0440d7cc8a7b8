//! [`ReplayError`]: why an attempt's request body could not go on.

use std::fmt;

/// Why a [`ReplayBody`](super::ReplayBody) could not continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The call went on without this attempt (it committed to another
    /// attempt, the request passed a buffer limit while another attempt
    /// was reading it, or the call ended), so the recorded chunks this
    /// attempt still needed were released.
    Released,
    /// The original body failed while another attempt was reading it.
    SourceFailed,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplayError::Released => "request replay buffer was released",
            ReplayError::SourceFailed => "the request body failed in an earlier attempt",
        })
    }
}

impl std::error::Error for ReplayError {}
