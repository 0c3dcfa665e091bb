#!/usr/bin/env bash
# Runs the three fuzz targets of fuzz/ (client_protocol, peer_protocol, agent_records)
# at the same time, each for the given number of seconds, from the committed seed corpus
# (fuzz/corpus/<target>) plus what earlier runs here found (fuzz/work/<target>, ignored by
# git). Prints the executions of each target; a crash, timeout or out-of-memory fails the
# run, with the input kept under fuzz/artifacts/<target>/ and printed in base64.
#
#   bash scripts/fuzz.sh [seconds]          # default 60 (what CI runs, from scripts/test.sh)
#   nice -n 19 bash scripts/fuzz.sh 600     # a longer run by hand
#   FUZZ_BUILD_ONLY=1 bash scripts/fuzz.sh  # build the targets, run nothing
#
# How the fuzzers are built, and why this way:
#   - Plain `cargo build` of the fuzz/ crate (cargo-fuzz's layout, so `cargo fuzz run
#     <target> --sanitizer none` works there too) with the RUSTFLAGS cargo-fuzz sets:
#     SanitizerCoverage (inline 8-bit counters, PC table, compare tracing, stack depth) and
#     `--cfg fuzzing`, plus debug assertions so an integer overflow is a finding.
#     libfuzzer-sys compiles libFuzzer itself with the C++ compiler.
#   - Stable rustc: none of these flags is unstable. Only AddressSanitizer would need
#     nightly, and safe Rust decoders gain little from it; `cargo +nightly` is used only if
#     the stable compiler refuses the coverage pass.
#   - cargo-fuzz is not installed: `cargo install cargo-fuzz` costs about 1.5 CPU-minutes
#     of compiling on every CI run (measured) and adds nothing this script needs.
#   - Release profile with dependencies at opt-level 1 (fuzz/Cargo.toml) and the agent
#     records compiled from their source files rather than through the proxy crate, to
#     keep the from-scratch build of a CI run short.
#   - A target directory of its own that outlives the clone: $FUZZ_TARGET_DIR, else
#     ${XDG_CACHE_HOME:-~/.cache}/switchyard/fuzz-target. The instrumented build of the
#     dependencies (openraft, tokio, serde, libFuzzer's C++...) costs about 5 CPU-minutes
#     from scratch (measured on this 2-core machine, ~2.5-3 min of wall time idle); CI
#     clones afresh on a machine that is usually the previous session's, so kept there
#     they are reused and only the workspace's own crates rebuild. The workspace's target/
#     would not do: CI's is new every run, and host units (proc macros) are not shared
#     with its builds anyway (the two workspaces unify features differently).
#
# Skips (exit 0, saying why) when there is no cargo, no C++ compiler, or no rustc that
# takes the coverage flags. A build error or a finding is a failure.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)

secs=${1:-60}
if ! [[ "$secs" =~ ^[0-9]+$ ]] || ((secs < 1)); then
    echo "usage: bash scripts/fuzz.sh [seconds]" >&2
    exit 2
fi
targets=(client_protocol peer_protocol agent_records)

log() { printf '==> fuzz: %s\n' "$*"; }
skip() {
    log "SKIPPED: $*"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "no cargo on PATH"
command -v rustc >/dev/null 2>&1 || skip "no rustc on PATH"
command -v c++ >/dev/null 2>&1 || command -v g++ >/dev/null 2>&1 ||
    skip "no C++ compiler to build libFuzzer with (apt-get install g++)"

flags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
flags+=" -Cllvm-args=-sanitizer-coverage-stack-depth"
flags+=" --cfg fuzzing -Cdebug-assertions"

# Which toolchain takes the coverage pass: a one-line program compiled to an object file
# (not linked: the instrumentation's hooks come from libFuzzer), well under a second.
probe_dir=$(mktemp -d)
trap 'rm -rf "$probe_dir"' EXIT
echo 'fn main() {}' >"$probe_dir/p.rs"
# shellcheck disable=SC2086 # $flags is a list of flags
probe() { rustc "$@" $flags --crate-name p --emit=obj -o "$probe_dir/p.o" "$probe_dir/p.rs" >"$probe_dir/err" 2>&1; }
toolchain=()
if probe; then
    :
elif rustup toolchain list 2>/dev/null | grep -q '^nightly' && probe +nightly; then
    toolchain=(+nightly)
else
    skip "rustc does not take the SanitizerCoverage flags and there is no nightly toolchain: $(head -n 3 "$probe_dir/err")"
fi

triple=$(rustc "${toolchain[@]}" -vV | sed -n 's/^host: //p')
target_dir=${FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/switchyard/fuzz-target}
bin_dir=$target_dir/$triple/release
work=$ROOT/fuzz/work

log "building ${targets[*]} ($(rustc "${toolchain[@]}" --version), $triple, in $target_dir)"
build_start=$SECONDS
RUSTFLAGS="$flags" CARGO_TARGET_DIR="$target_dir" cargo "${toolchain[@]}" build \
    --manifest-path fuzz/Cargo.toml --release --target "$triple" --bins
log "built in $((SECONDS - build_start)) s"
if [[ "${FUZZ_BUILD_ONLY:-0}" == 1 ]]; then
    exit 0 # scripts/test.sh builds them early, beside the tests, and runs them later
fi

mkdir -p "$work"
touch "$work/.started" # artifacts newer than this are this run's findings
pids=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "$ROOT/fuzz/artifacts/$t"
    # New inputs go to the first corpus directory (work/), never to the committed one.
    "$bin_dir/$t" "$work/$t" "$ROOT/fuzz/corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1 \
        -artifact_prefix="$ROOT/fuzz/artifacts/$t/" >"$work/$t.log" 2>&1 &
    pids+=($!)
done
log "running ${targets[*]} for $secs s each, at the same time (logs: fuzz/work/<target>.log)"

failed=0
for i in "${!targets[@]}"; do
    t=${targets[$i]}
    rc=0
    wait "${pids[$i]}" || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -n 1)
    # No final stats after a crash: the last progress line's count instead.
    [[ -n "$execs" ]] || execs=$(grep -oE '^#[0-9]+' "$work/$t.log" | tail -n 1 | tr -d '#')
    corpus=$(find "$work/$t" -type f | wc -l)
    if ((rc == 0)); then
        printf '    %-16s ok      %12s executions, %s new corpus entries\n' "$t" "${execs:-?}" "$corpus"
        continue
    fi
    failed=1
    printf '    %-16s FAILED  (exit %s) after %s executions\n' "$t" "$rc" "${execs:-?}"
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written' "$work/$t.log" | head -n 20 | sed 's/^/        /'
    while IFS= read -r -d '' a; do
        printf '        %s (%s bytes), base64:\n' "${a#"$ROOT"/}" "$(wc -c <"$a")"
        head -c 4096 "$a" | base64 | sed 's/^/          /'
    done < <(find "$ROOT/fuzz/artifacts/$t" -type f -newer "$work/.started" -print0 2>/dev/null)
    echo "        reproduce: $bin_dir/$t fuzz/artifacts/$t/<file>"
done
if ((failed)); then
    log "FAILED (inputs kept under fuzz/artifacts/)"
    exit 1
fi
log "no findings"
