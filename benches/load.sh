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
# TLS (TLS 1.3, one self-signed ECDSA P-256 certificate for both; nginx with OpenSSL, aalgate
# with pingora's rustls listener): keep-alive requests/s, and new connections/s with a full
# handshake each and with each resuming the session of the one before
#  11 nginx TLS proxy_pass to row 2's upstream
#  12 aalgate TLS, public route
#  13 aalgate TLS, authenticated route, embedded store
#
# Prints two markdown tables, ready for RESULTS.md: rows 1-10 (requests/s at CONNS connections,
# ratios against row 2, and p50/p99 at LAT_CONNS connections, a moderate load) and rows 11-13
# (ratios against row 11), plus the scale figures. ROWS="2 11 12" runs only those rows.
# Needs nginx, wrk, redis-server, redis-sentinel, openssl (installed with apt-get when run as
# root) and python3. Usage:
#   benches/load.sh            # DURATION=8 CONNS=16 LAT_CONNS=2 WORKERS=1 SESSIONS=100000 HS_CLIENTS=2
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
CONNS=${CONNS:-16}
LAT_CONNS=${LAT_CONNS:-2}
WORKERS=${WORKERS:-1}
SESSIONS=${SESSIONS:-100000}
EMBEDDED_SESSIONS=${EMBEDDED_SESSIONS:-100000}
# Clients opening TLS connections at once (each one connection after another), for rows 11-13.
HS_CLIENTS=${HS_CLIENTS:-2}

# shellcheck source=benches/common.sh
source benches/common.sh
need nginx wrk redis-server redis-sentinel openssl

P_UP=$(port); P_PROXY=$(port); P_AUTHREQ=$(port); P_AUTH=$(port); P_REDIS=$(port)
P_GW_EMB=$(port); P_GW_RED=$(port); P_GW_RED2=$(port); A1=$(port); A2=$(port); A3=$(port)
P_R1=$(port); P_R2=$(port); P_S1=$(port); P_S2=$(port); P_S3=$(port); P_GW_SEN=$(port); A4=$(port)
P_MIN=$(port); P_NGX_TLS=$(port); P_GW_TLS=$(port); A5=$(port)

