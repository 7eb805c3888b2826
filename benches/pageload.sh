#!/usr/bin/env bash
# benches/pageload.sh: what a clinician feels. A legacy-like page (the shape of an EHR screen:
# one HTML document and 60 small assets, 20 CSS, 20 JS, 10 PNG and 10 SVG images of 1-10 KB),
# loaded in headless Chromium over TLS, on loopback, four ways:
#
#   direct          nginx serving the page itself over TLS (HTTP/2)
#   nginx           nginx TLS proxy_pass (HTTP/2) to the plain upstream, keepalive
#   aalgate h2      aalgate TLS listener, http2 on (the default), authenticated route
#   aalgate h1      aalgate TLS listener, `http2: false` (HTTP/1.1), authenticated route
#
# The aalgate rows go through an authenticated route (`default: aal2`, no public route, not even
# for the assets), with a session minted into the embedded store and set in the browser as the
# `__Host-aalgate` cookie. The driver (benches/pageload.mjs, playwright-core from
# tests/browser/node_modules, Debian's Chromium) fails unless every one of the 61 responses came
# from the app (200, or 304 on a warm load: never a redirect to sign-in), every script ran, every
# stylesheet applied and every image decoded, and every resource used the row's protocol
# (`nextHopProtocol`: h2 or http/1.1); without the cookie, the page and its assets must be sent
# to sign-in. Afterwards each gateway's audit log must show every request allowed for that
# session at AAL2.
#
# Cold load: a fresh browser context per load (empty HTTP cache, new connections: TCP and a full
# TLS handshake). Warm load: one context per row, the page loaded once before measuring, then
# navigated to again; the connections stay open and the HTTP cache is warm, and every file is
# served `Cache-Control: no-cache` with its ETag and Last-Modified (nginx's defaults), so a warm
# load revalidates each of the 61 files (a conditional GET answered 304), as legacy EHRs often
# do: the browser never skips the network, so the gateway's work per request is still measured.
# Reported: the median of `performance.getEntriesByType('navigation')[0].loadEventEnd` (ms from
# the navigation's start) over COLD cold and WARM warm loads per row; the rows take turns load by
# load (round-robin), so the machine's noise falls on all of them alike. Target: aalgate h2
# within 10% of nginx h2 (cold and warm).
#
# Prints one markdown table, ready for RESULTS.md. Needs nginx, openssl, node, chromium and
# `npm ci --prefix tests/browser` (playwright-core). Usage:
#   benches/pageload.sh                # COLD=20 WARM=20 WORKERS=1
#   BINS=/tmp/benchbin COLD=3 WARM=3 benches/pageload.sh   # prebuilt binaries, a quick try
# RAW=file.json also writes every sample.
set -euo pipefail
cd "$(dirname "$0")/.."

COLD=${COLD:-20}
WARM=${WARM:-20}
WORKERS=${WORKERS:-1}

# shellcheck source=benches/common.sh
source benches/common.sh
need nginx openssl node
CHROMIUM=${CHROMIUM:-}
if [ -z "$CHROMIUM" ]; then
  # Debian's /usr/bin/chromium wrapper prints a shell warning; the binary itself does not.
  for c in /usr/lib/chromium/chromium /usr/bin/chromium; do [ -x "$c" ] && { CHROMIUM=$c; break; }; done
fi
[ -n "$CHROMIUM" ] || { echo "install first: chromium" >&2; exit 1; }
[ -d tests/browser/node_modules/playwright-core ] || { echo "install first: npm ci --prefix tests/browser" >&2; exit 1; }

P_UP=$(port); P_DIRECT=$(port); P_PROXY=$(port); P_GW2=$(port); P_GW1=$(port); A2=$(port); A1=$(port)

