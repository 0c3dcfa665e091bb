//! Client configuration.

use std::path::PathBuf;

use crate::Error;

/// Default requested session timeout.
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// Default bound on one TCP connect plus handshake.
pub const CONNECT_TIMEOUT_MS_DEFAULT: u32 = 3_000;
/// Default deadline of every request, including the wait for a connection.
pub const REQUEST_TIMEOUT_MS_DEFAULT: u32 = 10_000;
/// Default first reconnect delay.
pub const RECONNECT_BACKOFF_MIN_MS_DEFAULT: u32 = 50;
/// Default longest reconnect delay; well under the session timeout so a reconnect can
/// still save the session.
pub const RECONNECT_BACKOFF_MAX_MS_DEFAULT: u32 = 1_000;
/// Default capacity of the [`Events`](crate::Events) queue.
pub const EVENTS_QUEUE_MAX_DEFAULT: usize = 4096;

/// How to reach the ensemble and what session to ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// "host:port" of every server; tried in a shuffled order, as ZooKeeper does.
    pub servers: Vec<String>,
    /// Requested session timeout; the server negotiates it (see
    /// [`Client::session_timeout_ms`](crate::Client::session_timeout_ms)).
    pub session_timeout_ms: u32,
    /// Bound on one TCP connect plus the connect handshake.
    pub connect_timeout_ms: u32,
    /// Deadline of every call, from the call until its reply, including any wait for a
    /// connection. Also bounds `Client::connect` as a whole.
    pub request_timeout_ms: u32,
    /// Reconnect delays grow from min to max (with jitter) while attempts fail.
    pub reconnect_backoff_min_ms: u32,
    pub reconnect_backoff_max_ms: u32,
    /// Longest frame sent or accepted; a larger incoming frame drops the connection.
    pub frame_bytes_max: usize,
    /// (scheme, auth bytes) pairs sent after every connect, before any request.
    pub auth: Vec<(String, Vec<u8>)>,
    /// Ask for a read-only session (accepted by servers in read-only mode).
    pub read_only: bool,
    /// Capacity of the events queue. When it is full the connection stops processing
    /// frames until the application takes an event (see the crate docs).
    pub events_queue_max: usize,
    /// Connect over TLS (to coordd's `--secure-client-addr`, or ZooKeeper's
    /// secureClientPort); None: plain TCP. Every server in `servers` is then reached
    /// over TLS.
    pub tls: Option<TlsConfig>,
}

/// TLS to the servers: PEM files, read when the client connects (a bad file fails
/// `Client::connect` with `InvalidArgument` naming it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// The CA certificates the servers' certificates must be signed by.
    pub ca_file: PathBuf,
    /// The client's certificate and key, for a server that requires one (coordd with
    /// `--tls-ca-file`); both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// The name the server certificate must carry; by default the host of the address
    /// connected to (an IP address is matched against the certificate's IP SANs).
    pub server_name: Option<String>,
}

impl TlsConfig {
    /// Server authentication with this CA; no client certificate.
    pub fn new(ca_file: impl Into<PathBuf>) -> Self {
        TlsConfig {
            ca_file: ca_file.into(),
            cert_file: None,
            key_file: None,
            server_name: None,
        }
    }

    /// Presents this certificate and key to the server.
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Reads the files now, as `Client::connect` will: a missing or malformed file, or a
    /// certificate without its key, is an `InvalidArgument` naming it. For a program that
    /// wants to refuse a bad configuration at start rather than at its first connect.
    pub fn check(&self) -> Result<(), Error> {
        self.connector().map(drop)
    }

    /// Reads the files and builds the connector.
    pub(crate) fn connector(&self) -> Result<crate::conn::Tls, Error> {
        let bad = |e: coordd_tls::TlsError| Error::InvalidArgument(format!("tls: {e}"));
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => {
                return Err(Error::InvalidArgument(
                    "tls: cert_file and key_file go together".into(),
                ))
            }
        };
        let config = coordd_tls::client_config(&self.ca_file, identity).map_err(bad)?;
        let server_name = match &self.server_name {
            None => None,
            Some(n) => Some(coordd_tls::server_name(n).map_err(bad)?),
        };
        Ok(crate::conn::Tls {
            connector: coordd_tls::TlsConnector::from(config),
            server_name,
        })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            servers: vec!["127.0.0.1:2181".to_owned()],
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            connect_timeout_ms: CONNECT_TIMEOUT_MS_DEFAULT,
            request_timeout_ms: REQUEST_TIMEOUT_MS_DEFAULT,
            reconnect_backoff_min_ms: RECONNECT_BACKOFF_MIN_MS_DEFAULT,
            reconnect_backoff_max_ms: RECONNECT_BACKOFF_MAX_MS_DEFAULT,
            frame_bytes_max: coordd_proto::FRAME_BYTES_MAX_DEFAULT,
            auth: Vec::new(),
            read_only: false,
            events_queue_max: EVENTS_QUEUE_MAX_DEFAULT,
            tls: None,
        }
    }
}

impl ClientConfig {
    /// The defaults with these servers.
    pub fn new<S: Into<String>>(servers: impl IntoIterator<Item = S>) -> Self {
        ClientConfig {
            servers: servers.into_iter().map(Into::into).collect(),
            ..Default::default()
        }
    }

    pub fn with_session_timeout_ms(mut self, ms: u32) -> Self {
        self.session_timeout_ms = ms;
        self
    }

    pub fn with_request_timeout_ms(mut self, ms: u32) -> Self {
        self.request_timeout_ms = ms;
        self
    }

    pub fn with_connect_timeout_ms(mut self, ms: u32) -> Self {
        self.connect_timeout_ms = ms;
        self
    }

    pub fn with_reconnect_backoff_ms(mut self, min_ms: u32, max_ms: u32) -> Self {
        self.reconnect_backoff_min_ms = min_ms;
        self.reconnect_backoff_max_ms = max_ms;
        self
    }

    pub fn with_auth(mut self, scheme: &str, auth: &[u8]) -> Self {
        self.auth.push((scheme.to_owned(), auth.to_vec()));
        self
    }

    pub fn with_read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    pub fn with_events_queue_max(mut self, n: usize) -> Self {
        self.events_queue_max = n;
        self
    }

    /// Connects over TLS.
    pub fn with_tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn with_frame_bytes_max(mut self, n: usize) -> Self {
        self.frame_bytes_max = n;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |m: &str| Err(Error::InvalidArgument(m.to_owned()));
        if self.servers.is_empty() {
            return bad("no servers configured");
        }
        if self.session_timeout_ms == 0 || self.session_timeout_ms > i32::MAX as u32 {
            return bad("session_timeout_ms must be in 1..=i32::MAX");
        }
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return bad("connect and request timeouts must be > 0");
        }
        if self.reconnect_backoff_min_ms > self.reconnect_backoff_max_ms {
            return bad("reconnect_backoff_min_ms exceeds reconnect_backoff_max_ms");
        }
        // The backoff doubles from the minimum: from 0 it would never grow, and the
        // client would reconnect in a tight loop against servers that refuse it.
        if self.reconnect_backoff_min_ms == 0 {
            return bad("reconnect_backoff_min_ms must be > 0");
        }
        if self.events_queue_max == 0 {
            return bad("events_queue_max must be > 0");
        }
        // A frame must at least hold a connect response and a reply header.
        if self.frame_bytes_max < 64 || self.frame_bytes_max > i32::MAX as usize {
            return bad("frame_bytes_max must be in 64..=i32::MAX");
        }
        Ok(())
    }
}
