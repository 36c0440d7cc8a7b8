//! Backoff sleeps that end on time.
//!
//! tokio's timer counts whole milliseconds: a sleep's deadline is rounded up
//! to the next tick, and the driver then parks for whole milliseconds, so a
//! sleep ends on average about a millisecond late and often two. For a
//! 10 ms backoff that is a 10-20 % error on top of the jitter A6 asks for.
//!
//! So a backoff (or the wait before the next hedge) sleeps on two timers at
//! once and ends with whichever fires first:
//!
//! * tokio's own, which keeps tokio's paused test clock
//!   (`tokio::time::pause`) working, and is the fallback if the precise
//!   timer is unavailable;
//! * a precise one: a single background thread (started on first use, named
//!   `tonic-retry-timer`) that waits on a condition variable until the
//!   earliest deadline (the OS wakes it within tens of microseconds) and
//!   wakes the sleeping task.
//!
//! Only retries and hedges sleep, so the happy path never touches either.
//! A sleep that is dropped early (the call was cancelled) leaves its entry
//! behind, with no waker, until its deadline passes or the heap has doubled
//! since the last purge of such entries; nothing is woken for it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant as StdInstant;

use tokio::time::Instant;

/// Sleeps until `deadline`, ending within a fraction of a millisecond of it
/// (see the module documentation).
pub(crate) async fn sleep_until(deadline: Instant) {
    tokio::select! {
        biased;
        () = PreciseSleep::new(deadline.into_std()) => {}
        () = tokio::time::sleep_until(deadline) => {}
    }
}

/// A sleep on the precise timer thread. It never completes if the thread
/// could not be started; [`sleep_until`] then ends on tokio's timer.
struct PreciseSleep {
    deadline: StdInstant,
    entry: Option<Arc<Entry>>,
}

impl PreciseSleep {
    fn new(deadline: StdInstant) -> Self {
        PreciseSleep {
            deadline,
            entry: None,
        }
    }
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(entry) = &self.entry {
            if entry.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            let mut waker = lock(&entry.waker);
            // Checked again under the lock: the timer thread sets `fired`
            // before it takes the waker, so a wake cannot be lost.
            if entry.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        if StdInstant::now() >= self.deadline {
            return Poll::Ready(());
        }
        if let Some(timer) = TimerThread::get() {
            let entry = Arc::new(Entry {
                deadline: self.deadline,
                fired: AtomicBool::new(false),
                waker: Mutex::new(Some(cx.waker().clone())),
            });
            timer.add(entry.clone());
            self.entry = Some(entry);
        }
        Poll::Pending
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        if let Some(entry) = &self.entry {
            // Nothing to wake any more; the entry leaves the heap when due.
            lock(&entry.waker).take();
        }
    }
}

/// One sleep waiting on the timer thread.
struct Entry {
    deadline: StdInstant,
    fired: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Entry {
    /// Its sleep was dropped before it fired: nobody is waiting.
    fn abandoned(&self) -> bool {
        !self.fired.load(Ordering::Acquire) && lock(&self.waker).is_none()
    }
}

/// The smallest heap size at which dropped sleeps are purged.
const PURGE_AT: usize = 1024;

/// Heap order: earliest deadline first.
struct Due(Arc<Entry>);

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.0.deadline == other.0.deadline
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.deadline.cmp(&other.0.deadline)
    }
}

struct TimerThread {
    due: Mutex<BinaryHeap<Reverse<Due>>>,
    /// The heap size at which dropped sleeps are next purged: twice what
    /// the last purge kept (at least [`PURGE_AT`]), so purges stay
    /// amortised O(1) per sleep even when many live sleeps remain. Read
    /// and written only under the `due` lock.
    purge_at: AtomicUsize,
    changed: Condvar,
}

impl TimerThread {
    fn new() -> Self {
        TimerThread {
            due: Mutex::new(BinaryHeap::new()),
            purge_at: AtomicUsize::new(PURGE_AT),
            changed: Condvar::new(),
        }
    }
}