# One self-signed certificate (ECDSA P-256) for every TLS server; Chromium trusts it by its
# public key's hash (--ignore-certificate-errors-spki-list), so responses are cacheable (Chromium
# does not cache what it fetched with a certificate error: with --ignore-certificate-errors a
# warm load fetches everything again).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem"  # nginx workers (another user) read it too
SPKI=$(openssl x509 -in "$work/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der \
  | openssl dgst -sha256 -binary | base64)

# The page: an EHR-like screen (a patient banner, a table), its assets of 1-10 KB each, the same
# bytes on every run (seeded), and no favicon request (an empty `data:` icon), so exactly 61
# requests. Scripts in <head> (blocking, as legacy pages have them), each
# counts itself; each stylesheet styles a probe element the driver checks.
mkdir -p "$work/www/ehr" "$work/nginx"
python3 - "$work/www/ehr" <<'EOF'
import random, struct, sys, zlib
out = sys.argv[1]
rnd = random.Random(42)
def words(n):
    return " ".join(rnd.choice(["patient", "order", "result", "allergy", "vital", "note", "med",
                                "dose", "chart", "ward", "bed", "lab", "panel", "visit"]) for _ in range(n))
def pad_to(text, size, line):
    parts = [text]
    while sum(map(len, parts)) < size:
        parts.append(line())
    return "".join(parts)
head, body = [], []
for i in range(20):
    size = rnd.randint(1000, 10000)
    css = f".probe-{i} {{ width: {i + 1}px; }}\n"
    css = pad_to(css, size, lambda: f".{rnd.choice('abcdefgh')}{rnd.randint(0, 99999)} {{ margin: {rnd.randint(0, 20)}px; color: #{rnd.randint(0, 0xffffff):06x}; }} /* {words(3)} */\n")
    open(f"{out}/s{i:02}.css", "w").write(css)
    head.append(f'<link rel="stylesheet" href="s{i:02}.css">')
    body.append(f'<span class="probe probe-{i}" id="probe-{i}"></span>')
for i in range(20):
    size = rnd.randint(1000, 10000)
    js = f"window.__pageloadScripts = (window.__pageloadScripts || 0) + 1;\n"
    js = pad_to(js, size, lambda: f"function f{rnd.randint(0, 10**9)}(a, b) {{ /* {words(4)} */ return a * {rnd.randint(1, 99)} + b; }}\n")
    open(f"{out}/j{i:02}.js", "w").write(js)
    head.append(f'<script src="j{i:02}.js"></script>')
def png(w, h):
    raw = b"".join(b"\0" + bytes(rnd.getrandbits(8) for _ in range(w * 3)) for _ in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
for i in range(10):
    side = rnd.randint(18, 56)  # noise does not compress: 1-9.5 KB
    open(f"{out}/i{i:02}.png", "wb").write(png(side, side))
    body.append(f'<img src="i{i:02}.png" alt="" width="{side}" height="{side}">')
for i in range(10):
    size = rnd.randint(1000, 10000)
    svg = '<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48" viewBox="0 0 48 48">\n'
    svg = pad_to(svg, size - 7, lambda: f'<circle cx="{rnd.randint(0, 48)}" cy="{rnd.randint(0, 48)}" r="{rnd.randint(1, 6)}" fill="#{rnd.randint(0, 0xffffff):06x}"/>\n') + "</svg>\n"
    open(f"{out}/v{i:02}.svg", "w").write(svg)
    body.append(f'<img src="v{i:02}.svg" alt="" width="48" height="48">')
rows = "\n".join(f"<tr><td>{rnd.randint(10**6, 10**7)}</td><td>{words(3)}</td><td>{rnd.randint(1, 300)}</td><td>{words(5)}</td></tr>" for _ in range(40))
html = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Chart - bed {rnd.randint(1, 40)}</title>
<link rel="icon" href="data:,">
{chr(10).join(head)}
</head><body>
<div class="banner">DOE, JANE - MRN {rnd.randint(10**6, 10**7)} - {words(4)}</div>
{chr(10).join(body)}
<table>{rows}</table>
</body></html>
"""
open(f"{out}/index.html", "w").write(html)
EOF
chmod -R a+rX "$work/www"

# Upstream: the page over plain HTTP (for the proxies) and over TLS with HTTP/2 (the direct row).
# nginx 1.22 takes `listen ... ssl http2` (the `http2 on` directive came in 1.25.1).
cat > "$work/nginx/upstream.conf" <<EOF
worker_processes $WORKERS; daemon off; pid $work/nginx/up.pid; error_log $work/nginx/up-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; include /etc/nginx/mime.types;
  ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
  server { listen 127.0.0.1:$P_UP; root $work/www; location / { add_header Cache-Control no-cache; } }
  server { listen 127.0.0.1:$P_DIRECT ssl http2; root $work/www; location / { add_header Cache-Control no-cache; } } }
EOF
cat > "$work/nginx/proxy.conf" <<EOF
worker_processes $WORKERS; daemon off; pid $work/nginx/proxy.pid; error_log $work/nginx/proxy-error.log;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
  upstream up { server 127.0.0.1:$P_UP; keepalive 64; }
  server { listen 127.0.0.1:$P_PROXY ssl http2;
    location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
EOF
nginx -c "$work/nginx/upstream.conf" -p "$work/nginx" & pids+=($!)
nginx -c "$work/nginx/proxy.conf" -p "$work/nginx" & pids+=($!)
wait_port "$P_UP"; wait_port "$P_DIRECT"; wait_port "$P_PROXY"

bench_policy "$work/policies" 127.0.0.1 "$P_UP"
gateway() { # name port admin http2
  gateway_yaml "$1" "{ addr: 127.0.0.1:$2, tls: { cert: $work/cert.pem, key: $work/key.pem }, http2: $4 }" \
    "$3" "https://localhost:$2" "embedded:$work/emb-$1" policies "$WORKERS"
  RUST_LOG=warn "$BIN" run --config "$work/$1.yaml" 2>"$work/$1.log" & pids+=($!)
  wait_port "$2"
}
# One instance per row (each its own embedded store): a session each, its cookie for that host.
COOKIE_GW2=$("$MINT" "embedded:$work/emb-gw2" 1 "127.0.0.1:$P_GW2")
COOKIE_GW1=$("$MINT" "embedded:$work/emb-gw1" 1 "127.0.0.1:$P_GW1")
gateway gw2 "$P_GW2" "$A2" true
gateway gw1 "$P_GW1" "$A1" false

rows=$(cat <<EOF
[{"key": "direct", "name": "direct (nginx TLS, serving the files)", "url": "https://127.0.0.1:$P_DIRECT/ehr/index.html", "protocol": "h2"},
 {"key": "nginx", "name": "nginx TLS proxy_pass", "url": "https://127.0.0.1:$P_PROXY/ehr/index.html", "protocol": "h2"},
 {"key": "aalgate-h2", "name": "aalgate, authenticated, http2 on", "url": "https://127.0.0.1:$P_GW2/ehr/index.html", "protocol": "h2", "cookie": "$COOKIE_GW2"},
 {"key": "aalgate-h1", "name": "aalgate, authenticated, http2: false", "url": "https://127.0.0.1:$P_GW1/ehr/index.html", "protocol": "http/1.1", "cookie": "$COOKIE_GW1"}]
EOF
)

echo "Machine: $(nproc) cores, $(uname -m); $(date -u +%Y-%m-%d). $("$CHROMIUM" --version 2>/dev/null | head -1 | sed 's/ *$//'), headless; $(nginx -v 2>&1 | sed 's/.*: //'); ${WORKERS} worker(s) for nginx and aalgate."
status=0
ROWS_JSON=$rows COLD=$COLD WARM=$WARM CHROMIUM=$CHROMIUM SPKI=$SPKI RAW=${RAW:-} node benches/pageload.mjs || status=$?
# The gateways' own account (audit log, one record per request): every load's 61 requests
# allowed for the minted session at AAL2 (the cold loads, each row's unmeasured first warm load
# and the warm loads), and only the driver's three requests without the cookie sent to sign-in.
if [ "$status" = 0 ] && [ "${AUDIT_REQUESTS:-true}" = true ]; then
  for g in gw2 gw1; do
    python3 - "$work/audit-$g.jsonl" $(((COLD + 1) * 61)) $((WARM * 61)) "$g" <<'EOF2' || status=1
import collections, json, sys
path, ok200, ok304, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
seen = collections.Counter()
for line in open(path):
    r = json.loads(line)
    if r.get("event") != "request":
        continue
    seen[(r.get("decision"), r.get("status"), r.get("user"), r.get("aal"))] += 1
want = {("allow", 200, "bench-user-000000", 2): ok200, ("login", 302, None, None): 3}
if ok304:
    want[("allow", 304, "bench-user-000000", 2)] = ok304
if dict(seen) != want:
    sys.exit(f"{name}: the audit log disagrees: {dict(seen)}, expected {want}")
EOF2
  done
  [ "$status" = 0 ] && echo "aalgate's audit logs agree: every request of every load allowed for the minted session at AAL2; only the 3 cookieless probes per gateway sent to sign-in."
fi
for g in gw2 gw1; do
  if grep -v '^\s*$' "$work/$g.log" | grep -q .; then echo "--- $g.log (aalgate's own log, RUST_LOG=warn):" >&2; tail -n 20 "$work/$g.log" >&2; fi
done
exit "$status"
