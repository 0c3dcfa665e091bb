//! The agent's settings: command-line flags merged over an optional TOML file (flags
//! win). A resolved [`Settings`] is valid; nothing re-checks it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::namespace::{self, Namespace};

/// `agent.toml`. Every key is optional.
///
/// ```toml
/// root = "/switchyard"            # namespace root in coordd
/// session_timeout_ms = 6000       # requested coordd session timeout
/// fence_margin_ms = 2000          # fence this long before the lease ends (default timeout/3)
/// primary_unresponsive_ms = 15000 # the master releases `leader` (fencing first) when its
///                                 # running PostgreSQL has not answered a status check this long
/// synchronous = false             # cluster config for a new cluster (DESIGN.md 4.6)
/// os_user = "postgres"            # OS user PostgreSQL runs as when the agent is root
/// db_user = "postgres"            # database superuser the agent connects as
/// db_password = "..."             # its password (TCP connections and replication)
/// listen_addresses = "*"          # default: the --host address
/// unix_socket_directories = "/var/run/postgresql"  # default: the data dir's parent
/// initdb_auth_host = "scram-sha-256"
/// initdb_auth_local = "peer"
/// initdb_no_sync = false          # tests only
/// hba = ["host replication all 10.0.0.0/8 scram-sha-256"]  # appended to pg_hba.conf
/// coord_auth = "agents:s3cret"    # digest user:password shared by this cluster's agents
/// coord_tls_ca_file = "/etc/switchyard/ca.pem"   # TLS to coordd (--coord lists its TLS ports)
/// coord_tls_cert_file = "/etc/switchyard/agent.pem"    # client certificate, if coordd asks
/// coord_tls_key_file = "/etc/switchyard/agent-key.pem"
/// coord_tls_server_name = "coordd.example"   # default: the host of each --coord address
/// [conf]                          # appended to postgresql.conf after initdb
/// max_connections = "200"
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentFile {
    pub root: Option<String>,
    pub session_timeout_ms: Option<u32>,
    pub fence_margin_ms: Option<u32>,
    pub primary_unresponsive_ms: Option<u32>,
    /// Written into the cluster's `config` record by the agent that creates it (the
    /// record, not this file, is what every agent then follows).
    pub synchronous: Option<bool>,
    pub os_user: Option<String>,
    pub db_user: Option<String>,
    pub db_password: Option<String>,
    pub listen_addresses: Option<String>,
    pub unix_socket_directories: Option<String>,
    pub initdb_auth_host: Option<String>,
    pub initdb_auth_local: Option<String>,
    pub initdb_no_sync: bool,
    pub hba: Vec<String>,
    pub conf: BTreeMap<String, String>,
    /// Digest credentials (`user:password`) shared by the cluster's agents (and given to
    /// `switchyard switchover`). When set, the cluster's shared znodes (`config`,
    /// `initialize`, `sync`, `switchover`, the cluster node and `members`) are writable
    /// with them only and readable by everyone, so an app server (a router) can read but
    /// not change them. Unset: they are writable by any client (a warning says so).
    pub coord_auth: Option<String>,
    /// TLS to coordd: the CA its certificates are signed by. Set, every `--coord` server
    /// is reached over TLS (list coordd's `--secure-client-addr` ports). Unset: plain TCP.
    pub coord_tls_ca_file: Option<PathBuf>,
    /// A client certificate and its key, for a coordd started with `--tls-ca-file`.
    pub coord_tls_cert_file: Option<PathBuf>,
    pub coord_tls_key_file: Option<PathBuf>,
    /// The name coordd's certificate must carry (default: the host of each address).
    pub coord_tls_server_name: Option<String>,
}

/// The TLS settings of agent.toml, checked (the files are read now, so a bad one stops
/// the agent at start, not at its first connect).
pub fn resolve_coord_tls(file: &AgentFile) -> Result<Option<coordd_client::TlsConfig>, String> {
    coord_tls(&CoordTlsArgs {
        coord_tls_ca_file: file.coord_tls_ca_file.clone(),
        coord_tls_cert_file: file.coord_tls_cert_file.clone(),
        coord_tls_key_file: file.coord_tls_key_file.clone(),
        coord_tls_server_name: file.coord_tls_server_name.clone(),
    })
}

