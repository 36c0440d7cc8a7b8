//! Metric handles, registered once per method and kept per layer.
//!
//! Registering a metric with the `metrics` facade builds its key (its name
//! and owned label values) and looks it up in the recorder: allocations and
//! a hashed lookup, far more than recording a value. A layer therefore
//! registers each method's handles the first time the method is called and
//! keeps them in a small map; a call then finds its handles with one
//! read-locked lookup and no allocation, recorder or not, and most calls
//! not even that: the pooled call state remembers the last method's
//! handles ([`HandlesMemo`]). Handles that not every call records (a
//! status's duration, the retry counts) are registered the first time they
//! are recorded, so that no empty series appear.
//!
//! Handles are bound to the recorder that was installed when they were
//! registered: install the recorder before the layer's first call (a
//! handle registered with no recorder records nothing, for good).
//!
//! The map is keyed by the addresses of the `&'static str`s of a method's
//! `tonic::GrpcMethod` (the generated code's constants, which never move or
//! go away), so a lookup hashes four words instead of two strings. It holds
//! at most [`CACHE_LIMIT`] methods; past that (only with raw method names
//! on, under arbitrary paths) a call registers its handles for itself, so
//! memory stays bounded.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, Once, OnceLock, RwLock};

use ::metrics::{Counter, Histogram, Key, Label, Level, Metadata, Unit};
use tonic::Code;

use super::labels::MethodLabel;
use super::names::*;
use crate::classify::code_name;

/// Methods a layer keeps handles for.
pub(crate) const CACHE_LIMIT: usize = 1024;

/// The number of gRPC status codes.
const CODES: usize = 17;

/// Where the layer's metrics say they come from (what the macros of the
/// `metrics` crate would put there).
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// Every handle one method's calls record into, through one layer. Those
/// every call records are registered with it; the others the first time
/// they are recorded, so that a recorder holds no series that never had a
/// value (A96: a call without retries reports nothing, not even an empty
/// series).
pub(crate) struct MethodHandles {
    method: String,
    target: Arc<str>,
    pub(crate) attempt_started: Counter,
    pub(crate) retry_delay: Histogram,
    attempt_duration: [OnceLock<Histogram>; CODES],
    call_duration: [OnceLock<Histogram>; CODES],
    retries: OnceLock<Histogram>,
    transparent_retries: OnceLock<Histogram>,
    hedges: OnceLock<Histogram>,
    throttled: OnceLock<Counter>,
    budget_exhausted: OnceLock<Counter>,
}

impl MethodHandles {
    fn register(method: String, target: Arc<str>) -> Self {
        let labels = labels(&method, &target);
        MethodHandles {
            attempt_started: counter(CLIENT_ATTEMPT_STARTED, labels.clone()),
            retry_delay: histogram(CLIENT_CALL_RETRY_DELAY, labels),
            attempt_duration: Default::default(),
            call_duration: Default::default(),
            retries: OnceLock::new(),
            transparent_retries: OnceLock::new(),
            hedges: OnceLock::new(),
            throttled: OnceLock::new(),
            budget_exhausted: OnceLock::new(),
            method,
            target,
        }
    }

    /// `grpc.client.attempt.duration` for attempts that ended with `code`.
    pub(crate) fn attempt_duration(&self, code: Code) -> &Histogram {
        self.by_status(&self.attempt_duration, CLIENT_ATTEMPT_DURATION, code)
    }

    /// `grpc.client.call.duration` for calls that ended with `code`.
    pub(crate) fn call_duration(&self, code: Code) -> &Histogram {
        self.by_status(&self.call_duration, CLIENT_CALL_DURATION, code)
    }

    pub(crate) fn retries(&self) -> &Histogram {
        self.histogram(&self.retries, CLIENT_CALL_RETRIES)
    }

    pub(crate) fn transparent_retries(&self) -> &Histogram {
        self.histogram(&self.transparent_retries, CLIENT_CALL_TRANSPARENT_RETRIES)
    }

    pub(crate) fn hedges(&self) -> &Histogram {
        self.histogram(&self.hedges, CLIENT_CALL_HEDGES)
    }

