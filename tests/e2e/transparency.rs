//! Legacy apps work unchanged behind the gateway: a real app nobody here wrote (httpbin, served
//! by gunicorn) answers the same directly and through aalgate with a session, except for the
//! documented added headers; bodies stream both ways.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aalgate_policy::Aal;
use aalgate_session::EmbeddedStore;
use aalgate_tests::{free_port, Gateway};

use crate::{link_session, make_session};

/// httpbin under gunicorn (pip install httpbin gunicorn; tests/run.sh does).
struct Httpbin {
    child: Child,
    port: u16,
}

impl Httpbin {
    fn start() -> Httpbin {
        // The real interpreter, not the pyenv shim, so the PID we kill is gunicorn's.
        let py = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3");
        let py = String::from_utf8_lossy(&py.stdout).trim().to_string();
        let port = free_port();
        let child = Command::new(&py)
            .args([
                "-m",
                "gunicorn",
                "-b",
                &format!("127.0.0.1:{port}"),
                "-w",
                "4",
                "-k",
                "sync",
                "--timeout",
                "30",
                "httpbin:app",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start gunicorn (pip install httpbin gunicorn)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "httpbin did not start (pip install httpbin gunicorn)"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Httpbin { child, port }
    }
}

impl Drop for Httpbin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read to EOF (requests say `Connection: close`), with the body de-chunked.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    first_body_byte: Option<Duration>,
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&b[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size else { return out };
        if size == 0 {
            return out;
        }
        let start = eol + 2;
        if b.len() < start + size {
            return out;
        }
        out.extend_from_slice(&b[start..start + size]);
        b = &b[(start + size + 2).min(b.len())..];
    }
}

fn exchange(port: u16, raw: &[u8]) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(15))).ok();
    s.write_all(raw).expect("write");
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut head_len = None;
    let mut first_body_byte = None;
    while let Ok(n @ 1..) = s.read(&mut chunk) {
        buf.extend_from_slice(&chunk[..n]);
        if head_len.is_none() {
            head_len = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
        }
        if let Some(h) = head_len {
            if first_body_byte.is_none() && buf.len() > h {
                first_body_byte = Some(t0.elapsed());
            }
        }
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => panic!("no response: {:?}", String::from_utf8_lossy(&buf)),
    };
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let raw_body = &buf[n..];
    let body = if chunked {
        dechunk(raw_body)
    } else {
        raw_body.to_vec()
    };
    Resp {
        status: r.code.unwrap_or(0),
        headers,
        body,
        first_body_byte,
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import gzip,sys; sys.stdout.buffer.write(gzip.decompress(sys.stdin.buffer.read()))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(b).unwrap();
    child.wait_with_output().unwrap().stdout
}

/// Headers that describe the connection or the moment, not the content.
const HOP: [&str; 5] = [
    "date",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
];
/// Headers the gateway documents as added.
const ADDED_RESPONSE: [&str; 2] = ["x-request-id", "strict-transport-security"];
/// Request headers the gateway documents as added upstream (httpbin echoes them).
const ADDED_REQUEST: [&str; 8] = [
    "X-Aalgate-User",
    "X-Aalgate-Aal",
    "X-Aalgate-Auth-Time",
    "X-Aalgate-Assertion",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "X-Request-Id",
];

fn content_headers(r: &Resp, through_gateway: bool) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| !HOP.contains(&k.as_str()))
        .filter(|(k, _)| !(through_gateway && ADDED_RESPONSE.contains(&k.as_str())))
        .cloned()
        .collect();
    h.sort();
    h
}

