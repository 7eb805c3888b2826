#!/usr/bin/env bash
# Runs aalgate's whole test suite: unit tests, the store conformance suite (embedded and a real
# redis-server) and the end-to-end tests of the built binary.
#
# Needs: cmake (pingora builds zlib-ng), redis-server and redis-sentinel (failover tests), openssl and curl (TLS listener test),
# promtool (Debian package prometheus: checks the metrics scrape and the alert rules),
# chromium and node/npm (the browser tests: playwright-core from npm drives Debian's Chromium
# with WebAuthn virtual authenticators, no browser download; npm oidc-provider is the real
# OpenID Connect provider of the single sign-on tests), and python3 with pip (hyper-h2, the
# HTTP/2 client that sends malformed requests; httpbin and
# gunicorn from PyPI, the upstream of the transparency tests; PyJWT verifies the assertion;
# Trac from PyPI, a real app under a path for kept forms; scim2-tester from PyPI, the SCIM
# compliance checker),
# libfaketime (Debian package faketime: wall-clock steps under the real binary), valgrind
# (callgrind instruction counts: the SCIM token compare is constant-time), and
# cargo-audit with the RustSec snapshot (tests/audit.sh).
# As root on Debian it installs what is missing; otherwise it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
[ -x /usr/lib/chromium/chromium ] || command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "tests/run.sh: installing ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "tests/run.sh: missing ${need[*]}; install them first (Debian: sudo apt-get install -y ${need[*]})" >&2
    exit 1
  fi
fi

# Real apps nobody here wrote: httpbin under gunicorn for the transparency tests, and Trac
# (served by tracd under /env, Path=/env cookies) for kept forms in Chromium (PyPI).
if ! python3 -c "import httpbin, gunicorn, jwt, trac" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "httpbin==0.10.*" "gunicorn>=22" "PyJWT[crypto]>=2.8" "Trac==1.6.*"
fi
# hyper-h2, the HTTP/2 client of the h2 tests (tests/h2client.py): it sends malformed requests
# exactly as given, which curl and Rust's h2 refuse to.
if ! python3 -c "import h2" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "h2==4.*"
fi
# scim2-tester, the independent SCIM compliance checker the provisioning tests run (PyPI; its
# client speaks httpx2). Pinned: a newer checker may add checks.
if ! python3 -c "import scim2_tester, httpx2" >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check "scim2-tester==0.5.2" "scim2-client[httpx2]==0.13.2"
fi

# The browser driver and the OIDC provider (pinned in tests/browser/package-lock.json).
if [ ! -d tests/browser/node_modules/playwright-core ] || [ ! -d tests/browser/node_modules/oidc-provider ]; then
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

# Dependencies against the RustSec advisory snapshot (offline; installs cargo-audit if needed).
bash tests/audit.sh

# Build the binary the end-to-end tests start.
cargo build --locked -p aalgate --bin aalgate
cargo build --locked -p aalgate-benches --bin token-compare
# Smoke run of the micro-benchmarks: each once, unoptimized (real runs: cargo bench).
cargo test --locked -p aalgate-benches --bench micro
# Everything but the soak, then the soak alone (it measures the gateway's memory, so nothing
# else should run beside it). AALGATE_SOAK_SECS sets its length (default 150).
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --locked --workspace --no-fail-fast -E 'not binary(soak)' "$@"
  cargo nextest run --locked -p aalgate-tests --test soak --no-capture
else
  cargo test --locked --workspace --no-fail-fast "$@" -- --skip soak
  cargo test --locked -p aalgate-tests --test soak -- --nocapture
fi
