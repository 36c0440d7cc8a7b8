//! A scripted fault-injection gRPC server for testing retries (feature
//! `testing`).
//!
//! [`TestServer`] serves the `retry.test.v1.Echo` service of
//! `proto/echo.proto` on `127.0.0.1` in a background tokio task. It is not
//! the tonic-generated server but a hand-written [`EchoService`] that
//! controls every header, so it can produce the responses a retry policy has
//! to cope with: Trailers-Only errors, errors after response headers, pushback
//! (valid, garbage or repeated), `RetryInfo` details, malformed
//! `grpc-status`, bare HTTP errors from a "proxy", stream resets, delays and
//! responses sent before the request stream ended.
//!
//! # Scripting attempts with request metadata
//!
//! * `x-call-id: <string>` groups the attempts of one logical call. The
//!   server numbers the attempts of each call id 0, 1, 2, … in arrival order.
//!   Without the header every request is a call of its own (attempt 0),
//!   recorded under the call id `""`.
//! * `x-fault: <JSON array of FaultAction>` is the script: attempt `i` uses
//!   action `min(i, len - 1)`, so the last action repeats. A missing or empty
//!   header (or `[]`) means the default action, a successful echo. Invalid
//!   JSON is answered with `INVALID_ARGUMENT` naming the parse error.
//!
//! A [`FaultAction`] is a JSON object; every field is optional, unknown
//! fields are rejected:
//!
//! ```text
//! [{"code":14,"message":"try again","pushback":"100"},
//!  {"code":14,"headers_first":true,"delay_ms":50,"body_delay_ms":10},
//!  {"code":8,"retry_info_ms":250,"raw_headers":[["grpc-retry-pushback-ms","1"]]},
//!  {"grpc_status_raw":"abc"}, {"http_status":503}, {"reset":true}, {"early":true},
//!  {}]
//! ```
//!
//! | field | type | effect |
//! |---|---|---|
//! | `code` | integer 0..=16 | status code; 0 (default) echoes the request |
//! | `message` | string | `grpc-message` |
//! | `pushback` | string | raw `grpc-retry-pushback-ms` value |
//! | `headers_first` | bool | errors: headers first, status in trailers; OK `Unary`/`ClientStream`: headers before reading the request |
//! | `delay_ms` | integer | sleep before responding |
//! | `body_delay_ms` | integer | sleep after the response headers |
//! | `retry_info_ms` | integer | `google.rpc.RetryInfo` in `grpc-status-details-bin` |
//! | `retry_info_raw` | `[seconds, nanos]` | a `RetryInfo` with exactly this raw delay (any `i64`, `i32`); replaces `retry_info_ms` |
//! | `raw_headers` | `[[name, value], …]` | appended to the status headers |
//! | `grpc_status_raw` | string | replaces the `grpc-status` value verbatim |
//! | `http_status` | integer | this HTTP status, no `grpc-status` |
//! | `http_body` | string | with `http_status`: this response body (not a gRPC message) |
//! | `content_type` | string | with `http_status`: this `content-type` (default `text/plain`) |
//! | `reset` | bool | `RST_STREAM` instead of a response |
//! | `reset_reason` | integer | HTTP/2 error code of the reset (default 2, `INTERNAL_ERROR`) |
//! | `early` | bool | respond without reading the request body |
//! | `stall_ms` | integer | sleep before reading or answering anything |
//! | `read_delay_ms` | integer | sleep before reading each request message |
//! | `fail_after_messages` | integer | read that many messages, then answer with the status (Trailers-Only) |
//!
//! Build scripts with [`FaultAction`]'s helpers and [`fault_header`] (or
//! [`set_script`]) rather than by hand.
//!
//! # What the server does with one attempt
//!
//! 1. It records an [`AttemptRecord`] as soon as the request headers arrive.
//!    With a [`Capacity`] model (off by default, see
//!    [`TestServerBuilder::capacity`]), the attempt then waits for a worker
//!    and holds it for one service time, or is answered UNAVAILABLE at once
//!    when the queue in front of the workers is full. Then it sleeps
//!    `stall_ms` (reading nothing).
//! 2. With `fail_after_messages: n`, it reads `n` request messages and
//!    answers with the action's status at once (step 4, Trailers-Only).
//!    Otherwise `Unary`, `ClientStream` and `ServerStream` read the whole
//!    request body (updating `request_bytes` / `request_messages`), unless
//!    the action is `early`, or an OK `headers_first` (`Unary` and
//!    `ClientStream` then send their headers first and read the request as
//!    the response body is polled, like `Bidi`). `Bidi` never waits for the
//!    request body. Each message read waits `read_delay_ms` first.
//! 3. It sleeps `delay_ms`. If the client resets the stream meanwhile, the
//!    handler is dropped and the record is marked `cancelled`. Under
//!    [`TestServer`], tonic's server also enforces the request's
//!    `grpc-timeout` up to the response headers: when it expires the
//!    handler is dropped (`cancelled`) and tonic answers `CANCELLED`.
//! 4. It responds, in this order of precedence:
//!    * `reset`: resets the stream (after the headers, if `headers_first`);
//!    * `http_status`: that HTTP status, `content-type: text/plain`, no
//!      `grpc-status`, plus `pushback` and `raw_headers`;
//!    * `code` ≠ 0: a Trailers-Only response, or headers then trailers with
//!      `headers_first`;
//!    * `code` = 0: headers, then for `Unary` / `ClientStream` one
//!      [`EchoResponse`](proto::EchoResponse) with the concatenated payloads
//!      and texts of all request messages, the attempt index, `request_bytes`
//!      and `request_messages`; for `ServerStream` three such responses; for
//!      `Bidi` one response per request message as it arrives (with running
//!      totals), then the trailers.
//!
//!    The status headers are `grpc-status` (replaced by `grpc_status_raw`),
//!    `grpc-message`, `grpc-status-details-bin`, then `pushback` and
//!    `raw_headers` appended; OK responses carry them in their trailers too.
//!
//! # Example
//!
//! ```no_run
//! use tonic::Code;
//! use tonic_retry::testing::proto::{EchoClient, EchoRequest};
//! use tonic_retry::testing::{FaultAction, TestServer, set_script};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let server = TestServer::start().await?;
//! let mut client = EchoClient::connect(server.uri()).await?;
//! let script = [FaultAction::code(Code::Unavailable).pushback("100"), FaultAction::ok()];
//!
//! let mut request = tonic::Request::new(EchoRequest { payload: b"hi".to_vec(), text: "hello".into() });
//! set_script(&mut request, "call-1", &script)?;
//! let status = client.unary(request).await.unwrap_err();
//! assert_eq!(status.code(), Code::Unavailable);
//!
//! let mut request = tonic::Request::new(EchoRequest::default());
//! set_script(&mut request, "call-1", &script)?;
//! assert_eq!(client.unary(request).await?.into_inner().attempt, 1);
//!
//! assert_eq!(server.attempts("call-1").len(), 2);
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod body;
mod capacity;
mod fault;
mod frame;
pub mod proto;
mod record;
mod routed;
mod service;
#[cfg(feature = "testing-tls")]
pub mod tls;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataValue;
use tonic::metadata::errors::InvalidMetadataValue;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
#[cfg(feature = "testing-tls")]
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use routed::Routed;

