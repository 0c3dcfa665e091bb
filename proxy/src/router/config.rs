//! The router's settings and their builder. Every setting has a default and a bound;
//! [`RouterBuilder::connect`] refuses a value outside its bound with
//! [`Error::Config`](super::Error::Config) before anything connects.

use std::ops::RangeInclusive;
use std::time::Duration;

use crate::namespace::{Namespace, ROOT_DEFAULT};
use crate::records::ClusterConfig;
use crate::topology::{Balance, ReadPolicy};

use super::{Error, Router};

/// Default [`RouterConfig::write_wait_ms`].
pub const WRITE_WAIT_MS_DEFAULT: u64 = 5_000;
/// Bound of [`RouterConfig::write_wait_ms`]: a caller blocked longer than a minute
/// is better off with the error.
pub const WRITE_WAIT_MS_RANGE: RangeInclusive<u64> = 0..=60_000;
/// Default [`RouterConfig::session_timeout_ms`].
pub const SESSION_TIMEOUT_MS_DEFAULT: u32 = 6_000;
pub const SESSION_TIMEOUT_MS_RANGE: RangeInclusive<u32> = 1_000..=60_000;
/// Default [`RouterConfig::coord_connect_timeout_ms`].
pub const COORD_CONNECT_TIMEOUT_MS_DEFAULT: u32 = 3_000;
/// Default [`RouterConfig::coord_request_timeout_ms`].
pub const COORD_REQUEST_TIMEOUT_MS_DEFAULT: u32 = 5_000;
/// Bound of every connect and request timeout.
pub const TIMEOUT_MS_RANGE: RangeInclusive<u32> = 100..=60_000;
/// Default [`RouterConfig::pg_connect_timeout_ms`].
pub const PG_CONNECT_TIMEOUT_MS_DEFAULT: u32 = 3_000;
/// Default [`RouterConfig::pool_max_size`].
pub const POOL_MAX_SIZE_DEFAULT: usize = 16;
pub const POOL_MAX_SIZE_RANGE: RangeInclusive<usize> = 1..=1_000;
/// Default [`RouterConfig::pool_wait_timeout_ms`].
pub const POOL_WAIT_TIMEOUT_MS_DEFAULT: u32 = 5_000;
/// Default [`RouterConfig::master_suspect_ms`].
pub const MASTER_SUSPECT_MS_DEFAULT: u64 = 5_000;
/// Bound of [`RouterConfig::master_suspect_ms`] (0 turns suspicion off).
pub const MASTER_SUSPECT_MS_RANGE: RangeInclusive<u64> = 0..=60_000;

/// How the router watches the cluster's znodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// One persistent recursive watch (`addWatch`, ZooKeeper 3.6+); one-shot watches
    /// when the server answers Unimplemented.
    #[default]
    Auto,
    /// One-shot watches re-armed after each event, even if the server has `addWatch`.
    OneShot,
}