    pub(crate) fn throttled(&self) -> &Counter {
        self.throttled
            .get_or_init(|| counter(THROTTLED, labels(&self.method, &self.target)))
    }

    pub(crate) fn budget_exhausted(&self) -> &Counter {
        self.budget_exhausted
            .get_or_init(|| counter(BUDGET_EXHAUSTED, labels(&self.method, &self.target)))
    }

    fn histogram<'a>(&'a self, slot: &'a OnceLock<Histogram>, name: &'static str) -> &'a Histogram {
        slot.get_or_init(|| histogram(name, labels(&self.method, &self.target)))
    }

    fn by_status<'a>(
        &'a self,
        slots: &'a [OnceLock<Histogram>; CODES],
        name: &'static str,
        code: Code,
    ) -> &'a Histogram {
        // `Code` is 0..=16; an out-of-range value (none exists) would share
        // the last slot rather than panic.
        let slot = &slots[(code as usize).min(CODES - 1)];
        slot.get_or_init(|| {
            let mut labels = labels(&self.method, &self.target);
            labels.push(Label::new(STATUS, code_name(code)));
            histogram(name, labels)
        })
    }
}

fn labels(method: &str, target: &str) -> Vec<Label> {
    vec![
        Label::new(METHOD, method.to_owned()),
        Label::new(TARGET, target.to_owned()),
    ]
}

fn counter(name: &'static str, labels: Vec<Label>) -> Counter {
    let key = Key::from_parts(name, labels);
    ::metrics::with_recorder(|recorder| recorder.register_counter(&key, &METADATA))
}

fn histogram(name: &'static str, labels: Vec<Label>) -> Histogram {
    let key = Key::from_parts(name, labels);
    ::metrics::with_recorder(|recorder| recorder.register_histogram(&key, &METADATA))
}

/// Gives the recorder each metric's unit and description (its `# HELP`
/// line, for Prometheus). Counts have no annotated unit in the `metrics`
/// facade, so their OpenTelemetry unit starts the description.
fn describe() {
    ::metrics::with_recorder(|r| {
        r.describe_counter(
            CLIENT_ATTEMPT_STARTED.into(),
            Some(Unit::Count),
            "{attempt} The total number of RPC attempts started, including those that have not completed.".into(),
        );
        r.describe_histogram(
            CLIENT_ATTEMPT_DURATION.into(),
            Some(Unit::Seconds),
            "End-to-end time taken to complete an RPC attempt.".into(),
        );
        r.describe_histogram(
            CLIENT_CALL_DURATION.into(),
            Some(Unit::Seconds),
            "Time taken by the retry layer to complete an RPC from the application's perspective."
                .into(),
        );
        r.describe_histogram(
            CLIENT_CALL_RETRIES.into(),
            Some(Unit::Count),
            "{retry} Number of retries during the client call. If there were no retries, 0 is not reported.".into(),
        );
        r.describe_histogram(
            CLIENT_CALL_TRANSPARENT_RETRIES.into(),
            Some(Unit::Count),
            "{transparent_retry} Number of transparent retries during the client call. If there were no transparent retries, 0 is not reported.".into(),
        );
        r.describe_histogram(
            CLIENT_CALL_HEDGES.into(),
            Some(Unit::Count),
            "{hedge} Number of hedges during the client call. If there were no hedges, 0 is not reported.".into(),
        );
        r.describe_histogram(
            CLIENT_CALL_RETRY_DELAY.into(),
            Some(Unit::Seconds),
            "Total time of delay while there is no active attempt during the client call.".into(),
        );
        r.describe_counter(
            THROTTLED.into(),
            Some(Unit::Count),
            "Retries and hedges refused by A6 retry throttling.".into(),
        );
        r.describe_counter(
            BUDGET_EXHAUSTED.into(),
            Some(Unit::Count),
            "Retries and hedges refused by the retry budget.".into(),
        );
    });
}

/// The handles a pooled call kit found last, with their method's key: the
/// next call of the same method through the same layer (most calls, on a
/// thread that serves one client) takes them from here, without the
/// layer's lock and map. The kit forgets them when it serves another
/// layer, whose target differs.
#[derive(Default)]
pub(crate) struct HandlesMemo(Option<(NamedKey, Arc<MethodHandles>)>);

