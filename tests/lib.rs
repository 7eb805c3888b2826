//! Test harness for the end-to-end suite: real processes on loopback ports picked at run time,
//! each stopped when its handle drops.
//!
//! - [`Upstream`]: an HTTP/1.1 echo server that records every request it receives;
//! - [`Redis`]: a real `redis-server` (append-only file, so data survives a restart);
//! - [`Gateway`]: the built `aalgate` binary with a generated config;
//! - [`send`]: a raw-bytes HTTP client, so hostile requests go out exactly as written.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub mod cluster;

/// A free loopback port (bound and released; fine for tests).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, what: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within {timeout:?}");
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

static BUILD: Once = Once::new();

/// The `aalgate` binary next to this test executable, built first if needed.
pub fn aalgate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("AALGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("aalgate");
    BUILD.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "-p", "aalgate", "--bin", "aalgate"])
            .current_dir(workspace())
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build -p aalgate failed");
    });
    bin
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Request target as received.
    pub target: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// Body length.
    pub body_len: usize,
    /// FNV-1a hash of the body (see [`fnv1a`]): the bytes and their order.
    pub body_hash: u64,
    /// Whether the whole body arrived (false: the connection ended, or its chunking broke,
    /// after the head).
    pub complete: bool,
}

/// All values of header `name` in a lowercased header list.
fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

impl Seen {
    /// All values of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
    /// The only value of a header (panics if several).
    pub fn one(&self, name: &str) -> Option<&str> {
        let v = self.all(name);
        assert!(
            v.len() <= 1,
            "header {name} appears {} times: {v:?}",
            v.len()
        );
        v.first().copied()
    }
}

/// Requests as they arrive: each is recorded when its head parses (`complete: false`), and
/// completed in place once its body has arrived.
type Record = Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>;

fn snapshot(v: &[Arc<Mutex<Seen>>]) -> Vec<Seen> {
    v.iter()
        .filter_map(|s| s.lock().ok().map(|s| s.clone()))
        .collect()
}

/// An echo upstream on its own thread. `/setcookie` answers with Set-Cookie headers. A
/// request is recorded as soon as its head parses, so a head whose body never arrives whole
/// (the gateway abandoned it) shows as `complete: false`.
pub struct Upstream {
    /// Port.
    pub port: u16,
    seen: Record,
}

impl Upstream {
    /// Starts it.
    pub fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let seen = s2.clone();
                std::thread::spawn(move || serve_conn(conn, seen));
            }
        });
        Upstream { port, seen }
    }

    /// Every request received so far (those whose body is still arriving as incomplete).
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().map(|v| snapshot(&v)).unwrap_or_default()
    }

    /// Every request received so far, forgotten at once (none can slip between read and clear).
    pub fn take(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .map(|mut v| snapshot(&std::mem::take(&mut *v)))
            .unwrap_or_default()
    }

    /// Forgets recorded requests.
    pub fn clear(&self) {
        if let Ok(mut v) = self.seen.lock() {
            v.clear();
        }
    }
}

/// Reads the next request off `conn`: its head and its body, by `Content-Length` or chunked
/// (what follows stays in `buf` for the next call). `None` at EOF before a head or on a read
/// error. A head that does not parse is returned as method `<malformed>` (and the rest of the
/// buffer dropped), so a test sees that *something* reached the upstream. A head whose body
/// does not arrive whole (EOF mid-body, or chunking that does not parse) is returned with
/// `complete: false`: the upstream saw that head, which a test must account for.
pub fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let mut seen = read_head(conn, buf)?;
    if seen.complete && read_body(conn, buf, &mut seen).is_none() {
        buf.clear();
        seen.complete = false;
    }
    Some(seen)
}

