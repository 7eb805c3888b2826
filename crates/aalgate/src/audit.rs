//! The audit log: one JSON line per request decision and per auth event, so an auditor can
//! answer "who accessed what, at what AAL, when" from the log alone.
//!
//! PHI safety by default: no query strings, bodies, cookies or header values are ever written
//! (the user agent is the one header kept, truncated), and path segments that look like patient
//! identifiers are replaced by `{redacted}` before anything is written. Events go through a
//! bounded queue to a writer thread, so the request path never waits on disk or syslog; events
//! that do not fit, or that the sink refuses, are counted in `aalgate_audit_dropped_total`.
//! The one exception is evidence whose action must not happen unrecorded (`request_signed`):
//! [`Audit::record`] waits until the line is written, flushed and synced.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use regex::Regex;
use serde::Serialize;

use crate::metrics::Metrics;

/// Queue length between the request path and the writer, for request events.
const QUEUE: usize = 65_536;
/// The writer's priority queue: auth and admin events, evidence and barriers, drained before
/// request events, so a flood of requests cannot delay a sign-in's response behind them.
const URGENT_QUEUE: usize = 8_192;
/// Request events a barrier writes first, at most: a flood's backlog delays an auth response
/// by this many lines, no more.
const BARRIER_CATCH_UP: usize = 4_096;
/// How often the writer drains the queue: the most an event waits before it is written.
pub const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
/// Longest user agent kept.
const MAX_UA: usize = 256;
/// The longest [`Audit::record`] waits for its line to be on record.
const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What the request path hands the writer.
enum Msg {
    Line(String),
    /// Written, flushed and synced before `done` hears `true`.
    Durable {
        line: String,
        fate: Arc<AtomicU8>,
        done: tokio::sync::oneshot::Sender<bool>,
    },
    /// Everything queued before it is written and flushed: `done` hears whether it went well.
    Barrier(tokio::sync::oneshot::Sender<bool>),
}

/// The longest a request waits for room in a full queue, or for its events to be written,
/// before its response goes out anyway (the events then count as dropped).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The auth and admin events of one request, to be on record before its response: queued
/// when there is room, kept here when the queue is full (so they wait instead of being lost),
/// and [`Audit::settle`]d before the reply.
#[derive(Debug, Default)]
pub struct Pending {
    queued: std::sync::atomic::AtomicBool,
    waiting: std::sync::Mutex<Vec<String>>,
}

impl Pending {
    /// Whether this request has events to settle.
    pub fn any(&self) -> bool {
        self.queued.load(Ordering::Relaxed)
    }
}

/// A durable line's fate is decided once: the writer claims it before writing, or the caller
/// abandons it after [`RECORD_WAIT`], and then it is never written. A line refused to its caller
/// must not land later: it would record a signature that never counted.
const PENDING: u8 = 0;
const CLAIMED: u8 = 1;
const ABANDONED: u8 = 2;

/// Path segments redacted by default: MRN-, account- and SSN-like values and e-mail addresses.
pub const DEFAULT_REDACTIONS: [&str; 4] = [
    r"^[0-9]{5,}$",
    r"^[A-Za-z]{1,4}-?[0-9]{5,}$",
    r"^[0-9]{3}-[0-9]{2}-[0-9]{4}$",
    r"@",
];

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// Appended to a file (created with mode 0640).
    File(PathBuf),
    /// Datagrams to a syslog socket (`/dev/log` by default), facility authpriv.
    Syslog(PathBuf),
}

impl std::str::FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Sink, String> {
        match s {
            "stdout" => Ok(Sink::Stdout),
            "stderr" => Ok(Sink::Stderr),
            "syslog" => Ok(Sink::Syslog("/dev/log".into())),
            _ => {
                if let Some(p) = s.strip_prefix("file:").filter(|p| !p.is_empty()) {
                    Ok(Sink::File(p.into()))
                } else if let Some(p) = s.strip_prefix("syslog:").filter(|p| !p.is_empty()) {
                    Ok(Sink::Syslog(p.into()))
                } else {
                    Err(format!("audit output {s:?}: use stdout, stderr, file:<path>, syslog or syslog:<socket path>"))
                }
            }
        }
    }
}

