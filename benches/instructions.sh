#!/usr/bin/env bash
# benches/instructions.sh: user-space instructions per request, counted by valgrind's callgrind,
# for nginx proxy_pass, a minimal pingora proxy (benches/src/minimal_proxy.rs) and aalgate's
# public, authenticated (embedded store and Redis) and cold-cache routes. Instruction counts
# barely move between runs on a noisy machine, where requests/s move by ±30%.
#
# Each server runs alone under callgrind (1 worker thread); a client outside it (Python's
# http.client, one keep-alive connection) sends a fixed number of GETs of a 512-byte file through it. Counters are
# zeroed, SMALL requests sent and counted, zeroed again, LARGE requests sent and counted: the
# difference divided by LARGE - SMALL is the cost of one request, without start-up and with
# the background tasks' share made small.
#
#   benches/instructions.sh                       # SMALL=500 LARGE=2500
#   PROFILE="public auth" benches/instructions.sh # also keeps the callgrind dumps of these rows
#                                                 # (nginx, minimal, public, auth, redis, cold) in
#                                                 # target/ and prints their top 10 functions
#   ROWS="public auth" benches/instructions.sh    # only these rows (a quicker profiling loop)
#   HEADERS=browser benches/instructions.sh       # each request with the 14 headers Chromium
#                                                 # sends with a page load (default: Python's 2)
# Needs nginx, valgrind, redis-server (installed with apt-get when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

SMALL=${SMALL:-500}
LARGE=${LARGE:-2500}
COLD_SESSIONS=${COLD_SESSIONS:-$((50 + SMALL + LARGE))}
PROFILE=${PROFILE:-}
ROWS=${ROWS:-nginx minimal public auth redis cold}
want() { [[ " $ROWS " == *" $1 "* ]]; }

# shellcheck source=benches/common.sh
source benches/common.sh
need nginx valgrind redis-server

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

bench_policy "$work/policies" 127.0.0.1 "$P_UP" "/static/**"

# Exactly N GETs on one keep-alive connection (wrk stops only at its duration): each must be
# answered 200 (a 302 would count the sign-in redirect, not the proxy). With COOKIES, each
# request carries the next cookie of that file (the cold cache).
cat > "$work/client.py" <<'EOF'
import http.client, os, sys
n, url, cookie_file, header, offset = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
host, _, path = url.removeprefix("http://").partition("/")
h, p = host.split(":")
cookies = [l.strip() for l in open(cookie_file)] if cookie_file else []
conn = http.client.HTTPConnection(h, int(p))
# HEADERS=browser: the headers Chromium sends with a page load, besides Host and the cookie.
browser = {
    "Connection": "keep-alive",
    "sec-ch-ua": '"Chromium";v="131", "Not_A Brand";v="24"',
    "sec-ch-ua-mobile": "?0",
    "sec-ch-ua-platform": '"Windows"',
    "Upgrade-Insecure-Requests": "1",
    "User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
    "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8",
    "Sec-Fetch-Site": "same-origin",
    "Sec-Fetch-Mode": "navigate",
    "Sec-Fetch-User": "?1",
    "Sec-Fetch-Dest": "document",
    "Referer": "http://" + host + "/app/",
    "Accept-Encoding": "gzip, deflate, br, zstd",
    "Accept-Language": "en-US,en;q=0.9",
} if os.environ.get("HEADERS") == "browser" else {}
for i in range(n):
    headers = {"Host": host, **browser}
    if cookies:
        headers["Cookie"] = "aalgate=" + cookies[(offset + i) % len(cookies)]
    elif header:
        k, _, v = header.partition(": ")
        headers[k] = v
    conn.request("GET", "/" + path, headers=headers)
    sock = conn.sock
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"answer {r.status} to request {i}")
    if i > 0 and sock is not first:
        sys.exit(f"the connection was not kept alive (request {i})")
    if i == 0:
        first = sock