/// Everything the router is configured with. Build it with [`Router::builder`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouterConfig {
    /// "host:port" of every coordination server.
    pub coord_servers: Vec<String>,
    /// Reach the coordination servers over TLS (coordd's `--secure-client-addr`);
    /// None (the default): plain TCP.
    pub coord_tls: Option<coordd_client::TlsConfig>,
    /// Root of the Switchyard znodes, default [`ROOT_DEFAULT`].
    pub root: String,
    /// The cluster's name (required).
    pub cluster: String,
    /// Session timeout asked of the ensemble.
    pub session_timeout_ms: u32,
    /// Bound on one TCP connect plus handshake to a coordination server.
    pub coord_connect_timeout_ms: u32,
    /// Deadline of each read of the namespace (and of `connect` as a whole).
    pub coord_request_timeout_ms: u32,
    /// How long a write (or a read that needs the master) waits for a topology with a
    /// primary before it fails with [`RouteError::NoPrimary`](crate::topology::RouteError).
    /// Also bounds the topology refresh of [`Router::execute_write`].
    pub write_wait_ms: u64,
    /// Bound on one PostgreSQL connect (TCP plus startup).
    pub pg_connect_timeout_ms: u32,
    /// Connections per endpoint.
    pub pool_max_size: usize,
    /// How long a checkout waits for a free connection of a full pool.
    pub pool_wait_timeout_ms: u32,
    /// After a connection to the master fails, how long writes wait for a topology
    /// change (each bounded by `write_wait_ms`) before trying that master again.
    /// 0: no suspicion, every write tries the master.
    pub master_suspect_ms: u64,
    /// Replicas further behind the master than this get no reads.
    pub max_lag_bytes: u64,
    /// With no readable replica, read from the master.
    pub read_fallback_to_master: bool,
    /// How reads are spread over the readable replicas: round robin (default) or
    /// least outstanding (fewest connections handed out and not yet returned).
    pub read_balance: Balance,
    pub watch_mode: WatchMode,
    /// PostgreSQL user, database, password and application_name of every connection.
    pub pg_user: String,
    pub pg_dbname: String,
    pub pg_password: Option<String>,
    pub application_name: String,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            coord_servers: vec!["127.0.0.1:2181".to_owned()],
            coord_tls: None,
            root: ROOT_DEFAULT.to_owned(),
            cluster: String::new(),
            session_timeout_ms: SESSION_TIMEOUT_MS_DEFAULT,
            coord_connect_timeout_ms: COORD_CONNECT_TIMEOUT_MS_DEFAULT,
            coord_request_timeout_ms: COORD_REQUEST_TIMEOUT_MS_DEFAULT,
            write_wait_ms: WRITE_WAIT_MS_DEFAULT,
            pg_connect_timeout_ms: PG_CONNECT_TIMEOUT_MS_DEFAULT,
            pool_max_size: POOL_MAX_SIZE_DEFAULT,
            pool_wait_timeout_ms: POOL_WAIT_TIMEOUT_MS_DEFAULT,
            master_suspect_ms: MASTER_SUSPECT_MS_DEFAULT,
            max_lag_bytes: ClusterConfig::default().max_lag_bytes,
            read_fallback_to_master: true,
            read_balance: Balance::RoundRobin,
            watch_mode: WatchMode::Auto,
            pg_user: "postgres".to_owned(),
            pg_dbname: "postgres".to_owned(),
            pg_password: None,
            application_name: "switchyard-router".to_owned(),
        }
    }
}

impl RouterConfig {
    /// Checks every bound; returns the namespace the settings name.
    pub fn validate(&self) -> Result<Namespace, Error> {
        fn within<T: PartialOrd + std::fmt::Debug>(
            name: &str,
            v: T,
            range: RangeInclusive<T>,
        ) -> Result<(), Error> {
            if range.contains(&v) {
                Ok(())
            } else {
                Err(Error::Config(format!(
                    "{name} = {v:?} is outside {range:?}"
                )))
            }
        }
        if self.coord_servers.is_empty() || self.coord_servers.iter().any(|s| s.is_empty()) {
            return Err(Error::Config(
                "coord needs at least one \"host:port\" server".into(),
            ));
        }
        if self.cluster.is_empty() {
            return Err(Error::Config("cluster is required".into()));
        }
        if let Some(tls) = &self.coord_tls {
            tls.check()
                .map_err(|e| Error::Config(format!("coord_tls: {e}")))?;
        }
        let ns =
            Namespace::new(&self.root, &self.cluster).map_err(|e| Error::Config(e.to_string()))?;
        within("write_wait_ms", self.write_wait_ms, WRITE_WAIT_MS_RANGE)?;
        within(
            "master_suspect_ms",
            self.master_suspect_ms,
            MASTER_SUSPECT_MS_RANGE,
        )?;
        within(
            "session_timeout_ms",
            self.session_timeout_ms,
            SESSION_TIMEOUT_MS_RANGE,
        )?;
        for (name, v) in [
            ("coord_connect_timeout_ms", self.coord_connect_timeout_ms),
            ("coord_request_timeout_ms", self.coord_request_timeout_ms),
            ("pg_connect_timeout_ms", self.pg_connect_timeout_ms),
            ("pool_wait_timeout_ms", self.pool_wait_timeout_ms),
        ] {
            within(name, v, TIMEOUT_MS_RANGE)?;
        }
        within("pool_max_size", self.pool_max_size, POOL_MAX_SIZE_RANGE)?;
        if self.pg_user.is_empty() || self.pg_dbname.is_empty() {
            return Err(Error::Config(
                "pg_user and pg_dbname must not be empty".into(),
            ));
        }
        Ok(ns)
    }

    /// The read side of routing these settings give.
    pub fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            balance: self.read_balance,
            max_lag_bytes: self.max_lag_bytes,
            fallback_to_master: self.read_fallback_to_master,
        }
    }

    pub(crate) fn write_wait(&self) -> Duration {
        Duration::from_millis(self.write_wait_ms)
    }
}

/// Builds a [`Router`]; see the [module docs](super) for an example.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RouterBuilder {
    cfg: RouterConfig,
}

impl RouterBuilder {
    /// Coordination servers as a comma-separated "host:port,host:port" list.
    pub fn coord(mut self, servers: &str) -> Self {
        self.cfg.coord_servers = servers
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        self
    }

