#!/usr/bin/env bash
# Offline dependency audit: Cargo.lock against a RustSec advisory database snapshot, with the
# reviewed ignores of .cargo/audit.toml. Any other advisory fails, and so does an ignore whose
# review date has passed.
#
#   AALGATE_ADVISORY_DB=path/to/rustsec-advisory-db.tar.gz bash tests/audit.sh
#
# Without AALGATE_ADVISORY_DB the snapshot comes from ../shared/data (this workplace's), else
# from supply-chain/ (checked in; refresh it from https://github.com/rustsec/advisory-db).
set -euo pipefail
cd "$(dirname "$0")/.."

db_tar=${AALGATE_ADVISORY_DB:-}
if [ -z "$db_tar" ]; then
  for c in ../shared/data/rustsec-advisory-db.tar.gz supply-chain/rustsec-advisory-db.tar.gz; do
    if [ -f "$c" ]; then db_tar=$c; break; fi
  done
fi
[ -n "$db_tar" ] || { echo "tests/audit.sh: no advisory database snapshot found" >&2; exit 1; }

if ! command -v cargo-audit >/dev/null 2>&1; then
  echo "tests/audit.sh: installing cargo-audit 0.22 (about 5 minutes on 2 cores)" >&2
  cargo install --locked --quiet cargo-audit --version '^0.22'
fi

db=target/advisory-db
rm -rf "$db" && mkdir -p "$db"
tar -xzf "$db_tar" -C "$db"

today=$(date -u +%F)
stale=$(grep -o 'review: [0-9-]*' .cargo/audit.toml | awk -v t="$today" '$2 < t {print $2}')
if [ -n "$stale" ]; then
  echo "tests/audit.sh: an ignore in .cargo/audit.toml is past its review date ($stale): review it" >&2
  exit 1
fi

echo "tests/audit.sh: auditing Cargo.lock against $db_tar" >&2
cargo audit --no-fetch --db "$db" --deny warnings
