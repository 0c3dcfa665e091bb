//! The router (DESIGN.md section 5): the library an app server links to send writes
//! to the master and reads to live replicas, with no proxy in between.
//!
//! A [`Router`] holds one coordination session. Its watcher task keeps a
//! [`Topology`] snapshot current from the cluster's znodes
//! (one persistent recursive watch on the cluster's znode, a full re-read after
//! every reconnect, one-shot watches against servers without `addWatch`). Routing is
//! one atomic load of that snapshot ([`Router::route_now`]); [`Router::route`] also
//! waits, bounded by `write_wait_ms`, for a snapshot that can serve the intent.
//! Connections come from one deadpool-postgres pool per endpoint; pools of endpoints
//! that leave the topology are closed.
//!
//! Callers either pick the intent themselves ([`Router::write`], [`Router::read`],
//! [`Router::read_after`], [`Router::transaction`]) or let the router decide from the
//! statement's text ([`Router::query`], [`Router::execute`], through
//! [`classify`]): read-only statements go to a replica, everything else and anything
//! the classifier does not know to the master.
//!
//! Failures: a write that reaches a standby (SQLSTATE 25006, a stale route) did not
//! run and is retried once on the master after a topology refresh. A connection to the
//! master that fails marks it suspect (`master_suspect_ms`): writes then wait for the
//! next leader (bounded by `write_wait_ms`) instead of reconnecting. A leader change
//! closes the old master's pool at once, even if the node stays on as a replica. A
//! classified read whose connection fails is retried once on another node.
//!
//! Metrics (routed counts per node and intent, failover wait, topology age, retries)
//! go through the `metrics` facade; see [`metrics`].
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
//! // A transaction on the master; its commit returns a causal token.
//! let tx = router.transaction().await?;
//! tx.execute("UPDATE items SET n = n + 1 WHERE name = $1", &[&"pen"]).await?;
//! let token = tx.commit_with_token().await?;
//!
//! // A read: a live replica within the lag bound, by the read policy (round robin
//! // or least outstanding).
//! let replica = router.read().await?;
//! let n: i64 = replica.query_one("SELECT count(*) FROM items", &[]).await?.get(0);
//!
//! // Read-your-writes: a replica that has replayed the token, else the master.
//! let fresh = router.read_after(&token).await?;
//! let rows = fresh.query("SELECT n FROM items WHERE name = $1", &[&"pen"]).await?;
//!
//! // Automatic routing: the SELECT goes to a replica, the INSERT to the master.
//! let rows = router.query("SELECT name FROM items WHERE n > $1", &[&0i32]).await?;
//! let inserted = router.execute("INSERT INTO items (name) VALUES ($1)", &[&"ink"]).await?;
//! # let _ = (n, rows, inserted);
//! # Ok(())
//! # }
//! ```
//!
//! Invariants: a write connection is handed out only for a leader in state `primary`
//! whose epoch is not older than one this router already published; no pooled
//! connection made while a node was master survives a leader change; only a statement
//! that did not run (connect failed, 25006, `BEGIN READ WRITE` refused) is retried on
//! another node, except classified reads, which have no effects to repeat.

pub mod classify;
mod config;
pub mod metrics;
mod pools;
mod watcher;

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{PoolError, TimeoutType};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::election::Epoch;
use crate::namespace::Namespace;
use crate::records::Lsn;
use crate::topology::{
    Endpoint, InFlight, InFlightGuard, Intent, RouteError, RouteHandle, RouteTable, Routed, Target,
    Topology,
};

use classify::Class;
pub use config::*;
use metrics::{Retry, RouterMetrics};
/// The PostgreSQL client the router's connections are (re-exported so callers use
/// the same version).
pub use tokio_postgres;

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
    /// A connection to the master failed moments ago (`master_suspect_ms`) and no new
    /// master was published within `write_wait_ms`. Retryable.
    #[error("master {node} is suspect (a connection to it failed) and no new master came within write_wait_ms")]
    MasterSuspect { node: String },
}