/// The body, with the documented added request headers (and hop-by-hop ones) removed from
/// httpbin's echo: one JSON document, or one per line (`/stream`).
fn comparable_body(r: &Resp) -> Vec<u8> {
    let gz = r
        .headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && v.contains("gzip"));
    if gz {
        // Compressed bytes differ with the echoed headers; compare what they say.
        let unzipped = Resp {
            status: r.status,
            headers: Vec::new(),
            body: gunzip(&r.body),
            first_body_byte: None,
        };
        return comparable_body(&unzipped);
    }
    let strip = |mut v: serde_json::Value| {
        if let Some(h) = v.get_mut("headers").and_then(|h| h.as_object_mut()) {
            for n in ADDED_REQUEST {
                h.remove(n);
            }
            h.remove("Connection");
            h.remove("Keep-Alive");
        }
        serde_json::to_vec(&v).unwrap_or_default()
    };
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
        return strip(v);
    }
    let text = String::from_utf8_lossy(&r.body);
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    let parsed: Option<Vec<serde_json::Value>> =
        lines.iter().map(|l| serde_json::from_str(l).ok()).collect();
    match parsed {
        Some(vs) if !vs.is_empty() => vs
            .into_iter()
            .flat_map(|v| {
                let mut b = strip(v);
                b.push(b'\n');
                b
            })
            .collect(),
        _ => r.body.clone(),
    }
}

/// Method, target, extra headers, body.
type Case = (&'static str, String, Vec<(&'static str, String)>, Vec<u8>);

