//! The routing decision (issue 4, benchmark (a)): `Router::route_now(Intent)` on a
//! realistic topology, 1 master and 2-4 live replicas.
//!
//!     cargo bench --bench route
//!
//! Two groups, both criterion:
//! - `route_now/<replicas>r/<intent>`: a real [`Router`] connected to a real coordd
//!   (started by the bench, `tests/support/coordd.rs`) whose leader and member records
//!   the bench wrote in the DESIGN.md format, as `tests/router_topology.rs` does. The
//!   router's watcher built the snapshot; the bench calls `route_now` and reads the
//!   chosen endpoint's port (so the decision cannot be optimized away).
//! - `route_handle/<replicas>r/<intent>`: the same router, through a
//!   `Router::route_handle()` (one per calling thread: a cached snapshot, its own
//!   round-robin cursor), the API for callers that route often and keep their own
//!   connections.
//! - `route_table/<replicas>r/<intent>`: the same decision on a bare
//!   [`RouteTable`] (what `route_now` calls), without coordd, for 2, 3 and 4 replicas.
//!
//! Before criterion runs, a counting global allocator counts the allocations of the
//! calling thread across `ROUTE_BENCH_ALLOC_CALLS` (default 1 000 000) calls per intent
//! and the bench exits non-zero if any call allocated. The count is per thread because
//! the router's own tasks (coordd pings on the tokio workers) may allocate meanwhile;
//! routing runs on the caller's thread only.
//!
//! After criterion, a table of criterion's median estimate (the median of its
//! per-sample means per call) against the 25 ns target is printed on stdout, read from
//! criterion's `estimates.json`.
//!
//! Environment:
//!   ROUTE_BENCH_ALLOC_CALLS   calls per intent in the allocation check (default 1000000)
//!   ROUTE_BENCH_ENFORCE=1     exit 1 when a median misses the 25 ns target
//!   COORDD_BIN                coordd binary (default: target/{release,debug}/coordd)
//! plus criterion's own flags after `--` (e.g. `-- --quick`, `-- route_table`).

#[path = "../tests/support/mod.rs"]
mod support;

use std::cell::Cell;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use coordd_client::{Acl, Client, ClientConfig, CreateMode};
use criterion::{BenchmarkId, Criterion};
use support::coordd::Coordd;
use switchyard_proxy::election::Epoch;
use switchyard_proxy::namespace::Namespace;
use switchyard_proxy::records::{
    self, LeaderRecord, LeaderState, Lsn, MemberRecord, MemberState, Role,
};
use switchyard_proxy::router::Router;
use switchyard_proxy::topology::{Intent, ReadPolicy, RouteTable, Topology};

/// The issue's target for the median routing decision.
const TARGET_NS: f64 = 25.0;
const CLUSTER: &str = "bench";

// ---------------------------------------------------------------------------
// Allocation counting
// ---------------------------------------------------------------------------

/// Counts allocations (alloc, alloc_zeroed, realloc) made by the current thread.
struct CountingAlloc;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count_one() {
    // try_with: the thread-local may be gone while a thread is exiting.
    let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
}

unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        std::alloc::System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_one();
        std::alloc::System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_one();
        std::alloc::System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

fn leader_record(port: u16) -> LeaderRecord {
    LeaderRecord {
        node: "pg-0".into(),
        host: "10.0.0.10".into(),
        port,
        state: LeaderState::Primary,
        since_ms: 0,
    }
}

/// Member records of a master at LSN 0/5000000 and `replicas` replicas, each a little
/// behind (well within the default 16 MiB lag bound), as agents publish them.
fn member_records(replicas: usize) -> Vec<MemberRecord> {
    let master_lsn = 0x500_0000u64;
    // The master's published position is what Topology::build computes lag from.
    let mut out = vec![MemberRecord {
        node: "pg-0".into(),
        host: "10.0.0.10".into(),
        port: 5432,
        role: Role::Primary,
        state: MemberState::Running,
        timeline: Some(3),
        receive_lsn: Some(Lsn(master_lsn)),
        replay_lsn: Some(Lsn(master_lsn)),
        lag_bytes: Some(0),
        updated_ms: 1,
    }];
    for i in 1..=replicas {
        let replay = master_lsn - 512 * i as u64;
        out.push(MemberRecord {
            node: format!("pg-{i}"),
            host: format!("10.0.0.{}", 10 + i),
            port: 5432,
            role: Role::Replica,
            state: MemberState::Running,
            timeline: Some(3),
            receive_lsn: Some(Lsn(replay)),
            replay_lsn: Some(Lsn(replay)),
            lag_bytes: Some(master_lsn - replay),
            updated_ms: 1,
        });
    }
    out
}

