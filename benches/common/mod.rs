//! Shared by the bench binaries: a counting global allocator, the
//! `BENCH_QUICK` switch, `RESULT` lines and small statistics helpers.
//!
//! Each bench that counts allocations installs the allocator itself:
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOC: common::CountingAlloc = common::CountingAlloc;
//! ```
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};

/// A [`System`] wrapper that counts allocations, bytes allocated and live
/// bytes (with a high-water mark) while counting is switched on.
///
/// Counting is off by default, so the allocator costs one relaxed load per
/// call outside measurements. [`count_all_threads`] counts everything;
/// [`count_marked_threads`] counts only threads that called
/// [`mark_this_thread`], which lets a bench exclude an in-process server
/// running on another runtime's threads.
pub struct CountingAlloc;

const OFF: u8 = 0;
const ALL: u8 = 1;
const MARKED: u8 = 2;

static MODE: AtomicU8 = AtomicU8::new(OFF);
static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);

thread_local! {
    // const-initialised and without a destructor: safe to touch from inside
    // the allocator.
    static THIS_THREAD_MARKED: Cell<bool> = const { Cell::new(false) };
}

#[inline]
fn counting() -> bool {
    match MODE.load(Relaxed) {
        OFF => false,
        ALL => true,
        _ => THIS_THREAD_MARKED.try_with(Cell::get).unwrap_or(false),
    }
}

#[inline]
fn on_alloc(size: usize) {
    ALLOCS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    let live = LIVE.fetch_add(size as i64, Relaxed) + size as i64;
    PEAK.fetch_max(live, Relaxed);
}

#[inline]
fn on_dealloc(size: usize) {
    LIVE.fetch_sub(size as i64, Relaxed);
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping around it only touches atomics and a
// const-initialised thread-local `Cell`, and never allocates.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            on_alloc(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if counting() {
            on_alloc(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() {
            on_dealloc(layout.size());
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            // Counted as a new allocation of `new_size` replacing the old one:
            // the allocation traffic a growing buffer causes.
            on_dealloc(layout.size());
            on_alloc(new_size);
        }
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllocSnapshot {
    /// Allocation calls (`alloc`, `alloc_zeroed`, `realloc`).
    pub allocs: u64,
    /// Bytes requested by those calls.
    pub bytes: u64,
}

impl std::ops::Sub for AllocSnapshot {
    type Output = AllocSnapshot;
    fn sub(self, rhs: AllocSnapshot) -> AllocSnapshot {
        AllocSnapshot {
            allocs: self.allocs - rhs.allocs,
            bytes: self.bytes - rhs.bytes,
        }
    }
}

/// The cumulative counters.
pub fn snapshot() -> AllocSnapshot {
    AllocSnapshot {
        allocs: ALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

/// Counts allocations made on any thread.
pub fn count_all_threads() {
    MODE.store(ALL, Relaxed);
}

/// Counts allocations made on threads that called [`mark_this_thread`].
pub fn count_marked_threads() {
    MODE.store(MARKED, Relaxed);
}

/// Stops counting.
pub fn stop_counting() {
    MODE.store(OFF, Relaxed);
}

/// Includes the calling thread in [`count_marked_threads`].
pub fn mark_this_thread() {
    THIS_THREAD_MARKED.with(|m| m.set(true));
}

/// Live bytes counted so far (allocated minus freed while counting).
pub fn live_bytes() -> i64 {
    LIVE.load(Relaxed)
}

/// Restarts the live-bytes high-water mark from the current live bytes.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}

/// The live-bytes high-water mark since [`reset_peak`].
pub fn peak_live_bytes() -> i64 {
    PEAK.load(Relaxed)
}

/// `BENCH_QUICK=1` (any value but empty or `0`): the short mode.
pub fn quick() -> bool {
    std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Prints one machine-readable result line.
pub fn result(name: &str, value: f64) {
    println!("RESULT {name}={value:.3}");
}

/// The median (mean of the middle two for an even count). Sorts `values`.
pub fn median(values: &mut [f64]) -> f64 {
    assert!(!values.is_empty(), "median of nothing");
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The `p`-th percentile (0..=100), nearest-rank. Sorts `values`.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    assert!(!values.is_empty(), "percentile of nothing");
    values.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
    values[rank.clamp(1, values.len()) - 1]
}

/// `nproc` and the first lines of `lscpu`, for the log.
pub fn describe_machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("{cores} cores available, {model}")
}

/// The runtime the loopback benches use: two workers, like the machine.
pub fn loopback_runtime() -> tokio::runtime::Runtime {
    loopback_runtime_with(2)
}

/// A loopback runtime with `workers` worker threads.
pub fn loopback_runtime_with(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// The in-process scripted test server, and a channel connected to it.
pub async fn server_and_channel() -> (tonic_retry::testing::TestServer, tonic::transport::Channel) {
    let server = tonic_retry::testing::TestServer::start()
        .await
        .expect("test server");
    let channel = channel_to(&server).await;
    (server, channel)
}

/// A new connection to `server`.
pub async fn channel_to(server: &tonic_retry::testing::TestServer) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(server.uri())
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}