/// Reads the next head off `conn` (`complete: true` until its body is read; `<malformed>`,
/// incomplete, when it does not parse). `None` at EOF or on a read error.
fn read_head(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let hs = header_list(req.headers);
                let seen = Seen {
                    method: req.method.unwrap_or("").to_string(),
                    target: req.path.unwrap_or("").to_string(),
                    headers: hs,
                    body_len: 0,
                    body_hash: 0,
                    complete: true,
                };
                buf.drain(..head_len);
                return Some(seen);
            }
            Ok(httparse::Status::Partial) => fill(conn, buf)?,
            Err(_) => {
                let target = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
                buf.clear();
                return Some(Seen {
                    method: "<malformed>".into(),
                    target,
                    headers: Vec::new(),
                    body_len: 0,
                    body_hash: 0,
                    complete: false,
                });
            }
        }
    }
}

/// Reads the body of `seen` (by `Content-Length` or chunked) off `conn`, adding chunked
/// trailers to its headers. `None` when it does not arrive whole.
fn read_body(conn: &mut TcpStream, buf: &mut Vec<u8>, seen: &mut Seen) -> Option<()> {
    let chunked = seen
        .headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if !chunked {
        let cl: usize = seen
            .headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < cl {
            fill(conn, buf)?;
        }
        seen.body_hash = fnv1a_more(FNV_START, &buf[..cl]);
        buf.drain(..cl);
        seen.body_len = cl;
        return Some(());
    }
    // Chunked: size line, data, CRLF; then trailers up to an empty line.
    loop {
        let line = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..i]).into_owned();
                buf.drain(..i + 2);
                break line;
            }
            fill(conn, buf)?;
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        if size > 64 << 20 {
            return None;
        }
        if size == 0 {
            // Trailers count as headers: a backend may merge them.
            loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    let line = String::from_utf8_lossy(&buf[..i]).into_owned();
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Some(());
                    }
                    if let Some((n, v)) = line.split_once(':') {
                        seen.headers
                            .push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                    }
                } else {
                    fill(conn, buf)?;
                }
            }
        }
        while buf.len() < size + 2 {
            fill(conn, buf)?;
        }
        if &buf[size..size + 2] != b"\r\n" {
            return None;
        }
        if seen.body_len == 0 {
            seen.body_hash = FNV_START;
        }
        seen.body_hash = fnv1a_more(seen.body_hash, &buf[..size]);
        buf.drain(..size + 2);
        seen.body_len += size;
    }
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a_more(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// FNV-1a of `bytes`, as [`Seen::body_hash`] holds it for a body the upstream received.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_more(FNV_START, bytes)
}

