//! Protecting an overloaded or failing server: A6 retry throttling
//! ([`throttle`]), a retry budget ([`budget`]) and a circuit breaker
//! ([`breaker`]).

pub mod breaker;
pub mod budget;
pub mod throttle;
