#!/usr/bin/env bash
# The benchmark driver (issue 6): runs the routing-latency bench (benches/routing_e2e.rs)
# and the failover bench (benches/failover.rs) with their progress bars, then prints one
# summary of ratios to the direct connection and of the failover write gap, and where the
# plots are.
#
#   bash scripts/bench.sh                 # reduced size (about 4 minutes once built)
#   BENCH_FULL=1 bash scripts/bench.sh    # the benches' own defaults (about 15 minutes)
#   BENCH_ONLY=routing bash scripts/bench.sh    # or BENCH_ONLY=failover
#
# Reduced size (each knob can be set to override it; BENCH_FULL=1 leaves them unset so
# the benches use their defaults, see the top of each bench file):
#   ROUTING_BENCH_ROUNDS=15 ROUTING_BENCH_SECS=0.2 ROUTING_BENCH_CLIENTS=1,8
#   ROUTING_BENCH_WORKLOADS=select,tpcb
#   (ROUTING_BENCH_PATHS=direct,direct-again,router,haproxy,pgbouncer adds a second direct
#   path whose ratio to direct, the run's noise, gets a column in the summary)
#   FAILOVER_BENCH_RUNS=2 FAILOVER_BENCH_TIMEOUTS_MS=2000 FAILOVER_BENCH_MODES=sync
#
# Output in $BENCH_RESULTS_DIR (default bench-results/ at the repository root, ignored by
# git): routing_e2e/latency_cdf_*.png (+ .csv, ratios.tsv), failover/failover_timeline_*.png
# (+ .csv, summary.tsv), and each bench's printed tables in routing_e2e.txt, failover.txt.
#
# Needs PostgreSQL 15 (/usr/lib/postgresql/15/bin or PG_BINDIR), HAProxy and PgBouncer
# (the proxy paths are skipped with a message when absent); scripts/test.sh installs them.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
log() { printf '==> %s\n' "$*" >&2; }

export BENCH_RESULTS_DIR=${BENCH_RESULTS_DIR:-$ROOT/bench-results}
mkdir -p "$BENCH_RESULTS_DIR"
only=${BENCH_ONLY:-all}

if [[ "${BENCH_FULL:-0}" != 1 ]]; then
    export ROUTING_BENCH_ROUNDS=${ROUTING_BENCH_ROUNDS:-15}
    export ROUTING_BENCH_SECS=${ROUTING_BENCH_SECS:-0.2}
    export ROUTING_BENCH_CLIENTS=${ROUTING_BENCH_CLIENTS:-1,8}
    export ROUTING_BENCH_WORKLOADS=${ROUTING_BENCH_WORKLOADS:-select,tpcb}
    export FAILOVER_BENCH_RUNS=${FAILOVER_BENCH_RUNS:-2}
    export FAILOVER_BENCH_TIMEOUTS_MS=${FAILOVER_BENCH_TIMEOUTS_MS:-2000}
    export FAILOVER_BENCH_MODES=${FAILOVER_BENCH_MODES:-sync}
fi

# The binaries the benches start (release, like the benches themselves).
target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
log "cargo build --release -p coordd -p switchyard-proxy --bins"
cargo build --release -p coordd -p switchyard-proxy --bins
export COORDD_BIN=${COORDD_BIN:-$target_dir/release/coordd}
export SWITCHYARD_BIN=${SWITCHYARD_BIN:-$target_dir/release/switchyard}

status=0
env | grep -E '^(ROUTING|FAILOVER)_BENCH_' | sort | sed 's/^/    /' >&2 || true
if [[ $only == all || $only == routing ]]; then
    log "cargo bench --bench routing_e2e"
    cargo bench --bench routing_e2e | tee "$BENCH_RESULTS_DIR/routing_e2e.txt" || status=1
fi
if [[ $only == all || $only == failover ]]; then
    log "cargo bench --bench failover"
    cargo bench --bench failover | tee "$BENCH_RESULTS_DIR/failover.txt" || status=1
fi

# ---------------------------------------------------------------------------
# Summary, from the files the benches wrote
# ---------------------------------------------------------------------------
ratios=$BENCH_RESULTS_DIR/routing_e2e/ratios.tsv
ratios_paired=$BENCH_RESULTS_DIR/routing_e2e/ratios_paired.tsv
failover=$BENCH_RESULTS_DIR/failover/summary.tsv
echo
echo "## Summary (bash scripts/bench.sh, $(date -u +%Y-%m-%d), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
# routing_table <ratios.tsv>: the router's and the proxies' ratios to direct per cell.
routing_table() {
    awk -F'\t' '
        NR == 1 { next }
        {
            cell = $1 " | " $2
            if (!(cell in seen)) { seen[cell] = 1; order[++n] = cell }
            p50[cell, $3] = $7; p99[cell, $3] = $8; us[cell, $3] = $4
        }
        function r(v) { return v == "" ? "-" : sprintf("%.2fx", v) }
        END {
            print "| workload | clients | direct p50 us | router / direct p50 | p99 | HAProxy / direct p50 | p99 | PgBouncer / direct p50 | p99 | direct-again / direct p50 (noise) |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            for (i = 1; i <= n; i++) {
                c = order[i]
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", c, us[c, "direct"],
                    r(p50[c, "router"]), r(p99[c, "router"]),
                    r(p50[c, "haproxy"]), r(p99[c, "haproxy"]),
                    r(p50[c, "pgbouncer"]), r(p99[c, "pgbouncer"]), r(p50[c, "direct-again"])
            }
        }' "$1"
}
if [[ ($only == all || $only == routing) && -s $ratios ]]; then
    echo
    echo "Routing latency, ratio to the direct connection (median over rounds of each round's ratio), phases:"
    echo
    routing_table "$ratios"
    if [[ -s $ratios_paired ]]; then
        echo
        echo "The same, paired op by op (every client alternating between the paths; the targets are judged here):"
        echo
        routing_table "$ratios_paired"
    fi
fi
if [[ ($only == all || $only == failover) && -s $failover ]]; then
    echo
    echo "Failover, kill -9 of the master under a writer following it through the router:"
    echo
    awk -F'\t' '
        NR == 1 { next }
        BEGIN {
            print "| mode | session timeout ms | runs ok | write gap median ms | min / max ms | gap / session timeout | kill -> published median ms | lost |"
            print "|---|---:|---:|---:|---:|---:|---:|---:|"
        }
        {
            ratio = ($2 > 0 && $5 != "NaN") ? sprintf("%.2fx", $5 / $2) : "-"
            printf "| %s | %s | %s/%s | %s | %s / %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, ratio, $8, $9
        }' "$failover"
fi
echo
echo "Plots:"
find "$BENCH_RESULTS_DIR" -name '*.png' | sort | sed 's/^/  /'
exit $status