/// One audit event. Every field is optional except time and event.
#[derive(Debug, Default, Serialize)]
pub struct Event<'a> {
    /// RFC 3339, UTC.
    pub time: String,
    /// `request`, `logout`, `session_end`, `reload`, ...
    pub event: &'a str,
    /// Also sent upstream as `X-Request-Id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    /// A request line after this browser's session ended (idle, absolute limit): whose it
    /// was. Not a verified identity: someone else may be at the workstation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prior_user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<&'a str>,
    /// Redacted path, never the query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aal: Option<u8>,
    /// Hash of the credential used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// A kept form's replay: the `request_id` of the request that was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<&'a str>,
    /// An admin command's operator: the OS user who ran the CLI (the one behind `sudo`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// Non-PHI detail (a reason, a policy hash, an error count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// `request_signed`: the key's signature over the request digest, for
    /// `aalgate audit verify` (no body, no nonce: nothing to test guesses against).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence: Option<aalgate_auth::signing::Evidence>,
}

/// The current time as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The audit log handle, shared by every request.
pub struct Audit {
    tx: SyncSender<Msg>,
    urgent: SyncSender<Msg>,
    redact: Vec<Regex>,
    requests: bool,
    metrics: Arc<Metrics>,
    record_wait: std::time::Duration,
    evidence_grade: bool,
}

