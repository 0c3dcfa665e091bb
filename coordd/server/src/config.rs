//! coordd's configuration: command-line flags, an optional TOML file, defaults.
//! A flag given on the command line wins over the file; the file wins over defaults.
//!
//! Invariant: a `Config` that `resolve` returned is valid (timeouts ordered and within
//! the protocol's 32-bit field, limits non-zero and within their named ceilings); the
//! server never re-checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

/// Command-line flags. Every option is also a key of the TOML file (snake_case).
#[derive(Debug, Clone, Parser, Default)]
#[command(
    name = "coordd",
    version,
    about = "coordd: a ZooKeeper-compatible coordination server",
    long_about = "coordd speaks the Apache ZooKeeper client protocol, so zkCli, kazoo, Curator \
                  and the zookeeper-client crate work against it unchanged.\n\n\
                  Standalone: coordd --client-addr 127.0.0.1:2181 --data-dir ./data\n\n\
                  Ensemble member: coordd --id 1 --ensemble 1=10.0.0.1:2888,2=10.0.0.2:2888,3=10.0.0.3:2888 \
                  --client-addr 10.0.0.1:2181 --data-dir ./data\n\n\
                  Membership change: start a new member with --join (its --ensemble lists the current \
                  members and itself), then `coordd reconfig --server <client addr> --add 4=host:peerport`; \
                  `coordd reconfig --remove 4` removes one; `coordd reconfig --help` for more."
)]
pub struct Flags {
    /// TOML configuration file; flags given on the command line override its keys.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Address of the client port [default: 127.0.0.1:2181].
    #[arg(long)]
    pub client_addr: Option<SocketAddr>,
    /// Directory of the write-ahead log and snapshots [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// ZooKeeper's tickTime: the unit of session timeouts [default: 2000].
    #[arg(long)]
    pub tick_time_ms: Option<u32>,
    /// Smallest session timeout granted [default: 2 ticks].
    #[arg(long)]
    pub min_session_timeout_ms: Option<u32>,
    /// Largest session timeout granted [default: 20 ticks].
    #[arg(long)]
    pub max_session_timeout_ms: Option<u32>,
    /// Largest frame a client may send, in bytes [default: 1048576].
    #[arg(long)]
    pub frame_bytes_max: Option<usize>,
    /// Most client connections at once [default: 10000].
    #[arg(long)]
    pub connections_max: Option<usize>,
    /// Most client connections from one IP address (ZooKeeper's maxClientCnxns) [default: 60].
    #[arg(long)]
    pub connections_per_ip_max: Option<usize>,
    /// Most requests a connection may have outstanding before coordd stops reading
    /// from it [default: 1000].
    #[arg(long)]
    pub outstanding_requests_max: Option<usize>,
    /// Bytes of requests a connection may have outstanding before coordd stops reading
    /// from it (one request is always let through) [default: 16777216].
    #[arg(long)]
    pub outstanding_bytes_max: Option<usize>,
    /// Bytes queued to a client that does not read before it is disconnected
    /// [default: 16777216].
    #[arg(long)]
    pub outbound_bytes_max: Option<usize>,
    /// Most watch registrations one session may hold on this server; a read or addWatch
    /// that would register more is refused with QuotaExceeded, and a setWatches that
    /// would register more closes the connection [default: 100000].
    #[arg(long)]
    pub watches_per_session_max: Option<usize>,
    /// Largest data of one znode, in bytes: a create or setData (also inside a multi)
    /// with more is refused with QuotaExceeded; at most `frame_bytes_max`
    /// [default: 1048576, or frame_bytes_max if smaller].
    #[arg(long)]
    pub node_data_bytes_max: Option<usize>,
    /// Take a snapshot after this many log entries [default: 100000]; an ensemble
    /// member counts Raft entries (batches of writes), at most 5000.
    #[arg(long)]
    pub snapshot_every_entries: Option<u64>,
    /// How often empty containers and expired TTL nodes are removed [default: 60000].
    #[arg(long)]
    pub container_check_interval_ms: Option<u64>,
    /// Accept TTL nodes (ZooKeeper's zookeeper.extendedTypesEnabled).
    #[arg(long)]
    pub ttl_enabled: bool,
    /// Superuser digest, user:base64(sha1(user:password)) (ZooKeeper's superDigest).
    #[arg(long)]
    pub superuser_digest: Option<String>,
    /// Server id (1-255), the top byte of the session ids this server hands out
    /// [default: 1].
    #[arg(long)]
    pub server_id: Option<u8>,
    /// Threads serving connections; 1 runs everything on one thread (the log writer
    /// always has its own) [default: the number of CPUs].
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Under a serial write load (one write at a time), write and fsync it on the
    /// serving thread instead of handing it to the log writer thread: two thread
    /// wake-ups less per write, at the price of that thread waiting out the fsync. An
    /// ensemble member likewise appends its Raft entries on the Raft core's thread
    /// instead of the blocking pool [default: true].
    #[arg(long)]
    pub inline_commit: Option<bool>,
    /// DANGEROUS: do not fsync the log. An acknowledged write can be lost on a crash.
    #[arg(long)]
    pub no_fsync: bool,
    /// Ensemble mode: serve every read linearizably (a barrier through the Raft log
    /// before each read, batched with the writes), beyond ZooKeeper's guarantee that
    /// reads may lag until `sync` [default: false].
    #[arg(long)]
    pub linearizable_reads: bool,
    /// This server's member id in the ensemble (ZooKeeper's myid; 1-255). Needs
    /// `--ensemble`.
    #[arg(long)]
    pub id: Option<u64>,
    /// Every member of the ensemble with its peer address, the same list on every
    /// member: `1=10.0.0.1:2888,2=10.0.0.2:2888,3=10.0.0.3:2888` (ZooKeeper's server.N
    /// lines). Members started with the same list form the ensemble by themselves.
    /// Without it coordd runs standalone.
    #[arg(long)]
    pub ensemble: Option<String>,
    /// Where this member listens for its peers, `host:port` [default: its own address
    /// in `--ensemble`]. For a member behind a forwarder (a NAT, or a fault-injecting
    /// proxy in tests) that listens on the address the list gives.
    #[arg(long)]
    pub peer_listen_addr: Option<String>,
    /// Address of an HTTP port serving Prometheus metrics at `/metrics` (the `mntr`
    /// values in Prometheus' text format; ZooKeeper's `metricsProvider.httpPort`). Off
    /// unless set.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Address of the TLS client port (ZooKeeper's secureClientPort): a second listener,
    /// beside the plain `--client-addr`, serving the same protocol inside TLS. Needs
    /// `--tls-cert-file` and `--tls-key-file`.
    #[arg(long)]
    pub secure_client_addr: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) the TLS client port presents.
    #[arg(long)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `--tls-cert-file`.
    #[arg(long)]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: with it, TLS clients must present a certificate signed by
    /// one of them (mutual TLS on the client port); without it, any client may connect.
    #[arg(long)]
    pub tls_ca_file: Option<PathBuf>,
    /// A TLS handshake on the TLS client port not finished within this closes the
    /// connection [default: 5000]. (On the peer port the transport's own handshake
    /// limit, 1 s, bounds it.)
    #[arg(long)]
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Mutual TLS between ensemble members: this member's PEM certificate, presented on
    /// its peer port and when it calls a peer. Needs `--peer-tls-key-file` and
    /// `--peer-tls-ca-file`; every member must turn it on.
    #[arg(long)]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// PEM private key of `--peer-tls-cert-file`.
    #[arg(long)]
    pub peer_tls_key_file: Option<PathBuf>,
    /// PEM CA certificates of the ensemble: a peer must present a certificate signed by
    /// one of them, and the members' peer ports are checked against them.
    #[arg(long)]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// Join an ensemble that already runs (a new member): never initialize a cluster;
    /// wait until the leader adds this member (`coordd reconfig --add`). `--ensemble`
    /// then lists the current members and this one. Harmless on a member that has a log
    /// (its log's membership is used), so it may stay on after the member was added.
    #[arg(long)]
    pub join: bool,
}

