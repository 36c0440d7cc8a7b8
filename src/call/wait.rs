//! Waiting, on tokio's clock alone: for a deadline, a backoff, the next
//! hedge or the caller's cancellation. Every wait a setting or a server
//! sets goes through [`instant_after`], so none can overflow `Instant`.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The shorter of two time limits. A limit beyond [`HORIZON`] is no limit:
/// its instant could not be timed (see [`instant_after`]).
#[inline]
pub(crate) fn earliest_duration(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    let timed = |d: Option<Duration>| d.filter(|d| *d <= HORIZON);
    match (timed(a), timed(b)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The longest wait that is timed: about a century. tokio rounds a timer's
/// instant up by adding just under a millisecond to it, which panics for an
/// instant at the very end of the clock's range, and no call has any use
/// for a wait this long; so anything longer means "never".
pub(crate) const HORIZON: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// When a wait of `delay` from `now` ends: `None` (never) if the wait is
/// longer than [`HORIZON`]. Every wait the layer times (backoffs,
/// server-chosen delays, hedges, per-attempt timeouts) goes through here,
/// so no value a setting or a server supplies can overflow `Instant`.
#[inline]
pub(crate) fn instant_after(now: Instant, delay: Duration) -> Option<Instant> {
    if delay > HORIZON {
        None
    } else {
        now.checked_add(delay)
    }
}

pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Sleeps until `deadline` on tokio's timer, so a paused or simulated
/// clock drives every wait; `None` never ends.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}