impl Audit {
    /// Opens the sink (failing now, not at the first event) and starts the writer thread.
    pub fn start(
        sink: Sink,
        redact: &[String],
        requests: bool,
        metrics: Arc<Metrics>,
    ) -> Result<Audit> {
        let redact = redact
            .iter()
            .map(|r| {
                Regex::new(r).with_context(|| {
                    format!("audit redaction {r:?} is not a valid regular expression")
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut out = Output::open(&sink)?;
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        let (urgent, urgent_rx) = sync_channel::<Msg>(URGENT_QUEUE);
        let m = metrics.clone();
        std::thread::Builder::new()
            .name("aalgate-audit".into())
            .spawn(move || out.run(urgent_rx, rx, &m))
            .context("cannot start the audit writer")?;
        Ok(Audit {
            tx,
            urgent,
            redact,
            requests,
            metrics,
            record_wait: RECORD_WAIT,
            evidence_grade: matches!(sink, Sink::File(_)),
        })
    }

    /// Whether [`Audit::record`] means synced to disk (a file), not handed to another process.
    pub fn evidence_grade(&self) -> bool {
        self.evidence_grade
    }

    /// Whether per-request events are written (auth events always are).
    pub fn logs_requests(&self) -> bool {
        self.requests
    }

    /// The path with identifier-like segments replaced by `{redacted}`.
    pub fn redact_path(&self, path: &str) -> String {
        let mut out = String::with_capacity(path.len());
        for (i, seg) in path.split('/').enumerate() {
            if i > 0 {
                out.push('/');
            }
            let name = seg.split(';').next().unwrap_or(seg);
            if !seg.is_empty()
                && self
                    .redact
                    .iter()
                    .any(|r| r.is_match(seg) || r.is_match(name))
            {
                out.push_str("{redacted}");
            } else {
                out.push_str(seg);
            }
        }
        out
    }

    /// Queues an event; never blocks.
    pub fn emit(&self, event: &Event<'_>) {
        if let Some(line) = self.line(event) {
            self.queue(&self.tx, Msg::Line(line));
        }
    }

    /// Writes an event whose action must not happen unrecorded (`request_signed`: the evidence
    /// of a signature), and says whether it is on record: written, flushed and, for a file,
    /// synced to disk. `false` (queue full, writer gone, the sink refused it, or not taken up
    /// by the writer in [`RECORD_WAIT`]): the line is not in the log, and the caller does not
    /// act. Queued is not enough: a full disk or a gone syslog socket loses a queued line.
    pub async fn record(&self, event: &Event<'_>) -> bool {
        let Some(line) = self.line(event) else {
            return false;
        };
        let fate = Arc::new(AtomicU8::new(PENDING));
        let (done, mut on_record) = tokio::sync::oneshot::channel();
        let msg = Msg::Durable {
            line,
            fate: fate.clone(),
            done,
        };
        if !self.queue(&self.urgent, msg) {
            return false;
        }
        // Whatever ends this wait (a timeout, or the request's task dropped at shutdown), a
        // line the writer has not taken up yet is never written afterwards.
        let guard = Abandon(fate);
        match tokio::time::timeout(self.record_wait, &mut on_record).await {
            Ok(answer) => answer.unwrap_or(false),
            Err(_) => {
                if guard.abandon() {
                    self.metrics.audit_dropped.inc();
                    false
                } else {
                    // The writer has it: its answer decides, whatever it takes.
                    on_record.await.unwrap_or(false)
                }
            }
        }
    }

    /// Queues an auth or admin event of a request: it is on record before that request's
    /// response ([`Audit::settle`]). A full queue keeps it in `pending` instead of dropping it.
    pub fn emit_for(&self, pending: &Pending, event: &Event<'_>) {
        let Some(line) = self.line(event) else { return };
        pending.queued.store(true, Ordering::Relaxed);
        if let Err(TrySendError::Full(Msg::Line(line))) = self.urgent.try_send(Msg::Line(line)) {
            pending
                .waiting
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(line);
        }
    }

    /// Waits until a request's events are written and flushed: first what a full queue kept
    /// waiting, then a barrier behind them. Bounded by [`SETTLE_WAIT`]: lines that could not be
    /// queued by then count as dropped; lines queued but not confirmed are logged as such (they
    /// are still written); either way the response then goes out.
    pub async fn settle(&self, pending: &Pending) {
        if !pending.queued.swap(false, Ordering::Relaxed) {
            return;
        }
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let waiting =
            std::mem::take(&mut *pending.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        let mut msgs: Vec<Msg> = waiting.into_iter().map(Msg::Line).collect();
        let (done, written) = tokio::sync::oneshot::channel();
        msgs.push(Msg::Barrier(done));
        let mut msgs = msgs.into_iter();
        while let Some(mut msg) = msgs.next() {
            loop {
                match self.urgent.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(m)) if tokio::time::Instant::now() < deadline => {
                        msg = m;
                        tokio::time::sleep(DRAIN_EVERY).await;
                    }
                    Err(e) => {
                        // This line and every one behind it (the barrier aside) are lost.
                        let lost = msgs.filter(|m| matches!(m, Msg::Line(_))).count() as u64
                            + u64::from(matches!(
                                e,
                                TrySendError::Full(Msg::Line(_))
                                    | TrySendError::Disconnected(Msg::Line(_))
                            ));
                        self.metrics.audit_dropped.inc_by(lost);
                        tracing::error!(
                            lost,
                            "audit events of a request could not be queued before its response"
                        );
                        return;
                    }
                }
            }
        }
        if !matches!(
            tokio::time::timeout_at(deadline, written).await,
            Ok(Ok(true))
        ) {
            tracing::error!(
                "audit events of a request were not confirmed written before its response"
            );
        }
    }

    /// At exit: waits (at most [`SETTLE_WAIT`]) until everything queued is written and
    /// flushed, request events included (SIGTERM, or the old process of an upgrade).
    pub fn drain(&self) {
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        // A barrier on each queue: everything queued on either before the exit.
        for queue in [&self.urgent, &self.tx] {
            let (done, mut written) = tokio::sync::oneshot::channel();
            let mut msg = Msg::Barrier(done);
            loop {
                match queue.try_send(msg) {
                    Ok(()) => break,
                    Err(TrySendError::Full(m)) if std::time::Instant::now() < deadline => {
                        msg = m;
                        std::thread::sleep(DRAIN_EVERY);
                    }
                    Err(_) => return,
                }
            }
            loop {
                match written.try_recv() {
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                        if std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(DRAIN_EVERY)
                    }
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty) => {
                        tracing::error!(
                            "the audit log did not confirm its last events before the exit"
                        );
                        return;
                    }
                    _ => break,
                }
            }
        }
    }

    fn line(&self, event: &Event<'_>) -> Option<String> {
        let line = serde_json::to_string(event).ok();
        if line.is_none() {
            self.metrics.audit_dropped.inc();
        }
        line
    }

    fn queue(&self, to: &SyncSender<Msg>, msg: Msg) -> bool {
        match to.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.audit_dropped.inc();
                false
            }
        }
    }
}

