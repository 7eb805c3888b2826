#!/usr/bin/env bash
# benches/instructions.sh: user-space instructions per request, counted by valgrind's callgrind,
# for nginx proxy_pass, a minimal pingora proxy (benches/src/minimal_proxy.rs) and aalgate's
# public, authenticated (embedded store and Redis) and cold-cache routes. Instruction counts
# barely move between runs on a noisy machine, where requests/s move by ±30%.
#
# Each server runs alone under callgrind (1 worker thread); a client outside it (wrk, one
# keep-alive connection) sends a fixed number of GETs of a 512-byte file through it. Counters are
# zeroed, SMALL requests sent and counted, zeroed again, LARGE requests sent and counted: the
# difference divided by LARGE - SMALL is the cost of one request, without start-up and with
# the background tasks' share made small.
#
#   benches/instructions.sh                       # SMALL=500 LARGE=2500
#   PROFILE=auth benches/instructions.sh          # also keeps the callgrind dump of a row (nginx,
#                                                 # minimal, public, auth, redis, cold) in target/
#                                                 # and prints its top 10 functions, inclusive
# Needs nginx, wrk, valgrind, redis-server (installed with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-500}
LARGE=${LARGE:-2500}
COLD_SESSIONS=${COLD_SESSIONS:-5000}
PROFILE=${PROFILE:-}