/// The TOML file: the same keys as the flags.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub client_addr: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub tick_time_ms: Option<u32>,
    pub min_session_timeout_ms: Option<u32>,
    pub max_session_timeout_ms: Option<u32>,
    pub frame_bytes_max: Option<usize>,
    pub connections_max: Option<usize>,
    pub connections_per_ip_max: Option<usize>,
    pub outstanding_requests_max: Option<usize>,
    pub outstanding_bytes_max: Option<usize>,
    pub outbound_bytes_max: Option<usize>,
    pub watches_per_session_max: Option<usize>,
    pub node_data_bytes_max: Option<usize>,
    pub snapshot_every_entries: Option<u64>,
    pub container_check_interval_ms: Option<u64>,
    pub ttl_enabled: Option<bool>,
    pub superuser_digest: Option<String>,
    pub server_id: Option<u8>,
    pub worker_threads: Option<usize>,
    pub inline_commit: Option<bool>,
    pub no_fsync: Option<bool>,
    pub id: Option<u64>,
    pub ensemble: Option<String>,
    pub linearizable_reads: Option<bool>,
    pub peer_listen_addr: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    pub secure_client_addr: Option<SocketAddr>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    pub tls_ca_file: Option<PathBuf>,
    pub tls_handshake_timeout_ms: Option<u64>,
    pub peer_tls_cert_file: Option<PathBuf>,
    pub peer_tls_key_file: Option<PathBuf>,
    pub peer_tls_ca_file: Option<PathBuf>,
    pub join: Option<bool>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub client_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub tick_time_ms: u32,
    pub min_session_timeout_ms: u32,
    pub max_session_timeout_ms: u32,
    pub frame_bytes_max: usize,
    pub connections_max: usize,
    pub connections_per_ip_max: usize,
    pub outstanding_requests_max: usize,
    /// Invariant: the requests of one connection in the core hold at most this many
    /// bytes of frames, or are a single request. Without it a connection could hold
    /// `outstanding_requests_max` x `frame_bytes_max` (1 GiB by default) in the core.
    pub outstanding_bytes_max: usize,
    pub outbound_bytes_max: usize,
    /// Invariant: a session holds at most this many watch registrations on this server
    /// (see [`WATCHES_PER_SESSION_MAX_DEFAULT`]).
    pub watches_per_session_max: usize,
    /// Invariant: no create or setData with more data than this reaches the log;
    /// `node_data_bytes_max <= frame_bytes_max`.
    pub node_data_bytes_max: usize,
    pub snapshot_every_entries: u64,
    pub container_check_interval_ms: u64,
    pub ttl_enabled: bool,
    pub superuser_digest: Option<String>,
    pub server_id: u8,
    pub worker_threads: usize,
    pub inline_commit: bool,
    pub fsync: bool,
    /// Ensemble mode; None: standalone.
    pub ensemble: Option<EnsembleConfig>,
    /// Ensemble mode: every read behind a barrier through the log.
    pub linearizable_reads: bool,
    /// The Prometheus metrics port; None: off.
    pub metrics_addr: Option<SocketAddr>,
    /// The TLS client port; None: plain port only.
    pub secure_client: Option<SecureClientConfig>,
    /// Bound of a TLS handshake on the TLS client port.
    pub tls_handshake_timeout_ms: u64,
    /// Mutual TLS between members (ensemble mode only); None: plain TCP.
    pub peer_tls: Option<PeerTlsFiles>,
}

/// The TLS client port. Invariant (resolve): both files named; their contents are checked
/// when the server starts (it refuses to start on a bad file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureClientConfig {
    pub addr: SocketAddr,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Clients must present a certificate signed by this CA.
    pub ca_file: Option<PathBuf>,
}