pub use capacity::{Capacity, CapacityConfig, CapacityStats, ServiceTime};
pub use fault::{CALL_ID_HEADER, FAULT_HEADER, FaultAction, fault_header};
pub use record::{AttemptRecord, ResetStream};
pub use service::{EchoService, SERVER_STREAM_RESPONSES};

/// Sets `x-call-id` and `x-fault` on `request`.
///
/// Fails only if `call_id` is not a valid ASCII metadata value.
pub fn set_script<T>(
    request: &mut tonic::Request<T>,
    call_id: &str,
    actions: &[FaultAction],
) -> Result<(), InvalidMetadataValue> {
    let call_id = MetadataValue::try_from(call_id)?;
    let script = MetadataValue::try_from(fault_header(actions))?;
    let metadata = request.metadata_mut();
    metadata.insert(CALL_ID_HEADER, call_id);
    metadata.insert(FAULT_HEADER, script);
    Ok(())
}

/// How long [`TestServer::shutdown`] waits for connections to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// An in-process [`EchoService`] served over HTTP/2 on a local TCP port.
///
/// Dropping it signals a graceful shutdown without waiting for it; use
/// [`TestServer::shutdown`] to wait until the port is closed (e.g. before
/// starting a new server on the same address).
#[derive(Debug)]
pub struct TestServer {
    addr: SocketAddr,
    /// Serves TLS (`https://` in [`uri`](Self::uri)).
    tls: bool,
    service: EchoService,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with a fresh [`EchoService`] on `127.0.0.1:0` (a free
    /// port). Must be called within a tokio runtime.
    pub async fn start() -> io::Result<TestServer> {
        Self::start_at(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a server with a fresh [`EchoService`] on `addr`, e.g. the
    /// address of a server that was shut down, to bring it back up.
    pub async fn start_at(addr: SocketAddr) -> io::Result<TestServer> {
        Self::start_with(addr, EchoService::new()).await
    }

    /// Starts a server for `service` on `addr`. Reusing the service of a
    /// previous server keeps the attempt records (and per-call attempt
    /// numbering) across a restart.
    pub async fn start_with(addr: SocketAddr, service: EchoService) -> io::Result<TestServer> {
        let listener = TcpListener::bind(addr).await?;
        Self::start_on(listener, service).await
    }

    /// Starts a server for `service` on an already bound listener.
    pub async fn start_on(listener: TcpListener, service: EchoService) -> io::Result<TestServer> {
        Self::serve(listener, service, Settings::default()).await
    }

    /// A builder for a server with non-default settings, e.g. a small
    /// HTTP/2 stream window:
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// use tonic_retry::testing::TestServer;
    /// // h2's protocol default (hyper's server default is 1 MiB): a slow
    /// // reader stalls a streaming request after 64 KiB.
    /// let server = TestServer::builder().stream_window(65_535).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> TestServerBuilder {
        TestServerBuilder {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            service: EchoService::new(),
            settings: Settings::default(),
        }
    }

    async fn serve(
        listener: TcpListener,
        service: EchoService,
        settings: Settings,
    ) -> io::Result<TestServer> {
        let addr = listener.local_addr()?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (shutdown, signal) = oneshot::channel::<()>();
        let svc = service.clone();
        let builder = Server::builder().initial_stream_window_size(settings.stream_window);
        #[cfg(feature = "testing-tls")]
        let tls = settings.tls.is_some();
        #[cfg(not(feature = "testing-tls"))]
        let tls = false;
        #[cfg(feature = "testing-tls")]
        let builder = match settings.tls {
            Some(config) => builder.tls_config(config).map_err(io::Error::other)?,
            None => builder,
        };
        let task = tokio::spawn(async move {
            let signal = async move {
                // Dropped sender means shutdown too.
                let _ = signal.await;
            };
            let served = match settings.extra {
                // The echo service alone, exactly as without the builder.
                None => {
                    builder
                        .serve_with_incoming_shutdown(svc, incoming, signal)
                        .await
                }
                Some(extra) => {
                    let routed = Routed { echo: svc, extra };
                    builder
                        .serve_with_incoming_shutdown(routed, incoming, signal)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::warn!(error = %e, "tonic-retry test server failed");
            }
        });
        Ok(TestServer {
            addr,
            tls,
            service,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `EchoClient::connect` or `Endpoint`;
    /// `https://127.0.0.1:PORT` for a server started with
    /// [`TestServerBuilder::tls`].
    pub fn uri(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The service (shared with the server; clones share records).
    pub fn service(&self) -> &EchoService {
        &self.service
    }

    /// The capacity model, if the server has one (see
    /// [`TestServerBuilder::capacity`]): change its workers, read its queue.
    pub fn capacity(&self) -> Option<&Capacity> {
        self.service.capacity()
    }

    /// Snapshots of the attempts of call `call_id`, in arrival order.
    pub fn attempts(&self, call_id: &str) -> Vec<AttemptRecord> {
        self.service.attempts(call_id)
    }

    /// Snapshots of all attempts, in arrival order.
    pub fn all_attempts(&self) -> Vec<AttemptRecord> {
        self.service.all_attempts()
    }

    /// Number of attempts received, all calls together.
    pub fn total_attempts(&self) -> usize {
        self.service.total_attempts()
    }

    /// Waits until call `call_id` has at least `n` attempts.
    pub async fn wait_for_attempts(&self, call_id: &str, n: usize) {
        self.service.wait_for_attempts(call_id, n).await;
    }

    /// Stops accepting connections, lets open connections finish their
    /// streams (HTTP/2 `GOAWAY`) and waits for that, at most 10 seconds.
    /// The listening socket is closed when this returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

/// Starts a [`TestServer`] with non-default settings; from
/// [`TestServer::builder`].
#[derive(Debug)]
pub struct TestServerBuilder {
    addr: SocketAddr,
    service: EchoService,
    settings: Settings,
}

/// How the server is run, besides its address and echo service.
#[derive(Debug, Default)]
struct Settings {
    stream_window: Option<u32>,
    /// Services served next to the echo service.
    extra: Option<Routes>,
    #[cfg(feature = "testing-tls")]
    tls: Option<ServerTlsConfig>,
}

impl TestServerBuilder {
    /// The HTTP/2 stream window the server grants each request stream (its
    /// initial flow-control window), in bytes. hyper's default is 1 MiB.
    pub fn stream_window(mut self, bytes: u32) -> Self {
        self.settings.stream_window = Some(bytes);
        self
    }

    /// Serves `service` next to the echo service, under its
    /// [`NamedService::NAME`]: e.g. a gRPC reflection service for
    /// `retry.test.v1`, built from [`proto::FILE_DESCRIPTOR_SET`]. Calls to
    /// `retry.test.v1.Echo` still reach the scripted service; a service name
    /// nobody serves is answered `UNIMPLEMENTED` without being recorded.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
    /// use tonic_retry::testing::{TestServer, proto};
    ///
    /// let reflection = tonic_reflection::server::Builder::configure()
    ///     .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
    ///     .build_v1()?;
    /// let server = TestServer::builder().add_service(reflection).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower_service::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.settings.extra = Some(match self.settings.extra.take() {
            Some(routes) => routes.add_service(service),
            None => Routes::new(service),
        });
        self
    }

    /// Serves TLS with `identity` (a certificate chain and its private key,
    /// PEM). With `client_ca`, the server requires every client to present a
    /// certificate signed by it (mutual TLS). [`TestServer::uri`] then
    /// starts with `https://`.
    ///
    /// Behind the `testing-tls` feature, which adds tonic's `tls-ring`
    /// (rustls with the ring provider): the `testing` feature alone builds
    /// no TLS stack.
    #[cfg(feature = "testing-tls")]
    pub fn tls(mut self, identity: Identity, client_ca: Option<Certificate>) -> Self {
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = client_ca {
            config = config.client_ca_root(ca);
        }
        self.settings.tls = Some(config);
        self
    }

    /// The address to listen on (default `127.0.0.1:0`).
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// The service to serve (default a fresh one); reuse one to keep its
    /// attempt records.
    pub fn service(mut self, service: EchoService) -> Self {
        self.service = service;
        self
    }

    /// Serve with limited capacity: every attempt waits for one of a few
    /// workers in a FIFO queue and holds it for a service time; an attempt
    /// that finds the queue full is answered UNAVAILABLE at once. See
    /// [`Capacity`]. Without it (the default) every attempt is served at
    /// once.
    ///
    /// ```no_run
    /// # async fn f() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// use tonic_retry::testing::{Capacity, CapacityConfig, ServiceTime, TestServer};
    ///
    /// let server = TestServer::builder()
    ///     .capacity(Capacity::new(CapacityConfig {
    ///         workers: 2,
    ///         queue_limit: 40,
    ///         service_time: ServiceTime::Exponential { mean: Duration::from_millis(20) },
    ///         ..CapacityConfig::default()
    ///     }))
    ///     .start()
    ///     .await?;
    /// // About 100 attempts a second; halve it:
    /// server.capacity().unwrap().set_workers(1);
    /// # Ok(()) }
    /// ```
    pub fn capacity(mut self, capacity: Capacity) -> Self {
        self.service = self.service.with_capacity(capacity);
        self
    }

    /// Binds and starts the server. Must be called within a tokio runtime.
    pub async fn start(self) -> io::Result<TestServer> {
        let listener = TcpListener::bind(self.addr).await?;
        TestServer::serve(listener, self.service, self.settings).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