EOF
send() { python3 "$work/client.py" "$@"; }

# count PROC N URL COOKIES OFFSET [HEADER]: zeroes the counters of the server running under
# callgrind as PROC, sends N requests (the cold cache: cookies from OFFSET on, so that no run
# reuses another's sessions) and prints the instructions counted meanwhile.
count() {
  local proc=$1 n=$2 url=$3 cookies=$4 offset=$5; shift 5
  local pid; pid=$(cat "$work/cg-$proc.pid")
  callgrind_control -z "$pid" >/dev/null 2>&1 || { echo "callgrind_control -z $pid failed" >&2; exit 1; }
  send "$n" "$url" "$cookies" "${1:-}" "$offset" || exit 1
  local before; before=$(ls "$work/cg-$proc.$pid".* 2>/dev/null | wc -l)
  callgrind_control -d "$pid" >/dev/null 2>&1 || { echo "callgrind_control -d $pid failed" >&2; exit 1; }
  local after=$before
  for _ in $(seq 300); do
    after=$(ls "$work/cg-$proc.$pid".* 2>/dev/null | wc -l)
    [ "$after" -gt "$before" ] && break
    sleep 0.1
  done
  [ "$after" -gt "$before" ] || { echo "no new callgrind dump from $proc" >&2; exit 1; }
  local f; f=$(ls -t "$work/cg-$proc.$pid".* | head -1)
  local ir; ir=$(awk '/^summary:/ {print $2; exit}' "$f")
  [[ "$ir" =~ ^[0-9]+$ ]] || { echo "no instruction count in $f" >&2; exit 1; }
  echo "$ir"
}

# per_request PROC URL COOKIES [HEADER]: instructions per request.
per_request() {
  local proc=$1 url=$2 cookies=$3; shift 3
  # Warm up (caches, pools, the first session read).
  send 50 "$url" "$cookies" "${1:-}" 0 || exit 1
  local a b
  a=$(count "$proc" "$SMALL" "$url" "$cookies" 50 "$@") || exit 1
  b=$(count "$proc" "$LARGE" "$url" "$cookies" $((50 + SMALL)) "$@") || exit 1
  echo $(( (b - a) / (LARGE - SMALL) ))
}

under_callgrind() { # name cmd...: starts cmd under callgrind, dumps into $work/cg-name.*
  local name=$1; shift
  valgrind --tool=callgrind --callgrind-out-file="$work/cg-$name.%p" --dump-instr=no \
    --collect-jumps=no "$@" 2>"$work/$name.valgrind.log" & pids+=($!)
  echo $! > "$work/cg-$name.pid"
}

stop_last() { local p=${pids[-1]}; kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; unset 'pids[-1]'; }

gateway_conf() { # name port admin store
  gateway_yaml "$1" "{ addr: 127.0.0.1:$2 }" "$3" "http://localhost:$2" "$4" policies 1 "session_count_interval: 1h"
}

declare -A IR
measure_row() { # key proc url cookies [header]
  local key=$1; shift
  want "$key" || return 0
  IR[$key]=$(per_request "$@")
  [[ " $PROFILE " != *" $key "* ]] || cp "$(ls -t "$work/cg-$1.$(cat "$work/cg-$1.pid")".* | head -1)" "target/callgrind-$key.out"
}

# 1. nginx proxy_pass, one process (no master) so that callgrind sees the worker.
if want nginx; then
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
fi

# 2. The minimal pingora proxy.
if want minimal; then
P=$(port)
under_callgrind minimal "$MINIMAL" "127.0.0.1:$P" "127.0.0.1:$P_UP" 1
wait_port "$P"
measure_row minimal minimal "http://127.0.0.1:$P/app/index.html" ""
stop_last
fi

