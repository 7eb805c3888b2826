#!/usr/bin/env bash
# What `store.wait` (replica confirmations) costs per logout and per sign-in: a Redis master
# and one replica on loopback (append-only, as deploy/redis.conf), then benches/src/store_wait.rs
# against the master, with and without WAIT in the same run. Figures: benches/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
m=$((20000 + RANDOM % 10000)); r=$((m + 1))
mkdir -p "$dir/m" "$dir/r"
redis-server --bind 127.0.0.1 --port "$m" --save "" --appendonly yes --appendfsync always --dir "$dir/m" >/dev/null &
redis-server --bind 127.0.0.1 --port "$r" --save "" --appendonly yes --appendfsync always --dir "$dir/r" \
  --replicaof 127.0.0.1 "$m" --repl-diskless-sync-delay 0 >/dev/null &
for _ in $(seq 50); do
  redis-cli -p "$r" INFO replication 2>/dev/null | grep -q master_link_status:up && break
  sleep 0.1
done
# I/O-bound (round trips, fsync): the dev build measures the same thing, without a release
# build of the whole workspace.
cargo run --locked -q -p aalgate-benches --bin store-wait -- "redis://127.0.0.1:$m/0"
