//! The router (DESIGN.md section 5): the library an app server links to send writes
//! to the master and reads to live replicas, with no proxy in between.
//!
//! A [`Router`] holds one coordination session. Its watcher task keeps a
//! [`Topology`](crate::topology::Topology) snapshot current from the cluster's znodes
//! (one persistent recursive watch on the cluster's znode, a full re-read after
//! every reconnect, one-shot watches against servers without `addWatch`). Routing is
//! one atomic load of that snapshot ([`Router::route_now`]); [`Router::route`] also
//! waits, bounded by `write_wait_ms`, for a snapshot that can serve the intent.
//! Connections come from one deadpool-postgres pool per endpoint; pools of endpoints
//! that leave the topology are closed.
//!
//! ```no_run
//! use switchyard_proxy::router::Router;
//!
//! # async fn run() -> Result<(), switchyard_proxy::router::Error> {
//! let router = Router::builder()
//!     .coord("zk1:2181,zk2:2181,zk3:2181")
//!     .cluster("main")
//!     .root("/switchyard")
//!     .write_wait_ms(5_000) // how long a write waits for a master during failover
//!     .pool_max_size(16)
//!     .max_lag_bytes(16 << 20)
//!     .pg_user("app")
//!     .pg_dbname("app")
//!     .connect()
//!     .await?;
//!
//! // A write: the master's pool. 25006 (a stale route to a replica) is retried once
//! // on the master after a topology refresh.
//! router
//!     .execute_write("INSERT INTO items (name) VALUES ($1)", &[&"pen"])
//!     .await?;
//!
//! // Or hold a master connection, e.g. for a transaction, and take a causal token.
//! let mut master = router.write().await?;
//! let tx = master.transaction().await?;
//! tx.execute("UPDATE items SET n = n + 1 WHERE name = $1", &[&"pen"]).await?;
//! tx.commit().await?;
//! let token = master.causal_token().await?;
//! drop(master);
//!
//! // A read: a live replica, round robin, within the lag bound.
//! let replica = router.read().await?;
//! let n: i64 = replica.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
//!
//! // Read-your-writes: a replica that has replayed the token, else the master.
//! let fresh = router.read_after(&token).await?;
//! let rows = fresh.query("SELECT n FROM items WHERE name = $1", &[&"pen"]).await?;
//! # let _ = (n, rows);
//! # Ok(())
//! # }
//! ```
//!
//! Invariant: a write connection is handed out only for a leader in state `primary`
//! whose epoch is not older than one this router already published.

pub mod classify;
mod config;
mod pools;
mod watcher;

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::namespace::Namespace;
use crate::records::Lsn;
use crate::topology::{Endpoint, Intent, RouteError, RouteTable, Routed, Topology};

pub use config::*;

/// Why a router call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting outside its bound; nothing was connected.
    #[error("invalid router setting: {0}")]
    Config(String),
    /// No endpoint can serve the intent, even after waiting `write_wait_ms`.
    /// Retryable.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The coordination ensemble could not be read.
    #[error("coordination: {0}")]
    Coord(#[from] coordd_client::Error),
    /// No connection from the endpoint's pool (connect failed or timed out, pool
    /// full past `pool_wait_timeout_ms`, pool closed because the endpoint left).
    #[error("connection pool of {node} ({host}:{port}): {source}")]
    Pool {
        node: String,
        host: String,
        port: u16,
        #[source]
        source: deadpool_postgres::PoolError,
    },
    /// The statement failed.
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// A causal token could not be read from the server's answer.
    #[error("unreadable WAL position: {0}")]
    Lsn(String),
    /// The topology refresh did not finish within `write_wait_ms`, or the watcher
    /// task is gone.
    #[error("topology refresh did not finish in time")]
    RefreshTimeout,
}

impl Error {
    /// Whether the same call may succeed later without any change by the caller
    /// (failover in progress, an endpoint leaving, a coordination hiccup).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Route(_) | Error::Pool { .. } | Error::RefreshTimeout => true,
            Error::Coord(e) => !matches!(e, coordd_client::Error::InvalidArgument(_)),
            Error::Postgres(e) => {
                e.is_closed() || e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
            }
            Error::Config(_) | Error::Lsn(_) => false,
        }
    }

    /// The SQLSTATE of a statement error.
    pub fn sql_state(&self) -> Option<&SqlState> {
        match self {
            Error::Postgres(e) => e.code(),
            _ => None,
        }
    }
}