impl Error {
    /// Whether the same call may succeed later without any change by the caller
    /// (failover in progress, an endpoint leaving, a coordination hiccup).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Route(_)
            | Error::Pool { .. }
            | Error::RefreshTimeout
            | Error::MasterSuspect { .. } => true,
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

    /// Whether the connection failed (could not be made, broke, or its server is
    /// shutting down) rather than the statement: another node may serve a read.
    /// A full pool (checkout wait timeout) is not a broken connection.
    pub fn is_connection_failure(&self) -> bool {
        match self {
            Error::Pool { source, .. } => match source {
                PoolError::Backend(e) => pg_connection_failure(e),
                PoolError::Timeout(TimeoutType::Create | TimeoutType::Recycle)
                | PoolError::PostCreateHook(_) => true,
                // The pool was closed because its endpoint left the topology.
                PoolError::Closed => true,
                PoolError::Timeout(TimeoutType::Wait) | PoolError::NoRuntimeSpecified => false,
            },
            Error::Postgres(e) => pg_connection_failure(e),
            _ => false,
        }
    }
}

/// Whether a tokio-postgres error is about the connection, not the statement: closed,
/// an I/O error, a connection exception (class 08), or the server shutting down or
/// not accepting connections (57P01, 57P02, 57P03).
fn pg_connection_failure(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    match e.code() {
        Some(code) => {
            code.code().starts_with("08")
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
        }
        None => std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>()),
    }
}

/// SQLSTATE 25006: the statement needed a read-write transaction (it reached a
/// standby, or a read-only session). The statement did not run.
fn read_only_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::READ_ONLY_SQL_TRANSACTION)
}

/// A commit position: reads with it see the write it was taken after
/// ([`Router::read_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CausalToken(pub Lsn);

/// A pooled connection to one endpoint; derefs to [`tokio_postgres::Client`] (through
/// deadpool's wrapper, which adds a statement cache). Returned to its pool on drop.
pub struct PooledClient {
    /// Invariant: Some until the client is dropped (given back to `home`) or taken
    /// with [`PooledClient::into_inner`] or `discard`.
    inner: Option<deadpool_postgres::Object>,
    /// The endpoint's pool, which takes the connection back.
    home: Arc<pools::EndpointPool>,
    endpoint: Arc<Endpoint>,
    /// Counts this connection as in flight on its endpoint (least-outstanding reads).
    _in_flight: InFlightGuard,
    /// The leader epoch, when this is a connection to the master.
    master_epoch: Option<Epoch>,
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
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?;
        let text: String = row.get(0);
        text.parse::<Lsn>()
            .map(CausalToken)
            .map_err(|e| Error::Lsn(e.to_string()))
    }

    /// The deadpool object, e.g. to detach it from the pool.
    pub fn into_inner(mut self) -> deadpool_postgres::Object {
        self.inner.take().expect(INNER_PRESENT)
    }
}

const INNER_PRESENT: &str = "a PooledClient holds its connection until it is dropped";

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(conn) = self.inner.take() {
            self.home.give_back(conn);
        }
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
        self.inner.as_ref().expect(INNER_PRESENT)
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.inner.as_mut().expect(INNER_PRESENT)
    }
}

/// Waits for the next published snapshot until `deadline`; false when it passed or
/// the watcher is gone.
async fn wait_for_publish(
    published: &mut watch::Receiver<u64>,
    deadline: tokio::time::Instant,
) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, published.changed()).await,
        Ok(Ok(()))
    )
}

/// The statement a transaction starts with: on a standby it fails at once (0A000,
/// "cannot set transaction read-write mode during recovery").
const BEGIN_READ_WRITE: &str = "BEGIN READ WRITE";

/// Whether `BEGIN READ WRITE` failed because the node is a standby.
fn begin_hit_a_standby(e: &tokio_postgres::Error) -> bool {
    read_only_violation(e) || e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED)
}

