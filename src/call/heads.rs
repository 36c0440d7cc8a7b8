//! The request head kept for retries, and the metadata each attempt adds.

use std::time::Duration;

use http::header::{CONTENT_TYPE, HeaderName, TE};
use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderValue, Method, Uri, Version};

use crate::deadline;

/// `grpc-previous-rpc-attempts`: sent on attempt 2 and later, and added to
/// the metadata of the result the caller sees.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: HeaderName =
    HeaderName::from_static("grpc-previous-rpc-attempts");

/// The request heads of attempts after the first: copies of the caller's
/// head, with the attempt's metadata written in.
///
/// It lives in a pooled `CallKit` and is refilled call after call; its
/// lists keep their room, so keeping a request's head hashes nothing and
/// allocates nothing (a cloned `HeaderMap` and `Extensions`, the plain
/// form, cost ~170–250 ns more per call; a cloned `HeaderMap` alone ~30 ns:
/// BENCHMARKS.md, "Mechanisms"). The two headers tonic puts in
/// every request (`te: trailers`, `content-type: application/grpc`) are
/// kept as one-byte marks; every other header is a clone of its (shared or
/// static) name and value. A `HeaderMap` is built only for a retry.
pub(crate) struct RequestHeads {
    method: Method,
    uri: Uri,
    version: Version,
    /// The request's headers, in order.
    order: Vec<KeptHeader>,
    /// The values of the `KeptHeader::Other` entries, in order.
    others: Vec<(HeaderName, HeaderValue)>,
    extensions: SavedExtensions,
}

/// One header of a kept head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeptHeader {
    /// `te: trailers`
    TeTrailers,
    /// `content-type: application/grpc`
    ContentTypeGrpc,
    /// The next entry of `RequestHeads::others`.
    Other,
}

impl KeptHeader {
    /// Which mark keeps this header. Comparing a few bytes costs less than
    /// cloning a shared value (an indirect call whose result the processor
    /// must reload, stalling) and copying it into a list, on every header
    /// of every call.
    #[inline]
    fn of(name: &HeaderName, value: &HeaderValue) -> Self {
        if value.is_sensitive() {
            KeptHeader::Other
        } else if *name == TE && value.as_bytes() == b"trailers" {
            KeptHeader::TeTrailers
        } else if *name == CONTENT_TYPE && value.as_bytes() == b"application/grpc" {
            KeptHeader::ContentTypeGrpc
        } else {
            KeptHeader::Other
        }
    }
}

/// The longest header list a pooled kit keeps room for.
const KEPT_HEADER_ROOM: usize = 64;

impl RequestHeads {
    /// Holds no request yet.
    pub(crate) fn empty() -> Self {
        RequestHeads {
            method: Method::POST,
            uri: Uri::default(),
            version: Version::default(),
            order: Vec::new(),
            others: Vec::new(),
            extensions: SavedExtensions::Empty,
        }
    }

    /// Keeps `request`'s head for retries, and returns the request's own
    /// timeout from its `grpc-timeout` header, found in the kept list
    /// (saving a hashed lookup). A malformed value counts as absent, as the
    /// tonic `Channel` treats it.
    #[inline]
    pub(crate) fn fill<B>(&mut self, request: &http::Request<B>) -> Option<Duration> {
        // Calls through one client repeat the method and URI, and the kit
        // kept the last call's: comparing bytes is cheaper than cloning
        // the URI's three shared strings (each an indirect call).
        if self.method != *request.method() {
            self.method = request.method().clone();
        }
        if !same_uri(&self.uri, request.uri()) {
            self.uri = request.uri().clone();
        }
        self.version = request.version();
        self.extensions.keep(request.extensions());
        for (name, value) in request.headers() {
            let kept = KeptHeader::of(name, value);
            if kept == KeptHeader::Other {
                self.others.push((name.clone(), value.clone()));
            }
            self.order.push(kept);
        }
        let (_, timeout) = self
            .others
            .iter()
            .find(|(name, _)| *name == deadline::GRPC_TIMEOUT)?;
        deadline::parse_grpc_timeout(timeout.as_bytes())
    }

    /// Drops the kept head's values (the URI and method, small and
    /// holding no resource, are overwritten by the next call). A very long
    /// list gives its room back.
    #[inline]
    pub(crate) fn clear(&mut self) {
        if self.order.capacity() > KEPT_HEADER_ROOM {
            self.order = Vec::new();
        } else {
            self.order.clear();
        }
        if self.others.capacity() > KEPT_HEADER_ROOM {
            self.others = Vec::new();
        } else {
            self.others.clear();
        }
        self.extensions = SavedExtensions::Empty;
    }