/// A commit position: reads with it see the write it was taken after
/// ([`Router::read_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalToken(pub Lsn);

/// A pooled connection to one endpoint; derefs to [`tokio_postgres::Client`] (through
/// deadpool's wrapper, which adds a statement cache). Returned to its pool on drop.
pub struct PooledClient {
    inner: deadpool_postgres::Object,
    endpoint: Endpoint,
}

impl PooledClient {
    /// The node this connection goes to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The master's current WAL position: taken after a commit on a write
    /// connection, it is at or past that commit's LSN. Fails on a replica.
    pub async fn causal_token(&self) -> Result<CausalToken, Error> {
        let row = self
            .inner
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let text: String = row.get(0);
        text.parse::<Lsn>()
            .map(CausalToken)
            .map_err(|e| Error::Lsn(e.to_string()))
    }

    /// The deadpool object, e.g. to detach it from the pool.
    pub fn into_inner(self) -> deadpool_postgres::Object {
        self.inner
    }
}

impl std::fmt::Debug for PooledClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledClient")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl Deref for PooledClient {
    type Target = deadpool_postgres::ClientWrapper;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// State shared by the router handles and the watcher task.
pub(crate) struct Shared {
    pub(crate) cfg: RouterConfig,
    pub(crate) ns: Namespace,
    pub(crate) table: RouteTable,
    /// Bumped after every publish; callers waiting for a topology watch it.
    pub(crate) published: watch::Sender<u64>,
    pub(crate) pools: pools::Pools,
    started: Instant,
    /// Nanoseconds from `started` to the last successful read of the namespace.
    last_read_ns: AtomicU64,
    one_shot: AtomicBool,
}

impl Shared {
    pub(crate) fn mark_read(&self) {
        let ns = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_read_ns.store(ns, Ordering::Relaxed);
    }
}

struct Handle {
    shared: Arc<Shared>,
    refresh_tx: mpsc::Sender<watcher::RefreshReply>,
    task: JoinHandle<()>,
}

impl Drop for Handle {
    /// The last router handle is gone: stop the watcher (which closes the session)
    /// and close every pool.
    fn drop(&mut self) {
        self.task.abort();
        self.shared.pools.close_all();
    }
}

/// The router. Cheap to clone; the watcher stops and the pools close when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Router {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("cluster", &self.handle.shared.ns.cluster())
            .field("topology", &self.handle.shared.table.snapshot())
            .finish()
    }
}