/// Reads more bytes into `buf`; `None` at EOF or on an error.
fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match conn.read(&mut chunk) {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn serve_conn(mut conn: TcpStream, seen: Record) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    while let Some(mut s) = read_head(&mut conn, &mut buf) {
        let (method, target) = (s.method.clone(), s.target.clone());
        let malformed = !s.complete;
        s.complete = false;
        let entry = Arc::new(Mutex::new(s.clone()));
        if let Ok(mut v) = seen.lock() {
            v.push(entry.clone());
        }
        if malformed || read_body(&mut conn, &mut buf, &mut s).is_none() {
            return;
        }
        s.complete = true;
        if let Ok(mut e) = entry.lock() {
            *e = s.clone();
        }
        let body = serde_json::json!({ "method": method, "target": target, "headers": s.headers })
            .to_string();
        let extra = if target.contains("setcookie") {
            "Set-Cookie: aalgate=planted; Path=/\r\nSet-Cookie: __Host-aalgate=planted; Path=/; Secure\r\nSet-Cookie: =aalgate=planted\r\nSet-Cookie: app=1; Path=/\r\n"
        } else {
            ""
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if conn.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// A real redis-server on a free port, with an append-only file so a restart keeps the data.
pub struct Redis {
    /// Port.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Persistence arguments of the next start.
    persistence: Vec<String>,
}

/// Finds `redis-server` or explains how to get it.
pub fn redis_server_bin() -> String {
    for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("redis-server not found: install it (apt-get install -y redis-server) or run tests/run.sh, which does");
}

impl Redis {
    /// Starts it.
    pub fn start() -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            persistence: [
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ]
            .map(String::from)
            .to_vec(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new(redis_server_bin())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(&self.persistence)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_port(self.port, "redis-server", Duration::from_secs(10));
    }

    /// `redis://127.0.0.1:PORT/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Runs one inline command (e.g. `INFO commandstats`) and returns the reply as text.
    pub fn command(&self, cmd: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect redis");
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(format!("{cmd}\r\n").as_bytes());
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&buf);
            // A simple reply (+OK), or a bulk reply ($len then the data) once complete.
            if text.starts_with('+') || text.starts_with('-') || text.starts_with(':') {
                if text.ends_with("\r\n") {
                    break;
                }
            } else if let Some(rest) = text.strip_prefix('$') {
                if let Some((len, data)) = rest.split_once("\r\n") {
                    if len.parse::<usize>().is_ok_and(|l| data.len() >= l + 2) {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// How many times Redis ran `cmd` since the last `CONFIG RESETSTAT` (0 when never).
    pub fn calls(&self, cmd: &str) -> u64 {
        let info = self.command("INFO commandstats");
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Stops the server (SIGKILL: as abrupt as a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's process id (for a script that freezes it at a moment of its choosing).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing answers, like a hung
    /// or overloaded store.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg(sig)
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Crashes it (SIGKILL) and starts it again with other persistence arguments, e.g.
    /// `["--appendonly", "no"]` to load the last RDB snapshot instead of the append-only file.
    pub fn restart_with(&mut self, persistence: &[&str]) {
        self.stop();
        self.persistence = persistence.iter().map(|s| s.to_string()).collect();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What browsers reach the gateway's listener through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Front {
    Plain,
    Tls,
    TlsLoadBalancer,
}

/// A running gateway.
pub struct Gateway {
    /// Public port.
    pub port: u16,
    /// Extra environment of the process (e.g. libfaketime's).
    env: Vec<(String, String)>,
    /// Admin port.
    pub admin_port: u16,
    /// Its working directory (config, policies, state, log).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    config: PathBuf,
}

impl Gateway {
    /// Starts `aalgate run` with `store` (`embedded:<dir>` is filled in when `None`) and the
    /// given policy files (name, YAML).
    pub fn start(store: Option<&str>, policies: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(store, policies, Front::Plain, "", None)
    }

    /// As [`Gateway::start`], with extra top-level config (e.g. an `audit:` section).
    pub fn start_extra(policies: &[(&str, &str)], extra: &str) -> Gateway {
        Gateway::start_with(None, policies, Front::Plain, extra, None)
    }

    /// As [`Gateway::start`] with a store, plus extra top-level config.
    pub fn start_with_store_extra(store: &str, policies: &[(&str, &str)], extra: &str) -> Gateway {
        Gateway::start_with(Some(store), policies, Front::Plain, extra, None)
    }

    /// As [`Gateway::start`], with a TLS listener (a throwaway self-signed cert for localhost).
    pub fn start_tls(policies: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(None, policies, Front::Tls, "", None)
    }

    /// As [`Gateway::start_tls`], with extra config lines.
    pub fn start_tls_extra(policies: &[(&str, &str)], extra: &str) -> Gateway {
        Gateway::start_with(None, policies, Front::Tls, extra, None)
    }

    /// As [`Gateway::start_extra`], as deployed behind a TLS-terminating load balancer: a
    /// plain listener with `external_port: 443`, `insecure_http: true` and
    /// `public_origin: https://localhost`. Requests reach it in plain HTTP, with a `Host`
    /// header without a port (the browser's `https://...:443`).
    pub fn start_behind_tls_lb(policies: &[(&str, &str)], extra: &str) -> Gateway {
        Gateway::start_with(None, policies, Front::TlsLoadBalancer, extra, None)
    }

    /// As [`Gateway::start_extra`], with extra environment variables for the process.
    pub fn start_env(policies: &[(&str, &str)], extra: &str, env: &[(&str, &str)]) -> Gateway {
        let mut g = Gateway::start_with(None, policies, Front::Plain, extra, None);
        g.stop();
        g.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        g.spawn();
        g
    }

    /// As [`Gateway::start_extra`], with a second plain listener on `second` (the listeners
    /// are named `main` and `second`; the auth origin is on the first).
    pub fn start_two_listeners(policies: &[(&str, &str)], second: u16, extra: &str) -> Gateway {
        Gateway::start_with(None, policies, Front::Plain, extra, Some(second))
    }

    fn start_with(
        store: Option<&str>,
        policies: &[(&str, &str)],
        front: Front,
        extra: &str,
        second: Option<u16>,
    ) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let pdir = dir.path().join("policies");
        std::fs::create_dir_all(&pdir).expect("mkdir");
        for (name, yaml) in policies {
            std::fs::write(pdir.join(name), yaml).expect("write policy");
        }
        let (port, admin_port) = (free_port(), free_port());
        let store = store
            .map(str::to_string)
            .unwrap_or_else(|| format!("embedded:{}", dir.path().join("state").display()));
        // A section (`{sentinels: …}`) as written; a string quoted.
        let store = if store.starts_with('{') {
            store
        } else {
            format!("\"{store}\"")
        };
        let config = dir.path().join("aalgate.yaml");
        let tls = front == Front::Tls;
        let tls_line = if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let ok = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=localhost",
                    "-addext",
                    "subjectAltName=DNS:localhost",
                ])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run openssl (apt-get install -y openssl)");
            assert!(ok.success(), "openssl could not make a test certificate");
            format!(
                "\n    tls: {{ cert: {}, key: {} }}",
                cert.display(),
                key.display()
            )
        } else if front == Front::TlsLoadBalancer {
            "\n    external_port: 443".to_string()
        } else {
            String::new()
        };
        let origin = match front {
            Front::Plain => format!("http://localhost:{port}"),
            Front::Tls => format!("https://localhost:{port}"),
            Front::TlsLoadBalancer => "https://localhost\ninsecure_http: true".to_string(),
        };
        let more = second
            .map(|p| format!("\n    name: main\n  - addr: 127.0.0.1:{p}\n    name: second"))
            .unwrap_or_default();
        // 1 s unless `extra` sets its own (`store_timeout: default` keeps the product default).
        let deadline = if extra.contains("store_timeout:") {
            ""
        } else {
            "store_timeout: 1s\n"
        };
        let extra = extra.replace("store_timeout: default\n", "");
        let yaml = format!(
            "listen:\n  - addr: 127.0.0.1:{port}{tls_line}{more}\nadmin_listen: 127.0.0.1:{admin_port}\npublic_origin: {origin}\n\
store: {store}\n{deadline}policies: policies\nstate_dir: state\nthreads: 2\nsession_count_interval: 1s\nshutdown_grace: 3s\n"
        );
        std::fs::write(&config, format!("{yaml}{extra}")).expect("write config");
        let mut g = Gateway {
            port,
            env: Vec::new(),
            admin_port,
            dir,
            child: None,
            config,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .expect("log");
        let child = Command::new(aalgate_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start aalgate");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.admin_port)).is_ok()
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("aalgate exited at start ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "aalgate did not listen on {} and {} within 20 s:\n{}",
            self.port,
            self.admin_port,
            self.log()
        );
    }

    /// The policy directory (edit it to test reloads).
    pub fn policy_dir(&self) -> PathBuf {
        self.dir.path().join("policies")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (`-HUP`, `-QUIT`, `-TERM`) to the gateway.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status();
    }

    /// Starts a second process with the same config and `--upgrade`, to take over the listeners
    /// once this one gets SIGQUIT. The caller waits for it and kills it.
    pub fn spawn_upgrade(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .expect("log");
        Command::new(aalgate_bin())
            .arg("run")
            .arg("--upgrade")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start upgrading aalgate")
    }

    /// Waits up to `timeout` for the process to exit; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops and starts the gateway with the same config and state.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the gateway.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asserts the log has no WARN or ERROR line: what clients cause must not fill it.
    pub fn assert_quiet(&self, what: &str) {
        self.assert_quiet_but(what, "\0");
    }

    /// As [`Gateway::assert_quiet`], leaving out lines that contain `except`.
    pub fn assert_quiet_but(&self, what: &str, except: &str) {
        let log = self.log();
        let loud: Vec<&str> = log
            .lines()
            .filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains(except))
            .collect();
        assert!(
            loud.is_empty(),
            "{what}: {} lines logged loudly:\n{}",
            loud.len(),
            loud.join("\n")
        );
    }

    /// The embedded state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Whether the process is still running (no panic took it down).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The admin listener's Prometheus scrape.
    pub fn scrape(&self) -> String {
        get(
            self.admin_port,
            &format!("127.0.0.1:{}", self.admin_port),
            "/metrics",
            &[],
        )
        .text()
    }

    /// The gateway's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `timeout` with `what`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of one sample in a Prometheus text scrape, e.g. `aalgate_store_up` or
/// `aalgate_session_ends_total{reason="idle"}` (labels as the exposition writes them).
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Finds `promtool` or explains how to get it.
pub fn promtool() -> String {
    for p in ["/usr/bin/promtool", "/usr/local/bin/promtool"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("promtool not found: install it (apt-get install -y prometheus) or run tests/run.sh, which does");
}

/// A parsed response.
#[derive(Debug)]
pub struct Response {
    /// Status (0: no response).
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        values(&self.headers, name).first().copied()
    }
    /// All values of a header.
    pub fn all(&self, name: &str) -> Vec<&str> {
        values(&self.headers, name)
    }
    /// Body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// Body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

fn header_list(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// Sends raw bytes and reads one response (until its length is complete, EOF, or 5 s).
/// Panics when nothing accepts the connection (see [`try_send`]).
pub fn send(port: u16, raw: &[u8]) -> Response {
    try_send(port, raw).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// [`send`], with a refused connection as an error: for load threads, whose panics a join
/// would have to report.
pub fn try_send(port: u16, raw: &[u8]) -> std::io::Result<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    Ok(read_response(&mut s, raw))
}

fn read_response(s: &mut TcpStream, raw: &[u8]) -> Response {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = s.write_all(raw);
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
            let status = resp.code.unwrap_or(0);
            let hs = header_list(resp.headers);
            let cl = hs
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse::<usize>().ok());
            let head_only = raw.starts_with(b"HEAD ") || status == 204 || status == 304;
            if let Some(cl) = cl {
                if head_only || buf.len() >= n + cl {
                    let body = if head_only {
                        Vec::new()
                    } else {
                        buf[n..n + cl].to_vec()
                    };
                    return Response {
                        status,
                        headers: hs,
                        body,
                    };
                }
            }
        }
        if Instant::now() > deadline {
            break;
        }
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => Response {
            status: resp.code.unwrap_or(0),
            headers: header_list(resp.headers),
            body: buf[n..].to_vec(),
        },
        _ => Response {
            status: 0,
            headers: Vec::new(),
            body: buf,
        },
    }
}

/// A GET with extra header lines (`"Name: value"`), `Connection: close`.
pub fn get(port: u16, host: &str, target: &str, extra: &[&str]) -> Response {
    try_get(port, host, target, extra)
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
}

/// [`get`], with a refused connection as an error (see [`try_send`]).
pub fn try_get(port: u16, host: &str, target: &str, extra: &[&str]) -> std::io::Result<Response> {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for h in extra {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    try_send(port, req.as_bytes())
}

/// A browser binding and its CSRF token, the way a browser gets them: the sign-out
/// confirmation page sets the binding cookie and carries the token in its form. Returns the
/// binding cookie's value and the token.
pub fn browser_binding(port: u16, host: &str) -> (String, String) {
    let page = get(port, host, "/.aalgate/logout", &[]);
    assert_eq!(page.status, 200, "{}", page.text());
    let bind = page
        .all("set-cookie")
        .into_iter()
        .find_map(|c| {
            c.strip_prefix("aalgate-bind=")
                .or_else(|| c.strip_prefix("__Host-aalgate-bind="))
        })
        .and_then(|c| c.split(';').next())
        .expect("binding cookie")
        .to_string();
    let token = page
        .text()
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .expect("csrf token in the form")
        .to_string();
    (bind, token)
}

/// Types a break-glass `code` into the form on `host` the way a browser does (the page's
/// binding and token, a same-origin POST), as client `client` through a trusted proxy's
/// `X-Forwarded-For` when given.
pub fn use_breakglass_code(port: u16, host: &str, client: Option<&str>, code: &str) -> Response {
    let (bind, token) = browser_binding(port, host);
    let body = format!("csrf={token}&code={code}&person=Dr.+Ada+Example&reason=badge+reader+down");
    let xff = client
        .map(|ip| format!("X-Forwarded-For: {ip}\r\n"))
        .unwrap_or_default();
    send(
        port,
        format!(
            "POST /.aalgate/breakglass HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n\
{xff}Cookie: aalgate-bind={bind}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// Signs out the way a browser does: the confirmation page (which sets the browser-binding
/// cookie and carries the CSRF token in its form), then a same-origin form POST with both.
/// `cookie` is the session cookie value (`aalgate=...`).
pub fn logout(port: u16, host: &str, cookie: &str) -> Response {
    let (bind, token) = browser_binding(port, host);
    let bind = format!("aalgate-bind={bind}");
    let body = format!("csrf={token}");
    send(
        port,
        format!(
            "POST /.aalgate/logout HTTP/1.1\r\nHost: {host}\r\nOrigin: http://{host}\r\nSec-Fetch-Site: same-origin\r\n\
Cookie: aalgate={cookie}; {bind}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
}

/// Runs `aalgate ARGS... --config <the gateway's config>`: (exit code, stdout, stderr).
pub fn cli(g: &Gateway, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(aalgate_bin())
        .args(args)
        .arg("--config")
        .arg(g.dir.path().join("aalgate.yaml"))
        .output()
        .expect("run aalgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Verifies an assertion with PyJWT (an implementation independent of the gateway's), against
/// the gateway's JWKS, audience and issuer. Returns the claims, or PyJWT's error text.
pub fn pyjwt_decode(
    token: &str,
    jwks: &str,
    audience: &str,
    issuer: &str,
) -> Result<serde_json::Value, String> {
    const SCRIPT: &str = r#"
import json, sys, jwt
token, jwks, aud, iss = sys.argv[1:5]
key = jwt.PyJWK(json.loads(jwks)["keys"][0])
try:
    print(json.dumps(jwt.decode(token, key, algorithms=["EdDSA"], audience=aud, issuer=iss,
                                options={"require": ["exp", "iat", "sub"]})))
except jwt.PyJWTError as e:
    print("invalid: %s" % e); sys.exit(3)
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT, token, jwks, audience, issuer])
        .output()
        .expect("python3 (tests/run.sh installs PyJWT)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A tokio runtime for store calls from synchronous tests.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The host a cookie handle is linked for, as the gateway names the request's `Host`.
fn link_host(host: &str) -> String {
    aalgate_policy::host::HostPort::parse(host)
        .unwrap_or_else(|e| panic!("bad test host {host:?}: {e}"))
        .to_string()
}

/// Creates a session in a store as a finished sign-in on `host` does (a record, and a cookie
/// handle linked to it for that host only), and returns the cookie value. `host` is the
/// request's `Host` header. The same session on another host: [`link_session`].
pub fn make_session(
    store: &dyn aalgate_session::SessionStore,
    host: &str,
    user: &str,
    aal: aalgate_policy::Aal,
    auth_age: u64,
    idle: u64,
) -> String {
    let now = aalgate_policy::Timestamp::wall();
    let record = aalgate_session::SessionId::generate().key();
    let s = aalgate_session::Session {
        user: user.to_string(),
        aal,
        amr: vec!["hwk".into(), "user".into()],
        credential: Some("test-credential".into()),
        auth_time: aalgate_policy::Timestamp(now.0 - auth_age),
        last_auth: aalgate_policy::Timestamp(now.0 - auth_age),
        last_seen: aalgate_policy::Timestamp(now.0 - idle),
        expires_at: now.plus(Duration::from_secs(86400)),
    };
    let handle = aalgate_session::SessionId::generate();
    rt().block_on(async {
        store.insert(&record, &s).await.expect("insert session");
        store
            .link(&handle.key(), &record, &link_host(host), s.expires_at)
            .await
            .expect("link session");
    });
    handle.to_cookie()
}

/// Links the session behind `cookie` (a handle for host `from`) to another host, as the
/// gateway's handoff does, and returns the cookie value for `to`.
pub fn link_session(
    store: &dyn aalgate_session::SessionStore,
    cookie: &str,
    from: &str,
    to: &str,
) -> String {
    let now = aalgate_policy::Timestamp::wall();
    let key = aalgate_session::SessionId::from_cookie(cookie)
        .expect("session cookie")
        .key();
    let handle = aalgate_session::SessionId::generate();
    rt().block_on(async {
        let (record, s) = store
            .resolve(&key, &link_host(from), now)
            .await
            .expect("resolve session")
            .expect("a live session on the first host");
        store
            .link(&handle.key(), &record, &link_host(to), s.expires_at)
            .await
            .expect("link session");
    });
    handle.to_cookie()
}

/// Sends a request head with a `body`-byte body in 64 KiB chunks; returns the status (0 when
/// the gateway closed before answering, which it may do once it has refused the body).
pub fn post_head_and_body(port: u16, head: &str, body: usize, timeout: Duration) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(head.as_bytes()).is_err() {
        return 0;
    }
    let chunk = vec![b'a'; 64 * 1024];
    let mut left = body;
    while left > 0 {
        let n = left.min(chunk.len());
        if s.write_all(&chunk[..n]).is_err() {
            break;
        }
        left -= n;
    }
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b) {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&b[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&buf)
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A real OpenID Connect provider (npm `oidc-provider`, panva's certified implementation) on
/// loopback: `tests/browser/oidc-provider.mjs`, with its test accounts and controls.
pub struct OidcProvider {
    /// Its port (the issuer is `http://127.0.0.1:PORT`).
    pub port: u16,
    child: Child,
}

impl OidcProvider {
    /// Starts it for the client `aalgate` (secret `test-client-secret`) of the gateway on
    /// `gateway_port`, whose redirect and back-channel logout URIs it registers.
    pub fn start(port: u16, gateway_port: u16) -> OidcProvider {
        OidcProvider::start_with(port, gateway_port, None)
    }

    /// As [`OidcProvider::start`]; with `client_key` (a PEM private key), the client
    /// authenticates with `private_key_jwt` (its public key registered as `aalgate-1`).
    pub fn start_with(port: u16, gateway_port: u16, client_key: Option<&Path>) -> OidcProvider {
        let script = workspace().join("tests/browser/oidc-provider.mjs");
        let mut cmd = Command::new("node");
        if let Some(k) = client_key {
            cmd.env("CLIENT_KEY_FILE", k);
        }
        let mut child = cmd
            .arg(&script)
            .env("PORT", port.to_string())
            .env("CLIENT_ID", "aalgate")
            .env("CLIENT_SECRET", OIDC_CLIENT_SECRET)
            .env(
                "REDIRECT_URI",
                format!("http://localhost:{gateway_port}/.aalgate/oidc/callback"),
            )
            .env(
                "BACKCHANNEL_URI",
                format!(
                    "http://localhost:{gateway_port}/.aalgate/oidc/backchannel-logout?idp=mercy"
                ),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run node (tests/run.sh installs it)");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("provider output");
        assert_eq!(
            line.trim(),
            "listening",
            "the OIDC provider did not start (npm ci --prefix tests/browser)"
        );
        // Whatever it prints later is read and dropped: a closed pipe would kill it (EPIPE).
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        OidcProvider { port, child }
    }

    /// A logout token for `sub`, signed by the provider but not sent.
    pub fn logout_token(&self, sub: &str) -> String {
        let r = send(
            self.port,
            format!("GET /test/logout-token?sub={sub} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    }
}

/// The test client's secret at the provider.
pub const OIDC_CLIENT_SECRET: &str = "test-client-secret";

/// The `identity_providers:` entry of a gateway config for the provider that will run on
/// `op_port` (`mercy`), with `more` lines (indented by four spaces); its client secret is
/// written to `dir`.
pub fn oidc_config(op_port: u16, dir: &Path, more: &str) -> String {
    let secret = dir.join("oidc-secret");
    std::fs::write(&secret, OIDC_CLIENT_SECRET).expect("write secret");
    format!(
        "identity_providers:\n  - id: mercy\n    display_name: Mercy Health SSO\n    issuer: http://127.0.0.1:{op_port}\n    client_id: aalgate\n    client_secret_file: {}\n{more}",
        secret.display()
    )
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/2 exchange as `tests/h2client.py` reports it (see there): one fresh TLS connection
/// per request, with ALPN h2, sending exactly the given headers.
#[derive(Debug, serde::Deserialize)]
pub struct H2Answer {
    /// The protocol the server chose by ALPN (`None`: no TLS, or none).
    pub alpn: Option<String>,
    /// The response status (`None`: no response, e.g. the stream was reset).
    pub status: Option<u16>,
    /// Response headers (pseudo-headers included).
    pub headers: Vec<(String, String)>,
    /// Response body (Latin-1).
    pub body: String,
    /// The stream's RST_STREAM error code, if the server reset it.
    pub reset: Option<String>,
    /// The connection's GOAWAY error code, if the server ended it.
    pub goaway: Option<String>,
    /// Seconds from sending the headers to the end of the exchange.
    pub elapsed: f64,
    /// The client's own failure (a refused connection).
    #[serde(default)]
    pub error: Option<String>,
    /// With `streams`: each stream's status.
    #[serde(default)]
    pub statuses: Vec<Option<u16>>,
    /// With `streams`: each stream's reset code, if the server reset it.
    #[serde(default)]
    pub resets: Vec<Option<String>>,
}

impl H2Answer {
    /// Whether the server refused the request: a 4xx or 5xx answer, a reset stream or an ended
    /// connection.
    pub fn refused(&self) -> bool {
        self.status.is_none_or(|s| s >= 400)
    }
}

/// Sends HTTP/2 requests with `tests/h2client.py` (Python's hyper-h2, installed by
/// `tests/run.sh`), which sends malformed requests exactly as given: each request is a JSON
/// object as that script documents.
pub fn h2_send(requests: &[serde_json::Value]) -> Vec<H2Answer> {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .arg(workspace().join("tests/h2client.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (tests/run.sh installs the h2 package)");
    let input = serde_json::to_vec(requests).expect("requests as JSON");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write requests");
    let out = child.wait_with_output().expect("h2client.py");
    assert!(
        out.status.success(),
        "h2client.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<H2Answer> =
        serde_json::from_slice(&out.stdout).expect("h2client.py answers as JSON");
    assert_eq!(answers.len(), requests.len());
    answers
}

/// A running `tests/h2client.py --lines`: requests one at a time, without a process each.
pub struct H2Client {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl H2Client {
    /// Starts the client.
    pub fn start() -> H2Client {
        let mut child = Command::new("python3")
            .arg(workspace().join("tests/h2client.py"))
            .arg("--lines")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (tests/run.sh installs the h2 package)");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        H2Client { child, out }
    }

    /// Sends one request (a JSON object as `tests/h2client.py` documents) and waits for its
    /// answer.
    pub fn send(&mut self, request: &serde_json::Value) -> H2Answer {
        use std::io::{BufRead as _, Write as _};
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{request}").expect("write to h2client.py");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out
            .read_line(&mut line)
            .expect("read from h2client.py");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("h2client.py said {line:?}: {e}"))
    }
}

impl Drop for H2Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The headers of an HTTP/2 request: the four pseudo-headers (`:authority` left out when
/// `None`), then `extra` in order.
pub fn h2_headers(
    method: &str,
    authority: Option<&str>,
    path: &str,
    extra: &[(&str, &str)],
) -> serde_json::Value {
    let mut h = vec![
        serde_json::json!([":method", method]),
        serde_json::json!([":scheme", "https"]),
    ];
    if let Some(a) = authority {
        h.push(serde_json::json!([":authority", a]));
    }
    h.push(serde_json::json!([":path", path]));
    for (n, v) in extra {
        h.push(serde_json::json!([n, v]));
    }
    serde_json::Value::Array(h)
}