need=()
for c in nginx wrk valgrind redis-server; do command -v "$c" >/dev/null 2>&1 || need+=("$c"); done
if ((${#need[@]})); then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "install first: ${need[*]}" >&2
    exit 1
  fi
fi

cargo build --release --locked -q -p aalgate -p aalgate-benches --bins
BIN=target/release/aalgate
MINT=target/release/mint-sessions
MINIMAL=target/release/minimal-proxy

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; exit 1; }

P_UP=$(port); P_REDIS=$(port)
mkdir -p "$work/www/app" "$work/www/static" "$work/nginx" "$work/policies"
head -c 512 /dev/zero | tr '\0' 'x' > "$work/www/app/index.html"
cp "$work/www/app/index.html" "$work/www/static/index.html"
chmod -R a+rX "$work/www"
cat > "$work/nginx/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $work/nginx/up.pid; error_log $work/nginx/up-error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UP; root $work/www; location / { } } }
EOF
nginx -c "$work/nginx/upstream.conf" -p "$work/nginx" & pids+=($!)
redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$P_UP"; wait_port "$P_REDIS"

cat > "$work/policies/bench.yaml" <<EOF
app: bench
host: 127.0.0.1
upstream: http://127.0.0.1:$P_UP
default: aal2
routes:
  - path: /static/**
    require: public
EOF

# wrk sends exactly N requests on one connection: a Lua script counts the answers and stops.
# With COOKIES set, each request carries the next cookie of that file (the cold cache).
cat > "$work/count.lua" <<'EOF'
local n = tonumber(os.getenv("N"))
local cookies = {}
local file = os.getenv("COOKIES")
if file and file ~= "" then
  for line in io.lines(file) do cookies[#cookies + 1] = "aalgate=" .. line end
end
local i, got = 0, 0
request = function()
  if #cookies > 0 then
    i = i % #cookies + 1
    return wrk.format(nil, nil, { ["Cookie"] = cookies[i] })
  end
  return wrk.format()
end
response = function(status)
  -- A 302 (a cookie that does not resolve) would count the sign-in redirect, not the proxy.
  if status ~= 200 then io.stderr:write("answer " .. status .. "\n") os.exit(1) end
  got = got + 1
  if got >= n then wrk.thread:stop() end
end
done = function(summary)
  if summary.requests < n then io.stderr:write("only " .. summary.requests .. " requests\n") os.exit(1) end
end
EOF

# count PROC N URL COOKIES [wrk args...]: zeroes the counters of the server running under
# callgrind as PROC, sends N requests and prints the instructions counted meanwhile.
count() {
  local proc=$1 n=$2 url=$3 cookies=$4; shift 4
  local pid; pid=$(cat "$work/cg-$proc.pid")
  callgrind_control -z "$pid" >/dev/null
  N=$n COOKIES=$cookies wrk -t1 -c1 -d600s -s "$work/count.lua" "$@" "$url" >/dev/null
  local before; before=$(ls "$work/cg-$proc.$pid".* 2>/dev/null | wc -l)
  callgrind_control -d "$pid" >/dev/null
  for _ in $(seq 100); do
    [ "$(ls "$work/cg-$proc.$pid".* 2>/dev/null | wc -l)" -gt "$before" ] && break
    sleep 0.1
  done
  local f; f=$(ls -t "$work/cg-$proc.$pid".* | head -1)
  awk '/^summary:/ {print $2; exit}' "$f"
}

# per_request PROC URL COOKIES [wrk args...]: instructions per request.
per_request() {
  local proc=$1 url=$2 cookies=$3; shift 3
  # Warm up (caches, pools, the first session read).
  N=50 COOKIES=$cookies wrk -t1 -c1 -d600s -s "$work/count.lua" "$@" "$url" >/dev/null
  local a b
  a=$(count "$proc" "$SMALL" "$url" "$cookies" "$@")
  b=$(count "$proc" "$LARGE" "$url" "$cookies" "$@")
  echo $(( (b - a) / (LARGE - SMALL) ))
}

under_callgrind() { # name cmd...: starts cmd under callgrind, dumps into $work/cg-name.*
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$work/cg-$name.%p" --dump-instr=no \
    --collect-jumps=no "$@" 2>"$work/$name.valgrind.log" & pids+=($!)
  echo $! > "$work/cg-$name.pid"
}

stop_last() { local p=${pids[-1]}; kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; unset 'pids[-1]'; }

gateway_conf() { # name port admin store
  cat > "$work/$1.yaml" <<EOF
listen: [{ addr: 127.0.0.1:$2 }]
admin_listen: 127.0.0.1:$3
public_origin: http://localhost:$2
store: "$4"
policies: policies
state_dir: $work/state-$1
signing_key: $work/signing-key.pem
threads: 1
session_count_interval: 1h
audit: { output: "file:$work/audit-$1.jsonl", requests: true }
EOF
}

declare -A IR
measure_row() { # key proc url cookies [wrk args...]
  local key=$1; shift
  IR[$key]=$(per_request "$@")
  [ "$PROFILE" != "$key" ] || cp "$(ls -t "$work/cg-$1.$(cat "$work/cg-$1.pid")".* | head -1)" "target/callgrind-$key.out"
}

# 1. nginx proxy_pass, one process (no master) so that callgrind sees the worker.
P=$(port)
cat > "$work/nginx/proxy.conf" <<EOF
worker_processes 1; daemon off; master_process off; pid $work/nginx/proxy.pid; error_log $work/nginx/proxy-error.log;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$P_UP; keepalive 64; }
  server { listen 127.0.0.1:$P;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
under_callgrind nginx nginx -c "$work/nginx/proxy.conf" -p "$work/nginx"
wait_port "$P"
measure_row nginx nginx "http://127.0.0.1:$P/app/index.html" ""
stop_last

# 2. The minimal pingora proxy.
P=$(port)
under_callgrind minimal "$MINIMAL" "127.0.0.1:$P" "127.0.0.1:$P_UP" 1
wait_port "$P"
measure_row minimal minimal "http://127.0.0.1:$P/app/index.html" ""
stop_last

# 3-4. aalgate with the embedded store: public and authenticated (one cached session).
P=$(port); A=$(port)
COOKIE_EMB=$("$MINT" "embedded:$work/emb" 1 "127.0.0.1:$P")
gateway_conf emb "$P" "$A" "embedded:$work/emb"
RUST_LOG=warn under_callgrind emb "$BIN" run --config "$work/emb.yaml"
wait_port "$P"
measure_row public emb "http://127.0.0.1:$P/static/index.html" ""
measure_row auth emb "http://127.0.0.1:$P/app/index.html" "" -H "Cookie: aalgate=$COOKIE_EMB"
stop_last

# 5-6. aalgate with Redis: authenticated (one cached session) and cold (each request another
# session: a store read per request).
P=$(port); A=$(port)
COOKIE_RED=$("$MINT" "redis://127.0.0.1:$P_REDIS/0" 1 "127.0.0.1:$P")
"$MINT" "redis://127.0.0.1:$P_REDIS/0" "$COLD_SESSIONS" "127.0.0.1:$P" > "$work/cookies.txt"
gateway_conf red "$P" "$A" "redis://127.0.0.1:$P_REDIS/0"
RUST_LOG=warn under_callgrind redis "$BIN" run --config "$work/red.yaml"
wait_port "$P"
measure_row redis redis "http://127.0.0.1:$P/app/index.html" "" -H "Cookie: aalgate=$COOKIE_RED"
measure_row cold redis "http://127.0.0.1:$P/app/index.html" "$work/cookies.txt"
stop_last

names=([1]=nginx [2]=minimal [3]=public [4]=auth [5]=redis [6]=cold)
label=([1]="nginx proxy_pass" [2]="minimal pingora proxy" [3]="aalgate, public route"
  [4]="aalgate, authenticated, embedded (cached session)" [5]="aalgate, authenticated, Redis (cached session)"
  [6]="aalgate, Redis, cold cache (a store read per request)")
echo
echo "Machine: $(nproc) cores, $(uname -m); $(date -u +%Y-%m-%d). callgrind, user space, 1 worker; ($LARGE - $SMALL) keep-alive GETs of a 512-byte file."
echo
echo "| configuration | instructions per request | × nginx proxy_pass | × minimal pingora |"
echo "|---|---|---|---|"
for k in 1 2 3 4 5 6; do
  n=${IR[${names[$k]}]}
  echo "| ${label[$k]} | $n | $(awk -v a="$n" -v b="${IR[nginx]}" 'BEGIN {printf "%.2f", a/b}') | $(awk -v a="$n" -v b="${IR[minimal]}" 'BEGIN {printf "%.2f", a/b}') |"
done
echo
echo "Targets: authenticated - public = $(( IR[auth] - IR[public] )) (≤ 10000); public - minimal pingora = $(( IR[public] - IR[minimal] )) (≤ 40000)."

if [ -n "$PROFILE" ]; then
  echo
  echo "Top 10 functions by inclusive cost ($PROFILE, the dump of its $LARGE requests), target/callgrind-$PROFILE.out:"
  callgrind_annotate --inclusive=yes "target/callgrind-$PROFILE.out" 2>/dev/null | grep -E '^ *[0-9,]+ ' | head -12
fi