#[test]
fn httpbin_answers_the_same_through_the_gateway() {
    let bin = Httpbin::start();
    let policy = format!(
        "app: httpbin\nhost: localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\n",
        bin.port
    );
    let g = Gateway::start(None, &[("httpbin.yaml", &policy)]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "nora",
        Aal::Aal2,
        60,
        1,
    );
    let host = format!("localhost:{}", g.port);
    let binary: Vec<u8> = (0..=255u8).cycle().take(3000).collect();
    let cases: Vec<Case> = vec![
        (
            "GET",
            "/anything?a=1&b=%20x&c=%E2%9C%93&d".into(),
            vec![
                ("X-Odd-Header", "  spaced  value ".into()),
                ("Accept-Language", "de-CH, en;q=0.5".into()),
            ],
            vec![],
        ),
        (
            "POST",
            "/anything/forms?x=1".into(),
            vec![("Content-Type", "application/x-www-form-urlencoded".into())],
            b"note=chest+pain&mrn=0012345".to_vec(),
        ),
        (
            "PUT",
            "/anything/bin".into(),
            vec![("Content-Type", "application/octet-stream".into())],
            binary.clone(),
        ),
        (
            "PATCH",
            "/anything/json".into(),
            vec![("Content-Type", "application/json".into())],
            br#"{"a":[1,2,3]}"#.to_vec(),
        ),
        ("DELETE", "/anything/7".into(), vec![], vec![]),
        (
            "OPTIONS",
            "/anything".into(),
            vec![("Origin", "https://portal.example".into())],
            vec![],
        ),
        ("HEAD", "/anything/head".into(), vec![], vec![]),
        ("GET", "/redirect/3".into(), vec![], vec![]),
        ("GET", "/absolute-redirect/2".into(), vec![], vec![]),
        (
            "GET",
            "/cookies/set?session_app=abc&theme=dark".into(),
            vec![],
            vec![],
        ),
        ("GET", "/stream/20".into(), vec![], vec![]),
        (
            "GET",
            "/gzip".into(),
            vec![("Accept-Encoding", "gzip".into())],
            vec![],
        ),
        ("GET", "/bytes/1048576?seed=7".into(), vec![], vec![]),
        ("GET", "/status/204".into(), vec![], vec![]),
        ("GET", "/status/304".into(), vec![], vec![]),
        ("GET", "/status/418".into(), vec![], vec![]),
        (
            "GET",
            "/etag/abc".into(),
            vec![("If-None-Match", "\"abc\"".into())],
            vec![],
        ),
        (
            "GET",
            "/response-headers?Vary=Accept&Cache-Control=max-age%3D60".into(),
            vec![],
            vec![],
        ),
        ("GET", "/delay/1".into(), vec![], vec![]),
    ];
    for (method, target, headers, body) in cases {
        let mut extra = String::new();
        for (k, v) in &headers {
            extra.push_str(&format!("{k}: {v}\r\n"));
        }
        let req = |cookie: Option<&str>| {
            let mut r = format!("{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: legacy-test\r\nAccept: */*\r\n{extra}");
            if let Some(c) = cookie {
                r.push_str(&format!("Cookie: aalgate={c}\r\n"));
            }
            if !body.is_empty() || !["GET", "DELETE", "OPTIONS", "HEAD"].contains(&method) {
                r.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            r.push_str("Connection: close\r\n\r\n");
            let mut b = r.into_bytes();
            b.extend_from_slice(&body);
            b
        };
        let direct = exchange(bin.port, &req(None));
        let via = exchange(g.port, &req(Some(&cookie)));
        let what = format!("{method} {target}");
        assert_eq!(direct.status, via.status, "{what}");
        assert_eq!(
            content_headers(&direct, false),
            content_headers(&via, true),
            "{what}: headers"
        );
        let (d, v) = (comparable_body(&direct), comparable_body(&via));
        assert!(
            d == v,
            "{what}: bodies differ:\n{}\n{}",
            String::from_utf8_lossy(&d[..d.len().min(600)]),
            String::from_utf8_lossy(&v[..v.len().min(600)])
        );
        if target.starts_with("/anything") && !via.body.is_empty() {
            let v: serde_json::Value = serde_json::from_slice(&via.body).unwrap();
            assert_eq!(v["headers"]["X-Aalgate-User"], "nora", "{what}");
        }
    }

    // A slow drip with a Content-Length (4 bytes over 4 s): the first byte arrives through the
    // gateway about when it does directly, not when the drip ends (nothing is held back).
    let drip = |port: u16, cookie: Option<&str>| {
        let c = cookie
            .map(|c| format!("Cookie: aalgate={c}\r\n"))
            .unwrap_or_default();
        exchange(
            port,
            format!("GET /drip?duration=4&numbytes=4&delay=0 HTTP/1.1\r\nHost: {host}\r\n{c}Connection: close\r\n\r\n").as_bytes(),
        )
    };
    let direct = drip(bin.port, None);
    let via = drip(g.port, Some(&cookie));
    assert_eq!((direct.status, via.status), (200, 200));
    assert_eq!(via.body, b"****");
    assert!(
        via.headers.iter().any(|(k, _)| k == "content-length"),
        "the drip has a Content-Length"
    );
    let (d, v) = (
        direct.first_body_byte.expect("a body"),
        via.first_body_byte.expect("a body"),
    );
    assert!(
        v < d + Duration::from_millis(500),
        "first byte after {v:?} through the gateway, {d:?} directly: the response was held"
    );
}

/// An app's cookies stay on its own host: a `Domain=` from the upstream (cross-app session
/// fixation on sibling hosts) is removed, every other attribute kept; an app that sets
/// `keep_cookie_domain: true` keeps it.
#[test]
fn upstream_cookies_stay_on_the_apps_own_host() {
    let bin = Httpbin::start();
    let app = |name: &str, extra: &str| {
        format!(
            "app: {name}\nhost: {name}.localhost\nupstream: http://127.0.0.1:{}\ndefault: aal2\n{extra}",
            bin.port
        )
    };
    let g = Gateway::start(
        None,
        &[
            ("billing.yaml", &app("billing", "")),
            ("portal.yaml", &app("portal", "keep_cookie_domain: true\n")),
        ],
    );
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let billing = format!("billing.localhost:{}", g.port);
    let on_billing = make_session(&store, &billing, "nora", Aal::Aal2, 60, 1);
    let on_portal = link_session(
        &store,
        &on_billing,
        &billing,
        &format!("portal.localhost:{}", g.port),
    );
    let target = "/response-headers?Set-Cookie=JSESSIONID%3DFIXED%3B%20Domain%3Dlocalhost%3B%20Path%3D%2F%3B%20HttpOnly&Set-Cookie=theme%3Ddark%3B%20domain%3D.localhost";
    for (app, want) in [
        (
            "billing",
            ["JSESSIONID=FIXED; Path=/; HttpOnly", "theme=dark"],
        ),
        (
            "portal",
            [
                "JSESSIONID=FIXED; Domain=localhost; Path=/; HttpOnly",
                "theme=dark; domain=.localhost",
            ],
        ),
    ] {
        let cookie = if app == "billing" {
            &on_billing
        } else {
            &on_portal
        };
        let r = exchange(
            g.port,
            format!("GET {target} HTTP/1.1\r\nHost: {app}.localhost:{}\r\nCookie: aalgate={cookie}\r\nConnection: close\r\n\r\n", g.port).as_bytes(),
        );
        assert_eq!(r.status, 200, "{app}");
        let set: Vec<&str> = r
            .headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(set, want, "{app}");
    }
}

/// Reads a request with a Content-Length body without keeping it; answers with the count.
fn sink() -> (u16, std::thread::JoinHandle<u64>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                return 0;
            }
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let len: u64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
            .unwrap_or(0);
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        while got < len {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
        let body = got.to_string();
        let _ = s.write_all(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        got
    });
    (port, h)
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

#[test]
fn a_200_mib_upload_streams_with_bounded_gateway_memory() {
    let (port, done) = sink();
    let policy =
        format!("app: sink\nhost: localhost\nupstream: http://127.0.0.1:{port}\ndefault: aal2\n");
    let g = Gateway::start(None, &[("sink.yaml", &policy)]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "nora",
        Aal::Aal2,
        60,
        1,
    );
    let before = rss_kib(g.pid(), "VmRSS:");
    const SIZE: u64 = 200 * 1024 * 1024;
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    s.write_all(format!("POST /upload HTTP/1.1\r\nHost: localhost:{}\r\nCookie: aalgate={cookie}\r\nContent-Type: application/octet-stream\r\nContent-Length: {SIZE}\r\nConnection: close\r\n\r\n", g.port).as_bytes()).unwrap();
    let block = vec![0x5au8; 1 << 20];
    let mut peak = 0;
    for i in 0..(SIZE >> 20) {
        s.write_all(&block).unwrap();
        if i % 16 == 0 {
            peak = peak.max(rss_kib(g.pid(), "VmRSS:"));
        }
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&SIZE.to_string()), "{out}");
    assert_eq!(done.join().unwrap(), SIZE);
    let grew = peak.saturating_sub(before);
    assert!(
        grew < 64 * 1024,
        "gateway RSS grew {grew} KiB during a 200 MiB upload (before {before} KiB)"
    );
}

