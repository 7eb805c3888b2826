#!/usr/bin/env bash
# benches/load.sh: aalgate against what a hospital would otherwise deploy, measured one after
# another in the same run, on loopback, at the same concurrency and worker-thread count.
#
#   1 direct to the upstream (nginx serving a 512-byte file)
#   2 nginx proxy_pass (the physical limit of one proxy hop)
#   3 nginx auth_request to a `return 204` server block (a generous lower bound for every peer)
#   4 aalgate, public route
#   5 aalgate, authenticated route, embedded store
#   6 aalgate, authenticated route, Redis
#   7 row 6 with a cold cache: every request a different session, so every request a store read
#   8 two aalgate instances sharing one Redis, loaded at once (sum), one session valid on both
#   9 row 6 through Redis Sentinel: the same master, two replicas attached, three Sentinels
#  10 a minimal pingora proxy (benches/src/minimal_proxy.rs: pingora's defaults, one route check,
#     one counter): how much of aalgate's cost is pingora's own
#
# Prints one markdown table (requests/s at CONNS connections, ratios against row 2, and p50/p99
# at LAT_CONNS connections, a moderate load) plus the scale figures, ready for RESULTS.md.
# Needs nginx, wrk, redis-server, redis-sentinel (installed with apt-get when run as root). Usage:
#   benches/load.sh            # DURATION=8 CONNS=16 LAT_CONNS=2 WORKERS=1 SESSIONS=100000
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNS=${CONNS:-16}
LAT_CONNS=${LAT_CONNS:-2}
WORKERS=${WORKERS:-1}
SESSIONS=${SESSIONS:-100000}
EMBEDDED_SESSIONS=${EMBEDDED_SESSIONS:-100000}

# shellcheck source=benches/common.sh
source benches/common.sh
need nginx wrk redis-server redis-sentinel

P_UP=$(port); P_PROXY=$(port); P_AUTHREQ=$(port); P_AUTH=$(port); P_REDIS=$(port)
P_GW_EMB=$(port); P_GW_RED=$(port); P_GW_RED2=$(port); A1=$(port); A2=$(port); A3=$(port)
P_R1=$(port); P_R2=$(port); P_S1=$(port); P_S2=$(port); P_S3=$(port); P_GW_SEN=$(port); A4=$(port)
P_MIN=$(port)

mkdir -p "$work/www/app" "$work/www/static" "$work/nginx"
head -c 512 /dev/zero | tr '\0' 'x' > "$work/www/app/index.html"
cp "$work/www/app/index.html" "$work/www/static/index.html"
chmod -R a+rX "$work/www"