mkdir -p "$work/www/app" "$work/www/static" "$work/nginx"
head -c 512 /dev/zero | tr '\0' 'x' > "$work/www/app/index.html"
cp "$work/www/app/index.html" "$work/www/static/index.html"
chmod -R a+rX "$work/www"
# Rows 11-13: one certificate and key for nginx and aalgate, so both sign with the same key.
mkdir -p "$work/tls"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$work/tls/key.pem" -out "$work/tls/cert.pem" 2>/dev/null

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
  server { listen 127.0.0.1:$P_AUTH; location / { return 204; } }
  server { listen 127.0.0.1:$P_NGX_TLS ssl;
    ssl_certificate $work/tls/cert.pem; ssl_certificate_key $work/tls/key.pem; ssl_protocols TLSv1.3;
    ssl_session_cache shared:tls:10m; ssl_session_tickets on;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
nginx -c "$work/nginx/upstream.conf" -p "$work/nginx" & pids+=($!)
nginx -c "$work/nginx/proxy.conf" -p "$work/nginx" & pids+=($!); NGX_PROXY=$!
redis-server --bind 127.0.0.1 --port "$P_REDIS" --save "" --appendonly no >/dev/null & pids+=($!)
wait_port "$P_UP"; wait_port "$P_PROXY"; wait_port "$P_AUTHREQ"; wait_port "$P_REDIS"; wait_port "$P_NGX_TLS"
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
  m=$(redis-cli -p "$P_S1" SENTINEL MASTER aalgate 2>/dev/null | tr '\n' ' ') || true  # not up yet
  [[ "$m" == *"num-slaves 2 "* && "$m" == *"num-other-sentinels 2 "* ]] && break
  sleep 0.1
done

bench_policy "$work/policies" 127.0.0.1 "$P_UP" "/static/**"
# The TLS rows name the host `localhost`, as a browser would: an IP address is not a valid SNI
# name, and rustls logs a warning for every handshake that sends one.
bench_policy "$work/policies-tls" localhost "$P_UP" "/static/**"
gateway() { # name port admin store [tls]
  local listen="{ addr: 127.0.0.1:$2 }" origin="http://localhost:$2" policies=policies
  if [ "${5:-}" = tls ]; then
    listen="{ addr: 127.0.0.1:$2, tls: { cert: $work/tls/cert.pem, key: $work/tls/key.pem } }"
    origin="https://localhost:$2" policies=policies-tls
  fi
  gateway_yaml "$1" "$listen" "$3" "$origin" "$4" "$policies" "$WORKERS"
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
# Rows 12-13: row 4-5's gateway on a TLS listener (HTTP/2 offered by ALPN, as deployed; wrk and
# the handshake client ask for HTTP/1.1). Over TLS the session cookie is `__Host-aalgate`.
COOKIE_TLS=$("$MINT" "embedded:$work/emb-tls" 1 "localhost:$P_GW_TLS")
gateway tls "$P_GW_TLS" "$A5" "embedded:$work/emb-tls" tls; GW_TLS=${pids[-1]}

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

declare -A RPS P50 P99 LP50 LP99 HS_FULL HS_RES HS_REUSED CPU_FULL CPU_RES
ROWS=${ROWS:-1 2 3 4 5 6 7 8 9 10 11 12 13}
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

# Rows 11-13, new connections: CLIENTS processes, each opening TLS 1.3 connections one after
# another with one GET each. "full" offers no session, so every connection is a full handshake
# (ECDHE and a certificate signature); "resume" offers each connection the ticket its previous
# one received (a PSK handshake: ECDHE still, but no certificate and no signature). Python's ssl module reports, per connection,
# whether the server accepted the ticket, so both kinds are checked, not assumed. The clients
# take as much CPU as the servers here, so connections/s is partly the clients' figure; the
# servers' own CPU time per connection (user + system, all threads) is the servers' figure.
cat > "$work/handshakes.py" <<'EOF'
# handshakes.py PORT HOST PATH SECONDS full|resume CLIENTS [HEADER]
# -> "connections/s connections resumed failed"
import os, socket, ssl, sys, time
port, host, path, secs, mode, clients = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
req = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{''.join(h + chr(13) + chr(10) for h in sys.argv[7:])}Connection: close\r\n\r\n".encode()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # the client's own check would only slow it

def get(sess):  # -> (answered 200 in full, resumed, session to offer next)
    with socket.create_connection(("127.0.0.1", port)) as s, ctx.wrap_socket(s, server_hostname=host, session=sess) as t:
        t.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            c = t.recv(65536)
            if not c: return False, t.session_reused, t.session
            buf += c
        head, body = buf.split(b"\r\n\r\n", 1)
        length = next((int(l.split(b":", 1)[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            c = t.recv(65536)
            if not c: return False, t.session_reused, t.session
            body += c
        # The tickets (TLS 1.3 sends them after the handshake) have been read with the answer.
        return head.startswith(b"HTTP/1.1 200 "), t.session_reused, t.session

def client(w):
    sess, n, resumed, failed = None, 0, 0, 0
    start = time.monotonic()
    while time.monotonic() - start < secs:
        try: ok, r, s = get(sess)
        except OSError: ok, r, s = False, False, None
        n, resumed, failed = n + 1, resumed + r, failed + (not ok)
        if mode == "resume": sess = s
    os.write(w, f"{n / (time.monotonic() - start)} {n} {resumed} {failed}\n".encode())

pipes = []
for _ in range(clients):
    r, w = os.pipe()
    if os.fork() == 0:
        client(w); os._exit(0)
    os.close(w); pipes.append(r)
total = [0.0, 0, 0, 0]
for r in pipes:
    for i, v in enumerate(os.read(r, 200).split()): total[i] += float(v)
    os.close(r); os.wait()
print(f"{total[0]:.0f} {total[1]:.0f} {total[2]:.0f} {total[3]:.0f}")
EOF
# CPU time of processes (clock ticks, all threads): fields 14 and 15 of /proc/PID/stat.
cpu_ticks() { local t=0 p f; for p in "$@"; do f=$(<"/proc/$p/stat"); read -r -a f <<<"${f##*) }"; t=$((t + f[11] + f[12])); done; echo "$t"; }
TICK=$(getconf CLK_TCK)
handshakes() { # "server pids" port path full|resume [header] -> "connections/s cpu_us_per_connection connections resumed"
  local out rate n resumed failed t0 t1 server=$1; shift
  t0=$(cpu_ticks $server)
  out=$(python3 "$work/handshakes.py" "$1" localhost "$2" "$DURATION" "$3" "$HS_CLIENTS" "${@:4}")
  t1=$(cpu_ticks $server)
  read -r rate n resumed failed <<<"$out"
  if ((failed || n == 0)); then echo "$failed of $n connections failed or were not answered 200: $1 $2 $3" >&2; exit 1; fi
  if [ "$3" = full ] && ((resumed)); then echo "$resumed of $n connections resumed without being offered a session: $1" >&2; exit 1; fi
  # Each client's first connection has no ticket to offer yet.
  if [ "$3" = resume ] && ((resumed < n - HS_CLIENTS)); then echo "only $resumed of $n connections resumed: $1 $2" >&2; fi
  echo "$rate $(( (t1 - t0) * 1000000 / TICK / n )) $n $resumed"
}
tls_row() { # key "server pids" port path [header]
  local k=$1 server=$2 p=$3 path=$4 m hs n r; shift 4
  [[ " $ROWS " == *" $k "* ]] || return 0
  m=$(measure "$CONNS" "https://localhost:$p$path" ${1:+-H "$1"}); RPS[$k]=${m%% *}
  hs=$(handshakes "$server" "$p" "$path" full "$@"); read -r HS_FULL[$k] CPU_FULL[$k] _ _ <<<"$hs"
  hs=$(handshakes "$server" "$p" "$path" resume "$@"); read -r HS_RES[$k] CPU_RES[$k] n r <<<"$hs"
  HS_REUSED[$k]="$r of $n"
}
# nginx: its workers (the master only manages them).
tls_row 11 "$(pgrep -d ' ' -P "$NGX_PROXY")" "$P_NGX_TLS" /app/index.html
tls_row 12 "$GW_TLS" "$P_GW_TLS" /static/index.html
tls_row 13 "$GW_TLS" "$P_GW_TLS" /app/index.html "Cookie: __Host-aalgate=$COOKIE_TLS"

names=([1]="direct to upstream" [2]="nginx proxy_pass" [3]="nginx auth_request (204)" [4]="aalgate, public route"
  [5]="aalgate, authenticated, embedded" [6]="aalgate, authenticated, Redis" [7]="aalgate, Redis, cold cache"
  [8]="2 × aalgate sharing Redis (sum)" [9]="aalgate, authenticated, Redis via Sentinel"
  [10]="minimal pingora proxy (defaults, one route check, one counter)"
  [11]="nginx TLS proxy_pass" [12]="aalgate TLS, public route" [13]="aalgate TLS, authenticated, embedded")
# a/b with two decimals, or – when b was not measured.
ratio_of() { awk -v a="$1" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a/b; else printf "–" }'; }
echo
echo "Machine: $(nproc) cores, $(uname -m); $(date -u +%Y-%m-%d). wrk -t1, ${DURATION}s per row; ${WORKERS} worker(s) for nginx and aalgate."
if [[ " $ROWS " =~ \ (1|2|3|4|5|6|7|8|9|10)\  ]]; then
echo
echo "| # | configuration | req/s (c=$CONNS) | × nginx proxy_pass | p50 µs (c=$CONNS) | p99 µs (c=$CONNS) | p50 µs (c=$LAT_CONNS) | p99 µs (c=$LAT_CONNS) | added p50 / p99 µs over direct (c=$LAT_CONNS) |"
echo "|---|---|---|---|---|---|---|---|---|"
for k in 1 2 3 4 5 6 7 8 9 10; do
  [[ " $ROWS " == *" $k "* ]] || continue
  ratio=$(ratio_of "${RPS[$k]}" "${RPS[2]:-}")
  if [ "$k" = 8 ]; then
    echo "| $k | ${names[$k]} | ${RPS[$k]} | $ratio | | | | | |"
  else
    add50=$(awk -v a="${LP50[$k]}" -v b="${LP50[1]}" 'BEGIN {printf "%.0f", a-b}')
    add99=$(awk -v a="${LP99[$k]}" -v b="${LP99[1]}" 'BEGIN {printf "%.0f", a-b}')
    echo "| $k | ${names[$k]} | ${RPS[$k]} | $ratio | ${P50[$k]} | ${P99[$k]} | ${LP50[$k]} | ${LP99[$k]} | $add50 / $add99 |"
  fi
done
fi

if [[ " $ROWS " =~ \ (11|12|13)\  ]]; then
# What each server negotiated with an OpenSSL client: the rows compare like with like.
negotiated() { openssl s_client -connect "127.0.0.1:$1" -servername localhost </dev/null 2>/dev/null |
  awk '/^New,/ {v=$2; c=$5} /^Server Temp Key:/ {k=$4} /^Peer signature type:/ {s=$4}
    END {sub(",", "", v); sub(",", "", k); print v " " c ", " k ", " s}'; }
echo
echo "TLS: nginx $(negotiated "$P_NGX_TLS"); aalgate $(negotiated "$P_GW_TLS"). ${HS_CLIENTS} client(s) for new connections."
echo
echo "| # | configuration | keep-alive req/s (c=$CONNS) | × nginx TLS | × same over plain HTTP | full handshakes: conn/s | × nginx TLS | server CPU µs/conn | × nginx TLS | resumed: conn/s | × nginx TLS | server CPU µs/conn | × nginx TLS | resumed / connections |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
plain=([11]=2 [12]=4 [13]=5)
for k in 11 12 13; do
  [[ " $ROWS " == *" $k "* ]] || continue
  echo "| $k | ${names[$k]} | ${RPS[$k]} | $(ratio_of "${RPS[$k]}" "${RPS[11]:-}") | $(ratio_of "${RPS[$k]}" "${RPS[${plain[$k]}]:-}") | ${HS_FULL[$k]} | $(ratio_of "${HS_FULL[$k]}" "${HS_FULL[11]:-}") | ${CPU_FULL[$k]} | $(ratio_of "${CPU_FULL[$k]}" "${CPU_FULL[11]:-}") | ${HS_RES[$k]} | $(ratio_of "${HS_RES[$k]}" "${HS_RES[11]:-}") | ${CPU_RES[$k]} | $(ratio_of "${CPU_RES[$k]}" "${CPU_RES[11]:-}") | ${HS_REUSED[$k]} |"
done
echo
echo "Keep-alive: wrk -t1 over https, HTTP/1.1, c=$CONNS; plain HTTP is rows 2, 4 and 5 of this run (– when not run). New connections: ${HS_CLIENTS} Python ssl clients for ${DURATION}s, each opening one connection after another with one GET (Connection: close); full handshake = no session offered; resumed = the previous connection's ticket offered (TLS 1.3 PSK), and the last column counts the connections the server resumed (each client's first cannot be). The clients share the machine's cores with the servers, so conn/s is partly the clients' own limit; server CPU µs/conn (× nginx TLS above 1: more CPU per connection than nginx) is the server process's user + system time (nginx: its workers; aalgate: all its threads) divided by the connections, each with its TLS handshake, one proxied GET and the close."
fi

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
