//! A small app that serves reads and writes through the Switchyard router, printing
//! once a second where they went.
//!
//! ```sh
//! cargo run --example router_app -- --coord 127.0.0.1:2181 --cluster main --duration-secs 30
//! ```
//!
//! Options: `--coord host:port[,host:port...]` (default 127.0.0.1:2181), `--cluster NAME`
//! (default main), `--duration-secs N` (default 10), `--pg-user USER` and `--pg-dbname DB`
//! (default postgres), `--root PATH` (default /switchyard).
//!
//! Each round: an `INSERT ... RETURNING` and a `SELECT` through `Router::query` (the
//! router classifies them: the write goes to the master, the read to a replica), then a
//! transaction whose causal token a read-your-writes read (`read_after`) must see. The
//! statements report the server's port, so the app shows where each one ran. Kill the
//! master's agent while it runs: writes pause for the failover and resume on the new
//! master, without a restart.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use switchyard_proxy::router::{Error, Router};

struct Args {
    coord: String,
    cluster: String,
    root: String,
    duration_secs: u64,
    pg_user: String,
    pg_dbname: String,
}

fn usage() -> &'static str {
    "usage: router_app [--coord HOST:PORT,...] [--cluster NAME] [--duration-secs N] \
     [--pg-user USER] [--pg-dbname DB] [--root PATH]"
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        coord: "127.0.0.1:2181".into(),
        cluster: "main".into(),
        root: "/switchyard".into(),
        duration_secs: 10,
        pg_user: "postgres".into(),
        pg_dbname: "postgres".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(usage().into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        match flag.as_str() {
            "--coord" => a.coord = value,
            "--cluster" => a.cluster = value,
            "--root" => a.root = value,
            "--pg-user" => a.pg_user = value,
            "--pg-dbname" => a.pg_dbname = value,
            "--duration-secs" => {
                a.duration_secs = value
                    .parse()
                    .map_err(|e| format!("--duration-secs {value:?}: {e}"))?
            }
            _ => return Err(format!("unknown option {flag}\n{}", usage())),
        }
    }
    Ok(a)
}

/// Where statements ran, by node name (from the server port they reported).
#[derive(Default)]
struct Tally {
    writes: BTreeMap<String, u64>,
    reads: BTreeMap<String, u64>,
    read_your_writes: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn print(&self, elapsed: Duration) {
        let fmt = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                return "-".to_owned();
            }
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "[{:>5.1}s] writes: {} | reads: {} | read-your-writes: {} | errors: {}",
            elapsed.as_secs_f64(),
            fmt(&self.writes),
            fmt(&self.reads),
            fmt(&self.read_your_writes),
            fmt(&self.errors),
        );
    }
}

/// The node of the router's topology listening on `port` (the example's nodes share a
/// host; a real app would not need this, it is only for the printout).
fn node_of(router: &Router, port: i32) -> String {
    let t = router.topology();
    let named = t
        .leader()
        .map(|l| &l.endpoint)
        .into_iter()
        .chain(t.replicas().iter().map(|r| &r.endpoint))
        .find(|e| i32::from(e.port) == port)
        .map(|e| e.node.clone());
    named.unwrap_or_else(|| format!("port {port}"))
}

fn error_kind(e: &Error) -> String {
    match e {
        Error::Route(r) => format!("route({r})"),
        Error::Pool { node, .. } => format!("pool({node})"),
        Error::MasterSuspect { node } => format!("suspect({node})"),
        Error::Postgres(p) => match p.code() {
            Some(c) => format!("sqlstate {}", c.code()),
            None => "connection".to_owned(),
        },
        other => other.to_string(),
    }
}

async fn round(router: &Router, i: i64, tally: &mut Tally) -> Result<(), Error> {
    // A write, classified: goes to the master.
    let rows = router
        .query(
            "INSERT INTO router_app_events (n) VALUES ($1) RETURNING inet_server_port()",
            &[&i],
        )
        .await?;
    if let Some(row) = rows.first() {
        *tally.writes.entry(node_of(router, row.get(0))).or_default() += 1;
    }
    // A read, classified: goes to a replica.
    let rows = router
        .query(
            "SELECT count(*), inet_server_port() FROM router_app_events",
            &[],
        )
        .await?;
    if let Some(row) = rows.first() {
        *tally.reads.entry(node_of(router, row.get(1))).or_default() += 1;
    }
    // Read-your-writes: a transaction's causal token, then a read that must see it.
    if i % 10 == 0 {
        let tx = router.transaction().await?;
        tx.execute("INSERT INTO router_app_events (n) VALUES ($1)", &[&(-i)])
            .await?;
        let token = tx.commit_with_token().await?;
        let conn = router.read_after(&token).await?;
        let row = conn
            .query_one(
                "SELECT count(*) FROM router_app_events WHERE n = $1",
                &[&(-i)],
            )
            .await?;
        let seen: i64 = row.get(0);
        if seen != 1 {
            eprintln!(
                "read-your-writes on {} did not see its own write",
                conn.endpoint().node
            );
            *tally.errors.entry("stale read".into()).or_default() += 1;
        }
        *tally
            .read_your_writes
            .entry(conn.endpoint().node.clone())
            .or_default() += 1;
    }
    Ok(())
}

async fn run(args: Args) -> Result<(), Error> {
    let router = Router::builder()
        .coord(&args.coord)
        .cluster(&args.cluster)
        .root(&args.root)
        .write_wait_ms(20_000)
        .pg_user(&args.pg_user)
        .pg_dbname(&args.pg_dbname)
        .application_name("router_app")
        .connect()
        .await?;
    println!("topology: {:?}", router.topology());
    // Create the table in a transaction and wait (bounded) until every replica in the
    // topology has replayed it, so that the first reads find it.
    let tx = router.transaction().await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS router_app_events (id bigserial PRIMARY KEY, n bigint NOT NULL)",
    )
    .await?;
    let token = tx.commit_with_token().await?;
    let mut published = router.subscribe();
    let replayed = tokio::time::timeout(Duration::from_secs(10), async {
        while !router
            .topology()
            .replicas()
            .iter()
            .all(|r| r.replay_lsn.is_some_and(|l| l >= token.0))
        {
            if published.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    if replayed.is_err() {
        println!("replicas have not replayed the table after 10 s; starting anyway");
    }

    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_secs);
    let mut next_print = start + Duration::from_secs(1);
    let mut tally = Tally::default();
    let mut i: i64 = 0;
    while Instant::now() < end {
        i += 1;
        if let Err(e) = round(&router, i, &mut tally).await {
            if !e.is_retryable() {
                eprintln!("error: {e}");
            }
            *tally.errors.entry(error_kind(&e)).or_default() += 1;
            // Do not spin while the cluster is unavailable.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if Instant::now() >= next_print {
            tally.print(start.elapsed());
            tally = Tally::default();
            next_print = Instant::now() + Duration::from_secs(1);
        }
    }
    if tally.writes.len() + tally.reads.len() + tally.errors.len() > 0 {
        tally.print(start.elapsed());
    }
    let r = router.retry_counts();
    println!(
        "retries: write_on_master={} read_elsewhere={} read_on_master={}",
        r.write_on_master, r.read_elsewhere, r.read_on_master
    );
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("router_app: {e}");
            ExitCode::FAILURE
        }
    }
}