/// A member's peer TLS files: all three, or no peer TLS at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
}

/// This server's place in an ensemble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleConfig {
    pub id: u64,
    /// Member id -> peer address ("host:port"), this member included.
    pub members: BTreeMap<u64, String>,
    /// Where this member's peer port listens ("host:port"); by default its own address
    /// in `members`.
    pub peer_listen_addr: String,
    /// Joining a running ensemble: never initialize a cluster (`--join`).
    pub join: bool,
}

/// Most members of an ensemble (ZooKeeper runs 3 or 5; more only slows writes).
pub const ENSEMBLE_MEMBERS_MAX: usize = 9;

/// Parses `1=host:port,2=host:port,...`.
pub fn parse_ensemble(text: &str) -> Result<BTreeMap<u64, String>, ConfigError> {
    let bad = |why: String| ConfigError::Invalid(format!("ensemble {text:?}: {why}"));
    let mut members = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| bad(format!("{item:?} is not id=host:port")))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("member id {id:?} is not a number")))?;
        if !(1..=255).contains(&id) {
            return Err(bad(format!("member id {id} is not in 1..=255")));
        }
        let addr = addr.trim();
        if !is_host_port(addr) {
            return Err(bad(format!(
                "address {addr:?} of member {id} is not host:port"
            )));
        }
        if members.insert(id, addr.to_string()).is_some() {
            return Err(bad(format!("member id {id} appears twice")));
        }
    }
    if members.is_empty() {
        return Err(bad("no members".into()));
    }
    if members.len() > ENSEMBLE_MEMBERS_MAX {
        return Err(bad(format!(
            "{} members, more than {ENSEMBLE_MEMBERS_MAX}",
            members.len()
        )));
    }
    Ok(members)
}