/// The intents measured: a write, a round-robin read, and a read-your-writes read
/// whose token only some replicas have replayed (the slowest path: it scans).
fn intents() -> [(&'static str, Intent); 3] {
    [
        ("write", Intent::Write),
        ("read", Intent::Read),
        ("read_after", Intent::ReadAfter(Lsn(0x500_0000 - 1024))),
    ]
}

fn table(replicas: usize) -> RouteTable {
    let policy = ReadPolicy::default();
    let t = RouteTable::new(policy);
    t.publish(Topology::build(
        Some((leader_record(5432), Epoch(42))),
        member_records(replicas),
        policy.max_lag_bytes,
    ));
    t
}

// ---------------------------------------------------------------------------
// A real router on a real coordd
// ---------------------------------------------------------------------------

struct Live {
    router: Router,
    // Kept for the router's lifetime; dropped in this order: router, runtime, coordd.
    _client: Client,
    rt: tokio::runtime::Runtime,
    _coordd: Coordd,
}

fn live_router(replicas: usize) -> Result<Live, String> {
    let coordd = Coordd::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let addr = coordd.connect_string();
    let (router, client) = rt.block_on(async {
        let ns = Namespace::new("/switchyard", CLUSTER).map_err(|e| e.to_string())?;
        let (zk, _events) =
            Client::connect(ClientConfig::new([addr.clone()]).with_session_timeout_ms(2_000))
                .await
                .map_err(|e| format!("bench client: {e}"))?;
        let open = Acl::open_unsafe();
        zk.ensure_path(&ns.members())
            .await
            .map_err(|e| e.to_string())?;
        for m in member_records(replicas) {
            zk.create(
                &ns.member(&m.node),
                &records::encode(&m),
                &open,
                CreateMode::Ephemeral,
            )
            .await
            .map_err(|e| format!("create member {}: {e}", m.node))?;
        }
        zk.create(
            &ns.leader(),
            &records::encode(&leader_record(5432)),
            &open,
            CreateMode::Ephemeral,
        )
        .await
        .map_err(|e| format!("create leader: {e}"))?;
        let router = tokio::time::timeout(
            Duration::from_secs(10),
            Router::builder()
                .coord(&addr)
                .cluster(CLUSTER)
                .root("/switchyard")
                .session_timeout_ms(2_000)
                .connect(),
        )
        .await
        .map_err(|_| "router did not connect within 10 s".to_owned())?
        .map_err(|e| format!("router connect: {e}"))?;
        // The first snapshot is read during connect; wait (bounded) until it has the
        // whole topology.
        let mut published = router.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let t = router.topology();
            if t.writable_endpoint().is_some() && t.replicas().len() == replicas {
                break;
            }
            match tokio::time::timeout_at(deadline, published.changed()).await {
                Ok(Ok(())) => {}
                _ => return Err(format!("router topology incomplete: {t:?}")),
            }
        }
        Ok::<_, String>((router, zk))
    })?;
    Ok(Live {
        router,
        _client: client,
        rt,
        _coordd: coordd,
    })
}

// ---------------------------------------------------------------------------
// Allocation check
// ---------------------------------------------------------------------------

