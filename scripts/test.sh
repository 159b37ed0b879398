#!/usr/bin/env bash
# Runs every test: unit tests, and cluster tests that start real `hoard` processes on 127.0.0.1.
# Uses the release profile, the same one the demo and the benchmarks use, so RocksDB is compiled once.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/hoard-target}"
cargo test --release --workspace --locked "$@"
