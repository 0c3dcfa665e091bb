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
    start_router_with(coord, session_timeout_ms, Balance::RoundRobin, 30_000).await
}

/// [`start_router`] with another read balance and bound on a write's wait for a master.
pub async fn start_router_with(
    coord: &str,
    session_timeout_ms: u32,
    balance: Balance,
    write_wait_ms: u64,
) -> Router {
    timeout(
        CONNECT_DEADLINE,
        Router::builder()
            .coord(coord)
            .cluster(CLUSTER)
            .session_timeout_ms(session_timeout_ms)
            .write_wait_ms(write_wait_ms)
            .read_balance(balance)
            // Lag as the records show it is a moment's worth of WAL here; a tight
            // bound would make a replica flicker in and out of the readable set.
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
    if let Err(e) = wait_topology_for(router, what, deadline, cond).await {
        panic!("{e}");
    }
}

/// [`wait_topology`] that reports the timeout instead of panicking.
pub async fn wait_topology_for(
    router: &Router,
    what: &str,
    deadline: Duration,
    cond: impl Fn(&Topology) -> bool,
) -> Result<(), String> {
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
    r.map_err(|_| {
        format!(
            "timed out after {deadline:?} waiting for {what}: {:?}",
            router.topology()
        )
    })
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
    let row = rows.first().unwrap_or_else(|| panic!("{sql}: no row"));
    (row.get(0), u16::try_from(row.get::<_, i32>(1)).unwrap())
}

/// After a failover, reads settle on the one remaining replica (port `replica_port`):
/// until it publishes the new master's timeline the router keeps reads off it (a replica
/// on an older timeline may be past the fork) and sends them to the master; then four
/// reads in a row run on it. Panics if a read runs anywhere else, or if they have not
/// settled within `deadline`.
pub async fn reads_settle_on(router: &Router, replica_port: u16, deadline: Duration) {
    let master_port = router
        .topology()
        .writable_endpoint()
        .expect("a master after the failover")
        .port;
    let give_up = tokio::time::Instant::now() + deadline;
    let mut in_a_row = 0;
    while in_a_row < 4 {
        assert!(
            tokio::time::Instant::now() < give_up,
            "reads never settled on the remaining replica (port {replica_port}) within {deadline:?}"
        );
        let (rec, port) = where_ran(router, "SELECT pg_is_in_recovery(), inet_server_port()").await;
        if rec && port == replica_port {
            in_a_row += 1;
        } else {
            assert!(
                !rec && port == master_port,
                "a read ran on port {port} (in recovery: {rec}), neither the replica \
                 {replica_port} nor the master {master_port}"
            );
            in_a_row = 0;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
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

/// A database cluster under agents, as the router scenarios drive it.
pub trait DbCluster {
    /// kill -9 of `node`'s agent and PostgreSQL.
    fn kill(&mut self, node: &str);
    /// Logs that explain a failure.
    fn dump(&self) -> String;
}

/// The master failover as a router sees it, on any coordination service: a row
/// written through the router reaches both replicas, `c` kills `old`, and
/// the same router's writes resume on a new master, at most one write failing in
/// between (a suspect master is not hammered); the old master's pool is closed and the
/// row is on the new master. Returns the new master.
pub async fn router_follows_a_master_kill(
    router: &Router,
    old: &str,
    c: &mut dyn DbCluster,
    deadline: Duration,
) -> String {
    let old_port = router.topology().writable_endpoint().unwrap().port;
    let old_epoch = router.topology().epoch().unwrap();
    router
        .execute("CREATE TABLE t (id serial PRIMARY KEY, at_ms bigint)", &[])
        .await
        .unwrap();
    let (rec, port) = where_ran(
        router,
        "INSERT INTO t (at_ms) VALUES (0) RETURNING pg_is_in_recovery(), inet_server_port()",
    )
    .await;
    assert!(!rec);
    assert_eq!(port, old_port);
    // Replication is asynchronous: let both replicas have the row before the kill,
    // so that whoever wins has it.
    let token = router.write().await.unwrap().causal_token().await.unwrap();
    wait_topology(router, "both replicas to replay the row", deadline, |t| {
        t.replicas()
            .iter()
            .filter(|r| r.replay_lsn.is_some_and(|l| l >= token.0))
            .count()
            == 2
    })
    .await;

    let killed = Instant::now();
    c.kill(old);
    let mut failed = Vec::new();
    let new_port = loop {
        match router
            .query(
                "INSERT INTO t (at_ms) VALUES (1) RETURNING pg_is_in_recovery(), \
                 inet_server_port()",
                &[],
            )
            .await
        {
            Ok(rows) => {
                let rec: bool = rows[0].get(0);
                assert!(!rec);
                let port = u16::try_from(rows[0].get::<_, i32>(1)).unwrap();
                if port != old_port {
                    break port;
                }
                // Landed on the old master before it died: fine, go on.
            }
            Err(e) => {
                assert!(e.is_retryable(), "{e:?}");
                failed.push(e.to_string());
            }
        }
        assert!(
            killed.elapsed() < deadline,
            "no write on a new master; failures: {failed:?}{}",
            c.dump()
        );
    };
    let took = killed.elapsed();
    let t = router.topology();
    let new = t.writable_endpoint().unwrap().node.clone();
    assert_ne!(new, old);
    assert_eq!(new_port, t.writable_endpoint().unwrap().port);
    assert!(t.epoch().unwrap() > old_epoch);
    eprintln!(
        "master {old} killed: writes resumed on {new} through the router after {took:?}; \
         failed writes in between: {failed:?}"
    );
    assert!(
        failed.len() <= 1,
        "writes hammered the dead master: {failed:?}"
    );
    assert!(
        router.pooled_endpoints().iter().all(|e| e.node != old),
        "the old master's pool survived the leader change"
    );
    // The row written before the failover is on the new master (it was a replica).
    let n: i64 = router
        .write()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM t WHERE at_ms = 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    new
}