    /// The request's `tonic::GrpcMethod`, as kept (no second lookup when
    /// it was the only extension).
    pub(crate) fn grpc_method(&self) -> Option<&tonic::GrpcMethod<'static>> {
        match &self.extensions {
            SavedExtensions::Empty => None,
            SavedExtensions::GrpcMethod(method) => Some(method),
            SavedExtensions::Other(extensions) => extensions.get(),
        }
    }

    /// Whether the request had extensions besides tonic's `GrpcMethod`
    /// (which the caller's `CallOptions` or `CancellationToken` may be).
    pub(crate) fn has_other_extensions(&self) -> bool {
        matches!(self.extensions, SavedExtensions::Other(_))
    }

    /// Whether no header is kept.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty() && self.others.is_empty()
    }

    /// The head of attempt `n` (1-based; a transparent retry resends
    /// attempt 1). Its `grpc-timeout` is the caller's to write.
    pub(crate) fn next(&mut self, n: u32) -> Parts {
        let mut parts = self.parts();
        if n > 1 {
            parts
                .headers
                .insert(GRPC_PREVIOUS_RPC_ATTEMPTS, HeaderValue::from(n - 1));
        }
        parts
    }

    /// A new head for a retry (allocating: only retries pay for it).
    fn parts(&self) -> Parts {
        const TRAILERS: HeaderValue = HeaderValue::from_static("trailers");
        const APPLICATION_GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.headers = HeaderMap::with_capacity(self.order.len());
        let mut others = self.others.iter();
        for kept in &self.order {
            match kept {
                KeptHeader::TeTrailers => parts.headers.append(TE, TRAILERS),
                KeptHeader::ContentTypeGrpc => parts.headers.append(CONTENT_TYPE, APPLICATION_GRPC),
                KeptHeader::Other => match others.next() {
                    Some((name, value)) => parts.headers.append(name.clone(), value.clone()),
                    // `fill` pushes one entry per mark; nothing to append
                    // if that were ever not so.
                    None => false,
                },
            };
        }
        parts.extensions = self.extensions.restore();
        parts
    }
}

/// Whether two URIs are the same bytes (`Uri`'s own equality ignores the
/// case of the host, and a retry must resend exactly what the caller sent).
#[inline]
fn same_uri(a: &Uri, b: &Uri) -> bool {
    a.scheme_str() == b.scheme_str()
        && same_part(
            a.authority().map(|a| a.as_str()),
            b.authority().map(|b| b.as_str()),
        )
        && same_part(
            a.path_and_query().map(|p| p.as_str()),
            b.path_and_query().map(|p| p.as_str()),
        )
}

/// Whether two parts of URIs are the same bytes. A generated client's path
/// is the same static string on every call, so the same address and length
/// settle it without comparing the bytes.
#[inline]
fn same_part(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
        (a, b) => a.is_none() && b.is_none(),
    }
}

/// The request's extensions, kept for retries. tonic's generated clients
/// put exactly one, `GrpcMethod`, into every request; keeping just that
/// value avoids cloning the extension map (three allocations) per call.
enum SavedExtensions {
    Empty,
    GrpcMethod(tonic::GrpcMethod<'static>),
    Other(Extensions),
}

impl SavedExtensions {
    /// Keeps `extensions` in place of what an emptied kit holds (nothing):
    /// written where it lies, and not at all when there is nothing to keep.
    #[inline]
    fn keep(&mut self, extensions: &Extensions) {
        if extensions.is_empty() {
            if !matches!(self, SavedExtensions::Empty) {
                *self = SavedExtensions::Empty;
            }
            return;
        }
        if extensions.len() == 1
            && let Some(method) = extensions.get::<tonic::GrpcMethod<'static>>()
        {
            *self = SavedExtensions::GrpcMethod(method.clone());
            return;
        }
        self.keep_other(extensions);
    }

    #[cold]
    #[inline(never)]
    fn keep_other(&mut self, extensions: &Extensions) {
        *self = SavedExtensions::Other(extensions.clone());
    }

