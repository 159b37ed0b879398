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

start() { # NAME CONFIG-TEXT -> prints the address it listens on
  printf '%s\n' "$2" >"$WORK/$1.toml"
  "$hoard" server --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.log" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/$1.out" 2>/dev/null && break; sleep 0.1; done
  sed -n 's/^hoard [a-z]* listening on //p' "$WORK/$1.out" | head -n 1
}

meta=$(start meta "[meta]
listen = \"127.0.0.1:0\"
data_dir = \"$WORK/meta\"
extent_size = \"256MiB\"")
vols=()
for i in 1 2 3 4; do
  start "vol-$i" "[node]
id = \"vol-$i\"
[volume]
listen = \"127.0.0.1:0\"
meta = \"http://$meta\"
disks = [\"$WORK/vol-$i/d1\", \"$WORK/vol-$i/d2\", \"$WORK/vol-$i/d3\"]
heartbeat = \"1s\"" >/dev/null
  vols+=("${pids[-1]}")
done
fe=$(start frontend "[frontend]
listen = \"127.0.0.1:0\"
meta = \"http://$meta\"")
export HOARD_ENDPOINT="http://$fe"
rss() { for p in "${vols[@]}"; do awk '/VmRSS/ {printf "%d ", $2/1024}' "/proc/$p/status"; done; }

echo "blocks stored   volume servers' RSS (MiB)"
echo "0               $(rss)"
"$hoard" bench put --size "$SIZE" --count 10000 --concurrency 16 --json >/dev/null
sleep 2
echo "10000           $(rss)"
"$hoard" bench put --size "$SIZE" --count 90000 --concurrency 16 --json >/dev/null
sleep 2
echo "100000          $(rss)"