/// Takes a connection out of its pool and closes it (its session may be in a state
/// the next caller must not inherit).
fn discard(conn: PooledClient) {
    drop(deadpool_postgres::Object::take(conn.into_inner()));
}

/// A transaction on the master, from [`Router::transaction`]. Derefs to the
/// connection (`query`, `execute`, `prepare_cached`, ...). End it with
/// [`Transaction::commit`] or [`Transaction::rollback`]; dropped without either, its
/// connection is closed (PostgreSQL rolls back) rather than returned to the pool.
pub struct Transaction {
    conn: Option<PooledClient>,
}

impl Transaction {
    fn new(conn: PooledClient) -> Self {
        Transaction { conn: Some(conn) }
    }

    fn conn(&self) -> &PooledClient {
        self.conn
            .as_ref()
            .expect("present until commit, rollback or drop")
    }

    /// The node the transaction runs on.
    pub fn endpoint(&self) -> &Endpoint {
        self.conn().endpoint()
    }

    /// Commits. On error the connection is closed, not returned to the pool.
    pub async fn commit(mut self) -> Result<(), Error> {
        self.finish("COMMIT").await.map(drop)
    }

    /// Commits and returns a causal token: [`Router::read_after`] with it sees this
    /// transaction's writes.
    pub async fn commit_with_token(mut self) -> Result<CausalToken, Error> {
        let conn = self.finish("COMMIT").await?;
        conn.causal_token().await
    }

    /// Rolls back. On error the connection is closed, not returned to the pool.
    pub async fn rollback(mut self) -> Result<(), Error> {
        self.finish("ROLLBACK").await.map(drop)
    }

    async fn finish(&mut self, sql: &str) -> Result<PooledClient, Error> {
        let conn = self
            .conn
            .take()
            .expect("present until commit, rollback or drop");
        match conn.batch_execute(sql).await {
            Ok(()) => Ok(conn),
            Err(e) => {
                discard(conn);
                Err(e.into())
            }
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            discard(conn);
        }
    }
}

impl Deref for Transaction {
    type Target = deadpool_postgres::ClientWrapper;
    fn deref(&self) -> &Self::Target {
        self.conn()
    }
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("endpoint", &self.conn.as_ref().map(|c| &c.endpoint))
            .finish_non_exhaustive()
    }
}

/// A routed endpoint, owned (the snapshot guard is not held across awaits).
struct Picked {
    intent: Intent,
    endpoint: Arc<Endpoint>,
    target: Target,
    in_flight: InFlight,
    /// The leader epoch when the target is the master.
    master_epoch: Option<Epoch>,
}

impl Picked {
    fn of(intent: Intent, r: &Routed) -> Self {
        Picked {
            intent,
            endpoint: Arc::clone(r.endpoint_shared()),
            target: r.target(),
            in_flight: r.in_flight().clone(),
            master_epoch: match r.target() {
                Target::Master => r.topology().epoch(),
                Target::Replica(_) => None,
            },
        }
    }
}

/// What a routed statement does with its connection.
#[derive(Debug, Clone, Copy)]
enum Op {
    Query,
    Execute,
}

enum Output {
    Rows(Vec<Row>),
    Count(u64),
}

impl Output {
    fn rows(self) -> Vec<Row> {
        match self {
            Output::Rows(r) => r,
            Output::Count(_) => Vec::new(),
        }
    }

    fn count(self) -> u64 {
        match self {
            Output::Count(n) => n,
            Output::Rows(r) => r.len() as u64,
        }
    }
}

