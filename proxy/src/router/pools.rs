//! One deadpool-postgres pool per endpoint, made on first use. Pools of endpoints that
//! left the topology drain: idle connections are dropped at once, checked-out ones
//! closed when returned. The old master's pool after a leader change is closed at once
//! (DESIGN.md 5): every connection to it, checked-out ones included, ends now, so a
//! query waiting on a machine that went silent fails at once instead of when TCP gives
//! up (minutes), and the caller retries on the new master.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
    Timeouts,
};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use crate::topology::Endpoint;

use super::metrics::{EndpointMetrics, RouterMetrics};
use super::RouterConfig;

#[derive(Debug, Default)]
pub(crate) struct Pools {
    // A lock per checkout, not per route: routing itself stays lock-free.
    by_endpoint: Mutex<HashMap<Endpoint, Arc<EndpointPool>>>,
}

/// One endpoint's connections: its deadpool pool, its metric handles, and the
/// connection returned last, kept at hand.
///
/// Why a connection at hand: measured in place (one client alternating op by op with a
/// direct connection, `benches/routing_e2e.rs`, caches cold from the other paths),
/// deadpool's checkout took ~2.3 us of a ~110 us one-row SELECT (its idle list, its
/// semaphore, a boxed recycle future, the object moved twice), most of the router's
/// cost per query; taking the connection at hand is one uncontended lock.
///
/// Invariant: a connection is at hand only while the pool is open, it was open when
/// put there, and no checkout is waiting in deadpool (a returned connection goes to
/// deadpool then, so a waiter is never left waiting while one sits idle here). The
/// connection at hand counts as checked out in deadpool, so the pool's size bound holds.
pub(crate) struct EndpointPool {
    pool: Pool,
    pub(crate) metrics: Arc<EndpointMetrics>,
    at_hand: Mutex<AtHand>,
    /// Cancelled by [`EndpointPool::close_now`]: every connection task of this pool ends.
    connections_end: CancellationToken,
}

/// deadpool's connect, with each connection's task bound to its pool's
/// `connections_end`. Ending the task drops the socket; the connection's `Client`
/// then fails every request in flight and every later one with "connection closed".
struct ClosableConnect {
    connections_end: CancellationToken,
}

impl deadpool_postgres::Connect for ClosableConnect {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<
                        (tokio_postgres::Client, tokio::task::JoinHandle<()>),
                        tokio_postgres::Error,
                    >,
                > + Send
                + '_,
        >,
    > {
        let pg_config = pg_config.clone();
        let end = self.connections_end.clone();
        Box::pin(async move {
            let (client, connection) = pg_config.connect(NoTls).await?;
            let task = tokio::spawn(async move {
                tokio::select! {
                    res = connection => {
                        if let Err(e) = res {
                            tracing::debug!("connection to PostgreSQL ended: {e}");
                        }
                    }
                    _ = end.cancelled() => {}
                }
            });
            Ok((client, task))
        })
    }
}

#[derive(Default)]
struct AtHand {
    conn: Option<Object>,
    /// Checkouts that found nothing at hand and went to deadpool, until they return.
    deadpool_checkouts: usize,
}

impl std::fmt::Debug for EndpointPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointPool")
            .field("status", &self.pool.status())
            .finish_non_exhaustive()
    }
}

/// Counts a checkout as gone to deadpool while it lives (also when the checkout is
/// cancelled mid-wait).
struct DeadpoolCheckout<'a>(&'a EndpointPool);

impl Drop for DeadpoolCheckout<'_> {
    fn drop(&mut self) {
        self.0.lock_at_hand().deadpool_checkouts -= 1;
    }
}

impl EndpointPool {
    fn lock_at_hand(&self) -> std::sync::MutexGuard<'_, AtHand> {
        self.at_hand.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: the one at hand if it is still open, else deadpool's (an idle one
    /// at once if there is one, else a new one or, with the pool at its size, the next
    /// one returned, within `pool_wait_timeout_ms`).
    ///
    /// Deadpool's first try arms no timer: it wraps a bounded wait and a bounded
    /// recycle in a timeout each, and in place the timers and their cold cache lines
    /// cost more than the rest of the checkout. Recycling is `Fast` (it never waits), so
    /// it needs no timeout; creating a connection keeps its bound.
    pub(crate) async fn checkout(&self, cfg: &RouterConfig) -> Result<Object, PoolError> {
        let closed_at_hand = {
            let mut at_hand = self.lock_at_hand();
            match at_hand.conn.take() {
                Some(conn) if !conn.is_closed() => return Ok(conn),
                closed => {
                    at_hand.deadpool_checkouts += 1;
                    closed
                }
            }
        };
        // Back to deadpool, whose recycling drops a closed connection.
        drop(closed_at_hand);
        let _counted = DeadpoolCheckout(self);
        let now = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(Duration::from_millis(cfg.pg_connect_timeout_ms.into())),
            recycle: None,
        };
        match self.pool.timeout_get(&now).await {
            Err(PoolError::Timeout(TimeoutType::Wait)) => self.pool.get().await,
            got => got,
        }
    }

    /// Takes back a connection checked out of this pool: kept at hand if the place is
    /// free, the pool open, the connection open and no checkout waits in deadpool;
    /// otherwise returned to deadpool (which wakes a waiter, or drops the connection of
    /// a closed pool).
    pub(crate) fn give_back(&self, conn: Object) {
        let mut at_hand = self.lock_at_hand();
        if at_hand.conn.is_none()
            && at_hand.deadpool_checkouts == 0
            && !self.pool.is_closed()
            && !conn.is_closed()
        {
            at_hand.conn = Some(conn);
            return;
        }
        drop(at_hand);
        drop(conn);
    }

    /// Closes the pool: idle connections (the one at hand too) are dropped at once,
    /// checked-out ones when they are given back.
    fn close(&self) {
        // Closed first: a connection given back from now on is not kept at hand.
        self.pool.close();
        let at_hand = self.lock_at_hand().conn.take();
        drop(at_hand);
    }

    /// Closes the pool and ends every one of its connections now, checked-out ones too.
    fn close_now(&self) {
        self.close();
        self.connections_end.cancel();
    }
}

