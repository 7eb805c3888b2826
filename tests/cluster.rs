//! Redis with Sentinel, as a hospital would run it: three `redis-server` (a master and two
//! replicas) and three `redis-sentinel` (Debian's packages), on loopback, with a
//! [`SplitProxy`] in front of the master when a test needs to cut it off the network.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{free_port, redis_server_bin, wait_for_port};

/// What goes through the [`SplitProxy`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Proxied {
    Nothing,
    Master,
}

/// The master name the sentinels watch.
pub const MASTER: &str = "aalgate";

struct Node {
    port: u16,
    child: Option<Child>,
    args: Vec<String>,
}

/// Three Redis nodes and three Sentinels.
pub struct Cluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    sentinels: Vec<Node>,
    /// In front of the first master, when started with [`Cluster::start_split`].
    pub proxy: Option<SplitProxy>,
}

fn sentinel_bin() -> String {
    for p in ["/usr/bin/redis-sentinel", "/usr/local/bin/redis-sentinel"] {
        if Path::new(p).exists() {
            return p.into();
        }
    }
    panic!("redis-sentinel not found: install it (apt-get install -y redis-sentinel) or run tests/run.sh, which does");
}

fn spawn(bin: &str, args: &[String]) -> Child {
    Command::new(bin)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis")
}

fn signal(child: &Option<Child>, sig: &str) {
    if let Some(c) = child {
        let _ = Command::new("kill")
            .arg(sig)
            .arg(c.id().to_string())
            .status();
    }
}