fn alloc_calls() -> u64 {
    std::env::var("ROUTE_BENCH_ALLOC_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Allocations made by this thread in `n` calls of `route` (after one warm-up call:
/// arc-swap registers a thread on its first load).
fn count_allocations<R>(n: u64, mut route: impl FnMut() -> R) -> u64 {
    drop(black_box(route()));
    let before = allocations();
    for _ in 0..n {
        drop(black_box(route()));
    }
    allocations() - before
}

/// Prints the allocation count of every (path, replicas, intent); false if any > 0.
fn check_allocations(live: &[(usize, Live)]) -> bool {
    let n = alloc_calls();
    let mut ok = true;
    println!("\n### Allocations in {n} routing calls per intent (this thread)\n");
    println!("| path | replicas | intent | calls | allocations |");
    println!("|---|---:|---|---:|---:|");
    for replicas in [2, 3, 4] {
        let t = table(replicas);
        for (name, intent) in intents() {
            let a = count_allocations(n, || t.route(intent).map(|r| r.endpoint().port));
            ok &= a == 0;
            println!("| RouteTable::route | {replicas} | {name} | {n} | {a} |");
        }
    }
    for (replicas, l) in live {
        for (name, intent) in intents() {
            let a = count_allocations(n, || l.router.route_now(intent).map(|r| r.endpoint().port));
            ok &= a == 0;
            println!("| Router::route_now | {replicas} | {name} | {n} | {a} |");
            let mut h = l.router.route_handle();
            let a = count_allocations(n, || h.route(intent).map(|r| r.endpoint().port));
            ok &= a == 0;
            println!("| RouteHandle::route | {replicas} | {name} | {n} | {a} |");
        }
    }
    ok
}

// ---------------------------------------------------------------------------
// Criterion
// ---------------------------------------------------------------------------

fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("criterion")
}

/// Criterion's median estimate (ns per call) of `<group>/<function>/<parameter>`, from
/// the run just made.
fn median_ns(dir: &std::path::Path, group: &str, function: &str, param: &str) -> Option<f64> {
    let path = dir
        .join(group)
        .join(function)
        .join(param)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["median"]["point_estimate"].as_f64()
}

fn main() {
    let live: Vec<(usize, Live)> = [2usize, 4]
        .into_iter()
        .map(|r| match live_router(r) {
            Ok(l) => (r, l),
            Err(e) => {
                eprintln!("cannot start the router on coordd: {e}");
                std::process::exit(1);
            }
        })
        .collect();

    let allocation_free = check_allocations(&live);

    let dir = criterion_dir();
    let mut c = Criterion::default()
        .output_directory(&dir)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    // (group, parameter, replicas, intent) of every benchmark, for the summary.
    let mut ids: Vec<(&'static str, String, usize, &'static str)> = Vec::new();

    for (replicas, l) in &live {
        let group_name = "route_now";
        let mut g = c.benchmark_group(group_name);
        for (name, intent) in intents() {
            let param = format!("{replicas}r");
            g.bench_function(BenchmarkId::new(name, &param), |b| {
                b.iter(|| {
                    l.router
                        .route_now(black_box(intent))
                        .map(|r| r.endpoint().port)
                })
            });
            ids.push((group_name, param, *replicas, name));
        }
        g.finish();
    }
    for (replicas, l) in &live {
        let group_name = "route_handle";
        let mut g = c.benchmark_group(group_name);
        for (name, intent) in intents() {
            let param = format!("{replicas}r");
            let mut handle = l.router.route_handle();
            g.bench_function(BenchmarkId::new(name, &param), |b| {
                b.iter(|| handle.route(black_box(intent)).map(|r| r.endpoint().port))
            });
            ids.push((group_name, param, *replicas, name));
        }
        g.finish();
    }
    for replicas in [2usize, 3, 4] {
        let t = table(replicas);
        let group_name = "route_table";
        let mut g = c.benchmark_group(group_name);
        for (name, intent) in intents() {
            let param = format!("{replicas}r");
            g.bench_function(BenchmarkId::new(name, &param), |b| {
                b.iter(|| t.route(black_box(intent)).map(|r| r.endpoint().port))
            });
            ids.push((group_name, param, replicas, name));
        }
        g.finish();
    }
    c.final_summary();

    println!("\n### Routing decision, criterion median per call (target <= {TARGET_NS} ns)\n");
    println!("| call | replicas | intent | median ns | target |");
    println!("|---|---:|---|---:|---|");
    let mut missed = 0;
    for (group, param, replicas, intent) in &ids {
        let m = median_ns(&dir, group, intent, param);
        let call = match *group {
            "route_now" => "Router::route_now",
            "route_handle" => "RouteHandle::route",
            _ => "RouteTable::route",
        };
        match m {
            Some(ns) => {
                let met = ns <= TARGET_NS;
                missed += usize::from(!met);
                println!(
                    "| {call} | {replicas} | {intent} | {ns:.1} | {} |",
                    if met { "met" } else { "MISSED" }
                );
            }
            None => println!("| {call} | {replicas} | {intent} | (not run) | - |"),
        }
    }
    println!(
        "\nallocations: {}",
        if allocation_free {
            "0 in every routing call (checked above)"
        } else {
            "SOME ROUTING CALL ALLOCATED (see the table above)"
        }
    );
    // Stop the routers' watchers before coordd goes away.
    for (_, l) in live {
        let Live {
            router,
            _client,
            rt,
            _coordd,
        } = l;
        drop(router);
        drop(_client);
        rt.shutdown_timeout(Duration::from_secs(2));
        drop(_coordd);
    }
    if !allocation_free {
        std::process::exit(1);
    }
    if missed > 0 && std::env::var("ROUTE_BENCH_ENFORCE").as_deref() == Ok("1") {
        eprintln!("{missed} median(s) above {TARGET_NS} ns");
        std::process::exit(1);
    }
}
