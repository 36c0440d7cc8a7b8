//! What the test server keeps of each attempt: [`AttemptRecord`], the
//! guard that marks an attempt cancelled when its handler is dropped, and
//! the error that resets a stream.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

use super::fault::FaultAction;

/// What the server saw of one attempt. Obtained as a snapshot from
/// [`EchoService::attempts`](super::EchoService::attempts) / [`TestServer::attempts`](super::TestServer::attempts);
/// take a new snapshot to see later updates.
#[derive(Clone, Debug)]
pub struct AttemptRecord {
    /// Value of `x-call-id` (`""` when the header is missing).
    pub call_id: String,
    /// 0-based index of this attempt among the attempts with the same call
    /// id, in arrival order; always 0 when `x-call-id` is missing.
    pub attempt: usize,
    /// Request path, e.g. `/retry.test.v1.Echo/Unary`.
    pub method: String,
    /// When the request headers reached the service.
    pub arrived: Instant,
    /// Raw `grpc-previous-rpc-attempts` header.
    pub previous_rpc_attempts: Option<String>,
    /// Raw `grpc-timeout` header.
    pub grpc_timeout: Option<String>,
    /// `grpc_timeout` parsed by [`parse_grpc_timeout`](crate::deadline::parse_grpc_timeout); `None` if missing
    /// or malformed.
    pub grpc_timeout_parsed: Option<Duration>,
    /// Sum of the request message lengths (5-byte frame prefixes excluded)
    /// read so far. Stays 0 for `early` actions.
    pub request_bytes: u64,
    /// Number of request messages read so far.
    pub request_messages: u32,
    /// The handler ran to the end: the whole scripted response (including a
    /// scripted reset) was produced.
    pub completed: bool,
    /// The handler was dropped before completing, e.g. because the client
    /// reset the stream during a delay.
    pub cancelled: bool,
    /// The action chosen for this attempt; `None` if `x-fault` was invalid.
    pub action: Option<FaultAction>,
    /// All request headers (metadata) as received.
    pub headers: HeaderMap,
}

/// The error [`EchoService`](super::EchoService) returns for a scripted `reset`: it makes the
/// HTTP/2 server reset the stream (`RST_STREAM`) instead of responding. Its
/// source is the `h2::Error` carrying the reset reason, which hyper uses as
/// the `RST_STREAM` error code.
#[derive(Debug)]
pub struct ResetStream {
    reason: h2::Error,
}

impl ResetStream {
    /// A reset with HTTP/2 error code `reason` (2 is `INTERNAL_ERROR`).
    pub fn new(reason: u32) -> Self {
        Self {
            reason: h2::Error::from(h2::Reason::from(reason)),
        }
    }

    /// The HTTP/2 error code of the reset.
    pub fn reason(&self) -> u32 {
        self.reason.reason().map_or(2, u32::from)
    }
}

impl fmt::Display for ResetStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scripted stream reset with HTTP/2 error code {}",
            self.reason()
        )
    }
}

impl std::error::Error for ResetStream {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.reason)
    }
}

/// An attempt's record, shared by the service and the attempt's handler.
pub(super) type Record = Arc<Mutex<AttemptRecord>>;

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Marks the record cancelled when dropped before [`AttemptGuard::complete`].
pub(super) struct AttemptGuard {
    pub(super) record: Record,
    pub(super) done: bool,
}

impl AttemptGuard {
    pub(super) fn update(&self, f: impl FnOnce(&mut AttemptRecord)) {
        f(&mut lock(&self.record));
    }

    pub(super) fn add_message(&self, len: usize) {
        self.update(|r| {
            r.request_bytes = r
                .request_bytes
                .saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
            r.request_messages = r.request_messages.saturating_add(1);
        });
    }

    pub(super) fn complete(mut self) {
        self.done = true;
        self.update(|r| r.completed = true);
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.done {
            self.update(|r| r.cancelled = true);
        }
    }
}
