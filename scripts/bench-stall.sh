#!/usr/bin/env bash
# Latency with a hung volume server: a cell of separate processes (meta, 4 volume servers x 3 disks,
# RS 6+3, a frontend) is measured with `hoard bench` healthy, then with one volume server SIGSTOPped
# (it holds members of every volume, accepts connections and answers nothing), then after SIGCONT.
# Prints one table: get (frontend and direct) and put p50/p99/max for each phase.
#
#   usage: scripts/bench-stall.sh    env: WORK (default /var/tmp/hoard-bench-stall, removed unless
#                                     KEEP=1), SIZE (1MiB), COUNT (400), CONCURRENCY (8)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/var/tmp/hoard-bench-stall}
SIZE=${SIZE:-1MiB}
COUNT=${COUNT:-400}
CONC=${CONCURRENCY:-8}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
./scripts/setup.sh
cargo build --release --locked --bin hoard >/dev/null 2>&1
hoard="$CARGO_TARGET_DIR/release/hoard"
rm -rf "$WORK" && mkdir -p "$WORK"
pids=()
stopped=""
cleanup() {
  [ -n "$stopped" ] && kill -CONT "$stopped" 2>/dev/null
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

. scripts/cell.sh
start_cell "lease = \"10s\""

rows=()
run() { # PHASE MODE ARGS...
  local phase=$1 mode=$2
  shift 2
  "$hoard" bench "$mode" --size "$SIZE" --concurrency "$CONC" --json "$@" >"$WORK/run.json" || true
  rows+=("$phase $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(sys.argv[2], r["ops"], r["errors"], r["p50_ms"], r["p99_ms"], r["max_ms"])' "$WORK/run.json" "$mode${direct:-}")")
}

"$hoard" bench put --size "$SIZE" --count "$COUNT" --concurrency "$CONC" --save-hashes "$WORK/hashes" --json >/dev/null
# Untimed: the frontend's connections and its read latencies warm up.
"$hoard" bench get --size "$SIZE" --count "$COUNT" --concurrency "$CONC" --hashes "$WORK/hashes" --json >/dev/null
direct="" run healthy get --count "$COUNT" --hashes "$WORK/hashes"
direct="-direct" run healthy get --count "$COUNT" --hashes "$WORK/hashes" --direct
direct="" run healthy put --count "$((COUNT / 2))"

stopped=${vols[0]}
kill -STOP "$stopped"
direct="" run stopped get --count "$COUNT" --hashes "$WORK/hashes"
direct="-direct" run stopped get --count "$COUNT" --hashes "$WORK/hashes" --direct
direct="" run stopped put --count "$((COUNT / 2))"
kill -CONT "$stopped"
stopped=""
sleep 3
direct="" run resumed get --count "$COUNT" --hashes "$WORK/hashes"
direct="" run resumed put --count "$((COUNT / 2))"

printf '%-8s %-11s %6s %6s %9s %9s %9s\n' phase op ops errors p50_ms p99_ms max_ms
for r in "${rows[@]}"; do
  # shellcheck disable=SC2086
  printf '%-8s %-11s %6s %6s %9s %9s %9s\n' $r
done
echo "($SIZE blocks, concurrency $CONC; one of 4 volume servers SIGSTOPped in phase 'stopped')"