/// One inline command to `port`; the reply as text (a short read: enough for these tests).
pub fn command(port: u16, cmd: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(1000)));
    let _ = s.write_all(format!("{cmd}\r\n").as_bytes());
    let mut buf = vec![0u8; 65536];
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.ends_with(b"\r\n") {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Cluster {
    /// Starts the nodes (the first is the master) and the sentinels, and waits until every
    /// sentinel knows both replicas and the other sentinels.
    pub fn start() -> Cluster {
        Cluster::start_inner(Proxied::Nothing)
    }

    /// As [`Cluster::start`], with everyone (replicas, sentinels, the gateway) reaching the
    /// first master through a [`SplitProxy`].
    pub fn start_split() -> Cluster {
        Cluster::start_inner(Proxied::Master)
    }

    fn start_inner(proxied: Proxied) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let proxy = (proxied == Proxied::Master).then(|| SplitProxy::start(ports[0]));
        let master_port = proxy.as_ref().map_or(ports[0], |p| p.port);
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let d = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&d).expect("mkdir");
            let mut args: Vec<String> = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--repl-diskless-sync-delay",
                "0",
                "--replica-announce-ip",
                "127.0.0.1",
                "--dir",
            ]
            .map(String::from)
            .to_vec();
            args.push(d.display().to_string());
            if i > 0 {
                args.extend([
                    "--replicaof".into(),
                    "127.0.0.1".into(),
                    master_port.to_string(),
                ]);
            }
            let child = spawn(&redis_server_bin(), &args);
            wait_for_port(*port, "redis-server", Duration::from_secs(10));
            nodes.push(Node {
                port: *port,
                child: Some(child),
                args,
            });
        }
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\nsentinel announce-ip 127.0.0.1\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 4000\n\
                     sentinel parallel-syncs {MASTER} 2\n",
                    dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let args = vec![conf.display().to_string()];
            let child = spawn(&sentinel_bin(), &args);
            wait_for_port(port, "redis-sentinel", Duration::from_secs(10));
            sentinels.push(Node {
                port,
                child: Some(child),
                args,
            });
        }
        let c = Cluster {
            dir,
            nodes,
            sentinels,
            proxy,
        };
        c.wait_settled(Duration::from_secs(30));
        c
    }

    /// Waits until each sentinel sees two live replicas and the two other sentinels.
    pub fn wait_settled(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let ok = self.sentinels.iter().all(|s| {
                let m = command(s.port, &format!("SENTINEL MASTER {MASTER}"));
                let field = |name: &str| {
                    let lines: Vec<&str> = m.lines().collect();
                    lines
                        .iter()
                        .position(|l| *l == name)
                        .and_then(|i| lines.get(i + 2))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                field("num-slaves") == Some(2)
                    && field("num-other-sentinels") == Some(2)
                    && !m.contains("s_down")
                    && !m.contains("o_down")
            });
            let replicas_up = self.nodes.iter().all(|n| {
                let info = command(n.port, "INFO replication");
                info.contains("role:master") && info.contains("connected_slaves:2")
                    || info.contains("master_link_status:up")
            });
            if ok && replicas_up {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the sentinels did not settle within {timeout:?}");
    }

    /// `sentinels: [...]` for the gateway's store section.
    pub fn sentinel_list(&self) -> String {
        self.sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// How a store in the test reaches the cluster (no replica confirmations: it seeds).
    pub fn redis_config(&self) -> aalgate_session::RedisConfig {
        let mut cfg = aalgate_session::RedisConfig::url("redis://unused", Duration::from_secs(2));
        cfg.target = aalgate_session::RedisTarget::Sentinel {
            sentinels: self
                .sentinels
                .iter()
                .map(|s| ("127.0.0.1".to_string(), s.port))
                .collect(),
            master_name: MASTER.into(),
        };
        cfg
    }

    /// The store section of the gateway config (YAML flow mapping), with extra keys.
    pub fn store(&self, extra: &str) -> String {
        format!(
            "{{sentinels: [{}], master_name: {MASTER}{extra}}}",
            self.sentinel_list()
        )
    }

    /// The port the sentinels name as the master (the proxy's, while it fronts the master).
    pub fn master_port(&self) -> u16 {
        let reply = command(
            self.sentinels[0].port,
            &format!("SENTINEL get-master-addr-by-name {MASTER}"),
        );
        reply
            .lines()
            .filter_map(|l| l.parse::<u16>().ok())
            .next()
            .expect("the sentinels name a master")
    }

    /// The node that is master now (through the proxy: the node behind it).
    fn master_index(&self) -> usize {
        let port = self.master_port();
        let port = match &self.proxy {
            Some(p) if p.port == port => p.target,
            _ => port,
        };
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .expect("master is one of the nodes")
    }

    /// Ports of the nodes.
    pub fn node_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// SIGKILLs the master; returns its index.
    pub fn kill_master(&mut self) -> usize {
        let i = self.master_index();
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        i
    }

    /// Starts a killed node again with its data; the sentinels make it a replica.
    pub fn restart_node(&mut self, i: usize) {
        let args = self.nodes[i].args.clone();
        let port = self.nodes[i].port;
        self.nodes[i].child = Some(spawn(&redis_server_bin(), &args));
        wait_for_port(port, "redis-server", Duration::from_secs(10));
    }

    /// SIGSTOP (`-STOP`) or SIGCONT (`-CONT`) to node `i`.
    pub fn signal_node(&self, i: usize, sig: &str) {
        signal(&self.nodes[i].child, sig);
    }

    /// Indexes of the replicas now.
    pub fn replica_indexes(&self) -> Vec<usize> {
        let m = self.master_index();
        (0..self.nodes.len()).filter(|i| *i != m).collect()
    }

    /// Index of the master now.
    pub fn master(&self) -> usize {
        self.master_index()
    }

    /// Waits until the sentinels name a master other than `old` (a port) and it answers as one.
    pub fn wait_failover(&self, old: u16, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let p = self.master_port();
            if p != old && command(p, "ROLE").contains("master") {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no failover within {timeout:?}");
    }

    /// Runs one command on node `i`.
    pub fn node_command(&self, i: usize, cmd: &str) -> String {
        command(self.nodes[i].port, cmd)
    }

    /// Where the temporary files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.sentinels.iter_mut().chain(self.nodes.iter_mut()) {
            signal(&n.child, "-CONT");
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A TCP proxy in front of one server. [`SplitProxy::cut`] makes the server unreachable but
/// alive, like a network split: open connections are shut at once and new ones hang
/// (accepted, never forwarded), until [`SplitProxy::heal`].
pub struct SplitProxy {
    /// Where clients connect.
    pub port: u16,
    /// The server behind it.
    pub target: u16,
    cut: Arc<AtomicBool>,
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl SplitProxy {
    fn start(target: u16) -> SplitProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<std::sync::Mutex<Vec<TcpStream>>> = Arc::default();
        let (c, o) = (cut.clone(), open.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (c, o) = (c.clone(), o.clone());
                std::thread::spawn(move || forward(client, target, &c, &o));
            }
        });
        SplitProxy {
            port,
            target,
            cut,
            open,
        }
    }

    /// Cuts the server off.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Reconnects it.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn forward(
    client: TcpStream,
    target: u16,
    cut: &Arc<AtomicBool>,
    open: &Arc<std::sync::Mutex<Vec<TcpStream>>>,
) {
    // While cut, a new connection is held open and silent.
    while cut.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
        return;
    };
    {
        let mut o = open.lock().unwrap();
        for s in [&client, &server] {
            if let Ok(s) = s.try_clone() {
                o.push(s);
            }
        }
    }
    let pairs = [
        (client.try_clone(), server.try_clone()),
        (server.try_clone(), client.try_clone()),
    ];
    let mut threads = Vec::new();
    for (from, to) in pairs {
        let (Ok(mut from), Ok(mut to)) = (from, to) else {
            return;
        };
        threads.push(std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
        }));
    }
    for t in threads {
        let _ = t.join();
    }
}
