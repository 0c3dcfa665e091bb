//! The router library on a live cluster (coordd, a coordd ensemble or ZooKeeper):
//! building one for the tests and waiting on what it publishes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_proxy::router::{Error, PooledClient, Router};
use switchyard_proxy::topology::{Balance, Topology};
use tokio::time::{timeout, Instant};

use super::agent::CLUSTER;
use super::postgres;

/// Bound on the router's first connection to the coordination service.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(60);

/// A router for [`CLUSTER`] on `coord` (`host:port,...`): round robin reads, writes
/// that wait up to 30 s for the next master, small pools.
pub async fn start_router(coord: &str, session_timeout_ms: u32) -> Router {
    timeout(
        CONNECT_DEADLINE,
        Router::builder()
            .coord(coord)
            .cluster(CLUSTER)
            .session_timeout_ms(session_timeout_ms)
            .write_wait_ms(30_000)
            .read_balance(Balance::RoundRobin)
            // Lag as the records show it is a moment's worth of WAL here.
            .max_lag_bytes(1 << 30)
            .pool_max_size(4)
            .pg_connect_timeout_ms(3_000)
            .pg_user(postgres::SUPERUSER)
            .pg_dbname("postgres")
            .connect(),
    )
    .await
    .expect("router connects in time")
    .expect("router connects")
}

/// Waits up to `deadline` until the router's topology satisfies `cond`, woken by its
/// publish notifications.
pub async fn wait_topology(
    router: &Router,
    what: &str,
    deadline: Duration,
    cond: impl Fn(&Topology) -> bool,
) {
    let mut rx = router.subscribe();
    let r = timeout(deadline, async {
        loop {
            if cond(&router.topology()) {
                return;
            }
            rx.changed().await.expect("router alive");
        }
    })
    .await;
    if r.is_err() {
        panic!(
            "timed out after {deadline:?} waiting for {what}: {:?}",
            router.topology()
        );
    }
}

pub async fn in_recovery(c: &PooledClient) -> Result<bool, Error> {
    Ok(c.query_one("SELECT pg_is_in_recovery()", &[]).await?.get(0))
}

/// Runs `sql` through `Router::query`; returns (in recovery, server port) from its
/// single row's first two columns.
pub async fn where_ran(router: &Router, sql: &str) -> (bool, u16) {
    let rows = router
        .query(sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    (
        rows[0].get(0),
        u16::try_from(rows[0].get::<_, i32>(1)).unwrap(),
    )
}

/// Waits up to `deadline` (per the router) for a master and two readable replicas that
/// answer with the role their records claim; returns (master, {replica node: port}).
/// `dump` describes the cluster when it does not happen.
pub async fn wait_three(
    router: &Router,
    deadline: Duration,
    dump: &dyn Fn() -> String,
) -> (String, BTreeMap<String, u16>) {
    let start = Instant::now();
    loop {
        let left = deadline.saturating_sub(start.elapsed());
        let mut rx = router.subscribe();
        let ready = timeout(left, async {
            loop {
                let t = router.topology();
                if t.writable_endpoint().is_some() && t.readable_endpoints(1 << 30).count() == 2 {
                    return;
                }
                rx.changed().await.expect("router alive");
            }
        })
        .await;
        assert!(
            ready.is_ok(),
            "no master and two running replicas: {:?}{}",
            router.topology(),
            dump()
        );
        let t = router.topology();
        let master = t.writable_endpoint().unwrap().node.clone();
        let replicas: BTreeMap<String, u16> = t
            .readable_endpoints(1 << 30)
            .map(|e| (e.node.clone(), e.port))
            .collect();
        let mut ok = match router.write().await {
            Ok(w) => !in_recovery(&w).await.unwrap_or(true),
            Err(_) => false,
        };
        for _ in 0..2 {
            ok &= match router.read().await {
                Ok(r) => in_recovery(&r).await.unwrap_or(false),
                Err(_) => false,
            };
        }
        if ok {
            return (master, replicas);
        }
        assert!(
            start.elapsed() < deadline,
            "cluster not ready: {t:?}{}",
            dump()
        );
        // The next member records (every publish interval) are the next chance.
        let _ = timeout(Duration::from_secs(2), rx.changed()).await;
    }
}
