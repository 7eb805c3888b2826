# Shared by benches/load.sh and benches/instructions.sh (sourced, not run): installs what is
# missing, builds the release binaries, makes the work directory (removed with every process
# started into `pids` on exit), and finds free ports.

# need CMD...: installs the Debian packages of the same names when missing (as root).
need() {
  local missing=()
  for c in "$@"; do command -v "$c" >/dev/null 2>&1 || missing+=("$c"); done
  ((${#missing[@]})) || return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "install first: ${missing[*]}" >&2
    exit 1
  fi
}

# BINS=dir uses the binaries already there (no build): one build while another runs.
if [ -z "${BINS:-}" ]; then
  cargo build --release --locked -q -p aalgate -p aalgate-benches --bins
fi
BIN=${BINS:-target/release}/aalgate
MINT=${BINS:-target/release}/mint-sessions
MINIMAL=${BINS:-target/release}/minimal-proxy

work=$(mktemp -d)
chmod 755 "$work"  # nginx workers (another user) read the test files
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# gateway_yaml NAME LISTEN ADMIN_PORT ORIGIN STORE POLICIES THREADS [EXTRA]: writes
# $work/NAME.yaml, an aalgate config. LISTEN is one listener's YAML mapping; STORE a URL, or a
# YAML section (`{sentinels: ...}`); EXTRA more top-level lines. Every gateway of a run signs
# with one key, and writes every request to its audit file (AUDIT_REQUESTS=false: not).
gateway_yaml() {
  local store=$5
  case "$store" in "{"*) ;; *) store="\"$store\"" ;; esac
  cat > "$work/$1.yaml" <<EOF
listen: [$2]
admin_listen: 127.0.0.1:$3
public_origin: $4
store: $store
policies: $6
state_dir: $work/state-$1
signing_key: $work/signing-key.pem
threads: $7
audit: { output: "file:$work/audit-$1.jsonl", requests: ${AUDIT_REQUESTS:-true} }
${8:-}
EOF
}

# bench_policy DIR HOST UPSTREAM_PORT [PUBLIC]: writes DIR/bench.yaml, the benchmarks' app on
# HOST (default aal2: everything signed in), with the paths under PUBLIC (a glob) public.
bench_policy() {
  mkdir -p "$1"
  {
    printf 'app: bench\nhost: %s\nupstream: http://127.0.0.1:%s\ndefault: aal2\n' "$2" "$3"
    [ -z "${4:-}" ] || printf 'routes:\n  - path: %s\n    require: public\n' "$4"
  } > "$1/bench.yaml"
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits for a port to listen (a server under valgrind may take seconds).
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
