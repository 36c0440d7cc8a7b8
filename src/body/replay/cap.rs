//! The channel-wide replay buffer cap.
//!
//! Each call may keep up to its policy's replay limit (256 KiB by default)
//! for replay, but thousands of calls in flight could still add up to
//! gigabytes. The cap bounds the sum over all calls of one layer (grpc-java
//! uses 16 MiB per channel). A call that cannot reserve space for its next
//! chunk stops recording: it is still sent, but it can no longer be retried.
//! Space is returned when the call commits, finishes, or is dropped.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The default cap: 16 MiB, as grpc-java's per-channel buffer limit.
pub const DEFAULT_CHANNEL_BUFFER_LIMIT: usize = 16 * 1024 * 1024;

/// Bytes held for replay by all calls of one layer, bounded by a limit.
pub struct ChannelBufferCap {
    limit: usize,
    used: AtomicUsize,
}

impl ChannelBufferCap {
    /// A cap of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ChannelBufferCap {
            limit,
            used: AtomicUsize::new(0),
        }
    }

    /// Reserves `bytes`, or returns false (reserving nothing) if that would
    /// pass the limit.
    #[inline]
    pub(crate) fn try_reserve(&self, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Returns `bytes` reserved earlier.
    pub(crate) fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    /// Bytes currently held for replay.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for ChannelBufferCap {
    fn default() -> Self {
        ChannelBufferCap::new(DEFAULT_CHANNEL_BUFFER_LIMIT)
    }
}

impl fmt::Debug for ChannelBufferCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelBufferCap")
            .field("used", &self.used())
            .field("limit", &self.limit)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_pass_the_limit() {
        let cap = ChannelBufferCap::new(10);
        assert!(cap.try_reserve(6));
        assert!(!cap.try_reserve(5));
        assert_eq!(cap.used(), 6);
        assert!(cap.try_reserve(4));
        assert!(cap.try_reserve(0));
        assert!(!cap.try_reserve(1));
        cap.release(10);
        assert_eq!(cap.used(), 0);
        assert!(!cap.try_reserve(usize::MAX));
    }

    #[test]
    fn concurrent_reservations_stay_within_the_limit() {
        let cap = std::sync::Arc::new(ChannelBufferCap::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let cap = cap.clone();
                std::thread::spawn(move || {
                    let mut held = 0;
                    for i in 0..10_000 {
                        if cap.try_reserve(7) {
                            held += 7;
                        }
                        assert!(cap.used() <= 1000);
                        if i % 3 == 0 && held > 0 {
                            cap.release(7);
                            held -= 7;
                        }
                    }
                    cap.release(held);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(cap.used(), 0);
    }
}
