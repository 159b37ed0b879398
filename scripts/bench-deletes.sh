#!/usr/bin/env bash
# Deletes and compaction on a dev cell: batched deletes per second, then compaction's rate of live data
# moved while a mixed client load runs, and that load's p99 with and without compaction alongside.
#
#   usage: scripts/bench-deletes.sh      env: N (small blocks deleted, default 20000), SIZE (of the
#                                             compacted blocks, default 256KiB), M (their count, default
#                                             1200), C (client concurrency, default 8),
#                                             WORK (default /var/tmp/hoard-bench-deletes, removed unless KEEP=1)
# MB = 10^6 bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
M=${M:-1200}
SIZE=${SIZE:-256KiB}
C=${C:-8}
WORK=${WORK:-/var/tmp/hoard-bench-deletes}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
./scripts/setup.sh
cargo build --release --locked -p hoard >/dev/null 2>&1
hoard="${HOARD_BIN:-$CARGO_TARGET_DIR/release/hoard}"
rm -rf "$WORK" && mkdir -p "$WORK"
data="$WORK/dev"
"$hoard" dev --data "$data" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --extent-size 4MiB \
  --reference-window 1s --delete-grace 2s >"$data.out" 2>"$data.log" &
dev=$!
cleanup() { kill "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 200); do grep -q 'client endpoint' "$data.out" 2>/dev/null && break; sleep 0.1; done
export HOARD_ENDPOINT=$(sed -n 's/^hoard dev: client endpoint //p' "$data.out")
export HOARD_ADMIN=$(sed -n 's/^hoard dev: admin on //p' "$data.out")
export HOARD_ADMIN_TOKEN=$(sed -n "s/^hoard dev: status page .*#token=//p" "$data.out")
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
now() { date +%s.%N; }

# 1. Batched deletes: N 4 KiB blocks, deleted by one manifest (10,000 hashes per request).
"$hoard" bench put --size 4KiB --count "$N" --concurrency "$C" --save-hashes "$WORK/small" --json >/dev/null
sleep 4
t0=$(now)
"$hoard" delete --manifest "$WORK/small" --json >"$WORK/deleted.json" 2>/dev/null
t1=$(now)
deleted=$(python3 -c "import json; print(sum(r['result']=='deleted' for r in json.load(open('$WORK/deleted.json'))))")
python3 -c "print(f'deletes: {$deleted} blocks in {$t1-$t0:.2f} s: {$deleted/($t1-$t0):,.0f} deletes/s (batched, 10,000 per request)')"

# 2. Compaction: M blocks of SIZE, 70% deleted, compacted with a mixed load running beside it.
"$hoard" admin compact pause >/dev/null
"$hoard" bench put --size "$SIZE" --count "$M" --concurrency "$C" --save-hashes "$WORK/big" --json >/dev/null
"$hoard" bench put --size "$SIZE" --count 200 --concurrency "$C" --save-hashes "$WORK/load" --json >/dev/null
sleep 4
awk 'NR % 10 < 7' "$WORK/big" >"$WORK/dead"
awk 'NR % 10 >= 7' "$WORK/big" >"$WORK/live"
"$hoard" delete --manifest "$WORK/dead" >/dev/null 2>&1
sleep 3
base=$("$hoard" bench mixed --size "$SIZE" --count 400 --concurrency "$C" --hashes "$WORK/load" --json)
"$hoard" admin compact throttle --bytes-per-sec 0 --concurrency 4 >/dev/null
t0=$(now)
"$hoard" admin compact start >/dev/null
during=$("$hoard" bench mixed --size "$SIZE" --count 400 --concurrency "$C" --hashes "$WORK/load" --json)
"$hoard" admin compact start --wait --json >"$WORK/compact.json"
t1=$(now)
moved=$(python3 -c "import json; print(json.load(open('$WORK/compact.json'))['moved_bytes_total'])")
vols=$(python3 -c "import json; print(json.load(open('$WORK/compact.json'))['volumes_compacted_total'])")
python3 -c "print(f'compaction: {$moved/1e6:.1f} MB of live blocks moved, {$vols} volumes retired, in {$t1-$t0:.1f} s: {$moved/1e6/($t1-$t0):.1f} MB/s (includes the wait for the last planning round)')"
printf 'mixed load %s, C=%s, without compaction: %s MB/s p99 %s ms; with compaction alongside: %s MB/s p99 %s ms\n' \
  "$SIZE" "$C" "$(field "$base" mb_per_s)" "$(field "$base" p99_ms)" "$(field "$during" mb_per_s)" "$(field "$during" p99_ms)"
# The live blocks still read back (bench get checks every block against its hash).
"$hoard" bench get --hashes "$WORK/live" --concurrency "$C" --json >/dev/null && echo "live blocks read back: ok"
