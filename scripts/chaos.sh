#!/usr/bin/env bash
# A longer chaos run than the suite's: the same test (tests/cluster_chaos.rs) with a seed and a length
# of your choosing. Random SIGKILL and SIGSTOP of every role, disk wipes and bit flips under load from
# three clients; at the end every acknowledged block is read back byte-exact. Prints the run's table
# (faults, and client-visible errors per fault kind) and exits non-zero when the run failed.
#
#   usage: scripts/chaos.sh SEED MINUTES      e.g. for s in $(seq 1 20); do scripts/chaos.sh $s 2; done
#   env: CHAOS_LOG=FILE keeps a failed run's whole output there
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 2 ] || ! [[ $1 =~ ^[0-9]+$ ]] || ! [[ $2 =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  echo "usage: scripts/chaos.sh SEED MINUTES" >&2
  exit 2
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
./scripts/setup.sh >/dev/null
export HOARD_CHAOS_SEED=$1
HOARD_CHAOS_SECS=$(python3 -c "print(max(10, round(float('$2') * 60)))")
export HOARD_CHAOS_SECS
log=$(mktemp /tmp/hoard-chaos.XXXXXX)
trap 'rm -f "$log"' EXIT
status=0
# --workspace, as scripts/test.sh: the same features, so the suite's build serves both.
cargo test --release --locked --workspace --test cluster_chaos -- --nocapture >"$log" 2>&1 || status=$?
grep '^chaos' "$log" | grep -v '^chaos: ' || true
if [ "$status" -ne 0 ]; then
  echo "chaos seed $1 FAILED; its faults and why it failed:" >&2
  grep '^chaos: ' "$log" >&2 || true
  grep -A 20 'panicked at' "$log" | cut -c1-400 >&2 || tail -n 60 "$log" >&2
  if [ -n "${CHAOS_LOG:-}" ]; then cp "$log" "$CHAOS_LOG"; fi
fi
exit "$status"
