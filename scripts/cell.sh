# Sourced by the benchmark scripts: starts a cell of separate processes on loopback ports for them.
# The caller sets WORK (a scratch directory), hoard (the binary) and pids=() and kills "${pids[@]}" on
# exit.

# Runs in the calling shell (not in $(...)), so that its pid lands in pids and is killed on exit.
start() { # NAME CONFIG-TEXT -> sets addr to the address it listens on
  printf '%s\n' "$2" >"$WORK/$1.toml"
  "$hoard" server --config "$WORK/$1.toml" >"$WORK/$1.out" 2>"$WORK/$1.log" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/$1.out" 2>/dev/null && break; sleep 0.1; done
  addr=$(sed -n 's/^hoard [a-z]* listening on //p' "$WORK/$1.out" | head -n 1)
}

# Meta (extents of 256 MiB, and META_EXTRA's lines), four volume servers with three disks each (their
# pids in vols), and a frontend; HOARD_ENDPOINT names the frontend.
start_cell() { # [META_EXTRA]
  start meta "[meta]
listen = \"127.0.0.1:0\"
data_dir = \"$WORK/meta\"
extent_size = \"256MiB\"
${1:-}"
  meta=$addr
  vols=()
  local i
  for i in 1 2 3 4; do
    start "vol-$i" "[node]
id = \"vol-$i\"
[volume]
listen = \"127.0.0.1:0\"
meta = \"http://$meta\"
disks = [\"$WORK/vol-$i/d1\", \"$WORK/vol-$i/d2\", \"$WORK/vol-$i/d3\"]
heartbeat = \"1s\"
labels = { host = \"vol-$i\" }"
    vols+=("${pids[-1]}")
  done
  start frontend "[frontend]
listen = \"127.0.0.1:0\"
meta = \"http://$meta\""
  fe=$addr
  export HOARD_ENDPOINT="http://$fe"
}