impl TimerThread {
    /// The process-wide timer thread, started on first use; `None` if it
    /// could not be started.
    fn get() -> Option<&'static TimerThread> {
        static TIMER: OnceLock<Option<&'static TimerThread>> = OnceLock::new();
        *TIMER.get_or_init(|| {
            let timer: &'static TimerThread = Box::leak(Box::new(TimerThread::new()));
            std::thread::Builder::new()
                .name("tonic-retry-timer".into())
                .spawn(move || timer.run())
                .ok()
                .map(|_| timer)
        })
    }

    fn add(&self, entry: Arc<Entry>) {
        let mut due = lock(&self.due);
        if due.len() >= self.purge_at.load(Ordering::Relaxed) {
            // Dropped sleeps stay until their deadline, which a pushback can
            // put days away: clear them out whenever the heap has doubled
            // since the last purge, so cancelled calls cannot pile up.
            due.retain(|Reverse(Due(entry))| !entry.abandoned());
            self.purge_at
                .store((2 * due.len()).max(PURGE_AT), Ordering::Relaxed);
        }
        let earliest = due
            .peek()
            .is_none_or(|Reverse(first)| entry.deadline < first.0.deadline);
        due.push(Reverse(Due(entry)));
        drop(due);
        if earliest {
            // The thread sleeps until the old earliest deadline: wake it to
            // sleep until this one instead.
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut fired = Vec::new();
        let mut due = lock(&self.due);
        loop {
            let now = StdInstant::now();
            while let Some(Reverse(first)) = due.peek()
                && first.0.deadline <= now
            {
                if let Some(Reverse(Due(entry))) = due.pop() {
                    fired.push(entry);
                }
            }
            if !fired.is_empty() {
                // Wake outside the heap's lock: a woken task may be polled on
                // another thread at once and add a new sleep.
                drop(due);
                for entry in fired.drain(..) {
                    entry.fired.store(true, Ordering::Release);
                    if let Some(waker) = lock(&entry.waker).take() {
                        waker.wake();
                    }
                }
                due = lock(&self.due);
                continue;
            }
            due = match due.peek() {
                Some(Reverse(first)) => {
                    let wait = first.0.deadline.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(due, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(due)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while these locks are held; a poisoned one is still
    // consistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_precise_timer_alone_ends_sleeps_never_early() {
        // How close to the deadline it ends is measured by
        // benches/backoff_accuracy.rs, not here; this checks that the timer
        // thread (without tokio's timer) wakes every sleep, in any order.
        let start = StdInstant::now();
        let sleeps = (0..20u64).rev().map(|n| {
            let deadline = start + Duration::from_micros(500 + n * 97);
            async move {
                PreciseSleep::new(deadline).await;
                assert!(StdInstant::now() >= deadline, "never early");
            }
        });
        tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::future::join_all(sleeps),
        )
        .await
        .expect("every sleep is woken");
    }

    #[test]
    fn dropped_sleeps_are_purged_before_they_pile_up() {
        let timer = TimerThread::new();
        let far = StdInstant::now() + Duration::from_secs(24 * 3600);
        let entry = |waiting: bool| {
            Arc::new(Entry {
                deadline: far,
                fired: AtomicBool::new(false),
                waker: Mutex::new(waiting.then(|| Waker::noop().clone())),
            })
        };
        // Every sleep but one was dropped (no waker left) before it fired.
        for n in 0..4 * PURGE_AT {
            timer.add(entry(n == 7));
        }
        let due = lock(&timer.due);
        assert!(
            due.len() <= PURGE_AT + 1,
            "{} entries kept for dropped sleeps",
            due.len()
        );
        assert_eq!(
            due.iter().filter(|Reverse(Due(e))| !e.abandoned()).count(),
            1,
            "the sleep still waiting is kept"
        );
        drop(due);

        // Many live sleeps: the next purge waits until the heap has doubled
        // again, instead of rescanning the live ones every few sleeps.
        for _ in 0..3 * PURGE_AT {
            timer.add(entry(true));
        }
        let live = lock(&timer.due).len();
        assert_eq!(live, 3 * PURGE_AT + 1, "live sleeps are never purged");
        assert!(
            timer.purge_at.load(Ordering::Relaxed) > live,
            "the next purge comes only after the heap grows again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_paused_test_clock_still_drives_sleeps() {
        let start = Instant::now();
        sleep_until(start + Duration::from_secs(30)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(30));
    }

    #[tokio::test]
    async fn dropped_sleeps_wake_nothing_and_past_deadlines_end_at_once() {
        let deadline = StdInstant::now() + Duration::from_millis(5);
        let mut sleep = Box::pin(PreciseSleep::new(deadline));
        // Poll once (registering it), then drop it before it fires.
        let mut cx = Context::from_waker(Waker::noop());
        assert!(sleep.as_mut().poll(&mut cx).is_pending());
        let entry = sleep.entry.clone().expect("registered");
        drop(sleep);
        assert!(lock(&entry.waker).is_none(), "nothing left to wake");
        tokio::time::sleep(Duration::from_millis(10)).await;
        let past = Instant::now() - Duration::from_millis(1);
        tokio::time::timeout(Duration::from_millis(50), sleep_until(past))
            .await
            .expect("a past deadline ends at once");
    }
}