impl HandlesMemo {
    /// A memo of nothing yet.
    pub(crate) const fn new() -> Self {
        HandlesMemo(None)
    }

    /// Forgets the handles: they belong to another layer.
    pub(crate) fn forget(&mut self) {
        self.0 = None;
    }
}

/// The metric settings of one layer, and the handles its calls found.
pub(crate) struct LayerMetrics {
    target: Arc<str>,
    raw_method_names: bool,
    described: Once,
    cache: RwLock<Cache>,
}

/// A named method's key: the addresses and lengths of its service and
/// method names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NamedKey([usize; 4]);

impl Hash for NamedKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for word in self.0 {
            state.write_usize(word);
        }
    }
}

/// Hashes a [`NamedKey`]'s four words with a multiply each, where SipHash
/// took more time than the rest of the lookup: addresses are nobody's
/// choice, so the map needs no defence against chosen keys (raw paths,
/// which a caller chooses, keep the standard hasher).
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_usize(usize::from(byte));
        }
    }

    fn write_usize(&mut self, word: usize) {
        // FxHash's step: rotate, mix in, multiply by a large odd constant.
        self.0 = (self.0.rotate_left(5) ^ word as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Default)]
struct Cache {
    named: HashMap<NamedKey, Arc<MethodHandles>, BuildHasherDefault<WordHasher>>,
    raw: HashMap<Box<str>, Arc<MethodHandles>>,
    other: Option<Arc<MethodHandles>>,
}

impl Cache {
    fn len(&self) -> usize {
        self.named.len() + self.raw.len() + usize::from(self.other.is_some())
    }

    fn get(&self, method: MethodLabel<'_>) -> Option<&Arc<MethodHandles>> {
        match method {
            MethodLabel::Named { service, method } => self.named.get(&named_key(service, method)),
            MethodLabel::Raw(path) => self.raw.get(path),
            MethodLabel::Other => self.other.as_ref(),
        }
    }

    fn insert(&mut self, method: MethodLabel<'_>, handles: Arc<MethodHandles>) {
        match method {
            MethodLabel::Named { service, method } => {
                self.named.insert(named_key(service, method), handles);
            }
            MethodLabel::Raw(path) => {
                self.raw.insert(path.into(), handles);
            }
            MethodLabel::Other => self.other = Some(handles),
        }
    }
}

fn named_key(service: &str, method: &str) -> NamedKey {
    NamedKey([
        service.as_ptr() as usize,
        service.len(),
        method.as_ptr() as usize,
        method.len(),
    ])
}

impl LayerMetrics {
    /// Metrics labelled with `target` (`None`: [`UNKNOWN_TARGET`]); raw
    /// paths recorded by name when `raw_method_names`, else as `other`.
    pub(crate) fn new(target: Option<String>, raw_method_names: bool) -> Self {
        LayerMetrics {
            target: target.as_deref().unwrap_or(UNKNOWN_TARGET).into(),
            raw_method_names,
            described: Once::new(),
            cache: RwLock::new(Cache::default()),
        }
    }

    /// The handles of a call with `grpc_method` (its `tonic::GrpcMethod`,
    /// if any) to `path`: the `memo`'s, if it holds this method's (no lock,
    /// no map); else found in the map, or registered now (once per method).
    pub(crate) fn handles(
        &self,
        memo: &mut HandlesMemo,
        grpc_method: Option<&tonic::GrpcMethod<'static>>,
        path: &str,
    ) -> Arc<MethodHandles> {
        let method = MethodLabel::new(grpc_method, path, self.raw_method_names);
        let MethodLabel::Named {
            service,
            method: name,
        } = method
        else {
            return self.lookup(method);
        };
        let key = named_key(service, name);
        if let Some((memo_key, handles)) = &memo.0
            && *memo_key == key
        {
            return handles.clone();
        }
        let handles = self.lookup(method);
        memo.0 = Some((key, handles.clone()));
        handles
    }

