//! TLS for coordd (issue 7, item 1), in one place: PEM files in, rustls configs out, for
//! the client port (server side: `coordd`; client side: `coordd-client`, so the agent and
//! the router) and for the peer (Raft) port, where both sides present certificates
//! (mutual TLS).
//!
//! - [`server_config`]: a certificate chain and key, and optionally a CA whose client
//!   certificates are then *required*;
//! - [`client_config`]: the CA that signs the server's certificate, and optionally a
//!   client certificate and key;
//! - [`PeerTls`]: both, from one member certificate, key and the ensemble's CA;
//! - [`accept`]: a server-side handshake bounded in time that closes a connection whose
//!   first bytes are not TLS (a plain-TCP client on a TLS port) at once and cleanly;
//! - `test_ca` (feature `test-ca`): a throw-away CA and certificates for tests and the
//!   demo, written as PEM files.
//!
//! Invariants: every config is built with the ring provider explicitly (never rustls's
//! process-wide default); no input
//! (a missing, empty, or malformed file) panics: each is a [`TlsError`] naming the file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use rustls;
pub use tokio_rustls;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

#[cfg(feature = "test-ca")]
pub mod test_ca;

/// Default for a server's `tls_handshake_timeout_ms`: a TLS handshake not finished within
/// this closes the connection (ZooKeeper's `ssl.handshakeDetectionTimeoutMillis` is 5 s).
pub const TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;

/// How long a server waits for its close (FIN, after a TLS alert if rustls has one) to be
/// written when a handshake fails.
pub const FAILED_HANDSHAKE_CLOSE_MS: u64 = 100;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

fn file_err(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The crypto provider of every config built here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs [`provider`] as rustls's process-wide default unless one is installed: for
/// libraries that build their configs from that default (zookeeper-client), in a
/// process whose dependency graph holds a second provider, where the default is
/// otherwise ambiguous and rustls panics. Idempotent.
pub fn install_process_default_provider() {
    // An error only says a default is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Reads the certificate chain in a PEM file (leaf first); at least one certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let what = "certificate file";
    let bytes = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(what, path, e))?;
    if certs.is_empty() {
        return Err(file_err(what, path, "no CERTIFICATE in it"));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "key file";
    let bytes = std::fs::read(path).map_err(|e| file_err(what, path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => file_err(what, path, "no PRIVATE KEY in it"),
        e => file_err(what, path, e),
    })
}

/// Reads the trusted CA certificates in a PEM file; at least one.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let what = "CA file";
    let certs = load_certs(path).map_err(|e| match e {
        TlsError::File { path, reason, .. } => TlsError::File { what, path, reason },
        e => e,
    })?;
    let mut roots = RootCertStore::empty();
    for c in certs {
        roots.add(c).map_err(|e| file_err(what, path, e))?;
    }
    Ok(roots)
}

/// A server's config: its certificate chain and key; with `client_ca`, clients must present
/// a certificate signed by that CA (the handshake fails otherwise).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = Arc::new(load_roots(ca)?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| file_err("CA file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key_der).map_err(|e| {
        file_err(
            "key file",
            key,
            format!("does not fit {}: {e}", cert.display()),
        )
    })?;
    Ok(Arc::new(config))
}

/// A client's config: the CA that signs the server's certificate, and the client's own
/// certificate and key when the server asks for one.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_roots(ca)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let certs = load_certs(cert)?;
            let key_der = load_key(key)?;
            builder.with_client_auth_cert(certs, key_der).map_err(|e| {
                file_err(
                    "key file",
                    key,
                    format!("does not fit {}: {e}", cert.display()),
                )
            })?
        }
    };
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: an IP address (matched
/// against IP SANs) or a DNS name. `[v6]` brackets are removed.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::Config(format!("server name {host:?}: {e}")))
}

/// The host of `host:port` (the whole string if it has no port).
pub fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    }
}

/// Mutual TLS between ensemble members: one member certificate and key, used as the
/// server certificate of its peer port and as its client certificate when it calls a
/// peer; the ensemble's CA both to require and check the caller's certificate and to
/// check the peer's (against the host of the peer's address).
#[derive(Clone)]
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

impl PeerTls {
    pub fn from_files(cert: &Path, key: &Path, ca: &Path) -> Result<Self, TlsError> {
        let server = server_config(cert, key, Some(ca))?;
        let client = client_config(ca, Some((cert, key)))?;
        Ok(Self {
            acceptor: TlsAcceptor::from(server),
            connector: TlsConnector::from(client),
        })
    }
}

/// Why a server-side handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("TLS handshake not finished within {0} ms")]
    Timeout(u64),
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
}

/// The server side of a handshake within `timeout_ms`. A failed handshake (a plain-TCP
/// client, a certificate from another CA, garbage) writes rustls's alert if it has one,
/// then a FIN (bounded by [`FAILED_HANDSHAKE_CLOSE_MS`]); the connection is closed either
/// way when this returns an error.
pub async fn accept<IO>(
    acceptor: &TlsAcceptor,
    io: IO,
    timeout_ms: u64,
) -> Result<tokio_rustls::server::TlsStream<IO>, AcceptError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        acceptor.accept(io).into_fallible(),
    )
    .await
    {
        Err(_) => Err(AcceptError::Timeout(timeout_ms)),
        Ok(Ok(s)) => Ok(s),
        Ok(Err((e, mut io))) => {
            let _ = tokio::time::timeout(
                Duration::from_millis(FAILED_HANDSHAKE_CLOSE_MS),
                io.shutdown(),
            )
            .await;
            Err(AcceptError::Handshake(e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_empty_and_malformed_files_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for p in [&missing, &empty, &garbage] {
            let e = load_certs(p).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{e}");
            assert!(load_key(p).is_err());
            assert!(load_roots(p).is_err());
            assert!(server_config(p, p, None).is_err());
            assert!(client_config(p, None).is_err());
            assert!(PeerTls::from_files(p, p, p).is_err());
        }
    }

    #[test]
    fn server_names_and_hosts() {
        assert_eq!(host_of("127.0.0.2:2888"), "127.0.0.2");
        assert_eq!(host_of("[::1]:2888"), "[::1]");
        assert_eq!(host_of("example.org"), "example.org");
        assert!(matches!(
            server_name("[::1]").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("localhost").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }
}