/// Truncates a user agent and keeps it printable.
pub fn user_agent(v: Option<&http::HeaderValue>) -> Option<String> {
    let v = v?.to_str().ok()?;
    Some(v.chars().filter(|c| !c.is_control()).take(MAX_UA).collect())
}

enum Output {
    Stdout,
    Stderr,
    /// The file, and whether a write may have stopped mid-line.
    File(std::io::BufWriter<std::fs::File>, bool),
    Syslog(std::os::unix::net::UnixDatagram, PathBuf),
}

impl Output {
    fn open(sink: &Sink) -> Result<Output> {
        Ok(match sink {
            Sink::Stdout => Output::Stdout,
            Sink::Stderr => Output::Stderr,
            Sink::File(p) => {
                if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                }
                let mut o = std::fs::OpenOptions::new();
                o.create(true).append(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    o.mode(0o640);
                }
                let f = o
                    .open(p)
                    .with_context(|| format!("cannot open audit log {}", p.display()))?;
                Output::File(std::io::BufWriter::new(f), false)
            }
            Sink::Syslog(p) => {
                let s = std::os::unix::net::UnixDatagram::unbound()
                    .context("cannot create a syslog socket")?;
                if !p.exists() {
                    bail!("syslog socket {} does not exist", p.display());
                }
                Output::Syslog(s, p.clone())
            }
        })
    }

    fn write_line(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Output::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Output::Stderr => writeln!(std::io::stderr().lock(), "{line}"),
            Output::File(f, torn) => {
                // After a write that may have stopped mid-line, start on a line of our own.
                if *torn {
                    f.write_all(b"\n")?;
                    *torn = false;
                }
                let r = writeln!(f, "{line}");
                if r.is_err() {
                    *torn = true;
                }
                r
            }
            // RFC 3164 framing, facility authpriv (10), severity info (6).
            Output::Syslog(s, p) => s
                .send_to(
                    format!("<86>aalgate[{}]: {line}", std::process::id()).as_bytes(),
                    p,
                )
                .map(|_| ()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout => std::io::stdout().flush(),
            Output::File(f, _) => f.flush(),
            _ => Ok(()),
        }
    }

    /// Writes a line that must be on record: after the lines before it, past the buffer (a
    /// refused line must not be written later by a retried flush: it would record a signature
    /// that never counted), and for a file synced to disk. Nothing is cut off after a failure
    /// (another process may be appending to the same file during an upgrade); a write that may
    /// have stopped mid-line makes the next line start on a line of its own, and a line whose
    /// sync failed stays, without the `request_admitted` that only an admitted request gets.
    fn write_durable(&mut self, line: &str) -> std::io::Result<()> {
        match self {
            Output::File(f, torn) => {
                f.flush()?;
                let text = if *torn {
                    format!("\n{line}\n")
                } else {
                    format!("{line}\n")
                };
                let file = f.get_mut();
                if let Err(e) = file.write_all(text.as_bytes()) {
                    *torn = true;
                    return Err(e);
                }
                *torn = false;
                file.sync_data()
            }
            _ => {
                self.write_line(line)?;
                self.flush()
            }
        }
    }

    /// One message from either queue.
    fn handle(&mut self, msg: Msg, wrote: &mut bool, failed: &dyn Fn(std::io::Error)) {
        match msg {
            Msg::Line(line) => {
                if let Err(e) = self.write_line(&line) {
                    failed(e);
                }
                *wrote = true;
            }
            Msg::Durable { line, fate, done } => {
                if fate
                    .compare_exchange(PENDING, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return;
                }
                let r = self.write_durable(&line);
                let ok = r.is_ok();
                if let Err(e) = r {
                    failed(e);
                }
                let _ = done.send(ok);
            }
            Msg::Barrier(done) => {
                let r = self.flush();
                let ok = r.is_ok();
                if let Err(e) = r {
                    failed(e);
                }
                *wrote = false;
                let _ = done.send(ok);
            }
        }
    }

    /// Drains the queues every [`DRAIN_EVERY`] instead of blocking on them: a sender then never
    /// has to wake this thread, which profiling showed cost a futex wake-up and a context switch
    /// per request. The priority queue goes first, and again after every 256 request events.
    /// Lines the sink refuses are counted as dropped.
    fn run(&mut self, urgent: Receiver<Msg>, normal: Receiver<Msg>, metrics: &Metrics) {
        use std::sync::mpsc::TryRecvError;
        let failed = |e: std::io::Error| {
            tracing::error!(error = %e, "audit log write failed");
            metrics.audit_dropped.inc();
        };
        loop {
            let mut wrote = false;
            let mut closed = false;
            loop {
                let mut any = false;
                loop {
                    match urgent.try_recv() {
                        Ok(m) => {
                            any = true;
                            // A barrier covers the request events queued before it too, up to
                            // a bounded catch-up: outside a flood the log then holds every
                            // request before the sign-out that a response reports.
                            if matches!(m, Msg::Barrier(_)) {
                                for _ in 0..BARRIER_CATCH_UP {
                                    match normal.try_recv() {
                                        Ok(n) => self.handle(n, &mut wrote, &failed),
                                        Err(_) => break,
                                    }
                                }
                            }
                            self.handle(m, &mut wrote, &failed);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                for _ in 0..256 {
                    match normal.try_recv() {
                        Ok(m) => {
                            any = true;
                            self.handle(m, &mut wrote, &failed);
                        }
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
                if !any {
                    break;
                }
            }
            if wrote || closed {
                if let Err(e) = self.flush() {
                    failed(e);
                }
            }
            if closed {
                return;
            }
            std::thread::sleep(DRAIN_EVERY);
        }
    }
}

/// Marks a durable line abandoned when its caller stops waiting, however that happens, unless
/// the writer has taken it up already.
struct Abandon(Arc<AtomicU8>);

impl Abandon {
    /// `true`: abandoned now (never written); `false`: the writer has it.
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            || self.0.load(Ordering::Acquire) == ABANDONED
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        let _ = self
            .0
            .compare_exchange(PENDING, ABANDONED, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> Audit {
        let r: Vec<String> = DEFAULT_REDACTIONS.iter().map(|s| s.to_string()).collect();
        Audit::start(Sink::Stderr, &r, true, Arc::new(Metrics::new().unwrap())).unwrap()
    }

    fn signed() -> Event<'static> {
        Event {
            event: "request_signed",
            ..Default::default()
        }
    }

    /// An audit handle with no writer running: its queues, to run one by hand.
    fn unattended(
        cap: usize,
        wait: std::time::Duration,
        metrics: &Arc<Metrics>,
    ) -> (Audit, Receiver<Msg>, Receiver<Msg>) {
        let (tx, rx) = sync_channel::<Msg>(cap);
        let (urgent, urgent_rx) = sync_channel::<Msg>(cap);
        let a = Audit {
            tx,
            urgent,
            redact: Vec::new(),
            requests: true,
            metrics: metrics.clone(),
            record_wait: wait,
            evidence_grade: true,
        };
        (a, urgent_rx, rx)
    }

    #[tokio::test]
    async fn a_full_queue_or_a_gone_writer_is_never_on_record() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let (a, urgent, normal) = unattended(1, RECORD_WAIT, &metrics);
        let pending = Pending::default();
        a.emit_for(&pending, &signed());
        assert!(!a.record(&signed()).await, "the queue is full");
        assert_eq!(metrics.audit_dropped.get(), 1);
        drop((urgent, normal));
        assert!(!a.record(&signed()).await, "the writer is gone");
    }

    #[tokio::test]
    async fn a_wait_dropped_midway_never_writes_its_line_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new().unwrap());
        let (a, urgent, normal) = unattended(4, RECORD_WAIT, &metrics);
        // The request's task is dropped while it waits (a runtime shutting down).
        let event = signed();
        let waiting = a.record(&event);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), waiting).await;
        drop(a);
        let mut out = Output::open(&Sink::File(path.clone())).unwrap();
        out.run(urgent, normal, &metrics);
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(!log.contains("request_signed"), "{log}");
    }

    #[test]
    fn a_line_cut_short_does_not_swallow_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut out = Output::open(&Sink::File(path.clone())).unwrap();
        // As after a write that stopped mid-line (a full disk).
        std::fs::write(&path, "{\"event\":\"request_si").unwrap();
        if let Output::File(_, torn) = &mut out {
            *torn = true;
        }
        out.write_durable("{\"event\":\"request_signed\"}").unwrap();
        out.write_line("{\"event\":\"logout\"}").unwrap();
        out.flush().unwrap();
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(
            lines,
            [
                "{\"event\":\"request_si",
                "{\"event\":\"request_signed\"}",
                "{\"event\":\"logout\"}"
            ]
        );
    }

    #[tokio::test]
    async fn auth_events_go_before_a_backlog_of_request_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new().unwrap());
        let a = Audit::start(Sink::File(path.clone()), &[], true, metrics.clone()).unwrap();
        for _ in 0..50_000 {
            a.emit(&Event {
                event: "request",
                ..Default::default()
            });
        }
        let pending = Pending::default();
        a.emit_for(
            &pending,
            &Event {
                event: "logout",
                ..Default::default()
            },
        );
        a.settle(&pending).await;
        let log = std::fs::read_to_string(&path).unwrap();
        let requests_before = log.lines().take_while(|l| !l.contains("logout")).count();
        assert!(log.contains("logout"));
        assert!(
            requests_before < 50_000,
            "the sign-out waited behind every request event"
        );
    }

    #[tokio::test]
    async fn a_line_given_up_on_is_never_written_later() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new().unwrap());
        let (a, urgent, normal) = unattended(4, std::time::Duration::from_millis(50), &metrics);
        // A writer that is stuck (a slow disk): the caller gives up.
        assert!(!a.record(&signed()).await);
        assert_eq!(metrics.audit_dropped.get(), 1);
        a.emit(&Event {
            event: "logout",
            ..Default::default()
        });
        drop(a);
        // Then the writer gets to the queue.
        let mut out = Output::open(&Sink::File(path.clone())).unwrap();
        out.run(urgent, normal, &metrics);
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(log.contains("logout"), "{log}");
        assert!(!log.contains("request_signed"), "{log}");
    }

    #[tokio::test]
    async fn on_record_means_on_disk_and_a_refusing_sink_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let metrics = Arc::new(Metrics::new().unwrap());
        let a = Audit::start(Sink::File(path.clone()), &[], true, metrics.clone()).unwrap();
        assert!(a.record(&signed()).await);
        // No drain interval to wait for: the line is in the file when `record` returns.
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .contains("request_signed"));
        // A disk with no room: queued is not recorded.
        let full =
            Audit::start(Sink::File("/dev/full".into()), &[], true, metrics.clone()).unwrap();
        assert!(!full.record(&signed()).await);
        assert_eq!(metrics.audit_dropped.get(), 1);
        full.emit(&signed());
        for _ in 0..100 {
            if metrics.audit_dropped.get() == 2 {
                break;
            }
            std::thread::sleep(DRAIN_EVERY);
        }
        assert_eq!(metrics.audit_dropped.get(), 2, "a refused line is counted");
    }

    #[test]
    fn redacts_identifier_like_segments() {
        let a = audit();
        assert_eq!(
            a.redact_path("/patients/12345678/chart"),
            "/patients/{redacted}/chart"
        );
        assert_eq!(
            a.redact_path("/mrn/MRN-0012345/notes;x=1"),
            "/mrn/{redacted}/notes;x=1"
        );
        assert_eq!(a.redact_path("/p/123-45-6789"), "/p/{redacted}");
        assert_eq!(
            a.redact_path("/u/jane.doe@clinic.example/"),
            "/u/{redacted}/"
        );
        assert_eq!(a.redact_path("/invoices/2024"), "/invoices/2024");
        assert_eq!(a.redact_path("/"), "/");
    }

    #[test]
    fn sinks_parse() {
        assert_eq!(
            "file:/var/log/a.jsonl".parse::<Sink>(),
            Ok(Sink::File("/var/log/a.jsonl".into()))
        );
        assert_eq!(
            "syslog".parse::<Sink>(),
            Ok(Sink::Syslog("/dev/log".into()))
        );
        assert!("file:".parse::<Sink>().is_err());
        assert!("kafka".parse::<Sink>().is_err());
    }

    #[test]
    fn events_omit_empty_fields() {
        let e = Event {
            time: "t".into(),
            event: "logout",
            user: Some("alice"),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"time":"t","event":"logout","user":"alice"}"#
        );
    }
}