    /// Connects to the coordination servers over TLS (their TLS port's addresses go in
    /// [`coord`](Self::coord)). The files are read by `connect`; a bad one is a
    /// configuration error.
    pub fn coord_tls(mut self, tls: coordd_client::TlsConfig) -> Self {
        self.cfg.coord_tls = Some(tls);
        self
    }

    pub fn cluster(mut self, name: &str) -> Self {
        self.cfg.cluster = name.to_owned();
        self
    }

    pub fn root(mut self, root: &str) -> Self {
        self.cfg.root = root.to_owned();
        self
    }

    pub fn session_timeout_ms(mut self, ms: u32) -> Self {
        self.cfg.session_timeout_ms = ms;
        self
    }

    pub fn coord_connect_timeout_ms(mut self, ms: u32) -> Self {
        self.cfg.coord_connect_timeout_ms = ms;
        self
    }

    pub fn coord_request_timeout_ms(mut self, ms: u32) -> Self {
        self.cfg.coord_request_timeout_ms = ms;
        self
    }

    pub fn write_wait_ms(mut self, ms: u64) -> Self {
        self.cfg.write_wait_ms = ms;
        self
    }

    pub fn pg_connect_timeout_ms(mut self, ms: u32) -> Self {
        self.cfg.pg_connect_timeout_ms = ms;
        self
    }

    pub fn pool_max_size(mut self, n: usize) -> Self {
        self.cfg.pool_max_size = n;
        self
    }

    pub fn pool_wait_timeout_ms(mut self, ms: u32) -> Self {
        self.cfg.pool_wait_timeout_ms = ms;
        self
    }

    pub fn master_suspect_ms(mut self, ms: u64) -> Self {
        self.cfg.master_suspect_ms = ms;
        self
    }

    pub fn max_lag_bytes(mut self, bytes: u64) -> Self {
        self.cfg.max_lag_bytes = bytes;
        self
    }

    pub fn read_fallback_to_master(mut self, on: bool) -> Self {
        self.cfg.read_fallback_to_master = on;
        self
    }

    pub fn read_balance(mut self, balance: Balance) -> Self {
        self.cfg.read_balance = balance;
        self
    }

    pub fn watch_mode(mut self, mode: WatchMode) -> Self {
        self.cfg.watch_mode = mode;
        self
    }

    pub fn pg_user(mut self, user: &str) -> Self {
        self.cfg.pg_user = user.to_owned();
        self
    }

    pub fn pg_dbname(mut self, dbname: &str) -> Self {
        self.cfg.pg_dbname = dbname.to_owned();
        self
    }

    pub fn pg_password(mut self, password: &str) -> Self {
        self.cfg.pg_password = Some(password.to_owned());
        self
    }

    pub fn application_name(mut self, name: &str) -> Self {
        self.cfg.application_name = name.to_owned();
        self
    }

    /// The settings so far.
    pub fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Checks the settings, connects to the ensemble, reads the cluster's topology
    /// once, and starts the watcher task. Fails if the ensemble cannot be reached or
    /// read within `coord_request_timeout_ms`. Must run inside a tokio runtime.
    pub async fn connect(self) -> Result<Router, Error> {
        Router::connect(self.cfg).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let ok = Router::builder().coord("a:1, b:2,").cluster("main");
        assert_eq!(ok.config().coord_servers, ["a:1", "b:2"]);
        let ns = ok.config().validate().unwrap();
        assert_eq!(ns.cluster(), "/switchyard/clusters/main");
        let bad = [
            Router::builder().coord("a:1"),
            Router::builder().coord("").cluster("main"),
            ok.clone().cluster("a/b"),
            ok.clone().root("rel"),
            ok.clone().write_wait_ms(60_001),
            ok.clone().master_suspect_ms(60_001),
            ok.clone().pool_max_size(0),
            ok.clone().pg_connect_timeout_ms(0),
            ok.clone().session_timeout_ms(10),
            ok.clone().pg_user(""),
        ];
        for b in bad {
            assert!(
                matches!(b.config().validate(), Err(Error::Config(_))),
                "{:?}",
                b.config()
            );
        }
        let p = ok
            .max_lag_bytes(7)
            .read_fallback_to_master(false)
            .read_balance(Balance::LeastOutstanding)
            .config()
            .read_policy();
        assert_eq!(p.max_lag_bytes, 7);
        assert_eq!(p.balance, Balance::LeastOutstanding);
        assert!(!p.fallback_to_master);
    }
}