# 3-4. aalgate with the embedded store: public and authenticated (one cached session).
if want public || want auth; then
P=$(port); A=$(port)
COOKIE_EMB=$("$MINT" "embedded:$work/emb" 1 "127.0.0.1:$P")
gateway_conf emb "$P" "$A" "embedded:$work/emb"
RUST_LOG=warn under_callgrind emb "$BIN" run --config "$work/emb.yaml"
wait_port "$P"
measure_row public emb "http://127.0.0.1:$P/static/index.html" ""
measure_row auth emb "http://127.0.0.1:$P/app/index.html" "" "Cookie: aalgate=$COOKIE_EMB"
stop_last
fi

# 5-6. aalgate with Redis: authenticated (one cached session) and cold (each request another
# session: a store read per request).
if want redis || want cold; then
P=$(port); A=$(port)
COOKIE_RED=$("$MINT" "redis://127.0.0.1:$P_REDIS/0" 1 "127.0.0.1:$P")
"$MINT" "redis://127.0.0.1:$P_REDIS/0" "$COLD_SESSIONS" "127.0.0.1:$P" > "$work/cookies.txt"
gateway_conf red "$P" "$A" "redis://127.0.0.1:$P_REDIS/0"
RUST_LOG=warn under_callgrind redis "$BIN" run --config "$work/red.yaml"
wait_port "$P"
measure_row redis redis "http://127.0.0.1:$P/app/index.html" "" "Cookie: aalgate=$COOKIE_RED"
measure_row cold redis "http://127.0.0.1:$P/app/index.html" "$work/cookies.txt"
stop_last
fi

names=([1]=nginx [2]=minimal [3]=public [4]=auth [5]=redis [6]=cold)
label=([1]="nginx proxy_pass" [2]="minimal pingora proxy" [3]="aalgate, public route"
  [4]="aalgate, authenticated, embedded (cached session)" [5]="aalgate, authenticated, Redis (cached session)"
  [6]="aalgate, Redis, cold cache (a store read per request)")
echo
echo "Machine: $(nproc) cores, $(uname -m); $(date -u +%Y-%m-%d). callgrind, user space, 1 worker; ($LARGE - $SMALL) keep-alive GETs of a 512-byte file; request headers: ${HEADERS:-python (Host, Accept-Encoding)}."
echo
echo "| configuration | instructions per request | × nginx proxy_pass | × minimal pingora |"
echo "|---|---|---|---|"
ratio() { [ -n "${IR[$2]:-}" ] && awk -v a="$1" -v b="${IR[$2]}" 'BEGIN {printf "%.2f", a/b}' || echo -; }
for k in 1 2 3 4 5 6; do
  n=${IR[${names[$k]}]:-}
  [ -n "$n" ] || continue
  echo "| ${label[$k]} | $n | $(ratio "$n" nginx) | $(ratio "$n" minimal) |"
done
echo
[ -z "${IR[auth]:-}" ] || [ -z "${IR[public]:-}" ] ||
  echo "Target: authenticated - public = $(( IR[auth] - IR[public] )) (≤ 10000)."
[ -z "${IR[public]:-}" ] || [ -z "${IR[minimal]:-}" ] ||
  echo "Target: public - minimal pingora = $(( IR[public] - IR[minimal] )) (≤ 40000)."

for row in $PROFILE; do
  f="target/callgrind-$row.out"
  [ -f "$f" ] || continue
  echo
  echo "Top 10 functions of row $row by inclusive cost, runtime frames left out (instructions per request; $f):"
  callgrind_annotate --inclusive=yes "$f" 2>/dev/null \
    | grep -E '^ *[0-9,]+ ' \
    | grep -vE 'PROGRAM TOTALS|clone\.S|start_thread|thread_start|call_once|backtrace|tokio-[0-9.]+/src/runtime|services/listening\.rs|apps/mod\.rs|Draining|future/future\.rs' \
    | head -10 | awk -v n="$LARGE" '{ c=$1; gsub(",", "", c); $1=""; $2=""; printf "%8d %s\n", c/n, $0 }' || true
done