    fn lookup(&self, method: MethodLabel<'_>) -> Arc<MethodHandles> {
        if let Ok(cache) = self.cache.read()
            && let Some(handles) = cache.get(method)
        {
            return handles.clone();
        }
        self.register(method)
    }

    #[cold]
    #[inline(never)]
    fn register(&self, method: MethodLabel<'_>) -> Arc<MethodHandles> {
        self.described.call_once(describe);
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another call may have registered it since the read.
        if let Some(handles) = cache.get(method) {
            return handles.clone();
        }
        let handles = Arc::new(MethodHandles::register(method.value(), self.target.clone()));
        if cache.len() < CACHE_LIMIT {
            cache.insert(method, handles.clone());
        }
        handles
    }
}

impl std::fmt::Debug for LayerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerMetrics")
            .field("target", &self.target)
            .field("raw_method_names", &self.raw_method_names)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The handles of a generated client's call, found without a memo.
    fn named(
        layer: &LayerMetrics,
        service: &'static str,
        method: &'static str,
    ) -> Arc<MethodHandles> {
        let grpc_method = tonic::GrpcMethod::new(service, method);
        layer.handles(&mut HandlesMemo::default(), Some(&grpc_method), "/x/y")
    }

    /// The handles of a call to a raw `path`.
    fn raw(layer: &LayerMetrics, path: &str) -> Arc<MethodHandles> {
        layer.handles(&mut HandlesMemo::default(), None, path)
    }

    #[test]
    fn a_method_s_handles_are_registered_once_and_then_shared() {
        let layer = LayerMetrics::new(None, false);
        let first = named(&layer, "pkg.Svc", "A");
        let again = named(&layer, "pkg.Svc", "A");
        let other_method = named(&layer, "pkg.Svc", "B");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &other_method));
        // Every unnamed path shares the one `other` entry.
        let a = raw(&layer, "/x.Y/A");
        let b = raw(&layer, "/x.Y/B");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.method, "other");
    }

    #[test]
    fn raw_names_are_kept_apart_when_asked_for() {
        let layer = LayerMetrics::new(Some("dns:///h:443".into()), true);
        let a = raw(&layer, "/x.Y/A");
        let b = raw(&layer, "/x.Y/B");
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((a.method.as_str(), &*a.target), ("x.Y/A", "dns:///h:443"));
        assert!(Arc::ptr_eq(&a, &raw(&layer, "/x.Y/A")));
    }

    #[test]
    fn the_cache_stops_growing_at_its_limit() {
        let layer = LayerMetrics::new(None, true);
        for i in 0..CACHE_LIMIT + 10 {
            raw(&layer, &format!("/x.Y/M{i}"));
        }
        assert_eq!(layer.cache.read().unwrap().len(), CACHE_LIMIT);
        // Past the limit a method still gets (uncached) handles.
        let late = raw(&layer, "/x.Y/Late");
        assert_eq!(late.method, "x.Y/Late");
    }

    #[test]
    fn a_memo_gives_back_its_method_s_handles_and_takes_the_next_method_s() {
        let layer = LayerMetrics::new(None, false);
        let (a, b) = (
            tonic::GrpcMethod::new("pkg.Svc", "A"),
            tonic::GrpcMethod::new("pkg.Svc", "B"),
        );
        let mut memo = HandlesMemo::default();
        let first = layer.handles(&mut memo, Some(&a), "/pkg.Svc/A");
        assert!(Arc::ptr_eq(&first, &named(&layer, "pkg.Svc", "A")));
        assert!(Arc::ptr_eq(&first, &layer.handles(&mut memo, Some(&a), "")));
        // Another method replaces the memo's, and is not given A's.
        let other = layer.handles(&mut memo, Some(&b), "/pkg.Svc/B");
        assert_eq!(other.method, "pkg.Svc/B");
        assert!(Arc::ptr_eq(&other, &layer.handles(&mut memo, Some(&b), "")));
        memo.forget();
        assert!(memo.0.is_none());
    }

    #[test]
    fn a_layer_without_a_target_is_labelled_unknown() {
        let layer = LayerMetrics::new(None, false);
        assert_eq!(&*raw(&layer, "/a.B/C").target, "unknown");
    }
}