/// TCP keepalive on every pooled connection (DESIGN.md 5: a dead machine does not refuse,
/// it goes silent). A dead peer of an idle connection is noticed after
/// `KEEPALIVE_IDLE_MS + KEEPALIVE_INTERVAL_MS * KEEPALIVE_RETRIES` (16 s); Linux's
/// defaults would take over two hours.
const KEEPALIVE_IDLE_MS: u64 = 10_000;
const KEEPALIVE_INTERVAL_MS: u64 = 2_000;
const KEEPALIVE_RETRIES: u32 = 3;
/// TCP_USER_TIMEOUT: data sent and not acknowledged for this long closes the connection
/// (a query sent to a machine that died; Linux's retransmissions would take ~15 min).
/// Equal to the keepalive's detection time, which it also caps on Linux.
const TCP_USER_TIMEOUT_MS: u64 = 16_000;

fn pg_config(cfg: &RouterConfig, ep: &Endpoint) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&ep.host)
        .port(ep.port)
        .user(&cfg.pg_user)
        .dbname(&cfg.pg_dbname)
        .application_name(&cfg.application_name)
        .connect_timeout(Duration::from_millis(cfg.pg_connect_timeout_ms.into()))
        .keepalives(true)
        .keepalives_idle(Duration::from_millis(KEEPALIVE_IDLE_MS))
        .keepalives_interval(Duration::from_millis(KEEPALIVE_INTERVAL_MS))
        .keepalives_retries(KEEPALIVE_RETRIES)
        .tcp_user_timeout(Duration::from_millis(TCP_USER_TIMEOUT_MS));
    if let Some(p) = &cfg.pg_password {
        c.password(p);
    }
    c
}

impl Pools {
    /// The pool of `ep`, made if there is none.
    pub(crate) fn get(
        &self,
        cfg: &RouterConfig,
        ep: &Endpoint,
        metrics: &RouterMetrics,
    ) -> Arc<EndpointPool> {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(ep) {
            return Arc::clone(p);
        }
        let connections_end = CancellationToken::new();
        let manager = Manager::from_connect(
            pg_config(cfg, ep),
            ClosableConnect {
                connections_end: connections_end.clone(),
            },
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let connect = Duration::from_millis(cfg.pg_connect_timeout_ms.into());
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_max_size)
            // Most recently used first: a lightly loaded app keeps reusing the few warm
            // connections (and their warm server processes and caches) instead of
            // cycling through every pooled one (measured: 1 client through an 8-slot
            // FIFO pool paid ~1.6x a direct connection's latency).
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_millis(cfg.pool_wait_timeout_ms.into())))
            .create_timeout(Some(connect))
            .recycle_timeout(Some(connect))
            .build()
            .expect("a runtime is set, so building cannot fail");
        let p = Arc::new(EndpointPool {
            pool,
            metrics: Arc::new(metrics.endpoint(ep)),
            at_hand: Mutex::new(AtHand::default()),
            connections_end,
        });
        map.insert(ep.clone(), Arc::clone(&p));
        p
    }

    /// Closes and forgets every pool whose endpoint is not in `keep`.
    pub(crate) fn retain(&self, keep: &[Endpoint]) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|ep, pool| {
            let kept = keep.contains(ep);
            if !kept {
                tracing::info!(
                    node = ep.node,
                    host = ep.host,
                    port = ep.port,
                    "endpoint left the topology: pool closed"
                );
                pool.close();
            }
            kept
        });
    }

    /// Closes and forgets the pool of `ep` (the old master after a leader change), if
    /// there is one, ending every connection to it now, checked-out ones included. A
    /// later checkout makes a new pool.
    pub(crate) fn close_now(&self, ep: &Endpoint, why: &str) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pool) = map.remove(ep) {
            tracing::info!(
                node = ep.node,
                host = ep.host,
                port = ep.port,
                why,
                "pool closed, its connections ended"
            );
            pool.close_now();
        }
    }

    pub(crate) fn close_all(&self) {
        self.retain(&[]);
    }

    /// The endpoints that have a pool now.
    pub(crate) fn endpoints(&self) -> Vec<Endpoint> {
        let map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }
}