/// The TLS client port: an address with a certificate and key, or nothing at all. Half a
/// configuration is refused, naming what is missing.
fn resolve_secure_client(
    addr: Option<SocketAddr>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<SecureClientConfig>, ConfigError> {
    match (addr, cert, key) {
        (None, None, None) if ca.is_none() => Ok(None),
        (Some(addr), Some(cert_file), Some(key_file)) => Ok(Some(SecureClientConfig {
            addr,
            cert_file,
            key_file,
            ca_file: ca,
        })),
        (addr, cert, key) => {
            let missing: Vec<&str> = [
                ("secure_client_addr", addr.is_none()),
                ("tls_cert_file", cert.is_none()),
                ("tls_key_file", key.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
            Err(ConfigError::Invalid(format!(
                "incomplete TLS client port configuration: missing {} (secure_client_addr, \
                 tls_cert_file and tls_key_file go together; tls_ca_file is optional)",
                missing.join(", ")
            )))
        }
    }
}

/// Peer TLS: all three files or none.
fn resolve_peer_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<PeerTlsFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert_file), Some(key_file), Some(ca_file)) => Ok(Some(PeerTlsFiles {
            cert_file,
            key_file,
            ca_file,
        })),
        (cert, key, ca) => {
            let missing: Vec<&str> = [
                ("peer_tls_cert_file", cert.is_none()),
                ("peer_tls_key_file", key.is_none()),
                ("peer_tls_ca_file", ca.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
            Err(ConfigError::Invalid(format!(
                "incomplete peer TLS configuration: missing {} (peer_tls_cert_file, \
                 peer_tls_key_file and peer_tls_ca_file go together)",
                missing.join(", ")
            )))
        }
    }
}

/// `host:port` with a non-empty host and a port in 1..=65535.
fn is_host_port(addr: &str) -> bool {
    addr.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

pub const CLIENT_ADDR_DEFAULT: &str = "127.0.0.1:2181";
/// Default for `watches_per_session_max`. ZooKeeper has no such limit; one session's
/// watches are server memory that nothing else bounds: ~360 bytes a registration with
/// 42-byte paths (measured: 100 000 exist watches of one session grew coordd's RSS by
/// 35 MB; the path is kept in the path table and in the session's set). The router
/// holds one persistent recursive watch (two registrations) or a few dozen one-shot
/// ones, an agent a handful; a Curator TreeCache/CuratorCache watches every node's
/// data and children, two registrations a node, so 100 000 covers a cache of a
/// 50 000-znode tree (the size the benchmarks use) while holding one session to about
/// 35 MB.
pub const WATCHES_PER_SESSION_MAX_DEFAULT: usize = 100_000;
/// Default for `node_data_bytes_max`: ZooKeeper's jute.maxbuffer (1 MiB), the data a
/// ZooKeeper client accepts in a reply by default.
pub const NODE_DATA_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
pub const TICK_TIME_MS_DEFAULT: u32 = 2000;
/// The most a session timeout (`min_session_timeout_ms`, `max_session_timeout_ms`) may
/// be, ~24.8 days: the protocol carries the negotiated timeout as a signed 32-bit int
/// (ConnectResponse's timeOut), so a larger one reached clients as a negative number.
pub const SESSION_TIMEOUT_MS_MAX: u32 = i32::MAX as u32;
/// The most `tick_time_ms` may be, ~29.8 hours: the default max session timeout is 20
/// ticks and must stay within `SESSION_TIMEOUT_MS_MAX` (ZooKeeper's usual tick is 2 s).
pub const TICK_TIME_MS_MAX: u32 = SESSION_TIMEOUT_MS_MAX / 20;
/// The most `connections_max` and `connections_per_ip_max` may be: every connection holds
/// a file descriptor, and Linux caps a process's descriptors at `fs.nr_open` (2^20 by
/// default), so more could never be open. Far below the limit of tokio's `Semaphore`
/// (usize::MAX >> 3), whose constructor panics past it.
pub const CONNECTIONS_MAX_CEILING: usize = 1 << 20;
/// The most `outstanding_requests_max` may be: 1000 times its default (ZooKeeper's
/// globalOutstandingLimit is 1000 too); a request in the core is memory and a reply owed,
/// and the connection's reader counts permits in u32 (tokio's `acquire_many`), which a
/// larger value would overflow (it truncated, and the reader spun).
pub const OUTSTANDING_REQUESTS_MAX_CEILING: usize = 1 << 20;
// Both ceilings fit what they feed: tokio's `Semaphore::MAX_PERMITS` and the reader's u32.
const _: () = assert!(
    CONNECTIONS_MAX_CEILING <= usize::MAX >> 3
        && OUTSTANDING_REQUESTS_MAX_CEILING <= usize::MAX >> 3
        && OUTSTANDING_REQUESTS_MAX_CEILING < u32::MAX as usize
);
/// The most `worker_threads` may be: tokio starts every worker at once, each with its own
/// stack; threads beyond the CPUs only add switches, and 1024 is more CPUs than any
/// machine coordd targets has.
pub const WORKER_THREADS_MAX: usize = 1024;
/// Default for `worker_threads`: one per CPU (tokio's default; measured on the 2-core
/// benchmark machine: 2 workers served ~30% more reads/s at 64 sessions than 1).
pub fn worker_threads_default() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
/// Default for `inline_commit`: on; see the flag.
pub const INLINE_COMMIT_DEFAULT: bool = true;

impl Default for Config {
    fn default() -> Self {
        Config::resolve(Flags::default(), FileConfig::default()).expect("defaults are valid")
    }
}

impl Config {
    /// Reads the file named by `--config`, if any, and merges.
    pub fn load(flags: Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
        };
        Config::resolve(flags, file)
    }

    pub fn resolve(flags: Flags, file: FileConfig) -> Result<Config, ConfigError> {
        let tick_time_ms = flags
            .tick_time_ms
            .or(file.tick_time_ms)
            .unwrap_or(TICK_TIME_MS_DEFAULT);
        if tick_time_ms == 0 {
            return Err(ConfigError::Invalid("tick_time_ms must be > 0".into()));
        }
        if tick_time_ms > TICK_TIME_MS_MAX {
            return Err(ConfigError::Invalid(format!(
                "tick_time_ms ({tick_time_ms}) must be at most {TICK_TIME_MS_MAX} \
                 (TICK_TIME_MS_MAX: 20 ticks, the default max_session_timeout_ms, must fit \
                 the protocol's 32-bit timeout)"
            )));
        }
        let min_session_timeout_ms = flags
            .min_session_timeout_ms
            .or(file.min_session_timeout_ms)
            .unwrap_or(tick_time_ms.saturating_mul(2));
        let max_session_timeout_ms = flags
            .max_session_timeout_ms
            .or(file.max_session_timeout_ms)
            .unwrap_or(tick_time_ms.saturating_mul(20));
        for (name, v) in [
            ("min_session_timeout_ms", min_session_timeout_ms),
            ("max_session_timeout_ms", max_session_timeout_ms),
        ] {
            if v > SESSION_TIMEOUT_MS_MAX {
                return Err(ConfigError::Invalid(format!(
                    "{name} ({v}) must be at most {SESSION_TIMEOUT_MS_MAX} \
                     (SESSION_TIMEOUT_MS_MAX: clients receive it as a signed 32-bit int)"
                )));
            }
        }
        if min_session_timeout_ms > max_session_timeout_ms {
            return Err(ConfigError::Invalid(format!(
                "min_session_timeout_ms ({min_session_timeout_ms}) > max_session_timeout_ms ({max_session_timeout_ms})"
            )));
        }
        let positive = |name: &str, v: usize| {
            if v == 0 {
                Err(ConfigError::Invalid(format!("{name} must be > 0")))
            } else {
                Ok(v)
            }
        };
        // Positive and at most `max` (named by `limit`, the constant).
        let within = |name: &str, v: usize, limit: &str, max: usize| {
            if v > max {
                Err(ConfigError::Invalid(format!(
                    "{name} ({v}) must be at most {max} ({limit})"
                )))
            } else {
                positive(name, v)
            }
        };
        let config = Config {
            client_addr: flags
                .client_addr
                .or(file.client_addr)
                .unwrap_or_else(|| CLIENT_ADDR_DEFAULT.parse().expect("default address parses")),
            data_dir: flags
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            tick_time_ms,
            min_session_timeout_ms,
            max_session_timeout_ms,
            frame_bytes_max: positive(
                "frame_bytes_max",
                flags
                    .frame_bytes_max
                    .or(file.frame_bytes_max)
                    .unwrap_or(coordd_proto::FRAME_BYTES_MAX_DEFAULT),
            )?,
            connections_max: within(
                "connections_max",
                flags
                    .connections_max
                    .or(file.connections_max)
                    .unwrap_or(10_000),
                "CONNECTIONS_MAX_CEILING",
                CONNECTIONS_MAX_CEILING,
            )?,
            connections_per_ip_max: within(
                "connections_per_ip_max",
                flags
                    .connections_per_ip_max
                    .or(file.connections_per_ip_max)
                    .unwrap_or(60),
                "CONNECTIONS_MAX_CEILING",
                CONNECTIONS_MAX_CEILING,
            )?,
            outstanding_requests_max: within(
                "outstanding_requests_max",
                flags
                    .outstanding_requests_max
                    .or(file.outstanding_requests_max)
                    .unwrap_or(1000),
                "OUTSTANDING_REQUESTS_MAX_CEILING",
                OUTSTANDING_REQUESTS_MAX_CEILING,
            )?,
            outstanding_bytes_max: positive(
                "outstanding_bytes_max",
                flags
                    .outstanding_bytes_max
                    .or(file.outstanding_bytes_max)
                    .unwrap_or(16 * 1024 * 1024),
            )?,
            outbound_bytes_max: positive(
                "outbound_bytes_max",
                flags
                    .outbound_bytes_max
                    .or(file.outbound_bytes_max)
                    .unwrap_or(16 * 1024 * 1024),
            )?,
            watches_per_session_max: positive(
                "watches_per_session_max",
                flags
                    .watches_per_session_max
                    .or(file.watches_per_session_max)
                    .unwrap_or(WATCHES_PER_SESSION_MAX_DEFAULT),
            )?,
            // Checked against frame_bytes_max below.
            node_data_bytes_max: 0,
            snapshot_every_entries: flags
                .snapshot_every_entries
                .or(file.snapshot_every_entries)
                .unwrap_or(100_000)
                .max(1),
            container_check_interval_ms: flags
                .container_check_interval_ms
                .or(file.container_check_interval_ms)
                .unwrap_or(60_000)
                .max(1),
            ttl_enabled: flags.ttl_enabled || file.ttl_enabled.unwrap_or(false),
            superuser_digest: flags.superuser_digest.or(file.superuser_digest),
            server_id: flags.server_id.or(file.server_id).unwrap_or(1),
            worker_threads: within(
                "worker_threads",
                flags
                    .worker_threads
                    .or(file.worker_threads)
                    // A machine with more CPUs than the bound gets the bound.
                    .unwrap_or_else(|| worker_threads_default().min(WORKER_THREADS_MAX)),
                "WORKER_THREADS_MAX",
                WORKER_THREADS_MAX,
            )?,
            inline_commit: flags
                .inline_commit
                .or(file.inline_commit)
                .unwrap_or(INLINE_COMMIT_DEFAULT),
            fsync: !(flags.no_fsync || file.no_fsync.unwrap_or(false)),
            ensemble: None,
            linearizable_reads: flags.linearizable_reads
                || file.linearizable_reads.unwrap_or(false),
            metrics_addr: flags.metrics_addr.or(file.metrics_addr),
            secure_client: None,
            tls_handshake_timeout_ms: flags
                .tls_handshake_timeout_ms
                .or(file.tls_handshake_timeout_ms)
                .unwrap_or(coordd_tls::TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT),
            peer_tls: None,
        };
        if config.tls_handshake_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "tls_handshake_timeout_ms must be > 0".into(),
            ));
        }
        let mut config = config;
        config.node_data_bytes_max = match flags.node_data_bytes_max.or(file.node_data_bytes_max) {
            None => NODE_DATA_BYTES_MAX_DEFAULT.min(config.frame_bytes_max),
            Some(0) => {
                return Err(ConfigError::Invalid(
                    "node_data_bytes_max must be > 0".into(),
                ));
            }
            Some(n) if n > config.frame_bytes_max => {
                return Err(ConfigError::Invalid(format!(
                    "node_data_bytes_max ({n}) > frame_bytes_max ({}): no frame could carry such data",
                    config.frame_bytes_max
                )));
            }
            Some(n) => n,
        };
        config.secure_client = resolve_secure_client(
            flags.secure_client_addr.or(file.secure_client_addr),
            flags.tls_cert_file.or(file.tls_cert_file),
            flags.tls_key_file.or(file.tls_key_file),
            flags.tls_ca_file.or(file.tls_ca_file),
        )?;
        if config
            .secure_client
            .as_ref()
            .is_some_and(|s| s.addr == config.client_addr && s.addr.port() != 0)
        {
            return Err(ConfigError::Invalid(
                "secure_client_addr must differ from client_addr (TLS gets a port of its own)"
                    .into(),
            ));
        }
        if let Some(m) = config.metrics_addr.filter(|m| m.port() != 0) {
            let taken = m == config.client_addr
                || config.secure_client.as_ref().is_some_and(|s| s.addr == m);
            if taken {
                return Err(ConfigError::Invalid(
                    "metrics_addr must differ from the client ports (metrics get a port of their own)"
                        .into(),
                ));
            }
        }
        config.peer_tls = resolve_peer_tls(
            flags.peer_tls_cert_file.or(file.peer_tls_cert_file),
            flags.peer_tls_key_file.or(file.peer_tls_key_file),
            flags.peer_tls_ca_file.or(file.peer_tls_ca_file),
        )?;
        let id = flags.id.or(file.id);
        let peer_listen_addr = flags.peer_listen_addr.or(file.peer_listen_addr);
        if peer_listen_addr.is_some() && id.is_none() {
            return Err(ConfigError::Invalid(
                "peer_listen_addr needs ensemble and id".into(),
            ));
        }
        let join = flags.join || file.join.unwrap_or(false);
        if join && id.is_none() {
            return Err(ConfigError::Invalid("join needs ensemble and id".into()));
        }
        match (id, flags.ensemble.or(file.ensemble)) {
            (None, None) => {}
            (Some(_), None) => {
                return Err(ConfigError::Invalid("id needs ensemble".into()));
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid(
                    "ensemble needs id (this server's member id)".into(),
                ));
            }
            (Some(id), Some(text)) => {
                let members = parse_ensemble(&text)?;
                if !members.contains_key(&id) {
                    return Err(ConfigError::Invalid(format!(
                        "id {id} is not a member of the ensemble {text:?}"
                    )));
                }
                // Session ids carry the member id in their top byte, so no two members
                // hand out the same one.
                let member_server_id = u8::try_from(id).expect("checked by parse_ensemble");
                if flags
                    .server_id
                    .or(file.server_id)
                    .is_some_and(|s| s != member_server_id)
                {
                    return Err(ConfigError::Invalid(format!(
                        "server_id must equal the member id ({id}) in an ensemble"
                    )));
                }
                config.server_id = member_server_id;
                let peer_listen_addr = match peer_listen_addr {
                    Some(addr) if !is_host_port(&addr) => {
                        return Err(ConfigError::Invalid(format!(
                            "peer_listen_addr {addr:?} is not host:port"
                        )));
                    }
                    Some(addr) => addr,
                    None => members[&id].clone(),
                };
                config.ensemble = Some(EnsembleConfig {
                    id,
                    members,
                    peer_listen_addr,
                    join,
                });
            }
        }
        if config.ensemble.is_some() {
            // A write of a whole frame is one txn, logged in one Raft entry: a frame limit
            // past what one entry may carry would let clients send writes that can never
            // be logged (refused as too large, with every other batch of their entry).
            // The member's Raft settings keep coordd-raft's default payload limit.
            let payload_max_bytes = coordd_raft::Config::default().payload_max_bytes;
            let frame_max = crate::server::replicated::ensemble_frame_bytes_max(payload_max_bytes);
            if config.frame_bytes_max > frame_max {
                return Err(ConfigError::Invalid(format!(
                    "frame_bytes_max ({}) is too large for an ensemble member: one write must \
                     fit one Raft entry, so frames (and node_data_bytes_max, at most the frame) \
                     are at most {frame_max} bytes (payload_max_bytes {payload_max_bytes} less \
                     WRITE_OVERHEAD_BYTES_MAX {} for the entry's framing and the session's \
                     identities)",
                    config.frame_bytes_max,
                    crate::server::replicated::WRITE_OVERHEAD_BYTES_MAX
                )));
            }
        }
        if config.peer_tls.is_some() && config.ensemble.is_none() {
            return Err(ConfigError::Invalid(
                "peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file need ensemble and id"
                    .into(),
            ));
        }
        if config.server_id == 0 {
            return Err(ConfigError::Invalid("server_id must be 1..=255".into()));
        }
        if let Some(d) = &config.superuser_digest {
            if !d.contains(':') {
                return Err(ConfigError::Invalid(
                    "superuser_digest must be user:base64(sha1(user:password))".into(),
                ));
            }
        }
        Ok(config)
    }

    /// ZooKeeper's negotiation: the client's wish clamped to [min, max].
    pub fn negotiate_session_timeout_ms(&self, requested_ms: i32) -> i32 {
        let requested = requested_ms.max(0) as u32;
        let negotiated = requested.clamp(self.min_session_timeout_ms, self.max_session_timeout_ms);
        // Both bounds are at most `SESSION_TIMEOUT_MS_MAX` (i32::MAX), so this never
        // saturates; were they not, the longest timeout beats a negative one.
        i32::try_from(negotiated).unwrap_or(i32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_go_together_or_are_refused() {
        let file: FileConfig = toml::from_str(
            "secure_client_addr = \"127.0.0.1:2281\"\ntls_cert_file = \"c.pem\"\n\
             tls_key_file = \"k.pem\"\ntls_handshake_timeout_ms = 700",
        )
        .unwrap();
        let c = Config::resolve(Flags::default(), file).unwrap();
        let s = c.secure_client.unwrap();
        assert_eq!(s.addr, "127.0.0.1:2281".parse().unwrap());
        assert_eq!((s.cert_file, s.ca_file), (PathBuf::from("c.pem"), None));
        assert_eq!(c.tls_handshake_timeout_ms, 700);
        assert!(c.peer_tls.is_none());
        let d = Config::default();
        assert!(d.secure_client.is_none() && d.peer_tls.is_none());
        assert_eq!(
            d.tls_handshake_timeout_ms,
            coordd_tls::TLS_HANDSHAKE_TIMEOUT_MS_DEFAULT
        );

        let p = |s: &str| Some(PathBuf::from(s));
        let ens = || Flags {
            id: Some(1),
            ensemble: Some("1=127.0.0.1:2888".into()),
            ..Default::default()
        };
        let c = Config::resolve(
            Flags {
                peer_tls_cert_file: p("n.pem"),
                peer_tls_key_file: p("n-key.pem"),
                peer_tls_ca_file: p("ca.pem"),
                ..ens()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.peer_tls.unwrap().ca_file, PathBuf::from("ca.pem"));

        for (flags, needle) in [
            (
                Flags {
                    tls_cert_file: p("c.pem"),
                    tls_key_file: p("k.pem"),
                    ..Default::default()
                },
                "missing secure_client_addr",
            ),
            (
                Flags {
                    secure_client_addr: Some("127.0.0.1:2281".parse().unwrap()),
                    tls_cert_file: p("c.pem"),
                    ..Default::default()
                },
                "missing tls_key_file",
            ),
            (
                Flags {
                    tls_ca_file: p("ca.pem"),
                    ..Default::default()
                },
                "missing secure_client_addr, tls_cert_file, tls_key_file",
            ),
            (
                Flags {
                    tls_handshake_timeout_ms: Some(0),
                    ..Default::default()
                },
                "tls_handshake_timeout_ms",
            ),
            (
                Flags {
                    peer_tls_cert_file: p("n.pem"),
                    peer_tls_key_file: p("n-key.pem"),
                    ..ens()
                },
                "missing peer_tls_ca_file",
            ),
            (
                Flags {
                    peer_tls_cert_file: p("n.pem"),
                    peer_tls_key_file: p("n-key.pem"),
                    peer_tls_ca_file: p("ca.pem"),
                    ..Default::default()
                },
                "need ensemble",
            ),
            (
                Flags {
                    client_addr: Some("127.0.0.1:2281".parse().unwrap()),
                    secure_client_addr: Some("127.0.0.1:2281".parse().unwrap()),
                    tls_cert_file: p("c.pem"),
                    tls_key_file: p("k.pem"),
                    ..Default::default()
                },
                "must differ",
            ),
        ] {
            let e = Config::resolve(flags, FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
    }

    #[test]
    fn join_flag() {
        let flags = Flags {
            id: Some(4),
            ensemble: Some("1=a:1,2=b:1,3=c:1,4=d:1".into()),
            join: true,
            ..Default::default()
        };
        let c = Config::resolve(flags, FileConfig::default()).unwrap();
        assert!(c.ensemble.unwrap().join);
        let file: FileConfig =
            toml::from_str("id = 4\nensemble = \"4=d:1,1=a:1\"\njoin = true").unwrap();
        assert!(
            Config::resolve(Flags::default(), file)
                .unwrap()
                .ensemble
                .unwrap()
                .join
        );
        let c = Config::resolve(
            Flags {
                id: Some(1),
                ensemble: Some("1=a:1".into()),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert!(!c.ensemble.unwrap().join);
        // Standalone has nothing to join.
        let e = Config::resolve(
            Flags {
                join: true,
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("join needs"), "{e}");
    }

    #[test]
    fn ensemble_flags() {
        let flags = Flags {
            id: Some(2),
            ensemble: Some("1=127.0.0.1:2888, 2=127.0.0.2:2888,3=db3.example:2888".into()),
            ..Default::default()
        };
        let c = Config::resolve(flags, FileConfig::default()).unwrap();
        let e = c.ensemble.unwrap();
        assert_eq!(e.id, 2);
        assert_eq!(e.members.len(), 3);
        assert_eq!(e.members[&3], "db3.example:2888");
        assert_eq!(e.peer_listen_addr, "127.0.0.2:2888");
        assert_eq!(c.server_id, 2);

        let flags = Flags {
            id: Some(2),
            ensemble: Some("1=127.0.0.1:2888,2=127.0.0.2:2888".into()),
            peer_listen_addr: Some("0.0.0.0:3888".into()),
            ..Default::default()
        };
        let c = Config::resolve(flags, FileConfig::default()).unwrap();
        assert_eq!(c.ensemble.unwrap().peer_listen_addr, "0.0.0.0:3888");
        let file: FileConfig = toml::from_str(
            "id = 1\nensemble = \"1=127.0.0.1:2888\"\npeer_listen_addr = \"127.0.0.1:2999\"",
        )
        .unwrap();
        let c = Config::resolve(Flags::default(), file).unwrap();
        assert_eq!(c.ensemble.unwrap().peer_listen_addr, "127.0.0.1:2999");
        for (id, ensemble, listen) in [
            (Some(1), Some("1=a:1"), "a"),
            (Some(1), Some("1=a:1"), "a:0"),
            (None, None, "a:1"),
        ] {
            let flags = Flags {
                id,
                ensemble: ensemble.map(String::from),
                peer_listen_addr: Some(listen.into()),
                ..Default::default()
            };
            assert!(
                Config::resolve(flags, FileConfig::default()).is_err(),
                "peer_listen_addr {listen:?} should be refused"
            );
        }

        let file: FileConfig =
            toml::from_str("id = 1\nensemble = \"1=127.0.0.1:2888,2=127.0.0.1:2889\"").unwrap();
        assert_eq!(
            Config::resolve(Flags::default(), file)
                .unwrap()
                .ensemble
                .unwrap()
                .id,
            1
        );

        for (id, text) in [
            (Some(4), Some("1=a:1,2=b:2,3=c:3")),
            (Some(1), None),
            (None, Some("1=a:1")),
            (Some(1), Some("1=a:1,1=b:2")),
            (Some(1), Some("1=a")),
            (Some(1), Some("1=a:0")),
            (Some(1), Some("x=a:1")),
            (Some(1), Some("0=a:1")),
            (Some(1), Some("1=:5")),
            (Some(1), Some("")),
            (Some(256), Some("256=a:1")),
        ] {
            let flags = Flags {
                id,
                ensemble: text.map(String::from),
                ..Default::default()
            };
            assert!(
                Config::resolve(flags, FileConfig::default()).is_err(),
                "{id:?} {text:?} should be refused"
            );
        }
        let flags = Flags {
            id: Some(1),
            ensemble: Some("1=a:1".into()),
            server_id: Some(3),
            ..Default::default()
        };
        assert!(Config::resolve(flags, FileConfig::default()).is_err());
    }

    #[test]
    fn defaults_and_precedence() {
        let c = Config::default();
        assert_eq!(c.client_addr.to_string(), "127.0.0.1:2181");
        assert_eq!(c.min_session_timeout_ms, 4000);
        assert_eq!(c.max_session_timeout_ms, 40000);
        assert!(c.fsync);
        let file: FileConfig =
            toml::from_str("tick_time_ms = 100\nclient_addr = \"127.0.0.1:9\"").unwrap();
        let flags = Flags {
            client_addr: Some("127.0.0.1:7".parse().unwrap()),
            ..Default::default()
        };
        let c = Config::resolve(flags, file).unwrap();
        assert_eq!(c.client_addr.port(), 7);
        assert_eq!(c.tick_time_ms, 100);
        assert_eq!(c.negotiate_session_timeout_ms(1), 200);
        assert_eq!(c.negotiate_session_timeout_ms(1_000_000), 2000);
        assert_eq!(c.negotiate_session_timeout_ms(500), 500);
    }

    #[test]
    fn bad_config_is_an_error() {
        assert!(toml::from_str::<FileConfig>("no_such_key = 1").is_err());
        let flags = Flags {
            min_session_timeout_ms: Some(10),
            max_session_timeout_ms: Some(5),
            ..Default::default()
        };
        assert!(Config::resolve(flags, FileConfig::default()).is_err());
        let flags = Flags {
            frame_bytes_max: Some(0),
            ..Default::default()
        };
        assert!(Config::resolve(flags, FileConfig::default()).is_err());
        for (watches, data, frame) in [
            (Some(0), None, None),
            (None, Some(0), None),
            (None, Some(2_000_000), None),
            (None, Some(5000), Some(4096)),
        ] {
            let flags = Flags {
                watches_per_session_max: watches,
                node_data_bytes_max: data,
                frame_bytes_max: frame,
                ..Default::default()
            };
            assert!(
                Config::resolve(flags, FileConfig::default()).is_err(),
                "{watches:?} {data:?} {frame:?} should be refused"
            );
        }
    }

    #[test]
    fn resource_limits() {
        let c = Config::default();
        assert_eq!(c.watches_per_session_max, WATCHES_PER_SESSION_MAX_DEFAULT);
        assert_eq!(c.outstanding_bytes_max, 16 * 1024 * 1024);
        assert_eq!(c.node_data_bytes_max, 1024 * 1024);
        assert_eq!(c.node_data_bytes_max, c.frame_bytes_max);
        // A smaller frame limit lowers the default data limit with it.
        let flags = Flags {
            frame_bytes_max: Some(4096),
            ..Default::default()
        };
        assert_eq!(
            Config::resolve(flags, FileConfig::default())
                .unwrap()
                .node_data_bytes_max,
            4096
        );
        let file: FileConfig =
            toml::from_str("watches_per_session_max = 7\nnode_data_bytes_max = 1000").unwrap();
        let c = Config::resolve(Flags::default(), file).unwrap();
        assert_eq!(
            (c.watches_per_session_max, c.node_data_bytes_max),
            (7, 1000)
        );
    }

    /// In an ensemble one write is one txn in one Raft entry: a frame limit whose writes
    /// could not fit a Raft payload is refused at start, not found out by the clients.
    #[test]
    fn an_ensemble_refuses_a_frame_limit_past_one_raft_payload() {
        let payload_max_bytes = coordd_raft::Config::default().payload_max_bytes;
        let frame_max = crate::server::replicated::ensemble_frame_bytes_max(payload_max_bytes);
        assert!(frame_max >= coordd_proto::FRAME_BYTES_MAX_DEFAULT);
        let member = |frame: usize, data: Option<usize>| Flags {
            id: Some(1),
            ensemble: Some("1=127.0.0.1:2888".into()),
            frame_bytes_max: Some(frame),
            node_data_bytes_max: data,
            ..Default::default()
        };
        let c = Config::resolve(member(frame_max, Some(frame_max)), FileConfig::default());
        assert_eq!(c.unwrap().node_data_bytes_max, frame_max);
        for data in [None, Some(1 << 20)] {
            let err = Config::resolve(member(frame_max + 1, data), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("frame_bytes_max") && err.contains(&frame_max.to_string()),
                "{err}"
            );
        }
        // Standalone there is no Raft payload: a larger frame stays allowed.
        let flags = Flags {
            frame_bytes_max: Some(16 << 20),
            ..Default::default()
        };
        assert!(Config::resolve(flags, FileConfig::default()).is_ok());
    }

    /// Values that used to pass resolve and then broke the server: a session timeout
    /// negotiated negative, tokio's Semaphore::new panicking, the reader's u32 permit
    /// count truncated (a busy loop), a runtime asked for billions of threads. Each bound
    /// is accepted exactly and refused one above, naming the field and the limit.
    #[test]
    fn values_past_their_ceilings_are_refused_by_name() {
        let refused = |flags: Flags, name: &str, limit: &str| {
            let err = Config::resolve(flags, FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(name) && err.contains(limit), "{err}");
        };
        // Session timeouts: the wire's field is an i32.
        let c = Config::resolve(
            Flags {
                tick_time_ms: Some(TICK_TIME_MS_MAX),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.max_session_timeout_ms, TICK_TIME_MS_MAX * 20);
        assert!(c.negotiate_session_timeout_ms(i32::MAX) > 0);
        refused(
            Flags {
                tick_time_ms: Some(TICK_TIME_MS_MAX + 1),
                ..Default::default()
            },
            "tick_time_ms",
            "TICK_TIME_MS_MAX",
        );
        refused(
            Flags {
                tick_time_ms: Some(u32::MAX),
                ..Default::default()
            },
            "tick_time_ms",
            "TICK_TIME_MS_MAX",
        );
        let c = Config::resolve(
            Flags {
                max_session_timeout_ms: Some(SESSION_TIMEOUT_MS_MAX),
                ..Default::default()
            },
            FileConfig::default(),
        )
        .unwrap();
        assert_eq!(c.negotiate_session_timeout_ms(i32::MAX), i32::MAX);
        for (min, max) in [
            (None, Some(SESSION_TIMEOUT_MS_MAX + 1)),
            (None, Some(u32::MAX)),
            (Some(u32::MAX), Some(u32::MAX)),
        ] {
            let name = if min.is_some() {
                "min_session_timeout_ms"
            } else {
                "max_session_timeout_ms"
            };
            refused(
                Flags {
                    min_session_timeout_ms: min,
                    max_session_timeout_ms: max,
                    ..Default::default()
                },
                name,
                "SESSION_TIMEOUT_MS_MAX",
            );
        }

        // Counts: each at its bound, one above it, and usize::MAX.
        type Set = fn(&mut Flags, usize);
        let cases: [(&str, &str, usize, Set); 4] = [
            (
                "connections_max",
                "CONNECTIONS_MAX_CEILING",
                CONNECTIONS_MAX_CEILING,
                |f, v| f.connections_max = Some(v),
            ),
            (
                "connections_per_ip_max",
                "CONNECTIONS_MAX_CEILING",
                CONNECTIONS_MAX_CEILING,
                |f, v| f.connections_per_ip_max = Some(v),
            ),
            (
                "outstanding_requests_max",
                "OUTSTANDING_REQUESTS_MAX_CEILING",
                OUTSTANDING_REQUESTS_MAX_CEILING,
                |f, v| f.outstanding_requests_max = Some(v),
            ),
            (
                "worker_threads",
                "WORKER_THREADS_MAX",
                WORKER_THREADS_MAX,
                |f, v| f.worker_threads = Some(v),
            ),
        ];
        for (name, limit, max, set) in cases {
            let mut flags = Flags::default();
            set(&mut flags, max);
            assert!(
                Config::resolve(flags, FileConfig::default()).is_ok(),
                "{name} = {max}"
            );
            for over in [max + 1, u32::MAX as usize + 1, usize::MAX] {
                let mut flags = Flags::default();
                set(&mut flags, over);
                refused(flags, name, limit);
            }
        }
        assert!(Config::default().worker_threads <= WORKER_THREADS_MAX);
    }
}