/// TLS to coordd for the `status` and `switchover` commands: the same settings as
/// agent.toml's `coord_tls_*`, as flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CoordTlsArgs {
    /// CA certificate (PEM) that signed coordd's TLS port certificate; turns TLS on
    /// (--coord then lists coordd's TLS ports).
    #[arg(long)]
    pub coord_tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for a coordd that asks for one.
    #[arg(long)]
    pub coord_tls_cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long)]
    pub coord_tls_key_file: Option<PathBuf>,
    /// The name coordd's certificate must carry (default: the host of each address).
    #[arg(long)]
    pub coord_tls_server_name: Option<String>,
}

/// Checked TLS settings (the files are read now, so a bad one is reported before any
/// connection); None: plain TCP.
pub fn coord_tls(args: &CoordTlsArgs) -> Result<Option<coordd_client::TlsConfig>, String> {
    let Some(ca) = &args.coord_tls_ca_file else {
        if args.coord_tls_cert_file.is_some()
            || args.coord_tls_key_file.is_some()
            || args.coord_tls_server_name.is_some()
        {
            return Err(
                "coord_tls_cert_file, coord_tls_key_file and coord_tls_server_name \
                 (flags --coord-tls-*) need coord_tls_ca_file (--coord-tls-ca-file)"
                    .into(),
            );
        }
        return Ok(None);
    };
    let mut tls = coordd_client::TlsConfig::new(ca.clone());
    match (&args.coord_tls_cert_file, &args.coord_tls_key_file) {
        (None, None) => {}
        (Some(c), Some(k)) => tls = tls.with_client_cert(c.clone(), k.clone()),
        _ => return Err("coord_tls_cert_file and coord_tls_key_file go together".into()),
    }
    if let Some(n) = &args.coord_tls_server_name {
        tls = tls.with_server_name(n.clone());
    }
    tls.check().map_err(|e| e.to_string())?;
    Ok(Some(tls))
}

/// Checks `user:password` digest credentials (the user may not be empty, nor contain ':').
pub fn validate_coord_auth(auth: &str) -> Result<(), String> {
    match auth.split_once(':') {
        Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(()),
        _ => Err("coord_auth must be user:password (both non-empty)".into()),
    }
}

impl AgentFile {
    pub fn load(path: &Path) -> Result<AgentFile, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// What the `agent` subcommand's flags carry (before the file is merged in).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentFlags {
    #[arg(long)]
    pub cluster: String,
    #[arg(long)]
    pub node: String,
    /// coordd / ZooKeeper servers: host:port,host:port,...
    #[arg(long)]
    pub coord: String,
    #[arg(long)]
    pub pg_data: PathBuf,
    #[arg(long)]
    pub pg_port: u16,
    #[arg(long)]
    pub pg_bindir: Option<PathBuf>,
    /// The address other nodes and routers reach this PostgreSQL at.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// agent.toml (see the agent::config docs); flags win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub session_timeout_ms: Option<u32>,
}

/// The resolved settings of one agent.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ns: Namespace,
    pub node: String,
    pub coord: Vec<String>,
    pub pg_data: PathBuf,
    pub pg_port: u16,
    pub pg_bindir: Option<PathBuf>,
    /// The address other nodes and routers reach this PostgreSQL at.
    pub host: String,
    pub session_timeout_ms: u32,
    pub fence_margin_ms: Option<u32>,
    /// The master releases `leader` (fencing its PostgreSQL first) once its PostgreSQL,
    /// the postmaster alive, has not answered a status check for this long.
    pub primary_unresponsive_ms: u32,
    /// `synchronous` for a `config` record this agent creates.
    pub synchronous: bool,
    pub os_user: String,
    pub db_user: String,
    pub db_password: Option<String>,
    pub listen_addresses: String,
    pub unix_socket_directories: String,
    pub initdb_auth_host: String,
    pub initdb_auth_local: String,
    pub initdb_no_sync: bool,
    pub hba: Vec<String>,
    pub conf: BTreeMap<String, String>,
    /// See [`AgentFile::coord_auth`]; validated.
    pub coord_auth: Option<String>,
    /// TLS to coordd (agent.toml's `coord_tls_*`); files checked. None: plain TCP.
    pub coord_tls: Option<coordd_client::TlsConfig>,
}

pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 6_000;

/// Listen-everywhere addresses: valid for `listen_addresses`, never as `--host`.
const WILDCARD_HOSTS: [&str; 5] = ["0.0.0.0", "*", "::", "[::]", "0"];