impl Router {
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    async fn connect(cfg: RouterConfig) -> Result<Router, Error> {
        let ns = cfg.validate()?;
        let table = RouteTable::new(cfg.read_policy());
        let shared = Arc::new(Shared {
            ns,
            table,
            published: watch::Sender::new(0),
            pools: pools::Pools::default(),
            started: Instant::now(),
            last_read_ns: AtomicU64::new(0),
            one_shot: AtomicBool::new(false),
            cfg,
        });
        let (w, events) = watcher::Watcher::start(shared.clone()).await?;
        shared.one_shot.store(w.one_shot(), Ordering::Relaxed);
        let (refresh_tx, refresh_rx) = mpsc::channel(16);
        let task = tokio::spawn(w.run(events, refresh_rx));
        Ok(Router {
            handle: Arc::new(Handle {
                shared,
                refresh_tx,
                task,
            }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The settings in force.
    pub fn config(&self) -> &RouterConfig {
        &self.shared().cfg
    }

    /// Routes on the current snapshot without waiting: one atomic load, no lock, no
    /// allocation.
    pub fn route_now(&self, intent: Intent) -> Result<Routed, RouteError> {
        self.shared().table.route(intent)
    }

    /// The endpoint for `intent`, for callers that keep their own connections. When
    /// the current snapshot cannot serve it (no primary during a failover, no readable
    /// node), waits for published snapshots up to `write_wait_ms`, then returns the
    /// last [`RouteError`] (retryable). Waiting is on a notification, not a poll.
    pub async fn route(&self, intent: Intent) -> Result<Endpoint, RouteError> {
        let shared = self.shared();
        // Subscribe before the first try so no publish in between is missed.
        let mut published = shared.published.subscribe();
        let mut last = match shared.table.route(intent) {
            Ok(r) => return Ok(r.endpoint().clone()),
            Err(e) => e,
        };
        let deadline = tokio::time::Instant::now() + shared.cfg.write_wait();
        loop {
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                // Deadline passed, or the watcher is gone (no snapshot will come).
                Ok(Err(_)) | Err(_) => return Err(last),
            }
            match shared.table.route(intent) {
                Ok(r) => return Ok(r.endpoint().clone()),
                Err(e) => last = e,
            }
        }
    }

    async fn checkout(&self, intent: Intent) -> Result<PooledClient, Error> {
        let endpoint = self.route(intent).await?;
        let pool = self.shared().pools.get(&self.shared().cfg, &endpoint);
        match pool.get().await {
            Ok(inner) => Ok(PooledClient { inner, endpoint }),
            Err(source) => Err(Error::Pool {
                node: endpoint.node,
                host: endpoint.host,
                port: endpoint.port,
                source,
            }),
        }
    }

    /// A connection to the master (a leader in state `primary`); waits up to
    /// `write_wait_ms` for one during a failover.
    pub async fn write(&self) -> Result<PooledClient, Error> {
        self.checkout(Intent::Write).await
    }

    /// A connection to a live replica within the lag bound (round robin), else to
    /// the master when `read_fallback_to_master` is on.
    pub async fn read(&self) -> Result<PooledClient, Error> {
        self.checkout(Intent::Read).await
    }

    /// A connection to a replica that has replayed `token`, else to the master.
    pub async fn read_after(&self, token: &CausalToken) -> Result<PooledClient, Error> {
        self.checkout(Intent::ReadAfter(token.0)).await
    }

    /// Runs one write statement on the master and returns the rows affected. If it
    /// reached a node that is not the master (SQLSTATE 25006, a stale route), the
    /// statement did not run: the topology is re-read and the statement is retried
    /// once on the master.
    pub async fn execute_write(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<u64, Error> {
        let first = {
            let conn = self.write().await?;
            conn.execute(sql, params).await
        };
        match first {
            Ok(n) => Ok(n),
            Err(e) if e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION) => {
                tracing::info!("write reached a read-only node (25006): refreshing the topology and retrying once");
                self.refresh().await?;
                let conn = self.write().await?;
                Ok(conn.execute(sql, params).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Re-reads the whole topology now and publishes it; bounded by `write_wait_ms`.
    pub async fn refresh(&self) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        let wait = self.shared().cfg.write_wait();
        let r = tokio::time::timeout(wait, async {
            self.handle
                .refresh_tx
                .send(tx)
                .await
                .map_err(|_| Error::RefreshTimeout)?;
            rx.await.map_err(|_| Error::RefreshTimeout)
        })
        .await;
        match r {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(Error::Coord(e)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::RefreshTimeout),
        }
    }

    /// The current snapshot.
    pub fn topology(&self) -> Arc<Topology> {
        self.shared().table.snapshot()
    }

    /// Time since the namespace was last read successfully (the topology's age, for
    /// a metric). Grows while the ensemble is unreachable.
    pub fn snapshot_age(&self) -> Duration {
        let s = self.shared();
        let at = Duration::from_nanos(s.last_read_ns.load(Ordering::Relaxed));
        s.started.elapsed().saturating_sub(at)
    }

    /// Whether the router fell back to one-shot watches (server without `addWatch`,
    /// or [`WatchMode::OneShot`]) on its first session.
    pub fn uses_one_shot_watches(&self) -> bool {
        self.shared().one_shot.load(Ordering::Relaxed)
    }

    /// A receiver whose value changes after every published snapshot (e.g. to wait
    /// for a topology change under a deadline without polling).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared().published.subscribe()
    }

    /// The endpoints that have a connection pool now.
    pub fn pooled_endpoints(&self) -> Vec<Endpoint> {
        self.shared().pools.endpoints()
    }

    /// The route table itself. For tests and diagnostics: publishing into it bypasses
    /// the watcher (tests use it to simulate a stale snapshot).
    #[doc(hidden)]
    pub fn route_table(&self) -> &RouteTable {
        &self.shared().table
    }
}
