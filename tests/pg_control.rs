//! PostgreSQL control against real PostgreSQL (13+; Debian's 15 in CI): the test harness
//! (`support::postgres`) and the agent's `switchyard_proxy::pg` library. Skips with a printed
//! reason when the PostgreSQL binaries are not installed.

mod support;

use support::postgres::{self, PgOptions, Postgres};

/// The harness itself: primary, streaming replica, replication of a row, kill -9 and restart,
/// promotion of the replica.
#[test]
fn harness_primary_replica_promote() {
    if postgres::skip() {
        return;
    }
    let mut primary = Postgres::init_primary(PgOptions::default());
    assert_eq!(primary.query("SELECT pg_is_in_recovery()"), "f");
    primary.query("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)");
    let replica = Postgres::replica_of(&primary);
    assert_eq!(replica.query("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        primary.query("SELECT state FROM pg_stat_replication"),
        "streaming"
    );
    primary.query("INSERT INTO t VALUES (2)");
    postgres::wait_for("row 2 on the replica", postgres::START_TIMEOUT, || {
        (replica.query_opt("SELECT count(*) FROM t").as_deref() == Some("2")).then_some(())
    });

    primary.kill9();
    assert!(!primary.is_ready());
    primary.start();
    assert_eq!(primary.query("SELECT count(*) FROM t"), "2");
    replica.wait_streaming();

    primary.stop();
    replica.promote();
    assert_eq!(replica.query("SELECT pg_is_in_recovery()"), "f");
    replica.query("INSERT INTO t VALUES (3)");
    assert!(replica.log().contains("database system is ready"));
    assert!(primary.data_dir().join("PG_VERSION").is_file());
}