cat > "$work/nginx/upstream.conf" <<EOF
worker_processes 1; daemon off; pid $work/nginx/up.pid; error_log $work/nginx/up-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_UP; root $work/www; location / { } } }
EOF
cat > "$work/nginx/proxy.conf" <<EOF
worker_processes $WORKERS; daemon off; pid $work/nginx/proxy.pid; error_log $work/nginx/proxy-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  upstream up { server 127.0.0.1:$P_UP; keepalive 64; }
  upstream auth { server 127.0.0.1:$P_AUTH; keepalive 64; }
  server { listen 127.0.0.1:$P_PROXY;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$P_AUTHREQ;
    location / { auth_request /_auth; proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    location = /_auth { internal; proxy_pass http://auth/; proxy_pass_request_body off;
      proxy_set_header Content-Length ""; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$P_AUTH; location / { return 204; } } }
EOF
nginx -c "$work/nginx/upstream.conf" -p "$work/nginx" & pids+=($!)
nginx -c "$work/nginx/proxy.conf" -p "$work/nginx" & pids+=($!)
redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$P_UP"; wait_port "$P_PROXY"; wait_port "$P_AUTHREQ"; wait_port "$P_REDIS"
# Row 9: two replicas of the same Redis and three Sentinels watching it.
for p in "$P_R1" "$P_R2"; do
  # A replica writes the master's snapshot to its --dir on every full sync.
  mkdir -p "$work/replica-$p"
  redis-server --bind 127.0.0.1 --port "$p" --save "" --appendonly no --replicaof 127.0.0.1 "$P_REDIS" \
    --repl-diskless-sync-delay 0 --dir "$work/replica-$p" >/dev/null & pids+=($!)
done
for p in "$P_S1" "$P_S2" "$P_S3"; do
  printf 'port %s\nbind 127.0.0.1\ndir %s\nsentinel monitor aalgate 127.0.0.1 %s 2\nsentinel down-after-milliseconds aalgate 1000\n' \
    "$p" "$work" "$P_REDIS" > "$work/sentinel-$p.conf"
  redis-sentinel "$work/sentinel-$p.conf" >/dev/null & pids+=($!)
done
for _ in $(seq 300); do
  m=$(redis-cli -p "$P_S1" SENTINEL MASTER aalgate 2>/dev/null | tr '\n' ' ')
  [[ "$m" == *"num-slaves 2 "* && "$m" == *"num-other-sentinels 2 "* ]] && break
  sleep 0.1
done

mkdir -p "$work/policies"
cat > "$work/policies/bench.yaml" <<EOF
app: bench
host: 127.0.0.1
upstream: http://127.0.0.1:$P_UP
default: aal2
routes:
  - path: /static/**
    require: public
EOF
gateway() { # name port admin store
  cat > "$work/$1.yaml" <<EOF
listen: [{ addr: 127.0.0.1:$2 }]
admin_listen: 127.0.0.1:$3
public_origin: http://localhost:$2
$(case "$4" in "{"*) echo "store: $4" ;; *) echo "store: \"$4\"" ;; esac)
policies: policies
state_dir: $work/state-$1
signing_key: $work/signing-key.pem
threads: $WORKERS
audit: { output: "file:$work/audit-$1.jsonl", requests: ${AUDIT_REQUESTS:-true} }
EOF
  RUST_LOG=warn "$BIN" run --config "$work/$1.yaml" 2>"$work/$1.log" & pids+=($!)
  wait_port "$2"
}

# One session per line, its cookie for each host named (a cookie is a handle for one host).
COOKIE_EMB=$("$MINT" "embedded:$work/emb" 1 "127.0.0.1:$P_GW_EMB")
gateway emb "$P_GW_EMB" "$A1" "embedded:$work/emb"
read -r COOKIE_RED COOKIE_RED2 < <("$MINT" "redis://127.0.0.1:$P_REDIS/0" 1 "127.0.0.1:$P_GW_RED" "127.0.0.1:$P_GW_RED2")
"$MINT" "redis://127.0.0.1:$P_REDIS/0" "$SESSIONS" "127.0.0.1:$P_GW_RED" > "$work/cookies.txt"
gateway red "$P_GW_RED" "$A2" "redis://127.0.0.1:$P_REDIS/0"
gateway red2 "$P_GW_RED2" "$A3" "redis://127.0.0.1:$P_REDIS/0"
read -r COOKIE_SEN < <("$MINT" "redis://127.0.0.1:$P_REDIS/0" 1 "127.0.0.1:$P_GW_SEN")
gateway sen "$P_GW_SEN" "$A4" "{sentinels: [127.0.0.1:$P_S1, 127.0.0.1:$P_S2, 127.0.0.1:$P_S3], master_name: aalgate}"

"$MINIMAL" "127.0.0.1:$P_MIN" "127.0.0.1:$P_UP" "$WORKERS" 2>"$work/minimal.log" & pids+=($!)
wait_port "$P_MIN"

cat > "$work/cold.lua" <<EOF
local cookies = {}
for line in io.lines("$work/cookies.txt") do cookies[#cookies + 1] = "aalgate=" .. line end
local i = 0
request = function()
  i = i % #cookies + 1
  return wrk.format(nil, nil, { ["Cookie"] = cookies[i] })
end
EOF

# wrk prints latencies as 312.00us / 1.23ms / 1.02s: convert to microseconds.
to_us() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); print v+0 } else if (v ~ /ms$/) { sub(/ms$/,"",v); print v*1000 } else if (v ~ /s$/) { sub(/s$/,"",v); print v*1000000 } else print v }'; }
measure() { # conns url [wrk args...] -> "rps p50us p99us"
  local c=$1 url=$2; shift 2
  local out; out=$(wrk -t1 -c"$c" -d"${DURATION}s" --latency "$@" "$url")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
  # A 302 (a cookie that does not resolve) would measure the sign-in redirect, not the proxy.
  if grep -q "Non-2xx" <<<"$out"; then echo "non-2xx answers in: $url $*" >&2; grep "Non-2xx" <<<"$out" >&2; exit 1; fi
  echo "$rps $p50 $p99"
}

declare -A RPS P50 P99 LP50 LP99
ROWS=${ROWS:-1 2 3 4 5 6 7 8 9 10}
row() { # key url [wrk args...]
  local k=$1; shift
  [[ " $ROWS " == *" $k "* ]] || { RPS[$k]=0; P50[$k]=0; P99[$k]=0; LP50[$k]=0; LP99[$k]=0; return; }
  read -r RPS[$k] P50[$k] P99[$k] < <(measure "$CONNS" "$@")
  read -r _ LP50[$k] LP99[$k] < <(measure "$LAT_CONNS" "$@")
}
row 1 "http://127.0.0.1:$P_UP/app/index.html"
row 2 "http://127.0.0.1:$P_PROXY/app/index.html"
row 3 "http://127.0.0.1:$P_AUTHREQ/app/index.html"
row 4 "http://127.0.0.1:$P_GW_EMB/static/index.html"
row 5 "http://127.0.0.1:$P_GW_EMB/app/index.html" -H "Cookie: aalgate=$COOKIE_EMB"
row 6 "http://127.0.0.1:$P_GW_RED/app/index.html" -H "Cookie: aalgate=$COOKIE_RED"
row 7 "http://127.0.0.1:$P_GW_RED/app/index.html" -s "$work/cold.lua"
row 9 "http://127.0.0.1:$P_GW_SEN/app/index.html" -H "Cookie: aalgate=$COOKIE_SEN"
row 10 "http://127.0.0.1:$P_MIN/app/index.html"
# Row 8: both instances at once, half the connections each, the same session on both.
if [[ " $ROWS " == *" 8 "* ]]; then
half=$((CONNS / 2))
wrk -t1 -c"$half" -d"${DURATION}s" -H "Cookie: aalgate=$COOKIE_RED" "http://127.0.0.1:$P_GW_RED/app/index.html" > "$work/w1.txt" &
w1=$!
wrk -t1 -c"$half" -d"${DURATION}s" -H "Cookie: aalgate=$COOKIE_RED2" "http://127.0.0.1:$P_GW_RED2/app/index.html" > "$work/w2.txt"
wait "$w1"
RPS[8]=$(awk '/^Requests\/sec:/ {s+=$2} END {print s}' "$work/w1.txt" "$work/w2.txt")
grep -h "Non-2xx" "$work/w1.txt" "$work/w2.txt" >&2 || true
else RPS[8]=0; fi

names=([1]="direct to upstream" [2]="nginx proxy_pass" [3]="nginx auth_request (204)" [4]="aalgate, public route"
  [5]="aalgate, authenticated, embedded" [6]="aalgate, authenticated, Redis" [7]="aalgate, Redis, cold cache"
  [8]="2 × aalgate sharing Redis (sum)" [9]="aalgate, authenticated, Redis via Sentinel"
  [10]="minimal pingora proxy (defaults, one route check, one counter)")
echo
echo "Machine: $(nproc) cores, $(uname -m); $(date -u +%Y-%m-%d). wrk -t1, ${DURATION}s per row; ${WORKERS} worker(s) for nginx and aalgate."
echo
echo "| # | configuration | req/s (c=$CONNS) | × nginx proxy_pass | p50 µs (c=$CONNS) | p99 µs (c=$CONNS) | p50 µs (c=$LAT_CONNS) | p99 µs (c=$LAT_CONNS) | added p50 / p99 µs over direct (c=$LAT_CONNS) |"
echo "|---|---|---|---|---|---|---|---|---|"
for k in 1 2 3 4 5 6 7 8 9 10; do
  ratio=$(awk -v a="${RPS[$k]}" -v b="${RPS[2]}" 'BEGIN {printf "%.2f", a/b}')
  if [ "$k" = 8 ]; then
    echo "| $k | ${names[$k]} | ${RPS[$k]} | $ratio | | | | | |"
  else
    add50=$(awk -v a="${LP50[$k]}" -v b="${LP50[1]}" 'BEGIN {printf "%.0f", a-b}')
    add99=$(awk -v a="${LP99[$k]}" -v b="${LP99[1]}" 'BEGIN {printf "%.0f", a-b}')
    echo "| $k | ${names[$k]} | ${RPS[$k]} | $ratio | ${P50[$k]} | ${P99[$k]} | ${LP50[$k]} | ${LP99[$k]} | $add50 / $add99 |"
  fi
done

[ "${SCALE:-1}" = 1 ] || exit 0
# Scale: memory of one session in Redis, and the embedded file with many sessions.
key=$(redis-cli -p "$P_REDIS" SCAN 0 MATCH 'aalgate:s:*' COUNT 1000 | sed -n 2p)
mem=$(redis-cli -p "$P_REDIS" MEMORY USAGE "$key")
link=$(redis-cli -p "$P_REDIS" SCAN 0 MATCH 'aalgate:l:*' COUNT 1000 | sed -n 2p)
lmem=$(redis-cli -p "$P_REDIS" MEMORY USAGE "$link")
used=$(redis-cli -p "$P_REDIS" INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r')
echo
echo "Scale: $SESSIONS sessions in Redis: MEMORY USAGE of one session = $mem bytes, plus $lmem per host's cookie handle; used_memory = $((used / 1048576)) MiB in all."
start=$(date +%s)
"$MINT" "embedded:$work/emb-scale" "$EMBEDDED_SESSIONS" "127.0.0.1:$P_GW_EMB" > /dev/null
echo "Scale: $EMBEDDED_SESSIONS sessions in the embedded store: $(du -b "$work/emb-scale/sessions.redb" | cut -f1) bytes on disk ($(( $(date +%s) - start )) s to write, one transaction (fsync) for the record and one for its handle)."
