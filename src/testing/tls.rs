//! Certificates made at run time for TLS tests (feature `testing-tls`).
//!
//! rcgen behind the feature rather than as a dev-dependency: a
//! dev-dependency is built for every bench and example too, and rcgen
//! brings ring's C build with it.

use std::io;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Identity};

/// A certificate authority made for one test, e.g. the CA a
/// [`TestServer`](super::TestServer) certificate is issued by, or the one it
/// requires client certificates from.
///
/// ```no_run
/// # async fn f() -> std::io::Result<()> {
/// use tonic_retry::testing::TestServer;
/// use tonic_retry::testing::tls::TestCa;
///
/// let ca = TestCa::new("test CA")?;
/// let server = TestServer::builder()
///     .tls(ca.issue(&["127.0.0.1"])?.identity(), None)
///     .start()
///     .await?;
/// // Clients trust `ca.pem()` (or `ca.certificate()`).
/// # Ok(()) }
/// ```
pub struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A leaf certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl TestCert {
    /// The certificate and key as a tonic [`Identity`], for a server (or a
    /// client presenting it).
    pub fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }
}

impl TestCa {
    /// A new self-signed CA with common name `name` and a fresh key.
    pub fn new(name: &str) -> io::Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(io::Error::other)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().map_err(io::Error::other)?;
        let pem = params.self_signed(&key).map_err(io::Error::other)?.pem();
        Ok(TestCa {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The CA certificate, for `ClientTlsConfig::ca_certificate` or as the
    /// client CA of [`TestServerBuilder::tls`](super::TestServerBuilder::tls).
    pub fn certificate(&self) -> Certificate {
        Certificate::from_pem(&self.pem)
    }

    /// A certificate signed by this CA for `names`: DNS names or IP
    /// addresses (e.g. `"127.0.0.1"`), with a fresh key.
    pub fn issue(&self, names: &[&str]) -> io::Result<TestCert> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).map_err(io::Error::other)?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tonic-retry test");
        let key = KeyPair::generate().map_err(io::Error::other)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(io::Error::other)?;
        Ok(TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}
