//! The test server's services when more than the echo service is served
//! (e.g. a reflection service, see
//! [`TestServerBuilder::add_service`](super::TestServerBuilder::add_service)).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::body::Body;
use tonic::service::Routes;

use super::record::ResetStream;
use super::service::EchoService;

/// The path prefix [`EchoService`] answers.
const ECHO_PREFIX: &str = "/retry.test.v1.Echo/";

/// Sends `retry.test.v1.Echo` calls to the scripted [`EchoService`] and every
/// other path to `extra`.
///
/// Not a tonic `Routes` entry itself: the echo service fails with
/// [`ResetStream`] to reset a stream on purpose, and `Routes` only takes
/// services that cannot fail. Without extra services the server serves the
/// echo service alone, as before, so the hot path of the benches is unchanged.
#[derive(Clone, Debug)]
pub(super) struct Routed {
    pub(super) echo: EchoService,
    pub(super) extra: Routes,
}

type RoutedFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, ResetStream>> + Send>>;

impl tower_service::Service<Request<Body>> for Routed {
    type Response = Response<Body>;
    type Error = ResetStream;
    type Future = RoutedFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Both are always ready: the echo service says so, and `Routes`
        // (an axum router) is ready until called.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.uri().path().starts_with(ECHO_PREFIX) {
            return self.echo.call(req);
        }
        let future = self.extra.call(req);
        Box::pin(async move {
            match future.await {
                Ok(response) => Ok(response),
                // `Routes` cannot fail (its error type is `Infallible`).
                Err(never) => match never {},
            }
        })
    }
}