    fn restore(&self) -> Extensions {
        match self {
            SavedExtensions::Empty => Extensions::new(),
            SavedExtensions::GrpcMethod(method) => {
                let mut extensions = Extensions::new();
                extensions.insert(method.clone());
                extensions
            }
            SavedExtensions::Other(extensions) => extensions.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::options::CallOptions;

    fn request_with(headers: HeaderMap) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.headers_mut() = headers;
        request
    }

    #[test]
    fn refilled_heads_keep_every_value_in_order() {
        let mut original = HeaderMap::new();
        original.append("x-a", HeaderValue::from_static("1"));
        original.append("x-a", HeaderValue::from_static("2"));
        original.insert("te", HeaderValue::from_static("trailers"));
        let mut heads = RequestHeads::empty();
        for _ in 0..3 {
            let timeout = heads.fill(&request_with(original.clone()));
            assert_eq!(timeout, None);
            assert_eq!(heads.parts().headers, original);
            heads.clear();
            assert!(heads.is_empty());
        }
        let mut big = HeaderMap::new();
        for i in 0..200 {
            big.insert(
                http::header::HeaderName::try_from(format!("x-{i}")).unwrap(),
                HeaderValue::from_static("v"),
            );
        }
        heads.fill(&request_with(big));
        assert_eq!(heads.others.len(), 200);
        heads.clear();
        assert!(
            heads.others.capacity() <= KEPT_HEADER_ROOM
                && heads.order.capacity() <= KEPT_HEADER_ROOM,
            "a very long list gives its room back"
        );
    }

    #[test]
    fn headers_kept_as_marks_come_back_in_order_with_their_flags() {
        let mut original = HeaderMap::new();
        original.append("x-first", HeaderValue::from_static("1"));
        original.append(TE, HeaderValue::from_static("trailers"));
        original.append("x-middle", HeaderValue::from_static("2"));
        original.append(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        // Near misses are kept as they are.
        original.append(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        let mut sensitive = HeaderValue::from_static("trailers");
        sensitive.set_sensitive(true);
        original.append(TE, sensitive);
        original.append("x-last", HeaderValue::from_static("3"));
        let mut heads = RequestHeads::empty();
        heads.fill(&request_with(original.clone()));
        assert_eq!(
            heads
                .order
                .iter()
                .filter(|k| **k != KeptHeader::Other)
                .count(),
            2,
            "only the two exact, non-sensitive pairs become marks"
        );
        let rebuilt = heads.parts().headers;
        let pairs = |map: &HeaderMap| -> Vec<(String, Vec<u8>, bool)> {
            map.iter()
                .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec(), v.is_sensitive()))
                .collect()
        };
        assert_eq!(pairs(&rebuilt), pairs(&original));
    }

    #[test]
    fn the_header_copy_finds_the_request_timeout() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert(deadline::GRPC_TIMEOUT, HeaderValue::from_static("250m"));
        let mut heads = RequestHeads::empty();
        let timeout = heads.fill(&request_with(headers.clone()));
        assert_eq!(timeout, Some(Duration::from_millis(250)));
        assert_eq!(
            heads.others.len(),
            2,
            "grpc-timeout is kept for retries too"
        );
        heads.clear();
        // A malformed value counts as absent, as the tonic Channel treats it.
        headers.insert(deadline::GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        assert_eq!(heads.fill(&request_with(headers)), None);
    }

    #[test]
    fn extensions_survive_for_retries() {
        let mut request = http::Request::new(());
        request
            .extensions_mut()
            .insert(tonic::GrpcMethod::new("pkg.Svc", "M"));
        let mut heads = RequestHeads::empty();
        heads.fill(&request);
        assert!(matches!(heads.extensions, SavedExtensions::GrpcMethod(_)));
        let restored = heads.parts().extensions;
        let method = restored.get::<tonic::GrpcMethod<'static>>().unwrap();
        assert_eq!((method.service(), method.method()), ("pkg.Svc", "M"));

        request
            .extensions_mut()
            .insert(CallOptions::new().max_attempts(2));
        heads.clear();
        heads.fill(&request);
        assert!(matches!(heads.extensions, SavedExtensions::Other(_)));
        let restored = heads.parts().extensions;
        assert!(restored.get::<tonic::GrpcMethod<'static>>().is_some());
        assert_eq!(
            restored.get::<CallOptions>(),
            Some(&CallOptions::new().max_attempts(2))
        );
    }

    #[test]
    fn a_kept_uri_is_replaced_unless_byte_for_byte_the_same() {
        let mut heads = RequestHeads::empty();
        for uri in [
            "http://Host:50051/pkg.Svc/M",
            // Equal as a `Uri` (hosts compare without case), not as bytes.
            "http://host:50051/pkg.Svc/M",
            "http://host:50051/pkg.Svc/N",
            "https://host:50051/pkg.Svc/N",
            "/pkg.Svc/N",
        ] {
            let mut request = http::Request::new(());
            *request.uri_mut() = Uri::from_static(uri);
            heads.fill(&request);
            assert_eq!(heads.parts().uri.to_string(), uri);
            heads.clear();
        }
    }

    #[test]
    fn uri_parts_match_by_address_or_by_bytes_never_by_prefix() {
        let path = "/pkg.Svc/Method";
        let copy = String::from(path);
        assert!(same_part(Some(path), Some(path)), "the same static string");
        assert!(same_part(Some(path), Some(&copy)), "same bytes elsewhere");
        // Same address, shorter: a prefix is not the same part.
        assert!(!same_part(Some(path), Some(&path[..4])));
        assert!(!same_part(Some(path), Some("/pkg.Svc/Methox")));
        assert!(!same_part(Some(path), None));
        assert!(!same_part(None, Some(path)));
        assert!(same_part(None, None));
    }

    #[test]
    fn the_kept_head_rebuilds_method_uri_and_version() {
        let mut request = http::Request::new(());
        *request.method_mut() = Method::PUT;
        *request.uri_mut() = Uri::from_static("http://h/pkg.Svc/M");
        *request.version_mut() = Version::HTTP_2;
        let mut heads = RequestHeads::empty();
        heads.fill(&request);
        let parts = heads.parts();
        assert_eq!(parts.method, Method::PUT);
        assert_eq!(parts.uri, "http://h/pkg.Svc/M");
        assert_eq!(parts.version, Version::HTTP_2);
    }
}
