//! What a call may do: the retry policy ([`retry`]), the gRPC service
//! config it can come from ([`config`]), per-call options ([`options`]), the
//! A6 backoff schedule ([`backoff`]) and server-chosen delays
//! ([`pushback`]).

pub(crate) mod backoff;
pub(crate) mod codes;
pub mod config;
pub(crate) mod options;
pub mod pushback;
pub(crate) mod retry;
