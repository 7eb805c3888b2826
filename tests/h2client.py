#!/usr/bin/env python3
"""An HTTP/2 client that sends what it is told, for the end-to-end tests (`tests/e2e/h2.rs`).

Reads a JSON list of requests on stdin and writes a JSON list of answers on stdout (with
`--lines`: one request per line, each answered on its own line as soon as it is done). Each request
goes on a fresh TLS connection with ALPN `h2` (hyper-h2 with every outbound check off, so
malformed headers, pseudo-headers in any order, connection-specific headers and uppercase names
reach the server exactly as given; header values and bodies are Latin-1 strings).

Request: {"port": 8443, "headers": [[":method", "GET"], [":path", "/"], ...], "body": "",
          "end": true, "wait": 0.0, "settle": 0.3}
  - `headers`, in order, pseudo-headers included (the caller decides which);
  - `body` is sent after the headers; the stream is ended after it unless `end` is false;
  - `wait`: seconds to keep reading after the body (for deadlines: the gateway must answer);
  - `alpn`: the protocols offered (default ["h2"]);
  - `reset_after`: seconds after which the client resets the stream (CANCEL).
Answer: {"alpn": "h2", "status": 200, "headers": [[n, v], ...], "body": "...",
         "reset": null or an error code name, "goaway": null or a code name, "elapsed": s}
With "streams": N, the request is opened N times on one connection and never ended (a flood
of stalled requests); the answer's "statuses" lists each stream's status and "resets" each one's reset code.
"""

import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.errors
import h2.events


def one(req):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(req.get("alpn", ["h2"]))
    raw = socket.create_connection(("127.0.0.1", req["port"]), timeout=5)
    sock = ctx.wrap_socket(raw, server_hostname="localhost")
    out = {"alpn": sock.selected_alpn_protocol(), "status": None, "headers": [], "body": "",
           "reset": None, "goaway": None, "elapsed": 0.0}
    if out["alpn"] != "h2":
        sock.close()
        return out
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, header_encoding="latin-1", validate_outbound_headers=False,
        normalize_outbound_headers=False, validate_inbound_headers=False,
        split_outbound_cookies=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    body = req.get("body", "").encode("latin-1")
    end = req.get("end", True)
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in req["headers"]]
    t0 = time.monotonic()
    conn.send_headers(sid, headers, end_stream=end and not body)
    sock.sendall(conn.data_to_send())
    deadline = time.monotonic() + max(5.0, req.get("wait", 0.0) + 5.0)
    data = bytearray()
    done = False
    sent = 0
    if not body and not end:
        sent = -1  # nothing to send, and the stream stays open
    reset_at = t0 + req["reset_after"] if "reset_after" in req else None
    while not done and time.monotonic() < deadline:
        if reset_at is not None and time.monotonic() >= reset_at:
            # The client gives up on the stream (a cancelled fetch, a closed tab).
            conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            sock.sendall(conn.data_to_send())
            time.sleep(0.2)
            out["reset"] = "sent CANCEL"
            break
        # The body as flow control allows; the stream ends with it unless told otherwise.
        while 0 <= sent < len(body):
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                       len(body) - sent)
            if room <= 0:
                break
            conn.send_data(sid, body[sent:sent + room], end_stream=end and sent + room == len(body))
            sent += room
            sock.sendall(conn.data_to_send())
        limit = deadline if reset_at is None else min(deadline, reset_at)
        sock.settimeout(max(0.05, limit - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            if reset_at is not None:
                continue
            break
        except (ssl.SSLError, ConnectionError):
            break
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                out["headers"] = [[n.decode("latin-1") if isinstance(n, bytes) else n,
                                   v.decode("latin-1") if isinstance(v, bytes) else v]
                                  for n, v in ev.headers]
                for n, v in out["headers"]:
                    if n == ":status":
                        out["status"] = int(v)
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == sid:
                out["reset"] = ev.error_code.name
                done = True
            elif isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
                data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                done = True
            elif isinstance(ev, h2.events.ConnectionTerminated):
                out["goaway"] = ev.error_code.name
                done = True
        try:
            sock.sendall(conn.data_to_send())
        except (ssl.SSLError, ConnectionError):
            break
    out["elapsed"] = time.monotonic() - t0
    out["body"] = data.decode("latin-1")
    sock.close()
    return out


def many(req):
    """`streams` streams on one connection, each the given headers and body, never ended:
    a flood of stalled requests. Answers each stream's status (None: none within `wait` + 5 s)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", req["port"]), timeout=5),
                           server_hostname="localhost")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(
        client_side=True, header_encoding="latin-1"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in req["headers"]]
    body = req.get("body", "").encode("latin-1")
    ids = []
    t0 = time.monotonic()
    for _ in range(req["streams"]):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers, end_stream=False)
        if body:
            conn.send_data(sid, body, end_stream=False)
        ids.append(sid)
    sock.sendall(conn.data_to_send())
    status = {}
    resets = {}
    open_ids = set(ids)
    deadline = time.monotonic() + req.get("wait", 0.0) + 5.0
    while open_ids and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ssl.SSLError, ConnectionError):
            break
        if not chunk:
            break
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ResponseReceived):
                for n, v in ev.headers:
                    if n in (b":status", ":status"):
                        status[ev.stream_id] = int(v)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                open_ids.discard(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                resets[ev.stream_id] = ev.error_code.name
                open_ids.discard(ev.stream_id)
        try:
            sock.sendall(conn.data_to_send())
        except (ssl.SSLError, ConnectionError):
            break
    sock.close()
    return {"alpn": "h2", "status": None, "headers": [], "body": "", "reset": None,
            "goaway": None, "elapsed": time.monotonic() - t0,
            "statuses": [status.get(i) for i in ids], "resets": [resets.get(i) for i in ids]}


def main():
    if sys.argv[1:] == ["--lines"]:
        # One request per line in, one answer per line out, until stdin ends.
        for line in sys.stdin:
            try:
                r = json.loads(line)
                a = many(r) if "streams" in r else one(r)
            except Exception as e:
                a = {"alpn": None, "status": None, "headers": [], "body": "", "reset": None,
                     "goaway": None, "error": repr(e), "elapsed": 0.0}
            sys.stdout.write(json.dumps(a) + "\n")
            sys.stdout.flush()
        return
    reqs = json.load(sys.stdin)
    out = []
    for r in reqs:
        try:
            out.append(many(r) if "streams" in r else one(r))
        except Exception as e:  # a refused connection is an answer too
            out.append({"alpn": None, "status": None, "headers": [], "body": "",
                        "reset": None, "goaway": None, "error": repr(e), "elapsed": 0.0})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
