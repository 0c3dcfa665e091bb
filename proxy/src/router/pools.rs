//! One deadpool-postgres pool per endpoint, made on first use; pools of endpoints
//! that left the topology are closed (idle connections dropped at once, checked-out
//! ones closed when returned).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
    Timeouts,
};
use tokio_postgres::NoTls;

use crate::topology::Endpoint;

use super::metrics::{EndpointMetrics, RouterMetrics};
use super::RouterConfig;

#[derive(Debug, Default)]
pub(crate) struct Pools {
    // A lock per checkout, not per route: routing itself stays lock-free.
    by_endpoint: Mutex<HashMap<Endpoint, (Pool, Arc<EndpointMetrics>)>>,
}

fn pg_config(cfg: &RouterConfig, ep: &Endpoint) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host(&ep.host)
        .port(ep.port)
        .user(&cfg.pg_user)
        .dbname(&cfg.pg_dbname)
        .application_name(&cfg.application_name)
        .connect_timeout(Duration::from_millis(cfg.pg_connect_timeout_ms.into()))
        // A dead machine goes silent; keepalive notices it (DESIGN.md 5).
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(10));
    if let Some(p) = &cfg.pg_password {
        c.password(p);
    }
    c
}

/// A connection from `pool`: an idle one at once if there is one, else a new one or,
/// with the pool at its size, the next one returned, within `pool_wait_timeout_ms`.
///
/// The first try arms no timer: deadpool wraps a bounded wait and a bounded recycle in
/// a timeout each, and measured in place (one client alternating with a direct
/// connection, `benches/routing_e2e.rs`) the checkout was ~5% of a one-row SELECT,
/// against 1 us in a tight loop; the timers and their cold cache lines were the
/// difference worth removing. Recycling is `Fast` (it never waits), so it needs no
/// timeout; creating a connection keeps its bound.
pub(crate) async fn checkout(pool: &Pool, cfg: &RouterConfig) -> Result<Object, PoolError> {
    let now = Timeouts {
        wait: Some(Duration::ZERO),
        create: Some(Duration::from_millis(cfg.pg_connect_timeout_ms.into())),
        recycle: None,
    };
    match pool.timeout_get(&now).await {
        Err(PoolError::Timeout(TimeoutType::Wait)) => pool.get().await,
        got => got,
    }
}

impl Pools {
    /// The pool of `ep` and its metric handles, made if there is none.
    pub(crate) fn get(
        &self,
        cfg: &RouterConfig,
        ep: &Endpoint,
        metrics: &RouterMetrics,
    ) -> (Pool, Arc<EndpointMetrics>) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, m)) = map.get(ep) {
            return (p.clone(), m.clone());
        }
        let manager = Manager::from_config(
            pg_config(cfg, ep),
            NoTls,
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
        let m = Arc::new(metrics.endpoint(ep));
        map.insert(ep.clone(), (pool.clone(), m.clone()));
        (pool, m)
    }

    /// Closes and forgets every pool whose endpoint is not in `keep`.
    pub(crate) fn retain(&self, keep: &[Endpoint]) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|ep, (pool, _)| {
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

    /// Closes and forgets the pool of `ep` (e.g. the old master after a leader
    /// change), if there is one. A later checkout makes a new pool.
    pub(crate) fn close(&self, ep: &Endpoint, why: &str) {
        let mut map = self.by_endpoint.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((pool, _)) = map.remove(ep) {
            tracing::info!(
                node = ep.node,
                host = ep.host,
                port = ep.port,
                why,
                "pool closed"
            );
            pool.close();
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
