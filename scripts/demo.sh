#!/usr/bin/env bash
# Builds Hoard, starts a local cell with `hoard dev` (4 volume servers x 3 disks, RS 6+3, on loopback),
# puts a 4 MiB block and a 10 MiB file, reads them back, compares, and leaves the cell running until
# Ctrl-C. With --once it stops the cell after the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
once=0
[ "${1:-}" = "--once" ] && once=1
./scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
# Built exactly as the test command builds it (same profile, same features), so the two share one build.
cargo test --release --workspace --locked --no-run
hoard="$CARGO_TARGET_DIR/release/hoard"

data="${HOARD_DEMO_DATA:-$(mktemp -d /tmp/hoard-demo.XXXXXX)}"
[ -z "${HOARD_DEMO_DATA:-}" ] && [ $once -eq 1 ] && cleanup_data="$data" || cleanup_data=""
work=$(mktemp -d /tmp/hoard-demo-files.XXXXXX)
log="$work/dev.log"
"$hoard" dev --data "$data" --listen 127.0.0.1:0 --admin 127.0.0.1:0 >"$work/dev.out" 2>"$log" &
dev=$!
trap 'kill $dev 2>/dev/null || true; wait $dev 2>/dev/null || true; rm -rf "$work" $cleanup_data' EXIT
for _ in $(seq 1 200); do
  grep -q 'client endpoint' "$work/dev.out" 2>/dev/null && break
  kill -0 $dev 2>/dev/null || { cat "$log" >&2; echo "demo: hoard dev failed to start" >&2; exit 1; }
  sleep 0.1
done
cat "$work/dev.out"
# Everything a client needs to reach the cell, as `hoard dev` wrote it.
. "$data/hoard.env"
echo "demo: . $data/hoard.env -> HOARD_ENDPOINT=$HOARD_ENDPOINT HOARD_ADMIN=$HOARD_ADMIN"

head -c 4194304 /dev/urandom >"$work/block.bin"
hash=$("$hoard" put "$work/block.bin")
echo "demo: put a 4 MiB block -> $hash"
"$hoard" get "$hash" -o "$work/block.back"
cmp "$work/block.bin" "$work/block.back"
echo "demo: get returned the same 4 MiB"
"$hoard" stat "$hash"

head -c 10485760 /dev/urandom >"$work/file.bin"
"$hoard" upload "$work/file.bin" -o "$work/file.manifest"
echo "demo: uploaded a 10 MiB file as $(wc -l <"$work/file.manifest") blocks"
"$hoard" download "$work/file.manifest" -o "$work/file.back"
cmp "$work/file.bin" "$work/file.back"
echo "demo: download returned the same 10 MiB"
echo "demo: missing of a never-stored hash prints it: $("$hoard" missing 0000000000000000000000000000000000000000000000000000000000000000)"
"$hoard" admin volumes
echo "demo: ok. Status page: $HOARD_ADMIN/#token=$HOARD_ADMIN_TOKEN  metrics: $HOARD_ADMIN/metrics"

if [ $once -eq 0 ]; then
  echo "demo: the cell keeps running (data in $data); Ctrl-C stops it. In another shell:"
  echo "  . $data/hoard.env && $hoard put FILE"
  wait $dev
fi
