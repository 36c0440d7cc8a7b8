//! The target: plaintext or TLS endpoint, and the first connection.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::Failure;
use crate::args::TlsArgs;

/// How long connecting (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A parsed target.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) endpoint: Endpoint,
    /// The canonical URI, e.g. `https://host:443`.
    pub(crate) uri: String,
    /// Whether it is a TLS (`https://`) target.
    pub(crate) tls: bool,
}

/// Parses `target` (`http://`, `https://` or a bare `host:port`, which
/// means plaintext) and applies the TLS flags.
pub(crate) fn target(target: &str, tls: &TlsArgs) -> Result<Target, Failure> {
    let bad = |why: String| Failure::input(format!("target {target:?}: {why}"));
    let uri = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let parsed: http::Uri = uri.parse().map_err(|e| bad(format!("{e}")))?;
    let is_tls = match parsed.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https".into())),
    };
    let Some(authority) = parsed.authority() else {
        return Err(bad("no host".into()));
    };
    if !is_tls && (tls.cacert.is_some() || tls.cert.is_some()) {
        return Err(bad(
            "--cacert, --cert and --key need an https:// target".into()
        ));
    }
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|e| bad(format!("{e}")))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(name) = &tls.authority {
        let scheme = if is_tls { "https" } else { "http" };
        let origin: http::Uri = format!("{scheme}://{name}")
            .parse()
            .map_err(|e| Failure::input(format!("--authority {name:?}: {e}")))?;
        endpoint = endpoint.origin(origin);
    }
    if is_tls {
        endpoint = with_tls(endpoint, authority.host(), tls)?;
    }
    Ok(Target {
        endpoint,
        uri,
        tls: is_tls,
    })
}

/// Adds rustls to `endpoint`: `--cacert` alone when given, else the
/// platform's roots and Mozilla's (Mozilla's alone on a machine without a
/// platform store).
fn with_tls(endpoint: Endpoint, host: &str, tls: &TlsArgs) -> Result<Endpoint, Failure> {
    // tonic skips whatever in a PEM file does not parse, so a file with no
    // certificate (or key) at all would pass unnoticed until a handshake
    // failed for another-sounding reason: check for the PEM block here.
    let read = |flag: &str, path: &std::path::Path| {
        let bytes = std::fs::read(path)
            .map_err(|e| Failure::input(format!("{flag} {}: {e}", path.display())))?;
        let label = if flag == "--key" {
            "PRIVATE KEY-----"
        } else {
            "-----BEGIN CERTIFICATE-----"
        };
        if !String::from_utf8_lossy(&bytes).contains(label) {
            let what = if flag == "--key" {
                "private key"
            } else {
                "certificate"
            };
            return Err(Failure::input(format!(
                "{flag} {}: no PEM {what} in it",
                path.display()
            )));
        }
        Ok(bytes)
    };
    let mut config = ClientTlsConfig::new()
        .domain_name(tls.authority.clone().unwrap_or_else(|| host.to_owned()))
        .assume_http2(true);
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    let bad_tls =
        |e: tonic::transport::Error| Failure::input(format!("TLS settings: {}", error_chain(&e)));
    if let Some(ca) = &tls.cacert {
        let config = config.ca_certificate(Certificate::from_pem(read("--cacert", ca)?));
        return endpoint.clone().tls_config(config).map_err(bad_tls);
    }
    match endpoint
        .clone()
        .tls_config(config.clone().with_enabled_roots())
    {
        Ok(endpoint) => Ok(endpoint),
        // tonic refuses the platform roots when the machine has none.
        Err(_) => endpoint
            .tls_config(config.with_webpki_roots())
            .map_err(bad_tls),
    }
}

/// The channel for the calls. A plaintext channel connects lazily, so that
/// a server that is down makes failed calls (UNAVAILABLE), not an error.
/// A TLS channel connects once first: a certificate the server is not
/// trusted by (or that it does not accept) is a setting to fix, reported as
/// bad input with rustls' reason; any other connect failure again makes
/// failed calls.
pub(crate) async fn channel(target: &Target) -> Result<Channel, Failure> {
    if !target.tls {
        return Ok(target.endpoint.connect_lazy());
    }
    match target.endpoint.connect().await {
        Ok(channel) => Ok(channel),
        Err(e) if is_tls_failure(&e) => Err(Failure::input(format!(
            "TLS handshake with {} failed: {} (see --cacert, --cert/--key, --authority)",
            target.uri,
            error_chain(&e)
        ))),
        Err(_) => Ok(target.endpoint.connect_lazy()),
    }
}

/// Whether `e`'s source chain holds a rustls error (a handshake that
/// failed on a certificate, an alert from the peer, ...).
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// `e` and its sources, joined by ": ", without repeats.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        let text = err.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}
