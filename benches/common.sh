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

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# Waits for a port to listen (a server under valgrind may take seconds).
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