/// A WebSocket echo server: answers the handshake, then echoes each (small) text frame.
pub(crate) fn ws_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let key = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .starts_with("sec-websocket-key:")
                            .then(|| l[18..].trim().to_string())
                    })
                    .unwrap_or_default();
                let mut h = sha1_smol::Sha1::new();
                h.update(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
                use base64::Engine;
                let accept = base64::engine::general_purpose::STANDARD.encode(h.digest().bytes());
                let _ = s.write_all(format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").as_bytes());
                loop {
                    let mut hdr = [0u8; 2];
                    if s.read_exact(&mut hdr).is_err() {
                        return;
                    }
                    let len = usize::from(hdr[1] & 0x7f);
                    let mut mask = [0u8; 4];
                    let mut payload = vec![0u8; len];
                    if s.read_exact(&mut mask).is_err() || s.read_exact(&mut payload).is_err() {
                        return;
                    }
                    for (i, p) in payload.iter_mut().enumerate() {
                        *p ^= mask[i % 4];
                    }
                    let mut out = vec![0x81, len as u8];
                    out.extend_from_slice(&payload);
                    if s.write_all(&out).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn ws_frame(text: &str) -> Vec<u8> {
    let mask = [1u8, 2, 3, 4];
    let mut f = vec![0x81, 0x80 | text.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Opens a WebSocket through the gateway; returns the stream after the 101.
fn ws_open(port: u16, cookie: &str) -> TcpStream {
    ws_open_on(port, &format!("localhost:{port}"), cookie)
}

/// [`ws_open`] on another host.
pub(crate) fn ws_open_on(port: u16, host: &str, cookie: &str) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(format!("GET /socket HTTP/1.1\r\nHost: {host}\r\nCookie: aalgate={cookie}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).unwrap(),
            1,
            "closed during the handshake: {}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "the upstream's accept reached the client: {head}"
    );
    s
}

/// [`ws_echoes`], saying what went wrong.
pub(crate) fn ws_roundtrip(s: &mut TcpStream, text: &str) -> Result<(), String> {
    s.write_all(&ws_frame(text))
        .map_err(|e| format!("write: {e}"))?;
    let mut hdr = [0u8; 2];
    s.read_exact(&mut hdr)
        .map_err(|e| format!("read the frame header: {e}"))?;
    let mut payload = vec![0u8; usize::from(hdr[1] & 0x7f)];
    s.read_exact(&mut payload)
        .map_err(|e| format!("read the payload after {hdr:?}: {e}"))?;
    if payload == text.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "got {hdr:?} {:?}",
            String::from_utf8_lossy(&payload)
        ))
    }
}

pub(crate) fn ws_echoes(s: &mut TcpStream, text: &str) -> bool {
    if s.write_all(&ws_frame(text)).is_err() {
        return false;
    }
    let mut hdr = [0u8; 2];
    if s.read_exact(&mut hdr).is_err() {
        return false;
    }
    let mut payload = vec![0u8; usize::from(hdr[1] & 0x7f)];
    s.read_exact(&mut payload).is_ok() && payload == text.as_bytes()
}

#[test]
fn websockets_pass_and_close_when_the_session_ends() {
    let up = ws_echo();
    let policy =
        format!("app: ws\nhost: localhost\nupstream: http://127.0.0.1:{up}\ndefault: aal2\n");
    let g = Gateway::start(None, &[("ws.yaml", &policy)]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();

    // No session: the upgrade itself is refused.
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(format!("GET /socket HTTP/1.1\r\nHost: localhost:{}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", g.port).as_bytes()).unwrap();
    let mut out = [0u8; 12];
    s.read_exact(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 302") || out.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    // A session 3 s before its absolute limit (AAL2: 12 h): open, echo, then closed.
    let ending = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "wendy",
        Aal::Aal2,
        12 * 3600 - 3,
        1,
    );
    let mut ws = ws_open(g.port, &ending);
    assert!(ws_echoes(&mut ws, "hello"));
    std::thread::sleep(Duration::from_millis(3500));
    let t = Instant::now();
    assert!(
        !ws_echoes(&mut ws, "after the limit"),
        "a frame passed after the session's absolute limit"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "closed only after {:?}",
        t.elapsed()
    );

    // A silent client is disconnected when the session ends, without sending anything.
    let ending = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "sam",
        Aal::Aal2,
        12 * 3600 - 2,
        1,
    );
    let mut ws = ws_open(g.port, &ending);
    let t = Instant::now();
    let mut b = [0u8; 1];
    // Ok(0) is the close; a read timeout (Err) means it stayed open.
    assert!(
        matches!(ws.read(&mut b), Ok(0)),
        "a silent connection stayed open"
    );
    // The limit falls 1 to 2 s after the session was made, and is checked once a second.
    assert!(
        t.elapsed() < Duration::from_millis(3300),
        "closed only after {:?}",
        t.elapsed()
    );

    // Revocation (any instance, or the CLI) closes a live connection too: a quiet one at once
    // (within the 1 s check), without waiting for a frame.
    let live = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "victor",
        Aal::Aal2,
        60,
        1,
    );
    let mut ws = ws_open(g.port, &live);
    assert!(ws_echoes(&mut ws, "hi"));
    crate::rt()
        .block_on(aalgate_session::SessionStore::revoke_user(&store, "victor"))
        .unwrap();
    let t = Instant::now();
    assert!(
        matches!(ws.read(&mut b), Ok(0)),
        "a revoked session's connection stayed open"
    );
    // Within the once-a-second check, not the one after.
    assert!(
        t.elapsed() < Duration::from_millis(1600),
        "closed only after {:?}",
        t.elapsed()
    );
    assert!(!ws_echoes(&mut ws, "after revocation"));
    // The gateway still serves new connections after closing those.
    let fresh = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "wanda",
        Aal::Aal2,
        60,
        1,
    );
    let mut ws = ws_open(g.port, &fresh);
    assert!(ws_echoes(&mut ws, "still here"));
    assert!(!g.log().contains("panicked"));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let up = aalgate_tests::Upstream::start();
    let g = Gateway::start(None, &[("billing.yaml", &crate::policy(up.port))]);
    let store = EmbeddedStore::open(&g.state_dir()).unwrap();
    let cookie = make_session(
        &store,
        &format!("localhost:{}", g.port),
        "nora",
        Aal::Aal2,
        60,
        1,
    );
    let h = format!("localhost:{}", g.port);
    // Two allowed requests on one connection, sent at once.
    let raw = format!(
        "GET /first HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\n\r\nGET /second HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\nConnection: close\r\n\r\n"
    );
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    // pingora answers the first and closes rather than read a pipelined request from the same
    // buffer: safe (no desynchronisation), and HTTP/1.1 clients resend unanswered requests.
    // Whatever it answers, it answers in order, and only what it answered went upstream.
    let answered = text.matches("HTTP/1.1 200").count();
    let paths: Vec<String> = up.seen().iter().map(|r| r.target.clone()).collect();
    assert!(
        answered >= 1 && paths.len() == answered,
        "{answered} answers for {paths:?}"
    );
    assert_eq!(paths[..], ["/first", "/second"][..answered]);
    let first = text.find("\"/first\"").expect("the first answer");
    assert!(
        text.find("\"/second\"").is_none_or(|second| second > first),
        "out of order: {text}"
    );
    // A request the gateway answers itself (sign-in needed) with a body still on the wire: the
    // connection closes, so nothing behind it is read as the next request.
    let raw = format!(
        "POST /api/x HTTP/1.1\r\nHost: {h}\r\nAccept: application/json\r\nContent-Length: 100\r\n\r\npartial"
    );
    let mut s = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(raw.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let _ = s.write_all(
        format!("GET /smuggled HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\n\r\n")
            .as_bytes(),
    );
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert!(!up.seen().iter().any(|r| r.target == "/smuggled"));
}

/// A browser that goes away mid-response (an image aborted when the person navigates on) is
/// no failure of the gateway: no WARN line in its log, and its own outcome, `client_gone`.
#[test]
fn a_client_that_goes_away_is_not_a_warning() {
    let bin = Httpbin::start();
    let g = Gateway::start(None, &[("billing.yaml", &crate::policy(bin.port))]);
    let h = format!("localhost:{}", g.port);
    let cookie = make_session(
        &EmbeddedStore::open(&g.state_dir()).unwrap(),
        &h,
        "nora",
        Aal::Aal2,
        60,
        1,
    );
    let mut c = TcpStream::connect(("127.0.0.1", g.port)).unwrap();
    write!(
        c,
        "GET /drip?duration=3&numbytes=30&delay=0 HTTP/1.1\r\nHost: {h}\r\nCookie: aalgate={cookie}\r\n\r\n"
    )
    .unwrap();
    // The head and the first bytes arrive; then the browser is gone.
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    drop(c);
    let scrape = aalgate_tests::eventually(
        Duration::from_secs(10),
        "the request counted as client_gone",
        || {
            let m = g.scrape();
            m.contains("decision=\"client_gone\"").then_some(m)
        },
    );
    assert!(scrape.contains("app=\"billing\""), "{scrape}");
    let log = g.log();
    assert!(
        !log.lines()
            .any(|l| (l.contains("WARN") || l.contains("ERROR"))
                && (l.contains("proxying failed") || l.contains("Fail to proxy"))),
        "{log}"
    );
}
