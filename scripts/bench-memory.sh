#!/usr/bin/env bash
# A volume server's resident memory does not grow with the number of blocks it stores: a cell of
# separate processes (meta, frontend, 4 volume servers) takes 10,000 and then 100,000 small blocks, and
# the volume servers' RSS is printed at each point.
#
#   usage: scripts/bench-memory.sh        env: WORK (default /var/tmp/hoard-bench-memory, removed at the
#                                          end unless KEEP=1), SIZE (16KiB)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/var/tmp/hoard-bench-memory}
SIZE=${SIZE:-16KiB}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
./scripts/setup.sh
cargo test --release --workspace --locked --no-run >/dev/null 2>&1
hoard="$CARGO_TARGET_DIR/release/hoard"
rm -rf "$WORK" && mkdir -p "$WORK"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

. scripts/cell.sh
start_cell
rss() { for p in "${vols[@]}"; do awk '/VmRSS/ {printf "%d ", $2/1024}' "/proc/$p/status"; done; }

echo "blocks stored   volume servers' RSS (MiB)"
echo "0               $(rss)"
"$hoard" bench put --size "$SIZE" --count 10000 --concurrency 16 --json >/dev/null
sleep 2
echo "10000           $(rss)"
"$hoard" bench put --size "$SIZE" --count 90000 --concurrency 16 --json >/dev/null
sleep 2
echo "100000          $(rss)"