impl Op {
    async fn run(
        self,
        conn: &PooledClient,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Output, tokio_postgres::Error> {
        match self {
            Op::Query => conn.query(sql, params).await.map(Output::Rows),
            Op::Execute => conn.execute(sql, params).await.map(Output::Count),
        }
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
    /// The watcher's view is current: its session is connected and no re-read is
    /// pending. The topology's age is zero then.
    in_sync: AtomicBool,
    one_shot: AtomicBool,
    retries: Retries,
    /// The leader epoch whose master a failed connection made suspect
    /// ([`NO_SUSPECT`]: none), and until when (nanoseconds from `started`).
    suspect_epoch: AtomicI64,
    suspect_until_ns: AtomicU64,
    metrics: RouterMetrics,
}

const NO_SUSPECT: i64 = i64::MIN;

#[derive(Debug, Default)]
struct Retries {
    write_on_master: AtomicU64,
    read_elsewhere: AtomicU64,
    read_on_master: AtomicU64,
}

/// How often the router retried a statement since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryCounts {
    /// Writes (and transaction begins) that reached a read-only node (a stale route)
    /// and were retried on the master after a refresh.
    pub write_on_master: u64,
    /// Reads whose connection failed and that were retried on another node.
    pub read_elsewhere: u64,
    /// Reads that failed on a replica with SQLSTATE 25006 and were retried on the
    /// master.
    pub read_on_master: u64,
}

impl Shared {
    fn retried(&self, kind: Retry) {
        let counter = match kind {
            Retry::WriteOnMaster => &self.retries.write_on_master,
            Retry::ReadElsewhere => &self.retries.read_elsewhere,
            Retry::ReadOnMaster => &self.retries.read_on_master,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.metrics.retried(kind);
    }

    /// See [`Router::snapshot_age`].
    fn topology_age(&self) -> Duration {
        if self.in_sync.load(Ordering::Relaxed) {
            return Duration::ZERO;
        }
        let at = Duration::from_nanos(self.last_read_ns.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(at)
    }

    fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn mark_read(&self) {
        self.last_read_ns.store(self.now_ns(), Ordering::Relaxed);
    }

    /// The view is current (true) or may have fallen behind from now on (false).
    pub(crate) fn set_in_sync(&self, in_sync: bool) {
        if !in_sync && self.in_sync.load(Ordering::Relaxed) {
            // It was current until now.
            self.mark_read();
        }
        self.in_sync.store(in_sync, Ordering::Relaxed);
    }

    /// Marks the master of `epoch` suspect for `master_suspect_ms`.
    fn mark_suspect(&self, epoch: Option<Epoch>, node: &str) {
        let Some(epoch) = epoch else { return };
        if self.cfg.master_suspect_ms == 0 {
            return;
        }
        let until = self
            .now_ns()
            .saturating_add(self.cfg.master_suspect_ms.saturating_mul(1_000_000));
        self.suspect_until_ns.store(until, Ordering::Relaxed);
        self.suspect_epoch.store(epoch.0, Ordering::Relaxed);
        tracing::warn!(node, epoch = %epoch, suspect_ms = self.cfg.master_suspect_ms, "master connection failed: writes wait for a topology change");
    }

    /// Until when the master of `epoch` is suspect, if it is.
    fn suspect_until(&self, epoch: Option<Epoch>) -> Option<tokio::time::Instant> {
        let epoch = epoch?;
        if self.suspect_epoch.load(Ordering::Relaxed) != epoch.0 {
            return None;
        }
        let until_ns = self.suspect_until_ns.load(Ordering::Relaxed);
        if self.now_ns() >= until_ns {
            return None;
        }
        let at = self.started.checked_add(Duration::from_nanos(until_ns))?;
        Some(tokio::time::Instant::from_std(at))
    }
}

struct Handle {
    shared: Arc<Shared>,
    refresh_tx: mpsc::Sender<watcher::RefreshReply>,
    task: JoinHandle<()>,
    /// Sets the topology age gauge every `TOPOLOGY_AGE_INTERVAL_MS`.
    age_task: JoinHandle<()>,
}

impl Drop for Handle {
    /// The last router handle is gone: stop the watcher (which closes the session)
    /// and close every pool.
    fn drop(&mut self) {
        self.task.abort();
        self.age_task.abort();
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
            in_sync: AtomicBool::new(false),
            one_shot: AtomicBool::new(false),
            retries: Retries::default(),
            suspect_epoch: AtomicI64::new(NO_SUSPECT),
            suspect_until_ns: AtomicU64::new(0),
            metrics: RouterMetrics::new(&cfg.cluster),
            cfg,
        });
        let (w, events) = watcher::Watcher::start(shared.clone()).await?;
        shared.one_shot.store(w.one_shot(), Ordering::Relaxed);
        let (refresh_tx, refresh_rx) = mpsc::channel(16);
        let task = tokio::spawn(w.run(events, refresh_rx));
        let age_task = tokio::spawn({
            let shared = Arc::downgrade(&shared);
            async move {
                let mut tick =
                    tokio::time::interval(Duration::from_millis(metrics::TOPOLOGY_AGE_INTERVAL_MS));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(s) = shared.upgrade() else { return };
                    s.metrics.topology_age(s.topology_age());
                }
            }
        });
        Ok(Router {
            handle: Arc::new(Handle {
                shared,
                refresh_tx,
                task,
                age_task,
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

    /// A routing handle for one task or thread that routes often and keeps its own
    /// connections: [`RouteHandle::route`] decides like [`Router::route_now`] on the
    /// current snapshot, without touching any shared counter (one atomic load). The
    /// handle stays current by itself; it does not wait for a master.
    ///
    /// ```no_run
    /// # async fn f(router: switchyard_proxy::router::Router) {
    /// use switchyard_proxy::topology::Intent;
    /// let mut routes = router.route_handle();
    /// if let Ok(routed) = routes.route(Intent::Read) {
    ///     let endpoint = routed.endpoint();
    ///     println!("read from {}:{}", endpoint.host, endpoint.port);
    /// }
    /// # }
    /// ```
    pub fn route_handle(&self) -> RouteHandle {
        self.shared().table.handle()
    }

    /// The endpoint for `intent`, for callers that keep their own connections. When
    /// the current snapshot cannot serve it (no primary during a failover, no readable
    /// node), waits for published snapshots up to `write_wait_ms`, then returns the
    /// last [`RouteError`] (retryable). Waiting is on a notification, not a poll.
    pub async fn route(&self, intent: Intent) -> Result<Endpoint, RouteError> {
        self.pick(intent).await.map(|p| (*p.endpoint).clone())
    }

    /// Routes `intent`, waiting like [`Router::route`]; the endpoint with its in-flight
    /// counter.
    async fn pick(&self, intent: Intent) -> Result<Picked, RouteError> {
        let shared = self.shared();
        // The common case: a route, and nothing to wait for (no subscription made).
        if let Ok(r) = shared.table.route(intent) {
            return Ok(Picked::of(intent, &r));
        }
        // Subscribe, then route again: a snapshot published between the first try and
        // the subscription is seen by the second try, and any later one by `changed`.
        let mut published = shared.published.subscribe();
        let mut last = match shared.table.route(intent) {
            Ok(r) => return Ok(Picked::of(intent, &r)),
            Err(e) => e,
        };
        let started = tokio::time::Instant::now();
        let deadline = started + shared.cfg.write_wait();
        let r = loop {
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                // Deadline passed, or the watcher is gone (no snapshot will come).
                Ok(Err(_)) | Err(_) => break Err(last),
            }
            match shared.table.route(intent) {
                Ok(r) => break Ok(Picked::of(intent, &r)),
                Err(e) => last = e,
            }
        };
        shared.metrics.waited(intent, started.elapsed());
        r
    }

    /// A connection from the pool of a picked endpoint.
    async fn connect_to(&self, picked: Picked) -> Result<PooledClient, Error> {
        let shared = self.shared();
        let home = shared
            .pools
            .get(&shared.cfg, &picked.endpoint, &shared.metrics);
        let in_flight = picked.in_flight.enter();
        match home.checkout(&shared.cfg).await {
            Ok(inner) => {
                home.metrics.routed(picked.intent);
                Ok(PooledClient {
                    inner: Some(inner),
                    home,
                    endpoint: picked.endpoint,
                    _in_flight: in_flight,
                    master_epoch: picked.master_epoch,
                })
            }
            Err(source) => Err(Error::Pool {
                node: picked.endpoint.node.clone(),
                host: picked.endpoint.host.clone(),
                port: picked.endpoint.port,
                source,
            }),
        }
    }

    async fn checkout(&self, intent: Intent) -> Result<PooledClient, Error> {
        let picked = self.pick(intent).await?;
        self.connect_to(picked).await
    }

    /// A connection to the master (a leader in state `primary`); waits up to
    /// `write_wait_ms` for one during a failover.
    ///
    /// When connecting to the master fails (refused, timed out, server shutting down),
    /// the master is marked suspect for `master_suspect_ms`: writes then wait for the
    /// next topology change (a new leader), bounded by `write_wait_ms`, instead of
    /// connecting to it again; this call itself waits the same way (connecting did
    /// not run anything, so trying the next master is safe). Once the suspicion lapses
    /// the master is tried again.
    pub async fn write(&self) -> Result<PooledClient, Error> {
        let shared = self.shared();
        let started = tokio::time::Instant::now();
        let mut waited = false;
        let r = self
            .write_until(started + shared.cfg.write_wait(), &mut waited)
            .await;
        if waited {
            shared.metrics.waited(Intent::Write, started.elapsed());
        }
        r
    }

    async fn write_until(
        &self,
        deadline: tokio::time::Instant,
        waited: &mut bool,
    ) -> Result<PooledClient, Error> {
        let shared = self.shared();
        // Subscribe before the first try so no publish in between is missed.
        let mut published = shared.published.subscribe();
        let mut last_err: Option<Error> = None;
        loop {
            let picked = match shared.table.route(Intent::Write) {
                Ok(r) => Picked::of(Intent::Write, &r),
                Err(e) => {
                    *waited = true;
                    if !wait_for_publish(&mut published, deadline).await {
                        return Err(last_err.unwrap_or(Error::Route(e)));
                    }
                    continue;
                }
            };
            if let Some(until) = shared.suspect_until(picked.master_epoch) {
                *waited = true;
                let wake = until.min(deadline);
                match tokio::time::timeout_at(wake, published.changed()).await {
                    // A new snapshot: route again (a new leader clears the suspicion).
                    Ok(Ok(())) => continue,
                    // The suspicion lapsed before our deadline: try the master again.
                    Err(_) if wake < deadline => continue,
                    Ok(Err(_)) | Err(_) => {
                        return Err(last_err.unwrap_or(Error::MasterSuspect {
                            node: picked.endpoint.node.clone(),
                        }))
                    }
                }
            }
            let (epoch, node) = (picked.master_epoch, picked.endpoint.node.clone());
            match self.connect_to(picked).await {
                Ok(conn) => return Ok(conn),
                Err(e) if e.is_connection_failure() && shared.cfg.master_suspect_ms > 0 => {
                    if !matches!(
                        e,
                        Error::Pool {
                            source: PoolError::Closed,
                            ..
                        }
                    ) {
                        shared.mark_suspect(epoch, &node);
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A connection to a live replica within the lag bound (by the read policy:
    /// round robin or least outstanding), else to the master when
    /// `read_fallback_to_master` is on.
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
        self.run_write(sql, params, Op::Execute)
            .await
            .map(Output::count)
    }

    /// Runs one statement where its text says it may run, and returns its rows.
    ///
    /// [`classify`] decides: a read-only statement (`SELECT` without locking clauses,
    /// data-modifying CTEs or side-effecting functions, `SHOW`, `EXPLAIN` without
    /// `ANALYZE`, `VALUES`, `TABLE`) goes to a replica by the read policy; anything
    /// else, and anything the classifier does not understand, to the master.
    ///
    /// - A read whose connection fails (cannot connect, breaks, server shutting down)
    ///   is retried once on another readable node (another replica, else the master as
    ///   `read_fallback_to_master` allows). A read that fails on a replica with SQLSTATE
    ///   25006 (it called something that writes) did not run and is retried once on the
    ///   master.
    /// - A write that reaches a non-master (25006, a stale route) did not run: the
    ///   topology is re-read and it is retried once on the master. A write whose
    ///   connection broke after it was sent is not retried (it may have committed).
    ///
    /// Each call runs in its own implicit transaction on a pooled connection; for
    /// several statements in one transaction use [`Router::transaction`].
    pub async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, Error> {
        self.run(classify::classify(sql), sql, params, Op::Query)
            .await
            .map(Output::rows)
    }

    /// Like [`Router::query`], for statements whose rows are not needed: returns the
    /// number of rows affected. Routed and retried the same way.
    pub async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, Error> {
        self.run(classify::classify(sql), sql, params, Op::Execute)
            .await
            .map(Output::count)
    }

    async fn run(
        &self,
        class: Class,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        op: Op,
    ) -> Result<Output, Error> {
        match class {
            Class::Read => self.run_read(sql, params, op).await,
            Class::Write => self.run_write(sql, params, op).await,
        }
    }

    async fn run_read(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        op: Op,
    ) -> Result<Output, Error> {
        let picked = self.pick(Intent::Read).await?;
        let endpoint = picked.endpoint.clone();
        let on_master = picked.target == Target::Master;
        let first = match self.connect_to(picked).await {
            Ok(conn) => op.run(&conn, sql, params).await.map_err(Error::from),
            Err(e) => Err(e),
        };
        let err = match first {
            Ok(out) => return Ok(out),
            Err(e) => e,
        };
        if !on_master && matches!(&err, Error::Postgres(e) if read_only_violation(e)) {
            tracing::debug!(
                sql,
                node = endpoint.node,
                "read needed a read-write transaction (25006): retrying once on the master"
            );
            self.shared().retried(Retry::ReadOnMaster);
            let conn = self.write().await?;
            return Ok(op.run(&conn, sql, params).await?);
        }
        if !err.is_connection_failure() {
            return Err(err);
        }
        let Ok(other) = self.shared().table.route_avoiding(Intent::Read, &endpoint) else {
            return Err(err);
        };
        let other = Picked::of(Intent::Read, &other);
        tracing::info!(error = %err, failed = endpoint.node, retry = other.endpoint.node, "read connection failed: retrying once elsewhere");
        self.shared().retried(Retry::ReadElsewhere);
        let conn = self.connect_to(other).await?;
        Ok(op.run(&conn, sql, params).await?)
    }

    async fn run_write(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        op: Op,
    ) -> Result<Output, Error> {
        let first = {
            let conn = self.write().await?;
            let r = op.run(&conn, sql, params).await;
            if let Err(e) = &r {
                if pg_connection_failure(e) {
                    // Sent, so not retried (it may have committed); later writes wait.
                    self.shared()
                        .mark_suspect(conn.master_epoch, &conn.endpoint.node);
                }
            }
            r
        };
        match first {
            Ok(out) => Ok(out),
            Err(e) if read_only_violation(&e) => {
                tracing::info!("write reached a read-only node (25006): refreshing the topology and retrying once");
                self.shared().retried(Retry::WriteOnMaster);
                self.refresh().await?;
                let conn = self.write().await?;
                Ok(op.run(&conn, sql, params).await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// A transaction on the master: `BEGIN READ WRITE` on a master connection, which
    /// stays checked out until [`Transaction::commit`] or [`Transaction::rollback`].
    /// The transaction derefs to the connection for its statements.
    ///
    /// If the connection reaches a standby (a stale route), `BEGIN READ WRITE` fails
    /// there (nothing ran): the topology is re-read and the transaction begins once more
    /// on the master. Dropping a transaction that was neither committed nor rolled back
    /// closes its connection instead of returning it to the pool, so PostgreSQL rolls
    /// it back and no open transaction is handed to the next caller.
    ///
    /// ```no_run
    /// # async fn run(router: switchyard_proxy::router::Router)
    /// #     -> Result<(), switchyard_proxy::router::Error> {
    /// let tx = router.transaction().await?;
    /// tx.execute("UPDATE accounts SET balance = balance - $1 WHERE id = $2", &[&10i64, &1i32])
    ///     .await?;
    /// tx.execute("UPDATE accounts SET balance = balance + $1 WHERE id = $2", &[&10i64, &2i32])
    ///     .await?;
    /// // Commit and take a causal token: reads with it see both updates.
    /// let token = tx.commit_with_token().await?;
    /// let conn = router.read_after(&token).await?;
    /// let row = conn.query_one("SELECT balance FROM accounts WHERE id = $1", &[&2i32]).await?;
    /// # let _ = row;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn transaction(&self) -> Result<Transaction, Error> {
        let conn = self.write().await?;
        match conn.batch_execute(BEGIN_READ_WRITE).await {
            Ok(()) => Ok(Transaction::new(conn)),
            Err(e) if begin_hit_a_standby(&e) => {
                tracing::info!(node = conn.endpoint().node, "BEGIN READ WRITE refused (a standby): refreshing the topology and retrying once");
                discard(conn);
                self.shared().retried(Retry::WriteOnMaster);
                self.refresh().await?;
                let conn = self.write().await?;
                match conn.batch_execute(BEGIN_READ_WRITE).await {
                    Ok(()) => Ok(Transaction::new(conn)),
                    Err(e) => {
                        discard(conn);
                        Err(e.into())
                    }
                }
            }
            Err(e) => {
                discard(conn);
                Err(e.into())
            }
        }
    }

    /// How often the router retried (see [`RetryCounts`]).
    pub fn retry_counts(&self) -> RetryCounts {
        let r = &self.shared().retries;
        RetryCounts {
            write_on_master: r.write_on_master.load(Ordering::Relaxed),
            read_elsewhere: r.read_elsewhere.load(Ordering::Relaxed),
            read_on_master: r.read_on_master.load(Ordering::Relaxed),
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

    /// How far behind the topology may be (the topology's age, for a metric): zero
    /// while the watcher's session is connected with its watch armed and no re-read
    /// pending (changes arrive as watch events); otherwise the time since that last
    /// held. Grows while the ensemble is unreachable.
    pub fn snapshot_age(&self) -> Duration {
        self.shared().topology_age()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pool_error(source: PoolError) -> Error {
        Error::Pool {
            node: "n".into(),
            host: "h".into(),
            port: 1,
            source,
        }
    }

    #[test]
    fn connection_failures_and_retryable_errors() {
        // Could not connect or the pool went away: another node may serve a read.
        for source in [
            PoolError::Timeout(TimeoutType::Create),
            PoolError::Timeout(TimeoutType::Recycle),
            PoolError::Closed,
        ] {
            let e = pool_error(source);
            assert!(e.is_connection_failure(), "{e}");
            assert!(e.is_retryable(), "{e}");
        }
        // A full pool is busy, not broken.
        let e = pool_error(PoolError::Timeout(TimeoutType::Wait));
        assert!(!e.is_connection_failure());
        assert!(e.is_retryable());
        let e = Error::MasterSuspect { node: "n".into() };
        assert!(e.is_retryable() && !e.is_connection_failure());
        assert!(!Error::Config("x".into()).is_retryable());
        assert!(!Error::Route(RouteError::NoReadable).is_connection_failure());
    }
}