/// Default of [`Settings::primary_unresponsive_ms`]: long enough that a busy server's
/// slow answers (a status check is bounded by 2 s) do not cost a failover, short enough
/// that a hung primary does not keep writes down for long (Patroni's TTL is 30 s).
pub const PRIMARY_UNRESPONSIVE_MS_DEFAULT: u32 = 15_000;
/// Below this a master would release `leader` on one slow answer.
pub const PRIMARY_UNRESPONSIVE_MS_MIN: u32 = 1_000;

/// Splits `host:port,host:port` into its servers; refuses empty entries.
pub fn parse_coord(coord: &str) -> Result<Vec<String>, String> {
    let servers: Vec<String> = coord.split(',').map(|s| s.trim().to_owned()).collect();
    for s in &servers {
        let ok = s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(format!(
                "--coord: {s:?} is not host:port (expected host:port,host:port,...)"
            ));
        }
    }
    Ok(servers)
}

impl Settings {
    pub fn resolve(flags: AgentFlags) -> Result<Settings, String> {
        let file = match &flags.config {
            Some(p) => AgentFile::load(p)?,
            None => AgentFile::default(),
        };
        let root = file
            .root
            .clone()
            .unwrap_or_else(|| namespace::ROOT_DEFAULT.to_owned());
        let ns = Namespace::new(&root, &flags.cluster).map_err(|e| e.to_string())?;
        namespace::validate_node_name(&flags.node).map_err(|e| e.to_string())?;
        let coord = parse_coord(&flags.coord)?;
        if flags.pg_port == 0 {
            return Err("--pg-port must not be 0".into());
        }
        if flags.host.is_empty() {
            return Err("--host must not be empty".into());
        }
        // --host is published in the member and leader records: where routers and the
        // other nodes connect. A wildcard there would make each of them connect to itself.
        if WILDCARD_HOSTS.contains(&flags.host.as_str()) {
            return Err(format!(
                "--host {} is a wildcard: give the address other nodes and routers reach this \
                 PostgreSQL at (listen_addresses in agent.toml sets what it listens on)",
                flags.host
            ));
        }
        let pg_data = if flags.pg_data.is_absolute() {
            flags.pg_data.clone()
        } else {
            std::env::current_dir()
                .map_err(|e| format!("current dir: {e}"))?
                .join(&flags.pg_data)
        };
        let session_timeout_ms = flags
            .session_timeout_ms
            .or(file.session_timeout_ms)
            .unwrap_or(SESSION_TIMEOUT_MS_DEFAULT);
        if session_timeout_ms == 0 {
            return Err("session timeout must not be 0".into());
        }
        if let Some(m) = file.fence_margin_ms {
            if m >= session_timeout_ms {
                return Err(format!(
                    "fence_margin_ms {m} is not below the session timeout {session_timeout_ms}"
                ));
            }
        }
        let primary_unresponsive_ms = file
            .primary_unresponsive_ms
            .unwrap_or(PRIMARY_UNRESPONSIVE_MS_DEFAULT);
        if primary_unresponsive_ms < PRIMARY_UNRESPONSIVE_MS_MIN {
            return Err(format!(
                "primary_unresponsive_ms {primary_unresponsive_ms} is below \
                 {PRIMARY_UNRESPONSIVE_MS_MIN}"
            ));
        }
        if let Some(a) = &file.coord_auth {
            validate_coord_auth(a)?;
        }
        let coord_tls = resolve_coord_tls(&file)?;
        let unix_socket_directories = file.unix_socket_directories.clone().unwrap_or_else(|| {
            pg_data
                .parent()
                .unwrap_or(Path::new("/tmp"))
                .to_string_lossy()
                .into_owned()
        });
        Ok(Settings {
            ns,
            node: flags.node,
            coord,
            pg_data,
            pg_port: flags.pg_port,
            pg_bindir: flags.pg_bindir,
            listen_addresses: file
                .listen_addresses
                .clone()
                .unwrap_or_else(|| flags.host.clone()),
            host: flags.host,
            session_timeout_ms,
            fence_margin_ms: file.fence_margin_ms,
            primary_unresponsive_ms,
            synchronous: file.synchronous.unwrap_or(false),
            os_user: file.os_user.unwrap_or_else(|| "postgres".into()),
            db_user: file.db_user.unwrap_or_else(|| "postgres".into()),
            db_password: file.db_password,
            unix_socket_directories,
            initdb_auth_host: file
                .initdb_auth_host
                .unwrap_or_else(|| "scram-sha-256".into()),
            initdb_auth_local: file.initdb_auth_local.unwrap_or_else(|| "peer".into()),
            initdb_no_sync: file.initdb_no_sync,
            coord_auth: file.coord_auth,
            coord_tls,
            hba: file.hba,
            conf: file.conf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> AgentFlags {
        AgentFlags {
            cluster: "main".into(),
            node: "n1".into(),
            coord: "127.0.0.1:2181,zk2:2181".into(),
            pg_data: "/var/lib/pg/data".into(),
            pg_port: 5432,
            pg_bindir: None,
            host: "10.0.0.1".into(),
            config: None,
            session_timeout_ms: None,
        }
    }

    #[test]
    fn a_wildcard_host_is_refused() {
        for host in WILDCARD_HOSTS {
            let e = Settings::resolve(AgentFlags {
                host: host.into(),
                ..flags()
            })
            .unwrap_err();
            assert!(e.contains("wildcard"), "{host}: {e}");
        }
    }

    #[test]
    fn defaults_and_checks() {
        let s = Settings::resolve(flags()).unwrap();
        assert_eq!(s.coord, ["127.0.0.1:2181", "zk2:2181"]);
        assert_eq!(s.session_timeout_ms, SESSION_TIMEOUT_MS_DEFAULT);
        assert_eq!(s.listen_addresses, "10.0.0.1");
        assert_eq!(s.unix_socket_directories, "/var/lib/pg");
        assert_eq!(s.ns.leader(), "/switchyard/clusters/main/leader");
        for bad in ["", "a", "a:", ":1", "a:0", "a:1,,b:2"] {
            let f = AgentFlags {
                coord: bad.into(),
                ..flags()
            };
            assert!(Settings::resolve(f).is_err(), "{bad:?}");
        }
        let f = AgentFlags {
            node: "a/b".into(),
            ..flags()
        };
        assert!(Settings::resolve(f).is_err());
    }

    #[test]
    fn file_is_merged_and_flags_win() {
        let dir = std::env::temp_dir().join(format!("sy-agent-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("agent.toml");
        std::fs::write(
            &p,
            "session_timeout_ms = 3000\nsynchronous = true\ninitdb_auth_host = \"trust\"\nhba = [\"x\"]\n[conf]\nmax_connections = \"50\"\n",
        )
        .unwrap();
        let s = Settings::resolve(AgentFlags {
            config: Some(p.clone()),
            ..flags()
        })
        .unwrap();
        assert_eq!(s.session_timeout_ms, 3000);
        assert!(s.synchronous);
        assert_eq!(s.initdb_auth_host, "trust");
        assert_eq!(s.conf.get("max_connections").unwrap(), "50");
        let s = Settings::resolve(AgentFlags {
            config: Some(p.clone()),
            session_timeout_ms: Some(2000),
            ..flags()
        })
        .unwrap();
        assert_eq!(s.session_timeout_ms, 2000);
        std::fs::write(&p, "bogus_key = 1\n").unwrap();
        let e = Settings::resolve(AgentFlags {
            config: Some(p.clone()),
            ..flags()
        })
        .unwrap_err();
        assert!(e.contains("bogus_key"), "{e}");
        // TLS: half a configuration and unreadable files are refused at start.
        for (text, needle) in [
            (
                "coord_tls_cert_file = \"c.pem\"\n",
                "need coord_tls_ca_file",
            ),
            (
                "coord_tls_ca_file = \"/nonexistent/ca.pem\"\n",
                "/nonexistent/ca.pem",
            ),
            (
                "coord_tls_ca_file = \"/nonexistent/ca.pem\"\ncoord_tls_key_file = \"k.pem\"\n",
                "go together",
            ),
            ("primary_unresponsive_ms = 999\n", "below 1000"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = Settings::resolve(AgentFlags {
                config: Some(p.clone()),
                ..flags()
            })
            .unwrap_err();
            assert!(e.contains(needle), "{e:?} should contain {needle:?}");
        }
        assert!(Settings::resolve(flags()).unwrap().coord_tls.is_none());
        assert_eq!(
            Settings::resolve(flags()).unwrap().primary_unresponsive_ms,
            PRIMARY_UNRESPONSIVE_MS_DEFAULT
        );
        std::fs::write(&p, "primary_unresponsive_ms = 1000\n").unwrap();
        let s = Settings::resolve(AgentFlags {
            config: Some(p.clone()),
            ..flags()
        })
        .unwrap();
        assert_eq!(s.primary_unresponsive_ms, 1000);
        let _ = std::fs::remove_dir_all(dir);
    }
}
