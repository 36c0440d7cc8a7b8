//! The bodies of a call: the request replayed to every attempt
//! ([`replay`]), and the response body that guards the caller and reports
//! the call's final status ([`response`]).

pub mod replay;
pub mod response;
