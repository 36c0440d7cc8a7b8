//! Which `grpc.method` a call is recorded under (A66).
//!
//! A generated client puts the method's names into the request's extensions
//! as `tonic::GrpcMethod`; such a method is recorded as
//! `pkg.Service/Method`. Any other call (a raw path, e.g. a probe or a
//! proxy) is "generic" in A66's words, and is recorded as `other` unless
//! the layer was told to record raw names: a client can be made to send
//! arbitrary paths, and each distinct label value is a new series.

use super::names::OTHER_METHOD;

/// A call's method, as its metrics are keyed: borrowed from the request,
/// never allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MethodLabel<'a> {
    /// Named by the generated code (`tonic::GrpcMethod`).
    Named { service: &'a str, method: &'a str },
    /// A raw path, recorded as it is (without its leading `/`).
    Raw(&'a str),
    /// A raw path, recorded as [`OTHER_METHOD`].
    Other,
}

impl<'a> MethodLabel<'a> {
    /// The label of a call with `grpc_method` (its `tonic::GrpcMethod`, if
    /// any) to `path`; raw paths keep their name only when `raw_names` is
    /// set.
    pub(crate) fn new(
        grpc_method: Option<&'a tonic::GrpcMethod<'static>>,
        path: &'a str,
        raw_names: bool,
    ) -> Self {
        if let Some(m) = grpc_method {
            return MethodLabel::Named {
                service: m.service(),
                method: m.method(),
            };
        }
        if raw_names {
            MethodLabel::Raw(path.trim_start_matches('/'))
        } else {
            MethodLabel::Other
        }
    }

    /// The label's value; allocated only when a method's handles are
    /// registered, once per method.
    pub(crate) fn value(self) -> String {
        match self {
            MethodLabel::Named { service, method } => format!("{service}/{method}"),
            MethodLabel::Raw(path) => path.to_owned(),
            MethodLabel::Other => OTHER_METHOD.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_the_generated_code_named_is_recorded_as_service_slash_method() {
        let named = tonic::GrpcMethod::new("pkg.Svc", "Method");
        for raw_names in [false, true] {
            let label = MethodLabel::new(Some(&named), "/ignored.Path/Here", raw_names);
            assert_eq!(label.value(), "pkg.Svc/Method");
        }
    }

    #[test]
    fn a_raw_path_is_other_unless_raw_names_are_asked_for() {
        let path = "/pkg.Svc/Method";
        assert_eq!(MethodLabel::new(None, path, false).value(), "other");
        assert_eq!(MethodLabel::new(None, path, true).value(), "pkg.Svc/Method");
    }
}
